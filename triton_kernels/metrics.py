"""Triton kernel of the metrics family: the segmentation confusion matrix
read straight from the logits.

Installed as ``segfast.triton_kernels.metrics``. Imports only triton, torch
and the standard library, and imports cleanly without a GPU. Rules:
segfast/metrics/segmentation.py. Grid (pixel block, image): a program takes
BLOCK pixels, sweeps the C class rows keeping the running max and its index
in float32 (float64 for float64 logits; the first maximum wins, a NaN counts as the
maximum, as torch.argmax), then bins ``target * C + argmax`` (slot C*C:
targets outside [0, C); slot C*C+1: ignored pixels) into a per-program
histogram (``tl.histogram`` over a power-of-two bin count; one global
``tl.atomic_add`` per bin) or, for many classes, one global atomic per
pixel. Verified in the Triton interpreter; GPU tuning (BLOCK, warps) is
untested on hardware.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
HIST_MAX_BINS = 4096  # above this, per-pixel atomics instead of a program histogram


@triton.jit
def _confusion_kernel(x_ptr, t_ptr, hist_ptr, S, C, sN, sC, sS, tsN, tsS, ignore,
                      HAS_IGNORE: tl.constexpr, NBINS: tl.constexpr, USE_HIST: tl.constexpr,
                      F64: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    inb = offs < S
    xb = x_ptr + n * sN + offs * sS
    best = tl.load(xb, mask=inb, other=0)
    if not F64:  # fp16 / bf16 widen exactly: the order (and the first maximum) is kept
        best = best.to(tl.float32)
    idx = tl.zeros([BLOCK], dtype=tl.int64)
    for c in range(1, C):
        v = tl.load(xb + c * sC, mask=inb, other=0)
        if not F64:
            v = v.to(tl.float32)
        up = (v > best) | ((v != v) & (best == best))
        best = tl.where(up, v, best)
        idx = tl.where(up, c, idx)
    y = tl.load(t_ptr + n * tsN + offs * tsS, mask=inb, other=0).to(tl.int64)
    valid = inb
    if HAS_IGNORE:
        valid = valid & (y != ignore)
    bad = valid & ((y < 0) | (y >= C))
    good = valid & (y >= 0) & (y < C)
    cc = C * C
    b = tl.where(good, y * C + idx, tl.where(bad, cc, cc + 1))
    if USE_HIST:
        h = tl.histogram(b.to(tl.int32), NBINS)
        r = tl.arange(0, NBINS)
        # relaxed: the sums are read after the kernel ends; no fence, and RED where unused
        tl.atomic_add(hist_ptr + r, h, mask=(r <= cc) & (h > 0), sem="relaxed")
    else:
        tl.atomic_add(hist_ptr + b, tl.full([BLOCK], 1, tl.int32), mask=good | bad, sem="relaxed")


def confusion_logits(x: torch.Tensor, t: torch.Tensor, C: int, ignore_index) -> torch.Tensor:
    """x [N, C, S] (any strides), t [N, S] integer -> int32 [C*C + 1] counts."""
    N, _, S = x.shape
    nbins = triton.next_power_of_2(C * C + 2)
    use_hist = nbins <= HIST_MAX_BINS
    hist = torch.zeros(nbins if use_hist else C * C + 2, dtype=torch.int32, device=x.device)
    if N and S:
        grid = (triton.cdiv(S, BLOCK), N)
        _confusion_kernel[grid](x, t, hist, S, C, x.stride(0), x.stride(1), x.stride(2), t.stride(0), t.stride(1),
                                0 if ignore_index is None else int(ignore_index),
                                HAS_IGNORE=ignore_index is not None, NBINS=nbins, USE_HIST=use_hist,
                                F64=x.dtype == torch.float64, BLOCK=BLOCK)
    return hist[: C * C + 1]
