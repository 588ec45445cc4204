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
import collections
import weakref
from typing import Optional

import torch
from torch import Tensor

from .. import _doc, backends
from ..reference import pixel as ref
from . import _common
from . import region as _region
from ._common import acc_dtype, differentiable_once, pixel_chunks, target_args, triton_chunks, triton_op

CE, FOCAL_SOFTMAX, FUSED, BCE, FOCAL_SIGMOID = ref.CE, ref.FOCAL_SOFTMAX, ref.FUSED, ref.BCE, ref.FOCAL_SIGMOID
SOFTMAX_KINDS = ref.SOFTMAX_KINDS

__all__ = ["cross_entropy", "binary_cross_entropy_with_logits", "balanced_bce_loss", "focal_loss",
           "fused_loss", "CrossEntropyLoss", "BCEWithLogitsLoss", "BalancedBCELoss", "FocalLoss", "FusedLoss"]


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


def _kernel_args(x, t, is_label, kind, label_offset, ignore_value, w, pw, b, gamma, alpha, smoothing, scale0,
                 scale1) -> tuple:
    """The leading arguments of the C++ pixel entries (pixel_loss, pixel_reduced): the problem."""
    view = backends.view
    return (view(x), view(target_args(t, is_label)[0]), kind, label_offset,
            None if ignore_value is None else float(ignore_value), view(w), view(pw), view(b), float(gamma),
            float(alpha), float(smoothing), float(scale0), float(scale1))


def _run(x, t, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value, gamma, alpha,
         smoothing, scale0, scale1, backend, *, want_loss=False, want_map=False, go=None, want_dx=False):
    """Launch the pixel kernel of ``backend``; -> (loss partials [N, P, 2] | None, map | None, dx | None).
    ``go``: grad_output of the map, or a 0-d one read on the device."""
    N, C, S = x.shape
    acc = acc_dtype(x) if backend != "triton" else torch.float32
    if backend == "triton":
        from ..triton_kernels import pixel as tk

        P = triton_chunks(tk, N, C, S, x.device, kind=kind)
    else:
        P = pixel_chunks(N, S, x.device)
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
    if backend == "triton":
        t, _ = target_args(t, is_label)
        has_ignore = ignore_value is not None
        tk.launch_pixel(x, t, is_label, N, C, S, P, kind, label_offset, has_ignore,
                        float(ignore_value) if has_ignore else 0.0, w, pw, b, gamma, alpha, smoothing, scale0,
                        scale1, loss, lmap, go, dx)
        return loss, lmap, dx
    view = backends.view
    args = (*_kernel_args(x, t, is_label, kind, label_offset, ignore_value, w, pw, b, gamma, alpha, smoothing,
                          scale0, scale1), view(loss), view(lmap), view(go), view(dx))
    if backend == "cpu":
        backends._C.cpu.pixel_loss(*args, backends.cpu_threads(x.numel()))
    else:
        with backends.cuda_launch(x.device) as (kernels, stream):
            kernels.pixel_loss(*args, stream)
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


def _host_normalizer(x, target, is_label, kind, ignore_value, weight, norm) -> float:
    """The normalizer, read on the host: from the shapes (a sum, or a mean
    without ignore_index and class weights), else from the data (free on the
    CPU, the only device of the one-pass op)."""
    if norm == NORM_SUM:
        return 1.0
    if ignore_value is None and (norm == NORM_COUNT or weight is None):
        return _count(x, target, is_label, kind)
    return float(normalizer(x, target, is_label, kind, ignore_value, weight, norm))


def _onepass(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value, gamma, alpha,
             smoothing, scale0, scale1, norm, backend):
    """-> (loss, dLoss/dx) of inv·(scale0·Σl0 + scale1·Σl1), inv = 1/normalizer (0 for a mean over
    nothing), folded into the kernel's scales."""
    d = _host_normalizer(x, target, is_label, kind, ignore_value, weight, norm)
    inv = 1.0 / d if d > 0 else 0.0
    loss, _, dx = _run(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value,
                       gamma, alpha, smoothing, scale0 * inv, scale1 * inv, backend, want_loss=True,
                       want_dx=True)
    return _total(loss, scale0 * inv, scale1 * inv).to(acc_dtype(x)), dx


