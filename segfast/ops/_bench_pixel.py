"""segfast-bench cases of the pixel family (cross entropy, fused, softmax and
sigmoid focal, BCE; collected through segfast/_families.py): forward+backward
against the eager reference, MONAI, smp and segfast.compat's drop-in
classes."""

from __future__ import annotations

import torch

from .. import bench as sb
from ..reference import pixel as ref
from . import pixel


def _focal_dense_reference(x, y):
    """MONAI's FocalLoss(use_softmax=True) on one-hot targets: the mean over pixels."""
    return ref.pixel_terms(x.flatten(2), y.flatten(2), False, ref.FOCAL_SOFTMAX)[0].sum() / (y.numel() // y.shape[1])


OPS = {
    "cross_entropy": sb.Op(pixel.cross_entropy, sb.mean_pixel_reference(ref.CE), passes=1, writes=1, extra={
        "smp": sb.compat_peer("smp", "SoftCrossEntropyLoss", smooth_factor=0.0),
        "compat_smp": sb.compat_peer("compat.smp", "SoftCrossEntropyLoss", smooth_factor=0.0)}),
    "fused": sb.Op(pixel.fused_loss, sb.mean_pixel_reference(ref.FUSED), passes=1, writes=1, quick=True),
    "focal": sb.Op(lambda x, y, backend=None: pixel.focal_loss(x, y, mode="multiclass", backend=backend),
                   sb.mean_pixel_reference(ref.FOCAL_SOFTMAX), passes=1, writes=1, extra={
        "monai": sb.monai_peer("FocalLoss", use_softmax=True, to_onehot_y=True),
        "compat_monai": sb.compat_peer("compat.monai", "FocalLoss", use_softmax=True, to_onehot_y=True,
                                       labels_1=True)}),
    # The sigmoid focal loss, one class against the rest (smp's FocalLoss in every mode), on class indices.
    "focal_sigmoid": sb.Op(lambda x, y, backend=None: pixel.focal_loss(x, y, mode="multilabel", alpha=-1.0,
                                                                       backend=backend),
                           sb.mean_pixel_reference(ref.FOCAL_SIGMOID), passes=1, writes=1, extra={
        "smp": sb.compat_peer("smp", "FocalLoss", "multiclass"),
        "compat_smp": sb.compat_peer("compat.smp", "FocalLoss", "multiclass")}),
    # BCE on dense (one-hot, float) targets of the logits' shape.
    "bce": sb.Op(pixel.binary_cross_entropy_with_logits, torch.nn.functional.binary_cross_entropy_with_logits,
                 passes=1, writes=1, dense_targets=True, extra={
        "smp": sb.compat_peer("smp", "SoftBCEWithLogitsLoss"),
        "compat_smp": sb.compat_peer("compat.smp", "SoftBCEWithLogitsLoss")}),
    # The softmax focal loss on dense (one-hot, float) targets: MONAI's FocalLoss(use_softmax=True) without
    # to_onehot_y.
    "focal_dense": sb.Op(lambda x, y, backend=None: pixel.focal_loss(x, y, mode="multiclass", backend=backend),
                         _focal_dense_reference, passes=1, writes=1, dense_targets=True, extra={
        "monai": sb.monai_peer("FocalLoss", labels_1=False, use_softmax=True),
        "compat_monai": sb.compat_peer("compat.monai", "FocalLoss", use_softmax=True)}),
}
