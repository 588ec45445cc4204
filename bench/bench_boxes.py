"""pytest-benchmark suite of the boxes family against the eager reference
(segfast/reference/boxes.py, segfast/reference/boxes_match.py), fp32, every
backend usable here:

- pairwise IoU 4096 x 4096 (forward);
- the CIoU loss on 1M aligned pairs (mean, forward+backward);
- ``box_iou_max`` at 200,000 anchors x 500 gts, one image, against what users
  write eagerly: the whole IoU matrix, then max over each axis;
- ``nms`` on 10,000 boxes against the eager reference.

Each row's extra_info has the speed-up over the reference (medians measured
in the same run), GB/s for the bytes the kernels must move where that means
something, and the peak extra memory. The cases live in
segfast/ops/_bench_boxes.py, so ``segfast-bench`` runs them too.

    pytest bench/bench_boxes.py --benchmark-only --benchmark-json=bench.json
"""

from __future__ import annotations

import pytest

from _bench import DEVICE, params, rows_for, run_benchmark

OPS = ("box_iou", "ciou_loss", "box_iou_max", "nms")


@pytest.mark.parametrize("case,name", params(OPS))
def test_boxes(benchmark, case, name):
    run_benchmark(benchmark, case, name)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU speed targets")
def test_target_ciou_cpu():
    """CIoU loss on 1M aligned pairs, forward+backward, fp32: cpu backend >= 3x the eager reference."""
    cpu = rows_for("ciou_loss")["cpu"]
    assert cpu["speedup_vs_reference"] >= 3.0, cpu


@pytest.mark.skipif(DEVICE.type != "cpu", reason="CPU speed targets")
def test_target_box_iou_max_cpu():
    """box_iou_max 200,000 x 500 fp32, one run: cpu backend >= 2x the eager
    full-matrix baseline, peak extra memory <= 10% of the baseline's."""
    rows = rows_for("box_iou_max")
    cpu, base = rows["cpu"], rows["reference"]
    assert cpu["speedup_vs_reference"] >= 2.0, cpu
    assert cpu["peak_extra_mb"] <= 0.1 * base["peak_extra_mb"], (cpu, base)