@torch.library.custom_op("segfast::pixel_loss", mutates_args=())
def pixel_loss_op(x: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],
                  beta: Optional[Tensor], is_label: bool, kind: int, label_offset: int,
                  ignore_value: Optional[float], gamma: float, alpha: float, smoothing: float,
                  scale0: float, scale1: float, norm: int, backend: str) -> tuple[Tensor, Tensor]:
    """One pass: ((scale0·Σl0 + scale1·Σl1) / normalizer as a 0-d tensor, its dLoss/dx)."""
    return _onepass(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value, gamma,
                    alpha, smoothing, scale0, scale1, norm, backend)


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
    return x.new_empty((), dtype=acc_dtype(x)), torch.empty_like(x)


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


def _scale_saved_grad(ctx, g_loss, g_dx):
    if g_loss is None:  # gradients are not materialized: no gradient flows into the loss
        return (None,) * (ctx.n_rest + 1)
    if ctx.owned:
        if ctx.dx is not None:  # first backward: the only reference, x.grad becomes this very buffer
            dx, ctx.dx = ctx.dx, None
        else:  # a later backward through a retained graph: run the kernel again
            x, t = ctx.x.get(), ctx.t.get()
            if x is None or t is None:
                raise RuntimeError("segfast: a second backward through a one-pass pixel loss recomputes the "
                                   "gradient from the logits and targets, which no longer exist")
            _, dx = _onepass(x, t, *ctx.args)
    else:
        (dx,) = ctx.saved_tensors
    # Eager on CPU, reading grad_output is free: when it is 1 (loss.backward())
    # the gradient is returned as it is. Traced tensors are subclasses.
    if _common.is_one_on_host(g_loss):
        return differentiable_once((dx,) + (None,) * ctx.n_rest, "pixel-loss")
    g = g_loss.to(dx.dtype)
    return differentiable_once((dx.mul_(g) if ctx.owned else dx * g,) + (None,) * ctx.n_rest, "pixel-loss")


def _setup_onepass(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zeros for the unused gradient of the dx output
    ctx.n_rest = len(inputs) - 1
    # dLoss/dx is the only thing kept. Eagerly it is held as a plain attribute
    # and handed over by the first backward: a saved tensor would still be
    # referenced by the graph while AccumulateGrad runs, which then copies it
    # (2x the logits' memory). Under tracing (torch.compile) it is saved the
    # usual way.
    ctx.owned = not torch.compiler.is_compiling() and type(output[1]) is torch.Tensor
    if ctx.owned:
        ctx.dx = output[1]
        ctx.x, ctx.t = _WeakView(inputs[0]), _WeakView(inputs[1])
        ctx.args = tuple(inputs[2:])
    else:
        ctx.save_for_backward(output[1])


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


# Ticket counters of the in-kernel reductions (cuda and triton backends), by
# (device, stream): two reduced losses running at once on two streams of a device must
# not share one. A small LRU cache: a counter dropped from it is freed in its stream's
# order (the caching allocator), and a new one starts at zero.
_COUNTERS: collections.OrderedDict = collections.OrderedDict()
_MAX_COUNTERS = 64


def _counter_stream(device: torch.device) -> int:
    """The stream a launch on ``device`` runs on (the current one; 0 on the CPU emulator)."""
    return backends.cuda_stream(device) if device.type == "cuda" else 0


def _ticket_counter(device: torch.device) -> Tensor:
    """The ticket counter of the reduced pixel losses (cuda, triton) for
    launches on ``device``'s current stream: int32 [1], zero between launches
    (each launch's last block resets it); a fresh zero under torch.compile,
    whose graphs must not capture a lazily made global."""
    if torch.compiler.is_compiling():
        return torch.zeros(1, dtype=torch.int32, device=device)
    key = (device, _counter_stream(device))
    counter = _COUNTERS.get(key)
    if counter is not None:
        _COUNTERS.move_to_end(key)
        return counter
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    if type(counter) is torch.Tensor:  # not a traced or fake tensor
        _COUNTERS[key] = counter
        while len(_COUNTERS) > _MAX_COUNTERS:
            _COUNTERS.popitem(last=False)
    return counter


def _run_reduced_cuda(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value, gamma,
                      alpha, smoothing, scale0, scale1, norm, *, counter=None, go=None, den=None):
    """One launch of the cuda backend's pixel_reduced: -> (loss, den) with ``counter``, else dx
    for the 0-d grad_output ``go`` and normaliser ``den``, read on the device."""
    N, C, S = x.shape
    acc = acc_dtype(x)
    w, pw, b = _opt(weight, acc), _opt(pos_weight, acc), _opt(beta, acc)
    if counter is not None:
        P = pixel_chunks(N, S, x.device)
        ws = torch.empty((N, P, 4), dtype=acc, device=x.device)
        loss, d = torch.empty((), dtype=acc, device=x.device), torch.empty((), dtype=acc, device=x.device)
        dx = None
    else:
        ws, loss, d = None, None, den
        dx = backends.empty_output(x.shape, x.dtype, x.device, like=x)
        go = go.to(acc).contiguous()
    view = backends.view
    with backends.cuda_launch(x.device) as (kernels, stream):
        kernels.pixel_reduced(*_kernel_args(x, target, is_label, kind, label_offset, ignore_value, w, pw, b, gamma,
                                            alpha, smoothing, scale0, scale1), norm,
                              view(ws), view(loss), view(d), view(counter), view(go), view(dx), stream)
    return (loss, d) if counter is not None else dx


@torch.library.custom_op("segfast::pixel_reduced_cuda", mutates_args=())
def pixel_reduced_cuda_op(x: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],
                          beta: Optional[Tensor], counter: Tensor, is_label: bool, kind: int, label_offset: int,
                          ignore_value: Optional[float], gamma: float, alpha: float, smoothing: float,
                          scale0: float, scale1: float, norm: int) -> tuple[Tensor, Tensor]:
    """A reduced pixel loss on the cuda backend in one launch: (loss, normalizer),
    0-d in the accumulation dtype. The kernel counts the normalizer, checks the
    labels (both NaN for a label out of range) and its last block reduces.
    ``counter``: the kernel's ticket counter (zero before and after)."""
    if x.numel() == 0:
        z = torch.zeros((), dtype=acc_dtype(x), device=x.device)
        return z, z.clone()
    return _run_reduced_cuda(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value, gamma,
                             alpha, smoothing, scale0, scale1, norm, counter=counter)


