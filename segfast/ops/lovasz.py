"""Lovász losses (Berman et al., "The Lovász-Softmax loss", CVPR 2018): the
Lovász hinge (binary / multilabel, on logits) and the Lovász-softmax
(multiclass), batched: no Python loop over images or classes.

A *segment* is one set of pixels whose errors are sorted together: an image
(hinge, ``per_image``), the batch (hinge), an (image, class) pair
(softmax, ``per_image``) or a class over the batch (softmax). Every family
member lays its segments out as the rows of one [G, L] tensor of errors (or
a 4-D view [R1, R2, B, S]: segment (r1, r2), pixels (b, s), so that a class
over the batch needs no transposed copy), and the whole batch is ONE call of
:func:`lovasz_sort_weights`.

The loss of a segment is Σ_i e_(i)·w_i, e sorted descending, w the first
differences of the Lovász extension of the Jaccard loss at the sorted
ground truth. w depends only on the ordering and the ground truth, never on
the error values, so it is a constant for autograd: the op computes w under
no_grad in the pixels' original order, and the loss Σ e·w is
differentiated by autograd (exact, and no sort in the backward).

Backends of the sort + weights step (the one step that is not elementwise):

* ``cpu`` (csrc/cpu/lovasz.cpp): one row per OpenMP task; the row's
  candidates (below) are compacted, radix-sorted by error bits and the
  weights written in one pass.
* ``cuda`` / ``triton`` (csrc/cuda/lovasz.cu, triton_kernels/lovasz.py):
  torch.sort of packed int64 keys (row, error bits) for the whole batch,
  then one kernel per row scans fg in sorted order (block scans joined by
  a carry) and scatters w back through the permutation.
* ``torch``: the same sort (of the candidates only when they are few) and
  the weights as tensor ops.

Ties in the errors keep the pixels' original order in every backend (stable
sorts of the same keys), so the backends agree up to float rounding.
"""

# torch.library.custom_op infers the op schemas from annotations: they stay real
# types (no `from __future__ import annotations`, whose strings torch 2.4 cannot
# read; typing.List, as list[float] is unsupported before torch 2.7).
from typing import Optional

import torch
from torch import Tensor

from .. import _doc, backends
from .pixel import _PixelLoss
from ._common import acc_dtype, canonical, check_reduction, reduce_loss, triton_op

FAMILY = "lovasz"
__all__ = ["lovasz_hinge_loss", "lovasz_softmax_loss", "LovaszHingeLoss", "LovaszSoftmaxLoss"]
BACKENDS_IMPLEMENTED = ("triton", "cuda", "cpu", "torch")
# Above this fraction of candidates, sorting whole rows beats compacting them first (torch backend).
DENSE_FRACTION = 0.5


def choose_backend(backend: Optional[str], device: torch.device) -> str:
    """The backend for this family: :func:`backends.choose` (the ``backend=``
    argument, else SEGFAST_BACKEND, else the device's default: ``cpu`` on CPU
    tensors, ``triton`` / ``cuda`` on GPU). Unknown or unavailable: RuntimeError."""
    return backends.choose(backend, device)


def _weights_dtype(errors: Tensor) -> torch.dtype:
    L = errors.shape[-1] if errors.dim() == 2 else errors.shape[-2] * errors.shape[-1]
    return torch.float64 if (errors.dtype == torch.float64 or L >= 2 ** 24) else torch.float32


def _check_sort_weights(errors: Tensor, fg: Tensor, valid: Optional[Tensor]) -> None:
    if not all(isinstance(a, Tensor) for a in (errors, fg)) or not (valid is None or isinstance(valid, Tensor)):
        raise TypeError("errors, fg (and valid) must be tensors")
    if errors.dim() not in (2, 4):
        raise ValueError(f"errors must be [G, L] or [R1, R2, B, S], got shape {tuple(errors.shape)}")
    if not errors.dtype.is_floating_point:
        raise TypeError(f"errors must be a float tensor, got {errors.dtype}")
    if fg.dtype.is_complex or valid is not None and valid.dtype != torch.bool:
        raise TypeError("fg must be a real tensor and valid a bool tensor")
    for name, a in (("fg", fg), ("valid", valid)):
        if a is None:
            continue
        if a.shape != errors.shape:
            raise ValueError(f"{name} must have the errors' shape {tuple(errors.shape)}, got {tuple(a.shape)}")
        if a.device != errors.device:
            raise ValueError(f"{name} is on {a.device} but errors are on {errors.device}")


