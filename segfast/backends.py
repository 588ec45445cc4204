"""Which backends are built and usable here, and how one is chosen.

Choice order: the ``backend=`` argument, else the ``SEGFAST_BACKEND``
environment variable, else the default for the tensor's device. A backend
that is not available, or does not fit the device, is an error: never a
silent fallback.

segfast._C does not link libtorch. A tensor reaches a kernel as its DLPack
capsule (:func:`view`: data pointer, dtype, sizes, element strides, device),
scalars as Python numbers and, on GPU, the CUDA stream as an int; the C++
side checks each view's rank, dtype, device and the sizes views share, and
the Python layer validates the user's arguments before a kernel runs. The kernels are
grouped by backend: ``_C.cpu.<name>(..., num_threads)`` and
``<_C or _C_emu>.cuda.<name>(..., stream)`` (see :func:`cuda_launch`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import sys
import time

import torch
from torch.utils.dlpack import to_dlpack as _to_dlpack

BACKENDS = ("triton", "cuda", "cpu", "torch")

# Must match csrc/common/dtypes.h.
DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
    torch.uint8: 4,
    torch.int32: 5,
    torch.int64: 6,
    torch.bool: 7,
}



def _openmp_from_torch() -> None:
    """Make the OpenMP runtime that torch loaded visible to segfast's modules.

    segfast._C is compiled with OpenMP but does not link a runtime (a wheel
    naming libgomp.so.1 is not manylinux, and a second runtime beside torch's
    would oversubscribe the cores): its GOMP_*/omp_* references resolve in the
    global symbol scope when the module loads. torch normally puts its
    libgomp there; where it does not, the loaded copy is promoted to global,
    else the system's libgomp is loaded.
    """
    import ctypes
    import ctypes.util

    def is_global() -> bool:
        return hasattr(ctypes.CDLL(None), "omp_get_max_threads")

    if is_global():
        return
    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if "/lib" in line and "omp" in line.rsplit("/", 1)[-1]}
    except OSError:
        loaded = set()
    for path in sorted(loaded):
        with contextlib.suppress(OSError):
            ctypes.CDLL(path, mode=os.RTLD_GLOBAL | os.RTLD_NOLOAD)
            if is_global():
                return
    name = ctypes.util.find_library("gomp")
    if name:
        with contextlib.suppress(OSError):
            ctypes.CDLL(name, mode=os.RTLD_GLOBAL)


_openmp_from_torch()

try:  # the compiled extension; absent only in a source tree that was never built
    from . import _C  # type: ignore[attr-defined]

    _C_ERROR = None
except ImportError as e:  # pragma: no cover - exercised only on broken installs
    _C = None
    _C_ERROR = e

try:  # the CUDA kernels on the CPU emulation layer (built with SEGFAST_CUDA_EMU=ON; tests)
    from . import _C_emu  # type: ignore[attr-defined]
except ImportError:
    _C_emu = None

# The cpu region kernels can keep softmax probabilities for the grad pass (ops/region.py _keeps).
HAVE_REGION_PROBS = bool(getattr(getattr(_C, "cpu", None), "REGION_GRAD_PROBS", False))


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def view(t: torch.Tensor | None):
    """The kernels' view of ``t``: its DLPack capsule (data pointer, dtype,
    sizes, element strides, device; csrc/bind/view.h reads it without
    consuming it), which keeps ``t``'s memory alive while the capsule lives;
    None for an absent optional tensor."""
    if t is None:
        return None
    try:
        return _to_dlpack(t)
    except (RuntimeError, TypeError, BufferError):
        # torch versions that refuse a tensor requiring grad, or bool (read as uint8 by every kernel)
        t = t.detach()
        return _to_dlpack(t.view(torch.uint8) if t.dtype == torch.bool else t)


# Elements per OpenMP thread below which a kernel runs on fewer threads: a
# parallel region costs microseconds to open and, on a busy machine, a
# spinning barrier can wait out a preempted thread for a whole scheduler tick.
CPU_GRAIN = 1 << 16


# On a machine whose cores are taken by other processes (DataLoader workers,
# other jobs), a kernel split in static shares over every core waits at its
# closing barrier for the share of a thread that the scheduler has preempted,
# a whole time slice or more, while the threads that are done spin and take
# the core from the very work they wait for. A kernel run on the cores that
# are free finishes sooner: the cpu backend counts the runnable threads of
# other processes (/proc/loadavg, sampled at most every LOAD_SAMPLE_S) and
# leaves them their cores. SEGFAST_CPU_ADAPTIVE=0 turns this off (always
# torch's count), and so does torch.use_deterministic_algorithms(True): the
# dense CRF's sums are ordered by its thread count (ops/crf.py).
LOAD_SAMPLE_S = 0.01
ADAPTIVE_THREADS = os.environ.get("SEGFAST_CPU_ADAPTIVE", "1") not in ("", "0")
try:
    _CORES = len(os.sched_getaffinity(0))
except (AttributeError, OSError):  # not Linux
    _CORES = os.cpu_count() or 1
_loadavg = [None]  # the open /proc/loadavg (-1: none here)
_sample = [-1.0, 0]  # [monotonic time, cores taken by other processes]


def _cores_taken(own: int) -> int:
    """Cores that runnable threads of other processes take: the machine's
    runnable count less this process's ``own`` threads (which may be
    spinning), sampled at most every LOAD_SAMPLE_S seconds; 0 without procfs."""
    now = time.monotonic()
    if now - _sample[0] >= LOAD_SAMPLE_S:
        if _loadavg[0] is None:
            try:
                _loadavg[0] = os.open("/proc/loadavg", os.O_RDONLY)
            except OSError:
                _loadavg[0] = -1
        running = 0
        if _loadavg[0] >= 0:
            try:  # "0.52 0.58 0.59 3/201 4242": the 4th field is runnable/all
                running = int(os.pread(_loadavg[0], 128, 0).split()[3].split(b"/")[0])
            except (OSError, ValueError, IndexError):
                pass
        _sample[0], _sample[1] = now, max(0, running - own)
    return _sample[1]


def cpu_threads(numel: int | None = None) -> int:
    """OpenMP threads the cpu backend uses: torch's count, fewer for small
    work, and no more than the cores other processes leave free (see above)."""
    n = max(1, torch.get_num_threads())
    if numel is not None:
        n = max(1, min(n, numel // CPU_GRAIN))
    if n > 1 and ADAPTIVE_THREADS and not torch.are_deterministic_algorithms_enabled():
        taken = _cores_taken(torch.get_num_threads())
        if taken:
            n = max(1, min(n, _CORES - taken))
    return n


# CPU outputs at least this large come from the block cache of segfast._C
# (csrc/cpu/block_cache.h). It keeps freed blocks up to the most bytes that
# were live at once lately (a training step's gradients and the tensors kept
# for backward: what the next step asks for again), and never more than
# SEGFAST_CPU_CACHE_MB (default 256; 0: no cache).
CACHE_MIN_BYTES = 4 << 20


def _cache_limit_mb() -> int:
    raw = os.environ.get("SEGFAST_CPU_CACHE_MB", "256")
    try:
        mb = int(raw)
    except ValueError:
        raise ValueError(f"SEGFAST_CPU_CACHE_MB must be a whole number of MiB, got {raw!r}") from None
    if mb < 0:
        raise ValueError(f"SEGFAST_CPU_CACHE_MB must be >= 0, got {mb}")
    return mb


CACHE_LIMIT_MB = _cache_limit_mb()
if _C is not None:
    _C.block_cache_set_limit(CACHE_LIMIT_MB << 20)


def _dense_strides(t: torch.Tensor):
    """t's strides when its elements fill a block without gaps or overlap
    (contiguous, channels_last, any permutation), else None."""
    expect = 1
    for d in sorted(range(t.dim()), key=t.stride):
        if t.shape[d] != 1:
            if t.stride(d) != expect:
                return None
            expect *= t.shape[d]
    return t.stride()


def empty_output(shape, dtype: torch.dtype, device: torch.device,
                 like: torch.Tensor | None = None) -> torch.Tensor:
    """An uninitialised tensor a kernel is about to write in full: like
    ``torch.empty`` (``torch.empty_like(like)``, with ``like``'s layout when it
    is dense), except that a large CPU one is a block of the output cache.

    A training step frees its gradient and asks for one of the same size on
    the next step; malloc gives large blocks back to the system (munmap, or a
    trimmed heap) and the next one is faulted in and zeroed by the kernel
    again (csrc/cpu/block_cache.h: for an 11 MiB Dice gradient that costs
    about as much as the loss's own kernels). The
    cache keeps freed blocks for reuse; ``segfast.empty_cache()`` gives them
    back, SEGFAST_CPU_CACHE_MB bounds it. The tensor is an ordinary CPU
    tensor (from DLPack) whose storage returns to the cache when it dies; it
    cannot be resized in place.
    """
    shape = tuple(shape)
    numel = math.prod(shape)
    nbytes = numel * dtype.itemsize
    if device.type != "cpu" or nbytes < CACHE_MIN_BYTES or _C is None or CACHE_LIMIT_MB == 0:
        t = torch.empty_like(like, dtype=dtype) if like is not None else torch.empty(shape, dtype=dtype, device=device)
        if device.type == "cpu" and nbytes >= CACHE_MIN_BYTES and _C is not None:
            _C.advise_huge_pages(t.data_ptr(), nbytes)  # fewer, larger faults (csrc/cpu/common.h)
        return t
    buf = torch.from_dlpack(_C.cpu_block(nbytes)).view(dtype)
    if like is not None and not like.is_contiguous():
        strides = _dense_strides(like)
        if strides is not None:
            return buf.as_strided(shape, strides)
    return buf.view(shape)


def empty_cache() -> int:
    """Give the CPU output cache's free blocks back to the system.

    The CPU counterpart of ``torch.cuda.empty_cache``: outputs of 4 MiB or
    more (loss gradients, CRF marginals) come from a cache of freed blocks;
    this releases the free ones at once.

    Returns:
        int: the bytes freed (0 when the extension is not built).

    Raises:
        Nothing.

    Example:
        >>> import segfast
        >>> segfast.empty_cache() >= 0
        True
    """
    return int(_C.block_cache_trim()) if _C is not None else 0


def cache_stats() -> dict:
    """Counters of the CPU output cache: cached/live bytes and blocks, hits, misses, limit."""
    return dict(_C.block_cache_stats()) if _C is not None else {}


def cuda_compiled() -> bool:
    return _C is not None and bool(_C.has_cuda())


def cuda_archs() -> list[str]:
    return list(_C.cuda_archs()) if cuda_compiled() else []


def _cuda_version_str(v: int) -> str:
    """cudaRuntimeGetVersion / cudaDriverGetVersion encoding (1000 * major + 10 * minor) as 'major.minor'."""
    return f"{v // 1000}.{v % 1000 // 10}"


def _arch_entries(archs: list[str]) -> tuple[list[int], list[int], list[int]]:
    """(SASS, exact-GPU SASS, PTX) compute capabilities (major * 10 + minor) of
    CMAKE_CUDA_ARCHITECTURES entries: '80-real' is SASS, '90-virtual' PTX, a
    plain '120' both; arch-specific '90a' is SASS for that GPU only."""
    sass, exact, ptx = [], [], []
    for a in archs:
        num, _, kind = a.partition("-")
        cc = int(num.rstrip("af"))
        if num.endswith("a"):
            exact.append(cc)
            continue
        if kind in ("", "real"):
            sass.append(cc)
        if kind in ("", "virtual") and not num.endswith("f"):
            ptx.append(cc)
    return sass, exact, ptx


def cuda_fit_reason(capability: tuple[int, int], driver_version: int, archs: list[str],
                    runtime_version: int) -> str | None:
    """Why CUDA kernels built for ``archs`` (CMAKE_CUDA_ARCHITECTURES entries) with
    the CUDA runtime ``runtime_version`` cannot run on a GPU of compute
    ``capability`` under a driver supporting CUDA ``driver_version`` (both in
    cudaDriverGetVersion's encoding, 12080 = 12.8), or None if they can.

    The driver must be of the runtime's major version or newer (CUDA minor
    version compatibility); SASS runs on GPUs of its major capability with an
    equal or higher minor one (sm_80 on sm_86 / sm_89); otherwise PTX of a lower
    capability is compiled by the driver, which must then be at least as new as
    the toolkit that wrote it."""
    rt = _cuda_version_str(runtime_version)
    other = "or use backend='triton' or 'torch'"
    if driver_version <= 0:
        return (f"no NVIDIA driver was found (the CUDA kernels need a driver for CUDA "
                f"{runtime_version // 1000}.0 or newer)")
    if driver_version // 1000 < runtime_version // 1000:
        need = {11: "450", 12: "525", 13: "580"}.get(runtime_version // 1000)
        return (f"the CUDA kernels use the CUDA {rt} runtime, which needs an NVIDIA driver for CUDA "
                f"{runtime_version // 1000}.0 or newer{f' (driver {need}+)' if need else ''}; this driver "
                f"supports CUDA {_cuda_version_str(driver_version)}: update the NVIDIA driver, {other}")
    cc = capability[0] * 10 + capability[1]
    sass, exact, ptx = _arch_entries(archs)
    if cc in exact or any(s // 10 == cc // 10 and s <= cc for s in sass):
        return None
    jit = [p for p in ptx if p <= cc]
    if jit and driver_version >= runtime_version:
        return None
    carried = ", ".join([f"sm_{s}" for s in sorted(sass + exact)] + [f"compute_{p} (PTX)" for p in ptx]) or "nothing"
    if jit:
        return (f"this GPU (sm_{cc}) can only run the CUDA kernels' PTX (compute_{max(jit)}), which needs a driver "
                f"for CUDA {rt} or newer to compile; this driver supports CUDA {_cuda_version_str(driver_version)}: "
                f"update the NVIDIA driver, {other}")
    return (f"the CUDA kernels carry {carried}, none of which runs on this GPU (compute capability "
            f"{capability[0]}.{capability[1]}): build segfast from source for it (SEGFAST_CUDA=ON "
            f"SKBUILD_CMAKE_ARGS=-DCMAKE_CUDA_ARCHITECTURES={cc} pip install --no-binary segfast segfast), {other}")


def constant_to_compile(fn):
    """``torch.compiler.assume_constant_result`` without importing torch._dynamo
    (a second of ``import segfast``) before torch.compile itself does: the mark
    that function sets, set here. torch.compile calls ``fn`` once while tracing
    and uses its result as a constant instead of tracing into it."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True
    return fn


@functools.lru_cache(maxsize=None)
def _cuda_device_reason_cached(index: int) -> str | None:
    capability = torch.cuda.get_device_capability(index)
    return cuda_fit_reason(capability, int(_C.cuda_driver_version()), cuda_archs(), int(_C.cuda_runtime_version()))


# A constant to torch.compile, like _triton_import_error.
@constant_to_compile
def _cuda_device_reason(index: int) -> str | None:
    return _cuda_device_reason_cached(index)


# The Triton ops are registered when the triton backend is first asked for,
# not at ``import segfast``: registering a torch.library.triton_op imports
# triton and torch's compiler stack (seconds), which a user of the cpu or cuda
# backends never needs. Each family hands its registration function to
# ``triton_ops``; ``_triton_import_error`` (which every choice of the triton
# backend passes through, also while torch.compile traces, as a constant)
# imports triton and runs them, once.
_TRITON_REGISTRATIONS: list = []
_TRITON_REGISTERED = [False]


def triton_ops(register):
    """Decorator: ``register`` (a family's Triton op definitions) runs once,
    when the triton backend is first found usable; at once if it already was."""
    _TRITON_REGISTRATIONS.append(register)
    if _TRITON_REGISTERED[0]:
        register()
    return register


def triton_op_attr(module: str, name: str):
    """A family module's ``__getattr__`` for its ``*_triton_op`` names: registers
    the Triton ops (they are module globals once registered)."""
    if name.endswith("_triton_op"):
        err = _triton_import_error()
        namespace = sys.modules[module].__dict__
        if name in namespace:
            return namespace[name]
        if err is not None:
            raise AttributeError(f"{module}.{name}: triton is not importable ({err})")
    raise AttributeError(f"module {module!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=None)
def _triton_import_error_cached() -> str | None:
    try:
        importlib.import_module("triton")
        importlib.import_module("segfast.triton_kernels")
    except Exception as e:  # ImportError, or a broken triton install
        return f"{type(e).__name__}: {e}"
    _TRITON_REGISTERED[0] = True
    for register in _TRITON_REGISTRATIONS:
        register()
    return None


# A constant to torch.compile: it would otherwise stop the graph at the cache.
@constant_to_compile
def _triton_import_error() -> str | None:
    return _triton_import_error_cached()


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device`` here, or None if it can."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"
    if backend == "torch":
        return None
    if backend == "cpu":
        if _C is None:
            return f"segfast._C is not built ({_C_ERROR})"
        if device.type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, got a tensor on {device}"
        return None
    if backend == "cuda":
        if device.type == "cpu" and _C_emu is not None:
            return None  # emulated (segfast._C_emu): only when asked for, never a default
        if not cuda_compiled():
            return "segfast._C was built without CUDA kernels (no nvcc at build time, or SEGFAST_CUDA=OFF)"
        if device.type != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, got a tensor on {device}"
        reason = _cuda_device_reason(device.index if device.index is not None else torch.cuda.current_device())
        return None if reason is None else f"{torch.cuda.get_device_name(device)}: {reason}"
    # triton
    err = _triton_import_error()
    if err is not None:
        return f"triton is not importable ({err})"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and triton_interpret():
        return None
    return (
        f"backend 'triton' runs on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1), "
        f"got a tensor on {device}"
    )


def default_backend(device: torch.device) -> str:
    if device.type == "cuda":
        return "triton" if unavailable_reason("triton", device) is None else (
            "cuda" if unavailable_reason("cuda", device) is None else "torch")
    if device.type == "cpu" and _C is not None:
        return "cpu"
    return "torch"


def choose(backend: str | None, device: torch.device) -> str:
    """Resolve the backend for tensors on ``device`` (see module docstring)."""
    if backend is None:
        backend = os.environ.get("SEGFAST_BACKEND") or None
    if backend is None:
        return default_backend(device)
    backend = backend.lower()
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(f"segfast: backend {backend!r} is not available: {reason}")
    return backend


def available(device: torch.device | str = "cpu") -> list[str]:
    device = torch.device(device)
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]


def cuda_stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


@contextlib.contextmanager
def cuda_launch(device: torch.device):
    """``(kernels, stream)`` for launching the ``cuda`` backend's kernels on
    tensors on ``device``: segfast._C.cuda and the current stream, inside
    ``torch.cuda.device(device)``, for a GPU; segfast._C_emu.cuda and stream 0
    (the same kernels on the CPU emulation layer, synchronous) for a CPU tensor."""
    if device.type == "cpu" and _C_emu is not None:
        yield _C_emu.cuda, 0
        return
    with torch.cuda.device(device):
        yield _C.cuda, cuda_stream(device)


def info() -> dict:
    """What is built and usable here (also ``python -m segfast info``)."""
    from . import __version__

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    gpu = torch.cuda.is_available()
    out = {
        "segfast": __version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "extension": "built" if _C is not None else f"missing ({_C_ERROR})",
        "cuda_kernels_compiled": cuda_compiled(),
        "cuda_archs": cuda_archs(),
        "cuda_runtime": _cuda_version_str(_C.cuda_runtime_version()) if cuda_compiled() else None,
        "cuda_driver": (_cuda_version_str(_C.cuda_driver_version()) if cuda_compiled() and _C.cuda_driver_version()
                        else None),
        "openmp_threads": cpu_threads(),
        "cpu_output_cache_mb": CACHE_LIMIT_MB,
        "gpu_visible": gpu,
        "gpu_name": torch.cuda.get_device_name() if gpu else None,
        "cuda_emulator": _C_emu is not None,
        "backends_cpu": [b + " (emulated)" if b == "cuda" else b for b in available("cpu")],
        "backends_cuda": available("cuda") if gpu else [],
        "cuda_backend_here": (unavailable_reason("cuda", torch.device("cuda")) or "usable") if gpu else None,
        "default_backend": default_backend(torch.device("cuda" if gpu else "cpu")),
        "triton_interpret": triton_interpret(),
    }
    return out
