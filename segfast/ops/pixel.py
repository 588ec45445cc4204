"""Pixel-wise losses (cross entropy, BCE, balanced BCE, focal, the softmax +
positive-sharing "fused" loss) as torch.library ops.

One kernel, three uses (see reference/pixel.py for the terms l0, l1):

* ``pixel_loss``: a mean or sum loss in ONE pass. The forward reads logits
  and targets once, returns loss = scale0·Σl0 + scale1·Σl1 and writes
  dLoss/dx in the same pass (the normalizer is known up front, computed from
  the labels alone); the backward only scales that gradient by grad_output
  (and on CPU skips even that when grad_output is 1). Nothing else is saved.
* ``pixel_loss_map``: reduction="none": the per-pixel (softmax kinds) or
  per-element (sigmoid kinds, and softmax focal on dense targets) map
  scale0·l0 + scale1·l1; its backward runs the kernel again with the
  upstream gradient (``pixel_loss_grad``).

Softmax focal also takes dense (one-hot or soft) targets [N, C, S]: one
term per element, MONAI's softmax_focal_loss; a pixel with any channel equal
to the ignore value counts nowhere, and the counts (NORM_COUNT) are pixels.
"""

# torch.library.custom_op infers the op schemas from annotations: they stay real
# types (no `from __future__ import annotations`, whose strings torch 2.4 cannot
# read; typing.List, as list[float] is unsupported before torch 2.7).
import weakref
from typing import Optional

import torch
from torch import Tensor

from .. import backends
from ..reference import pixel as ref
from . import _common
from ._common import acc_dtype, differentiable_once, num_chunks, target_args, triton_chunks, triton_op

CE, FOCAL_SOFTMAX, FUSED, BCE, FOCAL_SIGMOID = ref.CE, ref.FOCAL_SOFTMAX, ref.FUSED, ref.BCE, ref.FOCAL_SIGMOID
SOFTMAX_KINDS = ref.SOFTMAX_KINDS


def per_pixel(kind: int, is_label: bool) -> bool:
    """Whether ``kind`` on these targets has one term per pixel (softmax
    kinds on class indices), not one per element."""
    return kind in SOFTMAX_KINDS and is_label


def _dense_softmax(kind: int, is_label: bool) -> bool:
    return kind in SOFTMAX_KINDS and not is_label


# How a reduced loss is normalized: NORM_SUM none (a sum); NORM_COUNT the
# number of valid pixels (softmax kinds) or elements (sigmoid kinds);
# NORM_WEIGHT the summed class weights w_y of the valid pixels (torch's
# weighted cross entropy). Computed from the labels alone, inside the op, so
# that torch.compile sees no data-dependent Python.
NORM_SUM, NORM_COUNT, NORM_WEIGHT = 0, 1, 2


def normalizer(x: Tensor, t: Tensor, is_label: bool, kind: int, ignore_value: Optional[float],
               weight: Optional[Tensor], norm: int) -> Tensor:
    """The mean's denominator as a 0-d tensor (1 for NORM_SUM)."""
    acc = acc_dtype(x)
    if norm == NORM_SUM:
        return torch.ones((), dtype=acc, device=x.device)
    valid = None if ignore_value is None else t != ignore_value
    if valid is not None and _dense_softmax(kind, is_label):
        valid = valid.all(1)  # a pixel with any ignored channel counts nowhere
    if norm == NORM_WEIGHT and weight is not None:
        y = t.long() if valid is None else torch.where(valid, t.long(), 0)
        wy = weight.to(acc)[y.clamp(0, x.shape[1] - 1)]
        return (wy if valid is None else torch.where(valid, wy, 0)).sum()
    if valid is None:
        return torch.tensor(_count(x, t, is_label, kind), dtype=acc, device=x.device)
    n = valid.sum().to(acc)
    return n * x.shape[1] if (is_label and kind not in SOFTMAX_KINDS) else n


def _map_shape(x: Tensor, kind: int, is_label: bool):
    N, C, S = x.shape
    return (N, S) if per_pixel(kind, is_label) else (N, C, S)


