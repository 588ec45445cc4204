"""Benchmark of a region loss's confusion counts (``confusion=``): a Dice
forward+backward on [8, 21, 128, 128] float32 logits, int64 labels with
ignore_index=255, (a) alone, (b) with ``confusion=cm`` (the counts from the
loss's own statistics pass), (c) followed by a separate
``ConfusionMatrix.update`` (a second read of the logits). The rows go to the
same pytest-benchmark group; ``test_overhead`` prints the three medians of
one interleaved run and the overhead of (b) and (c) over (a).

    pytest bench/bench_loss_confusion.py --benchmark-only
    pytest bench/bench_loss_confusion.py -k overhead -s
"""

from __future__ import annotations

import json

import pytest
import torch

from segfast import bench as sb
from segfast import functional as F
from segfast.metrics import ConfusionMatrix

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
N, C, H, W, IGN = 8, 21, 128, 128, 255


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, C, H, W, generator=g).to(DEVICE).requires_grad_(True)
    t = torch.randint(0, C, (N, H, W), generator=g)
    t[torch.rand(N, H, W, generator=g) < 0.05] = IGN
    return x, t.to(DEVICE)


def _steps():
    x, t = _inputs()
    cm = ConfusionMatrix(C, ignore_index=IGN)

    def plain():
        F.dice_loss(x, t, ignore_index=IGN).backward()
        x.grad = None

    def fused():
        F.dice_loss(x, t, ignore_index=IGN, confusion=cm).backward()
        x.grad = None

    def separate():
        F.dice_loss(x, t, ignore_index=IGN).backward()
        cm.update(x.detach(), t)
        x.grad = None

    return {"dice": plain, "dice+confusion=": fused, "dice+ConfusionMatrix.update": separate}


@pytest.mark.parametrize("name", ["dice", "dice+confusion=", "dice+ConfusionMatrix.update"])
def test_dice_confusion(benchmark, name):
    benchmark.group = f"dice_confusion-{N}x{C}x{H}x{W}"
    step = _steps()[name]
    benchmark.pedantic(step, rounds=9, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(device=str(DEVICE))


def test_overhead():
    """Medians of the three steps, interleaved round by round (same load on all)."""
    steps = _steps()
    times = {k: [] for k in steps}
    for fn in steps.values():
        fn()
    for _ in range(15):
        for k, fn in steps.items():
            times[k] += sb.time_fn(fn, DEVICE, repeat=1, warmup=1)
    med = {k: 1e3 * sorted(v)[len(v) // 2] for k, v in times.items()}
    base = med["dice"]
    rows = {k: dict(median_ms=round(m, 3), overhead_vs_dice=round(m / base - 1, 4)) for k, m in med.items()}
    print(json.dumps(dict(device=str(DEVICE), shape=[N, C, H, W], rows=rows), indent=1))
