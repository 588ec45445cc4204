"""COCO matching on the device (COCOEvaluator(backend="triton")): the Triton
kernel run in Triton's interpreter on CPU tensors gives the C++ host pass's
arrays bit for bit, and so pycocotools' numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segfast import backends
from segfast.metrics import COCOEvaluator, synthetic_coco, to_tensors
from segfast.metrics import detection as det_mod

from test_metrics import SETS, _check_against, _make, _pycoco, crafted_quirks

pytestmark = [
    pytest.mark.skipif(det_mod._kernel() is None, reason="segfast._C has no coco_eval (extension not built)"),
    pytest.mark.skipif(backends.unavailable_reason("triton", torch.device("cpu")) is not None,
                       reason="triton does not run on CPU tensors here (needs TRITON_INTERPRET=1)"),
]


def _with_dup_gts():
    """Every fourth gt twice (equal IoU: the later copy wins), every seventh crowd."""
    gt, dets = synthetic_coco(n_images=12, n_categories=3, dets_per_image=12, seed=5)
    anns = gt["annotations"]
    next_id = max(a["id"] for a in anns) + 1
    extra = []
    for i, a in enumerate(anns):
        if i % 7 == 3:
            a["iscrowd"] = 1
        if i % 4 == 1:
            extra.append(dict(a, id=next_id + i))
    gt["annotations"] = anns + extra
    return gt, dets


# the generated sets take a minute each in the interpreter: the slow tier
CASES = {**{k: pytest.param(lambda k=k: _make(k), marks=pytest.mark.slow) for k in SETS},
         "crafted": crafted_quirks, "dup_gts": _with_dup_gts}


def _arrays(ev):
    c = ev._run()
    return {k: c[k].numpy() for k in ("precision", "recall", "scores", "ap_all", "npig")}


def _same(a, b):
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def device_matching(gt, dets, backend, **kw):
    """The device matching's arrays equal the C++ host pass's bit for bit; -> (host, device) evaluators."""
    host = COCOEvaluator.from_coco(gt, dets, backend="cpu", **kw)
    dev = COCOEvaluator.from_coco(gt, dets, backend=backend, **kw)
    _same(_arrays(dev), _arrays(host))
    return host, dev


def options_and_curves(backend, iou_thresholds):
    """Non-default options and the PR curves: the device matching gives the host's numbers."""
    gt, dets = _with_dup_gts()
    areas = {"all": (0.0, 1e10), "tiny": (0.0, 16.0 ** 2), "rest": (16.0 ** 2, 1e10)}
    host, dev = device_matching(gt, dets, backend, max_detection_thresholds=[1, 5, 20], area_ranges=areas,
                                average="all_points", iou_thresholds=iou_thresholds)
    np.testing.assert_array_equal(dev.compute()["stats"].numpy(), host.compute()["stats"].numpy())
    for cls, (p, r, s) in host.pr_curve(iou_threshold=0.5, area="tiny", max_dets=5).items():
        p2, r2, s2 = dev.pr_curve(iou_threshold=0.5, area="tiny", max_dets=5)[cls]
        assert torch.equal(p, p2) and torch.equal(r, r2) and torch.equal(s, s2)


@pytest.mark.parametrize("make", list(CASES.values()), ids=list(CASES))
def test_triton_matching_equals_host(make):
    gt, dets = make()
    _, dev = device_matching(gt, dets, "triton")
    _check_against(_pycoco(gt, dets), dev.compute())


def test_triton_matching_options_and_curves():
    options_and_curves("triton", [0.3, 0.5, 0.7])


@pytest.mark.slow
def test_triton_matching_update_path():
    gt, dets = _make("crowds_empty")
    preds, targets = to_tensors(gt, dets, "xywh")
    host, dev = COCOEvaluator(box_format="xywh", backend="cpu"), COCOEvaluator(box_format="xywh", backend="triton")
    for i in range(0, len(preds), 9):
        host.update(preds[i:i + 9], targets[i:i + 9])
        dev.update(preds[i:i + 9], targets[i:i + 9])
    _same(_arrays(dev), _arrays(host))


def test_backend_argument():
    with pytest.raises(ValueError, match="backend"):
        COCOEvaluator(backend="gpu")
    # CPU tensors default to the host pass
    assert COCOEvaluator()._matching_backend(torch.device("cpu")) == "cpu"
