"""Benchmark rows of the metrics family: its segfast-bench stages (:func:`stages`,
collected through segfast/_families.py) and bench/bench_metrics.py.

Detection: ``synthetic_coco`` (seed 0: 5,000 images, 80 categories, ~7 gts
per image with ~2% crowd, ~100 detections per image, scores with 3
decimals). Timed per runner, interleaved, medians: segfast's
``compute()`` on an evaluator already holding the state, against the
peers' ``evaluate(); accumulate(); summarize()`` on ground truth and
results already loaded (pycocotools, faster-coco-eval when installed);
plus segfast's ``from_coco(gt, dets).compute()`` from the json dicts.
Peak extra memory of each, each in a process of its own (peak resident set
during the call minus the resident set before it).

Segmentation: 100 logits [21, 512, 512] float32 with ignore_index=255, fed
as batches of 10: segfast ``ConfusionMatrix``, argmax + ``torch.bincount``,
torchmetrics ``MulticlassJaccardIndex`` (default validation).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from .detection import COCOEvaluator, synthetic_coco, to_tensors

DET_FULL = dict(n_images=5000, n_categories=80, gts_per_image=7.0, crowd_fraction=0.02, dets_per_image=100.0,
                seed=0)
DET_QUICK = dict(n_images=500, n_categories=20, gts_per_image=7.0, crowd_fraction=0.02, dets_per_image=100.0,
                 seed=0)


def _quiet(fn, *a):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a)


def _peer_classes(name):
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        return COCO, COCOeval
    import faster_coco_eval

    return faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster


def _peer_loaded(name, gt, dets):
    COCO, COCOeval = _peer_classes(name)
    coco = _quiet(COCO)
    coco.dataset = gt
    _quiet(coco.createIndex)
    res = _quiet(coco.loadRes, list(dets))
    return COCOeval, coco, res


def det_runners(gt, dets, names=None) -> dict:
    """name -> zero-argument callable returning the 12 numbers (state / loaded data prepared here)."""
    out = {}
    want = names or ("segfast", "segfast_from_coco", "pycocotools", "faster_coco_eval")
    if "segfast" in want:
        preds, targets = to_tensors(gt, dets, "xywh")
        m = COCOEvaluator(box_format="xywh")
        m.update(preds, targets)
        del preds, targets

        def seg():
            m._cache = None
            return m.compute()["stats"].tolist()
        out["segfast"] = seg
    if "segfast_from_coco" in want:
        out["segfast_from_coco"] = lambda: COCOEvaluator.from_coco(gt, dets).compute()["stats"].tolist()
    for name in ("pycocotools", "faster_coco_eval"):
        if name not in want:
            continue
        try:
            COCOeval, coco, res = _peer_loaded(name, gt, dets)
        except ImportError:
            continue

        def peer(COCOeval=COCOeval, coco=coco, res=res):
            ev = COCOeval(coco, res, "bbox")
            _quiet(ev.evaluate)
            _quiet(ev.accumulate)
            _quiet(ev.summarize)
            return list(ev.stats)[:12]
        out[name] = peer
    return out


def _rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _probe(kind: str, name: str, quick: bool) -> int:
    """Peak extra bytes of one call of runner ``name`` (run in a process of its own)."""
    if kind == "det":
        gt, dets = synthetic_coco(**(DET_QUICK if quick else DET_FULL))
        fn = det_runners(gt, dets, [name])[name]
    else:
        fn = seg_runners(quick)[name]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _rss("VmRSS")
    fn()
    return max(0, _rss("VmHWM") - base)


def peak_mb(kind: str, name: str, quick: bool):
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    code = (f"import segfast.metrics._bench as b; print('PEAK', b._probe({kind!r}, {name!r}, {quick!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("PEAK"):
            return int(line.split()[1]) / 2**20
    return None


def _interleaved(runners: dict, repeat: int, slow=(), slow_repeat=1) -> dict:
    """Timed calls, one runner after the other; the callers make each runner's first call."""
    times = {k: [] for k in runners}
    for i in range(repeat):
        for k, fn in runners.items():
            if k in slow and i >= slow_repeat:
                continue
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def measure_detection(quick: bool = False, repeat: int = 3, memory: bool = True) -> list:
    cfg = DET_QUICK if quick else DET_FULL
    gt, dets = synthetic_coco(**cfg)
    run = det_runners(gt, dets)
    stats = {k: fn() for k, fn in run.items()}
    times = _interleaved(run, repeat, slow=("pycocotools",), slow_repeat=1 if not quick else repeat)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    shape = [cfg["n_images"], cfg["n_categories"], len(dets)]
    for k in run:
        q = statistics.quantiles(times[k], n=4) if len(times[k]) > 1 else [times[k][0]] * 3
        rows.append(dict(op="coco_map", shape=shape, dtype="float64", labels="-", backend=k, device="cpu",
                         median_ms=1e3 * med[k], iqr_ms=1e3 * (q[2] - q[0]), gbps=None,
                         peak_extra_mb=peak_mb("det", k, quick) if memory else None,
                         speedup_vs_reference=None,
                         speedup_vs_pycocotools=med["pycocotools"] / med[k] if "pycocotools" in med else None,
                         speedup_vs_faster_coco_eval=(med["faster_coco_eval"] / med[k]
                                                      if "faster_coco_eval" in med else None),
                         speedup_vs_monai=None, speedup_vs_smp=None,
                         stats_equal_pycocotools=(stats[k] == stats["pycocotools"]) if "pycocotools" in stats
                         else None, stats=stats[k]))
    return rows


