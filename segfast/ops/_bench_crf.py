"""segfast-bench stages of the dense CRF (collected through
segfast/_families.py): inference (no backward), 21 labels, 5 iterations,
the default kernels, on a natural-looking image (smooth background,
flat-coloured shapes with edges, mild noise) with noisy unaries; times
include building the lattices. Also one uniform-noise image, the bilateral
kernel's hard case. Peer: pydensecrf, one image at a time (CPU only)."""

from __future__ import annotations

import statistics

import torch

from .. import backends
from .. import bench as sb
from . import crf


CRF_LABELS, CRF_ITERATIONS = 21, 5


def crf_inputs(B: int, H: int, W: int, device, C: int = CRF_LABELS, seed: int = 0):
    """-> (unary energies [B, C, H, W] float32, image [B, 3, H, W] uint8, ground truth [B, H, W])."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    imgs, gts = [], []
    for _ in range(B):
        coarse = torch.rand((1, 3, 4, 4), generator=g)
        img = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bicubic", align_corners=False)[0]
        img = img.clamp(0, 1) * 120 + 60
        gt = torch.zeros((H, W), dtype=torch.long)
        for c in range(1, min(C, 12)):
            cy, cx = float(torch.rand((), generator=g)) * H, float(torch.rand((), generator=g)) * W
            r = (0.05 + 0.12 * float(torch.rand((), generator=g))) * min(H, W)
            inside = ((ys - cy) ** 2 + (xs - cx) ** 2 < r * r) if c % 2 else (
                ((ys - cy).abs() < r) & ((xs - cx).abs() < 1.4 * r))
            img[:, inside] = (torch.rand(3, generator=g) * 255).view(3, 1)
            gt[inside] = c
        imgs.append((img + 6 * torch.randn((3, H, W), generator=g)).round().clamp(0, 255).to(torch.uint8))
        gts.append(gt)
    gt = torch.stack(gts)
    logits = 1.0 * torch.nn.functional.one_hot(gt, C).permute(0, 3, 1, 2).float()
    logits += 1.2 * torch.randn(logits.shape, generator=g)
    unary = -torch.log_softmax(logits, 1)
    return unary.to(device), torch.stack(imgs).to(device), gt.to(device)


def pydensecrf_loop():
    """pydensecrf over a batch, one image at a time (None if not installed)."""
    try:
        import numpy as np
        import pydensecrf.densecrf as dcrf
    except ImportError:
        return None

    def run(unary, image):
        B, C, H, W = unary.shape
        out = []
        for b in range(B):
            d = dcrf.DenseCRF2D(W, H, C)
            d.setUnaryEnergy(np.ascontiguousarray(unary[b].reshape(C, -1).cpu().numpy()))
            d.addPairwiseGaussian(sxy=3, compat=3)
            d.addPairwiseBilateral(sxy=80, srgb=13, compat=10,
                                   rgbim=np.ascontiguousarray(image[b].permute(1, 2, 0).cpu().numpy()))
            out.append(np.array(d.inference(CRF_ITERATIONS)))
        return out
    return run


def crf_runners(device: torch.device) -> dict:
    out = {}
    for b in backends.available(device):
        if b in ("cpu", "cuda", "torch"):
            out[b] = (lambda b: lambda u, im: crf.dense_crf(u, im, iterations=CRF_ITERATIONS, backend=b))(b)
    peer = pydensecrf_loop() if device.type == "cpu" else None
    if peer is not None:
        out["pydensecrf"] = peer
    return out


def crf_cases(device: torch.device, quick: bool = False) -> list:
    """(B, H, W) per row: one image and a batch (4 on CPU, 8 on GPU) of 512 x 512."""
    if quick:
        return [(1, 128, 128)]
    return [(1, 512, 512), (8 if device.type == "cuda" else 4, 512, 512)]


def measure_crf_case(device: torch.device, B: int, H: int, W: int, repeat: int = 5) -> list[dict]:
    """dense_crf rows of one (B, H, W) case: segfast's backends and pydensecrf. The
    eager torch backend (seconds per image) is timed on a batch in one call, with
    no warmup call (crf_cases runs one image first), so that a batch's rows have
    their ratio to it too."""
    u, im, _ = crf_inputs(B, H, W, device)
    rows = []
    for name, fn in crf_runners(device).items():
        if name == "torch":
            times = sb.time_fn(lambda: fn(u, im), device, repeat=2 if B == 1 else 1, warmup=1,
                            first=0.0 if B > 1 else None)
        else:
            times = sb.time_fn(lambda: fn(u, im), device, repeat=repeat, warmup=1)
        rows.append(dict(op="dense_crf", shape=[B, CRF_LABELS, H, W], dtype="float32", labels="-",
                         backend=name, device=str(device), median_ms=1e3 * statistics.median(times),
                         iqr_ms=sb.iqr_ms(times), per_image_ms=1e3 * statistics.median(times) / B,
                         logits_mb=u.numel() * 4 / 2**20, peak_extra_mb=None, gbps=None,
                         speedup_vs_monai=None, speedup_vs_smp=None))
    base = {r["backend"]: r["median_ms"] for r in rows}
    for r in rows:
        r["speedup_vs_reference"] = base["torch"] / r["median_ms"] if "torch" in base else None
        r["speedup_vs_pydensecrf"] = base["pydensecrf"] / r["median_ms"] if "pydensecrf" in base else None
    return rows


def measure_crf(device: torch.device, quick: bool = False, repeat: int = 5) -> list[dict]:
    """dense_crf rows of every case of crf_cases."""
    return [r for B, H, W in crf_cases(device, quick) for r in measure_crf_case(device, B, H, W, repeat)]



def crf_noise_inputs(B: int, H: int, W: int, device, C: int = 2, seed: int = 0):
    """-> (unary energies [B, C, H, W] float32, uniform-noise RGB image [B, 3, H, W] uint8): the
    hard case of the bilateral kernel, where nearly every pixel is a lattice point of its own."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (B, 3, H, W), generator=g, dtype=torch.uint8)
    unary = -torch.log_softmax(torch.randn((B, C, H, W), generator=g), 1)
    return unary.to(device), image.to(device)


