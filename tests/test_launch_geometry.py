"""Launch geometry of the reducing kernels on CUDA: how many (image, chunk)
programs the grid has for a device's SM count, and that the Triton chunk
length is a whole number of pixel blocks (so chunk starts stay 16-aligned and
Triton's divisibility specialisation keeps 128-bit loads). Pure arithmetic on
a fake device: no GPU needed."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from segfast.ops import _common  # noqa: E402
from segfast.triton_kernels import _common as tc  # noqa: E402
from segfast.triton_kernels import pixel as TP  # noqa: E402
from segfast.triton_kernels import region as TR  # noqa: E402

H100_SMS = 132
CUDA = torch.device("cuda")


@pytest.fixture
def fake_sms(monkeypatch):
    monkeypatch.setattr(_common, "sm_count", lambda device: H100_SMS)


@pytest.mark.parametrize("tk", [TR, TP], ids=["region", "pixel"])
@pytest.mark.parametrize("N,C,S", [(8, 21, 128 * 128), (16, 21, 512 * 512), (1, 2, 128 * 128), (2, 150, 64 * 64)])
def test_triton_grid_fills_device(fake_sms, tk, N, C, S):
    P = _common.triton_chunks(tk, N, C, S, CUDA)
    block_s = TR._stats_blocks(C, None, None)[2] if tk is TR else TP.block_pixels(TP.CE, C)
    L = tc.chunk_len(S, P, block_s)
    assert L % block_s == 0 and L % 16 == 0  # chunk starts Triton knows to be 16-pixel aligned
    # every chunk holds pixels and together they cover the image
    assert (P - 1) * L < S <= P * L
    # at least 2 programs per SM, or one program per pair of pixel blocks
    assert N * P >= min(2 * H100_SMS, N * (-(-S // (2 * block_s))))


def test_benchmark_shape_geometry(fake_sms):
    """[8, 21, 128, 128] Dice: the stats grid has >= 2 programs per SM."""
    P = _common.triton_chunks(TR, 8, 21, 128 * 128, CUDA)
    assert 8 * P >= 2 * H100_SMS
    assert tc.chunk_len(128 * 128, P, TR._stats_blocks(21, None, None)[2]) % 16 == 0


@pytest.mark.parametrize("S", [1, 15, 16, 17, 91, 1000, 4097, 128 * 128 + 3])
@pytest.mark.parametrize("P", [1, 2, 3, 7, 64, 97])
@pytest.mark.parametrize("block_s", [8, 16, 64, 256])
def test_chunk_len(S, P, block_s):
    L = tc.chunk_len(S, P, block_s)
    unit = max(block_s, 16)
    assert L % unit == 0 and P * L >= S and L - unit < -(-S // P)


@pytest.mark.parametrize("S", [1, 17, 1000, 128 * 128, 128 * 128 + 3, 512 * 512])
@pytest.mark.parametrize("N", [1, 3, 8, 64, 1000])
def test_chunks_no_empty_chunk(N, S):
    for block_s in (8, 16, 64, 128):
        P = tc.chunks(N, S, block_s, H100_SMS, 4)
        L = tc.chunk_len(S, P, block_s)
        assert P >= 1 and (P - 1) * L < S <= P * L


def test_cuda_extension_chunks(fake_sms):
    """The CUDA C++ stats kernel: at [8, 21, 128, 128] 8 blocks of 256 pixels
    (one class per lane: 32 pixels per block step) fill 3 resident blocks per SM
    in one wave; large images keep a wave of resident blocks."""
    assert _common.cuda_stats_geometry(21, False) == (256, 3)
    P = _common.stats_chunks(8, 21, 128 * 128, CUDA, False)
    assert 8 * P >= 2 * H100_SMS and 8 * P <= 3 * H100_SMS and 128 * 128 / P >= 256
    assert 16 * _common.stats_chunks(16, 21, 512 * 512, CUDA, False) == 3 * H100_SMS // 16 * 16
    assert _common.stats_chunks(1, 21, 512 * 512, CUDA, False) == 3 * H100_SMS
    # few classes: wider runs per step, chunks capped at CUDA_MIN_CHUNK; the wide kernel: 1024
    assert _common.cuda_stats_geometry(2, False) == (_common.CUDA_MIN_CHUNK, 3)
    assert _common.cuda_stats_geometry(150, True)[0] == _common.CUDA_MIN_CHUNK


@pytest.mark.parametrize("C,f64", [(1, False), (2, False), (3, False), (21, False), (33, False), (64, False),
                                   (100, True), (128, False), (129, False), (256, False), (257, False), (129, True)])
def test_cuda_stats_chunk_is_whole_steps(C, f64):
    """The shortest stats chunk is a whole number of block steps of region.cu's
    launch_stats (G class lanes x CPT classes >= C) and at least 8 steps or 1024 pixels."""
    min_chunk, per_sm = _common.cuda_stats_geometry(C, f64)
    if C > 256 or (f64 and C > 128):
        assert (min_chunk, per_sm) == (_common.CUDA_MIN_CHUNK, _common.CUDA_WIDE_PER_SM)
        return
    cpt = next(k for k in (1, 2, 4, 8) if 32 * k >= C)
    G = next(g for g in (1, 2, 4, 8, 16, 32) if g * cpt >= C)
    step = 8 * (32 // G) * 4
    assert min_chunk % step == 0 and min_chunk >= min(8 * step, _common.CUDA_MIN_CHUNK)
    assert 1 <= per_sm <= 3


@pytest.mark.parametrize("N,S", [(8, 128 * 128), (16, 512 * 512), (1, 128 * 128), (64, 64 * 64), (70000, 16)])
def test_cuda_pixel_chunks(fake_sms, N, S):
    """The CUDA pixel kernels: chunks of one 256-pixel block step or more, at
    most CUDA_PIXEL_PER_SM blocks per SM, and >= 2 blocks per SM at [8, C, 128, 128]."""
    P = _common.pixel_chunks(N, S, CUDA)
    assert P >= 1 and S / P >= min(S, _common.CUDA_PIXEL_CHUNK) - 1
    assert N * P <= max(N, _common.CUDA_PIXEL_PER_SM * H100_SMS)
    if (N, S) == (8, 128 * 128):
        assert N * P >= 2 * H100_SMS


def test_cuda_constants_match_sources():
    """ops/_common.py's CUDA geometry is that of the kernels in csrc/cuda."""
    from pathlib import Path

    from segfast.gpucheck import cuda_resources as cr
    src = Path(__file__).resolve().parents[1] / "csrc" / "cuda"
    if not src.is_dir():
        pytest.skip("no csrc/cuda sources (an installed package)")
    region, pixel = (cr.source_constants(src / f, src.parent) for f in ("region.cu", "pixel.cu"))
    assert region["kStatsThreads"] == _common.CUDA_STATS_THREADS
    assert region["kGradThreads"] == _common.CUDA_GRAD_THREADS
    assert region["kRegMaxC"] == _common.CUDA_REG_MAX_C
    assert pixel["kThreads"] == _common.CUDA_PIXEL_THREADS
    assert pixel["kVec"] == region["kVec"] == _common.CUDA_VEC