def _opt(t: Optional[Tensor], dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype).contiguous()


def _run(x, t, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value, gamma, alpha,
         smoothing, scale0, scale1, backend, *, want_loss=False, want_map=False, go=None, go_scalar=False,
         want_dx=False):
    """Launch the pixel kernel of ``backend``; -> (loss partials [N, P, 2] | None, map | None, dx | None)."""
    N, C, S = x.shape
    acc = acc_dtype(x) if backend != "triton" else torch.float32
    if backend == "triton":
        from ..triton_kernels import pixel as tk

        P = triton_chunks(tk, N, C, S, x.device, kind=kind)
    else:
        P = num_chunks(N, S, x.device)
    loss = torch.empty((N, P, 2), dtype=acc, device=x.device) if want_loss else None
    lmap = backends.empty_output(_map_shape(x, kind, is_label), acc, x.device) if want_map else None
    dx = backends.empty_output(x.shape, x.dtype, x.device, like=x) if want_dx else None
    go = None if go is None else go.to(acc).contiguous()
    w, pw, b = _opt(weight, acc), _opt(pos_weight, acc), _opt(beta, acc)
    if x.numel() == 0:
        for out in (loss, lmap, dx):
            if out is not None:
                out.zero_()
        return loss, lmap, dx
    t, ts = target_args(t, is_label)
    has_ignore = ignore_value is not None
    ign = float(ignore_value) if has_ignore else 0.0
    if backend == "triton":
        tk.launch_pixel(x, t, is_label, N, C, S, P, kind, label_offset, has_ignore, ign, w, pw, b,
                        gamma, alpha, smoothing, scale0, scale1, loss, lmap, go, dx)
        return loss, lmap, dx
    ptr = lambda a: 0 if a is None else a.data_ptr()  # noqa: E731
    args = (x.data_ptr(), backends.dtype_code(x), *x.stride(),
            t.data_ptr(), backends.dtype_code(t), int(is_label), *ts,
            N, C, S, P, kind, label_offset, int(has_ignore), ign,
            ptr(w), ptr(pw), ptr(b), float(gamma), float(alpha), float(smoothing), float(scale0), float(scale1),
            ptr(loss), ptr(lmap), ptr(go), ptr(dx), *(dx.stride() if dx is not None else (0, 0, 0)),
            int(go_scalar))
    if backend == "cpu":
        backends._C.pixel_loss_cpu(*args, backends.cpu_threads(x.numel()))
    else:
        with backends.cuda_launch(x.device) as (kernels, stream):
            kernels.pixel_loss_cuda(*args, stream)
    return loss, lmap, dx


def _total(loss: Tensor, scale0: float, scale1: float) -> Tensor:
    s = loss.sum((0, 1))
    return scale0 * s[0] + scale1 * s[1]


# ---------------------------------------------------------------- C++ / CUDA ops


