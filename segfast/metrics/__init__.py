"""Evaluation metrics: COCO box mAP identical to pycocotools
(``COCOEvaluator`` / ``MeanAveragePrecision``, segfast/metrics/detection.py)
and the segmentation confusion matrix with IoU / Dice / accuracies
(``ConfusionMatrix``, ``confusion_matrix``, segfast/metrics/segmentation.py)."""

from .detection import STAT_NAMES, COCOEvaluator, MeanAveragePrecision, synthetic_coco, to_tensors
from .segmentation import ConfusionMatrix, confusion_matrix, scores_from_confusion

__all__ = ["COCOEvaluator", "MeanAveragePrecision", "STAT_NAMES", "synthetic_coco", "to_tensors",
           "ConfusionMatrix", "confusion_matrix", "scores_from_confusion"]
