"""Shared by every op family: validation and canonical views of
(input, target), the accumulation dtype, and how reducing kernels chunk
the pixels of an image."""

from __future__ import annotations

import math
import numbers
import os
from typing import Optional

import torch
from torch import Tensor

from .. import backends

# torch.library.triton_op (torch 2.6+) lets torch.compile trace into the Triton
# kernels; before it, the Triton ops are opaque custom ops (same results).
triton_op = getattr(torch.library, "triton_op", torch.library.custom_op)

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
LABELS = (torch.uint8, torch.int32, torch.int64)


def acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# Work items per SM that the Triton reducing kernels' grids aim for on CUDA.
PROGRAMS_PER_SM = 4
# Shortest pixel chunk of the CUDA C++ reducing kernels where no finer one is
# given: the wide stats kernel (csrc/cuda/region.cu stats_wide_kernel), one
# loop step of 8 warps over runs of 4 pixels.
CUDA_MIN_CHUNK = 1024

# CUDA C++ launch geometry (csrc/cuda/region.cu, pixel.cu; the constants are
# checked against the sources in tests/test_launch_geometry.py). Each kernel's
# shortest chunk is a few of its block's loop steps, so every thread of a
# block has work, and its blocks per SM are those resident at once (ptxas
# registers, python -m segfast.gpucheck.perf --cuda): the grid is one wave.
CUDA_VEC = 4  # pixels per run (csrc/cuda/vec.cuh kVec)
CUDA_STATS_THREADS = 256  # region.cu kStatsThreads
CUDA_STATS_STEPS = 8  # shortest stats chunk: 8 block steps (at most CUDA_MIN_CHUNK pixels)
CUDA_REG_MAX_C = 256  # region.cu kRegMaxC: larger C (float64: C > 128) take the wide kernel
# Resident 256-thread stats blocks per SM at 1 / 2 / 4 / 8 classes per lane
# (79 / 88 / 127 / 202 registers); the wide kernel: 2 (its launch bound).
CUDA_STATS_PER_SM = {1: 3, 2: 2, 4: 2, 8: 1}
CUDA_WIDE_PER_SM = 2
CUDA_GRAD_THREADS = 64  # region.cu kGradThreads: one run per thread, a block per 256 pixels
CUDA_PIXEL_THREADS = 64  # pixel.cu kThreads
CUDA_PIXEL_CHUNK = CUDA_PIXEL_THREADS * CUDA_VEC  # one block step: C runs per thread
# Resident 64-thread pixel blocks per SM of the float32 softmax kernels (80 to
# 96 registers: 10 to 12; the sigmoid ones 56 to 72: 14 to 18).
CUDA_PIXEL_PER_SM = 10


def sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def cuda_stats_geometry(C: int, float64: bool) -> tuple:
    """-> (shortest pixel chunk, blocks per SM) of region.cu's stats pass for C
    classes (launch_stats). stats_kernel's warps are G class lanes (a power
    of 2, CPT classes each) x 32 / G runs of CUDA_VEC pixels, so a block step
    covers 8 warps x 32 / G runs (32 pixels at C = 21); the chunk is
    CUDA_STATS_STEPS steps, at most CUDA_MIN_CHUNK pixels. The wide kernel:
    CUDA_MIN_CHUNK."""
    if C > CUDA_REG_MAX_C or (float64 and C > CUDA_REG_MAX_C // 2):
        return CUDA_MIN_CHUNK, CUDA_WIDE_PER_SM
    cpt = 1 if C <= 32 else 2 if C <= 64 else 4 if C <= 128 else 8
    G = 1
    while G * cpt < C:
        G *= 2
    step = CUDA_STATS_THREADS // 32 * (32 // G) * CUDA_VEC
    return min(CUDA_MIN_CHUNK, CUDA_STATS_STEPS * step), CUDA_STATS_PER_SM[cpt]


def cuda_chunks(N: int, S: int, sms: int, min_chunk: int, per_sm: int) -> int:
    """Chunks per image of a CUDA C++ reducing kernel: N x chunks blocks, at
    most ``per_sm`` per SM (one wave), never chunks under ``min_chunk`` pixels."""
    return max(1, min(per_sm * sms // max(N, 1), math.ceil(S / min_chunk)))


def num_chunks(N: int, S: int, device: torch.device, *, min_chunk: int = CUDA_MIN_CHUNK,
               per_sm: int = PROGRAMS_PER_SM) -> int:
    """How many pixel chunks per image the C++ / CUDA reducing kernels split S into.

    On CUDA :func:`cuda_chunks` for the kernel's ``min_chunk`` and ``per_sm``
    (:func:`stats_chunks`, :func:`pixel_chunks`); on the CPU enough work
    items for 4 per thread, never chunks under 2048 pixels. The Triton
    kernels size theirs with :func:`triton_chunks`.
    """
    if device.type == "cuda":
        return cuda_chunks(N, S, sm_count(device), min_chunk, per_sm)
    return max(1, min(math.ceil(4 * backends.cpu_threads() / max(N, 1)), math.ceil(S / 2048)))


def stats_chunks(N: int, C: int, S: int, device: torch.device, float64: bool) -> int:
    """P of the C++ / CUDA region stats pass (:func:`num_chunks` at its geometry)."""
    min_chunk, per_sm = cuda_stats_geometry(C, float64)
    return num_chunks(N, S, device, min_chunk=min_chunk, per_sm=per_sm)


def pixel_chunks(N: int, S: int, device: torch.device) -> int:
    """P of the C++ / CUDA pixel loss kernels (:func:`num_chunks` for their 64-thread blocks)."""
    return num_chunks(N, S, device, min_chunk=CUDA_PIXEL_CHUNK, per_sm=CUDA_PIXEL_PER_SM)


def triton_chunks(tk, N: int, C: int, S: int, device: torch.device, **kw) -> int:
    """P for the Triton kernel module ``tk`` (triton_kernels.region / .pixel):
    on CUDA sized from the device's SM count, in chunks of whole pixel blocks
    (``tk.default_chunks``; the launcher rounds the chunk length to a multiple
    of BLOCK_S, which keeps the loads 128 bits wide); elsewhere (the
    interpreter) :func:`num_chunks`. ``kw`` goes to ``default_chunks`` (the
    pixel kernels' ``kind``, whose tiles differ)."""
    if device.type == "cuda":
        return tk.default_chunks(N, C, S, sm_count(device), PROGRAMS_PER_SM, **kw)
    return num_chunks(N, S, device)


def target_args(t: Tensor, is_label: bool):
    """-> (target as the kernels read it, its (N, C, S) element strides)."""
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    if is_label:  # [N, S]
        return t, (t.stride(0), 0, t.stride(1))
    return t, tuple(t.stride())


def check_input(input, target) -> None:
    if not isinstance(input, Tensor) or not isinstance(target, Tensor):
        raise TypeError("input and target must be tensors")
    if input.dtype not in FLOATS:
        raise TypeError(f"input must be float32/float16/bfloat16/float64, got {input.dtype}")
    if input.dim() < 2:
        raise ValueError(f"input must be (N, C, *spatial), got shape {tuple(input.shape)}")
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}")


def canonical(input: Tensor, target: Tensor, *, act: int, binary: bool = False,
              ignore_index=None, backend: Optional[str] = None, label_offset: Optional[int] = None,
              triton_float64: bool = False, kernel_label_check: tuple = ()):
    """-> (x [N,C,S], t, is_label, act, label_offset, ignore_value, backend).

    Float/bool targets are dense [N, C, *] (or [N, *] when C = 1); integer
    targets are class indices [N, *] or [N, 1, *], in [0, C) (in {0, 1} when
    ``binary``) unless equal to ``ignore_index``. An input without spatial
    dims, (N, C), is read as one pixel per sample (targets (N, C), (N,) or
    (N, 1)). ``kernel_label_check``: the backends whose kernels check the
    labels' range themselves on the device (the caller then asserts on
    their flag, or the loss turns NaN); there, with device checks (:func:`host_checks` false), the
    labels are not read here. ``label_offset`` (default:
    1 if ``binary`` else 0) says which label channel 0 stands for: input
    channel c is label c + label_offset, labels lie in [0, C + label_offset). Every error a user can
    trigger is raised here, before a kernel runs, except the labels' range on
    the backends of ``kernel_label_check`` off the host checks: their kernels
    check it on the device.
    """
    check_input(input, target)
    if input.dim() == 2:  # (N, C) scores: one pixel per sample
        input, target = input.unsqueeze(-1), target.unsqueeze(-1)
    N, C = input.shape[:2]
    spatial = tuple(input.shape[2:])
    ignore_index = check_ignore_index(ignore_index)
    floating = target.dtype in FLOATS or target.dtype == torch.bool
    if not floating and target.dtype not in LABELS:
        raise TypeError(f"class-index targets must be uint8/int32/int64, got {target.dtype}")
    shape = tuple(target.shape)
    if floating:
        if C == 1 and shape == (N, *spatial):
            target = target.unsqueeze(1)
        elif shape != (N, C, *spatial):
            raise ValueError(f"dense target must have the input's shape {(N, C, *spatial)}, got {shape}")
        t = target.flatten(2)
    else:
        if shape == (N, 1, *spatial):
            target = target.squeeze(1)
        elif shape != (N, *spatial):
            raise ValueError(f"class-index target must be (N, *spatial) or (N, 1, *spatial) = "
                             f"{(N, *spatial)}, got {shape}")
        t = target.flatten(1)
    offset = int(binary) if label_offset is None else label_offset
    # Families whose Triton kernels compute float64 in float64 (lovasz) say so.
    backend = backends.choose(backend, input.device) if triton_float64 else float64_backend(backend, input)
    if (not floating and not torch.compiler.is_compiling() and t.numel()
            and not (backend in kernel_label_check and not host_checks(t.device))):
        _check_labels(t, C + offset, ignore_index)
    if ignore_index is not None and not floating and math.isinf(ignore_index):
        ignore_index = None  # no label equals it
    ignore = None if ignore_index is None else float(ignore_index)
    return input.flatten(2), t, not floating, act, offset, ignore, backend


def host_checks(device: torch.device) -> bool:
    """Whether checks of tensor values on ``device`` read them on the host:
    on the CPU (free), or anywhere with SEGFAST_CHECKS=host (a debugging aid:
    on a GPU each check then synchronises the stream). On CUDA they run on
    the device instead (see :func:`require`)."""
    return device.type != "cuda" or os.environ.get("SEGFAST_CHECKS", "") == "host"


def is_one_on_host(g: Tensor) -> bool:
    """Whether ``g`` is an eager CPU tensor equal to 1: read only where a
    read is free (never a CUDA value, nor a traced subclass), so a backward
    can skip scaling by a grad_output of 1."""
    return type(g) is torch.Tensor and g.device.type == "cpu" and float(g) == 1.0


def require(ok: Tensor, message: str) -> None:
    """Raise ValueError(message) unless the 0-d bool tensor ``ok`` is true.

    Read on the host where :func:`host_checks` says so. On CUDA the device
    checks it in stream order (``torch._assert_async``), without a host
    synchronisation: a failure is a device-side assertion, reported by the
    next synchronising call (the CUDA context is unusable afterwards, as
    after torch's own out-of-range class index in nll_loss); rerun with
    SEGFAST_CHECKS=host (or on the CPU) for the ValueError. Not checked
    under torch.compile."""
    if torch.compiler.is_compiling():
        return
    if host_checks(ok.device):
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)
def float64_backend(backend: Optional[str], input: Tensor) -> str:
    """backends.choose, and float64 kept float64: the Triton kernels compute in
    float32, so float64 input on ``triton`` is refused (a clear TypeError,
    never float64 that is float32 inside) and by default goes to the CUDA C++
    kernels (or torch) instead."""
    if backend is None and not os.environ.get("SEGFAST_BACKEND") and input.dtype == torch.float64:
        chosen = backends.choose(None, input.device)
        if chosen == "triton":
            return "cuda" if backends.unavailable_reason("cuda", input.device) is None else "torch"
        return chosen
    chosen = backends.choose(backend, input.device)
    if chosen == "triton" and input.dtype == torch.float64:
        raise TypeError("segfast: the triton backend computes in float32 and refuses float64 input "
                        f"(shape {tuple(input.shape)}); use backend='cpu', 'cuda' or 'torch' for float64")
    return chosen


# Labels and the ignore value meet the kernels as a double: integers beyond
# 2**53 would not compare exactly.
_IGNORE_MAX = 2**53


def check_ignore_index(ignore_index):
    """-> ignore_index as a Python int (or None). Integers of any kind (int,
    numpy integers, 0-d integer tensors) and integral floats are accepted; a
    non-integral number is a TypeError (a label is never 1.5), as in
    torch.nn.functional.cross_entropy. +-inf is kept: a sentinel that no
    label equals, which dense targets may hold."""
    if ignore_index is None:
        return None
    v = ignore_index
    if isinstance(v, Tensor):
        if v.numel() != 1 or v.dim() != 0 or v.dtype == torch.bool:
            raise TypeError(f"ignore_index must be an integer or None, got a tensor of shape {tuple(v.shape)} "
                            f"and dtype {v.dtype}")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (numbers.Integral, numbers.Real)):
        raise TypeError(f"ignore_index must be an integer or None, got {ignore_index!r}")
    if not isinstance(v, numbers.Integral):
        f = float(v)
        if math.isinf(f):  # a sentinel no label equals (dense targets may hold it)
            return f
        if not f.is_integer():
            raise TypeError(f"ignore_index must be an integer or None, got {ignore_index!r}")
        v = f
    v = int(v)
    if abs(v) > _IGNORE_MAX:
        raise ValueError(f"ignore_index must be in [-2**53, 2**53] (exact as a double), got {v}")
    return v