def _count(x: Tensor, t: Tensor, is_label: bool, kind: int) -> float:
    """Pixels (softmax kinds) or elements (sigmoid kinds) of the batch."""
    if _dense_softmax(kind, is_label):
        return float(t.numel() // max(x.shape[1], 1))
    return float(t.numel() * (x.shape[1] if (is_label and kind not in SOFTMAX_KINDS) else 1))


def _normalizer_on_host(device: torch.device) -> bool:
    """Whether a data-dependent normalizer is read on the host (free off CUDA)."""
    return device.type != "cuda"


def _host_normalizer(x, target, is_label, kind, ignore_value, weight, norm) -> Optional[float]:
    """The normalizer where the host knows it (see _onepass), else None."""
    if norm == NORM_SUM:
        return 1.0
    if ignore_value is None and (norm == NORM_COUNT or weight is None):
        return _count(x, target, is_label, kind)
    if _normalizer_on_host(x.device):
        return float(normalizer(x, target, is_label, kind, ignore_value, weight, norm))
    return None


_UNSET = object()


def _inverse_normalizer(x, target, is_label, kind, ignore_value, weight, norm, d=_UNSET) -> float:
    """The factor the kernel scales by: 1/normalizer where the host knows it
    (0 for a mean over nothing), else 1/count (s carries the rest)."""
    if d is _UNSET:
        d = _host_normalizer(x, target, is_label, kind, ignore_value, weight, norm)
    if d is None:
        return 1.0 / max(_count(x, target, is_label, kind), 1.0)
    return 1.0 / d if d > 0 else 0.0


def _onepass(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value, gamma, alpha,
             smoothing, scale0, scale1, norm, backend, want_dx=True):
    """-> (loss, dx, s, inv) with dLoss/dx = s·dx (dx None without ``want_dx``)
    and dx the gradient of inv·(scale0·Σl0 + scale1·Σl1).

    The normalizer is folded into the kernel's scales where the host knows
    it: from the shapes (a sum, or a mean without ignore_index and class
    weights), or on the CPU, where reading it is free; then s = 1. On a GPU
    a data-dependent normalizer stays on the device: the kernel scales by
    1/count (count: every pixel or element, so that dx keeps the magnitude of
    a plain mean, also in float16) and s = count/normalizer, applied by the
    backward's scaling by grad_output: no extra pass, no synchronisation."""
    acc = acc_dtype(x)
    count = _count(x, target, is_label, kind)
    d = _host_normalizer(x, target, is_label, kind, ignore_value, weight, norm)
    inv = _inverse_normalizer(x, target, is_label, kind, ignore_value, weight, norm, d)
    if d is not None:
        s = torch.ones((), dtype=acc, device=x.device)
    else:
        den = normalizer(x, target, is_label, kind, ignore_value, weight, norm)
        s = torch.where(den > 0, count / torch.where(den > 0, den, 1), 0).to(acc)
    loss, _, dx = _run(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value,
                       gamma, alpha, smoothing, scale0 * inv, scale1 * inv, backend, want_loss=True,
                       want_dx=want_dx)
    total = _total(loss, scale0 * inv, scale1 * inv).to(acc)
    return (total if d is not None else total * s), dx, s, inv


@torch.library.custom_op("segfast::pixel_loss", mutates_args=())
def pixel_loss_op(x: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],
                  beta: Optional[Tensor], is_label: bool, kind: int, label_offset: int,
                  ignore_value: Optional[float], gamma: float, alpha: float, smoothing: float,
                  scale0: float, scale1: float, norm: int, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """One pass: ((scale0·Σl0 + scale1·Σl1) / normalizer as a 0-d tensor, dx, s): dLoss/dx = s·dx."""
    return _onepass(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value, gamma,
                    alpha, smoothing, scale0, scale1, norm, backend)[:3]


@torch.library.custom_op("segfast::pixel_loss_recompute", mutates_args=())
def pixel_loss_recompute_op(x: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],
                            beta: Optional[Tensor], is_label: bool, kind: int, label_offset: int,
                            ignore_value: Optional[float], gamma: float, alpha: float, smoothing: float,
                            scale0: float, scale1: float, norm: int, backend: str) -> tuple[Tensor, Tensor]:
    """The loss of pixel_loss without its gradient: (loss, s), dLoss/dx = s·d(inv·Σ...)/dx,
    which the backward recomputes with grad_output·s read on the device."""
    loss, _, s, _ = _onepass(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value,
                             gamma, alpha, smoothing, scale0, scale1, norm, backend, want_dx=False)
    return loss, s


@torch.library.custom_op("segfast::pixel_loss_map", mutates_args=())
def pixel_loss_map_op(x: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],
                      beta: Optional[Tensor], is_label: bool, kind: int, label_offset: int,
                      ignore_value: Optional[float], gamma: float, alpha: float, smoothing: float,
                      scale0: float, scale1: float, backend: str) -> Tensor:
    """scale0·l0 + scale1·l1 per pixel [N, S] (softmax kinds) or element [N, C, S]."""
    return _run(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value,
                gamma, alpha, smoothing, scale0, scale1, backend, want_map=True)[1]


