"""Drop-in replacements for segmentation_models_pytorch's region losses.

``from segfast.compat.smp import DiceLoss`` in place of
``from segmentation_models_pytorch.losses import DiceLoss``: the same
arguments and semantics (smp >= 0.5): statistics pooled over the batch, one
score per class, classes absent from the (masked) target zeroed but counted
in the mean, ``smooth`` added to numerator and denominator, the denominator
clamped to ``eps``, the soft-label intersection (Σp + Σt - Σ|p - t|)/2
= Σmin(p, t), ``classes`` and ``class_weights``; TverskyLoss raises the
aggregated loss to ``gamma``. ``backend=`` is an extra keyword. smp's own
tests/test_losses.py passes with the import swapped (tests/test_peers.py).
The classes are not TorchScript-scriptable; use torch.compile or torch.export.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from .. import _doc
from ..ops import region as _region

__all__ = ["DiceLoss", "JaccardLoss", "TverskyLoss", "FocalLoss", "SoftBCEWithLogitsLoss", "SoftCrossEntropyLoss",
           "LovaszLoss", "BINARY_MODE", "MULTICLASS_MODE", "MULTILABEL_MODE"]

BINARY_MODE, MULTICLASS_MODE, MULTILABEL_MODE = "binary", "multiclass", "multilabel"


def load_smp_losses():
    """segmentation_models_pytorch.losses from an installed smp (the peer the
    tests and benchmarks compare with), without running smp's package
    __init__, which imports its model zoo and needs torchvision. None if smp
    is not installed."""
    import importlib
    import importlib.util
    import sys
    import types

    if "segmentation_models_pytorch.losses" in sys.modules:  # before find_spec: our stand-in package has no spec
        return sys.modules["segmentation_models_pytorch.losses"]
    spec = importlib.util.find_spec("segmentation_models_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg = types.ModuleType("segmentation_models_pytorch")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("segmentation_models_pytorch", pkg)
    return importlib.import_module("segmentation_models_pytorch.losses")


class TverskyLoss(torch.nn.modules.loss._Loss):
    """segmentation_models_pytorch.losses.TverskyLoss, fused; ``gamma`` raises the mean loss.

    The same arguments and semantics (smp >= 0.5): statistics pooled over the
    batch, one score per class, classes absent from the (masked) target zeroed
    but counted in the mean, ``smooth`` added to numerator and denominator,
    the denominator clamped to ``eps``.

    {torchscript}

    Args:
        {region_args}
        alpha: weight of the false positives.
        beta: weight of the false negatives.
        gamma: exponent of the aggregated loss.
        class_weights: per-class weights of the mean over classes.
        {backend}
        confusion: segfast's addition ("multiclass", class-index targets): a
            ``segfast.metrics.ConfusionMatrix`` or an int64 [C, C] tensor that
            each call adds the counts of (label, argmax) to, from the same pass.

    Returns:
        Called as ``loss_fn(y_pred, y_true)``: the 0-d loss.

    Raises:
        {region_raises}

    Example:
        >>> import torch
        >>> from segfast.compat.smp import TverskyLoss
        >>> loss_fn = TverskyLoss("multiclass", alpha=0.3, beta=0.7)
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.1944
        >>> loss.backward()
    """

    def __init__(self, mode: str, classes: Optional[List[int]] = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: Optional[int] = None,
                 eps: float = 1e-7, alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                 class_weights: Optional[List[float]] = None, backend: Optional[str] = None, confusion=None):
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
        self.confusion = confusion  # segfast's addition (multiclass): see segfast.functional's ``confusion``

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
        conf = None if self.confusion is None else _region.confusion_target(
            self.confusion, y_pred, y_true, self.mode, self.ignore_index)
        stats = _region.plane_stats(*_region.canonical(
            y_pred, y_true, act=_region.ACT[act], binary=self.mode == BINARY_MODE,
            ignore_index=self.ignore_index, backend=self.backend), confusion=conf).sum(0)
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
    """segmentation_models_pytorch.losses.DiceLoss, fused.

    The same arguments and semantics (smp >= 0.5): statistics pooled over the
    batch, one score per class, classes absent from the (masked) target zeroed
    but counted in the mean, ``smooth`` added to numerator and denominator,
    the denominator clamped to ``eps``.

    {torchscript}

    Args:
        {region_args}
        class_weights: per-class weights of the mean over classes.
        {backend}
        confusion: segfast's addition ("multiclass", class-index targets): a
            ``segfast.metrics.ConfusionMatrix`` or an int64 [C, C] tensor that
            each call adds the counts of (label, argmax) to, from the same pass.

    Returns:
        Called as ``loss_fn(y_pred, y_true)``: the 0-d loss.

    Raises:
        {region_raises}

    Example:
        >>> import torch
        >>> from segfast.compat.smp import DiceLoss
        >>> loss_fn = DiceLoss("multiclass")
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.1667
        >>> loss.backward()
    """

    def __init__(self, mode: str, classes: Optional[List[int]] = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: Optional[int] = None,
                 eps: float = 1e-7, class_weights: Optional[List[float]] = None, backend: Optional[str] = None,
                 confusion=None):
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, 0.5, 0.5, 1.0,
                         class_weights, backend, confusion)


class JaccardLoss(TverskyLoss):
    """segmentation_models_pytorch.losses.JaccardLoss, fused.

    The same arguments and semantics (smp >= 0.5): statistics pooled over the
    batch, one score per class, classes absent from the (masked) target zeroed
    but counted in the mean, ``smooth`` added to numerator and denominator,
    the denominator clamped to ``eps``.

    {torchscript}

    Args:
        {region_args}
        class_weights: per-class weights of the mean over classes.
        {backend}
        confusion: segfast's addition ("multiclass", class-index targets): a
            ``segfast.metrics.ConfusionMatrix`` or an int64 [C, C] tensor that
            each call adds the counts of (label, argmax) to, from the same pass.

    Returns:
        Called as ``loss_fn(y_pred, y_true)``: the 0-d loss.

    Raises:
        {region_raises}

    Example:
        >>> import torch
        >>> from segfast.compat.smp import JaccardLoss
        >>> loss_fn = JaccardLoss("multiclass")
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.2222
        >>> loss.backward()
    """

    def __init__(self, mode: str, classes: Optional[List[int]] = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: Optional[int] = None,
                 eps: float = 1e-7, class_weights: Optional[List[float]] = None, backend: Optional[str] = None,
                 confusion=None):
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, 1.0, 1.0, 1.0,
                         class_weights, backend, confusion)


# ------------------------------------------------------------------ pixel losses


def _per_class(v, C: int, device, what: str) -> Optional[Tensor]:
    """A [C]-broadcastable weight (e.g. shape (C, 1, 1)) as a [C] vector."""
    if v is None:
        return None
    v = torch.as_tensor(v, dtype=torch.float32, device=device)
    if v.numel() == 1:
        return v.reshape(1).expand(C)
    if v.numel() != C or (v.dim() > 1 and v.shape[0] != C):
        raise NotImplementedError(f"segfast.compat.smp: {what} must be one value per channel (or a scalar)")
    return v.reshape(C)


class FocalLoss(torch.nn.modules.loss._Loss):
    """segmentation_models_pytorch.losses.FocalLoss, fused.

    The sigmoid focal loss per class (one class against the rest, in every
    mode), averaged over the valid pixels, then over classes (weighted by
    ``class_weights``). smp's p_t = exp(-bce) equals torchvision's on hard
    targets (the only ones tested).

    {torchscript}

    Args:
        mode: "binary", "multiclass" or "multilabel".
        alpha: weight of the positives (None: no alpha).
        gamma: focusing exponent.
        ignore_index: label whose pixels count nowhere (not in multilabel mode).
        from_logits: False takes probabilities.
        eps: the clamp of probabilities turned back into logits.
        reduction: "mean" or "sum".
        normalized: must be False.
        reduced_threshold: must be None.
        class_weights: per-class weights of the mean over classes.
        {backend}

    Returns:
        Called as ``loss_fn(y_pred, y_true)``: the 0-d loss.

    Raises:
        ValueError: an unknown ``mode``, ``class_weights`` with ``mode="binary"``.
        NotImplementedError: ``normalized``, ``reduced_threshold``,
            ``reduction="none"``; per-element ``ignore_index`` in multilabel
            mode (when called).

    Example:
        >>> import torch
        >>> from segfast.compat.smp import FocalLoss
        >>> loss_fn = FocalLoss("binary", alpha=0.25)
        >>> round(loss_fn(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)).item(), 4)
        0.0433
    """

    def __init__(self, mode: str, alpha: Optional[float] = None, gamma: Optional[float] = 2.0,
                 ignore_index: Optional[int] = None, from_logits: bool = True, eps: float = 1e-7,
                 reduction: Optional[str] = "mean", normalized: bool = False,
                 reduced_threshold: Optional[float] = None, class_weights: Optional[List[float]] = None,
                 backend: Optional[str] = None):
        super().__init__()
        if mode not in _region.MODES:
            raise ValueError(f"mode must be one of {_region.MODES}, got {mode!r}")
        if class_weights is not None and mode == BINARY_MODE:
            raise ValueError("class_weights are not supported with mode=binary")
        if normalized or reduced_threshold is not None or reduction not in ("mean", "sum"):
            raise NotImplementedError("segfast.compat.smp.FocalLoss: normalized, reduced_threshold and "
                                      "reduction other than 'mean'/'sum'")
        self.mode, self.alpha, self.gamma, self.ignore_index = mode, alpha, gamma, ignore_index
        self.from_logits, self.eps, self.reduction, self.backend = from_logits, eps, reduction, backend
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float)

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        from ..ops import pixel as _pixel

        if not self.from_logits:  # smp: probabilities to the logits its per-class sigmoid form takes
            p = y_pred.clamp(self.eps, 1 - self.eps)
            y_pred = torch.log(p) if self.mode == MULTICLASS_MODE else torch.log(p / (1 - p))
        if self.mode == MULTILABEL_MODE and self.ignore_index is not None:
            raise NotImplementedError("segfast.compat.smp.FocalLoss: ignore_index in multilabel mode")
        if self.mode == BINARY_MODE:
            y_pred = y_pred.reshape(y_pred.shape[0], 1, -1)
            y_true = y_true.reshape(y_true.shape[0], 1, -1) if y_true.dtype.is_floating_point \
                else y_true.reshape(y_true.shape[0], -1)
        elif self.mode == MULTILABEL_MODE and not y_true.dtype.is_floating_point:
            y_true = y_true.to(y_pred.dtype)
        C = y_pred.shape[1]
        x, t, is_label, _, off, ign, backend = _region.canonical(
            y_pred, y_true, act=_region.ACT["sigmoid"], binary=self.mode == BINARY_MODE,
            ignore_index=self.ignore_index, backend=self.backend)
        w = None if self.class_weights is None else self.class_weights.to(x.device)
        # Σ_c w_c·mean_c / Σ_c w_c: every class has the same valid pixels, so with
        # the kernels' count (valid pixels x C) this is a weighted sum times C / Σw.
        wsum = None if w is None else float(self.class_weights.sum())  # read where it is kept (the host)
        scale = 1.0 if w is None else C / wsum
        if self.reduction == "sum":
            scale = scale / C if w is None else 1.0 / wsum
        norm = _pixel.NORM_COUNT if self.reduction == "mean" else _pixel.NORM_SUM
        return _pixel.pixel_loss(x, t, is_label, _pixel.FOCAL_SIGMOID, label_offset=off, ignore_value=ign,
                                 weight=w, gamma=float(self.gamma),
                                 alpha=-1.0 if self.alpha is None else float(self.alpha),
                                 scale0=scale, norm=norm, backend=backend)


class SoftBCEWithLogitsLoss(torch.nn.Module):
    """segmentation_models_pytorch.losses.SoftBCEWithLogitsLoss, fused.

    BCE with label smoothing ``smooth_factor``, ``weight`` / ``pos_weight``
    (one per channel), and ``ignore_index`` elements zeroed but counted in the
    mean.

    {torchscript}

    Args:
        weight: per-channel factors (or a scalar).
        ignore_index: target value whose elements are zeroed.
        reduction: "mean", "sum" or "none".
        smooth_factor: label smoothing s: t becomes t·(1 - 2s) + s.
        pos_weight: per-channel weight of the positive term.
        {backend}

    Returns:
        Called as ``loss_fn(y_pred, y_true)``: the loss, 0-d for "mean" /
        "sum", the input's shape for "none".

    Raises:
        ValueError: an unknown ``reduction``.
        NotImplementedError: when called, weights that are not one per channel.

    Example:
        >>> import torch
        >>> from segfast.compat.smp import SoftBCEWithLogitsLoss
        >>> loss_fn = SoftBCEWithLogitsLoss(smooth_factor=0.1)
        >>> round(loss_fn(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)).item(), 4)
        0.6931
    """

    def __init__(self, weight: Optional[Tensor] = None, ignore_index: Optional[int] = -100,
                 reduction: str = "mean", smooth_factor: Optional[float] = None,
                 pos_weight: Optional[Tensor] = None, backend: Optional[str] = None):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.ignore_index, self.reduction, self.smooth_factor, self.backend = (ignore_index, reduction,
                                                                               smooth_factor, backend)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        from .. import functional as F
        from ..ops import pixel as _pixel

        shape = y_pred.shape
        if y_pred.dim() < 2:  # smp's BCE is elementwise: a vector is N samples of one channel
            y_pred, y_true = y_pred.reshape(-1, 1), y_true.reshape(-1, 1)
        C = y_pred.shape[1]
        t = y_true.to(y_pred.dtype if y_pred.dtype != torch.float16 else torch.float32)
        if self.smooth_factor is not None:
            s = self.smooth_factor
            smoothed = t * (1 - 2 * s) + s
            t = smoothed if self.ignore_index is None else torch.where(y_true == self.ignore_index, t, smoothed)
        w = _per_class(self.weight, C, y_pred.device, "weight")
        pw = _per_class(self.pos_weight, C, y_pred.device, "pos_weight")
        if self.reduction != "mean":
            out = F.binary_cross_entropy_with_logits(y_pred, t, weight=w, pos_weight=pw, reduction=self.reduction,
                                                     ignore_index=self.ignore_index, backend=self.backend)
            return out.reshape(shape) if self.reduction == "none" else out
        x, tt, is_label, _, off, ign, backend = _region.canonical(
            y_pred, t, act=_region.ACT["sigmoid"], ignore_index=self.ignore_index, backend=self.backend)
        return _pixel.pixel_loss(x, tt, is_label, _pixel.BCE, ignore_value=ign, weight=w, pos_weight=pw,
                                 scale0=1.0 / max(y_pred.numel(), 1), backend=backend)


class SoftCrossEntropyLoss(torch.nn.Module):
    """segmentation_models_pytorch.losses.SoftCrossEntropyLoss, fused.

    Softmax cross entropy with label smoothing ``smooth_factor`` (ε/C on every
    class), ``ignore_index`` pixels zeroed but counted in the mean.

    {torchscript}

    Args:
        reduction: "mean", "sum" or "none" ([N, *spatial]).
        smooth_factor: label smoothing ε.
        ignore_index: label whose pixels are zeroed.
        dim: the class dimension; must be 1.
        {backend}

    Returns:
        Called as ``loss_fn(y_pred, y_true)``: the loss, 0-d for "mean" /
        "sum", [N, *spatial] for "none".

    Raises:
        ValueError: an unknown ``reduction``.
        NotImplementedError: ``dim`` != 1.
        TypeError: when called with dense targets.

    Example:
        >>> import torch
        >>> from segfast.compat.smp import SoftCrossEntropyLoss
        >>> loss_fn = SoftCrossEntropyLoss(smooth_factor=0.1)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 3, 4, 4), labels).item(), 4)
        1.0986
    """

    def __init__(self, reduction: str = "mean", smooth_factor: Optional[float] = None,
                 ignore_index: Optional[int] = -100, dim: int = 1, backend: Optional[str] = None):
        super().__init__()
        if dim != 1:
            raise NotImplementedError("segfast.compat.smp.SoftCrossEntropyLoss: dim must be 1")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction, self.smooth_factor, self.ignore_index, self.backend = (reduction, smooth_factor,
                                                                               ignore_index, backend)

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        from ..ops import pixel as _pixel

        x, t, is_label, _, off, ign, backend = _region.canonical(
            y_pred, y_true, act=_region.ACT["softmax"], ignore_index=self.ignore_index, backend=self.backend)
        if not is_label:
            raise TypeError("SoftCrossEntropyLoss takes class-index targets")
        kw = dict(ignore_value=ign, smoothing=float(self.smooth_factor or 0.0), backend=backend)
        if self.reduction == "none":
            return _pixel.pixel_loss(x, t, is_label, _pixel.CE, reduce=False, **kw).view(y_true.shape)
        scale = 1.0 / max(t.numel(), 1) if self.reduction == "mean" else 1.0
        return _pixel.pixel_loss(x, t, is_label, _pixel.CE, scale0=scale, **kw)


# ------------------------------------------------------------------ Lovász


class LovaszLoss(torch.nn.modules.loss._Loss):
    """segmentation_models_pytorch.losses.LovaszLoss, batched.

    One sort for the whole batch instead of a Python loop over images and
    classes. ``"binary"`` / ``"multilabel"``: the Lovász hinge on logits, all
    channels of an image one segment (``per_image``) or the whole batch one
    segment; targets of the input's shape (or (N, *) for binary), any dtype,
    elements equal to ``ignore_index`` dropped. ``"multiclass"``: the
    Lovász-softmax on softmax(y_pred) over the classes present, class-index
    targets. As in smp, ``from_logits`` is accepted and ignored. One
    difference: in multiclass mode with ``per_image=True``, an image whose
    pixels are all ignored scores 0 (counted in the mean over images); smp
    returns an empty tensor for the whole batch then.

    {torchscript}

    Args:
        mode: "binary", "multiclass" or "multilabel".
        per_image: one segment per image (True) or the whole batch.
        ignore_index: label (or target value) whose pixels are dropped.
        from_logits: accepted and ignored, as in smp.
        {backend}

    Returns:
        Called as ``loss_fn(y_pred, y_true)``: the 0-d loss.

    Raises:
        ValueError: an unknown ``mode``; when called, batch sizes or element
            counts that differ.
        TypeError: when called with non-tensors, or float targets in
            multiclass mode.

    Example:
        >>> import torch
        >>> from segfast.compat.smp import LovaszLoss
        >>> loss_fn = LovaszLoss("multiclass")
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 3, 4, 4), labels).item(), 4)
        0.6667
    """

    def __init__(self, mode: str, per_image: bool = False, ignore_index: Optional[int] = None,
                 from_logits: bool = True, backend: Optional[str] = None):
        super().__init__()
        if mode not in _region.MODES:
            raise ValueError(f"mode must be one of {_region.MODES}, got {mode!r}")
        self.mode, self.per_image, self.ignore_index = mode, per_image, ignore_index
        self.from_logits, self.backend = from_logits, backend

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        from ..ops import lovasz as _lovasz

        if not isinstance(y_pred, Tensor) or not isinstance(y_true, Tensor):
            raise TypeError("y_pred and y_true must be tensors")
        if y_true.dim() == 0 or y_pred.dim() == 0 or y_true.size(0) != y_pred.size(0):
            raise ValueError("y_pred and y_true must have the same batch size")
        if self.mode == MULTICLASS_MODE:
            if y_true.dtype.is_floating_point or y_true.dtype == torch.bool:
                raise TypeError("multiclass mode takes class indices as target")
            return _lovasz.lovasz_softmax(y_pred, y_true, classes="present", per_image=self.per_image,
                                          ignore_index=self.ignore_index, from_logits=True, backend=self.backend)
        # smp flattens targets and logits alike and compares elements with ignore_index
        if y_true.numel() != y_pred.numel():
            raise ValueError(f"y_true {tuple(y_true.shape)} must have as many elements as y_pred "
                             f"{tuple(y_pred.shape)} in {self.mode} mode")
        t = y_true.reshape(y_pred.shape).to(torch.float64 if y_pred.dtype == torch.float64 else torch.float32)
        return _lovasz.lovasz_hinge(y_pred, t, per_image=self.per_image, ignore_index=self.ignore_index,
                                    backend=self.backend)


# The parts the docstrings above share.
_DOC = {
    "torchscript": """\
TorchScript is not supported (``torch.jit.script`` of this module fails);
compile with ``torch.compile`` or export with ``torch.export`` instead.""",
    "region_args": """\
mode: "binary", "multiclass" or "multilabel".
classes: class indices the loss is averaged over (None: all).
log_loss: -log(score) instead of 1 - score.
from_logits: False takes probabilities.
smooth: added to numerator and denominator.
ignore_index: label (or target value) whose pixels count nowhere.
eps: the denominator's lower clamp.""",
    "region_raises": """\
ValueError: an unknown ``mode``, ``classes`` or ``class_weights`` with
    ``mode="binary"``; when called, batch sizes that differ or shapes
    that do not fit.
TypeError: when called in multiclass mode with float targets.""",
    "backend": 'backend: "triton", "cuda", "cpu", "torch" or None (the default of the device); not in smp.',
}
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type):
        _obj.__doc__ = _doc.expand(_obj.__doc__, _DOC)
