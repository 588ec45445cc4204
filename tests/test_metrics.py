"""metrics family: COCO detection metrics against pycocotools (number for
number, array for array), faster-coco-eval and the eager reference; the
segmentation confusion matrix against argmax + bincount and torchmetrics."""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import pytest
import torch

from segfast import backends
from segfast.metrics import COCOEvaluator, ConfusionMatrix, confusion_matrix, synthetic_coco, to_tensors
from segfast.metrics import detection as det_mod
from segfast.reference import metrics as ref

HAVE_KERNEL = det_mod._kernel() is not None


def _quiet(fn, *a, **k):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*a, **k)


def _pycoco(gt, dets, iou_type="bbox", params=None, lib="pycocotools"):
    if lib == "pycocotools":
        COCO = pytest.importorskip("pycocotools.coco").COCO
        COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval
    else:
        fce = pytest.importorskip("faster_coco_eval")
        COCO, COCOeval = fce.COCO, fce.COCOeval_faster
    coco = _quiet(COCO)
    coco.dataset = copy.deepcopy(gt)
    _quiet(coco.createIndex)
    res = _quiet(coco.loadRes, copy.deepcopy(dets)) if dets else None
    if res is None:
        res = _quiet(COCO)
        res.dataset = {"images": copy.deepcopy(gt["images"]), "annotations": [],
                       "categories": copy.deepcopy(gt["categories"])}
        _quiet(res.createIndex)
    ev = COCOeval(coco, res, iou_type)
    for k, v in (params or {}).items():
        setattr(ev.params, k, v)
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    _quiet(ev.summarize)
    return ev


SETS = {
    "plain": dict(n_images=40, n_categories=5, dets_per_image=25, seed=1),
    "crowds_empty": dict(n_images=50, n_categories=4, dets_per_image=15, crowd_fraction=0.2, empty_fraction=0.3,
                         seed=2),
    "ties": dict(n_images=40, n_categories=3, dets_per_image=30, score_decimals=1, seed=3),
    "many_dets_one_class": dict(n_images=6, n_categories=1, dets_per_image=150, gts_per_image=12, seed=4),
}


def _make(name):
    gt, dets = synthetic_coco(**SETS[name])
    if name == "crowds_empty":  # a class with detections and no gt; an image with gts and no detection
        gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != 4]
        first = gt["annotations"][0]["image_id"]
        dets = [d for d in dets if d["image_id"] != first]
    if name == "plain":  # a gt with id 0 (pycocotools then sees its matches as unmatched)
        gt["annotations"][0]["id"] = 0
    return gt, dets


def _check_against(ev_ref, out, exact=True):
    e = ev_ref.eval
    cmp = np.testing.assert_array_equal if exact else (lambda a, b: np.testing.assert_allclose(a, b, rtol=0,
                                                                                                 atol=1e-12))
    cmp(out["stats"].numpy(), np.asarray(ev_ref.stats))
    cmp(out["precision"].numpy(), e["precision"])
    cmp(out["recall"].numpy(), e["recall"])
    cmp(out["scores"].numpy(), e["scores"])


needs_kernel = pytest.mark.skipif(not HAVE_KERNEL, reason="segfast._C has no coco_eval (extension not built)")


@needs_kernel
@pytest.mark.parametrize("name", list(SETS))
def test_from_coco_equals_pycocotools(name):
    gt, dets = _make(name)
    ev = _pycoco(gt, dets)
    out = COCOEvaluator.from_coco(gt, dets).compute()
    _check_against(ev, out)
    assert out["stats"][0] > 0.05  # a meaningful set, not all -1 / 0