def label_message(t: Tensor, n: int, ignore_index) -> str:
    """The error of a device-side label range check of ``t`` against [0, n)."""
    return (f"target (shape {tuple(t.shape)}) has a label outside [0, {n})"
            + ("" if ignore_index is None else f" that is not ignore_index={ignore_index}"))


def _check_labels(t: Tensor, n: int, ignore_index) -> None:
    if not host_checks(t.device):
        v = t if ignore_index is None else torch.where(t == ignore_index, 0, t)
        lo, hi = torch.aminmax(v)
        require((lo >= 0) & (hi < n), label_message(t, n, ignore_index))
        return
    if t.device.type == "cpu" and t.dim() == 2 and backends._C is not None:
        # one read in C++; torch needs an aminmax (after a compare and a where with ignore_index)
        ign = ignore_index is not None and float(ignore_index).is_integer() and abs(ignore_index) < 2**62
        lo, hi = backends._C.cpu.label_range(backends.view(t), int(ignore_index) if ign else None,
                                             backends.cpu_threads(t.numel()))
        if lo > hi:  # every label ignored
            return
    else:
        lo, hi = torch.aminmax(t if ignore_index is None else torch.where(t == ignore_index, 0, t))
        lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        raise ValueError(f"target has label {bad} outside [0, {n})"
                         + ("" if ignore_index is None else f" that is not ignore_index={ignore_index}"))


