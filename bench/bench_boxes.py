"""pytest-benchmark suite of the boxes family against the eager reference
(segfast/reference/boxes.py): pairwise IoU 4096 x 4096 (forward) and the CIoU
loss on 1M aligned pairs (mean, forward+backward), fp32, every backend usable
here. Each row's extra_info has the speed-up over the reference (medians
measured in the same run), GB/s for the bytes the kernels must move and the
peak extra memory. The cases live in segfast/bench.py (BOX_CASES), so
``segfast-bench`` runs them too; add a box op there and to OPS below.

    pytest bench/bench_boxes.py --benchmark-only --benchmark-json=bench.json
"""

from __future__ import annotations

import pytest

from _bench import DEVICE, params, rows_for, run_benchmark

OPS = ("box_iou", "ciou_loss")  # the match helper's ops (box_iou_max, NMS) go here too


@pytest.mark.parametrize("case,name", params(OPS))
def test_boxes(benchmark, case, name):
    run_benchmark(benchmark, case, name)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU target of issue 4")
def test_target_ciou_cpu():
    """CIoU loss on 1M aligned pairs, forward+backward, fp32: cpu backend >= 3x the eager reference."""
    cpu = rows_for("ciou_loss")["cpu"]
    assert cpu["speedup_vs_reference"] >= 3.0, cpu
