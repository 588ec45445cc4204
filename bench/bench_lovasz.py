"""pytest-benchmark suite of the Lovász losses: Lovász-softmax on logits
[8, 21, 128, 128] (fp32, int64 labels; [2, 21, 64, 64] with
SEGFAST_BENCH_QUICK=1), per_image True and False, random and confident
logits, forward+backward: segfast with each kernel backend of this device
and with its torch backend (one batched torch sort), the per-segment loop
reference (segfast/reference/lovasz.py, fp32) and
segmentation_models_pytorch's LovaszLoss("multiclass", per_image=...).

    pytest bench/bench_lovasz.py --benchmark-only --benchmark-json=bench.json

Each row's extra_info has the median speed-up of that row over smp and over
the reference (medians of >= 5 runs each, measured in the same process) and
the achieved GB/s for the bytes a fused kernel must move (logits read,
gradient written, labels read).
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

import segfast
from segfast import backends
from segfast import bench as sb
from segfast.reference import lovasz as ref

from segfast.compat.smp import load_smp_losses  # noqa: E402  (smp's losses without its model zoo)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUICK = os.environ.get("SEGFAST_BENCH_QUICK", "0") not in ("", "0")
SHAPE = (2, 21, 64, 64) if QUICK else (8, 21, 128, 128)
ROUNDS = 5  # smp takes seconds per call on CPU


INPUTS = ("random", "confident")


def make_inputs(kind: str = "random", seed: int = 0):
    """``random``: N(0, 1) logits; ``confident``: 8·onehot(label)
    + N(0, 1), like a trained network: nearly every pixel's rank then matters,
    so little of the sort can be skipped (segfast's worst case)."""
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = SHAPE
    x = torch.randn(SHAPE, generator=g)
    y = torch.randint(0, C, (N, H, W), generator=g)
    if kind == "confident":
        x += 8 * torch.nn.functional.one_hot(y, C).movedim(-1, 1)
    return x.to(DEVICE).requires_grad_(True), y.to(DEVICE)


def runners(per_image: bool = True) -> dict:
    out = {}
    for b in [b for b in backends.available(DEVICE) if b != "torch"] + ["torch"]:
        out[b] = (lambda b: lambda x, y: segfast.lovasz_softmax_loss(x, y, per_image=per_image, backend=b))(b)
    out["reference"] = lambda x, y: ref.lovasz_softmax(x, y, per_image=per_image, dtype=torch.float32)
    smp = load_smp_losses()
    if smp is not None:
        out["smp"] = smp.LovaszLoss("multiclass", per_image=per_image)
    return out


DEFAULT = backends.default_backend(DEVICE)


@functools.lru_cache(maxsize=None)
def median_ms(name: str, kind: str = "random", per_image: bool = True) -> float:
    x, y = make_inputs(kind)
    times = sb.time_fn(sb.fwd_bwd(runners(per_image)[name], x, y), DEVICE, repeat=ROUNDS, warmup=1)
    return 1e3 * sorted(times)[len(times) // 2]


def kernel_bytes() -> int:
    N, C, H, W = SHAPE
    return 2 * N * C * H * W * 4 + N * H * W * 8


@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("name", list(runners()))
def test_lovasz_softmax_fwd_bwd(benchmark, name, kind, per_image):
    benchmark.group = f"lovasz_softmax-per_image={per_image}-{'x'.join(map(str, SHAPE))}-{kind}"
    x, y = make_inputs(kind)
    benchmark.pedantic(sb.fwd_bwd(runners(per_image)[name], x, y), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ms = 1e3 * benchmark.stats.stats.median
    mine = median_ms(name, kind, per_image)  # the speed-ups compare medians measured alike for every runner
    info = dict(device=str(DEVICE), runner=name, inputs=kind, per_image=per_image, median_ms=ms,
                gbps=kernel_bytes() / (ms * 1e-3) / 1e9,
                speedup_vs_reference=median_ms("reference", kind, per_image) / mine)
    if "smp" in runners():
        info["speedup_vs_smp"] = median_ms("smp", kind, per_image) / mine
    benchmark.extra_info.update(info)


@pytest.mark.skipif(DEVICE.type != "cpu" or QUICK, reason="CPU speed target")
def test_target_cpu():
    """segfast (default backend) >= 3x smp's LovaszLoss (multiclass, per_image) on
    [8, 21, 128, 128], random logits, medians of 5 runs; prints every case."""
    if load_smp_losses() is None:
        pytest.skip("segmentation_models_pytorch is not installed")
    for per_image in (True, False):
        for kind in INPUTS:
            smp = median_ms("smp", kind, per_image)
            line = ", ".join(f"{b} {median_ms(b, kind, per_image):.1f} ms ({smp / median_ms(b, kind, per_image):.1f}x)"
                             for b in (DEFAULT, "torch") if b in runners())
            print(f"\nlovasz_softmax per_image={per_image} {kind} {SHAPE}: smp {smp:.1f} ms, {line}")
    seg, smp = median_ms(DEFAULT), median_ms("smp")  # random logits, per image
    assert smp / seg >= 3.0, (seg, smp)