@torch.library.custom_op("segfast::pixel_loss_grad", mutates_args=())
def pixel_loss_grad_op(x: Tensor, target: Tensor, go: Tensor, weight: Optional[Tensor],
                       pos_weight: Optional[Tensor], beta: Optional[Tensor], is_label: bool, kind: int,
                       label_offset: int, ignore_value: Optional[float], gamma: float, alpha: float,
                       smoothing: float, scale0: float, scale1: float, backend: str) -> Tensor:
    """dx = Σ go·d(scale0·l0 + scale1·l1)/dx, go shaped like the loss map."""
    return _run(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value,
                gamma, alpha, smoothing, scale0, scale1, backend, go=go, want_dx=True)[2]


@pixel_loss_op.register_fake
def _(x, target, weight, pos_weight, beta, is_label, kind, *rest):
    return x.new_empty((), dtype=acc_dtype(x)), torch.empty_like(x), x.new_empty((), dtype=acc_dtype(x))


@pixel_loss_map_op.register_fake
def _(x, target, weight, pos_weight, beta, is_label, kind, *rest):
    return x.new_empty(_map_shape(x, kind, is_label), dtype=acc_dtype(x))


@pixel_loss_grad_op.register_fake
def _(x, *rest):
    return torch.empty_like(x)


class _WeakView:
    """A weak reference to a tensor view: its base tensor weakly, its geometry
    exactly. The one-pass op must not keep the logits alive (the gradient is
    all it keeps), yet a second backward through a retained graph needs them."""

    def __init__(self, t: Tensor):
        self.base = weakref.ref(t if t._base is None else t._base)
        self.geom = (t.size(), t.stride(), t.storage_offset())

    def get(self) -> Optional[Tensor]:
        base = self.base()
        return None if base is None else base.detach().as_strided(*self.geom)


def _scale_saved_grad(ctx, g_loss, g_dx, g_s):
    if g_loss is None:  # gradients are not materialized: no gradient flows into the loss
        return (None,) * (ctx.n_rest + 1)
    if ctx.owned:
        s = ctx.s
        if ctx.dx is not None:  # first backward: the only reference, x.grad becomes this very buffer
            dx, ctx.dx = ctx.dx, None
        else:  # a later backward through a retained graph: run the kernel again
            x, t = ctx.x.get(), ctx.t.get()
            if x is None or t is None:
                raise RuntimeError("segfast: a second backward through a one-pass pixel loss recomputes the "
                                   "gradient from the logits and targets, which no longer exist")
            _, dx, s, _ = _onepass(x, t, *ctx.args)
    else:
        dx, s = ctx.saved_tensors
    # Eager on CPU, reading grad_output is free: when it is 1 (loss.backward())
    # the gradient is returned as it is (s is 1 on the CPU). Traced tensors are
    # subclasses; a CUDA grad_output is never read.
    if _common.is_one_on_host(g_loss):
        return differentiable_once((dx,) + (None,) * ctx.n_rest, "pixel-loss")
    g = (g_loss * s).to(dx.dtype)
    return differentiable_once((dx.mul_(g) if ctx.owned else dx * g,) + (None,) * ctx.n_rest, "pixel-loss")


def _setup_onepass(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)  # no zeros for the unused gradient of the dx output
    ctx.n_rest = len(inputs) - 1
    # dLoss/dx is the only thing kept. Eagerly it is held as a plain attribute
    # and handed over by the first backward: a saved tensor would still be
    # referenced by the graph while AccumulateGrad runs, which then copies it
    # (2x the logits' memory). Under tracing (torch.compile) it is saved the
    # usual way.
    ctx.owned = not torch.compiler.is_compiling() and type(output[1]) is torch.Tensor
    if ctx.owned:
        ctx.dx, ctx.s = output[1], output[2]
        ctx.x, ctx.t = _WeakView(inputs[0]), _WeakView(inputs[1])
        ctx.args = tuple(inputs[2:])
    else:
        ctx.save_for_backward(output[1], output[2])


