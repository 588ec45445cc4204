"""Drop-in replacements for segmentation_models_pytorch's region losses.

``from segfast.compat.smp import DiceLoss`` in place of
``from segmentation_models_pytorch.losses import DiceLoss``: the same
arguments and semantics (smp >= 0.5): statistics pooled over the batch, one
score per class, classes absent from the (masked) target zeroed but counted
in the mean, ``smooth`` added to numerator and denominator, the denominator
clamped to ``eps``, the soft-label intersection (Σp + Σt - Σ|p - t|)/2
= Σmin(p, t), ``classes`` and ``class_weights``; TverskyLoss raises the
aggregated loss to ``gamma``. ``backend=`` is an extra keyword.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from ..ops import region as _region

__all__ = ["DiceLoss", "JaccardLoss", "TverskyLoss", "BINARY_MODE", "MULTICLASS_MODE", "MULTILABEL_MODE"]

BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE = "binary", "multiclass", "multilabel"


class TverskyLoss(torch.nn.modules.loss._Loss):
    """segmentation_models_pytorch.losses.TverskyLoss, fused."""

    def __init__(self, mode: str, classes: Optional[List[int]] = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: Optional[int] = None,
                 eps: float = 1e-7, alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                 class_weights: Optional[List[float]] = None, backend: Optional[str] = None):
        super().__init__()
        if mode not in _region.MODES:
            raise ValueError(f"mode must be one of {_region.MODES}, got {mode!r}")
        if class_weights is not None and mode == BINARY_MODE:
            raise ValueError("class_weights are not supported with mode=binary")
        if classes is not None and mode == BINARY_MODE:
            raise ValueError("Masking classes is not supported with mode=binary")
        self.mode, self.log_loss, self.from_logits = mode, log_loss, from_logits
        self.smooth, self.ignore_index, self.eps = smooth, ignore_index, eps
        self.alpha, self.beta, self.gamma, self.backend = alpha, beta, gamma, backend
        self.classes = None if classes is None else torch.as_tensor(classes, dtype=torch.long)
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float)

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        if y_true.size(0) != y_pred.size(0):
            raise ValueError("y_pred and y_true must have the same batch size")
        if self.mode == MULTICLASS_MODE:
            act = "softmax" if self.from_logits else "identity"
            if y_true.dtype.is_floating_point:
                raise TypeError("multiclass mode takes class indices as target")
        else:
            act = "sigmoid" if self.from_logits else "identity"
            if not (y_true.dtype.is_floating_point or y_true.dtype == torch.bool) and self.mode == MULTILABEL_MODE:
                y_true = y_true.to(y_pred.dtype)  # smp: type_as(y_pred)
        if self.mode == BINARY_MODE:
            y_pred = y_pred.reshape(y_pred.shape[0], 1, -1)
            if y_true.dtype.is_floating_point or y_true.dtype == torch.bool:
                y_true = y_true.reshape(y_true.shape[0], 1, -1)
            else:
                y_true = y_true.reshape(y_true.shape[0], -1)
        stats = _region.plane_stats(*_region.canonical(
            y_pred, y_true, act=_region.ACT[act], binary=self.mode == BINARY_MODE,
            ignore_index=self.ignore_index, backend=self.backend)).sum(0)
        tp, fp, fn = _region.tp_fp_fn(stats, soft=True)
        score = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth).clamp_min(self.eps)
        loss = -torch.log(score.clamp_min(self.eps)) if self.log_loss else 1.0 - score
        loss = loss * (stats[:, 2] > 0).to(loss.dtype)  # classes absent from the target count as 0
        weights = None if self.class_weights is None else self.class_weights.to(loss.device)
        if self.classes is not None:
            loss = loss[self.classes.to(loss.device)]
            weights = None if weights is None else weights[self.classes.to(loss.device)]
        loss = loss.mean() if weights is None else (loss * weights).sum() / weights.sum()
        return loss ** self.gamma if self.gamma != 1.0 else loss


class DiceLoss(TverskyLoss):
    """segmentation_models_pytorch.losses.DiceLoss, fused."""

    def __init__(self, mode: str, classes: Optional[List[int]] = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: Optional[int] = None,
                 eps: float = 1e-7, class_weights: Optional[List[float]] = None, backend: Optional[str] = None):
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, 0.5, 0.5, 1.0,
                         class_weights, backend)


class JaccardLoss(TverskyLoss):
    """segmentation_models_pytorch.losses.JaccardLoss, fused."""

    def __init__(self, mode: str, classes: Optional[List[int]] = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: Optional[int] = None,
                 eps: float = 1e-7, class_weights: Optional[List[float]] = None, backend: Optional[str] = None):
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, 1.0, 1.0, 1.0,
                         class_weights, backend)
