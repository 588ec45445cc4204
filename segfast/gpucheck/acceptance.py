"""``python -m segfast check [--gpu]``: one command that proves the GPU path.

With ``--gpu`` on a machine with a CUDA GPU, in order, each step a
subprocess under its own time limit (the whole run stays under 8 minutes
on one H100):

1. ``tests``: the test suite on the GPU (``pytest tests -m "not slow"``;
   the tests put their tensors on cuda when a GPU is visible and compare
   every backend, triton and cuda, against the eager reference);
2. ``sanitizer``: ``compute-sanitizer --tool memcheck|racecheck|synccheck``
   on a small case per kernel family (``segfast.gpucheck.sanitize_case``),
   when compute-sanitizer is on PATH;
3. ``bench``: each streaming loss (forward + backward) at logits
   [8, 21, 128, 128] and [16, 21, 512, 512] fp32 with int64 labels, plus box
   ops and the dense CRF, timed with ``triton.testing.do_bench`` against the
   device's copy bandwidth (``torch.empty_like(x).copy_(x)`` moving the same
   bytes): achieved GB/s of the ideal bytes (one read of logits and labels,
   one write of the gradient) and % of copy bandwidth, written to
   ``bench/results/<gpu-name-slug>-<date>.csv`` and a markdown table beside it.

Without a GPU (or without ``--gpu``) it runs the CPU-side checks: the CUDA
emulator tests, the Triton ahead-of-time compile check and the CUDA
resource report, each skipped with a "not present" line where its files
are missing. It prints one line per step and exits non-zero when a step
fails (a test, a sanitizer error, a backend's loss differing from the
reference); a missing GPU is not a failure.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

GPU_STEPS = ("tests", "sanitizer", "bench")
CPU_STEPS = ("cuda-emu", "triton-aot", "cuda-resources")
# Seconds per step; the GPU ones add up to 7.5 minutes.
TIMEOUTS = {"tests": 240, "sanitizer": 120, "bench": 90, "cuda-emu": 300, "triton-aot": 300,
            "cuda-resources": 300}
SANITIZER_TOOLS = ("memcheck", "racecheck", "synccheck")
FAMILIES = ("pixel", "region", "lovasz", "boxes", "boxes_match", "crf")
# CPU-side checks: (test file, module it exercises), paths relative to the repository root.
CPU_CHECKS = {
    "cuda-emu": ("tests/test_cuda_emu.py", None),
    "triton-aot": ("tests/test_triton_aot.py", "segfast/gpucheck/triton_aot.py"),
    "cuda-resources": ("tests/test_cuda_resources.py", "segfast/gpucheck/cuda_resources.py"),
}
LOSS_SHAPES = ((8, 21, 128, 128), (16, 21, 512, 512))
CSV_FIELDS = ("gpu", "date", "op", "backend", "shape", "dtype", "ms", "ideal_bytes", "gbps", "copy_gbps",
              "pct_of_copy", "max_abs_diff")


@dataclasses.dataclass
class StepResult:
    name: str
    status: str  # "ok" | "fail" | "skip"
    seconds: float = 0.0
    detail: str = ""


def repo_root() -> Path:
    """The source checkout holding this package (tests/ and bench/ beside segfast/)."""
    return Path(__file__).resolve().parent.parent.parent


def log(msg: str) -> None:
    print(f"[segfast check] {msg}", flush=True)


# ---------------------------------------------------------------- pure pieces (unit-tested)


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def ideal_bytes(shape, itemsize: int = 4, label_itemsize: int = 8) -> int:
    """Bytes a one-pass loss must move: read the logits [N, C, *] and the
    labels [N, *] once, write the gradient (the logits' size) once."""
    n, c = shape[0], shape[1]
    pixels = n
    for d in shape[2:]:
        pixels *= d
    return 2 * pixels * c * itemsize + pixels * label_itemsize


def select_steps(gpu: bool, only: Optional[list] = None) -> list:
    """The steps to run: the GPU ones with a GPU, else the CPU-side ones;
    ``only`` keeps those named (unknown names are an error)."""
    steps = list(GPU_STEPS if gpu else CPU_STEPS)
    if only:
        unknown = [s for s in only if s not in GPU_STEPS + CPU_STEPS]
        if unknown:
            raise ValueError(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(GPU_STEPS + CPU_STEPS)}")
        steps = [s for s in steps if s in only]
    return steps


def exit_code(results: list) -> int:
    return 1 if any(r.status == "fail" for r in results) else 0


def write_results(rows: list, out_dir, gpu_name: str, date: Optional[str] = None):
    """Write the bench rows as ``<slug>-<date>.csv`` and ``.md``; -> (csv path, md path)."""
    date = date or _dt.date.today().isoformat()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{slug(gpu_name)}-{date}"
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    lines = [f"# segfast on {gpu_name}, {date}", "",
             "Forward + backward of each op (triton.testing.do_bench, median); GB/s of the ideal bytes "
             "(one read of the inputs, one write of the gradient) and its share of this GPU's measured "
             "copy bandwidth (torch copy_ of the same bytes).", "",
             "| op | backend | shape | ms | ideal MB | GB/s | copy GB/s | % of copy |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['backend']} | {r['shape']} | {float(r['ms']):.3f} | "
                     f"{int(r['ideal_bytes']) / 1e6:.1f} | {float(r['gbps']):.0f} | {float(r['copy_gbps']):.0f} | "
                     f"{float(r['pct_of_copy']):.0f} |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


# ---------------------------------------------------------------- steps


def _run(cmd: list, timeout: float, env: Optional[dict] = None, cwd=None) -> tuple:
    """-> (returncode or None on timeout, last lines of output)."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                           env=env, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out
    return p.returncode, p.stdout


def _tail(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _gpu_env() -> dict:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the Triton kernels run on the GPU, not in the interpreter
    return env


def _pytest(paths: list, timeout: float, env: Optional[dict] = None, extra=()) -> StepResult:
    cmd = [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", *extra]
    log("  $ " + " ".join(cmd[2:]))
    rc, out = _run(cmd, timeout, env=env, cwd=repo_root())
    last = _tail(out, 1)
    if rc is None:
        return StepResult("", "fail", detail=f"timed out after {timeout:.0f} s\n{_tail(out)}")
    if rc == 5:  # nothing collected
        return StepResult("", "skip", detail=last)
    return StepResult("", "ok" if rc == 0 else "fail", detail=last if rc == 0 else _tail(out, 40))


def step_tests(timeout: float) -> StepResult:
    if not (repo_root() / "tests").is_dir():
        return StepResult("tests", "skip", detail="tests/ not present (run from a source checkout)")
    r = _pytest(["tests", "-m", "not slow"], timeout, env=_gpu_env(), extra=("-x",))
    r.name = "tests"
    return r


def step_sanitizer(timeout: float) -> StepResult:
    exe = shutil.which("compute-sanitizer")
    if exe is None:
        return StepResult("sanitizer", "skip", detail="compute-sanitizer not on PATH")
    env = _gpu_env()
    env["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1"  # every buffer its own allocation: memcheck sees its bounds
    deadline = time.monotonic() + timeout
    failed, skipped, ran = [], [], 0
    for tool in SANITIZER_TOOLS:
        for fam in FAMILIES:
            left = deadline - time.monotonic()
            if left < 5:
                skipped.append(f"{tool}:{fam}")
                continue
            cmd = [exe, "--tool", tool, "--error-exitcode", "86", "--print-limit", "20",
                   sys.executable, "-m", "segfast.gpucheck.sanitize_case", fam]
            t0 = time.monotonic()
            rc, out = _run(cmd, left, env=env, cwd=repo_root())
            ran += 1
            status = "timeout" if rc is None else ("ok" if rc == 0 else f"rc={rc}")
            log(f"  sanitizer {tool:<9} {fam:<12} {status} ({time.monotonic() - t0:.1f} s)")
            if rc is None:
                skipped.append(f"{tool}:{fam}")
            elif rc != 0:
                failed.append(f"{tool}:{fam}\n{_tail(out, 25)}")
    detail = f"{ran} runs" + (f", out of time for {', '.join(skipped)}" if skipped else "")
    if failed:
        return StepResult("sanitizer", "fail", detail=detail + "\n" + "\n".join(failed))
    return StepResult("sanitizer", "ok", detail=detail)


def step_bench(timeout: float, out_dir) -> StepResult:
    cmd = [sys.executable, "-m", "segfast.gpucheck.acceptance", "--bench-only", "--out", str(out_dir)]
    log("  $ python -m segfast.gpucheck.acceptance --bench-only --out " + str(out_dir))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_gpu_env())
    lines: list = []

    def echo():  # progress lines as they come
        for line in p.stdout:
            lines.append(line.rstrip())
            print("    " + line.rstrip(), flush=True)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return StepResult("bench", "fail", detail=f"timed out after {timeout:.0f} s")
    reader.join(timeout=5)
    written = [ln for ln in lines if ln.startswith("wrote ")]
    return StepResult("bench", "ok" if rc == 0 else "fail", detail="\n".join(written or lines[-20:]))


def step_cpu_check(name: str, timeout: float) -> StepResult:
    test, module = CPU_CHECKS[name]
    root = repo_root()
    missing = [p for p in (test, module) if p is not None and not (root / p).is_file()]
    if missing:
        return StepResult(name, "skip", detail=f"not present ({', '.join(missing)})")
    env = dict(os.environ)
    env.setdefault("TRITON_INTERPRET", "1")
    r = _pytest([test], timeout, env=env)
    r.name = name
    return r


# ---------------------------------------------------------------- the bench (runs on the GPU)


def _bench_cases(device="cuda", loss_shapes=LOSS_SHAPES, n_boxes=1 << 20, crf_shape=(1, 21, 512, 512)):
    """-> list of (op, shape, make(shape) -> (fn, value, ideal bytes)).

    ``fn(backend)`` -> (a callable doing forward + backward, the tensors whose
    .grad it fills); ``value(backend)`` the op's result, compared with the
    torch backend's."""
    import torch

    from segfast import functional as F

    def seg(op, loss):
        def make(shape):
            g = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(shape, device=device, generator=g).requires_grad_(True)
            y = torch.randint(0, shape[1], (shape[0], *shape[2:]), device=device, generator=g)

            def fn(backend):
                def step():
                    loss(x, y, backend).backward()
                return step, [x]

            def value(backend):
                with torch.no_grad():
                    return loss(x, y, backend).double()
            return fn, value, ideal_bytes(shape)
        return [(op, s, make) for s in loss_shapes]

    cases = []
    cases += seg("dice_loss", lambda x, y, b: F.dice_loss(x, y, backend=b))
    cases += seg("dice_ce_loss", lambda x, y, b: F.dice_ce_loss(x, y, backend=b))
    cases += seg("cross_entropy", lambda x, y, b: F.cross_entropy(x, y, backend=b))
    cases += seg("focal_loss", lambda x, y, b: F.focal_loss(x, y, mode="multiclass", backend=b))
    cases += seg("fused_loss", lambda x, y, b: F.fused_loss(x, y, backend=b))

    def boxes(op, fn_, n):
        def make(shape):
            g = torch.Generator(device=device).manual_seed(0)
            a = torch.rand(n, 4, device=device, generator=g) * 100
            b = torch.rand(n, 4, device=device, generator=g) * 100
            a = torch.cat([a[:, :2], a[:, :2] + 1 + a[:, 2:]], 1).requires_grad_(True)
            b = torch.cat([b[:, :2], b[:, :2] + 1 + b[:, 2:]], 1).requires_grad_(True)

            def fn(backend):
                def step():
                    fn_(a, b, backend).backward()
                return step, [a, b]

            def value(backend):
                with torch.no_grad():
                    return fn_(a, b, backend).double()
            return fn, value, 4 * n * 16  # read both box sets, write both gradients
        return [(op, (n, 4), make)]

    cases += boxes("giou_loss", lambda a, b, be: F.giou_loss(a, b, reduction="mean", backend=be), n_boxes)
    cases += boxes("ciou_loss", lambda a, b, be: F.ciou_loss(a, b, reduction="mean", backend=be), n_boxes)

    def crf(shape):
        B, C, H, W = shape
        g = torch.Generator(device=device).manual_seed(0)
        u = torch.randn(shape, device=device, generator=g)
        img = (torch.rand(B, 3, H, W, device=device, generator=g) * 255).to(torch.uint8)

        def fn(backend):
            return (lambda: F.dense_crf(u, img, iterations=5, backend=backend)), []

        def value(backend):
            return F.dense_crf(u, img, iterations=5, backend=backend).double()
        return fn, value, B * H * W * (C * 4 * 2 + 3)  # read unary and image, write Q
    cases.append(("dense_crf", crf_shape, crf))
    return cases


def do_bench(fn, grad_to_none=None) -> float:
    """Median ms of ``fn`` on the GPU (triton.testing.do_bench: L2 flushed between calls)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=50, grad_to_none=grad_to_none, return_mode="median")


def copy_gbps(nbytes: int, device="cuda", bench=do_bench) -> float:
    """The device's copy bandwidth (read + write GB/s) moving ``nbytes`` in all:
    torch.empty_like(x).copy_(x) with x of nbytes / 2."""
    import torch

    x = torch.empty(max(nbytes // 2, 1), dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    ms = bench(lambda: y.copy_(x))
    return 2 * x.numel() / (ms * 1e-3) / 1e9


def run_bench(out_dir, backends_=("triton", "cuda"), device="cuda", bench=do_bench, case_args=None,
              gpu_name=None) -> int:
    """Time every case on every usable backend; write the CSV and markdown. -> exit code."""
    import torch

    from segfast import backends as B

    dev = torch.device(device)
    gpu = gpu_name or torch.cuda.get_device_name(dev)
    usable = [b for b in backends_ if B.unavailable_reason(b, dev) is None]
    print(f"bench on {gpu}, backends {', '.join(usable) or 'none'}", flush=True)
    rows, bad = [], 0
    copy_cache: dict = {}
    date = _dt.date.today().isoformat()
    for op, shape, make in _bench_cases(device, **(case_args or {})):
        fn, value, nbytes = make(shape)
        ref = value("torch")
        if nbytes not in copy_cache:
            copy_cache[nbytes] = copy_gbps(nbytes, device, bench)
        cgbps = copy_cache[nbytes]
        for backend in usable:
            try:
                diff = float((value(backend) - ref).abs().max())
                tol = (1e-2 if op == "dense_crf" else 1e-3) * max(1.0, float(ref.abs().max()))
                step, grads = fn(backend)
                ms = bench(step, grad_to_none=grads or None)
            except Exception as e:  # a backend that fails is a failure, the others still run
                print(f"FAIL {op} {backend} {shape}: {type(e).__name__}: {e}", flush=True)
                bad += 1
                continue
            gbps = nbytes / (ms * 1e-3) / 1e9
            ok = diff <= tol
            bad += not ok
            rows.append(dict(gpu=gpu, date=date, op=op, backend=backend, shape="x".join(map(str, shape)),
                             dtype="float32", ms=f"{ms:.4f}", ideal_bytes=nbytes, gbps=f"{gbps:.1f}",
                             copy_gbps=f"{cgbps:.1f}", pct_of_copy=f"{100 * gbps / cgbps:.1f}",
                             max_abs_diff=f"{diff:.3g}"))
            print(f"{'ok  ' if ok else 'FAIL'} {op:<14} {backend:<6} {'x'.join(map(str, shape)):<16} "
                  f"{ms:8.3f} ms {gbps:7.0f} GB/s ({100 * gbps / cgbps:4.0f}% of copy {cgbps:.0f} GB/s)"
                  + ("" if ok else f"  |loss - reference| = {diff:.3g} > {tol:.3g}"), flush=True)
        del fn, value
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    csv_path, md_path = write_results(rows, out_dir, gpu, date)
    print(f"wrote {csv_path}", flush=True)
    print(f"wrote {md_path}", flush=True)
    return 1 if bad else 0


# ---------------------------------------------------------------- driver


def run_checks(gpu_flag: bool, only=None, out_dir="bench/results",
               has_gpu: Optional[Callable[[], bool]] = None) -> int:
    if has_gpu is None:
        import torch
        has_gpu = torch.cuda.is_available
    gpu = bool(gpu_flag) and has_gpu()
    if gpu_flag and not gpu:
        log("no CUDA GPU is visible here: the GPU steps (tests on cuda, compute-sanitizer, timings) "
            "do not run; running the CPU-side checks instead")
    elif not gpu_flag:
        log("CPU-side checks (python -m segfast check --gpu runs the GPU steps on a GPU machine)")
    steps = select_steps(gpu, only)
    if gpu:
        import torch
        log(f"GPU: {torch.cuda.get_device_name()}; steps: {', '.join(steps)}")
    results = []
    for i, name in enumerate(steps, 1):
        log(f"step {i}/{len(steps)}: {name} (limit {TIMEOUTS[name]} s)")
        t0 = time.monotonic()
        if name == "tests":
            r = step_tests(TIMEOUTS[name])
        elif name == "sanitizer":
            r = step_sanitizer(TIMEOUTS[name])
        elif name == "bench":
            r = step_bench(TIMEOUTS[name], out_dir)
        else:
            r = step_cpu_check(name, TIMEOUTS[name])
        r.seconds = time.monotonic() - t0
        results.append(r)
        log(f"step {i}/{len(steps)}: {name}: {r.status.upper()} ({r.seconds:.1f} s)")
        if r.detail:
            print("\n".join("    " + ln for ln in r.detail.splitlines()), flush=True)
    summary = ", ".join(f"{r.name} {r.status}" for r in results)
    code = exit_code(results)
    log(f"summary: {summary or 'nothing to run'}; exit {code}")
    return code


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m segfast check", description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true", help="run the GPU steps (tests, compute-sanitizer, timings)")
    p.add_argument("--steps", default=None,
                   help=f"comma-separated subset of {', '.join(GPU_STEPS)} (GPU) or {', '.join(CPU_STEPS)} (CPU)")
    p.add_argument("--out", default="bench/results", help="folder for the timing CSV and markdown")
    p.add_argument("--bench-only", action="store_true", help=argparse.SUPPRESS)  # the bench step's subprocess
    a = p.parse_args(argv)
    if a.bench_only:
        return run_bench(a.out)
    try:
        only = [s.strip() for s in a.steps.split(",") if s.strip()] if a.steps else None
        select_steps(True, only)
    except ValueError as e:
        p.error(str(e))
    return run_checks(a.gpu, only, a.out)


if __name__ == "__main__":
    sys.exit(main())