def lovasz_sort_weights(errors: Tensor, fg: Tensor, valid: Optional[Tensor] = None,
                        backend: Optional[str] = None) -> Tensor:
    """See :func:`lovasz_sort_weights_op`; the weights are constants of the
    loss, so the inputs are detached. ``backend``: as :func:`choose_backend`."""
    _check_sort_weights(errors, fg, valid)
    backend = choose_backend(backend, errors.device)
    errors, fg = errors.detach(), fg.detach()
    valid = None if valid is None else valid.detach()
    if backend == "triton":
        return lovasz_sort_weights_triton_op(errors, fg, valid)
    return lovasz_sort_weights_op(errors, fg, valid, backend)


@torch.library.custom_op("segfast::lovasz_sort_weights", mutates_args=())
def lovasz_sort_weights_op(errors: Tensor, fg: Tensor, valid: Optional[Tensor], backend: str) -> Tensor:
    """Sort each segment's errors and return its Lovász weights, in the
    pixels' original order: the step of the Lovász losses that is not
    elementwise, with the ``torch``, ``cpu`` or ``cuda`` backend (``triton``:
    ``segfast::lovasz_sort_weights_triton``).

    errors: [G, L], one segment per row, or [R1, R2, B, S], segment (r1, r2)
    of the pixels (b, s) (any strides); the sort key (only the order
    matters; >= 0: negative values sort as 0). fg: the errors' shape, ground
    truth in [0, 1] (bool, integer or float; soft values allowed); valid:
    optional bool of the errors' shape, False for ignored pixels. Returns w
    (the errors' shape, contiguous; float64 for float64 errors or segments
    of >= 2^24 pixels, else float32) such that the loss of a segment is
    Σ errors·w over it; w is 0 at ignored pixels, and the loss is
    differentiated with w constant.

    The weight of a pixel is g_i - g_{i-1}, i its 1-based rank in
    descending error order (ties: the pixels' original order) and
    g_i = 1 - (T - A_i)/(T + B_i) the Jaccard loss of the first i pixels,
    T = Σ fg over the row's valid pixels, A_i / B_i the cumulative fg /
    (1 - fg) up to rank i; written without the cancellation of the
    difference:

        w_i = (T - A_i + i·fg_i) / ((T + B_i)(T + B_{i-1}))

    i.e. 1/(T + B_i) for fg = 1 and (T - A_i)/((T + B_i)(T + B_i - 1)) for
    fg = 0 (w_1 = 1 when T = 0).

    Once every foreground pixel has been ranked (A_i = T) the weights are
    0, so pixels with fg = 0 and an error below the row's smallest
    foreground error (below its largest error if it has no foreground) keep
    weight 0 whatever their order. The cpu backend sorts only the others
    (the candidates); the torch backend does when they are few.
    """
    shape = errors.shape
    dev = errors.device
    acc = _weights_dtype(errors)
    if errors.numel() == 0:
        return torch.zeros(shape, dtype=acc, device=dev)
    if backend == "torch":
        G = shape[0] if errors.dim() == 2 else shape[0] * shape[1]
        two = lambda a: None if a is None else a.reshape(G, -1)  # noqa: E731
        return _torch_sort_weights(two(errors), two(fg), two(valid), acc).view(shape)
    if errors.dtype not in (torch.float32, torch.float64):
        errors = errors.float()
    if fg.dtype not in backends.DTYPE_CODES:
        fg = fg.to(acc)
    if backend == "cpu":
        return _cpu_sort_weights(errors, fg, valid, acc)
    if backend == "cuda":
        return _gpu_sort_weights(errors, fg, valid, acc, _launch_cuda)
    raise ValueError(f"segfast: unknown backend {backend!r} for lovasz_sort_weights")


@lovasz_sort_weights_op.register_fake
def _(errors, fg, valid=None, backend="torch"):
    # A torch.library op (weights carry no gradient): opaque to torch.compile,
    # where the sort's data-dependent sizes could not be traced.
    return errors.new_empty(errors.shape, dtype=_weights_dtype(errors))


def _four(a: Tensor) -> Tensor:
    """[G, L] -> [1, G, 1, L] (a view); 4-D unchanged."""
    return a if a.dim() == 4 else a.unsqueeze(0).unsqueeze(2)


