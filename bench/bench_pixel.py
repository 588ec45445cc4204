"""pytest-benchmark suite of the pixel-wise losses (cross entropy, the fused
softmax + positive-sharing loss, softmax focal, sigmoid focal (smp's
FocalLoss), BCE on dense targets (smp's SoftBCEWithLogitsLoss), Dice + CE,
Dice + focal in MONAI's sigmoid form): forward+backward per backend, the
eager reference, MONAI / smp where they have the loss, and segfast.compat's
drop-in classes (compat_monai / compat_smp rows; the cases are declared in
segfast/ops/_bench_pixel.py and _bench_region_pixel.py).

    pytest bench/bench_pixel.py --benchmark-only
"""

from __future__ import annotations

import pytest

from _bench import DEVICE, params, rows_for, run_benchmark

OPS = ("cross_entropy", "fused", "focal", "focal_sigmoid", "bce", "dice_ce", "dice_focal")


@pytest.mark.parametrize("case,name", params(OPS))
def test_pixel_fwd_bwd(benchmark, case, name):
    run_benchmark(benchmark, case, name)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU speed targets")
@pytest.mark.parametrize("op", ["fused", "dice_ce"])
def test_targets_cpu(op):
    """[8, 21, 128, 128] fp32, int64 labels, one run: >= 3x the eager reference;
    the fused loss needs at most 1.2x the logits' size of extra memory."""
    cpu = rows_for(op)["cpu"]
    assert cpu["speedup_vs_reference"] >= 3.0, cpu
    if op == "fused":
        assert cpu["peak_extra_mb"] <= 1.2 * cpu["logits_mb"], cpu
