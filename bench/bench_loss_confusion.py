"""Benchmark of a region loss's confusion counts (``confusion=``): a Dice
forward+backward on [8, C, 128, 128] float32 logits (C = 21; ``test_overhead``
also C = 8, 64, 150), int64 labels with ignore_index=255, (a) alone, (b) with
``confusion=cm`` (the counts from the loss's own statistics pass), (c) followed
by a separate ``ConfusionMatrix.update`` (a second read of the logits). The
rows go to the same pytest-benchmark group; ``test_overhead`` prints the three
medians of one interleaved run and the overhead of (b) and (c) over (a) (the
segfast-bench row ``dice_step_confusion``, segfast/metrics/_bench.py).

    pytest bench/bench_loss_confusion.py --benchmark-only
    pytest bench/bench_loss_confusion.py -k overhead -s
"""

from __future__ import annotations

import json

import pytest
import torch

from segfast.metrics import _bench as mb

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NAMES = ["dice", "dice+confusion=", "dice+ConfusionMatrix.update"]


@pytest.mark.parametrize("name", NAMES)
def test_dice_confusion(benchmark, name):
    cfg = mb.LOSS_CONF
    benchmark.group = "dice_confusion-{N}x{C}x{H}x{W}".format(**cfg)
    step = mb.loss_confusion_steps(DEVICE, **cfg)[name]
    benchmark.pedantic(step, rounds=9, iterations=1, warmup_rounds=2)
    benchmark.extra_info.update(device=str(DEVICE))


@pytest.mark.parametrize("classes", [8, 21, 64, 150])
def test_overhead(classes):
    """Medians of the three steps, interleaved round by round (same load on all)."""
    rows = mb.measure_loss_confusion(DEVICE, classes=classes)
    out = {r["backend"]: dict(median_ms=round(r["median_ms"], 3), overhead_vs_dice=round(r["overhead_vs_dice"], 4))
           for r in rows}
    print(json.dumps(dict(device=str(DEVICE), shape=rows[0]["shape"], rows=out), indent=1))