def _setup_map(ctx, inputs, output):
    x, target, *rest = inputs
    ctx.save_for_backward(x, target, *rest[:3])
    ctx.args = tuple(rest[3:])


def _backward_map_ext(ctx, g_map):
    x, target, w, pw, b = ctx.saved_tensors
    dx = pixel_loss_grad_op(x, target, g_map, w, pw, b, *ctx.args)
    return differentiable_once((dx,) + (None,) * 14, "pixel-loss")


pixel_loss_op.register_autograd(_scale_saved_grad, setup_context=_setup_onepass)
pixel_loss_map_op.register_autograd(_backward_map_ext, setup_context=_setup_map)


@pixel_loss_recompute_op.register_fake
def _(x, *rest):
    return x.new_empty((), dtype=acc_dtype(x)), x.new_empty((), dtype=acc_dtype(x))


@torch.library.custom_op("segfast::pixel_loss_recompute_grad", mutates_args=())
def pixel_loss_recompute_grad_op(x: Tensor, target: Tensor, go: Tensor, weight: Optional[Tensor],
                                 pos_weight: Optional[Tensor], beta: Optional[Tensor], is_label: bool, kind: int,
                                 label_offset: int, ignore_value: Optional[float], gamma: float, alpha: float,
                                 smoothing: float, scale0: float, scale1: float, norm: int, backend: str) -> Tensor:
    """dx = go·d(inv·(scale0·Σl0 + scale1·Σl1))/dx for a 0-d ``go`` (grad_output
    times s) the kernel reads on the device: one read of the logits, one write of dx."""
    inv = _inverse_normalizer(x, target, is_label, kind, ignore_value, weight, norm)
    return _run(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value, gamma, alpha,
                smoothing, scale0 * inv, scale1 * inv, backend, go=go, go_scalar=True, want_dx=True)[2]


@pixel_loss_recompute_grad_op.register_fake
def _(x, *rest):
    return torch.empty_like(x)


