"""Region losses (Dice, soft IoU, Tversky, generalized Dice): the public
functions and Modules, the two kernels as torch.library ops, input
validation, and the formulas on the sums.

A loss call goes one way: its arguments checked (``_check_args``), the
tensors validated and canonicalised and the backend chosen (:func:`prepare`),
the kernels run (:func:`finish_loss` where they compute the whole loss, else
:func:`plane_stats`, then the pooling of the sums), the formula on the sums,
the reduction (``_finish``).

Kernels (see docs/design.md): ``region_stats`` reads logits and targets
once and returns the K=7 per-plane sums (reference/region.py STATS order);
``region_grad`` reads them again with dLoss/dStats and writes dLoss/dLogits.
Everything in between is PyTorch on the small [N, C, 7] tensor, so autograd
gives dLoss/dStats and a new loss is a new formula, not a new kernel.

On the ``triton`` and ``cuda`` backends the common losses (Dice, soft IoU,
Tversky, generalized Dice, Dice + CE / focal / fused with a mean or sum)
instead run :func:`finish_loss`: the stats kernel, one finish kernel that
writes the loss and dLoss/dStats (triton_kernels/region_finish.py,
region_finish_cuda in csrc/cuda/region.cu), and in the backward the grad
kernel, which reads grad_output on the device. The label range check rides
in the stats kernel (a device flag). Other variants (a
``reduction="none"``, ``sync_stats``, soft targets or class weights that
require grad, C > region_finish.MAX_C (CUDA_FINISH_MAX_C on cuda), empty
inputs) and the other backends take the torch formulas of the loss
functions below.
"""

# torch.library.custom_op infers the op schemas from annotations: they stay real
# types (no `from __future__ import annotations`, whose strings torch 2.4 cannot
# read; typing.List, as list[float] is unsupported before torch 2.7).
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import _doc, backends
from ..reference import region as ref
from . import _common
from ._common import (acc_dtype, canonical, check_ignore_index, check_input, check_reduction,  # noqa: F401
                      check_weight, differentiable_once, stats_chunks, target_args, triton_chunks, triton_op)

K = ref.K
KX = ref.KX
# Backends whose stats kernel checks the labels' range on the device (a flag).
# On cuda only finish_loss reads the flag; plane_stats checks with torch ops.
LABEL_CHECK_BACKENDS = ("triton", "cuda")
ACT = {"identity": ref.ACT_IDENTITY, "sigmoid": ref.ACT_SIGMOID, "softmax": ref.ACT_SOFTMAX}
MODES = ("binary", "multiclass", "multilabel")

__all__ = ["region_stats", "dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss",
           "DiceLoss", "JaccardLoss", "TverskyLoss", "GeneralizedDiceLoss"]


# ---------------------------------------------------------------- C++ / CUDA


def _ignore(ignore_value: Optional[float]) -> Optional[float]:
    return None if ignore_value is None else float(ignore_value)


def _launch_stats_ext(x, t, is_label, act, label_offset, ignore_value, backend, xent, gamma, q=None, conf=None):
    N, C, S = x.shape
    P = stats_chunks(N, C, S, x.device, x.dtype == torch.float64)
    out = torch.empty((N, P, C, KX if xent else K), dtype=acc_dtype(x), device=x.device)
    view = backends.view
    args = (view(x), view(t), view(out), act, xent, float(gamma), label_offset, _ignore(ignore_value), view(conf))
    if backend == "cpu":
        backends._C.cpu.region_stats(*args, view(q), backends.cpu_threads(x.numel()))
    else:
        with backends.cuda_launch(x.device) as (kernels, stream):
            kernels.region_stats(*args, None, stream)
    return out[:, 0] if P == 1 else out.sum(1)  # one chunk per image (N >= the workers): no sum op


def _launch_grad_ext(x, t, g, is_label, act, label_offset, ignore_value, backend, xent, gamma, go=None):
    dx = backends.empty_output(x.shape, x.dtype, x.device, like=x)
    g = g.to(acc_dtype(x)).contiguous()
    view = backends.view
    args = (view(x), view(t), view(g), view(dx), act, xent, float(gamma), label_offset, _ignore(ignore_value))
    if backend == "cpu":
        backends._C.cpu.region_grad(*args, backends.cpu_threads(x.numel()))
    else:
        with backends.cuda_launch(x.device) as (kernels, stream):
            kernels.region_grad(*args, view(go), stream)
    return dx


def _stats_impl(x: Tensor, target: Tensor, is_label: bool, act: int, label_offset: int,
                    ignore_value: Optional[float], backend: str, xent: int = 0, gamma: float = 0.0,
                q: Optional[Tensor] = None, conf: Optional[Tensor] = None) -> Tensor:
    """Per-plane sums [N, C, 7] ([N, C, 9] with ``xent``) with the C++ (``cpu``) or CUDA (``cuda``) kernels.
    ``q`` (cpu, see _keeps): filled with v·p for _grad_probs;
    ``conf`` (see _conf_kernel_supported): int64 [C, C] confusion counts, added to."""
    if x.numel() == 0:
        return x.new_zeros((x.shape[0], x.shape[1], KX if xent else K), dtype=acc_dtype(x))
    return _launch_stats_ext(x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma, q, conf)


def _grad_impl(x: Tensor, target: Tensor, g: Tensor, is_label: bool, act: int,
                   label_offset: int, ignore_value: Optional[float], backend: str, xent: int = 0,
               gamma: float = 0.0) -> Tensor:
    """dLoss/dx [N, C, S] from dLoss/dStats ``g`` [N, C, 7] (or [N, C, 9] with ``xent``)."""
    if x.numel() == 0:
        return torch.zeros_like(x)
    return _launch_grad_ext(x, target, g, is_label, act, label_offset, ignore_value, backend, xent, gamma)


# What the cpu stats pass keeps for the grad pass (the bit of csrc/cpu/region.cpp region_keeps).
KEEP_PROBS = 2


@backends.constant_to_compile
def _kernel_keeps(x_dtype: int, is_label: bool, act: int, xent: int, C: int, pixel_stride: int) -> int:
    """csrc/cpu/region.cpp region_keeps: a constant to torch.compile."""
    return int(backends._C.cpu.region_keeps(x_dtype, is_label, act, xent, C, pixel_stride))


