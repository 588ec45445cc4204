"""Lovász losses (Berman et al., "The Lovász-Softmax loss", CVPR 2018): the
Lovász hinge (binary / multilabel, on logits) and the Lovász-softmax
(multiclass), batched: no Python loop over images or classes.

A *segment* is one set of pixels whose errors are sorted together: an image
(hinge, ``per_image``), the batch (hinge), an (image, class) pair
(softmax, ``per_image``) or a class over the batch (softmax). Every family
member lays its segments out as the rows of one [G, L] tensor of errors, and
the whole batch is ONE sort (:func:`lovasz_sort_weights`): a radix sort of
int64 keys (row, error bits), restricted to the pixels whose rank can
matter.

The loss of a segment is Σ_i e_(i)·w_i, e sorted descending, w the first
differences of the Lovász extension of the Jaccard loss at the sorted
ground truth. w depends only on the ordering and the ground truth, never on
the error values, so it is a constant for autograd: the op computes w under
no_grad in the pixels' original order, and the loss Σ e·w is
differentiated by autograd (exact, and no sort in the backward).

:func:`lovasz_sort_weights` (sort + Lovász weights) is the one step that is
not elementwise; fused C++/CUDA/Triton kernels of it are the next step.
Today only the ``torch`` backend exists for this family.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import backends
from ._common import acc_dtype, canonical, check_reduction, reduce_loss

FAMILY = "lovasz"
BACKENDS_IMPLEMENTED = ("torch",)
# Above this fraction of candidates, sorting whole rows beats compacting them first.
DENSE_FRACTION = 0.5


def choose_backend(backend: Optional[str], device: torch.device) -> str:
    """The backend for this family: ``torch`` unless one is asked for.

    ``backend=None`` means ``torch`` (SEGFAST_BACKEND is not consulted: the
    family has no kernels yet, and a global SEGFAST_BACKEND=cpu must not
    break it). An explicit backend is validated by :func:`backends.choose`
    (unknown / unavailable: RuntimeError), and one that is available but has
    no Lovász kernel yet is a NotImplementedError, never a silent fallback.
    """
    if backend is None:
        return "torch"
    chosen = backends.choose(backend, device)
    if chosen not in BACKENDS_IMPLEMENTED:
        raise NotImplementedError(
            f"segfast: the {FAMILY} family has no {chosen!r} backend yet "
            f"(implemented: {', '.join(BACKENDS_IMPLEMENTED)}); pass backend='torch' or backend=None")
    return chosen


def _weights_dtype(errors: Tensor) -> torch.dtype:
    return torch.float64 if (errors.dtype == torch.float64 or errors.shape[1] >= 2 ** 24) else torch.float32


def lovasz_sort_weights(errors: Tensor, fg: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """See :func:`lovasz_sort_weights_op`; the weights are constants of the
    loss, so the inputs are detached."""
    return lovasz_sort_weights_op(errors.detach(), fg.detach(), None if valid is None else valid.detach())


@torch.library.custom_op("segfast::lovasz_sort_weights", mutates_args=())
def lovasz_sort_weights_op(errors: Tensor, fg: Tensor, valid: Optional[Tensor] = None) -> Tensor:
    """Sort each segment's errors and return its Lovász weights, in the
    pixels' original order: the step of the Lovász losses that is not
    elementwise (fused C++/CUDA/Triton kernels of it are the next step).

    errors: [G, L], one segment per row, the sort key (only the order
    matters; >= 0); fg: [G, L] ground truth in [0, 1] (bool, integer or
    float; soft values allowed); valid: optional [G, L] bool, False for
    ignored pixels. Returns w [G, L] (float64 for float64 errors, else
    float32) such that the loss of row g is Σ_j errors[g, j]·w[g, j]; w is
    0 at ignored pixels, and the loss is differentiated with w constant.

    The weight of a pixel is g_i - g_{i-1}, i its 1-based rank in
    descending error order and g_i = 1 - (T - A_i)/(T + B_i) the Jaccard
    loss of the first i pixels, T = Σ fg over the row's valid pixels, A_i /
    B_i the cumulative fg / (1 - fg) up to rank i; written without the
    cancellation of the difference:

        w_i = (T - A_i + i·fg_i) / ((T + B_i)(T + B_{i-1}))

    i.e. 1/(T + B_i) for fg = 1 and (T - A_i)/((T + B_i)(T + B_i - 1)) for
    fg = 0 (w_1 = 1 when T = 0).

    Once every foreground pixel has been ranked (A_i = T) the weights are
    0, so pixels with fg = 0 and an error below the row's smallest
    foreground error (below its largest error if it has no foreground) keep
    weight 0 whatever their order. When those are the majority only the
    others (the candidates) are sorted. Either way it is ONE sort for all
    rows: a radix sort of int64 keys (row, then the error's float32 bits).
    """
    G, L = errors.shape
    dev = errors.device
    acc = _weights_dtype(errors)
    out = torch.zeros((G, L), dtype=acc, device=dev)
    if L == 0 or G == 0:
        return out
    key = errors.detach()
    binary = fg.dtype == torch.bool
    pos = fg if binary else fg > 0
    if valid is not None:
        pos = pos & valid
    if binary:
        T = torch.count_nonzero(pos, 1)
    else:
        T = (fg if valid is None else torch.where(valid, fg, 0)).sum(1, dtype=torch.float64)
    # the row's threshold: its smallest foreground error, or its largest valid error without foreground
    big = torch.full((), float("inf"), dtype=key.dtype, device=dev)
    tau = torch.where(pos, key, big).amin(1)
    no_fg = torch.isinf(tau)
    if bool(no_fg.any()):
        vkey = key if valid is None else torch.where(valid, key, -big)
        tau = torch.where(no_fg, vkey.amax(1), tau)
    cand = key >= tau.unsqueeze(1)
    cand |= pos
    if valid is not None:
        cand &= valid
    t = pos if binary else (fg if valid is None else torch.where(valid, fg, 0))
    M = int(torch.count_nonzero(cand))
    if M == 0:
        return out
    if M > DENSE_FRACTION * G * L:  # many pixels matter: sort whole rows, ignored pixels last
        perm = _sort_rows(key, valid)  # [G, L] flat indices
        ts = t.reshape(-1)[perm.view(-1)].view(G, L)
        w = _weights(ts, T.unsqueeze(1), binary, acc)
        out.view(-1)[perm.view(-1)] = w.reshape(-1)
        if valid is not None:
            out.masked_fill_(~valid, 0)
        return out
    idx = cand.view(-1).nonzero().squeeze(1)  # flat indices, grouped by row
    rows = torch.div(idx, L, rounding_mode="floor")
    counts = torch.bincount(rows, minlength=G)
    order, rows = _sort_by_row_then_error(key.reshape(-1)[idx], rows)
    perm = idx[order]
    ts = t.reshape(-1)[perm]
    # Rows laid end to end. Every valid foreground pixel is a candidate, so the
    # foreground before row r's first candidate totals before_r = Σ_{r' < r} T_r'.
    # With j the 0-based position, c the running count: rank = j + 1 - start_r,
    # A = c - before_r, so T + B = P_r + j + 1 - c and T - A = Q_r - c.
    start = torch.cumsum(counts, 0) - counts
    # counts below 2^24 are exact in float32: then no integer arithmetic at all
    cdt = (torch.float32 if acc == torch.float32 and M < 2 ** 24 else torch.int64) if binary else torch.float64
    Tq = T.to(cdt)
    before = torch.cumsum(Tq, 0) - Tq
    table = torch.stack([Tq - start.to(cdt) + before, Tq + before], 1)[rows]  # [M, 2]
    j1 = torch.arange(1, M + 1, device=dev, dtype=cdt)
    w = _weights_flat(ts, j1, table[:, 0], table[:, 1], binary, acc, bool(no_fg.any()))
    out.view(-1)[perm] = w
    return out



@lovasz_sort_weights_op.register_fake
def _(errors, fg, valid=None):
    # A torch.library op (weights carry no gradient): opaque to torch.compile,
    # where the sort's data-dependent sizes could not be traced.
    return errors.new_empty(errors.shape, dtype=_weights_dtype(errors))


def _weights_flat(ts: Tensor, j1: Tensor, P: Tensor, Q: Tensor, binary: bool, acc, empty_rows: bool) -> Tensor:
    """w for rows laid end to end: T + B_i = P + j1 - c, T - A_i = Q - c (c the running fg count)."""
    c = torch.cumsum(ts, 0, dtype=j1.dtype)
    if binary:
        d1 = (P + j1).sub_(c).to(acc)  # T + B_i
        bg = (Q - c).to(acc).div_(d1 * (d1 - 1))
        if empty_rows:  # T = 0: w = 1 at rank 1
            bg = torch.where(d1 > 1, bg, torch.ones((), dtype=acc, device=bg.device))
        return torch.where(ts, d1.reciprocal(), bg)
    t = ts.to(torch.float64)
    d1 = P + j1 - c  # T + B_i
    num = Q - c  # T - A_i
    d0 = d1 - (1 - t)  # T + B_{i-1}
    w = (num + (d1 - num) * t) / (d1 * d0)  # d1 - num = A_i + B_i = i
    return torch.where(d0 > 0, w, torch.ones((), dtype=w.dtype, device=w.device)).to(acc)


def _weights(ts: Tensor, T: Tensor, binary: bool, acc) -> Tensor:
    """w [G, L] from the sorted fg ``ts`` [G, L] and T [G, 1] (the formula of
    :func:`lovasz_sort_weights`), cumulative sums along the rows."""
    G, L = ts.shape
    rank = torch.arange(1, L + 1, device=ts.device)
    if binary:  # exact integer counts
        csum = torch.cumsum(ts, 1, dtype=torch.int64)
        d1 = (T + rank - csum).to(acc)  # T + B_i
        bg = (T - csum).to(acc) / (d1 * (d1 - 1))
        bg = torch.where(d1 > 1, bg, torch.ones((), dtype=acc, device=bg.device))  # T = 0, rank 1
        return torch.where(ts, d1.reciprocal(), bg)
    t = ts.to(torch.float64)
    A = torch.cumsum(t, 1)
    d1 = T + rank - A  # T + B_i
    d0 = d1 - (1 - t)  # T + B_{i-1}
    w = (T - A + rank * t) / (d1 * d0)
    return torch.where(d0 > 0, w, torch.ones((), dtype=w.dtype, device=w.device)).to(acc)


def _sort_rows(key: Tensor, valid: Optional[Tensor]) -> Tensor:
    """Flat indices [G, L] sorting each row of ``key`` (>= 0) descending, invalid entries last."""
    G, L = key.shape
    if key.dtype == torch.float32:
        bits = key.view(torch.int32).to(torch.int64).clamp_min_(0)  # negative floats (and -0.0) -> 0
        low = bits.neg_().add_(2 ** 31 - 1)
        if valid is not None:
            low.masked_fill_(~valid, 2 ** 31)
        k = low.add_(torch.arange(G, device=key.device).mul_(2 ** 32).view(G, 1))
        return torch.sort(k.view(-1), stable=True).indices.view(G, L)
    if valid is not None:
        key = torch.where(valid, key, torch.full((), -1.0, dtype=key.dtype, device=key.device))
    perm = torch.sort(key, dim=1, descending=True, stable=True).indices
    return perm.add_(torch.arange(G, device=key.device).mul_(L).view(G, 1))


def _sort_by_row_then_error(key: Tensor, rows: Tensor):
    """-> (order, rows[order]): the order that sorts the entries by row
    ascending, then ``key`` (>= 0) descending.

    float32 keys: one radix sort of int64 keys ``row << 32 | 2^31 - 1 - bits``
    (the bits of a non-negative float32 order like the float); several times
    faster on CPU than a comparison sort. float64: a float64 key could not
    hold the row exactly, so two stable sorts (error, then row).
    """
    if key.dtype == torch.float32:
        bits = key.view(torch.int32).to(torch.int64).clamp_min_(0)  # negative floats (and -0.0) -> 0
        k = bits.neg_().add_(2 ** 31 - 1).add_(rows * 2 ** 32)
        vals, order = torch.sort(k, stable=True)
        return order, vals.bitwise_right_shift_(32)
    o1 = torch.sort(key.to(torch.float64), descending=True, stable=True).indices
    r1 = rows[o1]
    o2 = torch.sort(r1, stable=True).indices
    return o1[o2], r1[o2]


# ------------------------------------------------------------------ hinge


def lovasz_hinge(input: Tensor, target: Tensor, *, per_image: bool = True, ignore_index=None,
                 reduction: str = "mean", backend: Optional[str] = None) -> Tensor:
    """See :func:`segfast.functional.lovasz_hinge_loss`."""
    check_reduction(reduction)
    if not isinstance(input, Tensor):
        raise TypeError("input and target must be tensors")
    backend = choose_backend(backend, input.device)
    binary = input.dim() >= 2 and input.shape[1] == 1 and isinstance(target, Tensor) and not (
        target.dtype.is_floating_point or target.dtype == torch.bool)
    x, t, is_label, _, off, ign, _ = canonical(input, target, act=1, binary=binary,
                                               ignore_index=ignore_index, backend=backend)
    N, C, S = x.shape
    acc = acc_dtype(x)
    if is_label:  # [N, S] class indices: channel c is label c + off (one-hot per channel)
        valid = None if ign is None else (t != ign).unsqueeze(1).expand(N, C, S)
        classes = torch.arange(C, device=x.device).view(1, C, 1) + off
        fg = t.unsqueeze(1).long() == classes
    else:  # dense [N, C, S]
        valid = None if ign is None else t != ign
        fg = t
    xf = x.to(acc)
    sign = 2 * fg.to(acc) - 1
    if valid is not None:
        sign = torch.where(valid, sign, 0)
    e = torch.relu(1 - xf * sign)  # relu'd errors: pixels with e <= 0 add nothing wherever they rank
    G = N if per_image else 1
    w = lovasz_sort_weights(e.reshape(G, -1), fg.reshape(G, -1), None if valid is None else valid.reshape(G, -1))
    losses = (e.reshape(G, -1) * w).sum(1)
    if not per_image:
        return losses.reshape(())
    return reduce_loss(losses, reduction)


# ------------------------------------------------------------------ softmax


class _SoftmaxErrorDot(torch.autograd.Function):
    """Σ_pixels |fg - p|·w per (segment, class), w constant: dLoss/dp = ∓w·grad_output
    (- on foreground). ``e`` is |fg - p| already computed (no gradient)."""

    @staticmethod
    def forward(ctx, p, e, fg, w, per_image: bool):
        ctx.save_for_backward(fg, w)
        ctx.per_image = per_image
        prod = e * w
        return prod.sum(2) if per_image else prod.sum((0, 2)).unsqueeze(0)

    @staticmethod
    def backward(ctx, go):
        fg, w = ctx.saved_tensors
        g = w * go.unsqueeze(2)  # go [N, K] or [1, K]: broadcasts over pixels (and images)
        return torch.where(fg, -g, g).to(w.dtype), None, None, None, None


def _class_selection(classes, C: int):
    """-> ("present" | "all" | index tensor of the listed classes)."""
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present', 'all' or a list of class indices, got {classes!r}")
        return classes
    try:
        idx = torch.as_tensor(list(classes) if not isinstance(classes, Tensor) else classes, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"classes must be 'present', 'all' or a list of class indices, got {classes!r}") from None
    idx = idx.reshape(-1)
    if idx.numel() == 0:
        raise ValueError("classes must not be an empty list")
    if bool(((idx < 0) | (idx >= C)).any()):
        raise ValueError(f"classes must lie in [0, {C}), got {idx.tolist()}")
    return idx


def lovasz_softmax(input: Tensor, target: Tensor, *, classes="present", per_image: bool = False,
                   ignore_index=None, from_logits: bool = True, reduction: str = "mean",
                   backend: Optional[str] = None) -> Tensor:
    """See :func:`segfast.functional.lovasz_softmax_loss`."""
    check_reduction(reduction)
    if not isinstance(input, Tensor):
        raise TypeError("input and target must be tensors")
    backend = choose_backend(backend, input.device)
    x, t, is_label, _, _, ign, _ = canonical(input, target, act=2, ignore_index=ignore_index, backend=backend)
    if not is_label:
        raise TypeError(f"lovasz_softmax_loss takes class-index targets (uint8/int32/int64), got {target.dtype}")
    N, C, S = x.shape
    if C < 2:
        raise ValueError(f"lovasz_softmax_loss needs C >= 2 classes, got C={C}")
    sel = _class_selection(classes, C)
    acc = acc_dtype(x)
    p = torch.softmax(x.to(acc), dim=1) if from_logits else x.to(acc)
    lab = t.long()
    if isinstance(sel, Tensor):  # only the listed classes' errors are needed
        uniq, inv = torch.unique(sel.to(x.device), return_inverse=True)
        p = p.index_select(1, uniq)
        cls = uniq.view(1, -1, 1)
    else:
        cls = torch.arange(C, device=x.device).view(1, C, 1)
    K = cls.shape[1]
    fg = lab.unsqueeze(1) == cls  # [N, K, S]
    valid = None if ign is None else (t != ign).unsqueeze(1).expand(N, K, S)
    e = torch.where(fg, 1 - p.detach(), p.detach())  # |fg - p|, the sort key
    if per_image:  # segments (image, class): rows of [N*K, S]
        v2 = None if valid is None else valid.reshape(N * K, S)
        w = lovasz_sort_weights(e.view(N * K, S), fg.view(N * K, S), v2).view(N, K, S)
    else:  # segments: classes over the batch, rows of [K, N*S]
        tr = lambda a: a.transpose(0, 1).reshape(K, N * S)  # noqa: E731
        w = lovasz_sort_weights(tr(e), tr(fg), None if valid is None else tr(valid))
        w = w.view(K, N, S).transpose(0, 1)
    seg = _SoftmaxErrorDot.apply(p, e, fg, w, per_image)  # [N, K] or [1, K]
    if isinstance(sel, Tensor):
        per = seg[:, inv.to(seg.device)].mean(1)
    elif sel == "all":
        per = seg.mean(1)
    else:  # present: mean over the classes with valid foreground; none present -> 0
        fgv = fg if valid is None else fg & valid
        present = (fgv.any(2) if per_image else fgv.any(2).any(0, keepdim=True))
        per = (seg * present).sum(1) / present.sum(1).clamp_min(1)
    if not per_image:
        return per.reshape(())
    return reduce_loss(per, reduction)
