"""Static performance facts of the Triton loss path on an H100
(segfast.gpucheck.perf): launches and host reads per public call, and the
global load width, spills and barriers of the streaming kernels compiled
ahead of time for sm_90 (sm_80 too for the wide class tile) at the
benchmark shapes. No GPU needed: the calls run in the interpreter with the
kernels recorded, not run. The cuda backend's launches per call are counted
on fake CUDA tensors with its kernels stubbed (tests/test_no_sync.py's
harness)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("triton")

from conftest import triton_needs_run  # noqa: E402
from test_no_sync import fake_cuda_guard, gpu  # noqa: E402,F401  (fixtures: fake CUDA tensors, stubbed kernels)

from segfast.gpucheck import perf, triton_aot  # noqa: E402

needs_run = triton_needs_run()
H100 = perf.MODELS["h100"]
SHAPE = (8, 21, 128, 128)
# C > 32: the stats kernel's wide class tile (ADE20K's 150 classes, and 64)
# and, above 256 classes, its class-chunk loop
WIDE_SHAPES = ((8, 64, 128, 128), (8, 150, 128, 128), (8, 300, 128, 128))
WORKERS = min(2, os.cpu_count() or 1)


@pytest.fixture(scope="module")
def traces():
    return {name: perf.trace_call(fn, SHAPE, H100) for name, fn in perf._calls().items()}


@needs_run
@pytest.mark.parametrize("name", sorted(perf.LAUNCH_TARGETS))
def test_no_host_sync(traces, name):
    trace, _ = traces[name]
    assert trace.syncs == []


@pytest.fixture(scope="module")
def wide_traces():
    return {(name, shape): perf.trace_call(perf._calls()[name], shape, H100)[0]
            for shape in WIDE_SHAPES for name in ("dice", "dice_ce")}


@needs_run
def test_dice_grid_fills_h100(traces, wide_traces):
    for trace in [traces["dice"][0], *wide_traces.values()]:
        for kernel in ("_region_stats_kernel", "_region_grad_kernel"):
            ks = [k for k in trace.launches if k.kernel == kernel]
            assert ks and all(k.programs >= 2 * H100["sms"] for k in ks), kernel


@needs_run
@pytest.mark.slow
def test_wide_class_tile_compiles_lean(wide_traces):
    """The streaming region kernels at C > 32 (the stats kernel's wide class
    tile and class-chunk loop, the grad kernel's class loop), Dice and Dice +
    CE, on sm_80 and sm_90: 128-bit loads of logits and labels and none
    narrower (at 129-256 classes the stats tile reads 2-pixel vectors of the
    logits, so that a thread holds 16: 128-bit loads of the int64 labels, 64-bit
    of the float32 logits), no spill, no block barrier inside a loop, and
    registers that leave at least 2 programs per SM."""
    jobs = {}
    for trace in wide_traces.values():
        for k in trace.launches:
            if k.kernel in ("_region_stats_kernel", "_region_grad_kernel"):
                for arch in (80, 90):
                    jobs.setdefault(triton_aot.Job(k.launch, "exact", arch), None)
    assert len(jobs) == 2 * 2 * len(WIDE_SHAPES) * 2
    for job, row in zip(jobs, triton_aot.compile_all(list(jobs), workers=WORKERS)):
        assert row["error"] is None, row["error"]
        where = (job.arch, row)
        assert row["ldg128"] > 0 and row["local"] == 0 and row["bar_loop"] == 0, where
        assert row["ld_stream_128"] > 0, where
        cx = row["constexprs"]
        if not (row["kernel"] == "_region_stats_kernel" and cx.get("SINGLE_C") and cx.get("BLOCK_C") == 256):
            assert row["ld_stream_narrow"] == 0, where
        assert perf.occupancy(row, H100) >= 2, where


def test_loop_facts():
    """perf_ptx: barriers and cp.async copies inside a loop, and the loads whose
    address comes from the first two parameters by width (not a gather
    through a loaded value, not another parameter)."""
    from segfast.gpucheck import perf_ptx
    ptx = """
        ld.param.b64 %rd1, [k_param_0];
        ld.param.b64 %rd2, [k_param_1];
        ld.param.b64 %rd3, [k_param_2];
        add.s64 %rd4, %rd1, 16;
    $L__BB0_1:
        @%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd4 + 0 ];
        mad.wide.s32 %rd5, %r7, 8, %rd2;
        @%p1 ld.global.v2.b64 { %rd6, %rd7 }, [ %rd5 + 0 ];
        @%p1 ld.global.b64 %rd8, [ %rd5 + 0 ];
        add.s64 %rd9, %rd3, %rd6;
        ld.global.b32 %r5, [ %rd9 + 0 ];
        cp.async.cg.shared.global [ %r9 + 0 ], [ %rd4 + 0 ], 0x10, %r8;
        cp.async.ca.shared.global [ %r9 + 16 ], [ %rd5 + 0 ], 0x8, %r8;
        bar.sync 0;
        @%p2 bra $L__BB0_1;
        ld.global.b32 %r6, [ %rd1 + 0 ];
        ret;
    """
    c = perf_ptx.loop_facts(ptx)
    assert (c["bar_loop"], c["cp_async"], c["cp_async_loop"], c["cp_async_bytes"]) == (1, 2, 2, 16)
    # v4.b32, v2.b64 and the 16-byte copy; the scalar b64, the 8-byte copy and the b32 after the loop
    assert (c["ld_stream_128"], c["ld_stream_narrow"]) == (3, 3)
    assert triton_aot.vector_counts(ptx)["bar_loop"] == 1


def test_loop_barriers_counted():
    ptx = """
        bar.sync 0;
    $L__BB0_1:
        ld.global.v4.b32 {%r1, %r2, %r3, %r4}, [%rd1];
        bar.sync 0;
        @%p1 bra $L__BB0_1;
    $L__BB0_2:
        @%p2 bra $L__BB0_3;
        barrier.sync 0;
    $L__BB0_3:
        ret;
    """
    assert triton_aot.loop_barriers(ptx) == 1
    assert triton_aot.vector_counts(ptx)["bar_sync"] == 3


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
        # logits and labels: 128 bits per thread and load, none narrower
        assert row["ld_stream_128"] > 0 and row["ld_stream_narrow"] == 0, (job.launch.kernel, row)
        # no block barrier in a loop, but the two of a software pipeline's waits
        assert row["bar_loop"] == 0 or (row["cp_async_loop"] > 0 and row["bar_loop"] <= 2), (job.launch.kernel, row)
        if job.launch.kernel.startswith("_pixel_") and not _constexprs(job.launch)["WANT_LOSS"]:
            # the pixel backward: no block barrier anywhere, so none in its tile loop
            assert row["bar_sync"] == 0, (job.launch.kernel, row)


@needs_run
@pytest.mark.slow
def test_pipelined_loops_copy_16_bytes(monkeypatch):
    """With more than one stage (``tl.range(num_stages=)``) the tile loops of
    the region stats kernel and the pixel forward kernels compile to 16-byte
    cp.async copies into shared memory (sm_90) without spills: the knob works,
    and the report shows it (cp_async_loop)."""
    from segfast.triton_kernels import pixel as tpx
    from segfast.triton_kernels import region as trg
    for mod, name in ((trg, "STATS_STAGES"), (trg, "LOOP_STATS_STAGES"), (tpx, "SOFTMAX_STAGES"),
                      (tpx, "SIGMOID_STAGES")):
        monkeypatch.setattr(mod, name, 2)
    jobs = {}
    for name in ("dice", "ce", "bce"):
        for k in perf.trace_call(perf._calls()[name], SHAPE, H100)[0].launches:
            if k.kernel in ("_region_stats_kernel", "_pixel_softmax_kernel", "_pixel_sigmoid_kernel"):
                if _constexprs(k.launch).get("WANT_DX"):
                    continue  # the backward's loops are over classes
                jobs.setdefault(triton_aot.Job(k.launch, "exact", 90), None)
    assert {j.launch.kernel for j in jobs} == {"_region_stats_kernel", "_pixel_softmax_kernel",
                                               "_pixel_sigmoid_kernel"}
    for job, row in zip(jobs, triton_aot.compile_all(list(jobs), workers=WORKERS)):
        assert row["error"] is None, row["error"]
        assert row["local"] == 0, (job.launch.kernel, row)
        if job.launch.kernel != "_pixel_sigmoid_kernel":  # its class loads sit in an inner loop
            assert row["cp_async_loop"] > 0 and row["cp_async_bytes"] == 16, (job.launch.kernel, row)


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


# ---------------------------------------------------------------- cuda backend: launches per call


def _cuda_launches(name):
    """-> (kernel launches, host reads) of one forward + backward of ``name`` on
    the cuda backend: its C++ kernels (stubbed) and the torch ops that launch
    a CUDA kernel, on fake CUDA tensors at the benchmark shape."""
    import torch
    import test_no_sync as ns
    from torch.utils._pytree import tree_leaves

    ops = []

    class Count(ns.HostReads):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.split(".")[0]
            on_cuda = any((isinstance(a, torch.Tensor) and a.device.type == "cuda")  # a factory's device too
                          or (isinstance(a, torch.device) and a.type == "cuda")
                          for a in tree_leaves((args, kwargs or {})))
            writes = [r.alias_info is None or r.alias_info.is_write for r in func._schema.returns]
            if (func.namespace == "aten" and on_cuda and name not in perf.NO_KERNEL
                    and (any(writes) or name.startswith("_assert"))):
                ops.append(name)
            return super().__torch_dispatch__(func, types, args, kwargs)
    return Count, ops


@pytest.mark.parametrize("name", ["dice", "dice_ce", "dice_ce_ignore", "ce", "ce_ignore", "bce", "focal_sigmoid"])
def test_cuda_launch_target(gpu, monkeypatch, name):  # noqa: F811 (the imported fixture)
    """Dice and Dice + CE on the cuda backend: the stats kernel (which flags bad
    labels), the finish kernel, the device assertion, the grad kernel (which reads
    grad_output), and the flag's and the seed's fills; the pixel losses: one
    kernel forward (the loss, its normalizer and the label check), one backward
    (grad_output / normalizer read on the device) and the seed's fill. Within
    the targets, no host read."""
    import torch
    import test_no_sync as ns
    from segfast import functional as F

    from segfast.ops import pixel as P

    Count, ops = _cuda_launches(name)
    monkeypatch.setattr(ns, "HostReads", Count)
    # the steady state of a training step: the pixel losses' ticket counter is
    # made (zeroed) once per device, by the first call (as perf.trace_call's warm-up)
    monkeypatch.setattr(P, "_ticket_counter", lambda device: torch.empty(1, dtype=torch.int32, device=device))
    monkeypatch.setenv("SEGFAST_BACKEND", "cuda")
    N, C, H, W = SHAPE
    loss = {"dice": lambda x, t: F.dice_loss(x, t),
            "dice_ce": lambda x, t: F.dice_ce_loss(x, t),
            "dice_ce_ignore": lambda x, t: F.dice_ce_loss(x, t, ignore_index=255),
            "ce": lambda x, t: F.cross_entropy(x, t),
            "ce_ignore": lambda x, t: F.cross_entropy(x, t, ignore_index=255),
            "bce": lambda x, t: F.binary_cross_entropy_with_logits(x, t),
            "focal_sigmoid": lambda x, t: F.focal_loss(x, t, mode="multilabel")}[name]

    def step(x, t):  # loss.backward(): the seed is ones_like(loss)
        value = loss(x, t)
        ns.run_backward([value])
        return value.detach()
    reads, launches, err = gpu(step, lambda: (torch.randn(N, C, H, W, device="cuda", requires_grad=True),
                                              torch.randint(0, C, (N, H, W), device="cuda")))
    if err is not None:
        raise err
    assert reads == []
    assert ("region_finish" if name.startswith("dice") else "pixel_reduced") in launches, launches
    target = perf.LAUNCH_TARGETS[name.replace("_ignore", "")]
    assert len(launches) + len(ops) <= target, (launches, ops)


def test_cuda_rows(monkeypatch):
    """perf --cuda: the cuda backend's streaming loss kernels of region.cu and
    pixel.cu, compiled for the model's architecture (the compile is the slow
    tier's test_cuda_resources; here the rows it keeps)."""
    from segfast.gpucheck import cuda_resources as cr
    seen = {}

    def report(src, archs, workers, files):
        seen.update(archs=archs, files=files)
        return [dict(kernel="stats_kernel"), dict(kernel="finish_kernel"), dict(kernel="softmax_kernel"),
                dict(kernel="nms_mask_kernel", error="compile error")]
    monkeypatch.setattr(cr, "nvcc", lambda: "nvcc")
    monkeypatch.setattr(cr, "report", report)
    rows = perf.cuda_report("a100")
    assert seen == {"archs": (80,), "files": cr.LOSS_FILES}
    assert [r["kernel"] for r in rows] == ["stats_kernel", "softmax_kernel", "nms_mask_kernel"]
    assert set(perf.CUDA_STREAMING) >= set(cr.NO_LOOP_BARRIER) | set(cr.VECTOR_LOADS)
