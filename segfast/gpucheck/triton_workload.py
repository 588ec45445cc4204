"""The public ops run over a matrix of inputs with ``backend="triton"``, so
that ``triton_aot.record_launches`` sees every kernel configuration the
dispatch code can choose.

Runs on CPU tensors in the Triton interpreter (TRITON_INTERPRET=1 set before
triton is imported) or on a GPU. Shapes are tiny: only what the dispatch code
decides from them matters (the class count C picks the class tile, so every
tile size is visited: C = 1, 2, 3, 5, 9, 17, 33 and, for the pixel losses,
65).

``run("full")``: every value of every dispatch choice at least once per
kernel, and the interactions that select code paths together: for the
region and pixel losses every loss form (activation, label / dense target,
compound term, optional weights, reduction) x ignore_index or not on a
single class tile and on the looped tile, every class tile, every input dtype
(single and looped tile), every target dtype (dense targets of 8 and 16
bits on the looped tile too: its tile follows them), channels_last; for the boxes
every kind x gradients wanted, every format and dtype (CIoU); box matching
every format and dtype; CRF each pairwise-kernel combination. It is not the
full cross product: ``triton_aot.config_space`` derives that from these
launches and the tile sweep (``run_tiles``: every class count that changes
a launcher's tile x every dtype), and the slow tier compiles its covering
set (every configuration, every pair of choices, ``KernelSpace.covering``).
``run("quick")``: float32, one or two launches per kernel function.
"""

from __future__ import annotations

import itertools

import torch

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Logit dtypes the region and pixel Triton kernels take: they compute in
# float32 and refuse float64 logits (float64 targets are fine).
LOSS_FLOATS = FLOATS[:3]
LABELS = (torch.uint8, torch.int32, torch.int64)
BOX_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
FMTS = ("xyxy", "xywh", "cxcywh")

_BE = dict(backend="triton")


def _dev():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _logits(N, C, S, dtype, layout="contiguous"):
    g = torch.Generator().manual_seed(C * 131 + S)
    if layout == "channels_last":
        x = torch.randn(N, S, S, C, generator=g).permute(0, 3, 1, 2)
    else:
        x = torch.randn(N, C, S, S, generator=g)
    return x.to(device=_dev(), dtype=dtype).requires_grad_(True)


def _labels(N, C, S, dtype, ignore=None):
    g = torch.Generator().manual_seed(C * 7 + S)
    t = torch.randint(0, max(C, 1), (N, S, S), generator=g)
    if ignore is not None:
        t[0, 0, 0] = ignore
    return t.to(device=_dev(), dtype=dtype)


def _dense(N, C, S, dtype):
    g = torch.Generator().manual_seed(C * 11 + S)
    t = torch.rand(N, C, S, S, generator=g) > 0.5
    return t.to(device=_dev()) if dtype == torch.bool else t.to(device=_dev(), dtype=dtype)


def _backward(loss):
    loss.float().sum().backward()


def class_counts(tiles, max_c: int, min_c: int = 1) -> tuple:
    """The smallest class count C in min_c..max_c of each distinct value of
    ``tiles(C)`` (a launcher's own class-tile choice), in order of C."""
    seen = {}
    for C in range(min_c, max_c + 1):
        seen.setdefault(repr(tiles(C)), C)
    return tuple(seen.values())


TILE_FUNCTIONS = ("_blocks", "_dense_blocks", "_stats_blocks", "_grad_blocks")


def _launcher_tiles(family: str, itemsizes=(4,), names=("_blocks", "_stats_blocks")) -> tuple:
    """Class counts reaching every class tile of a region / pixel launcher:
    its tile functions ``names`` (of ``TILE_FUNCTIONS``), each at every
    element size in ``itemsizes`` where it takes one, over C from 2 (softmax needs two classes; the workload's
    binary and sigmoid cases take C = 1) up to twice its largest single tile
    (the looped path's tile does not change beyond it)."""
    import importlib
    import inspect
    mod = importlib.import_module(f"segfast.triton_kernels.{family}")
    fns = [getattr(mod, n) for n in names if hasattr(mod, n)]

    def tiles(C):
        return tuple(fn(C, None, None, i) if "itemsize" in inspect.signature(fn).parameters else fn(C, None, None)
                     for fn in fns for i in itemsizes)
    dense = getattr(mod, "DENSE_MAX_SINGLE_C", 0) if "_dense_blocks" in names else 0
    return class_counts(tiles, 2 * max(mod.MAX_SINGLE_C, getattr(mod, "STATS_MAX_C", 0), dense) + 1, min_c=2)