@pixel_reduced_cuda_op.register_fake
def _(x, *rest):
    return x.new_empty((), dtype=acc_dtype(x)), x.new_empty((), dtype=acc_dtype(x))


@torch.library.custom_op("segfast::pixel_reduced_grad_cuda", mutates_args=())
def pixel_reduced_grad_cuda_op(x: Tensor, target: Tensor, go: Tensor, den: Tensor, weight: Optional[Tensor],
                               pos_weight: Optional[Tensor], beta: Optional[Tensor], is_label: bool, kind: int,
                               label_offset: int, ignore_value: Optional[float], gamma: float, alpha: float,
                               smoothing: float, scale0: float, scale1: float) -> Tensor:
    """dx of pixel_reduced_cuda for the 0-d grad_output ``go`` and its normalizer
    ``den``, both read by the kernel on the device: one read of the logits and
    targets, one write of dx, no pass to scale it."""
    if x.numel() == 0:
        return torch.zeros_like(x)
    return _run_reduced_cuda(x, target, weight, pos_weight, beta, is_label, kind, label_offset, ignore_value, gamma,
                             alpha, smoothing, scale0, scale1, NORM_SUM, go=go, den=den)


@pixel_reduced_grad_cuda_op.register_fake
def _(x, *rest):
    return torch.empty_like(x)


def _setup_reduced_cuda(ctx, inputs, output):
    x, target, w, pw, b, _counter, *args = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, target, w, pw, b, output[1])
    ctx.args = tuple(args[:-1])  # is_label .. scale1 (not norm)


def _backward_reduced_cuda(ctx, g_loss, g_den):
    if g_loss is None:
        return (None,) * 16
    x, target, w, pw, b, den = ctx.saved_tensors
    dx = pixel_reduced_grad_cuda_op(x, target, g_loss, den, w, pw, b, *ctx.args)
    return differentiable_once((dx,) + (None,) * 15, "pixel-loss")


