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

bench/bench_<family>.py run the same cases under pytest-benchmark.
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

from . import backends, results
from . import functional as F
from .reference import lovasz as ref_lovasz
from .reference import pixel as ref_pixel
from .reference import region as ref


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    shape: tuple
    dtype: torch.dtype
    label_dtype: torch.dtype

    @property
    def name(self):
        return f"{self.op}[{'x'.join(map(str, self.shape))},{str(self.dtype)[6:]}]"


def _ref_pixel(kind, **kw):
    """Eager reference of a mean pixel loss (reference/pixel.py terms)."""
    def loss(x, y):
        x3, y2 = x.flatten(2), y.flatten(1)
        l0, l1, valid = ref_pixel.pixel_terms(x3, y2, True, kind, **kw)
        n = valid.sum().clamp_min(1)
        return (l0.sum() + l1.sum()) / n if kind != ref_pixel.FUSED else 0.5 * l0.sum() / n + 0.5 * l1.sum() / n
    return loss


def _monai(name, **kw):
    def make():
        import monai.losses as ml

        loss = getattr(ml, name)(**kw)
        return lambda x, y: loss(x, y.unsqueeze(1).long())
    return make


# op -> (segfast function, eager reference, MONAI peer factory or None, kernel passes over (x, t), dx writes)
OPS = {
    "dice": (F.dice_loss, lambda x, y: ref.region_loss(x, y, kind="dice"),
             _monai("DiceLoss", softmax=True, to_onehot_y=True), 2, 1),
    "jaccard": (F.jaccard_loss, lambda x, y: ref.region_loss(x, y, kind="jaccard"), None, 2, 1),
    "tversky": (F.tversky_loss, lambda x, y: ref.region_loss(x, y, kind="tversky"),
                _monai("TverskyLoss", softmax=True, to_onehot_y=True), 2, 1),
    "generalized_dice": (F.generalized_dice_loss, lambda x, y: ref.region_loss(x, y, kind="generalized_dice"),
                         _monai("GeneralizedDiceLoss", softmax=True, to_onehot_y=True), 2, 1),
    "cross_entropy": (F.cross_entropy, _ref_pixel(ref_pixel.CE), None, 1, 1),
    "fused": (F.fused_loss, _ref_pixel(ref_pixel.FUSED), None, 1, 1),
    "lovasz_softmax": (lambda x, y, backend=None: F.lovasz_softmax_loss(x, y, per_image=True, backend=backend),
                       lambda x, y: ref_lovasz.lovasz_softmax(x, y, per_image=True, dtype=torch.float32),
                       None, 1, 1),
    "dice_ce": (F.dice_ce_loss,
                lambda x, y: ref.region_loss(x, y, kind="dice") + _ref_pixel(ref_pixel.CE)(x, y),
                _monai("DiceCELoss", softmax=True, to_onehot_y=True), 3, 2),
}
OPS["dice_focal"] = (lambda x, y, backend=None: F.dice_focal_loss(x, y, focal_form="sigmoid", backend=backend),
                     lambda x, y: ref.region_loss(x, y, kind="dice") + _ref_pixel(ref_pixel.FOCAL_SIGMOID)(x, y),
                     _monai("DiceFocalLoss", softmax=True, to_onehot_y=True), 3, 2)
OPS["focal"] = (lambda x, y, backend=None: F.focal_loss(x, y, mode="multiclass", backend=backend),
                _ref_pixel(ref_pixel.FOCAL_SOFTMAX), _monai("FocalLoss", use_softmax=True, to_onehot_y=True), 1, 1)
# The sigmoid focal loss, one class against the rest (smp's FocalLoss in every mode), on class indices.
OPS["focal_sigmoid"] = (lambda x, y, backend=None: F.focal_loss(x, y, mode="multilabel", alpha=-1.0,
                                                                backend=backend),
                        _ref_pixel(ref_pixel.FOCAL_SIGMOID), None, 1, 1)
# BCE on dense (one-hot, float) targets of the logits' shape: DENSE_TARGETS.
OPS["bce"] = (lambda x, y, backend=None: F.binary_cross_entropy_with_logits(x, y, backend=backend),
              torch.nn.functional.binary_cross_entropy_with_logits, None, 1, 1)
DENSE_TARGETS = ("bce",)