def _cpu_sort_weights(errors: Tensor, fg: Tensor, valid: Optional[Tensor], acc) -> Tensor:
    w = torch.empty(errors.shape, dtype=acc, device=errors.device)
    e4, f4 = _four(errors), _four(fg)
    v4 = None if valid is None else _four(valid)
    G = e4.shape[0] * e4.shape[1]
    view = backends.view
    backends._C.cpu.lovasz_weights(view(e4), view(f4), view(v4), view(w),
                                   backends.cpu_threads(errors.numel()) if G > 1 else 1)
    return w


def _gpu_inputs(errors: Tensor, fg: Tensor, valid: Optional[Tensor]):
    """-> (G, L, perm [G*L], fg [G*L], valid [G*L] or None, total [G] float64)
    for the GPU kernels: one stable torch.sort of packed (row, error bits)
    keys for the whole batch, invalid pixels last in their row."""
    G = errors.shape[0] if errors.dim() == 2 else errors.shape[0] * errors.shape[1]
    e2 = errors.reshape(G, -1)
    L = e2.shape[1]
    f2 = fg.reshape(G, L)
    v2 = None if valid is None else valid.reshape(G, L)
    perm = _sort_rows(e2, v2).reshape(-1)
    tf = f2 if v2 is None else torch.where(v2, f2, torch.zeros((), dtype=f2.dtype, device=f2.device))
    total = tf.sum(1, dtype=torch.float64)
    if f2.dtype == torch.bool:
        f2 = f2.view(torch.uint8)
    f2 = f2.contiguous().view(-1)
    v2 = None if v2 is None else v2.contiguous().view(torch.uint8).view(-1)
    return G, L, perm, f2, v2, total


def _launch_cuda(G, L, perm, f, v, total, w):
    view = backends.view
    with backends.cuda_launch(w.device) as (kernels, stream):
        kernels.lovasz_weights_sorted(view(perm.view(G, L)), view(f), view(v), view(total), view(w), stream)


def _gpu_sort_weights(errors: Tensor, fg: Tensor, valid: Optional[Tensor], acc, launch) -> Tensor:
    G, L, perm, f, v, total = _gpu_inputs(errors, fg, valid)
    w = torch.empty(errors.shape, dtype=acc, device=errors.device)  # every slot is written through perm
    launch(G, L, perm, f, v, total, w)
    return w


@backends.triton_ops
def _register_triton_ops():
    """The Triton ops, registered when the triton backend is first asked for
    (backends.triton_ops); backends.choose() refuses that backend where Triton is missing."""
    global lovasz_sort_weights_triton_op

    @triton_op("segfast::lovasz_sort_weights_triton", mutates_args=())
    def lovasz_sort_weights_triton_op(errors: Tensor, fg: Tensor, valid: Optional[Tensor] = None) -> Tensor:
        """:func:`lovasz_sort_weights_op` with the Triton weights kernel."""
        from ..triton_kernels import lovasz as tk

        acc = _weights_dtype(errors)
        if errors.numel() == 0:
            return torch.zeros(errors.shape, dtype=acc, device=errors.device)
        if errors.dtype not in (torch.float32, torch.float64):
            errors = errors.float()
        if fg.dtype not in backends.DTYPE_CODES:
            fg = fg.to(acc)
        return _gpu_sort_weights(errors, fg, valid, acc, tk.launch_weights)


def _torch_sort_weights(errors: Tensor, fg: Tensor, valid: Optional[Tensor], acc) -> Tensor:
    """The torch backend on [G, L] rows."""
    G, L = errors.shape
    dev = errors.device
    out = torch.zeros((G, L), dtype=acc, device=dev)
    key = errors.detach()
    if key.dtype not in (torch.float32, torch.float64):
        key = key.float()
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
        bits = key.contiguous().view(torch.int32).to(torch.int64).clamp_min_(0)  # negative floats (and -0.0) -> 0
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
                                               ignore_index=ignore_index, backend=backend, triton_float64=True)
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
    if per_image:  # segments: images, pixels (c, s) of [N, 1, C, S] views
        four = lambda a: a.unsqueeze(1)  # noqa: E731
    else:  # one segment: the batch
        four = lambda a: a.reshape(1, 1, 1, -1)  # noqa: E731
    w = lovasz_sort_weights(four(e), four(fg), None if valid is None else four(valid), backend=backend)
    prod = e * w.view(N, C, S)
    if not per_image:
        return prod.sum()
    return reduce_loss(prod.sum((1, 2)), reduction)


# ------------------------------------------------------------------ softmax