def measure_crf_noise(device: torch.device, quick: bool = False, repeat: int = 3) -> list[dict]:
    """dense_crf(noise) rows: one uniform-noise 512 x 512 image (128 x 128 with quick), 2 labels;
    the cpu backend against pydensecrf, called in turns (one call of each per round)."""
    S = 128 if quick else 512
    u, im = crf_noise_inputs(1, S, S, device)
    run = crf_runners(device)
    run.pop("torch", None)  # the eager lattice: seconds per image
    times = sb.interleaved(run, lambda fn: fn(u, im), device, repeat, min_time=0.0)
    rows = [dict(op="dense_crf(noise)", shape=list(u.shape), dtype="float32", labels="-", backend=name,
                 device=str(device), median_ms=1e3 * statistics.median(t), iqr_ms=sb.iqr_ms(t),
                 per_image_ms=1e3 * statistics.median(t), logits_mb=u.numel() * 4 / 2**20, peak_extra_mb=None,
                 gbps=None, speedup_vs_monai=None, speedup_vs_smp=None, speedup_vs_reference=None)
            for name, t in times.items()]
    peer = times.get("pydensecrf")
    for r in rows:
        r["speedup_vs_pydensecrf"] = statistics.median(peer) / (r["median_ms"] * 1e-3) if peer else None
    return rows


def stages(device: torch.device, args) -> list:
    """A stage per case of crf_cases, then the noise image."""
    out = [(f"dense_crf[{B}x{CRF_LABELS}x{H}x{W}]", (lambda B=B, H=H, W=W: measure_crf_case(device, B, H, W)))
           for B, H, W in crf_cases(device, args.quick)]
    return out + [("dense_crf(noise)", lambda: measure_crf_noise(device, quick=args.quick))]
