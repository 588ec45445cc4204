"""The metrics family's CUDA C++ kernels (csrc/cuda/metrics.cu) on the CUDA
emulator (segfast._C_emu, built with SEGFAST_CUDA_EMU=ON): the ``cuda``
backend on CPU tensors, under two orders of the threads of a block.

- confusion counts from logits and from class indices against the cpu
  backend, the torch backend and argmax + bincount written out here: odd
  shapes, C = 1, 2, 21, 300 and the three shared-memory modes, fp16 / bf16 /
  fp32 / fp64 logits with NaN, inf and ties, ignore_index, out-of-range labels;
- the COCO matching codes against the C++ host pass bit for bit, and the 12
  numbers and arrays against pycocotools and faster-coco-eval.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segfast import backends
from segfast.metrics import COCOEvaluator, ConfusionMatrix, confusion_matrix, to_tensors
from segfast.metrics import detection as det_mod
from segfast.metrics import segmentation as seg_mod

from test_metrics import SETS, _check_against, _make, _pycoco, crafted_quirks
from test_triton_metrics import _arrays, _same, _with_dup_gts, device_matching, options_and_curves

emu = backends._C_emu
pytestmark = pytest.mark.skipif(emu is None or not hasattr(emu.cuda, "confusion"),
                                reason="segfast._C_emu is not built (install with SEGFAST_CUDA_EMU=ON)")


@pytest.fixture(params=["forward", "reverse"])
def schedule(request):
    before = emu.schedule()
    emu.set_schedule(request.param, 777)
    yield request.param
    emu.set_schedule(before)


# ---------------------------------------------------------------- confusion counts


def _want(x, t, C, ignore_index, logits=True):
    """int64 [C*C + 1] by argmax + bincount: the matrix and the count of the
    non-ignored pixels whose target (or class-index prediction) is outside [0, C)."""
    p = (x.argmax(1) if logits else x).reshape(-1).long()
    t = t.reshape(-1).long()
    keep = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
    p, t = p[keep], t[keep]
    ok = (t >= 0) & (t < C) & (p >= 0) & (p < C)
    out = torch.bincount(t[ok] * C + p[ok], minlength=C * C)
    return torch.cat([out, torch.tensor([int((~ok).sum())])])


def _inputs(N, C, H, W, dtype, seed, ignore=255, bad=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).to(dtype)
    if C > 1:
        x[:, :2, 0, :] = 0.5           # ties: the first maximum wins
        x[0, C - 1, 0, 0] = float("nan")  # NaN is the maximum, also against an inf
        x[0, 0, 0, 0] = float("inf")
        x[-1, :, -1, -1] = float("nan")   # every class NaN: the first
        x[-1, C // 2, -1, 0] = float("inf")
        x[-1, 0, 1, :] = float("-inf")
    t = torch.randint(0, C, (N, H, W), generator=g)
    t[:, -1, 1:] = ignore
    if bad:
        t[0, 1, 0] = C       # out of range, counted in the last slot
        t[-1, 0, -1] = -3
    return x, t


SHAPES = {1: (2, 3, 5), 2: (3, 5, 7), 21: (2, 9, 13), 300: (1, 5, 7)}


@pytest.mark.parametrize("C", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_confusion_from_logits(schedule, C, dtype):
    N, H, W = SHAPES[C]
    x, t = _inputs(N, C, H, W, dtype, seed=C)
    for ign in (255, None):
        want = _want(x, t, C, ign)
        got = seg_mod._counts(x, t, C, ign, "cuda")
        assert got.dtype == torch.int64 and torch.equal(got, want), (C, dtype, ign)
        assert torch.equal(got, seg_mod._counts(x, t, C, ign, "cpu"))
        assert torch.equal(got, seg_mod._counts(x, t, C, ign, "torch"))


# every bin in shared memory; the diagonal; none (a 1.2 GB matrix: slow tier)
@pytest.mark.parametrize("C", [110, 111, pytest.param(12300, marks=pytest.mark.slow)])
def test_confusion_shared_memory_modes(schedule, C):
    x, t = _inputs(1, C, 2, 3, torch.float32, seed=3)
    t[0, 0, 1:] = 7  # two pixels on the diagonal
    x[0, 7, 0, 1:] = 1e9
    got = seg_mod._counts(x, t, C, 255, "cuda")
    assert torch.equal(got, _want(x, t, C, 255))
    assert got[7 * C + 7] == 2


def test_confusion_layouts_and_target_dtypes(schedule):
    x, t = _inputs(2, 5, 9, 11, torch.float32, seed=4, ignore=-1, bad=False)
    want = _want(x, t, 5, -1)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(seg_mod._counts(cl, t, 5, -1, "cuda"), want)
    xs, ts = x[:, :, :, ::2], t[:, :, ::2]  # strided pixels
    assert torch.equal(seg_mod._counts(xs, ts, 5, -1, "cuda"), _want(xs, ts, 5, -1))
    xp = x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)  # class-major memory
    assert torch.equal(seg_mod._counts(xp, t, 5, -1, "cuda"), want)
    for dt in (torch.int8, torch.int16, torch.int32):
        assert torch.equal(seg_mod._counts(x, t.to(dt), 5, -1, "cuda"), want)
    t8 = t.clone()
    t8[t8 < 0] = 255
    assert torch.equal(seg_mod._counts(x, t8.to(torch.uint8), 5, 255, "cuda"), _want(x, t8, 5, 255))


def test_confusion_from_class_indices(schedule):
    g = torch.Generator().manual_seed(9)
    p = torch.randint(0, 6, (3, 7, 5), generator=g)
    t = torch.randint(0, 6, (3, 7, 5), generator=g)
    t[0, 0] = 255
    t[1, 2, 3] = 6  # a target out of range
    for dt in (torch.uint8, torch.int16, torch.int32, torch.int64):
        got = seg_mod._counts(p.to(dt), t, 6, 255, "cuda")
        assert torch.equal(got, _want(p, t, 6, 255, logits=False))
        assert torch.equal(got, seg_mod._counts(p, t, 6, 255, "torch"))
    bad = p.clone()
    bad[2, 1, 1] = 6
    with pytest.raises(ValueError, match=r"preds holds class indices outside \[0, 6\)"):
        seg_mod._counts(bad, t, 6, 255, "cuda")
    # the kernel itself (what a GPU does, no host check): such a prediction counts in the last slot
    out = torch.zeros(37, dtype=torch.int64)
    emu.cuda.confusion(backends.view(bad.reshape(1, -1)), backends.view(t.reshape(1, -1)), 255,
                       backends.view(out), 0)
    assert torch.equal(out, _want(bad, t, 6, 255, logits=False))


def test_confusion_public_api_and_errors(schedule):
    x, t = _inputs(2, 4, 6, 5, torch.float16, seed=6, bad=False)
    want = _want(x, t, 4, 255)[:-1].reshape(4, 4)
    assert torch.equal(confusion_matrix(x, t, 4, ignore_index=255, backend="cuda"), want)
    m = ConfusionMatrix(4, ignore_index=255, backend="cuda")
    m.update(x[:1], t[:1])
    m.update(x[1:], t[1:])
    m.update(x.argmax(1), t)
    assert torch.equal(m.compute()["confusion_matrix"], 2 * want)
    t[1, 2, 2] = 4
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(x, t, 4, ignore_index=255, backend="cuda")
    m.update(x, t)  # no error before compute()
    with pytest.raises(ValueError, match="outside"):
        m.compute()
    empty = seg_mod._counts(x[:0], t[:0], 4, 255, "cuda")
    assert torch.equal(empty, torch.zeros(17, dtype=torch.int64))


def test_confusion_first_maximum_and_first_nan(schedule):
    """The kernel's first-maximum and NaN rule is torch.argmax's: a later equal
    value or a NaN after a NaN must not win (a `>=` would flip these)."""
    x = torch.tensor([[[1.0], [1.0], [0.0]], [[float("nan")], [float("nan")], [2.0]]]).reshape(2, 3, 1)
    t = torch.zeros(2, 1, dtype=torch.long)
    got = seg_mod._counts(x, t, 3, None, "cuda")
    assert got[0] == 2 and got[1:].sum() == 0  # both pixels predict class 0


# ---------------------------------------------------------------- COCO matching


CASES = {**{k: (lambda k=k: _make(k)) for k in SETS}, "crafted": crafted_quirks, "dup_gts": _with_dup_gts}


@pytest.mark.parametrize("make", list(CASES.values()), ids=list(CASES))
def test_cuda_matching_equals_host_and_pycocotools(schedule, make):
    gt, dets = make()
    _, dev = device_matching(gt, dets, "cuda")
    _check_against(_pycoco(gt, dets), dev.compute())


def test_cuda_matching_faster_coco_eval():
    gt, dets = _make("crowds_empty")
    ev = _pycoco(gt, dets, lib="faster_coco_eval")
    out = COCOEvaluator.from_coco(gt, dets, backend="cuda").compute()
    np.testing.assert_allclose(out["stats"].numpy(), np.asarray(ev.stats)[:12], rtol=0, atol=1e-12)


def test_cuda_matching_options_curves_and_update(schedule):
    options_and_curves("cuda", [0.3, 0.5, 0.7, 1.0])  # 1.0: matched at 1 - 1e-10
    gt, dets = _with_dup_gts()
    preds, targets = to_tensors(gt, dets, "xywh")
    m_dev, m_host = COCOEvaluator(box_format="xywh", backend="cuda"), COCOEvaluator(box_format="xywh")
    for i in range(0, len(preds), 5):
        m_dev.update(preds[i:i + 5], targets[i:i + 5])
        m_host.update(preds[i:i + 5], targets[i:i + 5])
    _same(_arrays(m_dev), _arrays(m_host))


def test_cuda_matching_global_scratch(schedule):
    """Groups whose state does not fit 48 KiB of shared memory: the kernel keeps
    it in the global scratch (100 thresholds x 3 area ranges, 1000 gts in one image)."""
    g = torch.Generator().manual_seed(11)
    n = 1000
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 400
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 40 + 1
    anns = [{"id": j + 1, "image_id": 1, "category_id": 1, "bbox": [*xy[j].tolist(), *wh[j].tolist()],
             "area": float(wh[j].prod()), "iscrowd": int(j % 50 == 0)} for j in range(n)]
    anns.append({"id": n + 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25.0, "iscrowd": 0})
    jit = torch.randn(60, 4, generator=g, dtype=torch.float64)
    dets = [{"image_id": 1, "category_id": 1, "score": round(float(torch.rand(1, generator=g)), 2),
             "bbox": [anns[3 * k]["bbox"][0] + float(jit[k, 0]), anns[3 * k]["bbox"][1] + float(jit[k, 1]),
                      anns[3 * k]["bbox"][2] + abs(float(jit[k, 2])), anns[3 * k]["bbox"][3]]} for k in range(60)]
    dets.append({"image_id": 2, "category_id": 1, "score": 0.5, "bbox": [0, 0, 5, 4]})
    gt = {"images": [{"id": 1}, {"id": 2}], "annotations": anns, "categories": [{"id": 1}]}
    thr = np.linspace(0.05, 0.95, 100)
    areas = {"all": (0.0, 1e10), "small": (0.0, 400.0), "large": (400.0, 1e10)}
    assert emu.cuda.coco_match_scratch_bytes(n, len(areas), len(thr), 2) > 0
    host, _ = device_matching(gt, dets, "cuda", iou_thresholds=thr, area_ranges=areas)
    assert host.compute()["map"] > 0.02  # 60 of the 1000 gts found


def test_cuda_backend_choice():
    with pytest.raises(ValueError, match="'cuda'"):
        COCOEvaluator(backend="gpu")
    assert COCOEvaluator()._matching_backend(torch.device("cpu")) == "cpu"
    assert COCOEvaluator(backend="cuda")._matching_backend(torch.device("cpu")) == "cuda"
    assert det_mod._kernel() is not None


def test_device_benchmark_rows():
    """segfast-bench's device stage of the confusion matrix (a GPU's triton and cuda rows),
    run here on the emulated cuda backend: the rows exist and their matrices equal bincount's."""
    from segfast.metrics import _bench

    rows = _bench.measure_segmentation_device(torch.device("cpu"), quick=True, repeat=1, backend_names=("cuda",))
    assert [r["backend"] for r in rows] == ["argmax_bincount", "cuda"]
    assert all(r["equal_to_bincount"] and r["median_ms"] > 0 and r["gbps"] > 0 for r in rows)
