"""Drop-in replacements for MONAI's region losses.

``from segfast.compat.monai import DiceLoss`` in place of
``from monai.losses import DiceLoss``: the same constructor arguments, the
same results (MONAI >= 1.4 semantics, soft_label and ignore_index included),
computed by segfast's fused kernels. ``other_act`` is applied in PyTorch
before the kernels (which then take probabilities). ``backend=`` is an extra
keyword. MONAI itself is not needed.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from ..functional import generalized_dice_weights
from ..ops import region as _region

__all__ = ["DiceLoss", "GeneralizedDiceLoss", "TverskyLoss"]


class _MonaiRegion(torch.nn.modules.loss._Loss):
    def __init__(self, include_background=True, to_onehot_y=False, sigmoid=False, softmax=False,
                 other_act: Optional[Callable] = None, reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5,
                 batch=False, soft_label=False, ignore_index=None, backend=None):
        reduction = getattr(reduction, "value", reduction)
        _region.check_reduction(reduction)
        super().__init__(reduction=reduction)
        if other_act is not None and not callable(other_act):
            raise TypeError(f"other_act must be None or callable but is {type(other_act).__name__}.")
        if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
            raise ValueError("Incompatible values: more than 1 of [sigmoid=True, softmax=True, other_act is not None].")
        self.include_background, self.to_onehot_y = include_background, to_onehot_y
        self.sigmoid, self.softmax, self.other_act = sigmoid, softmax, other_act
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)
        self.batch, self.soft_label, self.ignore_index, self.backend = batch, soft_label, ignore_index, backend

    def _stats(self, input: Tensor, target: Tensor) -> Tensor:
        """MONAI's preprocessing, expressed as kernel arguments; -> sums [N or -, C', 7]."""
        C = input.shape[1]
        act = _region.ACT["identity"]
        if self.sigmoid:
            act = _region.ACT["sigmoid"]
        if self.softmax:
            if C == 1:
                warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=3)
            else:
                act = _region.ACT["softmax"]
        if self.other_act is not None:
            input = self.other_act(input)
        labels = self.to_onehot_y and C > 1
        if self.to_onehot_y and C == 1:
            warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=3)
        ignore = self.ignore_index
        if not labels:
            if target.shape[1:2] != (C,) and target.dim() == input.dim():
                raise AssertionError(f"ground truth has different shape ({tuple(target.shape)}) "
                                     f"from input ({tuple(input.shape)})")
            if not (target.dtype.is_floating_point or target.dtype == torch.bool):
                target = target.to(input.dtype if input.dtype != torch.float64 else torch.float64)
            if ignore is not None and C > 1:
                # MONAI masks whole pixels of a one-hot target: those of the
                # ignored class, or (sentinel index) those with no class at all.
                keep = (target[:, ignore] == 0) if 0 <= ignore < C else (target != 0).any(1)
                target = torch.where(keep.unsqueeze(1), target, float("-inf"))
                ignore = float("-inf")
        x, t, is_label, act, off, ign, backend = _region.canonical(
            input, target, act=act, ignore_index=ignore, backend=self.backend)
        stats = _region.plane_stats(x, t, is_label, act, off, ign, backend)
        if not self.include_background:
            if C == 1:
                warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=3)
            else:
                stats = stats[:, 1:]
        return stats.sum(0) if self.batch else stats

    def _reduce(self, f: Tensor, input: Tensor, broadcast: bool) -> Tensor:
        if self.reduction == "mean":
            return f.mean()
        if self.reduction == "sum":
            return f.sum()
        if broadcast:  # MONAI keeps a shape broadcastable against the input
            return f.view(list(f.shape[0:2]) + [1] * (input.dim() - 2))
        return f


class DiceLoss(_MonaiRegion):
    """monai.losses.DiceLoss, fused (the same arguments; ``backend=`` extra)."""

    def __init__(self, include_background=True, to_onehot_y=False, sigmoid=False, softmax=False,
                 other_act=None, squared_pred=False, jaccard=False, reduction="mean", smooth_nr=1e-5,
                 smooth_dr=1e-5, batch=False, weight=None, soft_label=False, ignore_index=None, backend=None):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
                         smooth_nr, smooth_dr, batch, soft_label, ignore_index, backend)
        self.squared_pred, self.jaccard = squared_pred, jaccard
        self.register_buffer("class_weight", None if weight is None else torch.as_tensor(weight))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        s = self._stats(input, target)
        tp, fp, fn = _region.tp_fp_fn(s, squared=self.squared_pred, soft=self.soft_label and not self.squared_pred)
        if not self.jaccard:
            fp, fn = 0.5 * fp, 0.5 * fn
        f = 1 - (2 * tp + self.smooth_nr) / (2 * (tp + fp + fn) + self.smooth_dr)
        n_classes = s.shape[-2]
        if self.class_weight is not None and n_classes != 1:
            w = self.class_weight
            if w.ndim == 0:
                w = w.expand(n_classes)
            elif w.shape[0] != n_classes:
                raise ValueError("The length of the `weight` sequence should be the same as the number of classes. "
                                 "If `include_background=False`, the weight should not include the background "
                                 "category class 0.")
            if w.min() < 0:
                raise ValueError("the value/values of the `weight` should be no less than 0.")
            f = f * w.to(f)
        return self._reduce(f, input, broadcast=True)


class TverskyLoss(_MonaiRegion):
    """monai.losses.TverskyLoss, fused (the same arguments; ``backend=`` extra)."""

    def __init__(self, include_background=True, to_onehot_y=False, sigmoid=False, softmax=False,
                 other_act=None, alpha=0.5, beta=0.5, reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5,
                 batch=False, soft_label=False, ignore_index=None, backend=None):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
                         smooth_nr, smooth_dr, batch, soft_label, ignore_index, backend)
        self.alpha, self.beta = alpha, beta

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        tp, fp, fn = _region.tp_fp_fn(self._stats(input, target), soft=self.soft_label)
        f = 1.0 - (tp + self.smooth_nr) / (tp + self.alpha * fp + self.beta * fn + self.smooth_dr)
        return self._reduce(f, input, broadcast=False)


class GeneralizedDiceLoss(_MonaiRegion):
    """monai.losses.GeneralizedDiceLoss, fused (the same arguments; ``backend=`` extra)."""

    def __init__(self, include_background=True, to_onehot_y=False, sigmoid=False, softmax=False,
                 other_act=None, w_type="square", reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5,
                 batch=False, soft_label=False, backend=None):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
                         smooth_nr, smooth_dr, batch, soft_label, None, backend)
        self.w_type = str(getattr(w_type, "value", w_type)).lower()

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        s = self._stats(input, target)
        tp, fp, fn = _region.tp_fp_fn(s, soft=self.soft_label)
        # MONAI computes the class weights in float32 whatever the input dtype.
        w = generalized_dice_weights(s[..., 2].float(), self.w_type, self.batch)
        numer = 2.0 * (tp * w).sum(-1, keepdim=True) + self.smooth_nr
        denom = ((2 * tp + fp + fn) * w).sum(-1, keepdim=True) + self.smooth_dr
        return self._reduce(1.0 - numer / denom, input, broadcast=True)