pixel_reduced_cuda_op.register_autograd(_backward_reduced_cuda, setup_context=_setup_reduced_cuda)


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
            return pixel_softmax_loss_triton_op(x, t, weight, _ticket_counter(x.device), kind, label_offset,
                                                ignore_value, float(gamma), float(smoothing), float(scale0),
                                                float(scale1), norm)[0]
        return pixel_sigmoid_loss_triton_op(x, t, weight, pos_weight, beta, _ticket_counter(x.device), is_label,
                                            kind, label_offset, ignore_value, float(gamma), float(alpha),
                                            float(scale0), norm)[0]
    if not reduce:
        return pixel_loss_map_op(*args, backend)
    if backend == "cuda":  # one launch; the backward recomputes dx with grad_output read on the device
        return pixel_reduced_cuda_op(x, t, weight, pos_weight, beta, _ticket_counter(x.device), is_label, kind,
                                     label_offset, ignore_value, float(gamma), float(alpha), float(smoothing),
                                     float(scale0), float(scale1), norm)[0]
    return pixel_loss_op(*args, norm, backend)[0]


def __getattr__(name):  # the *_triton_op names, registered on first use
    return backends.triton_op_attr(__name__, name)


# ---------------------------------------------------------------- the public functions and Modules
#
# One pass when reduced ("mean"/"sum"): the forward writes the gradient and
# the backward only scales it (segfast/ops/pixel.py). Normalizers come from
# the labels alone, inside the op. A mean over zero valid pixels is 0.



def _pixel_reduce(x, t, is_label, kind, reduction, norm, *, spatial, **kw):
    """Sum, mean (normalizer ``norm``, see ops.pixel) or the per-pixel map
    reshaped to the input's spatial shape."""
    _common.check_reduction(reduction)
    if reduction == "none":
        m = pixel_loss(x, t, is_label, kind, reduce=False, **kw)
        N = x.shape[0]
        return m.view(N, *spatial) if per_pixel(kind, is_label) else m.view(N, x.shape[1], *spatial)
    norm = norm if reduction == "mean" else NORM_SUM
    return pixel_loss(x, t, is_label, kind, norm=norm, reduce=True, **kw)


def _softmax_labels(input, target, ignore_index, backend, what, reduction="none"):
    if input.dim() >= 3 and (target.dtype.is_floating_point or target.dtype == torch.bool):
        raise TypeError(f"{what} takes class-index targets (N, *spatial) as uint8/int32/int64")
    if input.dim() >= 2 and input.shape[1] < 2:
        raise ValueError(f"{what} needs C >= 2 channels (a softmax over one channel is constant)")
    # a reduced loss on the triton backend checks its labels in the kernel (ops/pixel.py)
    return _region.canonical(input, target, act=_region.ACT["softmax"], ignore_index=ignore_index,
                             backend=backend, kernel_label_check=("triton", "cuda") if reduction != "none" else ())


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
    norm = NORM_COUNT if w is None else NORM_WEIGHT
    return _pixel_reduce(x, t, is_label, CE, reduction, norm, spatial=input.shape[2:], backend=backend,
                         ignore_value=ign, weight=w, smoothing=float(label_smoothing))