def _keeps(x: Tensor, is_label: bool, act: int, backend: str, xent: int) -> int:
    """What the stats pass keeps for the grad pass of a call that needs dLoss/dx,
    as the cpu kernels decide it (csrc/cpu/region.cpp region_keeps), the same
    for eager calls and under torch.compile: KEEP_PROBS, q = v·p, the
    probabilities it computes anyway, in the buffer that becomes dLoss/dx
    (the grad pass then writes dx over q without computing an exp; the
    gradient's memory is taken at the forward instead of the backward, and a
    forward + backward peaks no higher); else 0, nothing."""
    if backend != "cpu" or x.numel() == 0:
        return 0
    return _kernel_keeps(backends.dtype_code(x), bool(is_label), act, xent, x.shape[1], x.stride(2))


def _kept_buffer(x: Tensor, keep: int) -> Tensor:
    """The buffer of what the stats pass keeps (see _keeps): q in x's layout, or an empty tensor."""
    if keep & KEEP_PROBS:  # x's layout, so unit pixel stride too
        return backends.empty_output(x.shape, x.dtype, x.device, like=x)
    return x.new_empty(0)


def _stats_keep(x: Tensor, target: Tensor, is_label: bool, act: int, label_offset: int,
                ignore_value: Optional[float], backend: str, xent: int, gamma: float, keep: int,
                conf: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """-> (the sums, what the pass kept for the grad pass: see _keeps)."""
    kept = _kept_buffer(x, keep)
    stats = _stats_impl(x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma,
                        kept if keep & KEEP_PROBS else None, conf)
    return stats, kept


def _grad_probs(q: Tensor, target: Tensor, g: Tensor, label_offset: int, ignore_value: Optional[float]) -> None:
    """dLoss/dx written over q (the KEEP_PROBS buffer, see _keeps) from dLoss/dStats ``g`` [N, C, 7]."""
    g = g.to(torch.float32).contiguous()
    view = backends.view
    backends._C.cpu.region_grad_probs(view(q), view(target), view(g), label_offset, _ignore(ignore_value),
                                      backends.cpu_threads(q.numel()))


def _stats_op(x: Tensor, target: Tensor, is_label: bool, act: int, label_offset: int,
              ignore_value: Optional[float], backend: str, xent: int = 0, gamma: float = 0.0,
              keep: int = 0) -> Tuple[Tensor, Tensor]:
    """_stats_keep as a torch.library op: (the sums, the kept buffer)."""
    return _stats_keep(x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma, keep)


def _grad_op(x: Tensor, target: Tensor, g: Tensor, is_label: bool, act: int, label_offset: int,
             ignore_value: Optional[float], backend: str, xent: int = 0, gamma: float = 0.0) -> Tensor:
    """_grad_impl as a torch.library op."""
    return _grad_impl(x, target, g, is_label, act, label_offset, ignore_value, backend, xent, gamma)


region_stats_op = torch.library.custom_op("segfast::region_stats", _stats_op, mutates_args=())
region_grad_op = torch.library.custom_op("segfast::region_grad", _grad_op, mutates_args=())
region_grad_probs_op = torch.library.custom_op("segfast::region_grad_probs", _grad_probs, mutates_args=("q",))


# ---------------------------------------------------------------- fake + autograd


def _fake_kept(x: Tensor, keep: int) -> Tensor:
    if keep & KEEP_PROBS:
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
    return x.new_empty(0)


@region_stats_op.register_fake
def _(x, target, is_label, act, label_offset, ignore_value, backend, xent=0, gamma=0.0, keep=0):
    return x.new_empty((x.shape[0], x.shape[1], KX if xent else K), dtype=acc_dtype(x)), _fake_kept(x, keep)


@region_grad_op.register_fake
def _(x, target, g, is_label, act, label_offset, ignore_value, backend, xent=0, gamma=0.0):
    return torch.empty_like(x)


@region_grad_probs_op.register_fake
def _(q, target, g, label_offset, ignore_value):
    return None


def _setup(ctx, inputs, output):
    x, target, is_label, act, label_offset, ignore_value = inputs[:6]
    ctx.save_for_backward(x, target)
    ctx.args = (is_label, act, label_offset, ignore_value) + tuple(inputs[6:])


def _setup_keep(ctx, inputs, output):
    """setup_context of the ops that return the kept buffer (their last output) and take ``keep`` last."""
    x, target, is_label, act, label_offset, ignore_value = inputs[:6]
    ctx.save_for_backward(x, target, output[-1])
    ctx.args = (is_label, act, label_offset, ignore_value) + tuple(inputs[6:9])
    ctx.keep = inputs[9]
    ctx.consumed = False


def _kept_grad(ctx, grad, grad_probs, grad_ext) -> Tensor:
    """dLoss/dx from dLoss/dStats ``grad`` through what the stats pass kept
    (ctx.keep, see _keeps): written over q (``grad_probs``), else by the grad
    pass (``grad_ext``). q becomes the first gradient: a second backward
    (retain_graph) recomputes from x."""
    x, target, kept = ctx.saved_tensors
    if ctx.keep & KEEP_PROBS and not ctx.consumed:
        ctx.consumed = True
        grad_probs(kept, target, grad, ctx.args[2], ctx.args[3])
        return kept
    return grad_ext(x, target, grad, *ctx.args)


def _backward_ext(ctx, grad, *_unused):
    dx = _kept_grad(ctx, grad, region_grad_probs_op, region_grad_op)
    return differentiable_once((dx,) + (None,) * 9, "region-loss")


region_stats_op.register_autograd(_backward_ext, setup_context=_setup_keep)


class _EagerStats(torch.autograd.Function):
    """The same kernels, the same kept buffer and the same grad pass as
    region_stats_op, without torch.library's Python dispatch (about 0.1 ms a
    call each way, a fair share of a small loss): used in eager mode on plain
    tensors; torch.compile, export and fake tensors see the op."""

    @staticmethod
    def forward(ctx, x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma, keep, conf=None):
        stats, kept = _stats_keep(x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma, keep,
                                  conf)
        _setup_keep(ctx, (x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma, keep),
                    (stats, kept))
        return stats

    @staticmethod
    def backward(ctx, grad):
        with torch.no_grad():
            dx = _kept_grad(ctx, grad, _grad_probs, _grad_impl)
        return differentiable_once((dx,) + (None,) * 10, "region-loss")


def _eager_ok(*tensors) -> bool:
    return not torch.compiler.is_compiling() and all(type(t) in (Tensor, torch.nn.Parameter) for t in tensors)


# ---------------------------------------------------------------- CUDA: the whole loss (finish_loss)
#
# On the cuda backend finish_loss runs as on triton: the stats kernel (which
# sets the label flag), region_finish_cuda (one block: the partial sums ->
# the loss, dLoss/dStats at grad_output 1 and the flag's verdict), one
# _assert_async; the backward is the grad kernel, which reads grad_output on
# the device. No value reaches the host.

# Largest C of region_finish_cuda (csrc/common/region.h kFinishMaxC).
CUDA_FINISH_MAX_C = 1024


def _loss_cuda(x: Tensor, target: Tensor, w: Optional[Tensor], pw: Optional[Tensor], is_label: bool, act: int,
               label_offset: int, ignore_value: Optional[float], xent: int, gamma: float, fparams: List[float],
               iparams: List[int], check: Optional[str] = None, count: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (the scalar loss, dLoss/dStats [N, C, KO] at grad_output 1, the confusion
    counts [C, C] of the stats pass with ``count``, else [0, 0]) with the CUDA
    kernels; the arguments as region_loss_triton's (see :func:`finish_loss`)."""
    N, C, S = x.shape
    KO = KX if xent else K
    P = stats_chunks(N, C, S, x.device, x.dtype == torch.float64)
    acc = dict(dtype=acc_dtype(x), device=x.device)
    part = torch.empty((N, P, C, KO), **acc)
    flag = torch.zeros(1, dtype=torch.int32, device=x.device) if check else None
    counts = (torch.zeros if count else torch.empty)((C, C) if count else (0, 0), dtype=torch.int64, device=x.device)
    sums, coef, loss = torch.empty((N, C, KO), **acc), torch.empty((N, C, KO), **acc), torch.empty((), **acc)
    ok = torch.empty(1, dtype=torch.uint8, device=x.device)
    w, pw = (None if v is None else v.to(acc_dtype(x)).contiguous() for v in (w, pw))
    view = backends.view
    with backends.cuda_launch(x.device) as (kernels, stream):
        kernels.region_stats(view(x), view(target), view(part), act, xent, float(gamma), label_offset,
                             _ignore(ignore_value), view(counts if count else None), view(flag), stream)
        kernels.region_finish(view(part), view(sums), view(coef), view(loss), view(ok), view(flag), view(w), view(pw),
                              [float(v) for v in fparams], [int(v) for v in iparams], xent, stream)
    if check:
        torch._assert_async(ok, check)
    return loss, coef, counts


def _grad_go_cuda(x: Tensor, target: Tensor, coef: Tensor, go: Tensor, is_label: bool, act: int,
                  label_offset: int, ignore_value: Optional[float], xent: int, gamma: float) -> Tensor:
    """dLoss/dx of region_loss_cuda: grad_output ``go`` (one value) times dLoss/dStats ``coef``, read by the kernel."""
    return _launch_grad_ext(x, target, coef, is_label, act, label_offset, ignore_value, "cuda", xent, gamma,
                            go=go.reshape(1).to(coef.dtype))


region_loss_cuda_op = torch.library.custom_op("segfast::region_loss_cuda", _loss_cuda, mutates_args=())
region_grad_go_cuda_op = torch.library.custom_op("segfast::region_grad_go_cuda", _grad_go_cuda, mutates_args=())


@region_loss_cuda_op.register_fake
def _(x, target, w, pw, is_label, act, label_offset, ignore_value, xent, gamma, fparams, iparams, check="",
      count=False):
    C = x.shape[1]
    return (x.new_empty((), dtype=acc_dtype(x)), x.new_empty((x.shape[0], C, KX if xent else K), dtype=acc_dtype(x)),
            x.new_empty((C, C) if count else (0, 0), dtype=torch.int64))


@region_grad_go_cuda_op.register_fake
def _(x, target, coef, go, is_label, act, label_offset, ignore_value, xent, gamma):
    return torch.empty_like(x)


def _setup_loss(ctx, inputs, output):
    """setup_context of the whole-loss ops (region_loss_triton, region_loss_cuda)."""
    x, target = inputs[:2]
    ctx.save_for_backward(x, target, output[1])
    ctx.args = tuple(inputs[4:10])  # is_label, act, label_offset, ignore_value, xent, gamma
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)  # no zeros for the coefficients' (absent) gradient


def _backward_loss_cuda(ctx, grad, _grad_coef, _grad_counts):
    if grad is None:  # the loss is not in the graph that asks (no materialised zeros)
        return (None,) * 14
    x, target, coef = ctx.saved_tensors
    dx = region_grad_go_cuda_op(x, target, coef, grad, *ctx.args)
    return differentiable_once((dx,) + (None,) * 13, "region-loss")


region_loss_cuda_op.register_autograd(_backward_loss_cuda, setup_context=_setup_loss)


# ---------------------------------------------------------------- Triton

@backends.triton_ops
def _register_triton_ops():
    """The Triton ops, registered when the triton backend is first asked for
    (backends.triton_ops); backends.choose() refuses that backend where Triton is missing."""
    global region_stats_triton_op, region_grad_triton_op, region_loss_triton_op, region_stats_conf_triton_op

    def stats(x, target, is_label, act, label_offset, ignore_value, xent, gamma, check, confusion=None):
        from ..triton_kernels import region as tk

        N, C, S = x.shape
        P = triton_chunks(tk, N, C, S, x.device)
        out = torch.empty((N, P, C, KX if xent else K), dtype=torch.float32, device=x.device)
        if x.numel() != 0:
            t, _ = target_args(target, is_label)
            flag = torch.zeros(1, dtype=torch.int32, device=x.device) if check else None
            tk.launch_stats(x, t, is_label, out, N, C, S, P, act, label_offset, ignore_value is not None,
                            float(ignore_value or 0.0), xent, gamma, flag=flag, confusion=confusion)
            if check:
                torch._assert_async(flag == 0, check)
        else:
            out.zero_()
        return out.sum(1).to(acc_dtype(x))

    @triton_op("segfast::region_stats_triton", mutates_args=())
    def region_stats_triton_op(x: Tensor, target: Tensor, is_label: bool, act: int,
                               label_offset: int, ignore_value: Optional[float], xent: int = 0,
                               gamma: float = 0.0, check: Optional[str] = None) -> Tensor:
        """Per-plane sums [N, C, 7] ([N, C, 9] with ``xent``) with the Triton kernels.
        ``check``: the error of a label outside the classes, asserted on the
        device from the stats kernel's flag (None or "": labels not checked here;
        a None default, as torch 2.4's schema inference takes no str default)."""
        return stats(x, target, is_label, act, label_offset, ignore_value, xent, gamma, check)

    @triton_op("segfast::region_stats_conf_triton", mutates_args=())
    def region_stats_conf_triton_op(x: Tensor, target: Tensor, is_label: bool, act: int,
                                    label_offset: int, ignore_value: Optional[float], xent: int = 0,
                                    gamma: float = 0.0, check: Optional[str] = None) -> Tuple[Tensor, Tensor]:
        """region_stats_triton_op and the confusion counts [C, C] (int64) of the
        same pass (class-index targets)."""
        C = x.shape[1]
        conf = torch.zeros((C, C), dtype=torch.int64, device=x.device)
        return stats(x, target, is_label, act, label_offset, ignore_value, xent, gamma, check, conf), conf

    @triton_op("segfast::region_grad_triton", mutates_args=())
    def region_grad_triton_op(x: Tensor, target: Tensor, g: Tensor, is_label: bool, act: int,
                              label_offset: int, ignore_value: Optional[float], xent: int = 0,
                              gamma: float = 0.0, go: Optional[Tensor] = None) -> Tensor:
        """dLoss/dx from dLoss/dStats ``g``, times the one-element grad_output ``go``
        (read by the kernel on the device) when given."""
        from ..triton_kernels import region as tk

        N, C, S = x.shape
        dx = torch.empty_like(x)
        if x.numel() != 0:
            t, _ = target_args(target, is_label)
            tk.launch_grad(x, t, is_label, g.float().contiguous(), dx, N, C, S, act, label_offset,
                           ignore_value is not None, float(ignore_value or 0.0), xent, gamma, go=go)
        return dx

    def _backward_triton(ctx, grad):
        x, target = ctx.saved_tensors
        dx = region_grad_triton_op(x, target, grad, *ctx.args[:6])
        return differentiable_once((dx,) + (None,) * 8, "region-loss")

    region_stats_triton_op.register_autograd(_backward_triton, setup_context=_setup)

    def _setup_conf(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        _setup(ctx, inputs, output[0])

    region_stats_conf_triton_op.register_autograd(lambda ctx, grad, _counts: _backward_triton(ctx, grad),
                                                  setup_context=_setup_conf)

    @triton_op("segfast::region_loss_triton", mutates_args=())
    def region_loss_triton_op(x: Tensor, target: Tensor, w: Optional[Tensor], pw: Optional[Tensor],
                              is_label: bool, act: int, label_offset: int, ignore_value: Optional[float],
                              xent: int, gamma: float, fparams: List[float], iparams: List[int],
                              check: Optional[str] = None, count: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
        """-> (the scalar loss, dLoss/dStats [N, C, KO] at grad_output 1, the
        confusion counts [C, C] of the stats pass with ``count``, else [0, 0]):
        the stats kernel and the finish kernel (see :func:`finish_loss` for the
        parameters; ``check`` as in region_stats_triton_op)."""
        from ..triton_kernels import region as tk
        from ..triton_kernels import region_finish as tf

        N, C, S = x.shape
        KO = KX if xent else K
        P = triton_chunks(tk, N, C, S, x.device)
        f32 = dict(dtype=torch.float32, device=x.device)
        part = torch.empty((N, P, C, KO), **f32)
        t, _ = target_args(target, is_label)
        flag = torch.zeros(1, dtype=torch.int32, device=x.device) if check else None
        counts = torch.zeros((C, C) if count else (0, 0), dtype=torch.int64, device=x.device)
        tk.launch_stats(x, t, is_label, part, N, C, S, P, act, label_offset, ignore_value is not None,
                        float(ignore_value or 0.0), xent, gamma, flag=flag, confusion=counts if count else None)
        sums, coef = torch.empty((N, C, KO), **f32), torch.empty((N, C, KO), **f32)
        loss, ok = torch.empty((), **f32), torch.empty(1, dtype=torch.uint8, device=x.device)
        cI, dI, dP, dT, nr, dr, pow_gamma, lam_r, scale_r, lam_x, eps, ws, wp = fparams
        gdl, batch, log, c0 = iparams
        tf.launch_finish(part, sums, coef, loss, ok, N, C, P, KO, flag=flag, w=w, pw=pw,
                         ratio=(cI, dI, dP, dT), nr=nr, dr=dr, gamma=pow_gamma, log=bool(log), gdl=gdl,
                         batch=bool(batch), c0=c0, lam_r=lam_r, scale_r=scale_r, xent=xent, lam_x=lam_x,
                         eps=eps, ws=ws, wp=wp)
        if check:
            torch._assert_async(ok, check)
        return loss, coef, counts

    def _backward_loss(ctx, grad, _grad_coef, _grad_counts):
        if grad is None:  # the loss is not in the graph that asks (no materialised zeros)
            return (None,) * 14
        x, target, coef = ctx.saved_tensors
        dx = region_grad_triton_op(x, target, coef, *ctx.args, go=grad.reshape(1))
        return differentiable_once((dx,) + (None,) * 13, "region-loss")

    region_loss_triton_op.register_autograd(_backward_loss, setup_context=_setup_loss)


def _label_check(t: Tensor, is_label: bool, C: int, label_offset: int, ignore_value: Optional[float],
                 backend: str) -> str:
    """The error message the kernels assert with when they check the labels'
    range on the device (see prepare), else ""."""
    if not (is_label and backend in LABEL_CHECK_BACKENDS and t.numel() and not _common.host_checks(t.device)
            and not torch.compiler.is_compiling()):
        return ""
    return _common.label_message(t, C + label_offset, _ignore_label(ignore_value))


def _ignore_label(ignore_value: Optional[float]):
    """The ignore value as the user's label: an int where integral."""
    return None if ignore_value is None else (int(ignore_value) if float(ignore_value).is_integer()
                                              else ignore_value)


def _cuda_label_check(t: Tensor, is_label: bool, C: int, label_offset: int, ignore_value: Optional[float]) -> None:
    """The labels' range check that :func:`prepare` leaves to the cuda kernels,
    on the paths whose stats op has no flag (all but finish_loss): torch ops
    and an assertion on the device."""
    if _label_check(t, is_label, C, label_offset, ignore_value, "cuda"):
        _common._check_labels(t, C + label_offset, _ignore_label(ignore_value))


def plane_stats(x: Tensor, target: Tensor, is_label: bool, act: int, label_offset: int,
                ignore_value: Optional[float], backend: str, xent: int = 0, gamma: float = 0.0,
                *, prepared: bool = False, confusion: Optional[Tensor] = None) -> Tensor:
    """Dispatch the stats kernel; x [N, C, S], target [N, S] or [N, C, S].
    A pixel term ``xent`` (XENT_CE / XENT_FOCAL / XENT_FUSED of
    reference/region.py; softmax, class-index targets) adds two sums: [N, C, 9].
    ``prepared``: the arguments come from :func:`prepare`, which leaves the
    label range check to the kernels where they can do it. ``confusion``
    (class-index targets; see confusion_target): int64 [C, C] on x's device,
    += the counts of (label, argmax of x) over the valid pixels."""
    if xent not in (ref.XENT_NONE, ref.XENT_CE, ref.XENT_FOCAL, ref.XENT_FUSED):
        raise ValueError(f"unknown pixel term {xent!r}")
    if xent and (act != ACT["softmax"] or not is_label):
        raise ValueError("the pixel-term sums need softmax and class-index targets")
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError("gamma must be finite and >= 0")
    args = (x, target, is_label, act, label_offset, ignore_value)
    # what the stats pass keeps for the grad pass, eager or compiled: the kernels decide (_keeps)
    keep = _keeps(x, is_label, act, backend, xent) if x.requires_grad and torch.is_grad_enabled() else 0
    if prepared and backend == "cuda":
        _cuda_label_check(target, is_label, x.shape[1], label_offset, ignore_value)
    if confusion is not None:  # -------- confusion counts (see "confusion counts" below)
        if backend == "triton":
            check = _label_check(target, is_label, x.shape[1], label_offset, ignore_value, backend) if prepared else ""
            out, counts = region_stats_conf_triton_op(*args, xent, float(gamma), check)
            confusion.add_(counts)
            return out
        if not _conf_kernel_supported(backend):
            confusion_from_argmax(x, target, label_offset, ignore_value, confusion)
        elif _eager_ok(x, target, confusion):
            return _EagerStats.apply(*args, backend, xent, float(gamma), keep, confusion)
        else:
            out, counts, _ = region_stats_conf_op(*args, backend, xent, float(gamma), keep)
            confusion.add_(counts)
            return out
    if backend == "torch":
        return ref.region_stats(*args, xent, gamma)
    if not is_label and target.requires_grad and torch.is_grad_enabled():
        # soft targets that train (distillation, mixup): the kernels give the
        # sums and dLoss/dx, torch adds dLoss/dtarget (the sums are affine in
        # t per element given p: one eager pass, only when the target trains)
        out = plane_stats(x, target.detach(), is_label, act, label_offset, ignore_value, backend, xent, gamma,
                          prepared=prepared)
        return with_grad_of(out, ref.region_stats(x.detach(), target, is_label, act, label_offset,
                                                  ignore_value, xent, gamma))
    if backend == "triton":
        check = _label_check(target, is_label, x.shape[1], label_offset, ignore_value, backend) if prepared else ""
        return region_stats_triton_op(*args, xent, float(gamma), check)
    if _eager_ok(x, target):
        return _EagerStats.apply(*args, backend, xent, float(gamma), keep)
    return region_stats_op(*args, backend, xent, float(gamma), keep)[0]


def finish_loss(prep: tuple, *, weight=None, include_background: bool = True, batch: bool = False,
                sync_stats: bool = False, reduction: str = "mean", ratio=(2.0, 0.0, 1.0, 1.0), gdl: int = 0,
                smooth_nr: float = 0.0, smooth_dr: float = 0.0, log_loss: bool = False, gamma: float = 1.0,
                lam_r: float = 1.0, xent: int = 0, xgamma: float = 0.0, lam_x: float = 0.0,
                pw: Optional[Tensor] = None, eps: float = 0.0, ws: float = 0.0, wp: float = 0.0,
                confusion: Optional[Tensor] = None) -> Optional[Tensor]:
    """The whole loss from the kernels on ``prep`` (the output of :func:`prepare`),
    or None where the torch formulas run instead (see the module doc).
    ``confusion`` (see confusion_target): += the counts of the same stats pass.

    The region term (``lam_r`` times): ``ratio`` = (cI, dI, dP, dT) gives the
    per-plane score (cI·I + nr) / (dI·I + dP·P + dT·T + dr) (Dice (2, 0, 1, 1),
    soft IoU (1, -1, 1, 1), Tversky (1, 1 - α - β, α, β)), unless ``gdl``
    (1 square, 2 simple, 3 uniform) asks for the generalized Dice score; then
    ``log_loss``, ``gamma``, ``weight``, ``include_background``, ``batch`` and
    ``reduction`` as in the loss functions below. The pixel term (``lam_x`` times;
    pixel-term sums ``xent`` with focal exponent ``xgamma``): the mean over the
    valid pixels of the CE (class weights ``pw``, label smoothing ``eps``), the
    focal loss (α = ``pw``) or the fused loss (``ws``, ``wp``)."""
    x, t, is_label, act, off, ign, backend = prep
    C = x.shape[1]
    if not (backend in ("triton", "cuda") and reduction in ("mean", "sum") and not sync_stats
            and x.numel() and (include_background or C >= 2)):
        return None
    if backend == "triton":
        from ..triton_kernels import region_finish as tf
        max_c, loss_op = tf.MAX_C, region_loss_triton_op
    else:
        max_c, loss_op = CUDA_FINISH_MAX_C, region_loss_cuda_op
    if C > max_c or not math.isfinite(xgamma) or (not is_label and t.requires_grad and torch.is_grad_enabled()):
        return None
    w = check_weight(weight, C, x.device)
    if any(v is not None and v.requires_grad and torch.is_grad_enabled() for v in (w, pw)):
        return None
    c0 = 0 if include_background else 1
    planes = 1 if batch else x.shape[0]
    scale = 1.0 if reduction == "sum" else 1.0 / (planes if gdl else planes * (C - c0))
    fparams = [float(v) for v in (*ratio, smooth_nr, smooth_dr, gamma, lam_r, scale, lam_x, eps, ws, wp)]
    iparams = [int(gdl), int(batch), int(log_loss), c0]
    check = _label_check(t, is_label, C, off, ign, backend)
    w, pw = (None if v is None else v.float().contiguous() for v in (w, pw))  # a scalar weight is expanded
    loss, _, counts = loss_op(x, t, w, pw, is_label, act, off, ign, int(xent), float(xgamma),
                              fparams, iparams, check, confusion is not None)
    if confusion is not None:
        confusion.add_(counts)
    return loss


def with_grad_of(value: Tensor, other: Tensor) -> Tensor:
    """``value``, with the gradient of ``other`` (the same quantity computed
    differentiably in other variables): value + (other - other.detach()),
    where the difference is finite (an infinite or NaN sum adds no gradient)."""
    d = other - other.detach()
    return value + torch.where(torch.isfinite(other), d, torch.zeros_like(d))


# ---------------------------------------------------------------- confusion counts
#
# A loss's stats pass can also count the confusion matrix of the argmax over
# classes (row: label, column: argmax, the first maximum, a NaN as the
# maximum, as torch.argmax), over the valid pixels: the logits are read once
# for both. The kernels add to an int64 [C, C] contiguous tensor on x's
# device. The torch backend counts with argmax + index_add_
# (confusion_from_argmax): a second read of the logits, no host sync.


def _conf_kernel_supported(backend: str) -> bool:
    """Whether ``backend``'s stats kernel counts the confusion matrix itself."""
    return backend in ("cpu", "cuda", "triton")


def confusion_from_argmax(x: Tensor, target: Tensor, label_offset: int, ignore_value: Optional[float],
                          confusion: Tensor) -> None:
    """confusion += counts of (label, argmax_c x) over the valid pixels; x [N, C, S], target [N, S]."""
    C = x.shape[1]
    if x.numel() == 0:
        return
    with torch.no_grad():
        y = target.long() - label_offset
        valid = (y >= 0) & (y < C)
        if ignore_value is not None:
            valid &= target != int(ignore_value)
        bins = torch.where(valid, y * C + x.argmax(1), 0)
        confusion.view(-1).index_add_(0, bins.reshape(-1), valid.reshape(-1).long())


def _stats_conf_op(x: Tensor, target: Tensor, is_label: bool, act: int, label_offset: int,
                   ignore_value: Optional[float], backend: str, xent: int = 0,
                   gamma: float = 0.0, keep: int = 0) -> Tuple[Tensor, Tensor, Tensor]:
    """_stats_op that also returns the confusion counts [C, C] (int64) of the same pass:
    (the sums, the counts, the kept buffer)."""
    conf = torch.zeros((x.shape[1], x.shape[1]), dtype=torch.int64, device=x.device)
    stats, kept = _stats_keep(x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma, keep,
                              conf)
    return stats, conf, kept


region_stats_conf_op = torch.library.custom_op("segfast::region_stats_conf", _stats_conf_op, mutates_args=())


@region_stats_conf_op.register_fake
def _(x, target, is_label, act, label_offset, ignore_value, backend, xent=0, gamma=0.0, keep=0):
    C = x.shape[1]
    return (x.new_empty((x.shape[0], C, KX if xent else K), dtype=acc_dtype(x)),
            x.new_empty((C, C), dtype=torch.int64), _fake_kept(x, keep))


region_stats_conf_op.register_autograd(_backward_ext, setup_context=_setup_keep)


def confusion_target(confusion, input: Tensor, target: Tensor, mode: str, ignore_index) -> Tensor:
    """Check a loss's ``confusion=`` argument against its input and return the
    int64 [C, C] tensor the stats pass adds to: a plain tensor as given, or a
    segfast.metrics.ConfusionMatrix's own counts. Raises before any kernel runs."""
    from ..metrics.segmentation import ConfusionMatrix

    if mode != "multiclass":
        raise ValueError(f"confusion= counts the argmax over the classes: it needs mode='multiclass', "
                         f"got mode={mode!r}")
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError("input and target must be tensors")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"confusion= needs class-index targets (N, *spatial), got a dense {target.dtype} "
                         f"target of shape {tuple(target.shape)}")
    C = input.shape[1] if input.dim() >= 2 else None
    if isinstance(confusion, ConfusionMatrix):
        if confusion.num_classes != C:
            raise ValueError(f"confusion=ConfusionMatrix(num_classes={confusion.num_classes}) does not match "
                             f"input of shape {tuple(input.shape)} ({C} classes)")
        if confusion.ignore_index != check_ignore_index(ignore_index):
            raise ValueError(f"confusion=ConfusionMatrix(ignore_index={confusion.ignore_index}) and the loss's "
                             f"ignore_index={ignore_index} differ: give both the same ignore_index")
        return confusion.counts_view(input.device)
    if not isinstance(confusion, Tensor):
        raise TypeError(f"confusion must be a segfast.metrics.ConfusionMatrix or an int64 [C, C] tensor, "
                        f"got {type(confusion).__name__}")
    if confusion.dtype != torch.int64:
        raise TypeError(f"confusion must be an int64 tensor, got {confusion.dtype}")
    if tuple(confusion.shape) != (C, C):
        raise ValueError(f"confusion must be [C, C] = [{C}, {C}] for input of shape {tuple(input.shape)}, "
                         f"got {tuple(confusion.shape)}")
    if confusion.device != input.device:
        raise ValueError(f"confusion is on {confusion.device} but input is on {input.device}")
    if not confusion.is_contiguous():
        raise ValueError(f"confusion must be contiguous (it is added to in place), got strides "
                         f"{confusion.stride()}")
    return confusion


# ---------------------------------------------------------------- validation


def prepare(input: Tensor, target: Tensor, mode: str, from_logits: bool,
            ignore_index, backend: Optional[str]):
    """Validate and canonicalise for a ``mode``; see ``canonical``. Where the
    kernels check the labels' range on the device (LABEL_CHECK_BACKENDS), it is
    left to them: pass the result to plane_stats(..., prepared=True) or finish_loss."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_input(input, target)
    C = input.shape[1]
    if mode == "binary" and C != 1:
        raise ValueError(f"mode='binary' needs input with 1 channel, got C={C} (use 'multilabel' or 'multiclass')")
    if mode == "multiclass" and C < 2:
        raise ValueError("mode='multiclass' needs C >= 2 channels (softmax over one channel is constant); "
                         "use mode='binary'")
    act = ACT["softmax" if mode == "multiclass" else "sigmoid"] if from_logits else ACT["identity"]
    return canonical(input, target, act=act, binary=mode == "binary",
                     ignore_index=ignore_index, backend=backend, kernel_label_check=LABEL_CHECK_BACKENDS)


# ---------------------------------------------------------------- formulas on the sums


def tp_fp_fn(stats: Tensor, squared: bool = False, soft: bool = False):
    """True positives, false positives, false negatives from the sums.

    ``squared`` uses Σp² and Σt² as the cardinalities (MONAI's squared_pred);
    ``soft`` uses Σmin(p, t) as the intersection, which equals Σp·t for hard
    targets and is the soft-label form of MONAI (soft_label=True) and of
    segmentation_models_pytorch >= 0.5.
    """
    I, P, T, V, PP, TT, M = stats[..., :K].unbind(-1)
    tp = M if soft else I
    return tp, (PP if squared else P) - tp, (TT if squared else T) - tp


def safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num/den, and 1 where den == 0: an empty (or fully ignored) plane with no
    smoothing has nothing to find and predicts nothing, so it scores 1. A NaN
    (or infinite) denominator is not 0: NaN sums give a NaN score."""
    zero = den == 0
    return torch.where(zero, torch.ones_like(num), num / torch.where(zero, torch.ones_like(den), den))


def sync(stats: Tensor, process_group=None) -> Tensor:
    """All-reduce (sum) the sums across processes, differentiably.

    The backward all-reduces the gradient too: each rank's loss is the same
    global loss, so the gradient on a rank's logits is the world-size sum of
    the per-rank losses' gradients, and DistributedDataParallel's averaging
    of parameter gradients then gives exactly the single-process gradient on
    the concatenated batch.
    """
    import torch.distributed as dist
    import torch.distributed.nn.functional as dnnf

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sync_stats=True needs an initialised torch.distributed process group")
    group = process_group if process_group is not None else dist.group.WORLD
    return dnnf.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)


def __getattr__(name):  # the *_triton_op names, registered on first use
    return backends.triton_op_attr(__name__, name)


# ---------------------------------------------------------------- the public functions and Modules

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
    conf = None if confusion is None else confusion_target(confusion, input, target, mode, ignore_index)
    return plane_stats(*prepare(input, target, mode, from_logits, ignore_index, backend),
                               prepared=True, confusion=conf)


def _region_sums(input, target, mode, from_logits, ignore_index, backend, confusion, process_group, **finish):
    """Validate and canonicalise (:func:`prepare`, which chooses the backend),
    then the kernels: -> (the loss, None) where they compute the whole loss
    (:func:`finish_loss`: no torch op on the sums), else (None, the sums pooled
    as ``finish``'s ``batch`` and ``sync_stats`` ask). Either adds the
    confusion counts of its stats pass to ``confusion``."""
    conf = None if confusion is None else confusion_target(confusion, input, target, mode, ignore_index)
    prep = prepare(input, target, mode, from_logits, ignore_index, backend)
    loss = finish_loss(prep, **finish, confusion=conf)
    if loss is not None:
        return loss, None
    stats = plane_stats(*prep, prepared=True, confusion=conf)
    return None, _pool(stats, finish["batch"], finish["sync_stats"], process_group)


def _pool(stats: Tensor, batch: bool, sync_stats: bool, process_group) -> Tensor:
    """The per-plane sums summed over the batch (``batch``), then over the
    processes (``sync_stats``)."""
    if batch:
        stats = stats.sum(0)
    if sync_stats:
        stats = sync(stats, process_group)
    return stats


def _finish(score: Tensor, input: Tensor, *, log_loss, include_background, weight, reduction,
            gamma: float = 1.0) -> Tensor:
    f = -torch.log(score.clamp_min(1e-7)) if log_loss else 1.0 - score
    if gamma != 1.0:
        f = f.clamp_min(0) ** gamma
    w = check_weight(weight, input.shape[1], f.device)
    if not include_background:
        f = f[..., 1:]
        w = None if w is None else w[1:]
    if w is not None:
        f = f * w.to(f.dtype)
    return _common.reduce_loss(f, reduction)


def _check_common(reduction, smooth_nr, smooth_dr):
    check_reduction(reduction)
    if smooth_nr < 0 or smooth_dr < 0:
        raise ValueError("smooth_nr and smooth_dr must be >= 0")


def _check_args(input, reduction, smooth_nr, smooth_dr, batch, sync_stats, include_background):
    """The region losses' checks of their arguments, before anything runs
    (the tensors' own checks follow in :func:`prepare`)."""
    _check_common(reduction, smooth_nr, smooth_dr)
    if sync_stats and not batch:
        raise ValueError("sync_stats=True needs batch=True: per-image sums need no sync")
    if not include_background and isinstance(input, Tensor) and input.dim() >= 2 and input.shape[1] < 2:
        raise ValueError("include_background=False needs C >= 2 channels")


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
    _check_args(input, reduction, smooth_nr, smooth_dr, batch, sync_stats, include_background)
    if stats is None:
        loss, s = _region_sums(input, target, mode, from_logits, ignore_index, backend, confusion, process_group,
                               weight=weight, include_background=include_background, batch=batch,
                               sync_stats=sync_stats, reduction=reduction, smooth_nr=smooth_nr,
                               smooth_dr=smooth_dr, log_loss=log_loss)
        if loss is not None:
            return loss
    else:
        s = _pool(stats, batch, sync_stats, process_group)
    # 2·tp + fp + fn = P + T; few small ops: at common sizes the formula's
    # autograd overhead is a visible part of the whole loss
    num, den = 2 * s[..., 0] + smooth_nr, s[..., 1] + s[..., 2] + smooth_dr
    score = num / den if smooth_dr > 0 else safe_ratio(num, den)
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
    _check_args(input, reduction, smooth_nr, smooth_dr, batch, sync_stats, include_background)
    loss, s = _region_sums(input, target, mode, from_logits, ignore_index, backend, confusion, process_group,
                           weight=weight, include_background=include_background, batch=batch,
                           sync_stats=sync_stats, reduction=reduction, ratio=(1.0, -1.0, 1.0, 1.0),
                           smooth_nr=smooth_nr, smooth_dr=smooth_dr, log_loss=log_loss)
    if loss is not None:
        return loss
    tp, fp, fn = tp_fp_fn(s)
    score = safe_ratio(tp + smooth_nr, tp + fp + fn + smooth_dr)
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
    _check_args(input, reduction, smooth_nr, smooth_dr, batch, sync_stats, include_background)
    if alpha < 0 or beta < 0 or gamma <= 0:
        raise ValueError("alpha and beta must be >= 0 and gamma > 0")
    loss, s = _region_sums(input, target, mode, from_logits, ignore_index, backend, confusion, process_group,
                           weight=weight, include_background=include_background, batch=batch,
                           sync_stats=sync_stats, reduction=reduction, ratio=(1.0, 1.0 - alpha - beta, alpha, beta),
                           smooth_nr=smooth_nr, smooth_dr=smooth_dr, log_loss=log_loss, gamma=gamma)
    if loss is not None:
        return loss
    tp, fp, fn = tp_fp_fn(s)
    score = safe_ratio(tp + smooth_nr, tp + alpha * fp + beta * fn + smooth_dr)
    return _finish(score, input, log_loss=log_loss, include_background=include_background,
                   weight=weight, reduction=reduction, gamma=gamma)


# generalized_dice_loss's w_type -> the finish kernel's code of its class weights
GDL_WEIGHTS = {"square": 1, "simple": 2, "uniform": 3}


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
    _check_args(input, reduction, smooth_nr, smooth_dr, batch, sync_stats, include_background)
    gdl = GDL_WEIGHTS.get(w_type)
    if gdl is None:
        raise ValueError(f"w_type must be 'square', 'simple' or 'uniform', got {w_type!r}")
    loss, s = _region_sums(input, target, mode, from_logits, ignore_index, backend, confusion, process_group,
                           weight=weight, include_background=include_background, batch=batch,
                           sync_stats=sync_stats, reduction=reduction, gdl=gdl, smooth_nr=smooth_nr,
                           smooth_dr=smooth_dr, log_loss=log_loss)
    if loss is not None:
        return loss
    C = input.shape[1]
    if not include_background:
        s = s[..., 1:, :]
    tp, fp, fn = tp_fp_fn(s)
    w = generalized_dice_weights(tp + fn, w_type, batch)
    user_w = check_weight(weight, C, s.device)
    if user_w is not None:
        w = w * (user_w if include_background else user_w[1:]).to(w.dtype)
    score = safe_ratio(2 * (tp * w).sum(-1) + smooth_nr, ((2 * tp + fp + fn) * w).sum(-1) + smooth_dr)
    f = -torch.log(score.clamp_min(1e-7)) if log_loss else 1.0 - score
    return _common.reduce_loss(f, reduction)


class _RegionLoss(torch.nn.Module):
    _fn = None

    def __init__(self, mode: str = "multiclass", *, from_logits: bool = True, ignore_index=None,
                 weight=None, include_background: bool = True, batch: bool = False,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
                 reduction: str = "mean", sync_stats: bool = False, process_group=None,
                 backend=None, **extra):
        super().__init__()
        self.kwargs = dict(mode=mode, from_logits=from_logits, ignore_index=ignore_index,
                           include_background=include_background, batch=batch, smooth_nr=smooth_nr,
                           smooth_dr=smooth_dr, log_loss=log_loss, reduction=reduction,
                           sync_stats=sync_stats, process_group=process_group, backend=backend, **extra)
        # A buffer, so .to(device) moves the class weights with the module.
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return type(self)._fn(input, target, weight=self.weight, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items() if k != "process_group")


class DiceLoss(_RegionLoss):
    """Module form of :func:`segfast.dice_loss`: the soft Dice loss.

    Holds the arguments; ``forward(input, target)`` calls :func:`segfast.dice_loss`
    (see it for the shapes, the formula and each argument).

    Args:
        mode: "multiclass", "multilabel" or "binary".
        {region_kwargs}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.DiceLoss("multiclass")
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.8333
        >>> loss.backward()
    """
    _fn = staticmethod(dice_loss)


class JaccardLoss(_RegionLoss):
    """Module form of :func:`segfast.jaccard_loss`: the soft IoU loss.

    Holds the arguments; ``forward(input, target)`` calls :func:`segfast.jaccard_loss`
    (see it for the shapes, the formula and each argument).

    Args:
        mode: "multiclass", "multilabel" or "binary".
        {region_kwargs}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.JaccardLoss("multiclass")
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.8889
        >>> loss.backward()
    """
    _fn = staticmethod(jaccard_loss)


class TverskyLoss(_RegionLoss):
    """Module form of :func:`segfast.tversky_loss`; gamma != 1 gives the focal Tversky loss.

    Holds the arguments; ``forward(input, target)`` calls :func:`segfast.tversky_loss`
    (see it for the shapes, the formula and each argument).

    Args:
        mode: "multiclass", "multilabel" or "binary".
        alpha: weight of the false positives, >= 0.
        beta: weight of the false negatives, >= 0.
        gamma: focal exponent, > 0.
        {region_kwargs}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.TverskyLoss("multiclass", alpha=0.3, beta=0.7)
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.8611
        >>> loss.backward()
    """
    _fn = staticmethod(tversky_loss)

    def __init__(self, mode: str = "multiclass", *, alpha: float = 0.5, beta: float = 0.5,
                 gamma: float = 1.0, **kwargs):
        super().__init__(mode, alpha=alpha, beta=beta, gamma=gamma, **kwargs)


class GeneralizedDiceLoss(_RegionLoss):
    """Module form of :func:`segfast.generalized_dice_loss`.

    Holds the arguments; ``forward(input, target)`` calls :func:`segfast.generalized_dice_loss`
    (see it for the shapes, the formula and each argument).

    Args:
        mode: "multiclass", "multilabel" or "binary".
        w_type: class weights from the target sums: "square", "simple" or "uniform".
        {region_kwargs}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.GeneralizedDiceLoss("multiclass")
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.6666
        >>> loss.backward()
    """
    _fn = staticmethod(generalized_dice_loss)

    def __init__(self, mode: str = "multiclass", *, w_type: str = "square", **kwargs):
        super().__init__(mode, w_type=w_type, **kwargs)


_doc.fill_modules(globals(), __name__)