@torch.library.custom_op("segfast::lovasz_softmax_rows", mutates_args=())
def lovasz_softmax_rows_op(p: Tensor, labels: Tensor, cls: Tensor, ignore_value: Optional[float],
                           per_image: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The cpu backend's fused Lovász-softmax step: errors and fg from the
    probabilities p [N, K, S] (float32/64) and the labels [N, S] (class
    ``cls[k]`` is channel k), the sort + weights of every segment ((image,
    class) with ``per_image``, else a class over the batch) and the loss.

    Returns (seg, ws, total): seg [N, K] (per_image) or [1, K], the
    segments' losses Σ |fg - p|·w; ws [N, K, S] = dseg/dp (-w on foreground,
    w elsewhere; 0 where ignored); total (seg's shape) = Σ fg over valid
    pixels. Float64 for float64 p or segments of >= 2^24 pixels.
    """
    N, K, S = p.shape
    L = S if per_image else N * S
    acc = torch.float64 if (p.dtype == torch.float64 or L >= 2 ** 24) else torch.float32
    R1 = N if per_image else 1
    ws = torch.empty((N, K, S), dtype=acc, device=p.device)
    seg = torch.zeros((R1, K), dtype=acc, device=p.device)
    total = torch.zeros((R1, K), dtype=acc, device=p.device)
    if p.numel() == 0:
        return seg, ws, total
    lab = labels.view(torch.uint8) if labels.dtype == torch.bool else labels
    cls = cls.to(device="cpu", dtype=torch.int64).contiguous()
    pn, pk, ps = p.stride()
    ln, lsd = lab.stride()
    if per_image:  # segments [N, K] of pixels [1, S]
        shape, pst, lst, wst = (N, K, 1, S), (pn, pk, 0, ps), (ln, 0, 0, lsd), (K * S, S, 0, 1)
    else:  # segments [1, K] of pixels [N, S]
        shape, pst, lst, wst = (1, K, N, S), (0, pk, pn, ps), (0, 0, ln, lsd), (0, S, K * S, 1)
    view = backends.view
    backends._C.cpu.lovasz_softmax_rows(
        view(p.as_strided(shape, pst)), view(lab.as_strided(shape, lst)), view(cls),
        None if ignore_value is None else float(ignore_value), view(ws.as_strided(shape, wst)), view(seg),
        view(total), backends.cpu_threads(p.numel()) if R1 * K > 1 else 1)
    return seg, ws, total


@lovasz_softmax_rows_op.register_fake
def _(p, labels, cls, ignore_value, per_image):
    N, K, S = p.shape
    L = S if per_image else N * S
    acc = torch.float64 if (p.dtype == torch.float64 or L >= 2 ** 24) else torch.float32
    R1 = N if per_image else 1
    return (p.new_empty((R1, K), dtype=acc), p.new_empty((N, K, S), dtype=acc), p.new_empty((R1, K), dtype=acc))


class _SoftmaxRows(torch.autograd.Function):
    """seg = the segments' losses from :func:`lovasz_softmax_rows_op`; the
    backward is dseg/dp (ws, saved by the forward) times grad_output."""

    @staticmethod
    def forward(ctx, p, labels, cls, ignore_value, per_image: bool):
        seg, ws, total = lovasz_softmax_rows_op(p.detach(), labels, cls, ignore_value, per_image)
        ctx.save_for_backward(ws)
        ctx.mark_non_differentiable(total)
        return seg.to(p.dtype), total

    @staticmethod
    def backward(ctx, go, _):
        (ws,) = ctx.saved_tensors
        return (ws * go.unsqueeze(2)).to(go.dtype), None, None, None, None


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
    x, t, is_label, _, _, ign, _ = canonical(input, target, act=2, ignore_index=ignore_index, backend=backend,
                                             triton_float64=True)
    if not is_label:
        raise TypeError(f"lovasz_softmax_loss takes class-index targets (uint8/int32/int64), got {target.dtype}")
    N, C, S = x.shape
    if C < 2:
        raise ValueError(f"lovasz_softmax_loss needs C >= 2 classes, got C={C}")
    sel = _class_selection(classes, C)
    acc = acc_dtype(x)
    p = torch.softmax(x.to(acc), dim=1) if from_logits else x.to(acc)
    if isinstance(sel, Tensor):  # only the listed classes' errors are needed
        uniq, inv = torch.unique(sel.to(x.device), return_inverse=True)
        p = p.index_select(1, uniq)
        cls = uniq.view(1, -1, 1)
    else:
        cls = torch.arange(C, device=x.device).view(1, C, 1)
    K = cls.shape[1]
    if backend == "cpu":  # one fused kernel: errors, sort, weights, loss and dLoss/dp
        seg, total = _SoftmaxRows.apply(p, t, cls.view(-1), ign, per_image)
        return _softmax_reduce(seg, total > 0, sel, inv if isinstance(sel, Tensor) else None, per_image,
                               reduction)
    fg = t.long().unsqueeze(1) == cls  # [N, K, S]
    valid = None if ign is None else (t != ign).unsqueeze(1).expand(N, K, S)
    e = torch.where(fg, 1 - p.detach(), p.detach())  # |fg - p|, the sort key
    if per_image:  # segments (image, class): [N, K, 1, S] views
        v4 = None if valid is None else valid.unsqueeze(2)
        w = lovasz_sort_weights(e.unsqueeze(2), fg.unsqueeze(2), v4, backend=backend).view(N, K, S)
    else:  # segments: classes over the batch, [1, K, N, S] views (no transposed copy)
        four = lambda a: a.transpose(0, 1).unsqueeze(0)  # noqa: E731
        w = lovasz_sort_weights(four(e), four(fg), None if valid is None else four(valid), backend=backend)
        w = w[0].transpose(0, 1)
    seg = _SoftmaxErrorDot.apply(p, e, fg, w, per_image)  # [N, K] or [1, K]
    present = None
    if isinstance(sel, str) and sel == "present":
        fgv = fg if valid is None else fg & valid
        present = (fgv.any(2) if per_image else fgv.any(2).any(0, keepdim=True))
    return _softmax_reduce(seg, present, sel, inv if isinstance(sel, Tensor) else None, per_image, reduction)


def _softmax_reduce(seg: Tensor, present: Optional[Tensor], sel, inv: Optional[Tensor], per_image: bool,
                    reduction: str) -> Tensor:
    """The segments' losses seg [N, K] (or [1, K]) -> the loss: the mean over
    the selected classes (``present``: those with valid foreground; none
    present -> 0), then ``reduction`` over images."""
    if isinstance(sel, Tensor):
        per = seg[:, inv.to(seg.device)].mean(1)
    elif sel == "all":
        per = seg.mean(1)
    else:
        per = (seg * present).sum(1) / present.sum(1).clamp_min(1)
    if not per_image:
        return per.reshape(())
    return reduce_loss(per, reduction)


def __getattr__(name):  # the *_triton_op names, registered on first use
    return backends.triton_op_attr(__name__, name)


# ---------------------------------------------------------------- the public functions and Modules
# Sort-based: one batched sort + weights step for every segment, no Python
# loop over images or classes; cpu / cuda / triton kernels.


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
    return lovasz_hinge(input, target, per_image=per_image, ignore_index=ignore_index,
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
    return lovasz_softmax(input, target, classes=classes, per_image=per_image,
                                  ignore_index=ignore_index, from_logits=from_logits, reduction=reduction,
                                  backend=backend)


class LovaszHingeLoss(_PixelLoss):
    """Module form of :func:`segfast.lovasz_hinge_loss` (binary / multilabel, logits).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.lovasz_hinge_loss`.

    Args:
        per_image: one segment per image (True) or the whole batch.
        ignore_index: label (or dense target value) whose elements are dropped.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.LovaszHingeLoss(per_image=True)
        >>> loss_fn(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)).item()
        1.0
    """
    _fn = staticmethod(lovasz_hinge_loss)

    def __init__(self, per_image=True, ignore_index=None, reduction="mean", backend=None):
        super().__init__(per_image=per_image, ignore_index=ignore_index, reduction=reduction, backend=backend)


class LovaszSoftmaxLoss(_PixelLoss):
    """Module form of :func:`segfast.lovasz_softmax_loss` (multiclass).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.lovasz_softmax_loss`.

    Args:
        classes: "present", "all" or a list of class indices.
        per_image: one segment per image (True) or the whole batch.
        ignore_index: label whose pixels are dropped.
        from_logits: False takes probabilities.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.LovaszSoftmaxLoss(classes="present")
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 3, 4, 4), labels).item(), 4)
        0.6667
    """
    _fn = staticmethod(lovasz_softmax_loss)

    def __init__(self, classes="present", per_image=False, ignore_index=None, from_logits=True,
                 reduction="mean", backend=None):
        super().__init__(classes=classes, per_image=per_image, ignore_index=ignore_index,
                         from_logits=from_logits, reduction=reduction, backend=backend)


_doc.fill_modules(globals(), __name__)