def test_cuda_grids_benchmark_shape():
    """The static report's CUDA grids: every streaming loss kernel has >= 2
    blocks per SM of the H100 model at the benchmark shape [8, 21, 128, 128]."""
    from segfast.gpucheck import perf
    rows = perf.cuda_grids("h100", perf.SHAPES)
    bench = [r for r in rows if r["shape"] == "8x21x128x128"]
    assert {r["kernel"] for r in bench} >= {"stats_kernel", "grad_kernel"} and len(bench) == 4
    for r in bench:
        assert r["per_sm"] >= 2, r
    for r in rows:  # never more than the resident wave the ops aim for (a full machine at 16 x 512 x 512)
        assert r["blocks"] >= 1
        if r["shape"] == "16x21x512x512":
            assert r["per_sm"] >= 2.5, r


def test_cpu_chunks_unchanged():
    from segfast import backends
    workers = 4 * backends.cpu_threads()
    assert _common.num_chunks(8, 128 * 128, torch.device("cpu")) == max(1, min(-(-workers // 8), 8))


@pytest.mark.parametrize("kind", [TP.CE, TP.FOCAL_SOFTMAX, TP.BCE, TP.FOCAL_SIGMOID])
@pytest.mark.parametrize("N,C,S", [(1, 2, 128 * 128), (8, 21, 128 * 128)])
def test_triton_pixel_chunks_follow_the_kind(fake_sms, kind, N, C, S):
    """The sigmoid and softmax pixel kernels tile differently: each kind's grid
    has no empty chunk."""
    P = _common.triton_chunks(TP, N, C, S, CUDA, kind=kind)
    L = tc.chunk_len(S, P, TP.block_pixels(kind, C))
    assert (P - 1) * L < S <= P * L
