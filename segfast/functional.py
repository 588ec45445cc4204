"""Functional API of segfast: the losses, box ops and dense CRF as functions.

Every function here is re-exported as ``segfast.<name>``; its docstring
lists its arguments, result, errors and an example. Region losses (Dice,
soft IoU, Tversky, generalized Dice) share most arguments; the shared part
of their docstrings is written once below (``_REGION_DOC``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .ops import region as _region
from .ops import _common
from .ops import pixel as _pixel
from .ops import lovasz as _lovasz
from .ops import crf as _crf
from . import _doc

__all__ = ["dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss", "region_stats"]

# The arguments, result and errors every region loss shares, filled into
# their docstrings at import (as torch does for its common arguments).
_REGION_DOC = {
    "region_args": """\
input: logits (or probabilities with ``from_logits=False``), shape
    (N, C, *spatial) with any number of spatial dims ((N, C) scores are
    one pixel per sample); float32, float16, bfloat16 or float64, any
    strides (channels_last included). Sums accumulate in float32 (float64
    for float64 input); the gradient has the input's dtype.
target: class indices (N, *spatial) or (N, 1, *spatial) as
    uint8/int32/int64, in [0, C) ({0, 1} for ``mode="binary"``) or equal
    to ``ignore_index``; or one-hot / soft targets (N, C, *spatial) in any
    float dtype (or bool). Soft targets that require grad get dLoss/dtarget.
mode: "multiclass" (softmax over C, C >= 2), "multilabel" (sigmoid per
    channel) or "binary" (sigmoid, C = 1).
from_logits: False takes ``input`` as probabilities.
ignore_index: pixels whose label equals it (for dense targets: elements
    whose value equals it) add nothing to any sum, neither prediction nor
    target. An integer in [-2**53, 2**53] (int, numpy integer, 0-d integer
    tensor, or an integral float).
