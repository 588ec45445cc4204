"""Boxes family: the IoU variants (IoU, GIoU, DIoU, CIoU; pairwise and aligned)
and the box losses as torch.library ops. Semantics: segfast/reference/boxes.py.

* ``box_pairwise``: [B, N, 4] x [B, M, 4] -> [B, N, M] in the boxes' dtype. Its
  backward (``box_pairwise_grad``) runs one kernel per box set that needs a
  gradient: each output row (a box of one set) is reduced over the other set by
  one writer, so there are no atomics and the result is deterministic.
* ``box_aligned``: [K, 4] x [K, 4] -> [K] (offset + sign * value), and in the
  same pass the gradient of each pair (one pass; the backward only multiplies
  it by grad_output).
* ``box_loss``: the reduced box losses (mean / sum): one pass writes the loss
  and its gradient; the backward scales the gradient by grad_output.

Format conversion (xyxy, xywh, cxcywh) happens inside the kernels; the
gradients are with respect to the boxes in their own format.
"""

# torch.library.custom_op infers the op schemas from annotations: they stay real
# types (no `from __future__ import annotations`, whose strings torch 2.4 cannot
# read; typing.List, as list[float] is unsupported before torch 2.7).
import math
from typing import Optional

import torch
from torch import Tensor

from .. import _doc, backends
from ..reference import boxes as ref
from . import _common
from ._common import require, triton_op

FMTS, KINDS, EPS = ref.FMTS, ref.KINDS, ref.EPS
__all__ = ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou", "box_iou_aligned",
           "generalized_box_iou_aligned", "distance_box_iou_aligned", "complete_box_iou_aligned", "iou_loss",
           "giou_loss", "diou_loss", "ciou_loss", "IoULoss", "GIoULoss", "DIoULoss", "CIoULoss"]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# ---------------------------------------------------------------- validation


def check_pair(boxes1: Tensor, boxes2: Tensor, fmt: str, *, aligned: bool, what: str):
    """-> (boxes1, boxes2) in one (promoted) float dtype, after every check a user can fail."""
    if not isinstance(boxes1, Tensor) or not isinstance(boxes2, Tensor):
        raise TypeError(f"{what}: boxes1 and boxes2 must be tensors")
    if fmt not in FMTS:
        raise ValueError(f"{what}: fmt must be one of {', '.join(FMTS)}, got {fmt!r}")
    for name, b in (("boxes1", boxes1), ("boxes2", boxes2)):
        if b.dtype not in _FLOATS and b.dtype not in _INTS:
            raise TypeError(f"{what}: {name} must be float32/float16/bfloat16/float64 or an integer dtype, "
                            f"got {b.dtype}")
        if b.dim() < (1 if aligned else 2) or b.shape[-1] != 4:
            raise ValueError(f"{what}: {name} must be {'[..., 4]' if aligned else '[..., N, 4]'}, "
                             f"got shape {tuple(b.shape)}")
    if boxes1.device != boxes2.device:
        raise ValueError(f"{what}: boxes1 is on {boxes1.device} but boxes2 is on {boxes2.device}")
    if aligned and boxes1.shape != boxes2.shape:
        raise ValueError(f"{what}: aligned box sets must have one shape, got {tuple(boxes1.shape)} and "
                         f"{tuple(boxes2.shape)}")
    if not aligned and boxes1.shape[:-2] != boxes2.shape[:-2]:
        raise ValueError(f"{what}: batch dims differ: {tuple(boxes1.shape[:-2])} and {tuple(boxes2.shape[:-2])}")
    # integer coordinates are computed in float32, as torchvision's int boxes give float32 IoUs
    dt = torch.promote_types(*(b.dtype if b.dtype in _FLOATS else torch.float32 for b in (boxes1, boxes2)))
    return boxes1.to(dt), boxes2.to(dt)


def check_finite_loss(loss: Tensor, what: str) -> Tensor:
    """A reduced loss is NaN / inf only when a coordinate is (every kernel gives
    NaN for such a pair): raise then. After the kernel: one scalar read on the
    CPU, a device-side check on CUDA (ops/_common.py require); skipped under
    torch.compile."""
    require(torch.isfinite(loss), f"{what}: boxes have non-finite (NaN or inf) coordinates, or coordinates so "
            "large that the loss overflows")
    return loss