SEG = dict(images=100, batch=10, C=21, H=512, W=512, ignore=255)
SEG_QUICK = dict(images=8, batch=4, C=21, H=256, W=256, ignore=255)


def seg_runners(quick: bool = False) -> dict:
    from .segmentation import ConfusionMatrix
    from ..reference import metrics as ref

    cfg = SEG_QUICK if quick else SEG
    g = torch.Generator().manual_seed(0)
    B, C, H, W = cfg["batch"], cfg["C"], cfg["H"], cfg["W"]
    x = torch.randn(B, C, H, W, generator=g)
    t = torch.randint(0, C, (B, H, W), generator=g)
    t[:, : H // 8] = cfg["ignore"]
    steps = cfg["images"] // B

    def segfast_run():
        m = ConfusionMatrix(C, ignore_index=cfg["ignore"])
        for _ in range(steps):
            m.update(x, t)
        return m.compute()["confusion_matrix"]

    def bincount_run():
        cm = torch.zeros(C, C, dtype=torch.int64)
        for _ in range(steps):
            cm += ref.confusion_matrix(x, t, C, ignore_index=cfg["ignore"])
        return cm

    out = {"segfast": segfast_run, "argmax_bincount": bincount_run}
    try:
        from torchmetrics.classification import MulticlassJaccardIndex

        def tm_run():
            m = MulticlassJaccardIndex(C, ignore_index=cfg["ignore"])
            for _ in range(steps):
                m.update(x, t)
            m.compute()
            return m.confmat.long()  # the matrix torchmetrics counted
        out["torchmetrics"] = tm_run
    except ImportError:
        pass
    return out


def measure_segmentation(quick: bool = False, repeat: int = 3, memory: bool = True) -> list:
    cfg = SEG_QUICK if quick else SEG
    run = seg_runners(quick)
    mats = {k: fn() for k, fn in run.items()}
    times = _interleaved(run, repeat, slow=("torchmetrics",), slow_repeat=max(1, repeat // 2))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for k in run:
        q = statistics.quantiles(times[k], n=4) if len(times[k]) > 1 else [times[k][0]] * 3
        rows.append(dict(op="confusion_matrix", shape=[cfg["images"], cfg["C"], cfg["H"], cfg["W"]],
                         dtype="float32", labels="int64", backend=k, device="cpu", median_ms=1e3 * med[k],
                         iqr_ms=1e3 * (q[2] - q[0]), gbps=None,
                         peak_extra_mb=peak_mb("seg", k, quick) if memory else None,
                         speedup_vs_reference=med["argmax_bincount"] / med[k],
                         speedup_vs_torchmetrics=med["torchmetrics"] / med[k] if "torchmetrics" in med else None,
                         speedup_vs_monai=None, speedup_vs_smp=None,
                         equal_to_bincount=bool(torch.equal(mats[k], mats["argmax_bincount"]))))
    return rows


def measure_segmentation_device(device: torch.device, quick: bool = False, repeat: int = 10,
                                backend_names=("triton", "cuda")) -> list:
    """Rows of the confusion matrix from logits on ``device`` (the SEG batch, one
    ``update`` per call) for each segfast backend in ``backend_names`` that runs
    there, beside argmax + ``torch.bincount`` on the same device: medians of the
    calls interleaved round by round, and GB/s of the one read of logits and
    labels the kernels must make."""
    from .. import backends
    from ..bench import time_fn
    from ..reference import metrics as ref
    from .segmentation import ConfusionMatrix

    cfg = SEG_QUICK if quick else SEG
    g = torch.Generator().manual_seed(0)
    B, C, H, W = cfg["batch"], cfg["C"], cfg["H"], cfg["W"]
    x = torch.randn(B, C, H, W, generator=g).to(device)
    t = torch.randint(0, C, (B, H, W), generator=g)
    t[:, : H // 8] = cfg["ignore"]
    t = t.to(device)
    run = {"argmax_bincount": lambda: ref.confusion_matrix(x, t, C, ignore_index=cfg["ignore"])}
    for b in backend_names:
        if backends.unavailable_reason(b, device) is None:
            def one(b=b):
                m = ConfusionMatrix(C, ignore_index=cfg["ignore"], backend=b)
                m.update(x, t)
                return m._counts[:-1].view(C, C)
            run[b] = one
    mats = {k: fn() for k, fn in run.items()}
    times = {k: [] for k in run}
    for _ in range(repeat):
        for k, fn in run.items():
            times[k] += time_fn(fn, device, repeat=1, warmup=1)
    med = {k: statistics.median(v) for k, v in times.items()}
    nbytes = x.numel() * x.element_size() + t.numel() * t.element_size()
    rows = []
    for k in run:
        q = statistics.quantiles(times[k], n=4) if len(times[k]) > 1 else [times[k][0]] * 3
        rows.append(dict(op="confusion_matrix", shape=[B, C, H, W], dtype="float32", labels="int64", backend=k,
                         device=device.type, median_ms=1e3 * med[k], iqr_ms=1e3 * (q[2] - q[0]),
                         gbps=nbytes / med[k] / 1e9, peak_extra_mb=None,
                         speedup_vs_reference=med["argmax_bincount"] / med[k], speedup_vs_monai=None,
                         speedup_vs_smp=None, equal_to_bincount=bool(torch.equal(mats[k], mats["argmax_bincount"]))))
    return rows


LOSS_CONF = dict(N=8, C=21, H=128, W=128, ignore=255)
LOSS_CONF_QUICK = dict(N=2, C=21, H=64, W=64, ignore=255)


def loss_confusion_steps(device: torch.device, N=8, C=21, H=128, W=128, ignore=255) -> dict:
    """name -> one Dice training step (forward + backward) on [N, C, H, W] float32 logits and
    int64 labels: alone, with ``confusion=`` (the counts from the loss's statistics pass),
    and followed by a separate ``ConfusionMatrix.update`` (a second read of the logits)."""
    from .. import functional as F
    from .segmentation import ConfusionMatrix

    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, W, generator=g).to(device).requires_grad_(True)
    t = torch.randint(0, C, (N, H, W), generator=g)
    t[torch.rand(N, H, W, generator=g) < 0.05] = ignore
    t = t.to(device)
    cm = ConfusionMatrix(C, ignore_index=ignore)

    def plain():
        F.dice_loss(x, t, ignore_index=ignore).backward()
        x.grad = None

    def fused():
        F.dice_loss(x, t, ignore_index=ignore, confusion=cm).backward()
        x.grad = None

    def separate():
        F.dice_loss(x, t, ignore_index=ignore).backward()
        cm.update(x.detach(), t)
        x.grad = None

    return {"dice": plain, "dice+confusion=": fused, "dice+ConfusionMatrix.update": separate}


def measure_loss_confusion(device: torch.device, quick: bool = False, repeat: int = 15,
                           classes: int | None = None) -> list:
    """Rows of a Dice step with ``confusion=`` beside the same step without it and with a
    separate ``ConfusionMatrix.update``: medians of the three steps interleaved round by
    round (the same load on all)."""
    from ..bench import time_fn

    cfg = dict(LOSS_CONF_QUICK if quick else LOSS_CONF)
    if classes is not None:
        cfg["C"] = classes
    steps = loss_confusion_steps(device, **cfg)
    times = {k: [] for k in steps}
    for fn in steps.values():
        fn()
    for _ in range(repeat):
        for k, fn in steps.items():
            times[k] += time_fn(fn, device, repeat=1, warmup=1)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for k in steps:
        q = statistics.quantiles(times[k], n=4)
        rows.append(dict(op="dice_step_confusion", shape=[cfg["N"], cfg["C"], cfg["H"], cfg["W"]],
                         dtype="float32", labels="int64", backend=k, device=device.type,
                         median_ms=1e3 * med[k], iqr_ms=1e3 * (q[2] - q[0]), gbps=None, peak_extra_mb=None,
                         speedup_vs_reference=None, speedup_vs_monai=None, speedup_vs_smp=None,
                         overhead_vs_dice=med[k] / med["dice"] - 1))
    return rows


def stages(device: torch.device, args) -> list:
    """segfast-bench's stages of the metrics family, (name, zero-argument function
    returning rows): COCO mAP and the confusion matrix against their peers (CPU
    rows), the confusion matrix's device kernels (triton, cuda) against argmax +
    bincount on a GPU, and a Dice step with ``confusion=`` beside the same step
    without it and with a separate update. ``args``: segfast-bench's arguments
    (``quick``, ``memory``)."""
    out = []
    if device.type == "cpu":
        out += [("coco_map", lambda: measure_detection(args.quick, memory=args.memory)),
                ("confusion_matrix", lambda: measure_segmentation(args.quick, memory=args.memory))]
    else:
        out.append(("confusion_matrix", lambda: measure_segmentation_device(device, args.quick)))
    out.append(("dice_step_confusion", lambda: measure_loss_confusion(device, args.quick)))
    return out


def measure(device: torch.device, quick: bool = False, memory: bool = True) -> list:
    """segfast-bench rows of the metrics family (CPU; the GPU paths are not timed here)."""
    if device.type != "cpu":
        return []
    return measure_detection(quick, memory=memory) + measure_segmentation(quick, memory=memory)


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    rows = measure(torch.device("cpu"), quick=quick, memory="--no-memory" not in sys.argv)
    print(json.dumps(rows, indent=1))
