"""metrics family under torch.distributed (gloo, two CPU processes): each
process updates half of the images, compute() gives the single-process
numbers and arrays exactly; the confusion matrix is all-reduced."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segfast.metrics import COCOEvaluator, ConfusionMatrix, synthetic_coco, to_tensors
from segfast.metrics import detection as det_mod
from conftest import free_port

WORLD = 2


def _data():
    gt, dets = synthetic_coco(n_images=30, n_categories=4, dets_per_image=20, crowd_fraction=0.1,
                              empty_fraction=0.2, seed=11)
    return to_tensors(gt, dets, "xyxy")


def _seg_data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, 7, 9, generator=g)
    t = torch.randint(0, 5, (4, 7, 9), generator=g)
    t[:, 0] = 255
    return x, t


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        preds, targets = _data()
        half = (len(preds) + 1) // 2
        part = slice(0, half) if rank == 0 else slice(half, None)
        m = COCOEvaluator()
        p, t = preds[part], targets[part]
        for i in range(0, len(p), 4 + rank):  # unequal batch counts and state sizes per rank
            m.update(p[i:i + 4 + rank], t[i:i + 4 + rank])
        r = m.compute()
        x, y = _seg_data()
        cm = ConfusionMatrix(5, ignore_index=255)
        cm.update(x[rank * 2:rank * 2 + 2], y[rank * 2:rank * 2 + 2])
        out[rank] = (r["stats"], r["precision"], r["recall"], cm.compute()["confusion_matrix"])
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.skipif(det_mod._kernel() is None, reason="segfast._C has no coco_eval (extension not built)")
def test_two_processes_equal_one():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    preds, targets = _data()
    m = COCOEvaluator()
    m.update(preds, targets)
    r = m.compute()
    x, y = _seg_data()
    cm = ConfusionMatrix(5, ignore_index=255)
    cm.update(x, y)
    want_cm = cm.compute()["confusion_matrix"]
    assert r["stats"][0] > 0
    for rank in range(WORLD):
        stats, precision, recall, cmat = out[rank]
        assert torch.equal(stats, r["stats"])
        assert torch.equal(precision, r["precision"])
        assert torch.equal(recall, r["recall"])
        assert torch.equal(cmat, want_cm)