def _setup_recompute(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    x, target, w, pw, b, *args = inputs
    ctx.save_for_backward(x, target, w, pw, b, output[1])
    ctx.args = tuple(args)


def _backward_recompute(ctx, g_loss, g_s):
    if g_loss is None:
        return (None,) * 16
    x, target, w, pw, b, s = ctx.saved_tensors
    dx = pixel_loss_recompute_grad_op(x, target, (g_loss * s).to(s.dtype), w, pw, b, *ctx.args)
    return differentiable_once((dx,) + (None,) * 15, "pixel-loss")


pixel_loss_recompute_op.register_autograd(_backward_recompute, setup_context=_setup_recompute)


# ---------------------------------------------------------------- Triton ops

@backends.triton_ops
def _register_triton_ops():
    """The Triton ops, registered when the triton backend is first asked for
    (backends.triton_ops); backends.choose() refuses that backend where Triton is missing."""
    global pixel_loss_map_triton_op, pixel_loss_grad_triton_op
    global pixel_softmax_loss_triton_op, pixel_softmax_grad_triton_op
    global pixel_sigmoid_loss_triton_op, pixel_sigmoid_grad_triton_op

    @triton_op("segfast::pixel_loss_map_triton", mutates_args=())
    def pixel_loss_map_triton_op(x: Tensor, target: Tensor, weight: Optional[Tensor],
                                 pos_weight: Optional[Tensor], beta: Optional[Tensor], is_label: bool,
                                 kind: int, label_offset: int, ignore_value: Optional[float], gamma: float,
                                 alpha: float, smoothing: float, scale0: float, scale1: float) -> Tensor:
        return _run(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value,
                    gamma, alpha, smoothing, scale0, scale1, "triton", want_map=True)[1].to(acc_dtype(x))

    @triton_op("segfast::pixel_loss_grad_triton", mutates_args=())
    def pixel_loss_grad_triton_op(x: Tensor, target: Tensor, go: Tensor, weight: Optional[Tensor],
                                  pos_weight: Optional[Tensor], beta: Optional[Tensor], is_label: bool,
                                  kind: int, label_offset: int, ignore_value: Optional[float], gamma: float,
                                  alpha: float, smoothing: float, scale0: float, scale1: float) -> Tensor:
        return _run(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value,
                    gamma, alpha, smoothing, scale0, scale1, "triton", go=go, want_dx=True)[2]

    def _backward_map_triton(ctx, g_map):
        x, target, w, pw, b = ctx.saved_tensors
        return differentiable_once((pixel_loss_grad_triton_op(x, target, g_map, w, pw, b, *ctx.args),)
                                   + (None,) * 13, "pixel-loss")

    pixel_loss_map_triton_op.register_autograd(_backward_map_triton, setup_context=_setup_map)

    @triton_op("segfast::pixel_softmax_loss_triton", mutates_args=())
    def pixel_softmax_loss_triton_op(x: Tensor, target: Tensor, weight: Optional[Tensor], counter: Tensor,
                                     kind: int, label_offset: int, ignore_value: Optional[float], gamma: float,
                                     smoothing: float, scale0: float, scale1: float,
                                     norm: int) -> tuple[Tensor, Tensor]:
        """A reduced softmax-kind loss in one launch: (loss, normalizer), both
        float32 0-d; the kernel checks the labels (NaN for one out of range),
        sums its partials in-kernel and divides by the normalizer it counted.
        ``counter``: the kernel's ticket counter (zero before and after)."""
        return _reduced_triton(x, target, True, weight, None, None, counter, kind, label_offset, ignore_value,
                               gamma, 0.25, smoothing, scale0, scale1, norm)

    @triton_op("segfast::pixel_softmax_grad_triton", mutates_args=())
    def pixel_softmax_grad_triton_op(x: Tensor, target: Tensor, weight: Optional[Tensor], go: Tensor, den: Tensor,
                                     kind: int, label_offset: int, ignore_value: Optional[float], gamma: float,
                                     smoothing: float, scale0: float, scale1: float) -> Tensor:
        """dx of pixel_softmax_loss_triton for the 0-d grad_output ``go``, read
        on the device with its normalizer ``den``: one read of the logits and
        labels, one write of dx."""
        return _reduced_grad_triton(x, target, True, weight, None, None, go, den, kind, label_offset, ignore_value,
                                    gamma, 0.25, smoothing, scale0, scale1)

    def _setup_softmax_triton(ctx, inputs, output):
        x, target, weight, _counter, *args = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, target, weight, output[1])
        ctx.args = tuple(args[:-1])  # kind .. scale1 (not norm)

    def _backward_softmax_triton(ctx, g_loss, g_den):
        if g_loss is None:
            return (None,) * 12
        x, target, weight, den = ctx.saved_tensors
        dx = pixel_softmax_grad_triton_op(x, target, weight, g_loss, den, *ctx.args)
        return differentiable_once((dx,) + (None,) * 11, "pixel-loss")

    pixel_softmax_loss_triton_op.register_autograd(_backward_softmax_triton, setup_context=_setup_softmax_triton)

    @pixel_softmax_grad_triton_op.register_fake
    def _(x, *rest):
        return torch.empty_like(x)

    @triton_op("segfast::pixel_sigmoid_loss_triton", mutates_args=())
    def pixel_sigmoid_loss_triton_op(x: Tensor, target: Tensor, weight: Optional[Tensor],
                                     pos_weight: Optional[Tensor], beta: Optional[Tensor], counter: Tensor,
                                     is_label: bool, kind: int, label_offset: int, ignore_value: Optional[float],
                                     gamma: float, alpha: float, scale0: float, norm: int) -> tuple[Tensor, Tensor]:
        """A reduced sigmoid-kind loss (BCE, balanced BCE, sigmoid focal) in one
        launch, as pixel_softmax_loss_triton: (loss, normalizer: the valid
        elements for NORM_COUNT), float32 0-d, NaN for a label out of range."""
        return _reduced_triton(x, target, is_label, weight, pos_weight, beta, counter, kind, label_offset,
                               ignore_value, gamma, alpha, 0.0, scale0, 0.0, norm)

    @triton_op("segfast::pixel_sigmoid_grad_triton", mutates_args=())
    def pixel_sigmoid_grad_triton_op(x: Tensor, target: Tensor, weight: Optional[Tensor],
                                     pos_weight: Optional[Tensor], beta: Optional[Tensor], go: Tensor, den: Tensor,
                                     is_label: bool, kind: int, label_offset: int, ignore_value: Optional[float],
                                     gamma: float, alpha: float, scale0: float) -> Tensor:
        """dx of pixel_sigmoid_loss_triton for the 0-d grad_output ``go``, read on
        the device with ``den``: one read of logits and targets, one write of dx."""
        return _reduced_grad_triton(x, target, is_label, weight, pos_weight, beta, go, den, kind, label_offset,
                                    ignore_value, gamma, alpha, 0.0, scale0, 0.0)

    def _setup_sigmoid_triton(ctx, inputs, output):
        x, target, weight, pos_weight, beta, _counter, *args = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, target, weight, pos_weight, beta, output[1])
        ctx.args = tuple(args[:-1])  # is_label .. scale0 (not norm)

    def _backward_sigmoid_triton(ctx, g_loss, g_den):
        if g_loss is None:
            return (None,) * 14
        x, target, weight, pos_weight, beta, den = ctx.saved_tensors
        dx = pixel_sigmoid_grad_triton_op(x, target, weight, pos_weight, beta, g_loss, den, *ctx.args)
        return differentiable_once((dx,) + (None,) * 13, "pixel-loss")

    pixel_sigmoid_loss_triton_op.register_autograd(_backward_sigmoid_triton, setup_context=_setup_sigmoid_triton)

    @pixel_sigmoid_grad_triton_op.register_fake
    def _(x, *rest):
        return torch.empty_like(x)


