"""Functional API of segfast.

Region losses share these arguments (keyword-only after ``target``):

input
    Logits (or probabilities with ``from_logits=False``), shape (N, C, *spatial)
    with 1 to 3 (or more) spatial dims; float32, float16, bfloat16 or float64.
    Any strides (channels_last included). Sums are accumulated in float32
    (float64 for float64 input); the loss is float32 (float64), the gradient
    has the input's dtype.
target
    Class indices (N, *spatial) or (N, 1, *spatial) as uint8/int32/int64, in
    [0, C) (in {0, 1} for ``mode="binary"``) or equal to ``ignore_index``; or
    one-hot / soft targets (N, C, *spatial) in any float dtype (or bool).
mode
    ``"multiclass"``: softmax over C (C >= 2); ``"multilabel"``: sigmoid per
    channel; ``"binary"``: sigmoid, C = 1.
ignore_index
    Pixels whose label equals it (for dense targets: elements whose value
    equals it) add nothing to any sum: neither prediction nor target.
weight
    Per-class weights, one per input channel (a scalar is broadcast), >= 0;
    each (image, class) loss is multiplied by its class weight before the
    reduction, as MONAI does (a weighted *sum* divided by the count, not a
    weighted mean; segmentation_models_pytorch divides by the weights' sum).
include_background
    False drops channel 0 after the sums are computed (C must be >= 2).
batch
    False: one score per (image, class), then the reduction over N x C
    (MONAI's ``batch=False``). True: sums pooled over the batch, one score per
    class (segmentation_models_pytorch always pools).
sync_stats, process_group
    With ``batch=True``, all-reduce the pooled sums across processes before
    the formula, so under DistributedDataParallel the loss equals the
    single-process loss on the concatenated batch (see ops.region.sync).
smooth_nr, smooth_dr
    Added to numerator and denominator (MONAI's defaults, 1e-5).
log_loss
    Return -log(score) (score clamped to >= 1e-7) instead of 1 - score.
reduction
    ``"mean"`` | ``"sum"`` | ``"none"`` (the [N, C] or, with ``batch``, [C]
    per-plane losses; MONAI's DiceLoss instead returns [N, C, 1, ...]:
    segfast.compat.monai reproduces that).
backend
    ``"triton"``, ``"cuda"``, ``"cpu"`` or ``"torch"``; default from
    SEGFAST_BACKEND, else the device's default (see segfast.backends).

Empty and ignored planes: a plane whose denominator is 0 (possible only with
zero smoothing: no target, no prediction, or every pixel ignored) scores 1,
so its loss is 0 rather than NaN. segmentation_models_pytorch instead zeroes
the loss of every class absent from the target (compat.smp does that).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .ops import region as _region

__all__ = ["dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss", "region_stats"]


def region_stats(input: Tensor, target: Tensor, *, mode: str = "multiclass", from_logits: bool = True,
                 ignore_index=None, backend: Optional[str] = None) -> Tensor:
    """The per-(image, class) sums [N, C, 7] every region loss is built from.

    Order: I = Σv·p·t, P = Σv·p, T = Σv·t, V = Σv, PP = Σv·p², TT = Σv·t²,
    M = Σv·min(p, t); p the activation of ``input``, t the target, v the valid
    mask. Differentiable; build a custom region loss on it.
    """
    return _region.plane_stats(*_region.prepare(input, target, mode, from_logits, ignore_index, backend))


def _pooled_stats(input, target, mode, from_logits, ignore_index, batch, sync_stats,
                  process_group, backend):
    stats = region_stats(input, target, mode=mode, from_logits=from_logits,
                         ignore_index=ignore_index, backend=backend)
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
    return _reduce(f, reduction)


def _reduce(f: Tensor, reduction: str) -> Tensor:
    """The mean over an empty batch is 0, not NaN (torchvision's convention)."""
    if reduction == "mean":
        return f.mean() if f.numel() else f.sum()
    if reduction == "sum":
        return f.sum()
    return f


def _check_common(reduction, smooth_nr, smooth_dr):
    _region.check_reduction(reduction)
    if smooth_nr < 0 or smooth_dr < 0:
        raise ValueError("smooth_nr and smooth_dr must be >= 0")


def dice_loss(input: Tensor, target: Tensor, *, mode: str = "multiclass", from_logits: bool = True,
              ignore_index=None, weight=None, include_background: bool = True, batch: bool = False,
              smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
              reduction: str = "mean", sync_stats: bool = False, process_group=None,
              backend: Optional[str] = None) -> Tensor:
    """Soft Dice loss: 1 - (2I + smooth_nr) / (P + T + smooth_dr) per plane.

    MONAI's DiceLoss formula and defaults (softmax=True, to_onehot_y=True for
    multiclass labels). Differences from MONAI: the activation is chosen by
    ``mode``/``from_logits`` instead of sigmoid/softmax flags, class-index
    targets need no ``to_onehot_y``, ``reduction="none"`` returns [N, C],
    ``ignore_index`` masks predictions and targets alike. Differences from
    segmentation_models_pytorch: smoothing enters numerator and denominator
    separately (smp adds ``smooth`` to I and to each cardinality), classes
    absent from the target are not zeroed, statistics are per image unless
    ``batch=True``. See the module docstring for every argument.
    """
    _check_common(reduction, smooth_nr, smooth_dr)
    s = _pooled_stats(input, target, mode, from_logits, ignore_index, batch, sync_stats, process_group, backend)
    tp, fp, fn = _region.tp_fp_fn(s)
    score = _region.safe_ratio(2 * tp + smooth_nr, 2 * tp + fp + fn + smooth_dr)
    return _finish(score, input, log_loss=log_loss, include_background=include_background,
                   weight=weight, reduction=reduction)


def jaccard_loss(input: Tensor, target: Tensor, *, mode: str = "multiclass", from_logits: bool = True,
                 ignore_index=None, weight=None, include_background: bool = True, batch: bool = False,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
                 reduction: str = "mean", sync_stats: bool = False, process_group=None,
                 backend: Optional[str] = None) -> Tensor:
    """Soft IoU (Jaccard) loss: 1 - (I + smooth_nr) / (P + T - I + smooth_dr).

    The IoU loss of Rahman & Wang and van Beers et al. Note MONAI's
    ``DiceLoss(jaccard=True)`` computes 1 - (2I + nr) / (2(P + T - I) + dr),
    which differs in how smoothing enters (compat.monai reproduces it).
    """
    _check_common(reduction, smooth_nr, smooth_dr)
    s = _pooled_stats(input, target, mode, from_logits, ignore_index, batch, sync_stats, process_group, backend)
    tp, fp, fn = _region.tp_fp_fn(s)
    score = _region.safe_ratio(tp + smooth_nr, tp + fp + fn + smooth_dr)
    return _finish(score, input, log_loss=log_loss, include_background=include_background,
                   weight=weight, reduction=reduction)


def tversky_loss(input: Tensor, target: Tensor, *, mode: str = "multiclass", from_logits: bool = True,
                 ignore_index=None, weight=None, include_background: bool = True, batch: bool = False,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
                 alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                 reduction: str = "mean", sync_stats: bool = False, process_group=None,
                 backend: Optional[str] = None) -> Tensor:
    """Tversky loss: 1 - (I + nr) / (I + alpha·FP + beta·FN + dr), FP = P - I, FN = T - I.

    ``gamma`` != 1 gives the focal Tversky loss (1 - TI)^gamma, applied per
    plane before the reduction (Abraham & Khan apply it per class; smp
    raises the *mean* loss to gamma: compat.smp reproduces that). alpha
    weighs false positives, beta false negatives, as in MONAI and smp.
    """
    _check_common(reduction, smooth_nr, smooth_dr)
    if alpha < 0 or beta < 0 or gamma <= 0:
        raise ValueError("alpha and beta must be >= 0 and gamma > 0")
    s = _pooled_stats(input, target, mode, from_logits, ignore_index, batch, sync_stats, process_group, backend)
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


def generalized_dice_loss(input: Tensor, target: Tensor, *, mode: str = "multiclass",
                          from_logits: bool = True, ignore_index=None, weight=None,
                          include_background: bool = True, batch: bool = False,
                          smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
                          w_type: str = "square", reduction: str = "mean", sync_stats: bool = False,
                          process_group=None, backend: Optional[str] = None) -> Tensor:
    """Generalized Dice loss (Sudre et al.): 1 - (2 Σ_c w_c I_c + nr) / (Σ_c w_c (P_c + T_c) + dr).

    One score per image (per batch with ``batch=True``); ``reduction="none"``
    returns [N] (a 0-d tensor with ``batch``). Class weights from ``w_type``
    as MONAI's GeneralizedDiceLoss; ``weight`` (optional) multiplies them.
    """
    _check_common(reduction, smooth_nr, smooth_dr)
    s = _pooled_stats(input, target, mode, from_logits, ignore_index, batch, sync_stats, process_group, backend)
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
    return _reduce(f, reduction)
