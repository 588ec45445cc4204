"""segfast-bench: forward+backward of each loss (inference for the dense CRF,
the box matching and the metrics) on every backend usable here, against the
eager reference and the peer libraries, in one run.

    segfast-bench                      # the device present, a table
    segfast-bench --help               # the peers, cases and defaults
    segfast-bench --json out.json      # also write the rows as JSON
    segfast-bench --save               # append them to bench/results/results.csv
    segfast-bench --compare latest     # regressions against the last saved run
    python -m segfast.bench --device cpu --repeat 20

Each row times at least ``--repeat`` calls and ``--min-time`` seconds, after
every row's first call. Columns: median and interquartile range of the wall
time (ms), segfast's speed-up over the eager reference and over each peer
(measured in the same run; filled on segfast's rows only), achieved GB/s for
the bytes the kernel passes must move (stats: read logits and targets; grad:
read them again and write the gradient) and its share of the machine's copy
bandwidth (measured at the start), and peak extra memory in MB beyond the
inputs (CUDA: the caching allocator's peak; CPU: the process's peak resident
set, with glibc told to return large blocks at once).

Each family declares its cases in a bench module of its own
(segfast/ops/_bench_<family>.py, segfast/metrics/_bench.py: an ``OPS``
table of :class:`Op` and/or ``stages(device, args)``), named by its line in
segfast/_families.py; this module collects them and holds the timer, the
memory probe and the table. bench/bench_<family>.py run the same cases
under pytest-benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import functools
import gc
import importlib
import json
import os
import statistics
import sys
import time
from typing import Callable, Optional

import torch

from . import _families, backends, results


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    shape: tuple
    dtype: torch.dtype
    label_dtype: torch.dtype

    @property
    def name(self):
        return f"{self.op}[{'x'.join(map(str, self.shape))},{str(self.dtype)[6:]}]"


@dataclasses.dataclass(frozen=True)
class Op:
    """One benchmark op, declared by its family's bench module in its ``OPS``
    (op name -> Op): segfast-bench times it on every backend usable here
    against its baseline and peers, and bench/bench_<family>.py under
    pytest-benchmark.

    ``fn(x, y, backend=...)`` is segfast's call, ``reference(x, y)`` the eager
    baseline; ``extra`` maps a runner name to a factory of another
    ``loss(x, y)`` timed beside them: a peer ("monai", "smp") or a drop-in
    class of segfast.compat ("compat_monai", "compat_smp"); a factory that
    raises ImportError (peer not installed) gives no row. ``passes`` and
    ``writes``: the kernel passes over (logits, targets) and the gradient
    writes, the bytes of the GB/s column. An op with ``shape`` (device ->
    shape) has inputs of its own (``inputs(case, device, seed)``, the bytes
    ``bytes(case)``), float32 and int64, and is left out of ``--quick``;
    otherwise it runs on the dense loss case (:func:`loss_shape`), class-index
    targets or, with ``dense_targets``, one-hot float targets."""

    fn: Callable
    reference: Callable
    extra: dict = dataclasses.field(default_factory=dict)
    passes: int = 0
    writes: int = 0
    dense_targets: bool = False
    quick: bool = False           # one of --quick's cases
    also_torch: bool = False      # segfast's torch backend timed beside the kernels
    shape: Optional[Callable] = None
    inputs: Optional[Callable] = None
    bytes: Optional[Callable] = None
    gbps: bool = True             # a GB/s figure (off where the bytes are not what limits the op)


def ops() -> dict:
    """op name -> :class:`Op`: every family's ``OPS``, collected in the
    families' order (segfast/_families.py)."""
    out = {}
    for module in _families.bench_modules():
        for name, op in getattr(module, "OPS", {}).items():
            if name in out:
                raise ValueError(f"segfast-bench: two families declare the op {name!r}")
            out[name] = op
    return out