def _reduced_triton(x, target, is_label, weight, pos_weight, beta, counter, kind, label_offset, ignore_value,
                    gamma, alpha, smoothing, scale0, scale1, norm):
    """(loss, normalizer) of a reduced pixel loss from one Triton launch
    (the kernel's last program reduces; see triton_kernels.pixel.launch_pixel)."""
    from ..triton_kernels import pixel as tk

    N, C, S = x.shape
    P = triton_chunks(tk, N, C, S, x.device)
    ws = torch.empty(N * P * 4, dtype=torch.float32, device=x.device)
    loss = torch.empty((), dtype=torch.float32, device=x.device)
    den = torch.empty((), dtype=torch.float32, device=x.device)
    t, _ = target_args(target, is_label)
    tk.launch_pixel(x, t, is_label, N, C, S, P, kind, label_offset, ignore_value is not None,
                    float(ignore_value) if ignore_value is not None else 0.0, _opt(weight, torch.float32),
                    _opt(pos_weight, torch.float32), _opt(beta, torch.float32), gamma, alpha, smoothing, scale0,
                    scale1, ws, None, None, None, out=loss, den=den, norm=norm, counter=counter)
    return loss, den


def _reduced_grad_triton(x, target, is_label, weight, pos_weight, beta, go, den, kind, label_offset, ignore_value,
                         gamma, alpha, smoothing, scale0, scale1):
    """dx of a reduced pixel loss for the 0-d grad_output ``go`` and normalizer
    ``den``, both read by the kernel on the device."""
    from ..triton_kernels import pixel as tk

    N, C, S = x.shape
    dx = backends.empty_output(x.shape, x.dtype, x.device, like=x)
    t, _ = target_args(target, is_label)
    tk.launch_pixel(x, t, is_label, N, C, S, 1, kind, label_offset, ignore_value is not None,
                    float(ignore_value) if ignore_value is not None else 0.0, _opt(weight, torch.float32),
                    _opt(pos_weight, torch.float32), _opt(beta, torch.float32), gamma, alpha, smoothing, scale0,
                    scale1, None, None, go.to(torch.float32), dx, den=den)
    return dx


# ---------------------------------------------------------------- dispatch