@needs_kernel
@pytest.mark.parametrize("name", ["plain", "crowds_empty"])
def test_update_equals_pycocotools(name):
    gt, dets = _make(name)
    if name == "plain":
        gt["annotations"][0]["id"] = 1  # update() numbers gts itself
    ev = _pycoco(gt, dets)
    preds, targets = to_tensors(gt, dets, "xywh")
    m = COCOEvaluator(box_format="xywh")
    for i in range(0, len(preds), 7):  # several batches
        m.update(preds[i:i + 7], targets[i:i + 7])
    out = m.compute()
    if name == "crowds_empty":  # update() sees only the labels present; pycocotools all gt categories
        keep = np.isin(np.asarray(ev.params.catIds), out["classes"].numpy())
        e = ev.eval
        np.testing.assert_array_equal(out["precision"].numpy(), e["precision"][:, :, keep])
        np.testing.assert_array_equal(out["recall"].numpy(), e["recall"][:, keep])
        np.testing.assert_array_equal(out["stats"].numpy(), np.asarray(ev.stats))
    else:
        _check_against(ev, out)
    # xyxy input: the same numbers up to the rounding of x2 - x1
    preds2, targets2 = to_tensors(gt, dets, "xyxy")
    m2 = COCOEvaluator()
    m2.update(preds2, targets2)
    np.testing.assert_allclose(m2.compute()["stats"].numpy(), out["stats"].numpy(), atol=1e-3)
    m3 = COCOEvaluator(box_format="cxcywh")
    m3.update([dict(p, boxes=torch.cat([p["boxes"][:, :2] + p["boxes"][:, 2:] / 2, p["boxes"][:, 2:]], 1))
               for p in preds],
              [dict(t, boxes=torch.cat([t["boxes"][:, :2] + t["boxes"][:, 2:] / 2, t["boxes"][:, 2:]], 1))
               for t in targets])
    np.testing.assert_allclose(m3.compute()["stats"].numpy(), out["stats"].numpy(), atol=1e-3)


@needs_kernel
def test_options_equal_pycocotools():
    gt, dets = _make("ties")
    areas = {"all": (0.0, 1e10), "tiny": (0.0, 16.0 ** 2), "rest": (16.0 ** 2, 1e10)}
    params = dict(maxDets=[1, 5, 20], areaRng=[list(v) for v in areas.values()], areaRngLbl=list(areas))
    ev = _pycoco(gt, dets, params=params)
    out = COCOEvaluator.from_coco(gt, dets, max_detection_thresholds=[1, 5, 20], area_ranges=areas).compute()
    _check_against(ev, out)  # includes the -1 lines (maxDets=100 absent, no 'small' area)
    assert out["stats"][0] == -1 and out["stats"][1] > 0


@needs_kernel
def test_kernel_equals_reference_and_all_points():
    gt, dets = _make("crowds_empty")
    ev = COCOEvaluator.from_coco(gt, dets, average="all_points")
    c = ev._run()
    dt, g, I = ev._gathered()
    cats = c["cats"]
    # the eager reference over the same grouped arrays
    K = len(cats)

    def group(rows, lab, img):
        k = torch.searchsorted(cats, rows[:, lab].contiguous())
        keep = cats[k.clamp(max=K - 1)] == rows[:, lab]
        rows, k = rows[keep], k[keep]
        key, o = torch.sort(k * I + rows[:, img].long(), stable=True)
        off = torch.zeros(K * I + 1, dtype=torch.int64)
        off[1:] = torch.cumsum(torch.bincount(key, minlength=K * I), 0)
        return rows[o].numpy(), off.numpy()

    d, doff = group(dt, 5, 6)
    gg, goff = group(g, 5, 8)
    p, r, s, ap_all, npig = ref.coco_eval(K, I, gg[:, :4], gg[:, 4], gg[:, 6].astype(np.uint8),
                                          gg[:, 7].astype(np.uint8), goff, d[:, :4], d[:, 4], doff, ev.iou_thrs,
                                          ev.rec_thrs, ev.area_rng, ev.max_dets)
    np.testing.assert_array_equal(c["precision"].numpy(), p)
    np.testing.assert_array_equal(c["recall"].numpy(), r)
    np.testing.assert_array_equal(c["scores"].numpy(), s)
    np.testing.assert_array_equal(c["ap_all"].numpy(), ap_all)
    np.testing.assert_array_equal(c["npig"].numpy(), npig)
    out = ev.compute()
    valid = ap_all[:, :, 0, 2] > -1
    assert out["map"].item() == pytest.approx(ap_all[:, :, 0, 2][valid].mean(), abs=1e-15)
    # all-points AP >= the 101-point mean up to the grid's step
    assert out["map"] >= COCOEvaluator.from_coco(gt, dets).compute()["map"] - 0.02


@needs_kernel
def test_precision_recall_f1_and_curve():
    gt, dets = _make("ties")
    ev_ref = _pycoco(gt, dets)
    ev = COCOEvaluator.from_coco(gt, dets)
    prf = ev.precision_recall_f1(score_threshold=0.5, iou_threshold=0.5)
    # from pycocotools' evalImgs at IoU 0.5, area all, maxDets 100
    K, A, I = len(ev_ref.params.catIds), len(ev_ref.params.areaRng), len(ev_ref.params.imgIds)
    for k in range(K):
        tp = fp = ngt = 0
        for i in range(I):
            e = ev_ref.evalImgs[k * A * I + i]
            if e is None:
                continue
            s = np.asarray(e["dtScores"])
            sel = (s >= 0.5) & ~e["dtIgnore"][0]
            tp += int(np.sum((e["dtMatches"][0] > 0) & sel))
            fp += int(np.sum((e["dtMatches"][0] == 0) & sel))
            ngt += int(np.sum(e["gtIgnore"] == 0))
        assert (prf["tp"][k].item(), prf["fp"][k].item(), prf["n_gt"][k].item()) == (tp, fp, ngt)
    curve = ev.pr_curve(iou_threshold=0.5)
    cls = ev_ref.params.catIds[0]
    prec, rec, sc = curve[cls]
    assert torch.all(sc[:-1] >= sc[1:])
    # the last raw recall is pycocotools' recall at (IoU .5, class, all, 100)
    assert rec[-1].item() == ev_ref.eval["recall"][0, 0, 0, 2]


