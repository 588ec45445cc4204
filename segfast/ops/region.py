"""Region losses (Dice, soft IoU, Tversky, generalized Dice): the two kernels
as torch.library ops, input validation, and the formulas on the sums.

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
inputs) and the other backends take the torch formulas of
segfast/functional.py.
"""

# torch.library.custom_op infers the op schemas from annotations: they stay real
# types (no `from __future__ import annotations`, whose strings torch 2.4 cannot
# read; typing.List, as list[float] is unsupported before torch 2.7).
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import backends
from ..reference import region as ref
from . import _common
from ._common import (acc_dtype, canonical, check_ignore_index, check_input, check_reduction,  # noqa: F401
                      check_weight, differentiable_once, num_chunks, target_args, triton_chunks, triton_op)

K = ref.K
KX = ref.KX
# Backends whose stats kernel checks the labels' range on the device (a flag).
# On cuda only finish_loss reads the flag; plane_stats checks with torch ops.
LABEL_CHECK_BACKENDS = ("triton", "cuda")
ACT = {"identity": ref.ACT_IDENTITY, "sigmoid": ref.ACT_SIGMOID, "softmax": ref.ACT_SOFTMAX}
MODES = ("binary", "multiclass", "multilabel")


# ---------------------------------------------------------------- C++ / CUDA


def _stats_ext_args(x, t, is_label, act, label_offset, ignore_value, xent, gamma, P, out) -> tuple:
    """The leading arguments of region_stats_cpu / region_stats_cuda: partial sums of P chunks into ``out``."""
    N, C, S = x.shape
    t, ts = target_args(t, is_label)
    return (x.data_ptr(), backends.dtype_code(x), *x.stride(),
            t.data_ptr(), backends.dtype_code(t), int(is_label), *ts,
            N, C, S, P, act, int(xent), float(gamma), label_offset, int(ignore_value is not None),
            float(ignore_value if ignore_value is not None else 0.0), out.data_ptr())


def _launch_stats_ext(x, t, is_label, act, label_offset, ignore_value, backend, xent, gamma, mr=None, q=None,
                      conf=None):
    N, C, S = x.shape
    P = num_chunks(N, S, x.device)
    out = torch.empty((N, P, C, KX if xent else K), dtype=acc_dtype(x), device=x.device)
    args = _stats_ext_args(x, t, is_label, act, label_offset, ignore_value, xent, gamma, P, out)
    if backend == "cpu":
        backends._C.region_stats_cpu(*args, backends.cpu_threads(x.numel()), 0 if mr is None else mr.data_ptr(),
                                     *((0, 0, 0) if q is None else (q.data_ptr(), q.stride(0), q.stride(1))),
                                     conf_ptr=0 if conf is None else conf.data_ptr())
    else:
        with backends.cuda_launch(x.device) as (kernels, stream):
            kernels.region_stats_cuda(*args, stream, confusion_ptr=0 if conf is None else conf.data_ptr())
    return out[:, 0] if P == 1 else out.sum(1)  # one chunk per image (N >= the workers): no sum op


def _launch_grad_ext(x, t, g, is_label, act, label_offset, ignore_value, backend, xent, gamma, mr=None, go=None):
    N, C, S = x.shape
    dx = backends.empty_output(x.shape, x.dtype, x.device, like=x)
    g = g.to(acc_dtype(x)).contiguous()
    t, ts = target_args(t, is_label)
    args = (x.data_ptr(), backends.dtype_code(x), *x.stride(),
            t.data_ptr(), backends.dtype_code(t), int(is_label), *ts,
            N, C, S, act, int(xent), float(gamma), label_offset, int(ignore_value is not None),
            float(ignore_value if ignore_value is not None else 0.0),
            g.data_ptr(), dx.data_ptr(), *dx.stride())
    if backend == "cpu":
        backends._C.region_grad_cpu(*args, backends.cpu_threads(x.numel()), 0 if mr is None else mr.data_ptr())
    else:
        with backends.cuda_launch(x.device) as (kernels, stream):
            kernels.region_grad_cuda(*args, stream, go_ptr=0 if go is None else go.data_ptr())
    return dx


def _stats_impl(x: Tensor, target: Tensor, is_label: bool, act: int, label_offset: int,
                    ignore_value: Optional[float], backend: str, xent: int = 0, gamma: float = 0.0,
                mr: Optional[Tensor] = None, q: Optional[Tensor] = None, conf: Optional[Tensor] = None) -> Tensor:
    """Per-plane sums [N, C, 7] ([N, C, 9] with ``xent``) with the C++ (``cpu``) or CUDA (``cuda``) kernels.
    ``mr`` (cpu, see _keeps_mr): filled with each pixel's softmax max and 1/sum for the grad pass;
    ``q`` (cpu, see _keeps_q): filled with v·p for _grad_from_q;
    ``conf`` (see _conf_kernel_supported): int64 [C, C] confusion counts, added to."""
    if x.numel() == 0:
        return x.new_zeros((x.shape[0], x.shape[1], KX if xent else K), dtype=acc_dtype(x))
    return _launch_stats_ext(x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma, mr, q,
                             conf)