def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _threads(n: int) -> int:
    return backends.cpu_threads(n // 16)  # a pair costs ~16 elementwise ops


def _launch(backend, device, name, *args, work: int):
    if backend == "cpu":
        return getattr(backends._C.cpu, name)(*args, _threads(work))
    with backends.cuda_launch(device) as (kernels, stream):
        return getattr(kernels, name)(*args, stream)


# ---------------------------------------------------------------- kernel runs


def run_pairwise(b1: Tensor, b2: Tensor, kind: int, fmt: int, eps: float, backend: str) -> Tensor:
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    out = torch.empty((B, N, M), dtype=b1.dtype, device=b1.device)
    if out.numel() == 0:
        return out
    if backend == "triton":
        from ..triton_kernels import boxes as tk
        tk.launch_pairwise(b1, b2, out, kind, fmt, eps)
        return out
    view = backends.view
    _launch(backend, b1.device, "box_pairwise", view(b1), view(b2), kind, fmt, float(eps), view(out),
            work=out.numel())
    return out


def run_pairwise_grad(b1, b2, go, kind, fmt, eps, need1, need2, backend):
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    go = go.to(_acc(b1) if backend != "triton" else torch.float32).contiguous()
    alloc = torch.zeros if N * M == 0 else torch.empty
    d1 = alloc((B, N, 4), dtype=b1.dtype, device=b1.device) if need1 else b1.new_empty(0)
    d2 = alloc((B, M, 4), dtype=b2.dtype, device=b2.device) if need2 else b2.new_empty(0)
    if B * N * M == 0 or not (need1 or need2):
        return d1, d2
    if backend == "triton":
        from ..triton_kernels import boxes as tk
        tk.launch_pairwise_grad(b1, b2, go, d1 if need1 else None, d2 if need2 else None, kind, fmt, eps)
        return d1, d2
    view = backends.view
    _launch(backend, b1.device, "box_pairwise_grad", view(b1), view(b2), kind, fmt, float(eps), view(go),
            view(d1) if need1 else None, view(d2) if need2 else None, work=B * N * M)
    return d1, d2


def run_aligned(b1, b2, kind, fmt, loss, eps, offset, sign, gscale, out_dtype, need1, need2, backend):
    """-> (out [K] in out_dtype, d1 [K, 4] | empty, d2 [K, 4] | empty)."""
    K = b1.shape[0]
    out = torch.empty((K,), dtype=out_dtype, device=b1.device)
    d1 = torch.empty_like(b1, memory_format=torch.contiguous_format) if need1 else b1.new_empty(0)
    d2 = torch.empty_like(b2, memory_format=torch.contiguous_format) if need2 else b2.new_empty(0)
    if K == 0:
        return out, d1, d2
    if backend == "triton":
        from ..triton_kernels import boxes as tk
        tk.launch_aligned(b1, b2, out, d1 if need1 else None, d2 if need2 else None, kind, fmt, loss, eps,
                          offset, sign, gscale)
        return out, d1, d2
    view = backends.view
    _launch(backend, b1.device, "box_aligned", view(b1), view(b2), kind, fmt, bool(loss), float(eps), float(offset),
            float(sign), float(gscale), view(out), view(d1) if need1 else None, view(d2) if need2 else None,
            work=K * 8)
    return out, d1, d2


def _loss_onepass(b1, b2, kind, fmt, eps, mean, need1, need2, backend):
    K = b1.shape[0]
    scale = (1.0 / K if K else 0.0) if mean else 1.0
    out, d1, d2 = run_aligned(b1, b2, kind, fmt, True, eps, 1.0, -1.0, -scale, _acc(b1), need1, need2, backend)
    return out.sum() * scale, d1, d2


# ---------------------------------------------------------------- C++ / CUDA ops


@torch.library.custom_op("segfast::box_pairwise", mutates_args=())
def box_pairwise_op(b1: Tensor, b2: Tensor, kind: int, fmt: int, eps: float, backend: str) -> Tensor:
    """IoU variant ``kind`` of every pair: [B, N, 4] x [B, M, 4] -> [B, N, M]."""
    return run_pairwise(b1, b2, kind, fmt, eps, backend)


@torch.library.custom_op("segfast::box_pairwise_grad", mutates_args=())
def box_pairwise_grad_op(b1: Tensor, b2: Tensor, go: Tensor, kind: int, fmt: int, eps: float, need1: bool,
                         need2: bool, backend: str) -> tuple[Tensor, Tensor]:
    """(d sum(go * pairwise) / d b1 [B, N, 4], ... / d b2 [B, M, 4]); empty when not needed."""
    return run_pairwise_grad(b1, b2, go, kind, fmt, eps, need1, need2, backend)


@torch.library.custom_op("segfast::box_aligned", mutates_args=())
def box_aligned_op(b1: Tensor, b2: Tensor, kind: int, fmt: int, loss: bool, eps: float, offset: float,
                   sign: float, need1: bool, need2: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """One pass: (offset + sign * value [K], d out / d b1 [K, 4], d out / d b2 [K, 4])."""
    out_dtype = _acc(b1) if loss else b1.dtype
    return run_aligned(b1, b2, kind, fmt, loss, eps, offset, sign, sign, out_dtype, need1, need2, backend)


@torch.library.custom_op("segfast::box_loss", mutates_args=())
def box_loss_op(b1: Tensor, b2: Tensor, kind: int, fmt: int, eps: float, mean: bool, need1: bool, need2: bool,
                backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """One pass: (mean or sum of 1 - value, its gradients for b1 and b2)."""
    return _loss_onepass(b1, b2, kind, fmt, eps, mean, need1, need2, backend)


def _fake_grads(b1, b2, need1, need2):
    d1 = torch.empty_like(b1, memory_format=torch.contiguous_format) if need1 else b1.new_empty(0)
    d2 = torch.empty_like(b2, memory_format=torch.contiguous_format) if need2 else b2.new_empty(0)
    return d1, d2


@box_pairwise_op.register_fake
def _(b1, b2, kind, fmt, eps, *rest):
    return b1.new_empty((b1.shape[0], b1.shape[1], b2.shape[1]))


@box_pairwise_grad_op.register_fake
def _(b1, b2, go, kind, fmt, eps, need1, need2, *rest):
    return _fake_grads(b1, b2, need1, need2)


@box_aligned_op.register_fake
def _(b1, b2, kind, fmt, loss, eps, offset, sign, need1, need2, *rest):
    return (b1.new_empty((b1.shape[0],), dtype=_acc(b1) if loss else b1.dtype),) + _fake_grads(b1, b2, need1, need2)


@box_loss_op.register_fake
def _(b1, b2, kind, fmt, eps, mean, need1, need2, *rest):
    return (b1.new_empty((), dtype=_acc(b1)),) + _fake_grads(b1, b2, need1, need2)


# ---------------------------------------------------------------- autograd


def _setup_pairwise(ctx, inputs, output):
    b1, b2, kind, fmt, eps, *backend = inputs
    ctx.save_for_backward(b1, b2)
    ctx.args = (kind, fmt, eps)
    ctx.backend = backend


def _backward_pairwise(ctx, go):
    b1, b2 = ctx.saved_tensors
    n1, n2 = ctx.needs_input_grad[:2]
    if ctx.backend:
        d1, d2 = box_pairwise_grad_op(b1, b2, go, *ctx.args, n1, n2, *ctx.backend)
    else:
        d1, d2 = box_pairwise_grad_triton_op(b1, b2, go, *ctx.args, n1, n2)
    return (d1 if n1 else None, d2 if n2 else None) + (None,) * (3 + len(ctx.backend))


def _setup_onepass(ctx, inputs, output):
    _, d1, d2 = output
    ctx.mark_non_differentiable(d1, d2)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(d1, d2)
    ctx.n_rest = len(inputs) - 2


def _scale(d: Tensor, go: Tensor) -> Tensor:
    if go.dim() == 0:
        # eager on CPU, grad_output 1 (loss.backward()) leaves the gradient as it is
        if _common.is_one_on_host(go):
            return d
        return d * go.to(d.dtype)
    return d * go.to(d.dtype)[:, None]


def _backward_onepass(ctx, go, _g1, _g2):
    d1, d2 = ctx.saved_tensors
    if go is None:
        return (None,) * (ctx.n_rest + 2)
    n1, n2 = ctx.needs_input_grad[:2]
    return (_scale(d1, go) if n1 else None, _scale(d2, go) if n2 else None) + (None,) * ctx.n_rest


box_pairwise_op.register_autograd(_backward_pairwise, setup_context=_setup_pairwise)
box_aligned_op.register_autograd(_backward_onepass, setup_context=_setup_onepass)
box_loss_op.register_autograd(_backward_onepass, setup_context=_setup_onepass)


# ---------------------------------------------------------------- Triton ops

@backends.triton_ops
def _register_triton_ops():
    """The Triton ops, registered when the triton backend is first asked for
    (backends.triton_ops); backends.choose() refuses that backend where Triton is missing."""
    global box_pairwise_triton_op, box_pairwise_grad_triton_op, box_aligned_triton_op, box_loss_triton_op

    @triton_op("segfast::box_pairwise_triton", mutates_args=())
    def box_pairwise_triton_op(b1: Tensor, b2: Tensor, kind: int, fmt: int, eps: float) -> Tensor:
        return run_pairwise(b1, b2, kind, fmt, eps, "triton")

    @triton_op("segfast::box_pairwise_grad_triton", mutates_args=())
    def box_pairwise_grad_triton_op(b1: Tensor, b2: Tensor, go: Tensor, kind: int, fmt: int, eps: float,
                                    need1: bool, need2: bool) -> tuple[Tensor, Tensor]:
        return run_pairwise_grad(b1, b2, go, kind, fmt, eps, need1, need2, "triton")

    @triton_op("segfast::box_aligned_triton", mutates_args=())
    def box_aligned_triton_op(b1: Tensor, b2: Tensor, kind: int, fmt: int, loss: bool, eps: float, offset: float,
                              sign: float, need1: bool, need2: bool) -> tuple[Tensor, Tensor, Tensor]:
        out_dtype = _acc(b1) if loss else b1.dtype
        return run_aligned(b1, b2, kind, fmt, loss, eps, offset, sign, sign, out_dtype, need1, need2, "triton")

    @triton_op("segfast::box_loss_triton", mutates_args=())
    def box_loss_triton_op(b1: Tensor, b2: Tensor, kind: int, fmt: int, eps: float, mean: bool, need1: bool,
                           need2: bool) -> tuple[Tensor, Tensor, Tensor]:
        return _loss_onepass(b1, b2, kind, fmt, eps, mean, need1, need2, "triton")

    box_pairwise_triton_op.register_autograd(_backward_pairwise, setup_context=_setup_pairwise)
    box_aligned_triton_op.register_autograd(_backward_onepass, setup_context=_setup_onepass)
    box_loss_triton_op.register_autograd(_backward_onepass, setup_context=_setup_onepass)


# ---------------------------------------------------------------- dispatch


def _kind(kind) -> int:
    return KINDS[kind] if isinstance(kind, str) else int(kind)


def pairwise(boxes1: Tensor, boxes2: Tensor, kind="iou", *, fmt: str = "xyxy", eps: float = EPS,
             backend: Optional[str] = None, what: str = "box_iou") -> Tensor:
    b1, b2 = check_pair(boxes1, boxes2, fmt, aligned=False, what=what)
    backend = backends.choose(backend, b1.device)
    k = _kind(kind)
    if backend == "torch":
        return ref.pairwise(b1, b2, k, fmt, eps)
    batch, N, M = b1.shape[:-2], b1.shape[-2], b2.shape[-2]
    B = math.prod(batch)
    x1, x2 = b1.reshape(B, N, 4), b2.reshape(B, M, 4)
    if backend == "triton":
        out = box_pairwise_triton_op(x1, x2, k, FMTS[fmt], float(eps))
    else:
        out = box_pairwise_op(x1, x2, k, FMTS[fmt], float(eps), backend)
    return out.view(*batch, N, M)


def _need(b1: Tensor, b2: Tensor):
    g = torch.is_grad_enabled()
    return g and b1.requires_grad, g and b2.requires_grad


def aligned(boxes1: Tensor, boxes2: Tensor, kind="iou", *, fmt: str = "xyxy", eps: float = EPS,
            backend: Optional[str] = None, what: str = "box_iou_aligned") -> Tensor:
    b1, b2 = check_pair(boxes1, boxes2, fmt, aligned=True, what=what)
    backend = backends.choose(backend, b1.device)
    k = _kind(kind)
    if backend == "torch":
        return ref.aligned(b1, b2, k, fmt, eps)
    batch = b1.shape[:-1]
    x1, x2 = b1.reshape(-1, 4), b2.reshape(-1, 4)
    n1, n2 = _need(x1, x2)
    if backend == "triton":
        out = box_aligned_triton_op(x1, x2, k, FMTS[fmt], False, float(eps), 0.0, 1.0, n1, n2)[0]
    else:
        out = box_aligned_op(x1, x2, k, FMTS[fmt], False, float(eps), 0.0, 1.0, n1, n2, backend)[0]
    return out.view(batch)


def box_loss(boxes1: Tensor, boxes2: Tensor, kind="iou", *, reduction: str = "none", fmt: str = "xyxy",
             eps: float = EPS, backend: Optional[str] = None, what: str = "box loss") -> Tensor:
    """1 - (IoU variant) of aligned pairs, torchvision's loss semantics; float32 (float64) result."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"Invalid reduction for {what}: {reduction!r}; it must be 'none', 'mean' or 'sum'")
    b1, b2 = check_pair(boxes1, boxes2, fmt, aligned=True, what=what)
    backend = backends.choose(backend, b1.device)
    k = _kind(kind)
    if backend == "torch":
        out = ref.box_loss(b1, b2, k, reduction, fmt, eps)
        return out if reduction == "none" else check_finite_loss(out, what)
    batch = b1.shape[:-1]
    x1, x2 = b1.reshape(-1, 4), b2.reshape(-1, 4)
    n1, n2 = _need(x1, x2)
    f = FMTS[fmt]
    if reduction == "none":
        if backend == "triton":
            out = box_aligned_triton_op(x1, x2, k, f, True, float(eps), 1.0, -1.0, n1, n2)[0]
        else:
            out = box_aligned_op(x1, x2, k, f, True, float(eps), 1.0, -1.0, n1, n2, backend)[0]
        return out.view(batch)
    mean = reduction == "mean"
    if backend == "triton":
        return check_finite_loss(box_loss_triton_op(x1, x2, k, f, float(eps), mean, n1, n2)[0], what)
    return check_finite_loss(box_loss_op(x1, x2, k, f, float(eps), mean, n1, n2, backend)[0], what)


# ---------------------------------------------------------------- public API (re-exported by segfast)
_DOC = """{title} of every pair of boxes1 [..., N, 4] and boxes2 [..., M, 4] -> [..., N, M].

    torchvision's ``{tv}`` semantics{extra}, with any number of equal leading
    batch dims. Computed in float32 (float64). Degenerate boxes give finite
    values where torchvision divides 0 by 0: IoU is 0 where the union is <= 0,
    GIoU's enclosing term is 0 where the enclosing area is <= 0, CIoU's
    atan(w/h) is ±pi/2 for h = 0 and 0 for a 0 x 0 box (segfast/reference/boxes.py).
    Non-finite coordinates are not checked: they give NaN in their own box's
    row or column only. Empty sets give empty results. TorchScript is not
    supported (``torch.jit.script`` fails): use ``torch.compile`` or
    ``torch.export``.

    Args:
        boxes1: [..., N, 4] boxes, float32/float16/bfloat16/float64, or integer
            (read as float32, giving a float32 result, as torchvision's).
        boxes2: [..., M, 4] boxes with the same leading dims (two float dtypes
            are promoted to one).
        fmt: "xyxy", "xywh" or "cxcywh", for both sets.
{eps_arg}        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        [..., N, M] in the boxes' (promoted) dtype, differentiable for both box sets.

    Raises:
        ValueError: a set that is not [..., N, 4], batch dims that differ, sets
            on two devices, an unknown ``fmt``.
        TypeError: a non-tensor or an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> a = torch.tensor([[0., 0., 2., 2.]])
        >>> b = torch.tensor([[0., 0., 2., 4.], [3., 0., 4., 2.]])
        >>> segfast.{name}(a, b)
        {value}
    """
_EPS_ARG = "        eps: added to the enclosing diagonal's square (and, for CIoU, alpha's denominator).\n"

_ALIGNED_DOC = """{title} of aligned pairs: boxes1[..., i] with boxes2[..., i], [..., 4] -> [...].

    The element-wise form of :func:`segfast.{pairwise}` (same semantics and
    degenerate-box rules), without the N x M matrix.

    Args:
        boxes1: [..., 4] boxes, float32/float16/bfloat16/float64 or integer.
        boxes2: [..., 4] boxes of the same shape.
        fmt: "xyxy", "xywh" or "cxcywh", for both sets.
{eps_arg}        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        [...] in the boxes' (promoted) dtype, differentiable for both box sets.

    Raises:
        ValueError: sets of different shapes or not [..., 4], sets on two
            devices, an unknown ``fmt``.
        TypeError: a non-tensor or an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> a = torch.tensor([[0., 0., 2., 2.], [0., 0., 1., 1.]])
        >>> b = torch.tensor([[0., 0., 2., 4.], [0., 0., 1., 1.]])
        >>> segfast.{name}(a, b)
        {value}
    """


def box_iou(boxes1: Tensor, boxes2: Tensor, *, fmt: str = "xyxy", backend: Optional[str] = None) -> Tensor:
    return pairwise(boxes1, boxes2, "iou", fmt=fmt, backend=backend, what="box_iou")


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor, *, fmt: str = "xyxy",
                        backend: Optional[str] = None) -> Tensor:
    return pairwise(boxes1, boxes2, "giou", fmt=fmt, backend=backend, what="generalized_box_iou")


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, *, fmt: str = "xyxy", eps: float = EPS,
                     backend: Optional[str] = None) -> Tensor:
    return pairwise(boxes1, boxes2, "diou", fmt=fmt, eps=eps, backend=backend, what="distance_box_iou")


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, *, fmt: str = "xyxy", eps: float = EPS,
                     backend: Optional[str] = None) -> Tensor:
    return pairwise(boxes1, boxes2, "ciou", fmt=fmt, eps=eps, backend=backend, what="complete_box_iou")


def box_iou_aligned(boxes1: Tensor, boxes2: Tensor, *, fmt: str = "xyxy", backend: Optional[str] = None) -> Tensor:
    return aligned(boxes1, boxes2, "iou", fmt=fmt, backend=backend, what="box_iou_aligned")


def generalized_box_iou_aligned(boxes1: Tensor, boxes2: Tensor, *, fmt: str = "xyxy",
                                backend: Optional[str] = None) -> Tensor:
    return aligned(boxes1, boxes2, "giou", fmt=fmt, backend=backend, what="generalized_box_iou_aligned")


def distance_box_iou_aligned(boxes1: Tensor, boxes2: Tensor, *, fmt: str = "xyxy", eps: float = EPS,
                             backend: Optional[str] = None) -> Tensor:
    return aligned(boxes1, boxes2, "diou", fmt=fmt, eps=eps, backend=backend, what="distance_box_iou_aligned")


def complete_box_iou_aligned(boxes1: Tensor, boxes2: Tensor, *, fmt: str = "xyxy", eps: float = EPS,
                             backend: Optional[str] = None) -> Tensor:
    return aligned(boxes1, boxes2, "ciou", fmt=fmt, eps=eps, backend=backend, what="complete_box_iou_aligned")


for _f, _t, _x, _v in (
        (box_iou, "IoU", "", "tensor([[0.5000, 0.0000]])"),
        (generalized_box_iou, "Generalized IoU", ": IoU - (area_c - union) / area_c",
         "tensor([[ 0.5000, -0.2500]])"),
        (distance_box_iou, "Distance IoU", ": IoU - rho^2 / (c^2 + eps)", "tensor([[ 0.4500, -0.3125]])"),
        (complete_box_iou, "Complete IoU",
         ": DIoU - alpha v, v = 4/pi^2 (atan(w_gt/h_gt) - atan(w/h))^2, alpha = v / (1 - IoU + v + eps) "
         "a constant in the backward", "tensor([[ 0.4468, -0.3142]])")):
    _f.__doc__ = _DOC.format(title=_t, tv=_f.__name__, extra=_x, name=_f.__name__, value=_v,
                             eps_arg=_EPS_ARG if "eps" in _f.__code__.co_varnames else "")
for _f, _p, _v in ((box_iou_aligned, box_iou, "tensor([0.5000, 1.0000])"),
                   (generalized_box_iou_aligned, generalized_box_iou, "tensor([0.5000, 1.0000])"),
                   (distance_box_iou_aligned, distance_box_iou, "tensor([0.4500, 1.0000])"),
                   (complete_box_iou_aligned, complete_box_iou, "tensor([0.4468, 1.0000])")):
    _f.__doc__ = _ALIGNED_DOC.format(title=_p.__doc__.split(" of ")[0], pairwise=_p.__name__, name=_f.__name__,
                                     value=_v, eps_arg=_EPS_ARG if "eps" in _f.__code__.co_varnames else "")

_LOSS_DOC = """{name} of aligned pairs boxes1, boxes2 [..., 4] (predictions, targets).

    torchvision's ``{tv}`` semantics (IoU = inter / (union + eps){extra}), also
    for fmt="xywh" | "cxcywh". One pass computes the loss and its gradient (both
    box sets). A pair with a non-finite coordinate gives NaN; with "mean" /
    "sum" that raises ValueError (checked on the reduced loss after the kernel,
    not under torch.compile). CIoU's atan(w/h) is finite for h = 0 (see
    :func:`segfast.box_iou`).

    Args:
        boxes1: [..., 4] predicted boxes, float32/float16/bfloat16/float64 or integer.
        boxes2: [..., 4] target boxes of the same shape.
        reduction: "none" ([...]), "mean" (0 for an empty input) or "sum".
        fmt: "xyxy", "xywh" or "cxcywh", for both sets.
        eps: added to the union (and to the other denominators), default {eps}.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        The loss, [...] for "none", else 0-d; float32 (float64 for float64 boxes).

    Raises:
        ValueError: sets of different shapes or not [..., 4], an unknown
            ``fmt`` or ``reduction``, a non-finite reduced loss.
        TypeError: a non-tensor or an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> pred = torch.tensor([[0., 0., 2., 2.]], requires_grad=True)
        >>> loss = segfast.{fn}(pred, torch.tensor([[0., 0., 2., 4.]]), reduction="mean")
        >>> round(loss.item(), 4)
        {value}
        >>> loss.backward()
        >>> pred.grad.shape
        torch.Size([1, 4])
    """


def iou_loss(boxes1: Tensor, boxes2: Tensor, *, reduction: str = "none", fmt: str = "xyxy", eps: float = EPS,
             backend: Optional[str] = None) -> Tensor:
    return box_loss(boxes1, boxes2, "iou", reduction=reduction, fmt=fmt, eps=eps, backend=backend, what="iou_loss")


def giou_loss(boxes1: Tensor, boxes2: Tensor, *, reduction: str = "none", fmt: str = "xyxy", eps: float = EPS,
              backend: Optional[str] = None) -> Tensor:
    return box_loss(boxes1, boxes2, "giou", reduction=reduction, fmt=fmt, eps=eps, backend=backend,
                    what="giou_loss")


def diou_loss(boxes1: Tensor, boxes2: Tensor, *, reduction: str = "none", fmt: str = "xyxy", eps: float = EPS,
              backend: Optional[str] = None) -> Tensor:
    return box_loss(boxes1, boxes2, "diou", reduction=reduction, fmt=fmt, eps=eps, backend=backend,
                    what="diou_loss")


def ciou_loss(boxes1: Tensor, boxes2: Tensor, *, reduction: str = "none", fmt: str = "xyxy", eps: float = EPS,
              backend: Optional[str] = None) -> Tensor:
    return box_loss(boxes1, boxes2, "ciou", reduction=reduction, fmt=fmt, eps=eps, backend=backend,
                    what="ciou_loss")


iou_loss.__doc__ = _LOSS_DOC.format(name="1 - IoU", tv="1 - inter/(union + eps)", eps=EPS, extra="",
                                    fn="iou_loss", value="0.5")
giou_loss.__doc__ = _LOSS_DOC.format(name="1 - GIoU", tv="generalized_box_iou_loss", eps=EPS,
                                     extra=", enclosing term (area_c - union) / (area_c + eps)",
                                     fn="giou_loss", value="0.5")
diou_loss.__doc__ = _LOSS_DOC.format(name="1 - DIoU", tv="distance_box_iou_loss", eps=EPS,
                                     extra=", rho^2 / (c^2 + eps)", fn="diou_loss", value="0.55")
ciou_loss.__doc__ = _LOSS_DOC.format(name="1 - CIoU", tv="complete_box_iou_loss", eps=EPS,
                                     extra=", rho^2 / (c^2 + eps), alpha = v / (1 - IoU + v + eps)",
                                     fn="ciou_loss", value="0.5532")


def __getattr__(name):  # the *_triton_op names, registered on first use
    return backends.triton_op_attr(__name__, name)


# ---------------------------------------------------------------- Modules


class _BoxLoss(torch.nn.Module):
    """Box losses on aligned pairs: forward(boxes1, boxes2)."""
    _fn = None

    def __init__(self, reduction: str = "mean", fmt: str = "xyxy", eps: float = 1e-7, backend=None):
        super().__init__()
        self.kwargs = dict(reduction=reduction, fmt=fmt, eps=eps, backend=backend)

    def forward(self, boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
        return type(self)._fn(boxes1, boxes2, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class IoULoss(_BoxLoss):
    """Module form of :func:`segfast.iou_loss`: the 1 - IoU loss of aligned box pairs.

    ``forward(boxes1, boxes2)`` calls :func:`segfast.iou_loss` on predictions and
    targets [..., 4].

    Args:
        {box_args}

    Returns:
        {box_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.IoULoss()
        >>> pred = torch.tensor([[0., 0., 2., 2.]])
        >>> round(loss_fn(pred, torch.tensor([[0., 0., 2., 4.]])).item(), 4)
        0.5
    """
    _fn = staticmethod(iou_loss)


class GIoULoss(_BoxLoss):
    """Module form of :func:`segfast.giou_loss`: the 1 - GIoU loss of aligned box pairs.

    ``forward(boxes1, boxes2)`` calls :func:`segfast.giou_loss` on predictions and
    targets [..., 4].

    Args:
        {box_args}

    Returns:
        {box_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.GIoULoss()
        >>> pred = torch.tensor([[0., 0., 2., 2.]])
        >>> round(loss_fn(pred, torch.tensor([[0., 0., 2., 4.]])).item(), 4)
        0.5
    """
    _fn = staticmethod(giou_loss)


class DIoULoss(_BoxLoss):
    """Module form of :func:`segfast.diou_loss`: the 1 - DIoU loss of aligned box pairs.

    ``forward(boxes1, boxes2)`` calls :func:`segfast.diou_loss` on predictions and
    targets [..., 4].

    Args:
        {box_args}

    Returns:
        {box_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.DIoULoss()
        >>> pred = torch.tensor([[0., 0., 2., 2.]])
        >>> round(loss_fn(pred, torch.tensor([[0., 0., 2., 4.]])).item(), 4)
        0.55
    """
    _fn = staticmethod(diou_loss)


class CIoULoss(_BoxLoss):
    """Module form of :func:`segfast.ciou_loss`: the 1 - CIoU loss of aligned box pairs.

    ``forward(boxes1, boxes2)`` calls :func:`segfast.ciou_loss` on predictions and
    targets [..., 4].

    Args:
        {box_args}

    Returns:
        {box_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.CIoULoss()
        >>> pred = torch.tensor([[0., 0., 2., 2.]])
        >>> round(loss_fn(pred, torch.tensor([[0., 0., 2., 4.]])).item(), 4)
        0.5532
    """
    _fn = staticmethod(ciou_loss)


_doc.fill_modules(globals(), __name__)
