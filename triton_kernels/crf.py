"""Triton kernels of the dense CRF iterations (segfast/ops/crf.py drives them).

The lattices of the whole batch are built once with torch (sort/unique of the
packed integer keys, segfast/reference/crf.py); they are plain tensors: per
pixel the d+1 lattice points ``off`` and weights, per point its two blur
neighbours along each direction. An iteration is then, per pairwise kernel,
splat (atomic adds of w·Q into the [M+1, C] grid, row M the always-zero
"missing neighbour"), d+1 blurs, and one fused pass per pixel that slices
every kernel's grid, adds the unary and applies the softmax. Q is [P, C]
(pixels of the batch, labels contiguous), float32.

The splat's atomic adds make the float rounding order nondeterministic (run
to run differences ~1e-7).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def crf_splat_kernel(q_ptr, off_ptr, w_ptr, grid_ptr, P, C, D1: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """grid[off[i, r], c] += w[i, r] * q[i, c] for the pixels of one block."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = rows < P
    cs = tl.arange(0, BLOCK_C)
    mask = pm[:, None] & (cs[None, :] < C)
    q = tl.load(q_ptr + rows[:, None] * C + cs[None, :], mask=mask, other=0.0)
    for r in tl.static_range(D1):
        o = tl.load(off_ptr + rows * D1 + r, mask=pm, other=0).to(tl.int64)
        w = tl.load(w_ptr + rows * D1 + r, mask=pm, other=0.0)
        # relaxed: the sums are read after the kernel ends; no fence, and RED where unused
        tl.atomic_add(grid_ptr + o[:, None] * C + cs[None, :], w[:, None] * q, mask=mask, sem="relaxed")


@triton.jit
def crf_blur_kernel(src_ptr, dst_ptr, nb_ptr, M, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dst[p] = src[p] + (src[n1(p)] + src[n2(p)]) / 2 for the points of one block."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = rows < M
    cs = tl.arange(0, BLOCK_C)
    mask = pm[:, None] & (cs[None, :] < C)
    n1 = tl.load(nb_ptr + rows * 2, mask=pm, other=0).to(tl.int64)
    n2 = tl.load(nb_ptr + rows * 2 + 1, mask=pm, other=0).to(tl.int64)
    v = tl.load(src_ptr + rows[:, None] * C + cs[None, :], mask=mask, other=0.0)
    a = tl.load(src_ptr + n1[:, None] * C + cs[None, :], mask=mask, other=0.0)
    b = tl.load(src_ptr + n2[:, None] * C + cs[None, :], mask=mask, other=0.0)
    tl.store(dst_ptr + rows[:, None] * C + cs[None, :], v + 0.5 * (a + b), mask=mask)


@triton.jit
def _slice_add(m, rows, pm, cs, mask, C, off_ptr, w_ptr, grid_ptr, D1: tl.constexpr):
    for r in tl.static_range(D1):
        o = tl.load(off_ptr + rows * D1 + r, mask=pm, other=0).to(tl.int64)
        w = tl.load(w_ptr + rows * D1 + r, mask=pm, other=0.0)
        m += w[:, None] * tl.load(grid_ptr + o[:, None] * C + cs[None, :], mask=mask, other=0.0)
    return m


@triton.jit
def crf_update_kernel(u_ptr, q_ptr, extra_ptr, off1_ptr, w1_ptr, grid1_ptr, off2_ptr, w2_ptr, grid2_ptr, P, C,
                      D1A: tl.constexpr, D1B: tl.constexpr, HAS1: tl.constexpr, HAS2: tl.constexpr,
                      HAS_EXTRA: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """q = softmax(-u + Σ_k slice_k + extra) over the C labels, one block of pixels.

    The slice weights already hold the Potts weight, the slice factor and the
    normalisation; ``extra`` (optional [P, C]) carries the messages the kernel
    does not fuse (matrix compatibilities, the self-message removal)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = rows < P
    cs = tl.arange(0, BLOCK_C)
    cm = cs[None, :] < C
    mask = pm[:, None] & cm
    m = -tl.load(u_ptr + rows[:, None] * C + cs[None, :], mask=mask, other=0.0)
    if HAS1:
        m = _slice_add(m, rows, pm, cs, mask, C, off1_ptr, w1_ptr, grid1_ptr, D1A)
    if HAS2:
        m = _slice_add(m, rows, pm, cs, mask, C, off2_ptr, w2_ptr, grid2_ptr, D1B)
    if HAS_EXTRA:
        m += tl.load(extra_ptr + rows[:, None] * C + cs[None, :], mask=mask, other=0.0)
    m = tl.where(cm, m, float("-inf"))
    mx = tl.max(m, axis=1)
    e = tl.exp(m - mx[:, None])
    e = tl.where(cm, e, 0.0)
    q = e / tl.sum(e, axis=1)[:, None]
    tl.store(q_ptr + rows[:, None] * C + cs[None, :], q, mask=mask)
