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
    assert block_s >= 16 and L % block_s == 0
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
@pytest.mark.parametrize("block_s", [16, 64, 256])
def test_chunk_len(S, P, block_s):
    L = tc.chunk_len(S, P, block_s)
    assert L % block_s == 0 and P * L >= S and L - block_s < -(-S // P)


@pytest.mark.parametrize("S", [1, 17, 1000, 128 * 128, 128 * 128 + 3, 512 * 512])
@pytest.mark.parametrize("N", [1, 3, 8, 64, 1000])
def test_chunks_no_empty_chunk(N, S):
    for block_s in (16, 64, 128):
        P = tc.chunks(N, S, block_s, H100_SMS, 4)
        L = tc.chunk_len(S, P, block_s)
        assert P >= 1 and (P - 1) * L < S <= P * L


def test_cuda_extension_chunks(fake_sms):
    """The CUDA C++ stats kernel: chunks of one shared-memory tile at least."""
    P = _common.num_chunks(8, 128 * 128, CUDA)
    assert P == 128 * 128 // _common.CUDA_MIN_CHUNK
    assert _common.num_chunks(1, 512 * 512, CUDA) == 512 * 512 // _common.CUDA_MIN_CHUNK
    assert 64 * _common.num_chunks(64, 512 * 512, CUDA) >= _common.PROGRAMS_PER_SM * H100_SMS


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