def mean_pixel_reference(kind, **kw):
    """Eager reference of a mean pixel loss (reference/pixel.py terms)."""
    from .reference import pixel as ref_pixel

    def loss(x, y):
        x3, y2 = x.flatten(2), y.flatten(1)
        l0, l1, valid = ref_pixel.pixel_terms(x3, y2, True, kind, **kw)
        n = valid.sum().clamp_min(1)
        return (l0.sum() + l1.sum()) / n if kind != ref_pixel.FUSED else 0.5 * l0.sum() / n + 0.5 * l1.sum() / n
    return loss


def monai_peer(name, labels_1=True, **kw):
    """Factory of MONAI's loss class ``name`` on the op's inputs (class indices as
    int64 [N, 1, ...] with ``labels_1``, dense targets as they are)."""
    def make():
        import monai.losses as ml

        loss = getattr(ml, name)(**kw)
        return (lambda x, y: loss(x, y.unsqueeze(1).long())) if labels_1 else loss
    return make


def compat_peer(module, name, *args, labels_1=False, **kw):
    """Factory of a class of segfast.compat.monai / .smp (module "compat.monai" /
    "compat.smp"), or of the smp peer (module "smp"), on the op's inputs: class
    indices as int64 ([N, 1, ...] with ``labels_1``), dense float targets as
    they are."""
    def make():
        if module == "smp":
            from .compat.smp import load_smp_losses

            mod = load_smp_losses()
            if mod is None:
                raise ImportError("segmentation_models_pytorch")
        else:
            mod = importlib.import_module(f"segfast.{module}")
        loss = getattr(mod, name)(*args, **kw)
        if labels_1:
            return lambda x, y: loss(x, y.unsqueeze(1).long())
        return lambda x, y: loss(x, y if y.dtype.is_floating_point else y.long())
    return make


def loss_shape(device: torch.device) -> tuple:
    """(logits shape, dtype, label dtype) of the dense loss cases on this device."""
    if device.type == "cuda":
        return (16, 21, 512, 512), torch.bfloat16, torch.uint8
    return (8, 21, 128, 128), torch.float32, torch.int64


def op_cases(table: dict, device: torch.device, quick: bool = False) -> list:
    """The cases of the ops of ``table`` (name -> Op): the dense loss cases first,
    then (without ``quick``) those with a shape of their own."""
    shape, dtype, lab = loss_shape(device)
    out = [Case(name, shape, dtype, dtype if op.dense_targets else lab)
           for name, op in table.items() if op.shape is None and (op.quick or not quick)]
    return out + ([] if quick else [Case(name, op.shape(device), torch.float32, torch.int64)
                                    for name, op in table.items() if op.shape is not None])


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    """The cases of every family's ops, family by family."""
    return [c for module in _families.bench_modules()
            for c in op_cases(getattr(module, "OPS", {}), device, quick)]


