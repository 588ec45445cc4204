"""pytest-benchmark suite of the region losses (Dice, soft IoU, Tversky,
generalized Dice): forward+backward per backend, the eager reference, MONAI,
smp, and segfast.compat's drop-in classes (compat_monai / compat_smp rows).

    pytest bench/ --benchmark-only --benchmark-json=bench.json
"""

from __future__ import annotations

import pytest

from _bench import DEVICE, params, rows_for, run_benchmark

OPS = ("dice", "jaccard", "tversky", "generalized_dice")


@pytest.mark.parametrize("case,name", params(OPS))
def test_region_fwd_bwd(benchmark, case, name):
    run_benchmark(benchmark, case, name)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU speed targets")
def test_targets_cpu():
    """Multiclass Dice [8, 21, 128, 128] fp32, int64 labels, one run: cpu backend
    >= 4x MONAI, >= 3x the eager reference, peak extra memory <= 1.5x the logits."""
    cpu = rows_for("dice")["cpu"]
    assert cpu["speedup_vs_reference"] >= 3.0, cpu
    assert cpu["speedup_vs_monai"] >= 4.0, cpu
    assert cpu["peak_extra_mb"] <= 1.5 * cpu["logits_mb"], cpu