def check_weight(weight, C: int, device) -> Optional[Tensor]:
    """-> the class weights as float32 [C] on ``device``. A list or CPU tensor
    is checked on the host before it moves; a CUDA tensor on the device."""
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=torch.float32).reshape(-1)
    if w.numel() == 1:
        w = w.expand(C)
    if w.numel() != C:
        raise ValueError(f"weight must have one entry per class ({C}), got {w.numel()}")
    if not torch.compiler.is_compiling():
        if host_checks(w.device):
            if bool((w < 0).any()):
                raise ValueError("weight entries must be >= 0")
        else:
            require(~(w < 0).any(), f"weight (shape {tuple(w.shape)}) entries must be >= 0")
    return w.to(device)


def differentiable_once(grads: tuple, what: str) -> tuple:
    """The gradients a kernel backward returns, marked as torch's
    ``once_differentiable`` marks them: under create_graph=True they require
    grad, and differentiating them again raises (instead of a second
    derivative silently taken as 0). ``what`` names the loss family."""
    if not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return grads
    idx = [i for i, g in enumerate(grads) if isinstance(g, Tensor)]
    if not idx:
        return grads
    err = torch._C._functions.DelayedError(
        f"segfast: the {what} kernels are differentiable once; a second derivative "
        "(create_graph=True, e.g. a gradient penalty) needs backend='torch'".encode(), len(idx))
    outs = err(*[grads[i].detach().requires_grad_(True) for i in idx])
    outs = (outs,) if isinstance(outs, Tensor) else tuple(outs)
    grads = list(grads)
    for i, o in zip(idx, outs):
        grads[i] = o
    return tuple(grads)


def check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def reduce_loss(f: Tensor, reduction: str) -> Tensor:
    """"mean" | "sum" | "none"; the mean over an empty batch is 0, not NaN
    (torchvision's convention)."""
    if reduction == "mean":
        return f.mean() if f.numel() else f.sum()
    if reduction == "sum":
        return f.sum()
    return f
