"""Drop-in replacements for MONAI's region losses.

``from segfast.compat.monai import DiceLoss`` in place of
``from monai.losses import DiceLoss``: the same constructor arguments, the
same results (MONAI >= 1.4 semantics, soft_label and ignore_index included),
computed by segfast's fused kernels. ``other_act`` is applied in PyTorch
before the kernels (which then take probabilities). ``backend=`` is an extra
keyword. MONAI itself is not needed. MONAI's own loss tests pass with the
import swapped (tools/run_peer_tests.py), but for TorchScript: the classes
are not scriptable; use torch.compile or torch.export.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import Tensor

from .. import _doc
from ..ops.region import generalized_dice_weights
from ..ops import _common
from ..ops import region as _region
from ..ops._common import require

__all__ = ["ShapeError", "DiceLoss", "GeneralizedDiceLoss", "TverskyLoss", "FocalLoss", "DiceCELoss", "DiceFocalLoss"]


class ShapeError(ValueError, AssertionError):
    """A target whose shape does not fit the input's.

    MONAI raises AssertionError there, segfast ValueError: this is both, so a
    caller catching either sees it.
    """


def _float_labels(target: Tensor) -> Tensor:
    """MONAI's one_hot casts class indices with .long(): float label maps
    (LoadImage gives float32) are accepted as such."""
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        return target.long()
    return target


def _onehot_keep(target: Tensor, ignore: int) -> Tensor:
    """MONAI's ignore mask of a one-hot target [N, C, *] (monai.metrics.utils.
    create_ignore_mask) as booleans [N, 1, *]: the pixels of the ignored
    class, or (a sentinel index outside the classes) those with no class
    at all, are out."""
    keep = (target[:, ignore] == 0) if 0 <= ignore < target.shape[1] else (target.sum(1) > 0)
    return keep.unsqueeze(1)


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

    def _raw_stats(self, input: Tensor, target: Tensor, xent: int = 0) -> Tensor:
        """MONAI's preprocessing, expressed as kernel arguments; -> sums [N, C, K]
        (with a pixel term ``xent``, its sums in two more columns)."""
        C = input.shape[1]
        act = _region.ACT["identity"]
        if self.sigmoid:
            act = _region.ACT["sigmoid"]
        if self.softmax:
            if C == 1:
                warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=4)
            else:
                act = _region.ACT["softmax"]
        if self.other_act is not None:
            input = self.other_act(input)
        labels = self.to_onehot_y and C > 1
        if self.to_onehot_y and C == 1:
            warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=4)
        if labels:
            target = _float_labels(target)
            if target.dim() == input.dim() and target.shape[2:] != input.shape[2:]:
                raise ShapeError(f"ground truth has different shape ({tuple(target.shape)}) "
                                 f"from input ({tuple(input.shape)})")
        ignore = self.ignore_index
        if not labels:
            if target.dim() == input.dim() and target.shape[1:] != input.shape[1:]:
                raise ShapeError(f"ground truth has different shape ({tuple(target.shape)}) "
                                 f"from input ({tuple(input.shape)})")
            if not (target.dtype.is_floating_point or target.dtype == torch.bool):
                target = target.to(input.dtype if input.dtype != torch.float64 else torch.float64)
            if ignore is not None and C > 1:
                target = torch.where(_onehot_keep(target, ignore), target, float("-inf"))
                ignore = float("-inf")
        x, t, is_label, act, off, ign, backend = _region.canonical(
            input, target, act=act, ignore_index=ignore, backend=self.backend)
        return _region.plane_stats(x, t, is_label, act, off, ign, backend, xent=xent)

    def _pool(self, stats: Tensor, flat: bool = False) -> Tensor:
        """include_background and batch applied to the sums [N, C, K]. ``flat``:
        an input without spatial dims, (N, C), whose sums MONAI takes over
        every dim at once without ``batch`` (a reduction over the empty list
        of spatial dims), over N with it."""
        if not self.include_background:
            if stats.shape[1] == 1:
                warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=4)
            else:
                stats = stats[:, 1:]
        if flat and not self.batch:
            return stats.sum((0, 1)).unsqueeze(0)
        return stats.sum(0) if self.batch else stats

    def _stats(self, input: Tensor, target: Tensor) -> Tensor:
        return self._pool(self._raw_stats(input, target), input.dim() == 2)

    def _reduce(self, f: Tensor, input: Tensor, broadcast: bool) -> Tensor:
        if input.dim() == 2 and not self.batch:  # one score for the whole batch (see _pool)
            return f.reshape(())
        if self.reduction == "mean":
            return f.mean()
        if self.reduction == "sum":
            return f.sum()
        if broadcast:  # MONAI keeps a shape broadcastable against the input
            return f.view(list(f.shape[0:2]) + [1] * (input.dim() - 2))
        return f


class DiceLoss(_MonaiRegion):
    """monai.losses.DiceLoss, fused: the same arguments and results.

    1 - (2·I + smooth_nr) / (P + T + smooth_dr) per (image, class), or the
    soft Jaccard form with ``jaccard=True``; MONAI >= 1.4 semantics, soft_label
    and ignore_index included.

    {torchscript}

    Args:
        {act_args}
        squared_pred: use squared predictions and targets in the denominator.
        jaccard: compute the Jaccard index (soft IoU) instead.
        reduction: "mean", "sum" or "none" (MONAI's [N, C, 1, ...] shape).
        {smooth_args}
        weight: per-class weights (a scalar or one per kept class), >= 0.
        soft_label: the soft-label form of the intersection (MONAI's).
        ignore_index: class index whose pixels count nowhere.
        {backend}

    Returns:
        Called as ``loss_fn(input, target)``: the loss, 0-d for "mean" / "sum",
        [N, C, 1, ...] for "none" (MONAI's shapes).

    Raises:
        ValueError: incompatible activation flags, an unknown reduction, a bad
            ``weight`` length or negative weights.
        TypeError: ``other_act`` that is not callable.
        ShapeError: a target whose shape does not fit the input's (when called).

    Example:
        >>> import torch
        >>> from segfast.compat.monai import DiceLoss
        >>> loss_fn = DiceLoss(softmax=True, to_onehot_y=True)
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.8333
        >>> loss.backward()
    """

    def __init__(self, include_background=True, to_onehot_y=False, sigmoid=False, softmax=False,
                 other_act=None, squared_pred=False, jaccard=False, reduction="mean", smooth_nr=1e-5,
                 smooth_dr=1e-5, batch=False, weight=None, soft_label=False, ignore_index=None, backend=None):
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction,
                         smooth_nr, smooth_dr, batch, soft_label, ignore_index, backend)
        self.squared_pred, self.jaccard = squared_pred, jaccard
        self.register_buffer("class_weight", None if weight is None else torch.as_tensor(weight))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return self._loss(self._stats(input, target), input)

    def _loss(self, s: Tensor, input: Tensor) -> Tensor:
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
            require(~(w < 0).any(), "the value/values of the `weight` should be no less than 0.")
            f = f * w.to(f)
        return self._reduce(f, input, broadcast=True)


class TverskyLoss(_MonaiRegion):
    """monai.losses.TverskyLoss, fused: the same arguments and results.

    1 - (I + smooth_nr) / (I + alpha·FP + beta·FN + smooth_dr) per (image,
    class).

    {torchscript}

    Args:
        {act_args}
        alpha: weight of the false positives.
        beta: weight of the false negatives.
        reduction: "mean", "sum" or "none" ([N, C]).
        {smooth_args}
        soft_label: the soft-label form of the intersection (MONAI's).
        ignore_index: class index whose pixels count nowhere.
        {backend}

    Returns:
        Called as ``loss_fn(input, target)``: the loss, 0-d for "mean" / "sum",
        [N, C] for "none".

    Raises:
        ValueError: incompatible activation flags, an unknown reduction.
        TypeError: ``other_act`` that is not callable.
        ShapeError: a target whose shape does not fit the input's (when called).

    Example:
        >>> import torch
        >>> from segfast.compat.monai import TverskyLoss
        >>> loss_fn = TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.8611
        >>> loss.backward()
    """

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
    """monai.losses.GeneralizedDiceLoss, fused: the same arguments and results.

    One score per image (per batch with ``batch``), the class weights from
    ``w_type`` computed in float32 as MONAI does.

    {torchscript}

    Args:
        {act_args}
        w_type: "square", "simple" or "uniform".
        reduction: "mean", "sum" or "none" ([N, 1, 1, ...]).
        {smooth_args}
        soft_label: the soft-label form of the intersection (MONAI's).
        {backend}

    Returns:
        Called as ``loss_fn(input, target)``: the loss, 0-d for "mean" / "sum".

    Raises:
        ValueError: incompatible activation flags, an unknown reduction or
            ``w_type``.
        TypeError: ``other_act`` that is not callable.
        ShapeError: a target whose shape does not fit the input's (when called).

    Example:
        >>> import torch
        >>> from segfast.compat.monai import GeneralizedDiceLoss
        >>> loss_fn = GeneralizedDiceLoss(softmax=True, to_onehot_y=True)
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.6666
        >>> loss.backward()
    """

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


# ------------------------------------------------------------------ pixel losses


class FocalLoss(torch.nn.modules.loss._Loss):
    """monai.losses.FocalLoss, fused: the same arguments and results.

    MONAI's conventions, reproduced: ``alpha=None`` applies no alpha (not
    0.25); a scalar alpha in the softmax form weighs background by 1 - alpha
    and every other class by alpha (ignored with include_background=False);
    a per-class alpha in the sigmoid form weighs the positives only;
    include_background=False drops channel 0 *before* the softmax; "mean"
    divides by every element (N·C·spatial), or by the valid pixels with
    ``ignore_index``; "sum" averages over space first (over each image's
    valid pixels with ``ignore_index``). ``ignore_index`` on one-hot targets
    masks whole pixels as MONAI does: those of the ignored class, or (a
    sentinel index outside the classes) those with no class at all. Float
    label maps are cast as MONAI's one_hot casts them; (N, C) inputs take
    (N,) or (N, 1) labels.

    Differences on soft (non-binary) targets only: the sigmoid form uses
    torchvision's p_t = p·t + (1 - p)(1 - t) where MONAI uses
    sigmoid(x(2t - 1)), and weighs by a per-class alpha as α·t + (1 - t)
    where MONAI takes α only where t == 1; with ``ignore_index`` a pixel with
    any weight on the ignored class is dropped, where MONAI scales its logits
    and loss by 1 - t. They agree on hard targets.

    Every form runs segfast's pixel kernels, as ``segfast.focal_loss``: the
    sigmoid form, and the softmax form on class indices
    (``to_onehot_y=True``) or on one-hot / soft targets; a per-class alpha
    in the sigmoid form costs two passes.
    {torchscript}

    Args:
        include_background: False drops channel 0.
        to_onehot_y: the target holds class indices [N, 1, *spatial].
        gamma: focusing exponent.
        alpha: None, a scalar, or one per class (softmax form).
        weight: per-class factors (a scalar or one per channel), >= 0.
        reduction: "mean", "sum" or "none" ([N, C, *spatial]).
        use_softmax: the softmax form (else the sigmoid form).
        ignore_index: class index whose pixels count nowhere.
        {backend}

    Returns:
        Called as ``loss_fn(input, target)``: the loss, 0-d for "mean" / "sum",
        [N, C, *spatial] for "none".

    Raises:
        ValueError: an unknown reduction; when called, shapes that do not fit,
            a bad ``weight`` or ``alpha`` length, negative weights.

    Example:
        >>> import torch
        >>> from segfast.compat.monai import FocalLoss
        >>> loss_fn = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)
        >>> labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 3, 4, 4), labels).item(), 4)
        0.1628
    """

    def __init__(self, include_background=True, to_onehot_y=False, gamma=2.0, alpha=None, weight=None,
                 reduction="mean", use_softmax=False, ignore_index=None, backend=None):
        reduction = getattr(reduction, "value", reduction)
        _region.check_reduction(reduction)
        super().__init__(reduction=reduction)
        self.include_background, self.to_onehot_y, self.gamma = include_background, to_onehot_y, gamma
        self.alpha = None if alpha is None else (float(alpha) if isinstance(alpha, (int, float))
                                                 else torch.as_tensor(alpha, dtype=torch.float32))
        self.register_buffer("class_weight", None if weight is None else torch.as_tensor(weight))
        self.use_softmax, self.ignore_index, self.backend = use_softmax, ignore_index, backend

    def _class_factors(self, C: int, device) -> Optional[Tensor]:
        w = None
        if self.class_weight is not None:
            cw = self.class_weight.to(device=device, dtype=torch.float32)
            if cw.ndim > 0:
                if C == 1:
                    raise ValueError("Per-class class_weight is not supported for single-channel outputs.")
                if cw.numel() != C:
                    raise ValueError(f"The number of class_weight ({cw.numel()}) must match the number of "
                                     f"output channels ({C}).")
            require(~(cw < 0).any(), "class_weight values must be non-negative.")  # on the device on CUDA
            w = cw.expand(C).clone()
        return w

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        from ..ops import pixel as _pixel

        C = input.shape[1]
        labels = self.to_onehot_y and C > 1
        if self.to_onehot_y and C == 1:
            warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=2)
        drop = not self.include_background and C > 1
        if not self.include_background and C == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=2)
        ignore, keep = self.ignore_index, None
        if labels:
            target = _float_labels(target)
        else:
            if target.shape != input.shape:
                raise ValueError(f"ground truth has different shape ({target.shape}) from input ({input.shape})")
            if not (target.dtype.is_floating_point or target.dtype == torch.bool):
                target = target.float()
            if ignore is not None and C > 1:  # MONAI's mask, taken before the background is dropped
                keep = _onehot_keep(target, ignore)
            if drop:
                target = target[:, 1:]
        x_in = input[:, 1:] if drop else input
        Cp = x_in.shape[1]
        w = self._class_factors(Cp, input.device)
        alpha = self.alpha
        if isinstance(alpha, Tensor) and alpha.shape[0] != Cp:
            raise ValueError(f"The length of alpha ({alpha.shape[0]}) must match the number of classes ({Cp}).")
        if self.use_softmax:
            kind = _pixel.FOCAL_SOFTMAX
            if isinstance(alpha, float):
                if not self.include_background:
                    warnings.warn("`include_background=False`, scalar `alpha` ignored when using softmax.",
                                  stacklevel=2)
                    alpha = None
                else:
                    alpha = torch.tensor([1 - alpha] + [alpha] * (Cp - 1))
            if isinstance(alpha, Tensor):
                a = alpha.to(input.device, torch.float32)
                w = a if w is None else a * w
            act, a_sig = _region.ACT["softmax"], 0.25
        else:
            kind = _pixel.FOCAL_SIGMOID
            act, a_sig = _region.ACT["sigmoid"], (-1.0 if alpha is None or isinstance(alpha, Tensor) else alpha)
        if keep is not None:  # the kernels skip elements equal to the ignore value
            target = torch.where(keep, target, float("-inf"))
            ignore = float("-inf")
        x, t, is_label, _, off, ign, backend = _region.canonical(
            x_in, target, act=act, ignore_index=ignore, backend=self.backend,
            label_offset=int(drop) if labels else 0)
        kw = dict(label_offset=off, ignore_value=ign, gamma=float(self.gamma), backend=backend)
        if kind == _pixel.FOCAL_SIGMOID and isinstance(alpha, Tensor):
            # MONAI weighs the positives by alpha_c and the negatives by 1: the
            # kernel's alpha_t is t with alpha = 1, 1 - t with alpha = 0
            a = alpha.to(input.device, torch.float32)
            pos = self._reduced(x, t, is_label, kind, input, weight=a if w is None else a * w, alpha=1.0, **kw)
            return pos + self._reduced(x, t, is_label, kind, input, weight=w, alpha=0.0, **kw)
        return self._reduced(x, t, is_label, kind, input, weight=w, alpha=a_sig, **kw)

    def _reduced(self, x: Tensor, t: Tensor, is_label: bool, kind: int, input: Tensor, **kw) -> Tensor:
        """The kernels' loss on canonical views, reduced as MONAI reduces."""
        from ..ops import pixel as _pixel

        N, Cp, S = x.shape
        ignored = kw["ignore_value"] is not None
        if self.reduction == "none":
            m = _pixel.pixel_loss(x, t, is_label, kind, reduce=False, **kw)
            if _pixel.per_pixel(kind, is_label):  # MONAI's loss lives at the target class
                y = t.long() - kw["label_offset"]
                onehot = (y.unsqueeze(1) == torch.arange(Cp, device=x.device).view(1, Cp, 1)).to(m.dtype)
                m = m.unsqueeze(1) * onehot
            return m.view(N, Cp, *input.shape[2:])
        if self.reduction == "sum" and input.dim() > 2:
            if not ignored:  # MONAI's mean over space, then the sum
                return _pixel.pixel_loss(x, t, is_label, kind, scale0=1.0 / max(S, 1), **kw)
            # each image's sum over its valid pixels
            m = _pixel.pixel_loss(x, t, is_label, kind, reduce=False, **kw)
            valid = (t != kw["ignore_value"]).reshape(N, -1).sum(1).to(m.dtype)
            if not is_label:
                valid = valid / Cp  # every channel of a valid pixel is valid
            return (m.reshape(N, -1).sum(1) / valid.clamp(min=torch.finfo(m.dtype).eps)).sum()
        # "mean" (and "sum" without spatial dims: MONAI's mean over the empty list of dims averages everything)
        if not ignored:  # over every element
            return _pixel.pixel_loss(x, t, is_label, kind, scale0=1.0 / max(N * Cp * S, 1), **kw)
        # over the valid pixels: the kernels' count is pixels (softmax) or elements (sigmoid)
        scale = 1.0 if kind == _pixel.FOCAL_SOFTMAX else float(Cp)
        return _pixel.pixel_loss(x, t, is_label, kind, scale0=scale, norm=_pixel.NORM_COUNT, **kw)