def _crf_tiles() -> tuple:
    """Label counts reaching every CRF tile choice (``triton_kernels.crf.blocks``)
    up to 129 labels (past 32 the choice repeats: tiles of 8, 16 or 32)."""
    from segfast.triton_kernels import crf
    return class_counts(lambda C: (crf.blocks(C), C <= crf.blocks(C)[1]), 129)


N, S = 2, 4  # images, side of the square image


def _region_case(C, dt, lt, tt, ign, form, layout="contiguous"):
    """One region loss, forward and backward. form: dice (softmax over labels),
    probs (labels, from_logits=False), ce / focal / fused (compound, labels),
    sigmoid / dense_softmax / dense_probs / dense_focal (dense targets), binary."""
    import segfast as sf
    x = _logits(N, 1 if form == "binary" else C, S, dt, layout)
    if form in ("dice", "probs", "ce", "focal", "fused", "binary"):
        t = _labels(N, 2 if form == "binary" else C, S, lt, ign)
        if form == "dice":
            out = sf.dice_loss(x, t, mode="multiclass", ignore_index=ign, **_BE)
        elif form == "probs":
            out = sf.dice_loss(x.softmax(1), t, mode="multiclass", from_logits=False, ignore_index=ign, **_BE)
        elif form == "ce":
            out = sf.dice_ce_loss(x, t, ignore_index=ign, **_BE)
        elif form == "focal":
            out = sf.dice_focal_loss(x, t, mode="multiclass", ignore_index=ign, **_BE)
        elif form == "fused":
            out = sf.dice_fused_loss(x, t, ignore_index=ign, **_BE)
        else:
            out = sf.dice_loss(x, t, mode="binary", ignore_index=ign, **_BE)
    else:
        t = _dense(N, C, S, tt)
        ign_d = None if tt == torch.bool or ign is None else 0.0
        if form == "sigmoid":
            out = sf.dice_loss(x, t, mode="multilabel", ignore_index=ign_d, **_BE)
        elif form == "dense_softmax":
            out = sf.dice_loss(x, t, mode="multiclass", ignore_index=ign_d, **_BE)
        elif form == "dense_probs":
            out = sf.dice_loss(x.sigmoid(), t, mode="multilabel", from_logits=False, ignore_index=ign_d, **_BE)
        else:
            out = sf.dice_focal_loss(x, t, mode="multilabel", ignore_index=ign_d, **_BE)
    _backward(out)


def _region(level):
    f32, i64 = torch.float32, torch.int64
    if level == "quick":
        _region_case(3, f32, i64, f32, None, "dice")
        _region_case(33, f32, i64, f32, None, "dice")
        return
    label_forms = ("dice", "probs", "ce", "focal", "fused")
    dense_forms = ("sigmoid", "dense_softmax", "dense_probs", "dense_focal")
    # every loss form x ignore_index or not at a single class tile; every form on the looped tile
    for ign, form in itertools.product((None, 255), label_forms + dense_forms):
        _region_case(3, f32, i64, f32, ign, form)
    for form in label_forms + dense_forms:
        _region_case(33, f32, i64, f32, 255, form)
    _region_case(1, f32, i64, f32, 255, "binary")
    _region_case(1, f32, i64, f32, None, "sigmoid")
    # every class tile
    for C in _launcher_tiles("region"):
        _region_case(C, f32, i64, f32, None, "dice")
    _region_case(17, f32, i64, f32, None, "sigmoid")
    # every input dtype (single and looped tile), every target dtype
    for dt in LOSS_FLOATS[1:]:
        _region_case(3, dt, i64, f32, 255, "dice")
        _region_case(3, dt, i64, f32, 255, "sigmoid")
        _region_case(33, dt, i64, f32, 255, "dice")
    for lt in LABELS[:-1]:
        _region_case(3, f32, lt, f32, 255, "dice")
    for tt in FLOATS[1:] + (torch.bool,):
        _region_case(3, f32, i64, tt, 255, "sigmoid")
    for tt in (torch.float16, torch.bool):  # the grad kernel's looped tile follows the narrowest tile dtype
        _region_case(33, f32, i64, tt, 255, "dense_softmax")
    # channels_last (unit class stride)
    _region_case(3, f32, i64, f32, None, "dice", "channels_last")
    _region_case(33, f32, i64, f32, None, "sigmoid", "channels_last")


