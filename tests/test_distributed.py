"""sync_stats across two CPU processes (gloo): a batch-pooled loss under
DistributedDataParallel equals the single-process loss on the concatenated
batch, parameter gradients included."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import segfast
from conftest import free_port

WORLD = 2


def _model():
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 4, 3, padding=1).double()


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 9, 11, dtype=torch.float64, generator=g)
    y = torch.randint(0, 4, (4, 9, 11), generator=g)
    y[0, :3] = 255
    y[2] = 1  # rank 1 holds an image with one class only: pooling matters
    return x, y


def _loss(logits, y, **kw):
    return segfast.dice_loss(logits, y, batch=True, ignore_index=255, **kw)


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        x, y = _data()
        part = slice(rank * 2, rank * 2 + 2)
        logits = model(x[part])
        logits.retain_grad()
        loss = _loss(logits, y[part], sync_stats=True)
        loss.backward()
        out[rank] = (loss.detach(), model.module.weight.grad.clone(), logits.grad.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes, each importing torch and segfast
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_sync_stats_two_processes():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), out), nprocs=WORLD, join=True)

    model = _model()
    x, y = _data()
    logits = model(x)
    logits.retain_grad()
    loss = _loss(logits, y)
    loss.backward()
    for rank in range(WORLD):
        r_loss, r_wgrad, r_lgrad = out[rank]
        torch.testing.assert_close(r_loss, loss.detach())
        # DDP averages parameter gradients: exactly the single-process gradient.
        torch.testing.assert_close(r_wgrad, model.weight.grad)
        # Each rank's logits gradient is the world-size sum of the identical
        # per-rank losses' gradients (see segfast.ops.region.sync).
        part = slice(rank * 2, rank * 2 + 2)
        torch.testing.assert_close(r_lgrad, WORLD * logits.grad[part])