def make_inputs(case: Case, device: torch.device, seed: int = 0):
    op = ops()[case.op]
    if op.inputs is not None:
        return op.inputs(case, device, seed)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(case.shape, generator=g).to(device=device, dtype=case.dtype).requires_grad_(True)
    n, c, *spatial = case.shape
    # Piecewise-constant labels (blocks), like real masks rather than noise.
    coarse = torch.randint(0, c, (n, *[max(1, s // 16) for s in spatial]), generator=g)
    y = torch.nn.functional.interpolate(coarse[:, None].float(), size=spatial, mode="nearest")[:, 0]
    if case.label_dtype.is_floating_point:  # dense targets: the labels one-hot, [N, C, ...]
        y = torch.nn.functional.one_hot(y.long(), c).movedim(-1, 1)
    return x, y.to(device=device, dtype=case.label_dtype)


def runners(case: Case, device: torch.device) -> dict[str, Callable]:
    """name -> loss(x, y): segfast's backends, 'reference' (the eager baseline),
    then the op's peers and drop-in classes (:attr:`Op.extra`) that load here."""
    op = ops()[case.op]
    kernels = [b for b in backends.available(device) if b != "torch"] + (["torch"] if op.also_torch else [])
    out = {b: (lambda b: lambda x, y: op.fn(x, y, backend=b))(b) for b in kernels}
    out["reference"] = op.reference
    for name, make in op.extra.items():
        try:
            out[name] = make()
        except ImportError:  # a peer that is not installed
            pass
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd(loss_fn, x, y):
    """One training-style call; the gradient is dropped afterwards, so memory
    measured around the call includes it."""
    def step():
        out = loss_fn(x, y)
        # forward-only cases (box_iou, box_iou_max, nms) have nothing to differentiate
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.backward()
        x.grad = None
    return step


def first_call(fn: Callable[[], None], device: torch.device) -> float:
    """Seconds of one (warmup) call."""
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


# Timed seconds per row at least (more calls than ``repeat`` where they are
# fast): the first calls after another row's are slower, so a median of a few
# calls of a millisecond step is unstable (pytest-benchmark likewise times
# rounds for up to a second).
MIN_TIME = 0.25


def time_fn(fn: Callable[[], None], device: torch.device, repeat: int = 10, warmup: int = 2,
            min_time: float = 0.0, budget: float = 4.0, first: Optional[float] = None) -> list[float]:
    """Wall times in seconds of ``repeat`` calls (at least ``min_time`` in all).
    A call slower than ``budget / repeat`` (an eager baseline of seconds) gets
    one warmup and as many timed calls as fit in ``budget`` (at least one), so
    the whole comparison stays within minutes. ``first``: the duration of a
    first call already made (it counts as a warmup call)."""
    if first is None:
        first = first_call(fn, device)
    if first * repeat > budget:
        warmup, repeat = 1, max(1, int(budget / first))
    for _ in range(warmup - 1):
        fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start_all < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _malloc_returns_large_blocks():
    """Large blocks in their own mmap, freed at once: RSS then tracks live memory."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB (also stops glibc raising it)
        libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD
    except OSError:
        pass


def peak_extra_bytes(fn: Callable[[], None], device: torch.device) -> Optional[int]:
    """Peak memory ``fn`` needs beyond what is live before it (None where unknown).

    CUDA: the caching allocator's peak. CPU: the process's peak resident set
    (reset through /proc/self/clear_refs), with segfast's output cache
    emptied (backends.empty_cache) so that the outputs count, and glibc told
    to give large blocks back at once so that RSS follows live memory; that
    malloc setting slows later allocations, so on CPU call this only in a
    process of its own (``peak_extra_mb`` does).
    """
    if device.type == "cuda":
        fn()
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    _malloc_returns_large_blocks()
    fn()  # first call: lazy initialisations do not count
    gc.collect()  # what the first call left in reference cycles goes now, not during the second
    backends.empty_cache()  # the second call's outputs must come from the system and count
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set (VmHWM) to the current one
    except OSError:
        return None
    base = _rss_bytes("VmRSS")
    fn()
    return max(0, _rss_bytes("VmHWM") - base)


_PROBE_SERVER = None  # the --probe-server process of peak_extra_mb


def peak_extra_mb(case: Case, device: torch.device, names) -> dict:
    """name -> peak extra MB of one forward+backward (see peak_extra_bytes).

    On CPU every case is probed in a process of its own (the probe changes
    malloc's behaviour, and a peak depends on what the heap already holds),
    forked by a --probe-server that imports torch and segfast once, so that no
    case pays for a fresh interpreter's imports.
    """
    global _PROBE_SERVER
    if device.type != "cpu":
        return _probe(case, device, names)
    import atexit
    import subprocess

    if _PROBE_SERVER is None or _PROBE_SERVER.poll() is not None:
        # Started beside the segfast package this process imported: from a
        # repository's root, ``-m`` would otherwise import the source tree.
        here = os.path.dirname(os.path.dirname(os.path.abspath(backends.__file__)))
        _PROBE_SERVER = subprocess.Popen([sys.executable, "-m", "segfast.bench", "--probe-server"], cwd=here,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        atexit.register(_PROBE_SERVER.communicate)  # closes its stdin: it exits
    arg = json.dumps(dict(op=case.op, shape=list(case.shape), dtype=str(case.dtype)[6:],
                          labels=str(case.label_dtype)[6:], names=list(names)))
    _PROBE_SERVER.stdin.write(arg + "\n")
    _PROBE_SERVER.stdin.flush()
    return json.loads(_PROBE_SERVER.stdout.readline() or "{}")


def _probe_server() -> int:
    """--probe-server: one JSON case per line of stdin -> one JSON line of peaks
    on stdout, each case probed in a child forked from this process. It only
    imports: OpenMP does not survive a fork of a process that has used it."""
    import traceback

    try:  # the peer's import too, once (1.5 s)
        import monai.losses  # noqa: F401
    except ImportError:
        pass
    ops()  # the families' bench modules, imported once
    for line in sys.stdin:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the probe; its prints go to stderr, its answer through the pipe
            os.close(r)
            os.dup2(2, 1)
            out = "{}"
            try:
                d = json.loads(line)
                case = Case(d["op"], tuple(d["shape"]), getattr(torch, d["dtype"]), getattr(torch, d["labels"]))
                out = json.dumps(_probe(case, torch.device("cpu"), d["names"]))
            except BaseException:
                traceback.print_exc()
            os.write(w, out.encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            answer = f.read().decode() or "{}"
        os.waitpid(pid, 0)
        print(answer, flush=True)
    return 0


def _probe(case: Case, device: torch.device, names) -> dict:
    x, y = make_inputs(case, device)
    run = runners(case, device)
    out = {}
    for name in names:
        b = peak_extra_bytes(fwd_bwd(run[name], x, y), device)
        out[name] = None if b is None else b / 2**20
    return out


def kernel_bytes(case: Case) -> int:
    """Bytes the op's kernel passes must move: each pass reads logits and
    targets (class indices, or dense targets of the logits' shape), each
    gradient write writes the logits' size (region: 2 passes, 1 write;
    one-pass pixel loss: 1 and 1)."""
    op = ops()[case.op]
    if op.bytes is not None:
        return op.bytes(case)
    n = 1
    for s in case.shape:
        n *= s
    xb = n * case.dtype.itemsize
    tb = (n if case.label_dtype.is_floating_point else n // case.shape[1]) * case.label_dtype.itemsize
    return op.passes * (xb + tb) + op.writes * xb


def measure(case: Case, device: torch.device, repeat: int = 10, memory: bool = True,
            min_time: float = MIN_TIME) -> list[dict]:
    x, y = make_inputs(case, device)
    rows = []
    run = runners(case, device)
    # every contender's first (warmup) call before any is timed: the heap then
    # holds what the case needs, and the row timed first does not pay alone for
    # growing it (on CPU, fresh pages fault in at ~0.4 ms per MB)
    firsts = {name: first_call(fwd_bwd(loss_fn, x, y), device) for name, loss_fn in run.items()}
    for name, loss_fn in run.items():
        times = time_fn(fwd_bwd(loss_fn, x, y), device, repeat=repeat, first=firsts[name], min_time=min_time)
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        rows.append(dict(op=case.op, shape=list(case.shape), dtype=str(case.dtype)[6:],
                         labels=str(case.label_dtype)[6:], backend=name, device=str(device),
                         median_ms=1e3 * statistics.median(times), iqr_ms=1e3 * (q[2] - q[0]),
                         logits_mb=x.numel() * x.element_size() / 2**20))
    peaks = peak_extra_mb(case, device, list(run)) if memory else {}
    for r in rows:
        r["peak_extra_mb"] = peaks.get(r["backend"])
    base = {r["backend"]: r["median_ms"] for r in rows}
    for r in rows:
        r["speedup_vs_reference"] = base["reference"] / r["median_ms"]
        r["speedup_vs_monai"] = base["monai"] / r["median_ms"] if "monai" in base else None
        r["speedup_vs_smp"] = base["smp"] / r["median_ms"] if "smp" in base else None
        r["gbps"] = (kernel_bytes(case) / (r["median_ms"] * 1e-3) / 1e9
                     if r["backend"] in backends.BACKENDS and ops()[case.op].gbps
                     else None)
    return rows


# Rows that are not segfast's: the eager baselines and the peers. The ratio
# columns are segfast's speed-ups (its backends, "torch" included, and its
# compat classes), left empty on these rows.
BASELINES = ("reference", "argmax_bincount")


def _is_segfast(backend: str) -> bool:
    return results.is_segfast(backend) or backend == "torch"


def _runner_label(backend: str) -> str:
    if _is_segfast(backend):
        return backend
    return f"{backend} (baseline)" if backend in BASELINES else f"{backend} (peer)"


def format_table(rows: list[dict], copy_gbps: Optional[float] = None) -> str:
    """The rows as a text table: a ``vs <peer>`` column for every peer with a
    figure in this run (segfast's speed-up over it, filled on segfast's rows
    only), GB/s and, given the machine's copy bandwidth, its percentage."""
    peers = [p for p in results.PEERS if any(r.get(f"speedup_vs_{p}") for r in rows)]
    cols = [("op", "{}"), ("shape", "{}"), ("dtype", "{}"), ("backend", "{}"), ("median_ms", "{:.2f}"),
            ("iqr_ms", "{:.2f}"), *[(f"speedup_vs_{p}", "{:.2f}x") for p in peers], ("gbps", "{:.1f}"),
            ("peak_extra_mb", "{:.1f}")]
    head = ["op", "shape", "dtype", "runner", "median ms", "IQR ms",
            *["vs ref" if p == "reference" else f"vs {results.PEER_NAMES[p]}" for p in peers], "GB/s",
            "peak MB"]
    if copy_gbps:
        cols.insert(-1, ("copy_pct", "{:.0f}%"))
        head.insert(-1, "of copy")
    table = [head]
    for r in rows:
        r = dict(r, copy_pct=100 * r["gbps"] / copy_gbps if copy_gbps and r.get("gbps") else None)
        mine = _is_segfast(r["backend"])
        cells = []
        for k, fmt in cols:
            v = r.get(k)
            if v is None or (k.startswith("speedup_vs_") and not mine):
                cells.append("-")
            elif k == "shape":
                cells.append("x".join(map(str, v)))
            elif k == "backend":
                cells.append(_runner_label(v))
            else:
                cells.append(fmt.format(v))
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def iqr_ms(times: list[float]) -> float:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return 1e3 * (q[2] - q[0])


def interleaved(fns: dict, call: Callable, device, repeat: int, min_time: float) -> dict:
    """name -> wall times of ``call(fn)``, the contenders called in turns (one call of each per
    round, after one warmup call each), so that a noisy machine slows them alike."""
    for fn in fns.values():
        call(fn)
    _sync(device)
    times = {name: [] for name in fns}
    start = time.perf_counter()
    while min(map(len, times.values())) < repeat or time.perf_counter() - start < min_time:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            call(fn)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


# Each busy process of --under-load exits by itself after this many seconds
# at most, even if the benchmark dies without stopping it.
LOAD_MAX_S = 600


@contextlib.contextmanager
def background_load(seconds: float = LOAD_MAX_S):
    """One busy process per core this process may run on (a pure-Python spin),
    for the duration of the block (and never longer than ``seconds``)."""
    import subprocess

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    spin = f"import time\nend = time.monotonic() + {float(seconds)}\nwhile time.monotonic() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(cores)]
    try:
        time.sleep(0.2)  # the spinners are running before the first timed call
        yield cores
    finally:
        for pr in procs:
            pr.kill()
        for pr in procs:
            pr.wait()


# The peers each column compares with, where they are installed.
PEER_HELP = """peers (a column each, where installed; pip install "segfast[bench]" installs them, and
pip install --no-deps segmentation-models-pytorch==0.6.0 smp's loss modules):
  MONAI                        Dice, Tversky, generalized Dice, Dice+CE, Dice+focal, focal
  segmentation_models_pytorch  Dice, Jaccard, Tversky, soft CE, sigmoid focal, soft BCE, Lovasz
  pydensecrf (pydensecrf2)     dense CRF (CPU), one image at a time
  torchmetrics                 confusion matrix / mean IoU
  pycocotools, faster-coco-eval  COCO mAP
baselines: the eager PyTorch reference of every op (segfast/reference), argmax + bincount
drop-in rows: compat_monai / compat_smp, the classes of segfast.compat beside the native call

default cases: CPU logits 8x21x128x128 float32, int64 labels; CUDA 16x21x512x512 bfloat16,
uint8 labels; boxes, NMS, dense CRF (512x512, 21 labels, batch 1 and 4 on CPU, 8 on CUDA),
COCO mAP and the confusion matrix at their own sizes. --quick: only dice and fused, a
128x128 CRF and the small metrics cases."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segfast-bench", description=__doc__.split("\n\n")[0], epilog=PEER_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if a GPU is visible, else cpu)")
    p.add_argument("--repeat", type=int, default=10, help="timed calls per row at least, median reported "
                                                          "(default 10)")
    p.add_argument("--min-time", type=float, default=MIN_TIME,
                   help=f"timed seconds per row at least (default {MIN_TIME})")
    p.add_argument("--quick", action="store_true",
                   help="only each family's quick cases: Dice, fused, a small CRF and the small metrics cases")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--save", nargs="?", const="", default=None, metavar="CSV",
                   help="append the rows to the results history (default bench/results/results.csv)")
    p.add_argument("--compare", default=None, metavar="RUN",
                   help="compare with a run of the results history (a run id, or 'latest'; "
                        "`python -m segfast.results runs` lists them); exits 1 if a row is >10%% slower")
    p.add_argument("--under-load", action="store_true",
                   help="CPU rows under a background load: one busy process per core, started and stopped by "
                        "the benchmark (peak memory not measured)")
    p.add_argument("--probe-server", action="store_true", help=argparse.SUPPRESS)  # see peak_extra_mb
    p.add_argument("--gpu-model", default=None, metavar="MODEL",
                   help="print the static performance report for this GPU model (h100, a100) "
                        "instead of timing: launches, bytes, occupancy, load widths (no GPU needed)")
    return p


# The machine's own copy bandwidth, the yardstick of the GB/s column: one
# tensor of COPY_MB copied into another (read + write), best of COPY_REPEAT.
COPY_MB, COPY_REPEAT = 256, 5


def copy_bandwidth(device: torch.device, mb: int = COPY_MB, repeat: int = COPY_REPEAT) -> float:
    """GB/s of ``dst.copy_(src)`` for a tensor of ``mb`` MiB, counting the bytes read and written."""
    src = torch.ones(mb << 18, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # pages faulted in, kernels loaded
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best / 1e9


# Peer -> (import name, what installs it).
PEER_PACKAGES = {
    "MONAI": ("monai", 'pip install "segfast[bench]"'),
    "segmentation_models_pytorch": ("segmentation_models_pytorch",
                                    "pip install --no-deps segmentation-models-pytorch==0.6.0"),
    "pydensecrf": ("pydensecrf", 'pip install "segfast[bench]"'),
    "torchmetrics": ("torchmetrics", 'pip install "segfast[bench]"'),
    "pycocotools": ("pycocotools", 'pip install "segfast[bench]"'),
    "faster-coco-eval": ("faster_coco_eval", 'pip install "segfast[bench]"'),
}


def missing_peers() -> list:
    """Header lines naming the peers that are not installed (their columns stay
    empty), each with the command that installs it; found without importing them."""
    import importlib.util

    return [f"peer not installed: {peer} ({how})" for peer, (module, how) in PEER_PACKAGES.items()
            if importlib.util.find_spec(module) is None]


# A machine is busy when the 1-minute load average exceeds this fraction of the
# cores this process may run on: other processes take cores from the timed calls.
BUSY_LOAD = 0.5


def _loadavg3():
    try:
        return os.getloadavg()
    except (AttributeError, OSError):  # not Unix
        return None


def machine_header(device: torch.device, info: dict) -> list:
    """The lines that say what measured the run: versions, the CPU model, the
    threads, the load average (with a warning when the machine is busy)."""
    cores = backends._CORES
    lines = [f"segfast {info['segfast']}  torch {info['torch']}  device {device}"
             + (f" ({info['gpu_name']})" if device.type == "cuda" else "")]
    cpu = f"cpu: {results.device_name('cpu')}, {torch.get_num_threads()} threads, {cores} cores available"
    load = _loadavg3()
    if load is not None:
        cpu += f", load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    lines.append(cpu)
    if load is not None and load[0] > BUSY_LOAD * cores:
        lines.append(f"warning: the machine is busy (load average {load[0]:.1f} on {cores} cores): other "
                     "processes take cores from the timed calls, so times are slower and noisier than on an "
                     "idle machine; each speed-up is against a baseline or peer timed in the same run")
    return lines


class Progress:
    """One line per stage on stderr: ``[i/n] name ...`` when it starts, its
    seconds when it ends."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    @contextlib.contextmanager
    def stage(self, name: str):
        self.done += 1
        print(f"[{self.done}/{self.total}] {name} ...", end="", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            print(f" {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def case_stages(table: dict, device: torch.device, args) -> list:
    """A stage (:func:`measure`) per case of the ops of ``table`` (name -> Op)."""
    return [(case.name, functools.partial(measure, case, device, repeat=args.repeat, memory=args.memory,
                                          min_time=args.min_time))
            for case in op_cases(table, device, quick=args.quick)]


def stages(device: torch.device, args) -> list:
    """(name, zero-argument function returning rows) for every stage of a run."""
    loaded = args.under_load and device.type == "cpu"
    memory = not (args.no_memory or loaded)
    family_args = argparse.Namespace(**vars(args), memory=memory)
    out = []
    for module in _families.bench_modules():  # each family's cases, then its own stages (segfast/_families.py)
        out += case_stages(getattr(module, "OPS", {}), device, family_args)
        if hasattr(module, "stages"):
            out += module.stages(device, family_args)
    return out


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.gpu_model:
        from .gpucheck import perf
        return perf.main(["--gpu-model", args.gpu_model] + (["--quick"] if args.quick else []))
    if args.probe_server:
        return _probe_server()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = backends.info()
    load_avg = (_loadavg3() or (None,))[0]
    for line in machine_header(device, info) + missing_peers():
        print(line)
    copy_gbps = copy_bandwidth(device)
    info["copy_gbps"] = copy_gbps
    print(f"copy bandwidth: {copy_gbps:.1f} GB/s (a {COPY_MB} MiB tensor copied, bytes read + written, "
          f"best of {COPY_REPEAT}); the GB/s column counts the bytes the kernels must move")
    loaded = args.under_load and device.type == "cpu"
    if loaded:
        print("under load: one busy process per core during every row")
    todo = stages(device, args)
    progress = Progress(len(todo))
    rows = []
    for name, run in todo:
        with progress.stage(name), (background_load() if loaded else contextlib.nullcontext()):
            rows += run()
    for r in rows:
        r.update(under_load=loaded, load_avg=load_avg, copy_gbps=copy_gbps)
    print(format_table(rows, copy_gbps))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(info=info, date=time.strftime("%Y-%m-%d"), rows=rows), f, indent=1)
        print(f"wrote {args.json}")
    status = 0
    if args.compare:
        text, slower = results.compare(rows, results.run_rows(args.compare))
        print(text)
        status = int(slower > 0)
    if args.save is not None:
        path = args.save or results.CSV_PATH
        run = results.save_run(rows, str(device), torch.get_num_threads(), path)
        print(f"appended run {run} to {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