def _pixel_case(C, dt, lt, tt, ign, form, red, opt=False):
    """One pixel loss, forward and backward. form: ce / focal / fused (softmax,
    labels), bce / balanced / sfocal (sigmoid, dense targets), dfocal (softmax
    focal, dense targets), bce_labels / sfocal_labels (sigmoid, C = 1 with
    labels); opt: with the optional weights
    (class weight + label smoothing, alpha, pos_weight)."""
    import segfast as sf
    x = _logits(N, C, S, dt)
    w = torch.rand(C, device=_dev()) + 0.5 if opt else None
    if form in ("ce", "focal", "fused", "bce_labels", "sfocal_labels"):
        t = _labels(N, 2 if C == 1 else C, S, lt, ign)
        if form == "ce":
            out = sf.cross_entropy(x, t, weight=w, ignore_index=-100 if ign is None else ign,
                                   label_smoothing=0.1 if opt else 0.0, reduction=red, **_BE)
        elif form == "focal":
            out = sf.focal_loss(x, t, mode="multiclass", alpha=w, ignore_index=ign, reduction=red, **_BE)
        elif form == "fused":
            out = sf.fused_loss(x, t, ignore_index=ign, reduction=red, **_BE)
        elif form == "bce_labels":
            out = sf.binary_cross_entropy_with_logits(x, t, ignore_index=ign, reduction=red, **_BE)
        else:
            out = sf.focal_loss(x, t, mode="binary", alpha=0.25 if opt else None, ignore_index=ign, reduction=red,
                                **_BE)
    else:
        t = _dense(N, C, S, tt)
        ign_d = None if tt == torch.bool or ign is None else 0.0
        if form == "bce":
            out = sf.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=w, ignore_index=ign_d,
                                                      reduction=red, **_BE)
        elif form == "balanced":
            out = sf.balanced_bce_loss(x, t, ignore_index=ign_d, reduction=red, **_BE)
        elif form == "dfocal":
            out = sf.focal_loss(x, t, mode="multiclass", alpha=w, ignore_index=ign_d, reduction=red, **_BE)
        else:
            out = sf.focal_loss(x, t, mode="multilabel", alpha=0.25 if opt else None, ignore_index=ign_d,
                                reduction=red, **_BE)
    _backward(out)


def _pixel(level):
    f32, i64 = torch.float32, torch.int64
    if level == "quick":
        _pixel_case(3, f32, i64, f32, None, "ce", "mean")
        _pixel_case(3, f32, i64, f32, None, "bce", "mean")
        _pixel_case(3, f32, i64, f32, None, "dfocal", "mean")
        return
    forms = ("ce", "focal", "fused", "bce", "balanced", "sfocal", "dfocal")
    # every loss form x ignore_index or not (with the optional weights), and
    # without them; loss sums + gradient (mean) or map, then gradient (none)
    for ign, form in itertools.product((None, 255), forms):
        _pixel_case(3, f32, i64, f32, ign, form, "mean", opt=True)
    for form in ("ce", "focal", "bce", "sfocal", "dfocal"):
        _pixel_case(3, f32, i64, f32, None, form, "mean")
    for form in forms:
        _pixel_case(65, f32, i64, f32, 255, form, "none", opt=True)
    _pixel_case(1, f32, i64, f32, 255, "bce_labels", "mean")
    _pixel_case(1, f32, i64, f32, None, "sfocal_labels", "none", opt=True)
    # every class tile
    for C in _launcher_tiles("pixel"):
        _pixel_case(C, f32, i64, f32, None, "ce", "mean")
    for C in (17, 65):
        _pixel_case(C, f32, i64, f32, None, "bce", "mean")
    # every input dtype (single and looped tile), every target dtype
    for dt in LOSS_FLOATS[1:]:
        _pixel_case(3, dt, i64, f32, 255, "ce", "mean")
        _pixel_case(3, dt, i64, f32, 255, "bce", "mean")
        _pixel_case(65, dt, i64, f32, 255, "ce", "none")
    for lt in LABELS[:-1]:
        _pixel_case(3, f32, lt, f32, 255, "ce", "mean")
    for tt in FLOATS[1:] + (torch.bool,):
        _pixel_case(3, f32, i64, tt, 255, "bce", "mean")