def _finish_counter(device: torch.device) -> Tensor:
    """The ticket counter of the Triton in-kernel reduction: the device's
    persistent one (zero between launches, no memset per call); a fresh zero
    under torch.compile, whose graphs must not capture a lazily made global."""
    if torch.compiler.is_compiling():
        return torch.zeros(1, dtype=torch.int32, device=device)
    from ..triton_kernels import pixel as tk
    return tk.finish_counter(device)


def pixel_loss(x: Tensor, t: Tensor, is_label: bool, kind: int, *, label_offset: int = 0,
               ignore_value: Optional[float] = None, weight: Optional[Tensor] = None,
               pos_weight: Optional[Tensor] = None, beta: Optional[Tensor] = None, gamma: float = 2.0,
               alpha: float = 0.25, smoothing: float = 0.0, scale0: float = 1.0, scale1: float = 0.0,
               norm: int = NORM_SUM, reduce: bool = True, backend: str = "torch") -> Tensor:
    """(scale0·Σl0 + scale1·Σl1) / normalizer (``reduce``), or the per-pixel/element
    map scale0·l0 + scale1·l1."""
    if backend != "torch" and not is_label and t.requires_grad and torch.is_grad_enabled():
        # a soft target that trains: the kernel gives the loss and dLoss/dx,
        # the eager terms (x detached) dLoss/dtarget
        kw = dict(label_offset=label_offset, ignore_value=ignore_value, weight=weight, pos_weight=pos_weight,
                  beta=beta, gamma=gamma, alpha=alpha, smoothing=smoothing, scale0=scale0, scale1=scale1,
                  norm=norm, reduce=reduce)
        out = pixel_loss(x, t.detach(), is_label, kind, backend=backend, **kw)
        d = pixel_loss(x.detach(), t, is_label, kind, backend="torch", **kw)
        d = d - d.detach()
        return out + torch.where(torch.isfinite(d), d, torch.zeros_like(d))
    if backend == "torch":
        l0, l1, _ = ref.pixel_terms(x, t, is_label, kind, weight=weight, pos_weight=pos_weight, beta=beta,
                                    gamma=gamma, alpha=alpha, smoothing=smoothing, label_offset=label_offset,
                                    ignore_value=ignore_value)
        m = scale0 * l0 + (scale1 * l1 if scale1 else 0)
        if not reduce:
            return m
        d = normalizer(x, t, is_label, kind, ignore_value, weight, norm)
        return torch.where(d > 0, m.sum() / torch.where(d > 0, d, 1), 0)
    args = (x, t, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value, float(gamma),
            float(alpha), float(smoothing), float(scale0), float(scale1))
    if backend == "triton":
        if not reduce:
            return pixel_loss_map_triton_op(*args)
        if kind in SOFTMAX_KINDS and not is_label:  # dense targets (softmax focal): the map kernel, reduced here
            m = pixel_loss_map_triton_op(*args)
            d = normalizer(x, t, is_label, kind, ignore_value, weight, norm)
            return torch.where(d > 0, m.sum() / torch.where(d > 0, d, 1), 0)
        if kind in SOFTMAX_KINDS:
            return pixel_softmax_loss_triton_op(x, t, weight, _finish_counter(x.device), kind, label_offset,
                                                ignore_value, float(gamma), float(smoothing), float(scale0),
                                                float(scale1), norm)[0]
        return pixel_sigmoid_loss_triton_op(x, t, weight, pos_weight, beta, _finish_counter(x.device), is_label,
                                            kind, label_offset, ignore_value, float(gamma), float(alpha),
                                            float(scale0), norm)[0]
    if not reduce:
        return pixel_loss_map_op(*args, backend)
    if backend == "cuda":  # the backward recomputes dx with grad_output read on the device
        return pixel_loss_recompute_op(*args, norm, backend)[0]
    return pixel_loss_op(*args, norm, backend)[0]


def __getattr__(name):  # the *_triton_op names, registered on first use
    return backends.triton_op_attr(__name__, name)
