"""pytest-benchmark suite of the Lovász losses: Lovász-softmax per image on
logits [8, 21, 128, 128] (fp32, int64 labels; [2, 21, 64, 64] with
SEGFAST_BENCH_QUICK=1), forward+backward: segfast (one batched sort), its
per-segment loop reference (segfast/reference/lovasz.py, fp32) and
segmentation_models_pytorch's LovaszLoss("multiclass", per_image=True).

    pytest bench/bench_lovasz.py --benchmark-only --benchmark-json=bench.json

Each row's extra_info has the median speed-up of segfast over smp and over
the reference (medians of >= 5 runs each, measured in the same process) and
the achieved GB/s for the bytes a fused kernel must move (logits read,
gradient written, labels read).
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from segfast import bench as sb
import segfast
from segfast.reference import lovasz as ref

from segfast.compat.smp import load_smp_losses  # noqa: E402  (smp's losses without its model zoo)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUICK = os.environ.get("SEGFAST_BENCH_QUICK", "0") not in ("", "0")
SHAPE = (2, 21, 64, 64) if QUICK else (8, 21, 128, 128)
ROUNDS = 5  # smp takes seconds per call on CPU


INPUTS = ("random", "confident")


def make_inputs(kind: str = "random", seed: int = 0):
    """``random``: N(0, 1) logits (the issue's case); ``confident``: 8·onehot(label)
    + N(0, 1), like a trained network: nearly every pixel's rank then matters,
    so little of the sort can be skipped (segfast's worst case)."""
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = SHAPE
    x = torch.randn(SHAPE, generator=g)
    y = torch.randint(0, C, (N, H, W), generator=g)
    if kind == "confident":
        x += 8 * torch.nn.functional.one_hot(y, C).movedim(-1, 1)
    return x.to(DEVICE).requires_grad_(True), y.to(DEVICE)


def runners() -> dict:
    out = {
        "segfast": lambda x, y: segfast.lovasz_softmax_loss(x, y, per_image=True),
        "reference": lambda x, y: ref.lovasz_softmax(x, y, per_image=True, dtype=torch.float32),
    }
    smp = load_smp_losses()
    if smp is not None:
        out["smp"] = smp.LovaszLoss("multiclass", per_image=True)
    return out


@functools.lru_cache(maxsize=None)
def median_ms(name: str, kind: str = "random") -> float:
    x, y = make_inputs(kind)
    times = sb.time_fn(sb.fwd_bwd(runners()[name], x, y), DEVICE, repeat=ROUNDS, warmup=1)
    return 1e3 * sorted(times)[len(times) // 2]


def kernel_bytes() -> int:
    N, C, H, W = SHAPE
    return 2 * N * C * H * W * 4 + N * H * W * 8


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("name", list(runners()))
def test_lovasz_softmax_fwd_bwd(benchmark, name, kind):
    benchmark.group = f"lovasz_softmax-per_image-{'x'.join(map(str, SHAPE))}-{kind}"
    x, y = make_inputs(kind)
    benchmark.pedantic(sb.fwd_bwd(runners()[name], x, y), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ms = 1e3 * benchmark.stats.stats.median
    seg = median_ms("segfast", kind)  # the speed-ups compare medians measured alike for every runner
    info = dict(device=str(DEVICE), runner=name, inputs=kind, median_ms=ms,
                gbps=kernel_bytes() / (ms * 1e-3) / 1e9, speedup_vs_reference=median_ms("reference", kind) / seg)
    if "smp" in runners():
        info["speedup_vs_smp"] = median_ms("smp", kind) / seg
    benchmark.extra_info.update(info)


@pytest.mark.skipif(DEVICE.type != "cpu" or QUICK, reason="the CPU target of the Lovász issue")
def test_target_cpu():
    """segfast >= 3x smp's LovaszLoss (multiclass, per_image) on [8, 21, 128, 128], medians of 5 runs."""
    if load_smp_losses() is None:
        pytest.skip("segmentation_models_pytorch is not installed")
    seg, smp = median_ms("segfast"), median_ms("smp")  # random logits
    print(f"\nlovasz_softmax per_image {SHAPE}: segfast {seg:.1f} ms, smp {smp:.1f} ms, speed-up {smp / seg:.1f}x")
    assert smp / seg >= 3.0, (seg, smp)
