"""Eager PyTorch reference of the region family: the test oracle and the
benchmark baseline. Never imports a kernel.

``region_stats`` computes, per (image, class) plane, the sums the kernels
compute, and is differentiable by autograd; it is also the ``torch`` backend.
``region_loss`` is a complete, independent loss written the obvious way
(one-hot, activation, sums, formula) used as the benchmark baseline and as a
second oracle for the formulas in segfast/ops/region.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .pixel import focal_factor

# Order of the K per-plane sums; shared by every backend. With a pixel term
# ``xent`` (softmax, class-index targets; csrc/common/region.h) two more sums
# S7, S8 follow, so Dice + CE / focal / fused still costs two passes:
#   XENT_CE:    S7 = Σv·t·(-log p), S8 = Σv·(-log p) (label smoothing)
#   XENT_FOCAL: S7 = Σv·t·(1 - p)^γ·(-log p), S8 = 0
#   XENT_FUSED: S7 = the CE sum, S8 = Σv·t·(-log(1 - p_0)) on planes c >= 1 (0 on plane 0)
STATS = ("I", "P", "T", "V", "PP", "TT", "M")
K = len(STATS)
KX = K + 2
XENT_NONE, XENT_CE, XENT_FOCAL, XENT_FUSED = 0, 1, 2, 3

ACT_IDENTITY, ACT_SIGMOID, ACT_SOFTMAX = 0, 1, 2


def activation(x: torch.Tensor, act: int) -> torch.Tensor:
    """x: [N, C, S] -> probabilities in float32 (float64 stays float64)."""
    x = x.double() if x.dtype == torch.float64 else x.float()
    if act == ACT_SOFTMAX:
        return torch.softmax(x, dim=1)
    if act == ACT_SIGMOID:
        return torch.sigmoid(x)
    return x


def dense_target(target: torch.Tensor, is_label: bool, C: int, label_offset: int,
                 ignore_value: float | None, dtype: torch.dtype):
    """-> (t [N, C, S], v [N, C, S]) in ``dtype``; v is the valid mask."""
    if is_label:  # target [N, S] of class indices
        classes = torch.arange(C, device=target.device).view(1, C, 1) + label_offset
        lab = target.unsqueeze(1).long()
        t = (lab == classes).to(dtype)
        if ignore_value is None:
            v = torch.ones_like(t)
        else:
            v = (lab != ignore_value).to(dtype).expand_as(t)
        return t, v
    t = target.to(dtype)
    if ignore_value is None:
        return t, torch.ones_like(t)
    keep = target != ignore_value
    return torch.where(keep, t, 0), keep.to(dtype)


def region_stats(x: torch.Tensor, target: torch.Tensor, is_label: bool, act: int,
                 label_offset: int = 0, ignore_value: float | None = None, xent: int = XENT_NONE,
                 gamma: float = 0.0) -> torch.Tensor:
    """Per-plane sums [N, C, K] (float32; float64 for float64 input); [N, C, KX]
    with a pixel term ``xent`` (softmax and class-index targets only; ``gamma``
    for the focal term).

    x: [N, C, S] logits (or probabilities with act=identity);
    target: [N, S] class indices (is_label) or [N, C, S] dense targets.
    A pixel is invalid where its label (or, for dense targets, the element)
    equals ``ignore_value``; invalid elements add nothing to any sum.
    """
    p = activation(x, act)
    t, v = dense_target(target, is_label, x.shape[1], label_offset, ignore_value, p.dtype)
    pv = p * v
    sums = [pv * t, pv, t * v, v, pv * p, t * t * v, torch.minimum(p, t) * v]
    if xent:
        if act != ACT_SOFTMAX or not is_label:
            raise ValueError("xent needs softmax and class-index targets")
        xf = x.to(p.dtype)
        nl = -torch.log_softmax(xf, dim=1)
        # the label's class only: -log p_c of a class with a -inf logit is
        # inf, and inf·0 would make the sum NaN
        tv = t * v
        hit = tv != 0
        zero = torch.zeros_like(p)
        nl_y = torch.where(hit, nl, zero)
        if xent == XENT_CE:
            sums += [nl_y * tv, torch.where(v != 0, nl, zero)]
        elif xent == XENT_FOCAL:
            sums += [torch.where(hit, focal_factor(1 - p, gamma) * nl_y, zero) * tv, zero]  # nl_y: no 0·inf
        elif xent == XENT_FUSED:
            h = torch.where(hit, -torch.logsumexp(-nl[:, 1:], 1, keepdim=True), zero) * tv
            sums += [nl_y * tv, torch.cat([torch.zeros_like(h[:, :1]), h[:, 1:]], 1)]
        else:
            raise ValueError(f"unknown pixel term {xent}")
    return torch.stack([s.sum(dim=2) for s in sums], dim=2)


def _to_labels_or_onehot(input, target, mode):
    """Reference target handling, written independently of ops/region.py."""
    n, c = input.shape[:2]
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        if target.dim() == input.dim() - 1:
            target = target.unsqueeze(1)
        return target.reshape(n, c, -1).to(torch.float64), None
    lab = target.reshape(n, -1).long()
    return None, lab


def region_loss(input: torch.Tensor, target: torch.Tensor, *, kind: str = "dice",
                mode: str = "multiclass", from_logits: bool = True, ignore_index=None,
                weight=None, include_background: bool = True, batch: bool = False,
                smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
                alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                w_type: str = "square", reduction: str = "mean") -> torch.Tensor:
    """Whole region loss in eager PyTorch: the baseline the kernels must beat.

    Same semantics as segfast.functional (see its docstrings).
    """
    n, c = input.shape[:2]
    x = input.reshape(n, c, -1).float() if input.dtype != torch.float64 else input.reshape(n, c, -1)
    if from_logits:
        p = torch.softmax(x, 1) if mode == "multiclass" else torch.sigmoid(x)
    else:
        p = x
    dense, lab = _to_labels_or_onehot(input, target, mode)
    if lab is not None:
        valid = torch.ones_like(lab, dtype=torch.bool) if ignore_index is None else lab != ignore_index
        if mode == "binary":
            t = (lab == 1).unsqueeze(1)
        else:
            t = F.one_hot(torch.where(valid, lab, 0), c).permute(0, 2, 1)
        t = t.to(p.dtype)
        v = valid.unsqueeze(1).to(p.dtype)
    else:
        valid = torch.ones_like(dense, dtype=torch.bool) if ignore_index is None else dense != ignore_index
        v = valid.to(p.dtype)
        t = torch.where(valid, dense.to(p.dtype), 0)
    p = p * v
    t = t * v
    dims = (0, 2) if batch else (2,)
    inter = (p * t).sum(dims)
    psum = p.sum(dims)
    tsum = t.sum(dims)
    if not include_background:
        inter, psum, tsum = inter[..., 1:], psum[..., 1:], tsum[..., 1:]
    fp, fn = psum - inter, tsum - inter
    if kind == "generalized_dice":
        if w_type == "square":
            w = 1.0 / (tsum * tsum)
        elif w_type == "simple":
            w = 1.0 / tsum
        else:
            w = torch.ones_like(tsum)
        inf = torch.isinf(w)
        w = torch.where(inf, 0.0, w)
        wmax = w.max() if batch else w.max(dim=-1, keepdim=True).values
        w = torch.where(inf, wmax, w).detach()
        num = 2 * (inter * w).sum(-1) + smooth_nr
        den = ((psum + tsum) * w).sum(-1) + smooth_dr
        score = _safe_ratio(num, den)
        f = 1 - score
        return _reduce(f, reduction)
    if kind == "dice":
        num, den = 2 * inter + smooth_nr, psum + tsum + smooth_dr
    elif kind == "jaccard":
        num, den = inter + smooth_nr, inter + fp + fn + smooth_dr
    elif kind == "tversky":
        num, den = inter + smooth_nr, inter + alpha * fp + beta * fn + smooth_dr
    else:
        raise ValueError(kind)
    score = _safe_ratio(num, den)
    f = -torch.log(score.clamp_min(1e-7)) if log_loss else 1 - score
    if kind == "tversky" and gamma != 1.0:
        f = f.clamp_min(0) ** gamma
    if weight is not None:
        w = torch.as_tensor(weight, dtype=f.dtype, device=f.device)
        if not include_background and w.numel() == c:
            w = w[1:]
        f = f * w
    return _reduce(f, reduction)


def _safe_ratio(num, den):
    # An empty (or fully ignored) plane with no smoothing scores 1: nothing to
    # find and nothing predicted. NaN sums (NaN or infinite logits) stay NaN.
    return torch.where(den == 0, torch.ones_like(num), num / torch.where(den == 0, 1, den))


def _reduce(f, reduction):
    if reduction == "mean":
        return f.mean()
    if reduction == "sum":
        return f.sum()
    return f
