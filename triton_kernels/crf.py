"""Triton kernels of the dense CRF iterations (segfast/ops/crf.py drives them).

The lattices of the whole batch are built once with torch (sort/unique of the
packed integer keys, segfast/reference/crf.py); they are plain tensors: per
pixel the d+1 lattice points ``off`` and weights, per point its two blur
neighbours along each direction. An iteration is then, per pairwise kernel,
splat (atomic adds of w·Q into the [M+1, C] grid, row M the always-zero
"missing neighbour"), d+1 blurs, and one fused pass per pixel that slices
every kernel's grid, adds the unary and applies the softmax. Q is [P, C]
(pixels of the batch, labels contiguous), float32.

Tiles (``blocks``): labels in tiles of BLOCK_C (a power of two up to 32,
chosen to pad C least: 21 labels are 3 tiles of 8), pixels in blocks of
BLOCK_P = TILE // BLOCK_C (at most MAX_BLOCK_P), so a program holds at most
TILE values per tensor whatever C is (no spills at any C). The splat and
blur run one program per (pixel block, label tile); the update loops over
the label tiles: with more than one, a first pass writes the logits into q
and keeps a running max and sum (online softmax), a second normalises them
in place (the same block rereads what it wrote, from L2). Checked without a
GPU (segfast/gpucheck/triton_aot: no spills, no fences); not yet timed on
one: whether the tiled update beats one wide tile at C = 21.

The splat's atomic adds make the float rounding order nondeterministic (run
to run differences ~1e-7); they are relaxed (plain reductions, no fence): the
sums are read only after the kernel ends.
"""

from __future__ import annotations

import triton
import triton.language as tl

TILE = 1024  # values per program and tensor (BLOCK_P x BLOCK_C)
MAX_BLOCK_C = 32
MAX_BLOCK_P = 256  # few labels: more pixels per program would only add gathers in flight per thread


def blocks(C: int) -> tuple:
    """(BLOCK_P, BLOCK_C) for C labels: the label tile that pads C least (ties: the larger
    tile, fewer loop trips), from next_power_of_2(C) when that is at most 32, else 32, 16, 8."""
    small = triton.next_power_of_2(max(C, 1))
    cands = [small] if small <= MAX_BLOCK_C else [MAX_BLOCK_C, 16, 8]
    if small > 8:
        cands += [b for b in (16, 8) if b < small]
    bc = min(cands, key=lambda b: (triton.cdiv(C, b) * b, -b))
    return min(MAX_BLOCK_P, TILE // bc), bc


@triton.jit
def crf_splat_kernel(q_ptr, off_ptr, w_ptr, grid_ptr, P, C, D1: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """grid[off[i, r], c] += w[i, r] * q[i, c] for one block of pixels and one tile of labels."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = rows < P
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = pm[:, None] & (cs[None, :] < C)
    q = tl.load(q_ptr + rows[:, None] * C + cs[None, :], mask=mask, other=0.0)
    for r in tl.static_range(D1):
        o = tl.load(off_ptr + rows * D1 + r, mask=pm, other=0).to(tl.int64)
        w = tl.load(w_ptr + rows * D1 + r, mask=pm, other=0.0)
        tl.atomic_add(grid_ptr + o[:, None] * C + cs[None, :], w[:, None] * q, mask=mask, sem="relaxed")


@triton.jit
def crf_blur_kernel(src_ptr, dst_ptr, nb_ptr, M, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dst[p] = src[p] + (src[n1(p)] + src[n2(p)]) / 2 for one block of points and one tile of labels."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = rows < M
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
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
def _logits(u_ptr, extra_ptr, off1_ptr, w1_ptr, grid1_ptr, off2_ptr, w2_ptr, grid2_ptr, rows, pm, cs, C,
            D1A: tl.constexpr, D1B: tl.constexpr, HAS1: tl.constexpr, HAS2: tl.constexpr,
            HAS_EXTRA: tl.constexpr):
    """-u + Σ_k slice_k + extra for one tile: -inf in the lanes past C."""
    cm = cs[None, :] < C
    mask = pm[:, None] & cm
    m = -tl.load(u_ptr + rows[:, None] * C + cs[None, :], mask=mask, other=0.0)
    if HAS1:
        m = _slice_add(m, rows, pm, cs, mask, C, off1_ptr, w1_ptr, grid1_ptr, D1A)
    if HAS2:
        m = _slice_add(m, rows, pm, cs, mask, C, off2_ptr, w2_ptr, grid2_ptr, D1B)
    if HAS_EXTRA:
        m += tl.load(extra_ptr + rows[:, None] * C + cs[None, :], mask=mask, other=0.0)
    return tl.where(cm, m, float("-inf"))


@triton.jit
def crf_update_kernel(u_ptr, q_ptr, extra_ptr, off1_ptr, w1_ptr, grid1_ptr, off2_ptr, w2_ptr, grid2_ptr, P, C,
                      D1A: tl.constexpr, D1B: tl.constexpr, HAS1: tl.constexpr, HAS2: tl.constexpr,
                      HAS_EXTRA: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
                      ONE_TILE: tl.constexpr):
    """q = softmax(-u + Σ_k slice_k + extra) over the C labels, one block of pixels.

    The slice weights already hold the Potts weight, the slice factor and the
    normalisation; ``extra`` (optional [P, C]) carries the messages the kernel
    does not fuse (matrix compatibilities, the self-message removal).
    ONE_TILE: C <= BLOCK_C (one pass); else the labels in tiles, two passes."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = rows < P
    cs = tl.arange(0, BLOCK_C)
    if ONE_TILE:
        m = _logits(u_ptr, extra_ptr, off1_ptr, w1_ptr, grid1_ptr, off2_ptr, w2_ptr, grid2_ptr, rows, pm, cs, C,
                    D1A, D1B, HAS1, HAS2, HAS_EXTRA)
        e = tl.exp(m - tl.max(m, axis=1)[:, None])  # exp(-inf) = 0 in the padding
        q = e / tl.sum(e, axis=1)[:, None]
        tl.store(q_ptr + rows[:, None] * C + cs[None, :], q, mask=pm[:, None] & (cs[None, :] < C))
    else:
        mx = tl.full((BLOCK_P,), float("-inf"), tl.float32)
        s = tl.zeros((BLOCK_P,), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cs
            m = _logits(u_ptr, extra_ptr, off1_ptr, w1_ptr, grid1_ptr, off2_ptr, w2_ptr, grid2_ptr, rows, pm, c,
                        C, D1A, D1B, HAS1, HAS2, HAS_EXTRA)
            nx = tl.maximum(mx, tl.max(m, axis=1))
            s = s * tl.exp(mx - nx) + tl.sum(tl.exp(m - nx[:, None]), axis=1)
            mx = nx
            tl.store(q_ptr + rows[:, None] * C + c[None, :], m, mask=pm[:, None] & (c[None, :] < C))
        tl.debug_barrier()  # the logits written above are visible to the whole block
        inv = 1.0 / s
        for c0 in range(0, C, BLOCK_C):
            c = c0 + cs
            mask = pm[:, None] & (c[None, :] < C)
            m = tl.load(q_ptr + rows[:, None] * C + c[None, :], mask=mask, other=0.0)
            tl.store(q_ptr + rows[:, None] * C + c[None, :], tl.exp(m - mx[:, None]) * inv[:, None], mask=mask)
