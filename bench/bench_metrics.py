"""Benchmark of the metrics family (segfast/metrics/_bench.py has the
cases; ``segfast-bench`` prints the same rows):

- COCO box mAP on the synthetic COCO-like set (5,000 images, 80
  categories, ~100 detections per image): segfast ``compute()`` against
  pycocotools and faster-coco-eval (evaluate + accumulate + summarize on
  loaded data), the 12 numbers compared for equality;
- the confusion matrix of 100 logits [21, 512, 512] (ignore_index=255)
  against argmax + ``torch.bincount`` and torchmetrics' MulticlassJaccardIndex.

    pytest bench/bench_metrics.py -s          # prints the rows as JSON
"""

from __future__ import annotations

import json

import pytest

from segfast.metrics import _bench as mb


def test_detection_targets():
    """12 numbers equal to pycocotools'; compute() <= 1/2 of faster-coco-eval's
    time and <= 1/10 of pycocotools'; peak extra memory <= 1/2 of faster-coco-eval's."""
    pytest.importorskip("pycocotools")
    rows = {r["backend"]: r for r in mb.measure_detection()}
    print(json.dumps(list(rows.values()), indent=1))
    ours = rows["segfast"]
    assert ours["stats_equal_pycocotools"], ours
    assert ours["speedup_vs_pycocotools"] >= 10, ours
    if "faster_coco_eval" in rows:
        assert ours["speedup_vs_faster_coco_eval"] >= 2, ours
        assert ours["peak_extra_mb"] <= 0.5 * rows["faster_coco_eval"]["peak_extra_mb"], rows


def test_segmentation_targets():
    """Equal matrices; >= 3x argmax + bincount and >= 10x torchmetrics."""
    rows = {r["backend"]: r for r in mb.measure_segmentation()}
    print(json.dumps(list(rows.values()), indent=1))
    ours = rows["segfast"]
    assert all(r["equal_to_bincount"] for r in rows.values()), rows
    assert ours["speedup_vs_reference"] >= 3, ours
    if "torchmetrics" in rows:
        assert ours["speedup_vs_torchmetrics"] >= 10, ours
