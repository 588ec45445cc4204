"""Static performance report of the Triton loss path for a GPU model, without a GPU.

For each public loss call (forward + backward) and benchmark shape
(float32 logits, int64 labels), ``report()`` runs the call on CPU tensors in
the Triton interpreter with the kernels *not* executed (launches are only
recorded, as on an H100: the grids are sized for the model's SM count) and a
dispatch mode that sees every torch op, then compiles each streaming kernel
launch ahead of time for the model's architecture with the divisibility
hints of its own arguments (``triton_aot.exact``). It reports:

* per call: kernel launches (Triton + torch ops that are each a CUDA kernel),
  host synchronisations (reads of a device value, with the value checks on
  their GPU path), the ideal bytes (one read of logits and labels, one write
  of the gradient) and the bytes the launches move;
* per streaming kernel launch: programs against the SM count (``per_sm``),
  registers, theoretical resident programs per SM (``occ``) and waves, global
  load / store vector widths, and of its loops (``perf_ptx``): the loads of
  logits and targets inside a loop by width (``ld_stream_128``: 128 bits per
  thread, ``ld_stream_narrow``: less), block barriers inside a loop
  (``bar_loop``) and the software pipeline's asynchronous copies inside a
  loop (``cp_async_loop``, the widest in bytes: ``cp_async_bytes``; 0 when the
  loop is not pipelined).

Bytes a launch moves are modelled, not measured: a Triton kernel reads or
writes each of its tensor arguments once (the kernels' paths at C <= 32
read a tile of x once), a torch op reads its inputs and writes its outputs.
Timings need a GPU: ``segfast-bench`` on one.

``python -m segfast.gpucheck.perf --gpu-model h100`` (or ``segfast-bench
--gpu-model h100``) prints the table; ``--cuda`` adds the cuda backend's
streaming kernels: their grids at the shapes (``cuda_grids``) and their
resources compiled with nvcc (``cuda_report``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
from typing import Callable, Optional

from . import triton_aot

# Per-SM limits used for the theoretical programs per SM.
MODELS = {
    "h100": dict(name="H100 SXM", arch=90, sms=132, regs=65536, warps=64, blocks=32, smem=228 * 1024),
    "a100": dict(name="A100", arch=80, sms=108, regs=65536, warps=64, blocks=32, smem=164 * 1024),
}
SHAPES = ((8, 21, 128, 128), (16, 21, 512, 512), (8, 64, 128, 128), (8, 150, 128, 128), (8, 300, 128, 128))
STREAMING = triton_aot.NO_SPILL  # the streaming loss kernels
# Launches per forward + backward that a fused formula reaches.
LAUNCH_TARGETS = {"dice": 10, "dice_ce": 12, "ce": 3, "bce": 3, "focal_sigmoid": 3}

# Torch ops that launch no CUDA kernel (views, metadata, allocation).
NO_KERNEL = {
    "view", "_unsafe_view", "reshape", "expand", "permute", "t", "transpose", "squeeze", "unsqueeze",
    "as_strided", "detach", "alias", "slice", "select", "empty", "empty_like", "empty_strided",
    "new_empty", "new_empty_strided", "lift_fresh", "_reshape_alias", "unbind", "split", "chunk",
    "narrow", "diagonal", "view_as_real", "view_as_complex", "_to_copy_noop", "set_", "resize_",
    "is_same_size", "size", "stride", "sym_size", "sym_stride", "sym_numel", "_assert_tensor_metadata",
}
# Torch ops that read a device value on the host (a synchronisation).
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "repeat_interleave",
            "equal"}


def _calls():
    from .. import functional as F
    return {
        "dice": lambda x, t: F.dice_loss(x, t, mode="multiclass", backend="triton"),
        "ce": lambda x, t: F.cross_entropy(x, t, backend="triton"),
        "dice_ce": lambda x, t: F.dice_ce_loss(x, t, backend="triton"),
        # the sigmoid kinds on the same class indices (one-hot per channel)
        "bce": lambda x, t: F.binary_cross_entropy_with_logits(x, t, backend="triton"),
        "focal_sigmoid": lambda x, t: F.focal_loss(x, t, mode="multilabel", backend="triton"),
    }


@dataclasses.dataclass
class KernelLaunch:
    kernel: str
    programs: int
    bytes: int
    launch: triton_aot.Launch


@dataclasses.dataclass
class Trace:
    launches: list = dataclasses.field(default_factory=list)  # KernelLaunch
    torch_ops: list = dataclasses.field(default_factory=list)  # (op name, bytes)
    syncs: list = dataclasses.field(default_factory=list)  # op names

    @property
    def kernels(self) -> int:
        return len(self.launches) + len(self.torch_ops)

    @property
    def bytes(self) -> int:
        return sum(k.bytes for k in self.launches) + sum(b for _, b in self.torch_ops)


def _tensor_bytes(values) -> int:
    """Bytes of the distinct tensors among ``values`` (by storage address and size)."""
    import torch
    seen = {}
    for v in values:
        if isinstance(v, torch.Tensor) and v.numel():
            seen[(v.data_ptr(), v.numel(), v.dtype)] = v.numel() * v.element_size()
    return sum(seen.values())


def _programs(grid) -> int:
    if callable(grid):
        return -1
    return math.prod(int(g) for g in grid)


def _dispatch_mode(trace: Trace):
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = func.__name__.split(".")[0]
            ns = func.namespace
            if ns == "segfast":  # a segfast op: count what its implementation launches
                with self:
                    return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
            if name.startswith("_assert"):  # its value comes from a kernel recorded, not run
                trace.torch_ops.append((name, _tensor_bytes(tree_leaves((args, kwargs)))))
                return None
            out = func(*args, **kwargs)
            if name in SYNC_OPS:
                trace.syncs.append(name)
            if ns == "aten" and name not in NO_KERNEL and not name.endswith("_copy_from_and_resize"):
                outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
                ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
                ptrs = {t.data_ptr() for t in ins if t.numel()}
                aliases = outs and all(t.data_ptr() in ptrs and not name.endswith("_") for t in outs)
                if (any(t.numel() for t in outs) and not aliases) or name.startswith("_assert"):
                    trace.torch_ops.append((name, _tensor_bytes(ins) + _tensor_bytes(outs)))
            return out
    return Count()


@contextlib.contextmanager
def _as_on_gpu(model: dict):
    """CPU tensors, but the GPU path's choices: grids for ``model``'s SM
    count, value checks on the device (no host read)."""
    from ..ops import _common, pixel, region
    saved = (_common.host_checks, _common.is_one_on_host, region.triton_chunks, pixel.triton_chunks)

    def chunks(tk, N, C, S, device, **kw):
        return tk.default_chunks(N, C, S, model["sms"], _common.PROGRAMS_PER_SM, **kw)
    _common.host_checks = lambda device: False
    _common.is_one_on_host = lambda g: False  # a CUDA grad_output is never read
    region.triton_chunks = pixel.triton_chunks = chunks
    try:
        yield
    finally:
        _common.host_checks, _common.is_one_on_host, region.triton_chunks, pixel.triton_chunks = saved


def trace_call(fn: Callable, shape, model: dict, *, backward: bool = True) -> tuple:
    """Run ``fn(x, t)`` (+ backward) on ``shape`` with the kernels recorded,
    not run; -> (Trace, ideal bytes). The steady state of a training step is
    traced: a first call (kernels not run, nothing recorded) makes what the
    ops keep per device, such as the ticket counter of an in-kernel
    reduction."""
    import torch
    N, C, H, W = shape
    x = torch.empty(shape, dtype=torch.float32).requires_grad_(backward)
    t = torch.zeros((N, H, W), dtype=torch.int64)
    trace = Trace()

    def record(kfn, args, kwargs):
        grid = kwargs.pop("grid")
        la = triton_aot.exact(kfn, args, kwargs)
        trace.launches.append(KernelLaunch(kfn.__name__, _programs(grid), _tensor_bytes(args), la))

    def skip(kfn, args, kwargs):
        pass

    # The device checks read flags the kernels would write: not run, they would
    # read uninitialised memory, so the warm-up drops them as the trace does.
    with _as_on_gpu(model), triton_aot._hook(skip, run=False), _dispatch_mode(Trace()):
        loss = fn(x, t)
        if backward:
            loss.backward()
    x.grad = None
    with _as_on_gpu(model), triton_aot._hook(record, run=False), _dispatch_mode(trace):
        loss = fn(x, t)
        if backward:
            loss.backward()
    ideal = x.numel() * x.element_size() * (2 if backward else 1) + t.numel() * t.element_size()
    return trace, ideal


def occupancy(row: dict, model: dict) -> Optional[int]:
    """Theoretical resident programs per SM from registers, warps and shared memory."""
    if row.get("error") or "registers" not in row:
        return None
    warps = int(row["num_warps"])
    regs_per_warp = -(-max(int(row["registers"]), 1) * 32 // 256) * 256
    by_regs = (model["regs"] // regs_per_warp) // warps
    by_warps = model["warps"] // warps
    by_smem = model["smem"] // row["shared"] if row.get("shared") else model["blocks"]
    return max(0, min(by_regs, by_warps, by_smem, model["blocks"]))


def report(model_name: str = "h100", shapes=SHAPES, *, compile: bool = True, workers: int = 2) -> dict:
    """-> {"calls": [...], "kernels": [...]} rows (see the module doc)."""
    model = MODELS[model_name]
    calls, kernels, jobs = [], [], {}
    for shape in shapes:
        for name, fn in _calls().items():
            trace, ideal = trace_call(fn, shape, model)
            calls.append(dict(call=name, shape="x".join(map(str, shape)), launches=trace.kernels,
                              triton=len(trace.launches), torch_ops=len(trace.torch_ops),
                              target=LAUNCH_TARGETS.get(name), syncs=len(trace.syncs),
                              ideal_MB=round(ideal / 1e6, 1), moved_MB=round(trace.bytes / 1e6, 1),
                              moved_x=round(trace.bytes / ideal, 2),
                              ops=" ".join(k.kernel.strip("_").replace("_kernel", "") for k in trace.launches)
                              + " | " + " ".join(n for n, _ in trace.torch_ops)))
            for k in trace.launches:
                if k.kernel not in STREAMING:
                    continue
                job = triton_aot.Job(k.launch, "exact", model["arch"])
                jobs.setdefault(job, None)
                kernels.append(dict(call=name, shape="x".join(map(str, shape)), kernel=k.kernel,
                                    programs=k.programs, per_sm=round(k.programs / model["sms"], 2),
                                    MB=round(k.bytes / 1e6, 1), job=job))
    rows = {}
    if compile and jobs:
        for job, row in zip(jobs, triton_aot.compile_all(list(jobs), workers=workers)):
            rows[job] = row
    for k in kernels:
        row = rows.get(k.pop("job"), {})
        if row.get("error"):
            k["error"] = row["error"][:200]
            continue
        for key in ("registers", "num_warps", "local", "ld_v4", "ld_v2", "ld_v1", "st_v4", "st_v1",
                    "ldg128", "stg128", "ldg", "stg", "bar_sync", "bar_loop", "ld_stream_128", "ld_stream_narrow",
                    "cp_async_loop", "cp_async_bytes"):
            if key in row:
                k[key] = row[key]
        occ = occupancy(row, model) if row else None
        if occ is not None:
            k["occ"] = occ
            k["waves"] = round(k["programs"] / (occ * model["sms"]), 2) if occ else None
    return {"model": model, "calls": calls, "kernels": kernels}


CUDA_STREAMING = ("stats_kernel", "stats_wide_kernel", "grad_kernel", "softmax_kernel", "softmax_dense_kernel",
                  "sigmoid_kernel")
CUDA_COLUMNS = ("file", "kernel", "template", "block", "registers", "spill_stores", "blocks_per_sm", "occupancy",
                "ldg128", "ldg", "stg128", "stg", "bar_sync", "bar_loop", "error")


CUDA_GRID_COLUMNS = ("shape", "kernel", "block", "blocks", "per_sm")


def cuda_grids(model_name: str = "h100", shapes=SHAPES) -> list:
    """The cuda backend's streaming loss kernels' grids for float32 logits at
    ``shapes`` on the model's SM count, sized by the functions the ops call
    (ops/_common.py): blocks in the grid and blocks per SM. No GPU or nvcc."""
    from ..ops import _common as c
    sms = MODELS[model_name]["sms"]
    rows = []
    for shape in shapes:
        N, C = shape[:2]
        S = math.prod(shape[2:])
        min_chunk, per_sm = c.cuda_stats_geometry(C, False)
        wide = C > c.CUDA_REG_MAX_C
        grids = (("stats_wide_kernel" if wide else "stats_kernel", None if wide else c.CUDA_STATS_THREADS,
                  c.cuda_chunks(N, S, sms, min_chunk, per_sm)),
                 ("grad_kernel", c.CUDA_GRAD_THREADS, -(-S // (c.CUDA_GRAD_THREADS * c.CUDA_VEC))),
                 ("softmax_kernel / sigmoid_kernel (loss)", c.CUDA_PIXEL_THREADS,
                  c.cuda_chunks(N, S, sms, c.CUDA_PIXEL_CHUNK, c.CUDA_PIXEL_PER_SM)),
                 ("softmax_kernel / sigmoid_kernel (map, dx)", c.CUDA_PIXEL_THREADS, -(-S // c.CUDA_PIXEL_CHUNK)))
        for kernel, block, P in grids:
            rows.append(dict(shape="x".join(map(str, shape)), kernel=kernel, block=block or "32-256",
                             blocks=N * P, per_sm=round(N * P / sms, 2)))
    return rows


def cuda_report(model_name: str = "h100", *, workers: int = 2) -> list:
    """The cuda backend's streaming loss kernels (csrc/cuda/region.cu,
    pixel.cu) compiled with nvcc for the model's architecture: registers and
    theoretical occupancy from ptxas, 128-bit / all global loads and stores and
    block barriers (in all, and per tile: ``bar_loop``) from the SASS
    (gpucheck.cuda_resources). Launches per call of that backend are counted
    on fake CUDA tensors in tests/test_gpu_perf.py (same targets)."""
    from pathlib import Path

    from . import cuda_resources as cr
    src = Path(__file__).resolve().parents[2] / "csrc" / "cuda"
    if cr.nvcc() is None or not src.is_dir():
        raise RuntimeError("the CUDA rows need nvcc on PATH and the csrc/cuda sources (a source checkout)")
    rows = cr.report(src, (MODELS[model_name]["arch"],), workers=workers, files=cr.LOSS_FILES)
    return [r for r in rows if r["kernel"] in CUDA_STREAMING or r.get("error")]


CALL_COLUMNS = ("call", "shape", "launches", "target", "triton", "torch_ops", "syncs", "ideal_MB", "moved_MB",
                "moved_x")
KERNEL_COLUMNS = ("call", "shape", "kernel", "programs", "per_sm", "MB", "num_warps", "registers", "occ", "waves",
                  "local", "ld_v4", "ld_v1", "st_v4", "st_v1", "ldg128", "stg128", "ld_stream_128",
                  "ld_stream_narrow", "bar_sync", "bar_loop", "cp_async_loop", "cp_async_bytes", "error")


def format_report(rep: dict, *, ops: bool = False) -> str:
    m = rep["model"]
    out = [f"{m['name']} (sm_{m['arch']}, {m['sms']} SMs): float32 logits, int64 labels, forward + backward",
           triton_aot.format_table(rep["calls"], CALL_COLUMNS), "",
           triton_aot.format_table(rep["kernels"], KERNEL_COLUMNS)]
    if ops:
        out += [""] + [f"{r['call']} {r['shape']}: {r['ops']}" for r in rep["calls"]]
    return "\n".join(out)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m segfast.gpucheck.perf", description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu-model", choices=sorted(MODELS), default="h100")
    ap.add_argument("--quick", action="store_true", help=f"only {'x'.join(map(str, SHAPES[0]))}")
    ap.add_argument("--no-compile", action="store_true", help="skip the AOT compile (no resource columns)")
    ap.add_argument("--ops", action="store_true", help="list each call's launches")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cuda", action="store_true",
                    help="also the cuda backend's loss kernels, compiled with nvcc (minutes)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") != "1":
        # the calls run on CPU tensors in the interpreter, on before triton is imported
        os.environ["TRITON_INTERPRET"] = "1"
        os.execv(sys.executable, [sys.executable, "-m", "segfast.gpucheck.perf"] + list(argv or sys.argv[1:]))
    rep = report(args.gpu_model, SHAPES[:1] if args.quick else SHAPES, compile=not args.no_compile,
                 workers=args.workers)
    print(format_report(rep, ops=args.ops))
    if args.cuda:
        from .triton_aot import format_table
        print(f"\ncuda backend, {rep['model']['sms']} SMs: grids of the streaming loss kernels (float32)")
        print(format_table(cuda_grids(args.gpu_model), CUDA_GRID_COLUMNS))
        print(f"\ncuda backend, sm_{rep['model']['arch']}: streaming loss kernels (nvcc)")
        print(format_table(cuda_report(args.gpu_model, workers=args.workers), CUDA_COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