def _grad_impl(x: Tensor, target: Tensor, g: Tensor, is_label: bool, act: int,
                   label_offset: int, ignore_value: Optional[float], backend: str, xent: int = 0,
               gamma: float = 0.0, mr: Optional[Tensor] = None) -> Tensor:
    """dLoss/dx [N, C, S] from dLoss/dStats ``g`` [N, C, 7] (or [N, C, 9] with ``xent``)."""
    if x.numel() == 0:
        return torch.zeros_like(x)
    return _launch_grad_ext(x, target, g, is_label, act, label_offset, ignore_value, backend, xent, gamma, mr)


def _keeps_mr(x: Tensor, is_label: bool, act: int, backend: str, xent: int) -> bool:
    """Whether the cpu stats pass keeps each pixel's softmax max and 1/sum
    ([2, N, S] float32, 5% of float32 logits at C = 21) for the grad pass, which
    then skips its max pass: the kernels' fast path (csrc/cpu/region.cpp
    fast_ok) with no pixel term."""
    return (backend == "cpu" and is_label and act == ACT["softmax"] and not xent
            and x.dtype != torch.float64 and x.numel() > 0)


def _keeps_q(x: Tensor, is_label: bool, act: int, backend: str, xent: int) -> bool:
    """Whether the cpu stats pass keeps q = v·p, the probabilities it computes
    anyway, in the buffer that becomes dLoss/dx: the grad pass then reads q
    and writes dx over it without recomputing a single exp (the exps are most
    of both passes' arithmetic). The gradient's memory is then taken at the
    forward instead of the backward; a forward + backward peaks no higher
    (1.0x the logits at 8 x 21 x 128 x 128, against 1.09x with _keeps_mr).
    float32 input with unit pixel stride, so the gradient and q share dtype
    and layout; else _keeps_mr. Dice step at 8 x 21 x 128 x 128 on 2 cores:
    stats +0.1 ms, grad -0.22 ms."""
    return (_keeps_mr(x, is_label, act, backend, xent) and x.dtype == torch.float32
            and x.stride(2) == 1 and backends.HAVE_REGION_PROBS)


def _grad_from_q(q: Tensor, target: Tensor, g: Tensor, label_offset: int, ignore_value: Optional[float]) -> Tensor:
    """dLoss/dx written over q (see _keeps_q) from dLoss/dStats ``g`` [N, C, 7]; returns q."""
    N, C, S = q.shape
    g = g.to(torch.float32).contiguous()
    t, ts = target_args(target, True)
    backends._C.region_grad_probs_cpu(q.data_ptr(), backends.dtype_code(q), *q.stride(), t.data_ptr(),
                                      backends.dtype_code(t), 1, *ts, N, C, S, label_offset,
                                      int(ignore_value is not None),
                                      float(ignore_value if ignore_value is not None else 0.0),
                                      g.data_ptr(), backends.cpu_threads(q.numel()))
    return q


def _stats_op(x: Tensor, target: Tensor, is_label: bool, act: int, label_offset: int,
              ignore_value: Optional[float], backend: str, xent: int = 0, gamma: float = 0.0) -> Tensor:
    """_stats_impl as a torch.library op (nothing kept for the grad pass)."""
    return _stats_impl(x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma)


def _grad_op(x: Tensor, target: Tensor, g: Tensor, is_label: bool, act: int, label_offset: int,
             ignore_value: Optional[float], backend: str, xent: int = 0, gamma: float = 0.0) -> Tensor:
    """_grad_impl as a torch.library op."""
    return _grad_impl(x, target, g, is_label, act, label_offset, ignore_value, backend, xent, gamma)


region_stats_op = torch.library.custom_op("segfast::region_stats", _stats_op, mutates_args=())
region_grad_op = torch.library.custom_op("segfast::region_grad", _grad_op, mutates_args=())


# ---------------------------------------------------------------- fake + autograd


@region_stats_op.register_fake
def _(x, target, is_label, act, label_offset, ignore_value, backend, xent=0, gamma=0.0):
    return x.new_empty((x.shape[0], x.shape[1], KX if xent else K), dtype=acc_dtype(x))


@region_grad_op.register_fake
def _(x, target, g, is_label, act, label_offset, ignore_value, backend, xent=0, gamma=0.0):
    return torch.empty_like(x)


def _setup(ctx, inputs, output):
    x, target, is_label, act, label_offset, ignore_value = inputs[:6]
    ctx.save_for_backward(x, target)
    ctx.args = (is_label, act, label_offset, ignore_value) + tuple(inputs[6:])


def _backward_ext(ctx, grad):
    x, target = ctx.saved_tensors
    dx = region_grad_op(x, target, grad, *ctx.args)
    return differentiable_once((dx, None, None, None, None, None, None, None, None), "region-loss")


