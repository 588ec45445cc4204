"""pytest-benchmark suite of box matching and NMS: ``box_iou_max`` at
200,000 anchors x 500 gts (one image) and ``nms`` on 10,000 boxes, per
backend, against the eager baseline (box_iou_max: the whole IoU matrix, then
max over each axis, what users write; nms: the eager reference), with peak
extra memory in extra_info.

    pytest bench/bench_boxes_match.py --benchmark-only
"""

from __future__ import annotations

import pytest

from _bench import DEVICE, params, rows_for, run_benchmark

OPS = ("box_iou_max", "nms")


@pytest.mark.parametrize("case,name", params(OPS))
def test_boxes_match(benchmark, case, name):
    run_benchmark(benchmark, case, name)


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU targets of issue 4")
def test_targets_cpu():
    """box_iou_max 200,000 x 500 fp32, one run: cpu backend >= 2x the eager
    full-matrix baseline, peak extra memory <= 10% of the baseline's."""
    rows = rows_for("box_iou_max")
    cpu, base = rows["cpu"], rows["reference"]
    assert cpu["speedup_vs_reference"] >= 2.0, cpu
    assert cpu["peak_extra_mb"] <= 0.1 * base["peak_extra_mb"], (cpu, base)