def _sigmoid_target(input, target, ignore_index, backend, reduction="none"):
    binary = input.shape[1] == 1 and not (target.dtype.is_floating_point or target.dtype == torch.bool)
    # a reduced loss on the triton backend checks its labels in the kernel (pixel_loss)
    return _region.canonical(input, target, act=_region.ACT["sigmoid"], binary=binary,
                             ignore_index=ignore_index, backend=backend,
                             kernel_label_check=("triton", "cuda") if reduction != "none" else ())


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
    return _pixel_reduce(x, t, is_label, BCE, reduction, NORM_COUNT,
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
    return _pixel_reduce(x, t, is_label, BCE, reduction, NORM_COUNT,
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
        return _pixel_reduce(x, t, is_label, FOCAL_SOFTMAX, reduction, NORM_COUNT,
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
    return _pixel_reduce(x, t, is_label, FOCAL_SIGMOID, reduction, NORM_COUNT,
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
    return _pixel_reduce(x, t, is_label, FUSED, reduction, NORM_COUNT, spatial=input.shape[2:],
                         backend=backend, ignore_value=ign, scale0=float(ws), scale1=float(wp))


class _PixelLoss(torch.nn.Module):
    """Holds keyword arguments (class-weight tensors as buffers, so .to()
    moves them) and calls the functional form."""
    _fn = None
    _tensor_args = ("weight", "pos_weight", "ce_weight")

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = {}
        for k, v in kwargs.items():
            if k in self._tensor_args and v is not None and not isinstance(v, str):
                self.register_buffer(k, torch.as_tensor(v, dtype=torch.float32))
            else:
                self.kwargs[k] = v

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        buffers = {k: b for k, b in self.named_buffers(recurse=False)}
        return type(self)._fn(input, target, **self.kwargs, **buffers)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class CrossEntropyLoss(_PixelLoss):
    """Module form of :func:`segfast.cross_entropy` (one pass over the logits).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.cross_entropy`.

    Args:
        weight: per-class weights [C], >= 0.
        ignore_index: label whose pixels count nowhere.
        label_smoothing: ε in [0, 1].
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.CrossEntropyLoss(ignore_index=255)
        >>> labels = torch.randint(0, 4, (2, 8, 8))
        >>> round(loss_fn(torch.zeros(2, 4, 8, 8), labels).item(), 4)
        1.3863
    """
    _fn = staticmethod(cross_entropy)

    def __init__(self, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean", backend=None):
        super().__init__(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                         reduction=reduction, backend=backend)


class BCEWithLogitsLoss(_PixelLoss):
    """Module form of :func:`segfast.binary_cross_entropy_with_logits`.

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.binary_cross_entropy_with_logits`.

    Args:
        weight: per-class factors [C], >= 0.
        pos_weight: per-class weight of the positive term [C], >= 0.
        ignore_index: target value that counts nowhere.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0]))
        >>> masks = torch.zeros(2, 1, 8, 8)
        >>> round(loss_fn(torch.zeros(2, 1, 8, 8), masks).item(), 4)
        0.6931
    """
    _fn = staticmethod(binary_cross_entropy_with_logits)

    def __init__(self, weight=None, pos_weight=None, ignore_index=None, reduction="mean", backend=None):
        super().__init__(weight=weight, pos_weight=pos_weight, ignore_index=ignore_index, reduction=reduction,
                         backend=backend)


class BalancedBCELoss(_PixelLoss):
    """Module form of :func:`segfast.balanced_bce_loss` (HED's class-balanced BCE).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.balanced_bce_loss`.

    Args:
        beta: "auto" (per image, the fraction of negative elements) or a number in [0, 1].
        ignore_index: target value that counts nowhere.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.BalancedBCELoss(beta=0.5)
        >>> round(loss_fn(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)).item(), 4)   # 0.5·log 2
        0.3466
    """
    _fn = staticmethod(balanced_bce_loss)

    def __init__(self, beta="auto", ignore_index=None, reduction="mean", backend=None):
        super().__init__(beta=beta, ignore_index=ignore_index, reduction=reduction, backend=backend)


class FocalLoss(_PixelLoss):
    """Module form of :func:`segfast.focal_loss` (sigmoid or softmax form by ``mode``).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.focal_loss`.

    Args:
        mode: "binary", "multilabel" (sigmoid form) or "multiclass" (softmax form).
        alpha: see :func:`segfast.focal_loss` (None: 0.25 in the sigmoid form, 1 in the softmax form).
        gamma: focusing exponent, >= 0.
        weight: per-class factors [C], >= 0.
        ignore_index: label (or dense target value) that counts nowhere.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.FocalLoss("multiclass", gamma=2.0)
        >>> labels = torch.zeros(2, 8, 8, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 4, 8, 8), labels).item(), 4)
        0.7798
    """
    _fn = staticmethod(focal_loss)

    def __init__(self, mode="binary", alpha=None, gamma=2.0, weight=None, ignore_index=None, reduction="mean",
                 backend=None):
        super().__init__(mode=mode, alpha=alpha, gamma=gamma, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, backend=backend)


class FusedLoss(_PixelLoss):
    """Module form of :func:`segfast.fused_loss` (softmax + positive sharing).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.fused_loss`.

    Args:
        ws: weight of the cross-entropy term, >= 0.
        wp: weight of the positive-sharing term, >= 0.
        ignore_index: label whose pixels count nowhere.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.FusedLoss(ws=0.5, wp=0.5)
        >>> labels = torch.zeros(2, 8, 8, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 4, 8, 8), labels).item(), 4)
        1.3863
    """
    _fn = staticmethod(fused_loss)

    def __init__(self, ws=0.5, wp=0.5, ignore_index=None, reduction="mean", backend=None):
        super().__init__(ws=ws, wp=wp, ignore_index=ignore_index, reduction=reduction, backend=backend)


_doc.fill_modules(globals(), __name__)