def _compat(module, name, *args, labels_1=False, **kw):
    """A class of segfast.compat.monai / .smp (module "compat.monai" / "compat.smp"),
    or of the smp peer (module "smp"), on the op's inputs: class indices as int64
    ([N, 1, ...] with ``labels_1``), dense float targets as they are."""
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


# op -> extra rows: the drop-in classes beside the native function and their peer
# ("compat_monai" / "compat_smp" rows; "smp" the smp peer where the op has one)
COMPAT = {
    "dice": {"compat_monai": _compat("compat.monai", "DiceLoss", softmax=True, to_onehot_y=True, labels_1=True),
             "smp": _compat("smp", "DiceLoss", "multiclass"),
             "compat_smp": _compat("compat.smp", "DiceLoss", "multiclass")},
    "jaccard": {"smp": _compat("smp", "JaccardLoss", "multiclass"),
                "compat_smp": _compat("compat.smp", "JaccardLoss", "multiclass")},
    "tversky": {"compat_monai": _compat("compat.monai", "TverskyLoss", softmax=True, to_onehot_y=True,
                                        labels_1=True),
                "smp": _compat("smp", "TverskyLoss", "multiclass"),
                "compat_smp": _compat("compat.smp", "TverskyLoss", "multiclass")},
    "generalized_dice": {"compat_monai": _compat("compat.monai", "GeneralizedDiceLoss", softmax=True,
                                                 to_onehot_y=True, labels_1=True)},
    "cross_entropy": {"smp": _compat("smp", "SoftCrossEntropyLoss", smooth_factor=0.0),
                      "compat_smp": _compat("compat.smp", "SoftCrossEntropyLoss", smooth_factor=0.0)},
    "lovasz_softmax": {"compat_smp": _compat("compat.smp", "LovaszLoss", "multiclass", per_image=True)},
    "dice_ce": {"compat_monai": _compat("compat.monai", "DiceCELoss", softmax=True, to_onehot_y=True, labels_1=True)},
    "dice_focal": {"compat_monai": _compat("compat.monai", "DiceFocalLoss", softmax=True, to_onehot_y=True,
                                           labels_1=True)},
    "focal": {"compat_monai": _compat("compat.monai", "FocalLoss", use_softmax=True, to_onehot_y=True,
                                      labels_1=True)},
    "focal_sigmoid": {"smp": _compat("smp", "FocalLoss", "multiclass"),
                      "compat_smp": _compat("compat.smp", "FocalLoss", "multiclass")},
    "bce": {"smp": _compat("smp", "SoftBCEWithLogitsLoss"),
            "compat_smp": _compat("compat.smp", "SoftBCEWithLogitsLoss")},
}
QUICK_OPS = ("dice", "fused")
TORCH_ONLY = ()  # families whose kernels are not written yet (none now)
ALSO_TORCH = ("lovasz_softmax",)  # kernels measured next to the torch backend (a batched torch sort)


# ---- boxes_match family: ops without a backward (box_iou_max, nms) ----
# NOGRAD_OPS: op -> shape(device), inputs(case, device, generator), bytes(case). They join OPS
# (function, eager baseline); make_inputs / cases / kernel_bytes look here first, and
# fwd_bwd calls backward only on a loss that has a gradient.
from .ops import boxes_match as _bm  # noqa: E402
from .reference import boxes_match as _ref_bm  # noqa: E402


def _random_boxes(n, g, lo, hi, extent=1000.0):
    xy = torch.rand(n, 2, generator=g) * extent
    wh = lo + torch.rand(n, 2, generator=g) * (hi - lo)
    return torch.cat([xy, xy + wh], 1)


def _match_inputs(case, device, g):
    B, N, M = case.shape
    a = torch.stack([_random_boxes(N, g, 8, 256) for _ in range(B)])
    gt = torch.stack([_random_boxes(M, g, 16, 300) for _ in range(B)])
    return a.to(device=device, dtype=case.dtype), gt.to(device=device, dtype=case.dtype)


def _nms_inputs(case, device, g):
    (N,) = case.shape
    return (_random_boxes(N, g, 20, 120).to(device=device, dtype=case.dtype),
            torch.rand(N, generator=g).to(device))


