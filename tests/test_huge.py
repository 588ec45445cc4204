"""Tensors of more than 2^31 elements: 64-bit indexing in the kernels.

bf16 logits [1, 2, 2^30 + 5] (2^31 + 10 elements, 4 GiB) with zero logits,
so softmax gives p = 1/2 everywhere and every sum has a closed form; the
gradient is checked at offsets past 2^31. Needs about 10 GiB of free memory.
"""

from __future__ import annotations

import pytest
import torch

from segfast.ops import region as R

from conftest import kernel_backends

S = 2**30 + 5


def _mem_available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


@pytest.mark.slow
@pytest.mark.skipif(_mem_available_gib() < 14, reason="needs ~10 GiB of free memory")
@pytest.mark.parametrize("backend", [b for b in kernel_backends() if b == "cpu"])
def test_more_than_2_31_elements(backend):
    x = torch.zeros(1, 2, S, dtype=torch.bfloat16, requires_grad=True)
    t = torch.zeros(1, S, dtype=torch.uint8)
    t[0, ::3] = 1
    t[0, -1] = 255  # ignored
    stats = R.plane_stats(x, t, True, R.ACT["softmax"], 0, 255.0, backend)

    valid = S - 1
    t1 = (valid + 2) // 3  # s in [0, S-1) with s % 3 == 0
    T = torch.tensor([valid - t1, t1], dtype=torch.float64)
    want = torch.stack([0.5 * T, torch.full((2,), 0.5 * valid, dtype=torch.float64), T,
                        torch.full((2,), float(valid), dtype=torch.float64),
                        torch.full((2,), 0.25 * valid, dtype=torch.float64), T, 0.5 * T], dim=-1)[None]
    torch.testing.assert_close(stats.double(), want, rtol=1e-6, atol=0)

    # dLoss/dI of class 1 = 1, all else 0: a_1 = t_1, dx_1 = +t_1/4, dx_0 = -t_1/4.
    g = torch.zeros(1, 2, R.K)
    g[0, 1, 0] = 1.0
    (dx,) = torch.autograd.grad(stats, x, g)
    del x, stats
    tail = torch.arange(S - 7, S)
    t1_tail = ((tail % 3) == 0).to(torch.float32)
    t1_tail[-1] = 0  # the ignored pixel gets no gradient
    torch.testing.assert_close(dx[0, 1, -7:].float(), 0.25 * t1_tail)
    torch.testing.assert_close(dx[0, 0, -7:].float(), -0.25 * t1_tail)
    assert dx[0, 1].sum(dtype=torch.float64).item() == pytest.approx(0.25 * t1, rel=1e-6)