class DiceCELoss(torch.nn.modules.loss._Loss):
    """monai.losses.DiceCELoss, fused: lambda_dice·DiceLoss + lambda_ce·CrossEntropyLoss.

    BCEWithLogitsLoss with pos_weight=weight for one channel. With
    ``softmax=True, to_onehot_y=True`` and class-index targets the
    cross-entropy sums come out of the Dice kernels (two passes over the logits
    in all, as ``segfast.dice_ce_loss``); otherwise the terms run side by side,
    on segfast's kernels: one-hot or soft (C-channel) targets take torch's
    cross entropy on class probabilities (the mean over pixels, weights not
    normalized) from the softmax focal kernel at gamma = 0.
    {torchscript}

    Args:
        {act_args}
        squared_pred: use squared predictions and targets in the denominator.
        jaccard: compute the Jaccard index (soft IoU) instead of Dice.
        reduction: "mean" or "sum".
        {smooth_args}
        weight: per-class weights of both terms (the Dice term drops channel 0's
            with include_background=False).
        lambda_dice: weight of the Dice term, >= 0.
        lambda_ce: weight of the cross-entropy term, >= 0.
        label_smoothing: ε of the cross-entropy term.
        {backend}

    Returns:
        Called as ``loss_fn(input, target)``: the 0-d loss.

    Raises:
        ValueError: an unknown reduction, negative lambdas; when called, inputs
            and targets of different ranks or channel counts.

    Example:
        >>> import torch
        >>> from segfast.compat.monai import DiceCELoss
        >>> loss_fn = DiceCELoss(softmax=True, to_onehot_y=True)
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        1.9319
        >>> loss.backward()
    """

    def __init__(self, include_background=True, to_onehot_y=False, sigmoid=False, softmax=False, other_act=None,
                 squared_pred=False, jaccard=False, reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                 weight=None, lambda_dice=1.0, lambda_ce=1.0, label_smoothing=0.0, backend=None):
        reduction = getattr(reduction, "value", reduction)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"Unsupported reduction: {reduction}, available options are ['mean', 'sum'].")
        super().__init__(reduction=reduction)
        if lambda_dice < 0.0:
            raise ValueError("lambda_dice should be no less than 0.0.")
        if lambda_ce < 0.0:
            raise ValueError("lambda_ce should be no less than 0.0.")
        dice_weight = weight[1:] if weight is not None and not include_background else weight
        self.dice = DiceLoss(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                             softmax=softmax, other_act=other_act, squared_pred=squared_pred, jaccard=jaccard,
                             reduction=reduction, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                             weight=dice_weight, backend=backend)
        self.register_buffer("ce_weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.lambda_dice, self.lambda_ce, self.label_smoothing = lambda_dice, lambda_ce, label_smoothing
        self.backend = backend

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        from .. import functional as F

        if input.dim() != target.dim():
            raise ValueError("the number of dimensions for input and target should be the same, got shape "
                             f"{input.shape} and {target.shape}; if target is not one-hot encoded, please "
                             "provide a tensor with shape B1H[WD].")
        if target.shape[1] != 1 and target.shape[1] != input.shape[1]:
            raise ValueError("number of channels for target is neither 1 (without one-hot encoding) nor the same "
                             f"as input, got shape {input.shape} and {target.shape}.")
        d = self.dice
        if (input.shape[1] > 1 and target.shape[1] == 1 and d.softmax and d.to_onehot_y
                and input.dtype in _common.FLOATS):
            # one pass: the cross-entropy sums come out of the Dice statistics
            # kernel (segfast.dice_ce_loss's path), their gradient out of its backward
            raw = d._raw_stats(input, target, xent=_region.ref.XENT_CE)
            dice = d._loss(d._pool(raw[..., :_region.K], input.dim() == 2), input)
            s = raw.sum(0)
            C = s.shape[0]
            eps = float(self.label_smoothing)
            num = (1.0 - eps) * s[:, 7] + (eps / C) * s[:, 8]
            den = s[:, 2]
            if self.ce_weight is not None:
                w = _common.check_weight(self.ce_weight, C, s.device).to(s.dtype)
                num, den = num * w, den * w
            ce = num.sum() / den.sum() if self.reduction == "mean" else num.sum()
            return self.lambda_dice * dice + self.lambda_ce * ce.to(dice.dtype)
        dice = d(input, target)
        if input.shape[1] == 1:
            ce = F.binary_cross_entropy_with_logits(input, target.to(input.dtype), pos_weight=self.ce_weight,
                                                    reduction=self.reduction, backend=self.backend)
        elif target.shape[1] == 1:
            ce = F.cross_entropy(input, target[:, 0].long(), weight=self.ce_weight, reduction=self.reduction,
                                 label_smoothing=self.label_smoothing, backend=self.backend)
        else:
            ce = self._dense_ce(input, target)
        return self.lambda_dice * dice + self.lambda_ce * ce

    def _dense_ce(self, input: Tensor, target: Tensor) -> Tensor:
        """torch's cross entropy on class probabilities (one-hot or soft
        targets [N, C, *]), -Σ_c w_c·t_c·log p_c per pixel, summed or averaged
        over the pixels: the softmax focal kernel at gamma = 0."""
        from ..ops import pixel as _pixel

        C = input.shape[1]
        t = target if target.dtype.is_floating_point else target.to(input.dtype)
        eps = float(self.label_smoothing)
        if eps:
            t = t * (1.0 - eps) + eps / C
        x, t, _, _, _, _, backend = _region.canonical(input, t, act=_region.ACT["softmax"], backend=self.backend)
        w = None if self.ce_weight is None else _common.check_weight(self.ce_weight, C, x.device)
        scale = 1.0 / max(x.shape[0] * x.shape[2], 1) if self.reduction == "mean" else 1.0
        return _pixel.pixel_loss(x, t, False, _pixel.FOCAL_SOFTMAX, gamma=0.0, weight=w, scale0=scale,
                                 backend=backend)


class DiceFocalLoss(torch.nn.modules.loss._Loss):
    """monai.losses.DiceFocalLoss, fused: lambda_dice·DiceLoss + lambda_focal·FocalLoss.

    The focal term in MONAI's sigmoid form whatever the Dice activation
    (segfast's own dice_focal_loss offers the softmax form).

    {torchscript}

    Args:
        {act_args}
        squared_pred: use squared predictions and targets in the denominator.
        jaccard: compute the Jaccard index (soft IoU) instead of Dice.
        reduction: "mean", "sum" or "none".
        {smooth_args}
        gamma: the focal term's focusing exponent.
        weight: per-class weights of both terms.
        lambda_dice: weight of the Dice term, >= 0.
        lambda_focal: weight of the focal term, >= 0.
        alpha: the focal term's alpha (MONAI's convention, see FocalLoss).
        {backend}

    Returns:
        Called as ``loss_fn(input, target)``: the loss (0-d for "mean" / "sum").

    Raises:
        ValueError: negative lambdas, an unknown reduction; when called, inputs
            and targets of different ranks or channel counts.

    Example:
        >>> import torch
        >>> from segfast.compat.monai import DiceFocalLoss
        >>> loss_fn = DiceFocalLoss(softmax=True, to_onehot_y=True)
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        1.0066
        >>> loss.backward()
    """

    def __init__(self, include_background=True, to_onehot_y=False, sigmoid=False, softmax=False, other_act=None,
                 squared_pred=False, jaccard=False, reduction="mean", smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                 gamma=2.0, weight=None, lambda_dice=1.0, lambda_focal=1.0, alpha=None, backend=None):
        super().__init__(reduction=getattr(reduction, "value", reduction))
        if lambda_dice < 0.0:
            raise ValueError("lambda_dice should be no less than 0.0.")
        if lambda_focal < 0.0:
            raise ValueError("lambda_focal should be no less than 0.0.")
        self.dice = DiceLoss(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                             softmax=softmax, other_act=other_act, squared_pred=squared_pred, jaccard=jaccard,
                             reduction=reduction, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch,
                             weight=weight, backend=backend)
        self.focal = FocalLoss(include_background=include_background, to_onehot_y=to_onehot_y, gamma=gamma,
                               weight=weight, alpha=alpha, reduction=reduction, backend=backend)
        self.lambda_dice, self.lambda_focal = lambda_dice, lambda_focal

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.dim() != target.dim():
            raise ValueError("the number of dimensions for input and target should be the same, got shape "
                             f"{input.shape} and {target.shape}.")
        if target.shape[1] != 1 and target.shape[1] != input.shape[1]:
            raise ValueError("number of channels for target is neither 1 (without one-hot encoding) nor the same "
                             f"as input, got shape {input.shape} and {target.shape}.")
        return self.lambda_dice * self.dice(input, target) + self.lambda_focal * self.focal(input, target)


# The parts the docstrings above share.
_DOC = {
    "torchscript": """\
TorchScript is not supported (``torch.jit.script`` of this module fails);
compile with ``torch.compile`` or export with ``torch.export`` instead.""",
    "act_args": """\
include_background: False drops channel 0 (ignored with one channel).
to_onehot_y: the target holds class indices [N, 1, *spatial] (one-hot
    encoded inside the kernels, never materialised).
sigmoid: apply a sigmoid to the input.
softmax: apply a softmax over the channels.
other_act: a callable applied to the input in PyTorch before the kernels.""",
    "smooth_args": """\
smooth_nr: added to the numerator.
smooth_dr: added to the denominator.
batch: pool the sums over the batch before the formula.""",
    "backend": 'backend: "triton", "cuda", "cpu", "torch" or None (the default of the device); not in MONAI.',
}
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__doc__ = _doc.expand(_obj.__doc__, _DOC)