def test_reference_is_used_without_kernel(monkeypatch):
    gt, dets = synthetic_coco(n_images=8, n_categories=2, dets_per_image=6, seed=7)
    ev = _pycoco(gt, dets)
    monkeypatch.setattr(det_mod, "_kernel", lambda: None)
    _check_against(ev, COCOEvaluator.from_coco(gt, dets).compute())


@needs_kernel
def test_faster_coco_eval_agrees():
    gt, dets = _make("crowds_empty")
    ev = _pycoco(gt, dets, lib="faster_coco_eval")
    out = COCOEvaluator.from_coco(gt, dets).compute()
    # faster-coco-eval itself can differ from pycocotools in the last bit of a mean
    np.testing.assert_allclose(out["stats"].numpy(), np.asarray(ev.stats)[:12], rtol=0, atol=1e-12)


@needs_kernel
def test_empty_and_errors():
    m = COCOEvaluator()
    out = m.compute()
    assert out["stats"].tolist() == [-1.0] * 12
    m.update([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}],
             [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([3])}])
    out = m.compute()
    assert out["map"] == 0 and out["classes"].tolist() == [3]
    with pytest.raises(ValueError, match=r"preds\[0\]\['boxes'\]"):
        m.update([{"boxes": torch.zeros(2, 5), "scores": torch.zeros(2), "labels": torch.zeros(2)}],
                 [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(ValueError, match="one entry per image"):
        m.update([], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(ValueError, match="box_format"):
        COCOEvaluator(box_format="yxyx")
    m.reset()
    m.update([{"boxes": torch.tensor([[0.0, 0, 1, 1]]), "scores": torch.tensor([float("nan")]),
               "labels": torch.tensor([1])}], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])
    with pytest.raises(ValueError, match="finite"):
        m.compute()


# ---------------------------------------------------------------- segmentation


def _logits(N, C, H, W, dtype=torch.float32, seed=0, ignore=255):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g).to(dtype)
    x[:, :, 0, :3] = 0.5  # ties: the first maximum wins
    t = torch.randint(0, C, (N, H, W), generator=g)
    t[:, :2] = ignore
    return x, t


CPU_BACKENDS = [b for b in ("cpu", "torch", "triton") if backends.unavailable_reason(b, torch.device("cpu")) is None]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_confusion_matrix_equals_bincount(backend, dtype):
    x, t = _logits(2, 5, 9, 13, dtype)
    x[1, 3, 4, 5] = float("nan")  # NaN is the maximum (torch.argmax)
    want = ref.confusion_matrix(x, t, 5, ignore_index=255)
    got = confusion_matrix(x, t, 5, ignore_index=255, backend=backend)
    assert got.dtype == torch.int64 and torch.equal(got, want)
    # strided (channels_last) logits, uint8 targets
    xc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(confusion_matrix(xc, t.to(torch.uint8), 5, ignore_index=255, backend=backend), want)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_confusion_matrix_errors(backend):
    x, t = _logits(1, 3, 4, 4, ignore=1)
    t[0, 0, 0] = 7
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(x, t, 3, ignore_index=255, backend=backend)
    with pytest.raises(ValueError, match="num_classes=4"):
        confusion_matrix(x, t, 4, backend=backend)
    m = ConfusionMatrix(3, ignore_index=255, backend=backend)
    m.update(x, t)  # no error before compute()
    with pytest.raises(ValueError, match="outside"):
        m.compute()


def test_confusion_labels_and_scores():
    x, t = _logits(3, 4, 8, 8)
    m = ConfusionMatrix(4, ignore_index=255)
    m.update(x[:2], t[:2])
    m.update(x[2:].argmax(1), t[2:])  # class indices work too
    out = m.compute()
    cm = ref.confusion_matrix(x, t, 4, ignore_index=255)
    assert torch.equal(out["confusion_matrix"], cm)
    tp = cm.diagonal().double()
    iou = tp / (cm.sum(0) + cm.sum(1) - tp)
    assert torch.allclose(out["iou"], iou) and torch.allclose(out["miou"], iou.mean())
    assert out["pixel_accuracy"].item() == pytest.approx((tp.sum() / cm.sum()).item())


def test_absent_classes():
    t = torch.tensor([[0, 0, 1, 1]])
    p = torch.tensor([[0, 1, 1, 1]])
    out = ConfusionMatrix(3).__class__(3)
    out.update(p, t)
    r = out.compute()
    assert torch.isnan(r["iou"][2]) and r["miou"].item() == pytest.approx((0.5 + 2 / 3) / 2)
    z = ConfusionMatrix(3, absent="zero")
    z.update(p, t)
    rz = z.compute()
    assert rz["iou"][2] == 0 and rz["miou"] == r["miou"]


def test_against_torchmetrics():
    tm = pytest.importorskip("torchmetrics.classification")
    x, t = _logits(2, 6, 16, 16)
    t[t == 5] = 0  # class 5 absent from the target; maybe predicted
    x[:, 4] = -10  # class 4 never predicted
    x[:, 4, 3, 3] = 100
    t[:, 3, 3] = 3
    cm = confusion_matrix(x, t, 6, ignore_index=255)
    want = tm.MulticlassConfusionMatrix(6, ignore_index=255)(x, t)
    assert torch.equal(cm, want)
    ours = ConfusionMatrix(6, ignore_index=255, absent="zero")
    ours.update(x, t)
    r = ours.compute()
    jac = tm.MulticlassJaccardIndex(6, ignore_index=255, average="none")(x, t)
    assert torch.allclose(r["iou"].float(), jac)
    jm = tm.MulticlassJaccardIndex(6, ignore_index=255)(x, t)
    assert r["miou"].float().item() == pytest.approx(jm.item(), abs=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_confusion_matrix_many_classes(backend):
    x, t = _logits(1, 70, 6, 7, seed=5)  # 70 * 70 bins: the Triton kernel's per-pixel atomics
    want = ref.confusion_matrix(x, t, 70, ignore_index=255)
    assert torch.equal(confusion_matrix(x, t, 70, ignore_index=255, backend=backend), want)


def crafted_quirks():
    """Equal IoU goes to the later gt; a crowd gt divides by the detection's
    area; the first ignored gt stops a detection holding a regular match."""
    img = [{"id": 7}, {"id": 3}, {"id": 5}]
    anns = [
        # image 3: A has IoU 0.5 with both gts (the later one wins), B then still matches gt 1
        {"id": 1, "image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 5], "area": 50, "iscrowd": 0},
        {"id": 2, "image_id": 3, "category_id": 1, "bbox": [0, 5, 10, 5], "area": 50, "iscrowd": 0},
        # image 5: a crowd region holding a small detection; a regular gt beside an identical crowd one
        {"id": 3, "image_id": 5, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 1},
        {"id": 4, "image_id": 5, "category_id": 1, "bbox": [200, 200, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 5, "image_id": 5, "category_id": 1, "bbox": [200, 200, 20, 20], "area": 400, "iscrowd": 1},
        # image 7: a gt whose area field puts it in another range than its box
        {"id": 6, "image_id": 7, "category_id": 2, "bbox": [0, 0, 40, 40], "area": 900, "iscrowd": 0},
    ]
    dets = [
        {"image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # A
        {"image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 6], "score": 0.8},  # B
        {"image_id": 5, "category_id": 1, "bbox": [10, 10, 5, 5], "score": 0.7},
        {"image_id": 5, "category_id": 1, "bbox": [200, 200, 20, 20], "score": 0.7},
        {"image_id": 5, "category_id": 1, "bbox": [201, 200, 20, 20], "score": 0.6},
        {"image_id": 7, "category_id": 2, "bbox": [1, 1, 40, 40], "score": 0.5},
        {"image_id": 7, "category_id": 2, "bbox": [60, 60, 10, 10], "score": 0.5},
    ]
    gt = {"images": img, "annotations": anns, "categories": [{"id": 1}, {"id": 2}, {"id": 9}]}
    return gt, dets


@needs_kernel
def test_crafted_quirks_equal_pycocotools():
    gt, dets = crafted_quirks()
    ev = _pycoco(gt, dets)
    out = COCOEvaluator.from_coco(gt, dets).compute()
    _check_against(ev, out)
    assert ev.eval["recall"][0, 0, 0, 2] == 1.0  # both gts of image 3 found at IoU 0.5