def _lovasz(level):
    import segfast as sf
    xdt = FLOATS if level == "full" else (torch.float32,)
    C = 3
    for dt, ign in itertools.product(xdt, (None, 255)):
        x = _logits(N, 1, S, dt)
        _backward(sf.lovasz_hinge_loss(x, _labels(N, 2, S, torch.int64, ign), ignore_index=ign, **_BE))
        x = _logits(N, C, S, dt)
        _backward(sf.lovasz_softmax_loss(x, _labels(N, C, S, torch.int64, ign), ignore_index=ign, **_BE))


def _boxes(N, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(N, 2, generator=g) * 50
    wh = torch.rand(N, 2, generator=g) * 20 + 1
    return torch.cat([xy, xy + wh], 1).to(device=_dev(), dtype=dtype)


def _box_case(kinds, dt, fmt, need, reds=("none", "mean", "sum")):
    import segfast as sf
    pair = {"iou": sf.box_iou, "giou": sf.generalized_box_iou, "diou": sf.distance_box_iou,
            "ciou": sf.complete_box_iou}
    alig = {"iou": sf.box_iou_aligned, "giou": sf.generalized_box_iou_aligned, "diou": sf.distance_box_iou_aligned,
            "ciou": sf.complete_box_iou_aligned}
    loss = {"iou": sf.iou_loss, "giou": sf.giou_loss, "diou": sf.diou_loss, "ciou": sf.ciou_loss}
    for kind in kinds:
        a = _boxes(5, dt, 1).requires_grad_(need[0])
        b = _boxes(7, dt, 2).requires_grad_(need[1])
        ab = _boxes(7, dt, 3).requires_grad_(need[0])
        outs = [pair[kind](a, b, fmt=fmt, **_BE), alig[kind](ab, b, fmt=fmt, **_BE)]
        outs += [loss[kind](ab, b, fmt=fmt, reduction=red, **_BE) for red in reds]
        if any(need):
            for out in outs:
                _backward(out)


def _box_ops(level):
    f32 = torch.float32
    if level == "quick":  # CIoU: the kernels' longest path (atan)
        _box_case(("ciou",), f32, "xyxy", (True, True), reds=("none",))
        return
    kinds = ("iou", "giou", "diou", "ciou")
    # every kind with both gradients and none; either gradient alone on CIoU
    for need in ((True, True), (False, False)):
        _box_case(kinds, f32, "xyxy", need)
    for need in ((True, False), (False, True)):
        _box_case(("ciou",), f32, "xyxy", need)
    # every format and dtype on CIoU
    for fmt in FMTS[1:]:
        _box_case(("ciou",), f32, fmt, (True, True))
    for dt in BOX_FLOATS[1:]:
        _box_case(("ciou",), dt, "xyxy", (True, True))


def _box_match(level):
    import segfast as sf
    cases = [(torch.float32, "xyxy")]
    if level == "full":  # every format (float32), every dtype (xyxy)
        cases += [(torch.float32, f) for f in FMTS[1:]] + [(dt, "xyxy") for dt in BOX_FLOATS[1:]]
    for dt, fmt in cases:
        a = _boxes(20, dt, 4).view(2, 10, 4)
        g = _boxes(6, dt, 5).view(2, 3, 4)
        sf.box_iou_max(a, g, fmt=fmt, **_BE)
        sf.box_iou_max(a, g, torch.tensor([[True, False, True], [True, True, True]], device=_dev()), fmt=fmt, **_BE)
        b = _boxes(70, dt, 6)
        s = torch.rand(70, device=_dev())
        sf.nms(b, s, 0.5, fmt=fmt, **_BE)
        sf.batched_nms(b, s, torch.arange(70, device=_dev()) % 3, 0.5, fmt=fmt, **_BE)


def _crf(level):
    import segfast as sf
    B, C, H, W = 1, 3, 5, 6
    g = torch.Generator().manual_seed(0)
    u = torch.randn(B, C, H, W, generator=g).to(_dev())
    img = (torch.rand(B, 3, H, W, generator=g) * 255).to(torch.uint8).to(_dev())
    mat = torch.eye(C) * 2.0
    cases = [dict(), dict(gaussian=None), dict(bilateral=None), dict(gaussian=sf.Gaussian(compat=mat)),
             dict(self_message=False)]
    if level != "full":
        cases = cases[:2]
    for kw in cases:
        sf.dense_crf(u, img, iterations=1, **kw, **_BE)
    if level == "full":  # other label counts: the class tile follows C
        for c in _crf_tiles():
            sf.dense_crf(torch.randn(B, c, H, W, generator=g).to(_dev()), img, iterations=1, **_BE)


ITEMSIZES = (1, 2, 4, 8)


def run_tiles(tag=lambda key: None) -> None:
    """The tile sweep: every class count that changes a launcher's tile
    (``_launcher_tiles`` at every element size, ``_crf_tiles``) x every
    input and target dtype, on one loss form per target kind, forward and
    backward. Each case calls ``tag(key)`` first, key = ``(family, form, C,
    ...)``: within one (family, form) only the class count, the dtypes (and
    the finish kernel's chunk count) change, so whatever changes in a
    kernel's launches there is what its launcher derives from them. Meant to
    run with the kernels not run (``triton_aot.record_tiles``): only the
    launches matter."""
    f32, i64 = torch.float32, torch.int64
    region = _launcher_tiles("region", ITEMSIZES, TILE_FUNCTIONS)
    for C in (1,) + region:
        for dt, tt in itertools.product(LOSS_FLOATS, FLOATS + (torch.bool,)):
            tag(("region", "dense", C, dt, tt))
            _region_case(C, dt, i64, tt, None, "sigmoid")
        for dt, lt in itertools.product(LOSS_FLOATS, LABELS):
            tag(("region", "labels" if C > 1 else "binary", C, dt, lt))
            _region_case(C, dt, lt, f32, None, "dice" if C > 1 else "binary")
    for C in (1,) + _launcher_tiles("pixel", ITEMSIZES, TILE_FUNCTIONS):
        for dt, tt in itertools.product(LOSS_FLOATS, FLOATS + (torch.bool,)):
            tag(("pixel", "sigmoid", C, dt, tt))
            _pixel_case(C, dt, i64, tt, None, "bce", "mean")
            if C > 1:
                tag(("pixel", "dense_softmax", C, dt, tt))
                _pixel_case(C, dt, i64, tt, None, "dfocal", "mean")
        for dt, lt, red in itertools.product(LOSS_FLOATS, LABELS, ("mean", "none")):
            if C > 1:  # the loss sums (mean) or the loss map (none), then the gradient
                tag(("pixel", f"labels_{red}", C, dt, lt))
                _pixel_case(C, dt, lt, f32, None, "ce", red)
    _finish_cases(tag, region)
    import segfast as sf
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(1, 3, 5, 6, generator=g) * 255).to(torch.uint8).to(_dev())
    for C in _crf_tiles():
        tag(("crf", "dense_crf", C, torch.float32, torch.uint8))
        sf.dense_crf(torch.randn(1, C, 5, 6, generator=g).to(_dev()), img, iterations=1, **_BE)


