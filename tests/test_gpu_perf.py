"""Static performance facts of the Triton loss path on an H100
(segfast.gpucheck.perf): launches and host reads per public call, and the
global load width of the streaming kernels compiled ahead of time for sm_90
at the benchmark shape. No GPU needed: the calls run in the interpreter
with the kernels recorded, not run."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("triton")

from conftest import triton_needs_run  # noqa: E402

from segfast.gpucheck import perf, triton_aot  # noqa: E402

needs_run = triton_needs_run()
H100 = perf.MODELS["h100"]
SHAPE = (8, 21, 128, 128)
WORKERS = min(2, os.cpu_count() or 1)


@pytest.fixture(scope="module")
def traces():
    return {name: perf.trace_call(fn, SHAPE, H100) for name, fn in perf._calls().items()}


@needs_run
@pytest.mark.parametrize("name", sorted(perf.LAUNCH_TARGETS))
def test_no_host_sync(traces, name):
    trace, _ = traces[name]
    assert trace.syncs == []


@needs_run
def test_dice_grid_fills_h100(traces):
    trace, _ = traces["dice"]
    stats = [k for k in trace.launches if k.kernel == "_region_stats_kernel"]
    assert stats and all(k.programs >= 2 * H100["sms"] for k in stats)


@needs_run
def test_bytes_model(traces):
    """The streaming kernels move at least the ideal bytes; the moved total is reported."""
    for name, (trace, ideal) in traces.items():
        assert trace.bytes >= ideal, name


@needs_run
@pytest.mark.parametrize("name", ["ce", "bce", "focal_sigmoid"])
def test_pixel_grid_fills_h100(traces, name):
    """The pixel loss kernels (forward and backward) run >= 2 programs per SM."""
    trace, _ = traces[name]
    pixel = [k for k in trace.launches if k.kernel.startswith("_pixel_")]
    assert len(pixel) == 2 and all(k.programs >= 2 * H100["sms"] for k in pixel), pixel


@needs_run
@pytest.mark.parametrize("name", sorted(perf.LAUNCH_TARGETS))
def test_launch_target(traces, name):
    trace, _ = traces[name]
    assert trace.kernels <= perf.LAUNCH_TARGETS[name], [k.kernel for k in trace.launches] + trace.torch_ops


def _constexprs(launch) -> dict:
    import importlib
    fn = getattr(importlib.import_module(launch.module), launch.kernel)
    return launch.constexprs(list(fn.arg_names))


@needs_run
@pytest.mark.slow
def test_streaming_loads_are_128_bit(traces):
    """Each streaming loss kernel at the benchmark shape (float32 logits,
    int64 labels, the H100 grid) loads with 128-bit LDGs: the chunk length is a
    multiple of the pixel block, so Triton keeps the divisibility hint. The
    pixel backward kernels have no block barrier."""
    jobs = {}
    for trace, _ in traces.values():
        for k in trace.launches:
            if k.kernel in perf.STREAMING:
                jobs.setdefault(triton_aot.Job(k.launch, "exact", 90), None)
    assert {j.launch.kernel for j in jobs} >= {"_region_stats_kernel", "_region_grad_kernel",
                                               "_pixel_softmax_kernel", "_pixel_sigmoid_kernel"}
    rows = triton_aot.compile_all(list(jobs), workers=WORKERS)
    for job, row in zip(jobs, rows):
        assert row["error"] is None, row["error"]
        assert row["ldg128"] > 0, (job.launch.kernel, row)
        assert row["local"] == 0, (job.launch.kernel, row)
        if job.launch.kernel.startswith("_pixel_") and not _constexprs(job.launch)["WANT_LOSS"]:
            # the pixel backward: no block barrier anywhere, so none in its tile loop
            assert row["bar_sync"] == 0, (job.launch.kernel, row)


@needs_run
@pytest.mark.slow
def test_atomics_are_relaxed():
    """The CRF splat's adds and box_iou_max's per-gt max compile to REDG
    without a fence: their results are read after the kernel ends."""
    from segfast.gpucheck import triton_workload
    launches = triton_aot.record_launches(lambda: triton_workload.run("quick", families=("crf", "boxes_match")))
    wanted = {"crf_splat_kernel", "_iou_max_kernel"}
    jobs = triton_aot.expand([la for la in triton_aot.subset(launches) if la.kernel in wanted], (90,), ("div16",))
    assert {j.launch.kernel for j in jobs} == wanted
    for job, row in zip(jobs, triton_aot.compile_all(jobs, workers=WORKERS)):
        assert row["error"] is None, row["error"]
        assert (row["membar"], row["atomg"]) == (0, 0) and row["redg"] > 0, (job.launch.kernel, row)


@needs_run
def test_report_table(capsys):
    assert perf.main(["--quick", "--no-compile"]) == 0
    out = capsys.readouterr().out
    assert "H100" in out and "_region_stats_kernel" in out and "8x21x128x128" in out


def test_bench_routes_gpu_model(monkeypatch):
    from segfast import bench
    seen = []
    monkeypatch.setattr(perf, "main", lambda argv: seen.append(argv) or 0)
    assert bench.main(["--gpu-model", "h100", "--quick"]) == 0
    assert seen == [["--gpu-model", "h100", "--quick"]]
