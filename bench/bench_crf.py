"""pytest-benchmark suite of the dense CRF: 512 x 512 images, 21 labels, 5
mean-field iterations, the default kernels (Gaussian sxy=3 compat=3, bilateral
sxy=80 srgb=13 compat=10), a natural-looking image (smooth background,
flat-coloured shapes with edges, mild noise) and noisy unaries
(segfast/ops/_bench_crf.py crf_inputs); times include building the lattices. Also one
uniform-noise image with 2 and 21 labels (crf_noise_inputs),
the bilateral kernel's hard case (its lattice has about 1.5 points per
pixel). Runners: segfast's backends usable here and, on CPU, pydensecrf
looping over the batch. SEGFAST_BENCH_QUICK=1: 128 x 128.

    pytest bench/bench_crf.py --benchmark-only --benchmark-json=bench.json

Each row's extra_info has the median per-image time and the speed-up over
pydensecrf (medians measured in the same process). The speed targets are
the plain tests at the end: CPU (2 cores) >= 3x pydensecrf for one image and
per image for a batch of 4; GPU <= 10 ms per image at batch 8.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

import segfast
from segfast import bench as sb
from segfast.ops import _bench_crf as cb

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUICK = os.environ.get("SEGFAST_BENCH_QUICK", "0") not in ("", "0")
SIZE = 128 if QUICK else 512
BATCHES = (1, 8) if DEVICE.type == "cuda" else (1, 4)
ROUNDS = 3 if DEVICE.type == "cpu" else 10


def runners() -> dict:
    run = cb.crf_runners(DEVICE)
    run.pop("torch", None)  # the eager lattice: seconds per image, tested for parity, not timed here
    return run


@functools.lru_cache(maxsize=None)
def inputs(B: int):
    return cb.crf_inputs(B, SIZE, SIZE, DEVICE)


@functools.lru_cache(maxsize=None)
def median_ms(name: str, B: int) -> float:
    u, im, _ = inputs(B)
    times = sb.time_fn(lambda: runners()[name](u, im), DEVICE, repeat=ROUNDS, warmup=1)
    return 1e3 * sorted(times)[len(times) // 2]


@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("name", list(runners()))
def test_dense_crf(benchmark, name, B):
    benchmark.group = f"dense_crf-{B}x{cb.CRF_LABELS}x{SIZE}x{SIZE}-it{cb.CRF_ITERATIONS}"
    u, im, _ = inputs(B)
    fn = runners()[name]
    benchmark.pedantic(lambda: fn(u, im), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    ms = 1e3 * benchmark.stats.stats.median
    info = dict(device=str(DEVICE), runner=name, batch=B, median_ms=ms, per_image_ms=ms / B)
    if "pydensecrf" in runners():
        info["speedup_vs_pydensecrf"] = median_ms("pydensecrf", B) / median_ms(name, B)
    benchmark.extra_info.update(info)


NOISE_LABELS = (2, 21)


@functools.lru_cache(maxsize=None)
def noise_median_ms(name: str, C: int) -> float:
    u, im = cb.crf_noise_inputs(1, SIZE, SIZE, DEVICE, C=C)
    times = sb.time_fn(lambda: runners()[name](u, im), DEVICE, repeat=ROUNDS, warmup=1)
    return 1e3 * sorted(times)[len(times) // 2]


@pytest.mark.parametrize("C", NOISE_LABELS)
@pytest.mark.parametrize("name", list(runners()))
def test_dense_crf_noise(benchmark, name, C):
    """The hard case of the bilateral kernel: a uniform-noise image (nearly every pixel
    a lattice point of its own), 2 or 21 labels (crf_noise_inputs)."""
    benchmark.group = f"dense_crf-noise-1x{C}x{SIZE}x{SIZE}-it{cb.CRF_ITERATIONS}"
    u, im = cb.crf_noise_inputs(1, SIZE, SIZE, DEVICE, C=C)
    fn = runners()[name]
    benchmark.pedantic(lambda: fn(u, im), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    info = dict(device=str(DEVICE), runner=name, batch=1, median_ms=1e3 * benchmark.stats.stats.median)
    if "pydensecrf" in runners():
        info["speedup_vs_pydensecrf"] = noise_median_ms("pydensecrf", C) / noise_median_ms(name, C)
    benchmark.extra_info.update(info)


def test_crf_improves_on_the_unary():
    """The benchmark's inputs make sense: the CRF fixes most of the noisy unary's errors."""
    u, im, gt = cb.crf_inputs(1, 96, 96, DEVICE)
    q = segfast.dense_crf(u, im)
    assert (q.argmax(1) == gt).float().mean() > ((-u).argmax(1) == gt).float().mean() + 0.2


@pytest.mark.skipif(DEVICE.type != "cpu" or QUICK, reason="CPU speed target")
def test_target_cpu():
    """segfast cpu >= 3x pydensecrf: one 512 x 512 image, and per image for a batch of 4 (pydensecrf loops)."""
    if "pydensecrf" not in runners():
        pytest.skip("pydensecrf is not installed (pip install pydensecrf2)")
    for B in BATCHES:
        seg, peer = median_ms("cpu", B), median_ms("pydensecrf", B)
        print(f"\ndense_crf B={B} {SIZE}x{SIZE}x{cb.CRF_LABELS}: segfast {seg / B:.0f} ms/image, "
              f"pydensecrf {peer / B:.0f} ms/image, speed-up {peer / seg:.2f}x ({torch.get_num_threads()} threads)")
    for B in BATCHES:
        assert median_ms("pydensecrf", B) / median_ms("cpu", B) >= 3.0, B


@pytest.mark.skipif(DEVICE.type != "cuda" or QUICK, reason="GPU speed target")
def test_target_gpu():
    """<= 10 ms per 512 x 512 image at batch 8 (H100/H200)."""
    name = "cuda" if "cuda" in runners() else next(iter(runners()))
    per_image = median_ms(name, 8) / 8
    print(f"\ndense_crf B=8 {SIZE}x{SIZE}x{cb.CRF_LABELS} on {torch.cuda.get_device_name()}: {per_image:.2f} ms/image")
    assert per_image <= 10.0