region_stats_op.register_autograd(_backward_ext, setup_context=_setup)


class _EagerStats(torch.autograd.Function):
    """The same kernels as region_stats_op without torch.library's Python
    dispatch (about 0.1 ms a call each way, a fair share of a small loss):
    used in eager mode on plain tensors; torch.compile, export and fake
    tensors see the op."""

    @staticmethod
    def forward(ctx, x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma, conf=None):
        ctx.save_for_backward(x, target)
        ctx.args = (is_label, act, label_offset, ignore_value, backend, xent, gamma)
        ctx.mr = ctx.q = None
        if ctx.needs_input_grad[0]:
            if _keeps_q(x, is_label, act, backend, xent):  # x's layout, so unit pixel stride too
                ctx.q = backends.empty_output(x.shape, x.dtype, x.device, like=x)
            elif _keeps_mr(x, is_label, act, backend, xent):
                ctx.mr = torch.empty((2, x.shape[0], x.shape[2]), dtype=torch.float32)
        return _stats_impl(x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma,
                           ctx.mr, ctx.q, conf)

    @staticmethod
    def backward(ctx, grad):
        x, target = ctx.saved_tensors
        with torch.no_grad():
            if ctx.q is not None:  # consumed: a second backward (retain_graph) recomputes from x
                q, ctx.q = ctx.q, None
                dx = _grad_from_q(q, target, grad, ctx.args[2], ctx.args[3])
            else:
                dx = _grad_impl(x, target, grad, *ctx.args, mr=ctx.mr)
        return differentiable_once((dx,) + (None,) * 9, "region-loss")


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
               iparams: List[int], check: str = "", count: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (the scalar loss, dLoss/dStats [N, C, KO] at grad_output 1, the confusion
    counts [C, C] of the stats pass with ``count``, else [0, 0]) with the CUDA
    kernels; the arguments as region_loss_triton's (see :func:`finish_loss`)."""
    N, C, S = x.shape
    KO = KX if xent else K
    P = num_chunks(N, S, x.device)
    acc = dict(dtype=acc_dtype(x), device=x.device)
    part = torch.empty((N, P, C, KO), **acc)
    flag = torch.zeros(1, dtype=torch.int32, device=x.device) if check else None
    counts = (torch.zeros if count else torch.empty)((C, C) if count else (0, 0), dtype=torch.int64, device=x.device)
    sums, coef, loss = torch.empty((N, C, KO), **acc), torch.empty((N, C, KO), **acc), torch.empty((), **acc)
    ok = torch.empty(1, dtype=torch.uint8, device=x.device)
    w, pw = (None if v is None else v.to(acc_dtype(x)).contiguous() for v in (w, pw))
    ptr = lambda v: 0 if v is None else v.data_ptr()  # noqa: E731
    with backends.cuda_launch(x.device) as (kernels, stream):
        kernels.region_stats_cuda(*_stats_ext_args(x, target, is_label, act, label_offset, ignore_value, xent,
                                                   gamma, P, part),
                                  stream, flag_ptr=ptr(flag), confusion_ptr=ptr(counts if count else None))
        kernels.region_finish_cuda(part.data_ptr(), sums.data_ptr(), coef.data_ptr(), loss.data_ptr(),
                                   ok.data_ptr(), ptr(flag), ptr(w), ptr(pw), backends.dtype_code(part), N, C, P,
                                   KO, *(float(v) for v in fparams), *(int(v) for v in iparams), int(xent), stream)
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
            return _EagerStats.apply(*args, backend, xent, float(gamma), confusion)
        else:
            out, counts = region_stats_conf_op(*args, backend, xent, float(gamma))
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
        return _EagerStats.apply(*args, backend, xent, float(gamma))
    return region_stats_op(*args, backend, xent, float(gamma))


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
    ``reduction`` as in segfast.functional. The pixel term (``lam_x`` times;
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
                   gamma: float = 0.0) -> Tuple[Tensor, Tensor]:
    """_stats_op that also returns the confusion counts [C, C] (int64) of the same pass."""
    conf = torch.zeros((x.shape[1], x.shape[1]), dtype=torch.int64, device=x.device)
    return _stats_impl(x, target, is_label, act, label_offset, ignore_value, backend, xent, gamma,
                       conf=conf), conf


region_stats_conf_op = torch.library.custom_op("segfast::region_stats_conf", _stats_conf_op, mutates_args=())


@region_stats_conf_op.register_fake
def _(x, target, is_label, act, label_offset, ignore_value, backend, xent=0, gamma=0.0):
    C = x.shape[1]
    return (x.new_empty((x.shape[0], C, KX if xent else K), dtype=acc_dtype(x)),
            x.new_empty((C, C), dtype=torch.int64))


def _backward_conf(ctx, grad, _grad_counts):
    return _backward_ext(ctx, grad)


region_stats_conf_op.register_autograd(_backward_conf, setup_context=_setup)


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