NOGRAD_OPS = {
    "box_iou_max": dict(
        shape=lambda device: (1, 200_000, 500), inputs=_match_inputs,
        bytes=lambda c: (c.shape[0] * (c.shape[1] + c.shape[2]) * 4 * torch.finfo(c.dtype).bits // 8
                         + c.shape[0] * (c.shape[1] * 12 + c.shape[2] * 4))),
    "nms": dict(
        shape=lambda device: (10_000,), inputs=_nms_inputs,
        bytes=lambda c: c.shape[0] * (4 * torch.finfo(c.dtype).bits // 8 + 4 + 8)),
}
OPS["box_iou_max"] = (_bm.box_iou_max, _ref_bm.box_iou_max_full, None, 0, 0)
OPS["nms"] = (lambda b, s, backend=None: _bm.nms(b, s, 0.5, backend=backend),
              lambda b, s: _ref_bm.nms(b, s, 0.5), None, 0, 0)
# ---- end of the boxes_match family ----


# ---- boxes family: cases with their own inputs (x, y = boxes1, boxes2) -----------------------
def _box_inputs(case: Case, device: torch.device, seed: int = 0):
    """xyxy boxes in [0, 512)^2, sides in [1, 65); boxes1 requires grad only for
    the forward+backward cases (the pairwise IoU is timed forward only)."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * 512
        return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 64], -1).to(device=device, dtype=case.dtype)

    n = case.shape[0]
    m = case.shape[1] if len(case.shape) > 1 else n
    return boxes(n).requires_grad_(BOX_CASES[case.op][1]), boxes(m)


def _box_bytes(case: Case) -> int:
    """Pairwise: read both sets, write [N, M]; aligned loss: read both sets, write the gradient."""
    e = torch.finfo(case.dtype).bits // 8
    if len(case.shape) > 1:
        n, m = case.shape
        return (4 * (n + m) + n * m) * e
    return 3 * 4 * case.shape[0] * e


def _box_ops():
    from .ops import boxes as box_ops
    from .reference import boxes as ref_boxes

    return {
        "box_iou": (box_ops.box_iou, lambda x, y: ref_boxes.pairwise(x, y, ref_boxes.IOU), None, 0, 0),
        "ciou_loss": (lambda x, y, backend=None: box_ops.ciou_loss(x, y, reduction="mean", backend=backend),
                      lambda x, y: ref_boxes.box_loss(x, y, ref_boxes.CIOU, "mean"), None, 0, 0),
    }


# op -> (shape, timed with backward); more box ops (matching, NMS) can be added here
BOX_CASES = {"box_iou": ((4096, 4096), False), "ciou_loss": ((1 << 20,), True)}
OPS.update(_box_ops())
# ---- end of the boxes family ----


def cases(device: torch.device, quick: bool = False) -> list[Case]:
    if device.type == "cuda":
        shape, dtype, lab = (16, 21, 512, 512), torch.bfloat16, torch.uint8
    else:
        shape, dtype, lab = (8, 21, 128, 128), torch.float32, torch.int64
    custom = {op: spec[0] for op, spec in BOX_CASES.items()}  # own shapes and inputs, fp32
    custom.update({op: spec["shape"](device) for op, spec in NOGRAD_OPS.items()})
    out = [Case(op, shape, dtype, dtype if op in DENSE_TARGETS else lab)
           for op in (QUICK_OPS if quick else OPS) if op not in custom]
    return out + ([] if quick else [Case(op, s, torch.float32, torch.int64) for op, s in custom.items()])


def make_inputs(case: Case, device: torch.device, seed: int = 0):
    if case.op in BOX_CASES:  # boxes family
        return _box_inputs(case, device, seed)
    g = torch.Generator(device="cpu").manual_seed(seed)
    if case.op in NOGRAD_OPS:
        return NOGRAD_OPS[case.op]["inputs"](case, device, g)
    x = torch.randn(case.shape, generator=g).to(device=device, dtype=case.dtype).requires_grad_(True)
    n, c, *spatial = case.shape
    # Piecewise-constant labels (blocks), like real masks rather than noise.
    coarse = torch.randint(0, c, (n, *[max(1, s // 16) for s in spatial]), generator=g)
    y = torch.nn.functional.interpolate(coarse[:, None].float(), size=spatial, mode="nearest")[:, 0]
    if case.label_dtype.is_floating_point:  # dense targets: the labels one-hot, [N, C, ...]
        y = torch.nn.functional.one_hot(y.long(), c).movedim(-1, 1)
    return x, y.to(device=device, dtype=case.label_dtype)


def runners(case: Case, device: torch.device) -> dict[str, Callable]:
    """name -> loss(x, y); 'reference' is the eager baseline, 'monai' the peer."""
    fn, reference, monai, _, _ = OPS[case.op]
    out = {}
    kernels = [b for b in backends.available(device) if b != "torch"]
    if case.op in TORCH_ONLY:  # no kernels yet: the batched torch implementation
        kernels = ["torch"]
    elif case.op in ALSO_TORCH:
        kernels.append("torch")
    for b in kernels:
        out[b] = (lambda b: lambda x, y: fn(x, y, backend=b))(b)
    out["reference"] = reference
    if monai is not None:
        try:
            out["monai"] = monai()
        except Exception:
            pass
    if case.op == "lovasz_softmax":
        from .compat.smp import load_smp_losses

        smp = load_smp_losses()
        if smp is not None:
            out["smp"] = smp.LovaszLoss("multiclass", per_image=True)
    for name, make in COMPAT.get(case.op, {}).items():
        try:
            out[name] = make()
        except ImportError:  # the smp peer is optional
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
    forked by a --probe-server that imports torch and segfast once: a fresh
    interpreter per case spent 3.5 s on imports, a third of segfast-bench.
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
    if case.op in NOGRAD_OPS:
        return NOGRAD_OPS[case.op]["bytes"](case)
    if case.op in BOX_CASES:  # boxes family
        return _box_bytes(case)
    n = 1
    for s in case.shape:
        n *= s
    xb = n * case.dtype.itemsize
    tb = (n if case.label_dtype.is_floating_point else n // case.shape[1]) * case.label_dtype.itemsize
    _, _, _, passes, writes = OPS[case.op]
    return passes * (xb + tb) + writes * xb


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
                     if r["backend"] in backends.BACKENDS and case.op not in TORCH_ONLY + tuple(NOGRAD_OPS)
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


# ---- crf family ------------------------------------------------------------------
# Dense CRF inference (no backward): 21 labels, 5 iterations, the default kernels, on a
# natural-looking image (smooth background, flat-coloured shapes with edges, mild noise)
# with noisy unaries; times include building the lattices. Peer: pydensecrf, one image
# at a time (CPU only).

CRF_LABELS, CRF_ITERATIONS = 21, 5


def crf_inputs(B: int, H: int, W: int, device, C: int = CRF_LABELS, seed: int = 0):
    """-> (unary energies [B, C, H, W] float32, image [B, 3, H, W] uint8, ground truth [B, H, W])."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    imgs, gts = [], []
    for _ in range(B):
        coarse = torch.rand((1, 3, 4, 4), generator=g)
        img = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bicubic", align_corners=False)[0]
        img = img.clamp(0, 1) * 120 + 60
        gt = torch.zeros((H, W), dtype=torch.long)
        for c in range(1, min(C, 12)):
            cy, cx = float(torch.rand((), generator=g)) * H, float(torch.rand((), generator=g)) * W
            r = (0.05 + 0.12 * float(torch.rand((), generator=g))) * min(H, W)
            inside = ((ys - cy) ** 2 + (xs - cx) ** 2 < r * r) if c % 2 else (
                ((ys - cy).abs() < r) & ((xs - cx).abs() < 1.4 * r))
            img[:, inside] = (torch.rand(3, generator=g) * 255).view(3, 1)
            gt[inside] = c
        imgs.append((img + 6 * torch.randn((3, H, W), generator=g)).round().clamp(0, 255).to(torch.uint8))
        gts.append(gt)
    gt = torch.stack(gts)
    logits = 1.0 * torch.nn.functional.one_hot(gt, C).permute(0, 3, 1, 2).float()
    logits += 1.2 * torch.randn(logits.shape, generator=g)
    unary = -torch.log_softmax(logits, 1)
    return unary.to(device), torch.stack(imgs).to(device), gt.to(device)


def pydensecrf_loop():
    """pydensecrf over a batch, one image at a time (None if not installed)."""
    try:
        import numpy as np
        import pydensecrf.densecrf as dcrf
    except ImportError:
        return None

    def run(unary, image):
        B, C, H, W = unary.shape
        out = []
        for b in range(B):
            d = dcrf.DenseCRF2D(W, H, C)
            d.setUnaryEnergy(np.ascontiguousarray(unary[b].reshape(C, -1).cpu().numpy()))
            d.addPairwiseGaussian(sxy=3, compat=3)
            d.addPairwiseBilateral(sxy=80, srgb=13, compat=10,
                                   rgbim=np.ascontiguousarray(image[b].permute(1, 2, 0).cpu().numpy()))
            out.append(np.array(d.inference(CRF_ITERATIONS)))
        return out
    return run


def crf_runners(device: torch.device) -> dict:
    out = {}
    for b in backends.available(device):
        if b in ("cpu", "cuda", "torch"):
            out[b] = (lambda b: lambda u, im: F.dense_crf(u, im, iterations=CRF_ITERATIONS, backend=b))(b)
    peer = pydensecrf_loop() if device.type == "cpu" else None
    if peer is not None:
        out["pydensecrf"] = peer
    return out


def crf_cases(device: torch.device, quick: bool = False) -> list:
    """(B, H, W) per row: one image and a batch (4 on CPU, 8 on GPU) of 512 x 512."""
    if quick:
        return [(1, 128, 128)]
    return [(1, 512, 512), (8 if device.type == "cuda" else 4, 512, 512)]


def measure_crf_case(device: torch.device, B: int, H: int, W: int, repeat: int = 5) -> list[dict]:
    """dense_crf rows of one (B, H, W) case: segfast's backends and pydensecrf. The
    eager torch backend (seconds per image) is timed on a batch in one call, with
    no warmup call (crf_cases runs one image first), so that a batch's rows have
    their ratio to it too."""
    u, im, _ = crf_inputs(B, H, W, device)
    rows = []
    for name, fn in crf_runners(device).items():
        if name == "torch":
            times = time_fn(lambda: fn(u, im), device, repeat=2 if B == 1 else 1, warmup=1,
                            first=0.0 if B > 1 else None)
        else:
            times = time_fn(lambda: fn(u, im), device, repeat=repeat, warmup=1)
        rows.append(dict(op="dense_crf", shape=[B, CRF_LABELS, H, W], dtype="float32", labels="-",
                         backend=name, device=str(device), median_ms=1e3 * statistics.median(times),
                         iqr_ms=_iqr_ms(times), per_image_ms=1e3 * statistics.median(times) / B,
                         logits_mb=u.numel() * 4 / 2**20, peak_extra_mb=None, gbps=None,
                         speedup_vs_monai=None, speedup_vs_smp=None))
    base = {r["backend"]: r["median_ms"] for r in rows}
    for r in rows:
        r["speedup_vs_reference"] = base["torch"] / r["median_ms"] if "torch" in base else None
        r["speedup_vs_pydensecrf"] = base["pydensecrf"] / r["median_ms"] if "pydensecrf" in base else None
    return rows


def measure_crf(device: torch.device, quick: bool = False, repeat: int = 5) -> list[dict]:
    """dense_crf rows of every case of crf_cases."""
    return [r for B, H, W in crf_cases(device, quick) for r in measure_crf_case(device, B, H, W, repeat)]


# ---- load: the CRF on a noisy image, a training step, rows under background load ----

def crf_noise_inputs(B: int, H: int, W: int, device, C: int = 2, seed: int = 0):
    """-> (unary energies [B, C, H, W] float32, uniform-noise RGB image [B, 3, H, W] uint8): the
    hard case of the bilateral kernel, where nearly every pixel is a lattice point of its own."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8)
    unary = -torch.log_softmax(torch.randn((B, C, H, W), generator=g), 1)
    return unary.to(device), image.to(device)


def measure_crf_noise(device: torch.device, quick: bool = False, repeat: int = 3) -> list[dict]:
    """dense_crf(noise) rows: one uniform-noise 512 x 512 image (128 x 128 with quick), 2 labels;
    the cpu backend against pydensecrf, called in turns (one call of each per round)."""
    S = 128 if quick else 512
    u, im = crf_noise_inputs(1, S, S, device)
    run = crf_runners(device)
    run.pop("torch", None)  # the eager lattice: seconds per image
    times = _interleaved(run, lambda fn: fn(u, im), device, repeat, min_time=0.0)
    rows = [dict(op="dense_crf(noise)", shape=list(u.shape), dtype="float32", labels="-", backend=name,
                 device=str(device), median_ms=1e3 * statistics.median(t), iqr_ms=_iqr_ms(t),
                 per_image_ms=1e3 * statistics.median(t), logits_mb=u.numel() * 4 / 2**20, peak_extra_mb=None,
                 gbps=None, speedup_vs_monai=None, speedup_vs_smp=None, speedup_vs_reference=None)
            for name, t in times.items()]
    peer = times.get("pydensecrf")
    for r in rows:
        r["speedup_vs_pydensecrf"] = statistics.median(peer) / (r["median_ms"] * 1e-3) if peer else None
    return rows


def _iqr_ms(times: list[float]) -> float:
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return 1e3 * (q[2] - q[0])


def _interleaved(fns: dict, call: Callable, device, repeat: int, min_time: float) -> dict:
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


def _train_net(C: int) -> torch.nn.Module:
    """A small segmentation net: RGB -> C logits at full resolution."""
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, C, 1))


def measure_train_step(device: torch.device, repeat: int = 10, min_time: float = MIN_TIME,
                       op: str = "dice") -> list[dict]:
    """What a user feels of the loss: rows of one training step (the net of _train_net forward,
    the loss, backward) with segfast's loss and with MONAI's, same net, same data, the steps in
    turns; beside them the loss alone (forward+backward) on fresh logits each call (a clone, as a
    net writes new ones), segfast's and MONAI's calls in turns, and in a loop of its own."""
    case = next((c for c in cases(device) if c.op == op), None)
    run = runners(case, device) if case is not None else {}
    default = backends.default_backend(device)  # what a user's loss runs on (never the Triton interpreter)
    if "monai" not in run or default not in run or default == "torch":
        return []
    kernels = {default: run[default]}
    x, y = make_inputs(case, device)
    N, C, H, W = case.shape
    net = _train_net(C).to(device=device, dtype=case.dtype)
    image = torch.randn((N, 3, H, W), generator=torch.Generator().manual_seed(1)).to(device, case.dtype)
    losses = dict(kernels, monai=run["monai"])

    def train_step(loss):
        net.zero_grad(set_to_none=True)
        loss(net(image), y).backward()

    def loss_step(loss):
        xf = x.detach().clone().requires_grad_(True)
        loss(xf, y).backward()

    rows = []

    def add(kind, times):
        base = statistics.median(times["monai"])
        for name, t in times.items():
            rows.append(dict(op=f"{op}:{kind}", shape=list(case.shape), dtype=str(case.dtype)[6:],
                             labels=str(case.label_dtype)[6:], backend=name, device=str(device),
                             median_ms=1e3 * statistics.median(t), iqr_ms=_iqr_ms(t), logits_mb=None,
                             peak_extra_mb=None, gbps=None, speedup_vs_reference=None, speedup_vs_smp=None,
                             speedup_vs_monai=base / statistics.median(t)))

    add("train_step", _interleaved(losses, train_step, device, repeat, min_time))
    add("loss_interleaved", _interleaved(losses, loss_step, device, repeat, min_time))
    alone = {name: time_fn(lambda: loss_step(fn), device, repeat=repeat, min_time=min_time)
             for name, fn in losses.items()}
    add("loss_own_loop", alone)
    return rows


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
                   help="only " + " and ".join(QUICK_OPS) + ", a small CRF and the small metrics cases")
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


def stages(device: torch.device, args) -> list:
    """(name, zero-argument function returning rows) for every stage of a run."""
    loaded = args.under_load and device.type == "cpu"
    memory = not (args.no_memory or loaded)
    out = [(case.name, functools.partial(measure, case, device, repeat=args.repeat, memory=memory,
                                         min_time=args.min_time))
           for case in cases(device, quick=args.quick)]
    out.append(("training step (dice)", lambda: measure_train_step(device, repeat=args.repeat,
                                                                   min_time=args.min_time)))
    out += [(f"dense_crf[{B}x{CRF_LABELS}x{H}x{W}]", functools.partial(measure_crf_case, device, B, H, W))
            for B, H, W in crf_cases(device, args.quick)]
    out.append(("dense_crf(noise)", lambda: measure_crf_noise(device, quick=args.quick)))
    if device.type == "cpu":  # the metrics family's CPU rows
        def metrics(kind):
            from .metrics import _bench as metrics_bench
            return getattr(metrics_bench, f"measure_{kind}")(args.quick, memory=memory)
        out += [("coco_map", lambda: metrics("detection")), ("confusion_matrix", lambda: metrics("segmentation"))]
    from .metrics import _bench as metrics_bench  # a Dice step with confusion=, beside its peers
    out.append(("dice_step_confusion", lambda: metrics_bench.measure_loss_confusion(device, args.quick)))
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