weight: per-class weights, one per input channel (a scalar is
    broadcast), >= 0: each (image, class) loss is multiplied by its class
    weight before the reduction, as MONAI does (a weighted sum divided by
    the count; segmentation_models_pytorch divides by the weights' sum).
include_background: False drops channel 0 after the sums are computed
    (C must be >= 2).
batch: False: one score per (image, class) (MONAI's ``batch=False``);
    True: sums pooled over the batch, one score per class
    (segmentation_models_pytorch always pools).
smooth_nr: added to the numerator (MONAI's default 1e-5).
smooth_dr: added to the denominator (MONAI's default 1e-5). With zero
    smoothing a plane whose denominator is 0 (no target, no prediction,
    or every pixel ignored) scores 1: its loss is 0, not NaN.
log_loss: return -log(score) (score clamped to >= 1e-7) instead of
    1 - score.
reduction: "mean", "sum" or "none" (the per-plane losses, [N, C], or
    [C] with ``batch``).
sync_stats: with ``batch=True``, all-reduce the pooled sums across
    processes before the formula, so under DistributedDataParallel the
    loss equals the single-process loss on the concatenated batch.
process_group: the process group of ``sync_stats`` (None: the default).
backend: "triton", "cuda", "cpu" or "torch"; None reads
    SEGFAST_BACKEND, else takes the device's default (see
    :mod:`segfast.backends`). Triton computes in float32: "triton" refuses
    float64 input, which defaults to "cuda" (else "torch") on GPU.
confusion: a ``segfast.metrics.ConfusionMatrix`` (or an int64 [C, C]
    tensor on the input's device) to which the statistics pass adds the
    confusion counts of the prediction: row = target class, column =
    argmax over the classes of ``input`` (the first maximum; a NaN counts
    as the maximum, as ``torch.argmax``), over the pixels whose label is
    not ``ignore_index``. The logits are read once for the loss and the
    counts; a training loop logs mIoU with ``cm.compute()``. Needs
    ``mode="multiclass"`` and class-index targets; a ConfusionMatrix must
    have the loss's ``ignore_index``. No effect on the loss.""",
    "region_returns": """\
The reduced loss (0-d, float32; float64 for float64 input), or with
``reduction="none"`` the per-plane losses [N, C] ([C] with ``batch``).
Differentiable in ``input`` (and in soft targets); the kernel backends
differentiate once (``create_graph=True`` raises), the torch backend
twice.""",
    "region_raises": """\
ValueError: shapes that do not fit (naming both), an unknown ``mode`` or
    ``reduction``, labels out of range, negative smoothing or weights,
    ``include_background=False`` with C < 2, ``sync_stats`` without
    ``batch``.
TypeError: an unsupported dtype, a non-integer ``ignore_index``, float64
    input on the triton backend.
RuntimeError: a ``backend`` that is not built or does not fit the device.""",
}


_fill_doc = _doc.fill(_REGION_DOC)


def region_stats(input: Tensor, target: Tensor, *, mode: str = "multiclass", from_logits: bool = True,
                 ignore_index=None, backend: Optional[str] = None, confusion=None) -> Tensor:
    """The per-(image, class) sums [N, C, 7] every region loss is built from.

    Order: I = Σv·p·t, P = Σv·p, T = Σv·t, V = Σv, PP = Σv·p², TT = Σv·t²,
    M = Σv·min(p, t); p the activation of ``input``, t the target, v the valid
    mask. Differentiable: build a custom region loss on it.

    Args:
        input: logits (N, C, *spatial), or probabilities with ``from_logits=False``.
        target: class indices (N, *spatial) / (N, 1, *spatial), or one-hot / soft
            targets (N, C, *spatial).
        mode: "multiclass" (softmax over C), "multilabel" (sigmoid per channel)
            or "binary" (sigmoid, C = 1).
        from_logits: False takes ``input`` as probabilities.
        ignore_index: label (or dense target value) whose pixels count nowhere.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).
        confusion: a ``segfast.metrics.ConfusionMatrix`` or an int64 [C, C]
            tensor to which the same pass adds the confusion counts (as the
            region losses' ``confusion``).

    Returns:
        Tensor [N, C, 7], float32 (float64 for float64 input).

    Raises:
        ValueError: shapes that do not fit, an unknown ``mode``, labels out of
            range.
        TypeError: an unsupported dtype or a non-integer ``ignore_index``.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> s = segfast.region_stats(logits, labels)
        >>> s.shape
        torch.Size([2, 3, 7])
        >>> s[0, 0, :4].tolist()   # I, P, T, V of image 0, class 0
        [5.333333492279053, 5.333333492279053, 16.0, 16.0]
    """
    conf = None if confusion is None else _region.confusion_target(confusion, input, target, mode, ignore_index)
    return _region.plane_stats(*_region.prepare(input, target, mode, from_logits, ignore_index, backend),
                               prepared=True, confusion=conf)


def _fused_or_stats(input, target, mode, from_logits, ignore_index, backend, confusion=None, **finish):
    """-> (the loss, None) where the kernels compute the whole loss
    (ops.region.finish_loss: no torch op on the sums), else (None, the sums);
    either adds the confusion counts of its stats pass to ``confusion``."""
    conf = None if confusion is None else _region.confusion_target(confusion, input, target, mode, ignore_index)
    prep = _region.prepare(input, target, mode, from_logits, ignore_index, backend)
    loss = _region.finish_loss(prep, **finish, confusion=conf)
    return (loss, None) if loss is not None else (None, _region.plane_stats(*prep, prepared=True, confusion=conf))


def _pooled_stats(input, target, mode, from_logits, ignore_index, batch, sync_stats,
                  process_group, backend, stats=None, confusion=None):
    if stats is None:
        stats = region_stats(input, target, mode=mode, from_logits=from_logits,
                             ignore_index=ignore_index, backend=backend, confusion=confusion)
    if batch:
        stats = stats.sum(0)
    if sync_stats:
        if not batch:
            raise ValueError("sync_stats=True needs batch=True: per-image sums need no sync")
        stats = _region.sync(stats, process_group)
    return stats


def _finish(score: Tensor, input: Tensor, *, log_loss, include_background, weight, reduction,
            gamma: float = 1.0) -> Tensor:
    f = -torch.log(score.clamp_min(1e-7)) if log_loss else 1.0 - score
    if gamma != 1.0:
        f = f.clamp_min(0) ** gamma
    C = input.shape[1]
    w = _region.check_weight(weight, C, f.device)
    if not include_background:
        if C < 2:
            raise ValueError("include_background=False needs C >= 2 channels")
        f = f[..., 1:]
        w = None if w is None else w[1:]
    if w is not None:
        f = f * w.to(f.dtype)
    return _common.reduce_loss(f, reduction)


def _check_common(reduction, smooth_nr, smooth_dr):
    _region.check_reduction(reduction)
    if smooth_nr < 0 or smooth_dr < 0:
        raise ValueError("smooth_nr and smooth_dr must be >= 0")


@_fill_doc
def dice_loss(input: Tensor, target: Tensor, *, mode: str = "multiclass", from_logits: bool = True,
              ignore_index=None, weight=None, include_background: bool = True, batch: bool = False,
              smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
              reduction: str = "mean", sync_stats: bool = False, process_group=None,
              backend: Optional[str] = None, confusion=None) -> Tensor:
    """Soft Dice loss: 1 - (2I + smooth_nr) / (P + T + smooth_dr) per plane.

    MONAI's DiceLoss formula and defaults (softmax=True, to_onehot_y=True for
    multiclass labels). Differences from MONAI: the activation is chosen by
    ``mode``/``from_logits`` instead of sigmoid/softmax flags, class-index
    targets need no ``to_onehot_y``, ``reduction="none"`` returns [N, C],
    ``ignore_index`` masks predictions and targets alike. Differences from
    segmentation_models_pytorch: smoothing enters numerator and denominator
    separately (smp adds ``smooth`` to I and to each cardinality), classes
    absent from the target are not zeroed, statistics are per image unless
    ``batch=True``. Two streaming passes over the logits: one for the sums,
    one for the gradient.

    Args:
        {region_args}

    Returns:
        {region_returns}

    Raises:
        {region_raises}

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)   # softmax: p = 1/3 everywhere
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)        # every pixel is class 0
        >>> loss = segfast.dice_loss(logits, labels)                # class 0 scores 0.5, classes 1, 2 ~0
        >>> round(loss.item(), 4)
        0.8333
        >>> loss.backward()
        >>> logits.grad.shape
        torch.Size([2, 3, 4, 4])
    """
    return _dice_loss(input, target, None, mode=mode, from_logits=from_logits, ignore_index=ignore_index,
                      weight=weight, include_background=include_background, batch=batch, smooth_nr=smooth_nr,
                      smooth_dr=smooth_dr, log_loss=log_loss, reduction=reduction, sync_stats=sync_stats,
                      process_group=process_group, backend=backend, confusion=confusion)


def _dice_loss(input: Tensor, target: Tensor, stats: Optional[Tensor], *, mode: str = "multiclass",
               from_logits: bool = True, ignore_index=None, weight=None, include_background: bool = True,
               batch: bool = False, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
               reduction: str = "mean", sync_stats: bool = False, process_group=None,
               backend: Optional[str] = None, confusion=None) -> Tensor:
    """dice_loss, on the per-plane sums ``stats`` when the caller has them
    already (the Dice + pixel-term path, which counts ``confusion`` itself),
    else computing them."""
    _check_common(reduction, smooth_nr, smooth_dr)
    if stats is None:
        loss, stats = _fused_or_stats(input, target, mode, from_logits, ignore_index, backend, weight=weight,
                                      include_background=include_background, batch=batch, sync_stats=sync_stats,
                                      reduction=reduction, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                                      log_loss=log_loss, confusion=confusion)
        if loss is not None:
            return loss
    s = _pooled_stats(input, target, mode, from_logits, ignore_index, batch, sync_stats, process_group, backend,
                      stats)
    # 2·tp + fp + fn = P + T; few small ops: at common sizes the formula's
    # autograd overhead is a visible part of the whole loss
    num, den = 2 * s[..., 0] + smooth_nr, s[..., 1] + s[..., 2] + smooth_dr
    score = num / den if smooth_dr > 0 else _region.safe_ratio(num, den)
    return _finish(score, input, log_loss=log_loss, include_background=include_background,
                   weight=weight, reduction=reduction)


@_fill_doc
def jaccard_loss(input: Tensor, target: Tensor, *, mode: str = "multiclass", from_logits: bool = True,
                 ignore_index=None, weight=None, include_background: bool = True, batch: bool = False,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
                 reduction: str = "mean", sync_stats: bool = False, process_group=None,
                 backend: Optional[str] = None, confusion=None) -> Tensor:
    """Soft IoU (Jaccard) loss: 1 - (I + smooth_nr) / (P + T - I + smooth_dr) per plane.

    The IoU loss of Rahman & Wang and van Beers et al. MONAI's
    ``DiceLoss(jaccard=True)`` computes 1 - (2I + nr) / (2(P + T - I) + dr)
    instead, which differs in how smoothing enters (segfast.compat.monai
    reproduces it).

    Args:
        {region_args}

    Returns:
        {region_returns}

    Raises:
        {region_raises}

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(segfast.jaccard_loss(logits, labels).item(), 4)   # class 0: IoU 1/3
        0.8889
    """
    _check_common(reduction, smooth_nr, smooth_dr)
    loss, s = _fused_or_stats(input, target, mode, from_logits, ignore_index, backend, weight=weight,
                              include_background=include_background, batch=batch, sync_stats=sync_stats,
                              reduction=reduction, ratio=(1.0, -1.0, 1.0, 1.0), smooth_nr=smooth_nr,
                              smooth_dr=smooth_dr, log_loss=log_loss, confusion=confusion)
    if loss is not None:
        return loss
    s = _pooled_stats(input, target, mode, from_logits, ignore_index, batch, sync_stats, process_group, backend, s,
                      confusion=confusion)
    tp, fp, fn = _region.tp_fp_fn(s)
    score = _region.safe_ratio(tp + smooth_nr, tp + fp + fn + smooth_dr)
    return _finish(score, input, log_loss=log_loss, include_background=include_background,
                   weight=weight, reduction=reduction)


@_fill_doc
def tversky_loss(input: Tensor, target: Tensor, *, mode: str = "multiclass", from_logits: bool = True,
                 ignore_index=None, weight=None, include_background: bool = True, batch: bool = False,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
                 alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                 reduction: str = "mean", sync_stats: bool = False, process_group=None,
                 backend: Optional[str] = None, confusion=None) -> Tensor:
    """Tversky loss: 1 - (I + nr) / (I + alpha·FP + beta·FN + dr), FP = P - I, FN = T - I.

    ``gamma`` != 1 gives the focal Tversky loss (1 - TI)^gamma, applied per
    plane before the reduction (Abraham & Khan apply it per class; smp raises
    the *mean* loss to gamma: segfast.compat.smp reproduces that). ``alpha``
    weighs false positives, ``beta`` false negatives, as in MONAI and smp.

    Args:
        {region_args}
        alpha: weight of the false positives, >= 0.
        beta: weight of the false negatives, >= 0.
        gamma: focal exponent, > 0 (1: the plain Tversky loss).

    Returns:
        {region_returns}

    Raises:
        {region_raises}

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = segfast.tversky_loss(logits, labels, alpha=0.3, beta=0.7, reduction="none")
        >>> loss.shape
        torch.Size([2, 3])
        >>> round(loss[0, 0].item(), 4)   # 1 - I / (I + 0.7·FN), I = 16/3, FN = 32/3
        0.5833
    """
    _check_common(reduction, smooth_nr, smooth_dr)
    if alpha < 0 or beta < 0 or gamma <= 0:
        raise ValueError("alpha and beta must be >= 0 and gamma > 0")
    loss, s = _fused_or_stats(input, target, mode, from_logits, ignore_index, backend, weight=weight,
                              include_background=include_background, batch=batch, sync_stats=sync_stats,
                              reduction=reduction, ratio=(1.0, 1.0 - alpha - beta, alpha, beta), smooth_nr=smooth_nr,
                              smooth_dr=smooth_dr, log_loss=log_loss, gamma=gamma,
                              confusion=confusion)
    if loss is not None:
        return loss
    s = _pooled_stats(input, target, mode, from_logits, ignore_index, batch, sync_stats, process_group, backend, s,
                      confusion=confusion)
    tp, fp, fn = _region.tp_fp_fn(s)
    score = _region.safe_ratio(tp + smooth_nr, tp + alpha * fp + beta * fn + smooth_dr)
    return _finish(score, input, log_loss=log_loss, include_background=include_background,
                   weight=weight, reduction=reduction, gamma=gamma)


def generalized_dice_weights(tsum: Tensor, w_type: str, batch: bool) -> Tensor:
    """Class weights of the generalized Dice loss from the target sums, MONAI's way:
    1/T² ("square"), 1/T ("simple") or 1 ("uniform"); a class absent from the
    target (infinite weight) gets the largest finite weight of its image
    (of the batch when ``batch``)."""
    tsum = tsum.detach()
    if w_type == "square":
        w = torch.reciprocal(tsum * tsum)
    elif w_type == "simple":
        w = torch.reciprocal(tsum)
    elif w_type == "uniform":
        w = torch.ones_like(tsum)
    else:
        raise ValueError(f"w_type must be 'square', 'simple' or 'uniform', got {w_type!r}")
    inf = torch.isinf(w)
    w = torch.where(inf, torch.zeros_like(w), w)
    wmax = w.max() if batch else w.max(dim=-1, keepdim=True).values
    return torch.where(inf, wmax.expand_as(w), w)


@_fill_doc
def generalized_dice_loss(input: Tensor, target: Tensor, *, mode: str = "multiclass",
                          from_logits: bool = True, ignore_index=None, weight=None,
                          include_background: bool = True, batch: bool = False,
                          smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
                          w_type: str = "square", reduction: str = "mean", sync_stats: bool = False,
                          process_group=None, backend: Optional[str] = None, confusion=None) -> Tensor:
    """Generalized Dice loss (Sudre et al.): 1 - (2 Σ_c w_c I_c + nr) / (Σ_c w_c (P_c + T_c) + dr).

    One score per image (per batch with ``batch=True``). Class weights from
    ``w_type`` as MONAI's GeneralizedDiceLoss; ``weight`` (optional)
    multiplies them.

    Args:
        {region_args}
        w_type: class weights from the target sums T_c: "square" (1/T_c²),
            "simple" (1/T_c) or "uniform" (1); a class absent from the target
            gets the largest finite weight of its image (of the batch with
            ``batch``).

    Returns:
        The reduced loss (0-d, float32; float64 for float64 input); with
        ``reduction="none"`` one loss per image [N] (a 0-d tensor with
        ``batch=True``). Differentiable in ``input`` (and in soft targets).

    Raises:
        {region_raises}

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> segfast.generalized_dice_loss(logits, labels, reduction="none").shape
        torch.Size([2])
    """
    _check_common(reduction, smooth_nr, smooth_dr)
    gdl = {"square": 1, "simple": 2, "uniform": 3}.get(w_type)
    loss, s = None, None
    if gdl is not None:
        loss, s = _fused_or_stats(input, target, mode, from_logits, ignore_index, backend, weight=weight,
                                  include_background=include_background, batch=batch, sync_stats=sync_stats,
                                  reduction=reduction, gdl=gdl, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                                  log_loss=log_loss, confusion=confusion)
    if loss is not None:
        return loss
    s = _pooled_stats(input, target, mode, from_logits, ignore_index, batch, sync_stats, process_group, backend, s,
                      confusion=confusion)
    C = input.shape[1]
    if not include_background:
        if C < 2:
            raise ValueError("include_background=False needs C >= 2 channels")
        s = s[..., 1:, :]
    tp, fp, fn = _region.tp_fp_fn(s)
    w = generalized_dice_weights(tp + fn, w_type, batch)
    user_w = _region.check_weight(weight, C, s.device)
    if user_w is not None:
        w = w * (user_w if include_background else user_w[1:]).to(w.dtype)
    score = _region.safe_ratio(2 * (tp * w).sum(-1) + smooth_nr, ((2 * tp + fp + fn) * w).sum(-1) + smooth_dr)
    f = -torch.log(score.clamp_min(1e-7)) if log_loss else 1.0 - score
    return _common.reduce_loss(f, reduction)


# ============================================================ pixel-wise losses
#
# One pass when reduced ("mean"/"sum"): the forward writes the gradient and
# the backward only scales it (segfast/ops/pixel.py). Normalizers come from
# the labels alone, inside the op. A mean over zero valid pixels is 0.



def _pixel_reduce(x, t, is_label, kind, reduction, norm, *, spatial, **kw):
    """Sum, mean (normalizer ``norm``, see ops.pixel) or the per-pixel map
    reshaped to the input's spatial shape."""
    _common.check_reduction(reduction)
    if reduction == "none":
        m = _pixel.pixel_loss(x, t, is_label, kind, reduce=False, **kw)
        N = x.shape[0]
        return m.view(N, *spatial) if _pixel.per_pixel(kind, is_label) else m.view(N, x.shape[1], *spatial)
    norm = norm if reduction == "mean" else _pixel.NORM_SUM
    return _pixel.pixel_loss(x, t, is_label, kind, norm=norm, reduce=True, **kw)


def _softmax_labels(input, target, ignore_index, backend, what, reduction="none"):
    if input.dim() >= 3 and (target.dtype.is_floating_point or target.dtype == torch.bool):
        raise TypeError(f"{what} takes class-index targets (N, *spatial) as uint8/int32/int64")
    if input.dim() >= 2 and input.shape[1] < 2:
        raise ValueError(f"{what} needs C >= 2 channels (a softmax over one channel is constant)")
    # a reduced loss on the triton backend checks its labels in the kernel (ops/pixel.py)
    return _region.canonical(input, target, act=_region.ACT["softmax"], ignore_index=ignore_index,
                             backend=backend, kernel_label_check=("triton",) if reduction != "none" else ())


def cross_entropy(input: Tensor, target: Tensor, *, weight=None, ignore_index: Optional[int] = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean", backend: Optional[str] = None) -> Tensor:
    """Softmax cross entropy over C with torch.nn.functional.cross_entropy's semantics.

    Class-index targets, class ``weight``, ``ignore_index`` and
    ``label_smoothing`` as torch; "mean" divides by the summed weights of the
    valid pixels (0 if there are none, where torch gives NaN). The forward
    reads the logits once; reduced on the triton and cuda backends, the
    backward recomputes the gradient from the logits with grad_output read on
    the device (one more read, one write of the gradient).

    Args:
        input: logits (N, C, *spatial) or (N, C), C >= 2; float32, float16,
            bfloat16 or float64, any strides.
        target: class indices (N, *spatial) as uint8/int32/int64, in [0, C) or
            equal to ``ignore_index``.
        weight: per-class weights [C] (a scalar is broadcast), >= 0.
        ignore_index: label whose pixels count nowhere (torch's default -100).
        label_smoothing: ε in [0, 1]: the target becomes (1 - ε)·one-hot + ε/C.
        reduction: "mean", "sum" or "none" (the per-pixel losses, [N, *spatial]).
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        The loss: 0-d for "mean" / "sum", [N, *spatial] for "none"; float32
        (float64 for float64 input).

    Raises:
        ValueError: shapes that do not fit, C < 2, labels out of range,
            ``label_smoothing`` outside [0, 1], negative weights, an unknown
            ``reduction``.
        TypeError: float (dense) targets or an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 4, 8, 8)                 # uniform: CE = log 4 per pixel
        >>> labels = torch.randint(0, 4, (2, 8, 8))
        >>> round(segfast.cross_entropy(logits, labels).item(), 4)
        1.3863
    """
    x, t, is_label, _, off, ign, backend = _softmax_labels(input, target, ignore_index, backend, "cross_entropy",
                                                           reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError("label_smoothing must be in [0, 1]")
    w = _region.check_weight(weight, x.shape[1], x.device)
    norm = _pixel.NORM_COUNT if w is None else _pixel.NORM_WEIGHT
    return _pixel_reduce(x, t, is_label, _pixel.CE, reduction, norm, spatial=input.shape[2:], backend=backend,
                         ignore_value=ign, weight=w, smoothing=float(label_smoothing))


def _sigmoid_target(input, target, ignore_index, backend, reduction="none"):
    binary = input.shape[1] == 1 and not (target.dtype.is_floating_point or target.dtype == torch.bool)
    # a reduced loss on the triton backend checks its labels in the kernel (ops/pixel.py)
    return _region.canonical(input, target, act=_region.ACT["sigmoid"], binary=binary,
                             ignore_index=ignore_index, backend=backend,
                             kernel_label_check=("triton",) if reduction != "none" else ())


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, *, weight=None, pos_weight=None,
                                     ignore_index=None, reduction: str = "mean",
                                     backend: Optional[str] = None) -> Tensor:
    """BCE on logits with torch.nn.functional.binary_cross_entropy_with_logits's semantics.

    Per-class ``weight`` and ``pos_weight`` ([C] or scalars) and
    ``ignore_index`` (elements equal to it count nowhere: the mean is over the
    rest). One pass over the logits.

    Args:
        input: logits (N, C, *spatial) or (N, C).
        target: float/bool targets of the input's shape, or class indices
            (N, *spatial) (one-hot per channel; {0, 1} for C = 1).
        weight: per-class factors [C] (or a scalar), >= 0.
        pos_weight: per-class weight of the positive term [C] (or a scalar), >= 0.
        ignore_index: target value (label or dense element) that counts nowhere.
        reduction: "mean", "sum" or "none" (the per-element losses, [N, C, *spatial]).
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        The loss: 0-d for "mean" / "sum", [N, C, *spatial] for "none"; float32
        (float64 for float64 input).

    Raises:
        ValueError: shapes that do not fit, labels out of range, negative
            weights, an unknown ``reduction``.
        TypeError: an unsupported dtype or a non-integer ``ignore_index``.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 1, 8, 8)                 # p = 0.5: BCE = log 2
        >>> masks = torch.rand(2, 1, 8, 8) > 0.5
        >>> round(segfast.binary_cross_entropy_with_logits(logits, masks).item(), 4)
        0.6931
    """
    x, t, is_label, _, off, ign, backend = _sigmoid_target(input, target, ignore_index, backend, reduction)
    C = x.shape[1]
    w = _region.check_weight(weight, C, x.device)
    pw = _region.check_weight(pos_weight, C, x.device)
    return _pixel_reduce(x, t, is_label, _pixel.BCE, reduction, _pixel.NORM_COUNT,
                         spatial=input.shape[2:], backend=backend, ignore_value=ign, label_offset=off,
                         weight=w, pos_weight=pw)


def balanced_bce_loss(input: Tensor, target: Tensor, *, beta="auto", ignore_index=None,
                      reduction: str = "mean", backend: Optional[str] = None) -> Tensor:
    """Class-balanced BCE: L = -mean(β·t·log p + (1 - β)·(1 - t)·log(1 - p)).

    Xie & Tu's HED weighting: with ``beta="auto"`` the rare positive class
    weighs more. One pass over the logits.

    Args:
        input: logits (N, C, *spatial).
        target: float/bool targets of the input's shape, or class indices
            (one-hot per channel; {0, 1} for C = 1).
        beta: "auto" (per image, the fraction of negative valid elements) or a
            number in [0, 1] for every image.
        ignore_index: target value (label or dense element) that counts nowhere.
        reduction: "mean", "sum" or "none" ([N, C, *spatial]).
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        The loss: 0-d for "mean" / "sum", [N, C, *spatial] for "none"; float32
        (float64 for float64 input).

    Raises:
        ValueError: ``beta`` neither "auto" nor in [0, 1], shapes that do not
            fit, an unknown ``reduction``.
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> edges = torch.zeros(1, 1, 8, 8)
        >>> edges[..., 3, :] = 1                             # 1 positive row in 8: beta = 7/8
        >>> loss = segfast.balanced_bce_loss(torch.zeros(1, 1, 8, 8), edges)
        >>> round(loss.item(), 4)   # 8 positives weigh 7/8, 56 negatives 1/8: 14/64·log 2
        0.1516
    """
    x, t, is_label, _, off, ign, backend = _sigmoid_target(input, target, ignore_index, backend, reduction)
    N, C = x.shape[:2]
    if isinstance(beta, str):
        if beta != "auto":
            raise ValueError("beta must be 'auto' or a number in [0, 1]")
        valid = None if ign is None else t != ign
        if is_label:
            pos = t == off if C == 1 else t.new_ones(()).expand_as(t)  # one-hot: one positive per valid pixel
            pos = pos if valid is None else pos & valid
            npos = pos.flatten(1).sum(1).double()
            nvalid = (torch.full((N,), t.shape[1], dtype=torch.float64, device=t.device) if valid is None
                      else valid.flatten(1).sum(1).double()) * C
        else:
            tv = t.double() if valid is None else torch.where(valid, t.double(), 0)
            npos = tv.flatten(1).sum(1)
            nvalid = (torch.full((N,), t.shape[1:].numel(), dtype=torch.float64, device=t.device) if valid is None
                      else valid.flatten(1).sum(1).double())
        b = torch.where(nvalid > 0, 1 - npos / nvalid.clamp_min(1), 0.5)
    else:
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError("beta must be in [0, 1]")
        b = torch.full((N,), float(beta), device=x.device)
    return _pixel_reduce(x, t, is_label, _pixel.BCE, reduction, _pixel.NORM_COUNT,
                         spatial=input.shape[2:], backend=backend, ignore_value=ign, label_offset=off, beta=b)


def focal_loss(input: Tensor, target: Tensor, *, mode: str = "binary", alpha=None, gamma: float = 2.0,
               weight=None, ignore_index=None, reduction: str = "mean", backend: Optional[str] = None) -> Tensor:
    """Focal loss (Lin et al.), sigmoid or softmax form by ``mode``.

    ``mode="binary"|"multilabel"``: the sigmoid form, torchvision's
    ``sigmoid_focal_loss``: bce·(1 - p_t)^γ·α_t, α_t = α·t + (1 - α)(1 - t);
    mean over the valid elements. ``mode="multiclass"``: the softmax form
    -α_c·(1 - p_t)^γ·log p_t on class-index targets; mean over the valid
    pixels (not weighted by α). On dense (one-hot or soft) targets the
    softmax form is MONAI's ``softmax_focal_loss``,
    -Σ_c α_c·t_c·(1 - p_c)^γ·log p_c per pixel, one term per element (so
    one-hot targets give the loss of their class indices), mean over the
    valid pixels; ``ignore_index`` there drops every pixel with a channel
    equal to it. Dense targets are used as given (soft targets
    in [0, 1]); where a value outside [0, 1] makes 1 - p_t <= 0, the factor
    (1 - p_t)^γ and its gradient are taken as 0 (1 for γ = 0), on every
    backend. One pass over the logits.

    Args:
        input: logits (N, C, *spatial) (C = 1 for "binary").
        target: sigmoid form: float/bool targets of the input's shape or class
            indices (one-hot per channel; {0, 1} for C = 1); softmax form:
            class indices (N, *spatial), or float/bool one-hot or soft targets
            of the input's shape.
        mode: "binary", "multilabel" or "multiclass".
        alpha: sigmoid form: a number <= 1 (default 0.25; negative disables
            it); softmax form: None (1), a number, or one per class.
        gamma: focusing exponent, >= 0.
        weight: per-class factors [C] (or a scalar), >= 0, in both forms.
        ignore_index: label (or dense target value) that counts nowhere.
        reduction: "mean", "sum" or "none" ([N, C, *spatial] for the sigmoid
            form and the softmax form on dense targets, [N, *spatial] for the
            softmax form on class indices).
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        The loss: 0-d for "mean" / "sum", the per-element map for "none";
        float32 (float64 for float64 input).

    Raises:
        ValueError: an unknown ``mode``, ``gamma`` < 0, ``alpha`` > 1 in the
            sigmoid form, C != 1 with ``mode="binary"``, shapes that do not fit,
            labels out of range.
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 1, 8, 8)                 # p = 0.5
        >>> masks = torch.ones(2, 1, 8, 8)
        >>> round(segfast.focal_loss(logits, masks, alpha=0.25, gamma=2).item(), 4)   # 0.25·0.25·log 2
        0.0433
        >>> labels = torch.zeros(2, 8, 8, dtype=torch.long)
        >>> round(segfast.focal_loss(torch.zeros(2, 4, 8, 8), labels, mode="multiclass").item(), 4)
        0.7798
        >>> onehot = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()
        >>> round(segfast.focal_loss(torch.zeros(2, 4, 8, 8), onehot, mode="multiclass").item(), 4)
        0.7798
    """
    if gamma < 0:
        raise ValueError("gamma must be >= 0")
    if mode == "multiclass":
        if target.dtype.is_floating_point or target.dtype == torch.bool:  # one-hot / soft targets
            if input.dim() >= 2 and input.shape[1] < 2:
                raise ValueError("focal_loss needs C >= 2 channels (a softmax over one channel is constant)")
            x, t, is_label, _, off, ign, backend = _region.canonical(
                input, target, act=_region.ACT["softmax"], ignore_index=ignore_index, backend=backend)
        else:
            x, t, is_label, _, off, ign, backend = _softmax_labels(input, target, ignore_index, backend,
                                                                   "focal_loss", reduction)
        C = x.shape[1]
        a = _region.check_weight(1.0 if alpha is None else alpha, C, x.device)
        w = _region.check_weight(weight, C, x.device)
        w = a if w is None else a * w
        return _pixel_reduce(x, t, is_label, _pixel.FOCAL_SOFTMAX, reduction, _pixel.NORM_COUNT,
                             spatial=input.shape[2:], backend=backend, ignore_value=ign, weight=w,
                             gamma=float(gamma))
    if mode not in ("binary", "multilabel"):
        raise ValueError(f"mode must be 'binary', 'multilabel' or 'multiclass', got {mode!r}")
    if mode == "binary" and input.shape[1] != 1:
        raise ValueError(f"mode='binary' needs input with 1 channel, got C={input.shape[1]}")
    x, t, is_label, _, off, ign, backend = _sigmoid_target(input, target, ignore_index, backend, reduction)
    w = _region.check_weight(weight, x.shape[1], x.device)
    a = 0.25 if alpha is None else float(alpha)
    if a > 1:
        raise ValueError("alpha must be <= 1 (negative disables it)")
    return _pixel_reduce(x, t, is_label, _pixel.FOCAL_SIGMOID, reduction, _pixel.NORM_COUNT,
                         spatial=input.shape[2:], backend=backend, ignore_value=ign, label_offset=off, weight=w,
                         gamma=float(gamma), alpha=a)


def fused_loss(input: Tensor, target: Tensor, *, ws: float = 0.5, wp: float = 0.5, ignore_index=None,
               reduction: str = "mean", backend: Optional[str] = None) -> Tensor:
    """The softmax + positive-sharing loss of Liu & Lew: L = ws·L0 + wp·L1.

    From "Improving the Discrimination Between Foreground and Background for
    Semantic Segmentation": L0 is the softmax cross entropy, L1 the
    positive-sharing loss: class 0 is background; -log p0 on background
    pixels, -log(1 - p0) on foreground pixels (all object classes merged),
    with log(1 - p0) = logsumexp of the foreground logits - logsumexp of all.
    Both terms are means over the valid pixels. One pass over the logits.

    Args:
        input: logits (N, C, *spatial), C >= 2, class 0 the background.
        target: class indices (N, *spatial).
        ws: weight of the cross-entropy term, >= 0.
        wp: weight of the positive-sharing term, >= 0.
        ignore_index: label whose pixels count nowhere.
        reduction: "mean", "sum" or "none" ([N, *spatial]).
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        The loss: 0-d for "mean" / "sum", [N, *spatial] for "none"; float32
        (float64 for float64 input).

    Raises:
        ValueError: negative ``ws`` / ``wp``, C < 2, shapes that do not fit,
            labels out of range.
        TypeError: dense targets or an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 4, 8, 8)
        >>> labels = torch.zeros(2, 8, 8, dtype=torch.long)  # all background: L0 = L1 = log 4
        >>> round(segfast.fused_loss(logits, labels, ws=0.5, wp=0.5).item(), 4)
        1.3863
    """
    if ws < 0 or wp < 0:
        raise ValueError("ws and wp must be >= 0")
    x, t, is_label, _, off, ign, backend = _softmax_labels(input, target, ignore_index, backend, "fused_loss",
                                                           reduction)
    return _pixel_reduce(x, t, is_label, _pixel.FUSED, reduction, _pixel.NORM_COUNT, spatial=input.shape[2:],
                         backend=backend, ignore_value=ign, scale0=float(ws), scale1=float(wp))


# ------------------------------------------------------------ region + pixel sums
# With softmax and class-index targets the pixel term's sums ride in the
# region kernels (_two_pass): two passes in all. Otherwise each term runs its
# own kernels (region: two passes, pixel: one); both get the very same
# [N, C, S] view of the logits, so their gradients meet at one autograd node
# as fresh buffers and are summed in place (two logits-sized buffers at the
# peak, not three).


def _shared_views(input: Tensor, target: Tensor):
    if input.dim() < 3:
        return input, target
    N, C = input.shape[:2]
    spatial = tuple(input.shape[2:])
    shape = tuple(target.shape)
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        if shape == (N, C, *spatial):
            return input.flatten(2), target.flatten(2)
        if C == 1 and shape == (N, *spatial):
            return input.flatten(2), target.flatten(1)
    elif shape in ((N, *spatial), (N, 1, *spatial)):
        return input.flatten(2), target.flatten(1)  # flatten: N = 0 too
    return input, target  # a wrong shape: the term's own check reports the user's shapes


# dice_loss's formula arguments and defaults, as ops.region.finish_loss takes them
_DICE_FINISH = dict(weight=None, include_background=True, batch=False, sync_stats=False, reduction="mean",
                    smooth_nr=1e-5, smooth_dr=1e-5, log_loss=False)


def _two_pass(input, target, ignore_index, backend, dice_kwargs, xent: int, gamma: float = 0.0,
              lams=(1.0, 1.0), pixel_weight=None, **pixel):
    """Dice (softmax, class-index targets) plus the sums of a pixel term from the
    same two kernel passes -> the loss lams[0]·Dice + lams[1]·(pixel term) where
    the kernels compute it whole (ops.region.finish_loss, with the pixel term's
    class weights ``pixel_weight`` and ``pixel`` arguments), else (dice loss,
    pooled sums [C, 9]); None where the terms must run separately (dense
    targets, probabilities)."""
    if not (dice_kwargs.get("from_logits", True) and isinstance(target, Tensor) and isinstance(input, Tensor)
            and not (target.dtype.is_floating_point or target.dtype == torch.bool)):
        return None
    dice_kwargs = dict(dice_kwargs)
    confusion = dice_kwargs.pop("confusion", None)
    conf = None if confusion is None else _region.confusion_target(confusion, input, target, "multiclass",
                                                                   ignore_index)
    prep = _region.prepare(input, target, "multiclass", True, ignore_index, backend)
    x, t, is_label, _, off, ign, be = prep
    if set(dice_kwargs) <= set(_DICE_FINISH) | {"from_logits", "process_group"}:
        finish = {**_DICE_FINISH, **{k: v for k, v in dice_kwargs.items() if k in _DICE_FINISH}}
        _check_common(finish["reduction"], finish["smooth_nr"], finish["smooth_dr"])
        loss = _region.finish_loss(prep, **finish, lam_r=lams[0], xent=xent, xgamma=gamma, lam_x=lams[1],
                                   pw=_region.check_weight(pixel_weight, x.shape[1], x.device), confusion=conf,
                                   **pixel)
        if loss is not None:
            return loss
    stats = _region.plane_stats(x, t, is_label, _region.ACT["softmax"], off, ign, be, xent=xent, gamma=gamma,
                                prepared=True, confusion=conf)
    d = _dice_loss(input, target, stats[..., :_region.K], mode="multiclass", ignore_index=ignore_index,
                   backend=backend, **dice_kwargs)
    return d, stats.sum(0)


def _mean_over(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 without valid pixels (torch's losses give NaN there)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, 1), torch.zeros_like(num))


def dice_ce_loss(input: Tensor, target: Tensor, *, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 ignore_index=None, ce_weight=None, label_smoothing: float = 0.0, backend: Optional[str] = None,
                 **dice_kwargs) -> Tensor:
    """lambda_dice·dice_loss + lambda_ce·cross_entropy, as MONAI's DiceCELoss (softmax).

    With class-index targets the two terms cost two passes over the logits in
    all: the cross-entropy sums come out of the Dice statistics kernel and
    their gradient out of the Dice gradient kernel (``from_logits=False`` runs
    the two terms side by side). With one-hot / soft targets (N, C, *spatial)
    the CE term is torch's cross entropy with class probabilities (eager torch
    on every backend; no ``ignore_index``).

    Args:
        input: logits (N, C, *spatial), C >= 2.
        target: class indices (N, *spatial) / (N, 1, *spatial), or one-hot / soft
            targets (N, C, *spatial).
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        ignore_index: label whose pixels count in neither term.
        ce_weight: per-class weights [C] of the cross-entropy term.
        label_smoothing: ε in [0, 1] of the cross-entropy term.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).
        **dice_kwargs: further keyword arguments of :func:`dice_loss`
            (``weight``, ``include_background``, ``batch``, ``smooth_nr``, ...).

    Returns:
        The 0-d loss, float32 (float64 for float64 input).

    Raises:
        ValueError: ``label_smoothing`` outside [0, 1], ``ignore_index`` with
            dense targets, and what :func:`dice_loss` and :func:`cross_entropy`
            raise.
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(segfast.dice_ce_loss(logits, labels).item(), 4)   # 0.8333 + log 3
        1.9319
    """
    input, target = _shared_views(input, target)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError("label_smoothing must be in [0, 1]")
    both = _two_pass(input, target, ignore_index, backend, dice_kwargs, _region.ref.XENT_CE,
                     lams=(lambda_dice, lambda_ce), pixel_weight=ce_weight, eps=label_smoothing)
    if isinstance(both, Tensor):
        return both
    if both is not None:  # torch's mean: Σ_c w_c((1 - ε)·S7_c + ε/C·S8_c) / Σ_c w_c·T_c
        d, s = both
        C = s.shape[0]
        num = (1.0 - label_smoothing) * s[:, 7]
        if label_smoothing:  # S8 is infinite with a -inf logit (a masked class): no 0·inf
            num = num + (label_smoothing / C) * s[:, 8]
        den = s[:, 2]
        w = _region.check_weight(ce_weight, C, s.device)
        if w is not None:
            num, den = num * w.to(s.dtype), den * w.to(s.dtype)
        return lambda_dice * d + lambda_ce * _mean_over(num.sum(), den.sum())
    d = dice_loss(input, target, mode="multiclass", ignore_index=ignore_index, backend=backend, **dice_kwargs)
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        c = _soft_cross_entropy(input, target, ce_weight, label_smoothing, ignore_index)
    else:
        c = cross_entropy(input, target, weight=ce_weight, label_smoothing=label_smoothing,
                          ignore_index=-100 if ignore_index is None else ignore_index, backend=backend)
    return lambda_dice * d + lambda_ce * c


def _soft_cross_entropy(input: Tensor, target: Tensor, weight, label_smoothing: float, ignore_index) -> Tensor:
    """torch.nn.functional.cross_entropy with one-hot / soft targets (class
    probabilities), as MONAI's DiceCELoss takes them: eager torch on every
    backend; differentiable in the target too."""
    if ignore_index is not None:
        raise ValueError("ignore_index with one-hot / soft targets: cross entropy has no ignored pixels there "
                         "(pass class indices)")
    x = input.double() if input.dtype == torch.float64 else input.float()
    w = _region.check_weight(weight, x.shape[1], x.device)
    if x.numel() == 0:
        return x.new_zeros(())
    return torch.nn.functional.cross_entropy(x, target.to(x.dtype), weight=None if w is None else w.to(x.dtype),
                                             label_smoothing=float(label_smoothing))


def dice_focal_loss(input: Tensor, target: Tensor, *, mode: str = "multiclass", lambda_dice: float = 1.0,
                    lambda_focal: float = 1.0, focal_form: Optional[str] = None, alpha=None, gamma: float = 2.0,
                    ignore_index=None, backend: Optional[str] = None, **dice_kwargs) -> Tensor:
    """lambda_dice·dice_loss + lambda_focal·focal_loss.

    ``focal_form`` defaults to the Dice term's activation: "softmax" for
    ``mode="multiclass"``, "sigmoid" otherwise. MONAI's DiceFocalLoss always
    uses the sigmoid focal form, even with softmax Dice: pass
    ``focal_form="sigmoid"`` (one-hot targets per channel) for that. The
    softmax form with class-index targets costs two passes in all (the focal
    sums ride in the Dice kernels); the others run the two terms' kernels
    side by side.

    Args:
        input: logits (N, C, *spatial).
        target: class indices or one-hot / soft targets, as :func:`dice_loss`.
        mode: "multiclass", "multilabel" or "binary" (the Dice term's activation).
        lambda_dice: weight of the Dice term.
        lambda_focal: weight of the focal term.
        focal_form: "softmax", "sigmoid" or None (from ``mode``).
        alpha: the focal term's alpha (see :func:`focal_loss`).
        gamma: focusing exponent, >= 0.
        ignore_index: label (or dense target value) that counts in neither term.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).
        **dice_kwargs: further keyword arguments of :func:`dice_loss`.

    Returns:
        The 0-d loss, float32 (float64 for float64 input).

    Raises:
        ValueError: an unknown ``focal_form``, ``gamma`` < 0, and what
            :func:`dice_loss` and :func:`focal_loss` raise.
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(segfast.dice_focal_loss(logits, labels, gamma=2).item(), 4)
        1.3216
    """
    form = focal_form or ("softmax" if mode == "multiclass" else "sigmoid")
    if form not in ("softmax", "sigmoid"):
        raise ValueError("focal_form must be 'softmax' or 'sigmoid'")
    if gamma < 0:
        raise ValueError("gamma must be >= 0")
    input, target = _shared_views(input, target)
    if form == "softmax" and mode == "multiclass":
        both = _two_pass(input, target, ignore_index, backend, dice_kwargs, _region.ref.XENT_FOCAL, float(gamma),
                         lams=(lambda_dice, lambda_focal), pixel_weight=alpha)
        if isinstance(both, Tensor):
            return both
        if both is not None:  # mean over the valid pixels of α_c·S7_c (focal_loss's semantics)
            d, s = both
            a = _region.check_weight(1.0 if alpha is None else alpha, s.shape[0], s.device).to(s.dtype)
            return lambda_dice * d + lambda_focal * _mean_over((a * s[:, 7]).sum(), s[:, 2].sum())
    d = dice_loss(input, target, mode=mode, ignore_index=ignore_index, backend=backend, **dice_kwargs)
    fmode = "multiclass" if form == "softmax" else ("binary" if input.shape[1] == 1 else "multilabel")
    f = focal_loss(input, target, mode=fmode, alpha=alpha, gamma=gamma, ignore_index=ignore_index,
                   backend=backend)
    return lambda_dice * d + lambda_focal * f


def dice_fused_loss(input: Tensor, target: Tensor, *, lambda_dice: float = 1.0, lambda_fused: float = 1.0,
                    ws: float = 0.5, wp: float = 0.5, ignore_index=None, backend: Optional[str] = None,
                    **dice_kwargs) -> Tensor:
    """lambda_dice·dice_loss + lambda_fused·fused_loss (softmax, class-index targets).

    Two passes over the logits in all: the fused loss's sums ride in the Dice
    kernels.

    Args:
        input: logits (N, C, *spatial), C >= 2, class 0 the background.
        target: class indices (N, *spatial) / (N, 1, *spatial).
        lambda_dice: weight of the Dice term.
        lambda_fused: weight of the fused term.
        ws: weight of the fused term's cross entropy, >= 0.
        wp: weight of the fused term's positive-sharing loss, >= 0.
        ignore_index: label whose pixels count in neither term.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).
        **dice_kwargs: further keyword arguments of :func:`dice_loss`.

    Returns:
        The 0-d loss, float32 (float64 for float64 input).

    Raises:
        ValueError: negative ``ws`` / ``wp``, and what :func:`dice_loss` and
            :func:`fused_loss` raise.
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(segfast.dice_fused_loss(logits, labels).item(), 4)   # 0.8333 + log 3
        1.9319
    """
    if ws < 0 or wp < 0:
        raise ValueError("ws and wp must be >= 0")
    input, target = _shared_views(input, target)
    both = _two_pass(input, target, ignore_index, backend, dice_kwargs, _region.ref.XENT_FUSED,
                     lams=(lambda_dice, lambda_fused), ws=ws, wp=wp)
    if isinstance(both, Tensor):
        return both
    if both is not None:  # (ws·CE + wp·(S7_0 + Σ_{c>=1} S8_c)) / valid pixels
        d, s = both
        ce, ps = s[:, 7].sum(), s[0, 7] + s[1:, 8].sum()
        return lambda_dice * d + lambda_fused * _mean_over(ws * ce + wp * ps, s[:, 2].sum())
    d = dice_loss(input, target, mode="multiclass", ignore_index=ignore_index, backend=backend, **dice_kwargs)
    f = fused_loss(input, target, ws=ws, wp=wp, ignore_index=ignore_index, backend=backend)
    return lambda_dice * d + lambda_fused * f


# ------------------------------------------------------------------ Lovász losses
# Sort-based (segfast/ops/lovasz.py): one batched sort + weights step for every
# segment, no Python loop over images or classes; cpu / cuda / triton kernels.


__all__ += ["lovasz_hinge_loss", "lovasz_softmax_loss"]


def lovasz_hinge_loss(input: Tensor, target: Tensor, *, per_image: bool = True, ignore_index=None,
                      reduction: str = "mean", backend: Optional[str] = None) -> Tensor:
    """Lovász hinge loss (Berman et al.), a surrogate of the Jaccard loss, on logits.

    Per segment, the errors e = 1 - x·(2t - 1) of all its elements (every
    channel) sorted descending give loss = Σ relu(e_(i))·(g_i - g_{i-1}), g the
    Jaccard loss of the first i elements. One batched sort for every segment.
    segmentation_models_pytorch's ``LovaszLoss("binary" | "multilabel")``
    (see segfast.compat.smp).

    Args:
        input: logits (N, 1, *spatial) (binary) or (N, C, *spatial) (multilabel).
        target: float/bool masks of the input's shape ((N, *) also for C = 1;
            soft values in [0, 1] are used as they are), or class indices
            (N, *) / (N, 1, *): {0, 1} for C = 1, one-hot per channel for C > 1.
        per_image: True: one segment per image, then ``reduction`` over images;
            False: the whole batch is one segment (a 0-d loss whatever
            ``reduction``).
        ignore_index: pixels (label targets) or elements (dense targets) equal
            to it are dropped; a segment with nothing left scores 0.
        reduction: "mean", "sum" or "none" ([N], with ``per_image``).
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        The loss: 0-d, or [N] for ``reduction="none"`` with ``per_image``;
        float32 (float64 for float64 input).

    Raises:
        ValueError: shapes that do not fit, labels out of range, an unknown
            ``reduction``.
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 1, 8, 8)                 # every error is 1
        >>> masks = torch.rand(2, 1, 8, 8) > 0.5
        >>> segfast.lovasz_hinge_loss(logits, masks).item()
        1.0
    """
    return _lovasz.lovasz_hinge(input, target, per_image=per_image, ignore_index=ignore_index,
                                reduction=reduction, backend=backend)


def lovasz_softmax_loss(input: Tensor, target: Tensor, *, classes="present", per_image: bool = False,
                        ignore_index=None, from_logits: bool = True, reduction: str = "mean",
                        backend: Optional[str] = None) -> Tensor:
    """Lovász-softmax loss (Berman et al.) for multiclass segmentation.

    For each segment (an image with ``per_image``, else the batch) and class
    c: the errors |fg_c - p_c| sorted descending, loss_c = Σ e_(i)·(g_i -
    g_{i-1}), g the Jaccard loss of the first i pixels; the segment's loss is
    the mean of loss_c over ``classes``. One batched sort for all images and
    classes. segmentation_models_pytorch's ``LovaszLoss("multiclass")`` is
    ``classes="present"``.

    Args:
        input: logits (N, C, *spatial), C >= 2 (probabilities with
            ``from_logits=False``).
        target: class indices (N, *) or (N, 1, *).
        classes: "present" (classes in the segment's valid target; none
            present scores 0), "all", or a list of class indices (repeats count
            twice, absent classes count).
        per_image: True: one segment per image, then ``reduction`` over images;
            False: the batch is one segment (a 0-d loss).
        ignore_index: label whose pixels are dropped; a fully ignored segment
            scores 0 (and counts in the mean over images).
        from_logits: False takes ``input`` as probabilities.
        reduction: "mean", "sum" or "none" ([N], with ``per_image``).
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        The loss: 0-d, or [N] for ``reduction="none"`` with ``per_image``;
        float32 (float64 for float64 input).

    Raises:
        ValueError: C < 2, shapes that do not fit, labels or ``classes`` out
            of range, an unknown ``reduction``.
        TypeError: dense targets or an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4)                 # p = 1/3 everywhere
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(segfast.lovasz_softmax_loss(logits, labels).item(), 4)   # class 0 only: error 2/3
        0.6667
    """
    return _lovasz.lovasz_softmax(input, target, classes=classes, per_image=per_image,
                                  ignore_index=ignore_index, from_logits=from_logits, reduction=reduction,
                                  backend=backend)


# ---- boxes_match family (box matching without the N x M matrix, NMS) ----
# Defined with their docstrings in segfast/ops/boxes_match.py.
from .ops.boxes_match import batched_nms, box_iou_max, nms  # noqa: E402,F401
# ---- end of the boxes_match family ----
# ------------------------------------------------------------------ boxes family (IoU variants, box losses)
# Defined in segfast/ops/boxes.py (pairwise / aligned IoU variants, the box
# losses) and segfast/ops/box_losses.py (the IoU-balanced losses).
from .ops.boxes import (box_iou, box_iou_aligned, ciou_loss, complete_box_iou, complete_box_iou_aligned,  # noqa: E402
                        diou_loss, distance_box_iou, distance_box_iou_aligned, generalized_box_iou,
                        generalized_box_iou_aligned, giou_loss, iou_loss)
from .ops.box_losses import (iou_balanced_bce_loss, iou_balanced_ce_loss, iou_balanced_focal_loss,  # noqa: E402
                             iou_balanced_smooth_l1_loss, matched_iou)

__all__ += ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou", "box_iou_aligned",
           "generalized_box_iou_aligned", "distance_box_iou_aligned", "complete_box_iou_aligned", "iou_loss",
           "giou_loss", "diou_loss", "ciou_loss", "iou_balanced_focal_loss", "iou_balanced_bce_loss",
           "iou_balanced_ce_loss", "iou_balanced_smooth_l1_loss", "matched_iou"]
# ------------------------------------------------------------------ end of the boxes family
# ---- crf family ----------------------------------------------------------------

Gaussian = _crf.Gaussian
Bilateral = _crf.Bilateral


def dense_crf(unary: Tensor, image: Tensor, *, iterations: int = 5, gaussian: Optional[Gaussian] = Gaussian(),
              bilateral: Optional[Bilateral] = Bilateral(), compat=None, normalization: str = "symmetric",
              pos: Optional[Tensor] = None, method: str = "permutohedral", unary_from: str = "energy",
              self_message: bool = True, backend: Optional[str] = None) -> Tensor:
    """Fully connected CRF with Gaussian edge potentials, batched mean field.

    Krähenbühl & Koltun (NIPS 2011), with pydensecrf's DenseCRF2D semantics:
    Q0 = softmax(-U), then ``iterations`` times Q = softmax(-U - Σ_m μ_m K̃_m Q),
    every pixel at once. The permutohedral lattice of each image and kernel is
    built once and reused by every iteration and label.

    Args:
        unary: [B, C, H, W] float: energies (``unary_from="energy"``,
            pydensecrf's setUnaryEnergy), logits (``"logits"``:
            U = -log_softmax) or probabilities (``"probs"``:
            U = -log(clip(p, 1e-5, 1))). Any C >= 1.
        image: [B, 3, H, W], uint8 or float on the 0-255 scale (the scale of
            srgb; a float image within [0, 1] draws a warning).
        iterations: mean-field updates, >= 0 (pydensecrf's ``inference(iterations)``).
        gaussian: :class:`segfast.Gaussian` spatial kernel (sxy=3, compat=3,
            pydensecrf's documented example values); None drops it.
        bilateral: :class:`segfast.Bilateral` appearance kernel (sxy=80,
            srgb=13, compat=10); None drops it.
        compat: overrides both kernels' compat: a number w is the Potts model
            as pydensecrf applies it (the message adds w·K̃Q to the same
            label's logit); a [C, C] matrix μ is symmetrized, (μ + μᵀ)/2, its
            entries penalties (positive: the label pair is discouraged).
        normalization: "symmetric" (K̃ = n K n, n = 1/sqrt(K·1), default),
            "after" (NIPS'11, K̃ = K / K·1), "before" or "none".
        pos: [B, H, W] pixel objectness (:func:`pixel_objectness`): the POS-CRF
            unary θ_0 = -log p_0, θ_k = U_k - pos for classes k >= 1.
        method: "permutohedral" (O(N) per filter) or "exact" (the O(N²) sum, in
            torch on every backend: small images and tests).
        unary_from: "energy", "logits" or "probs" (see ``unary``).
        self_message: True (pydensecrf): the sum over j includes i; False
            removes the i = j term, taken as K_ii = 1.
        backend: "cpu", "triton", "cuda" or "torch" (None: cpu on CPU tensors,
            triton on CUDA tensors, else cuda when built, else torch).

    Returns:
        Q [B, C, H, W], the marginals (float32; float64 for float64 unary).
        Kernel backends return no gradient; the torch backend is
        differentiable through autograd.

    Raises:
        ValueError: shapes that do not fit, negative ``iterations``, an
            unknown ``normalization``, ``method`` or ``unary_from``, a bad
            ``compat`` matrix.
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.randn(1, 3, 16, 16)
        >>> image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
        >>> q = segfast.dense_crf(logits, image, unary_from="logits", iterations=5)
        >>> q.shape
        torch.Size([1, 3, 16, 16])
        >>> torch.allclose(q.sum(1), torch.ones(1, 16, 16))
        True
    """
    return _crf.dense_crf(unary, image, iterations=iterations, gaussian=gaussian, bilateral=bilateral,
                          compat=compat, normalization=normalization, pos=pos, method=method,
                          unary_from=unary_from, self_message=self_message, backend=backend)


def pixel_objectness(proposals: Tensor, size=None) -> Tensor:
    """pos [B, H, W] in [0, 1]: the fraction of object proposals containing each pixel.

    Liu & Lew's POS-CRF term (the ``pos`` argument of :func:`dense_crf`).
    Boxes: pixel (x, y) is inside a box when its centre (x + 0.5, y + 0.5)
    lies in [x1, x2) x [y1, y2) (boxes are clipped to the image; empty or
    inverted boxes cover nothing but still count in G); cost O(G + H·W), a
    2-D difference array and two prefix sums. Masks: their mean over G.

    Args:
        proposals: boxes [B, G, 4] as (x1, y1, x2, y2) in pixel units (needs
            ``size``), or masks [B, G, H, W] (bool/uint8/float in [0, 1]).
        size: (H, W) of the image, for boxes.

    Returns:
        pos [B, H, W], float32; G = 0 gives zeros.

    Raises:
        ValueError: shapes that do not fit, boxes without ``size``.
        TypeError: an unsupported dtype.

    Example:
        >>> import torch, segfast
        >>> boxes = torch.tensor([[[0., 0., 4., 4.], [0., 0., 2., 2.]]])
        >>> pos = segfast.pixel_objectness(boxes, (4, 4))
        >>> pos[0, 0].tolist()
        [1.0, 1.0, 0.5, 0.5]
    """
    return _crf.pixel_objectness(proposals, size)