def _finish_cases(tag, class_counts):
    """The region finish kernel's launcher over what its tile follows: the
    class count, the per-plane sums (7, or 9 with a pixel term) and the
    number of chunks P of the stats pass (on a GPU up to a few per SM; one on
    the CPU, so the launcher is called directly, P = 1 .. 1024)."""
    from segfast.triton_kernels import region_finish as tf
    f32 = dict(dtype=torch.float32, device=_dev())
    for KO, C in itertools.product((7, 9), [c for c in class_counts if c <= tf.MAX_C]):
        for P in (1 << i for i in range(11)):
            tag(("region_finish", KO, C, P))
            tf.launch_finish(torch.zeros((1, P, C, KO), **f32), torch.zeros((1, C, KO), **f32),
                             torch.zeros((1, C, KO), **f32), torch.zeros((), **f32),
                             torch.zeros(1, dtype=torch.uint8, device=_dev()), 1, C, P, KO, xent=int(KO == 9))


FAMILY_RUNS = {"region": _region, "pixel": _pixel, "lovasz": _lovasz, "boxes": _box_ops,
               "boxes_match": _box_match, "crf": _crf}


def run(level: str = "full", families=None) -> None:
    """Run the public ops of ``families`` (default: all) at ``level`` ("full" | "quick")."""
    if level not in ("full", "quick"):
        raise ValueError(f"level must be 'full' or 'quick', got {level!r}")
    for name in families or FAMILY_RUNS:
        FAMILY_RUNS[name](level)
