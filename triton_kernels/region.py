"""Triton kernels of the region family (Dice / IoU / Tversky ...).

Installed as ``segfast.triton_kernels.region``. Imports only triton, torch and
the standard library, and imports cleanly without a GPU.

Two streaming kernels, the same ABI as the C++ and CUDA backends:

* ``launch_stats`` writes per-chunk partial sums ``out[N, P, C, 7]`` (float32,
  contiguous) of the K=7 per-plane sums, in this order::

      I = sum v*p*t   P = sum v*p   T = sum v*t   V = sum v
      PP = sum v*p^2  TT = sum v*t^2  M = sum v*min(p, t)

  Chunk j of an image covers pixels [j*L, min((j+1)*L, S)), L = ceil(S/P).
  One program per (image, chunk); no atomics, so the result is deterministic.
  The caller reduces with ``out.sum(1)``. With a pixel term ``xent`` (softmax,
  class-index targets; 1 CE, 2 focal, 3 fused: csrc/common/region.h) two more
  sums S7, S8 follow: out is [N, P, C, 9] and g [N, C, 9], and the gradient
  gains v*(p_c*B - b_c), b_c the pixel term's dL/d(-log p_c) / v, B = sum_c b_c.

* ``launch_grad`` writes dLoss/dx (x's dtype, any strides) from
  g = dLoss/dStats [N, C, 7] (float32, contiguous):
  dL/dp_c = v_c * (g_I*t_c + g_P + 2*g_PP*p_c + g_M*h(p_c, t_c)),
  h = 1 if p < t, 0.5 if p == t, 0 if p > t; then through the activation.

Activation codes: 0 identity, 1 sigmoid, 2 softmax over C.

Two code paths per kernel, chosen by the constexpr SINGLE_C:

* one class tile (BLOCK_C = next power of two >= C): the grad kernel for
  C <= MAX_SINGLE_C, the stats kernel for C <= STATS_MAX_C. The stats
  kernel's tile is 5-d, [CR, NW, CL, PL, VEC] (see the kernel): 16-byte
  loads of logits and labels issued together at the top of the tile loop,
  the reductions over classes inside a warp, the sums over pixels
  accumulated per thread in registers and reduced across warps once after
  the loop, so the loop has no block barrier. Above MAX_SINGLE_C classes the
  tile is wide: all lanes of a warp over the classes (16 at BLOCK_C = 64),
  at most 8 class rows per thread, pixel vectors for at most 16 logits per
  thread (4 pixels up to 128 classes, 2 at 256). The grad kernel handles
  one [BLOCK_C, BLOCK_S] tile per program.
* larger C: loop over class chunks of BLOCK_C. The stats kernel (C >
  STATS_MAX_C) runs one-warp programs over [16, 16] tiles: per pixel tile, one
  online pass over the class chunks for what needs every class (softmax max
  and sum, their foreground part for the fused term, the argmax of the
  confusion option), then a pass that re-reads the tile's logits (16 * C *
  itemsize bytes, from L1/L2) and adds each chunk's sums into the program's
  own out row. The reductions over classes and pixels are registers and warp
  shuffles, and a class's running sums are read and written by the one lane
  that stores them, so its tile loop has no block barrier (the confusion
  option adds one: its per-pixel atomics change layout). The grad kernel
  with softmax needs a third pass for sum_k p_k a_k, over chunks of
  classes held in each thread (no barrier in its loops; see GRAD_LOOP_ELEMS).
  So large-C softmax reads x from DRAM once when the re-reads hit the cache,
  which holds for small BLOCK_S * C * itemsize per resident program.

With class-index targets the stats launcher also offers, from the same pass,
a bad-label flag and confusion counts (``launch_stats(flag=, confusion=)``);
without them the kernel has no code for either (constexpr HAS_FLAG / HAS_CONF).

Offsets are 64-bit (image index, class index, pixel index are cast to int64
before multiplying by strides).

GPU tuning left to do (untested on hardware; correctness verified in the
Triton interpreter, registers / spills / load widths / barriers in the
compiled code for sm_80 and sm_90): STATS_WARPS, STATS_CLASS_LANES,
STATS_STAGES and LOOP_STATS_STAGES (software pipelining, off), TILE /
num_warps of the grad kernel, the looped path's tile and LOOP_STATS_WAVES,
MAX_SINGLE_C, exp vs exp2, and an autotune key on (C, dtype, stride-1 axis).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import (blocks, chunk_bounds, chunk_len, chunks, load_labels, load_target_tile, load_tile,
                      target_args, wrap)

ACT_IDENTITY, ACT_SIGMOID, ACT_SOFTMAX = 0, 1, 2
K = 7

# Register tile (classes x pixels) of one program. Bandwidth-bound streaming:
# 2048 elements with 8 warps = 8 elements per thread per tile-shaped value.
TILE = 2048
# Largest C handled by a single class tile; above it the class loop is used.
MAX_SINGLE_C = 32
# Class-chunk size of the looped path (C > MAX_SINGLE_C).
LOOP_BLOCK_C = 16
GRAD_WARPS = 8
# Grad kernel, class loop (C > MAX_SINGLE_C): a [BLOCK_C, BLOCK_S] tile with
# the warps' lanes over pixel vectors of VEC = 16 bytes / the narrowest tile
# dtype (logits or dense targets; BLOCK_S = 32 * VEC * GRAD_LOOP_WARPS) and
# the classes of a chunk in each thread's registers, BLOCK_C =
# GRAD_LOOP_ELEMS / VEC of them (4 for float32, 2 for 16-bit, 1 for 8-bit
# targets), so the reductions over classes (softmax max and sum, sum_k p_k
# a_k) need no block barrier in the class loops. A pixel tile narrower than
# 32 * VEC * warps would put the second warp over the classes (Triton gives
# each thread VEC contiguous pixels of the narrowest dtype), the class
# reductions through shared memory, and spills into 16-bit configurations.
# 2-warp programs keep the grid at 4 per SM of an H100 at [8, C, 128, 128].
GRAD_LOOP_ELEMS = 16
GRAD_LOOP_WARPS = 2
# Stats kernel, single class tile: warps per program, lanes of a warp over the
# classes (the rest over pixels), and the stages of the tile loop's software
# pipeline (``tl.range(num_stages=)``). More than 1 compiles to cp.async into
# shared memory, which puts two block barriers per tile into the loop, copies
# int64 labels 8 bytes at a time and spills in the fused-loss kernel on sm_90;
# with 1 the loop has no barrier and loads 16 bytes per instruction, and the
# 4-warp programs (128 registers) leave 4 resident per SM to hide the latency.
STATS_WARPS = 4
STATS_CLASS_LANES = 8
STATS_THREAD_ELEMS = 16  # logits per thread in a single class tile (registers: 255 and spills at 32)
STATS_STAGES = 1
# Stats kernel, wide class tile (MAX_SINGLE_C < C <= STATS_MAX_C): the same
# 5-d register tile with more lanes of a warp over the classes (CL = 16 for
# BLOCK_C = 64, 32 above, so a thread holds BLOCK_C / CL <= 8 class rows) and
# pixel vectors short enough for STATS_THREAD_ELEMS logits per thread: 4 pixels
# up to 128 classes (one 16-byte load for float32), 2 at 256 (8 rows x 4 took
# 255 registers and spilled with the cross-entropy terms, float32 and 16-bit).
STATS_MAX_C = 256
# Stats kernel, looped class tile (C > STATS_MAX_C): one-warp programs (no
# block barrier in the tile loop, see the kernel) over [LOOP_STATS_BLOCK_C,
# LOOP_STATS_BLOCK_S] tiles: in float32 the lanes 8 over classes x 4 over
# 16-byte pixel vectors, 2 class rows per thread (16-bit logits: 16 x 2, one
# row). With 32 classes, or 32 pixels of 16-bit logits, Triton moves the sums
# reduced over pixels between lanes through shared memory, with barriers.
# LOOP_STATS_WAVES times as many programs per SM as the 4-warp tiles, and the
# stages of the tile loop's software pipeline (only the labels are loaded in
# that loop itself; the logits in its class loops).
LOOP_STATS_BLOCK_S = 16
LOOP_STATS_BLOCK_C = 16
LOOP_STATS_WAVES = 4
LOOP_STATS_STAGES = 1


# --------------------------------------------------------------------------
# device helpers
# --------------------------------------------------------------------------

@triton.jit
def _dldp(p, t, v, gI, gP, gPP, gM):
    """a = dL/dp (fp32 tile); g* are [BLOCK_C] vectors."""
    h = tl.where(p < t, 1.0, tl.where(p == t, 0.5, 0.0))
    return v * (gI[:, None] * t + gP[:, None] + 2.0 * gPP[:, None] * p + gM[:, None] * h)


@triton.jit
def _act(x, m, rl, ACT: tl.constexpr):
    """Probabilities of a logit tile; for softmax m and rl are the pixels'
    max and 1/sum(exp(x - m))."""
    if ACT == 2:
        p = tl.exp(x - m[None, :]) * rl[None, :]
    elif ACT == 1:
        p = tl.sigmoid(x)
    else:
        p = x
    return p


@triton.jit
def _focal_pow(om, e):
    """om^e for om >= 0 (0^0 = 1, as torch)."""
    return tl.where(om > 0, tl.exp(e * tl.log(tl.maximum(om, 1e-38))), tl.where(e == 0, 1.0, 0.0))


@triton.jit
def _dldp_tile(p, x, m, lls, mf, llsf, k, gamma, g_base, c64, cmask, t_ptr, n64, s64, stn, stc, sts, pvalid,
               lab, label_offset, ign_f, T_IS_LABEL: tl.constexpr, HAS_IGNORE: tl.constexpr,
               XK: tl.constexpr, KO: tl.constexpr):
    """(dL/dp, b) of one [BLOCK_C, BLOCK_S] class tile: targets and g read here.
    b = v*b_c, the pixel term's dL/d(-log p) (0 without XK): logsumexp = m + lls
    (focal), foreground logsumexp = mf + llsf and k = [y >= 1]*gS8_y (fused), all
    per pixel [BLOCK_S]; -log p = (m - x) + lls keeps x - m exact for huge logits."""
    t, vb = load_target_tile(t_ptr, n64, c64, s64, stn, stc, sts,
                             cmask[:, None] & pvalid[None, :],
                             T_IS_LABEL, HAS_IGNORE, lab, label_offset, ign_f)
    v = vb.to(tl.float32)
    gc = g_base + c64 * KO
    gI = tl.load(gc + 0, mask=cmask, other=0)
    gP = tl.load(gc + 1, mask=cmask, other=0)
    gPP = tl.load(gc + 4, mask=cmask, other=0)
    gM = tl.load(gc + 6, mask=cmask, other=0)
    if XK == 1:  # CE: gS8_c + [c == y] gS7_c
        g7 = tl.load(gc + 7, mask=cmask, other=0)
        g8 = tl.load(gc + 8, mask=cmask, other=0)
        b = v * (g8[:, None] + t * g7[:, None])
    elif XK == 2:  # focal: [c == y] gS7_y q(p_y), q = (1-p)^(γ-1) (1 - p + γ p (-log p)); 1 for γ = 0
        g7 = tl.load(gc + 7, mask=cmask, other=0)
        om = 1.0 - p
        q = _focal_pow(om, gamma - 1.0) * (om + gamma * p * ((m[None, :] - x) + lls[None, :]))
        q = tl.where(gamma == 0, 1.0, q)
        b = tl.where(t != 0, v * t * g7[:, None] * q, 0.0)  # q is NaN at a -inf logit (p = 0, -log p = inf)
    elif XK == 3:  # fused: [c == y] gS7_c + [c >= 1] k p_c / (1 - p_0)
        g7 = tl.load(gc + 7, mask=cmask, other=0)
        # classes past C (x = 0 there) could overflow exp: masked, or 0·inf makes NaN
        q = tl.where(((c64 >= 1) & cmask)[:, None], tl.exp((x - mf[None, :]) - llsf[None, :]), 0.0)
        b = v * (t * g7[:, None] + k[None, :] * q)
    else:
        b = tl.zeros_like(p)
    return _dldp(p, t, v, gI, gP, gPP, gM), b


@triton.jit
def _lse_fg(x_base, s64, smask, C, sxc, sxs, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """logsumexp over the classes 1..C-1 of a pixel block (the fused term),
    online, as (max, log of the sum of exp(x - max))."""
    m, rl = _softmax_max_rsum(x_base, s64, smask, C, sxc, sxs, BLOCK_C, BLOCK_S, 1)
    return m, -tl.log(rl)


@triton.jit
def _pixel_term_sums(x, p, t, v, c, m, lls, h, gamma, XK: tl.constexpr):
    """(S7, S8) elementwise contributions of a pixel term; -log p = (m - x) + lls
    in torch's order (logsumexp = m + lls); h = -log(1 - p_0) (fused). c (class
    index), m, lls and h come broadcastable to the tile's shape."""
    nl = (m - x) + lls
    # the label's class only: -log p of a masked (-inf) class is inf, and inf·0 is NaN
    nl_t = tl.where(t != 0, nl, 0.0)
    if XK == 1:
        s7 = nl_t * t * v
        s8 = tl.where(v != 0, nl, 0.0)
    elif XK == 2:  # no S8 term: the kernels leave it at 0 (a zeros tensor here would take
        # the default register layout and put layout conversions into the tile loop)
        s7 = _focal_pow(1.0 - p, gamma) * nl_t * t * v
        s8 = s7
    else:
        s7 = nl_t * t * v
        s8 = tl.where((c >= 1) & (t != 0), h * t * v, 0.0)
    return s7, s8


@triton.jit
def _softmax_max_rsum(x_base, s64, smask, C, sxc, sxs, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                      FIRST: tl.constexpr = 0):
    """Online pass over the classes FIRST..C-1 of a pixel block: (max, 1/sum(exp(x - max)))."""
    ar_c = tl.arange(0, BLOCK_C)
    m = tl.full([BLOCK_S], float("-inf"), tl.float32)
    lsum = tl.zeros([BLOCK_S], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c64 = c0 + ar_c.to(tl.int64)
        cmask = (c64 < C) & (c64 >= FIRST)
        x = load_tile(x_base, c64, s64, sxc, sxs, cmask[:, None] & smask[None, :])
        xm = tl.where(cmask[:, None], x, float("-inf"))
        m_new = tl.maximum(m, tl.max(xm, axis=0))
        mr = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: a sum of 0, not NaN
        lsum = lsum * tl.exp(m - mr) + tl.sum(tl.exp(xm - mr[None, :]), axis=0)
        m = m_new
    return m, 1.0 / lsum


@triton.jit
def _dx(p, a, dot, ACT: tl.constexpr):
    """dL/dx from dL/dp through the activation (dot = sum_k p_k a_k for softmax)."""
    if ACT == 2:
        d = p * (a - dot[None, :])
    elif ACT == 1:
        d = a * p * (1.0 - p)
    else:
        d = a
    return d


# --------------------------------------------------------------------------
# stats
# --------------------------------------------------------------------------

@triton.jit
def _label_flags(lab, pvalid, C, label_offset):
    """y = lab - label_offset and the per-pixel masks of a label tile: ok, a
    valid label of a counted class (y in [0, C)); bad, a valid label outside
    [0, C + label_offset) (labels below label_offset are classes without a
    channel, e.g. the background of a binary loss: not counted, not bad)."""
    y = lab - label_offset
    return y, pvalid & (y >= 0) & (y < C), pvalid & ((lab < 0) | (y >= C))


@triton.jit
def _first_argmax(x, cidx, cmask, AXIS: tl.constexpr, BIG: tl.constexpr):
    """(index, is-NaN) of torch.argmax over AXIS of x: the first NaN, else the
    first maximum; cidx is the class index broadcast to x's shape."""
    nan_i = tl.min(tl.where(cmask & (x != x), cidx, BIG), axis=AXIS)
    xm = tl.where(cmask, x, float("-inf"))
    mx = tl.max(xm, axis=AXIS)
    max_i = tl.min(tl.where(cmask & (xm == tl.expand_dims(mx, AXIS)), cidx, BIG), axis=AXIS)
    return tl.where(nan_i < BIG, nan_i, max_i), mx, nan_i < BIG


@triton.jit
def _bcast_c(a):
    """A per-pixel [NW, PL, VEC] value broadcast over the class axes of a 5-d stats tile."""
    return a[None, :, None, :, :]


@triton.jit
def _sum_px(a):
    """[CR, NW, CL, PL] per-thread sums -> [CR, CL] sums over the program's pixels."""
    return tl.sum(tl.sum(a, axis=3), axis=1)


@triton.jit
def _first_argmax5(x, c, cmask, BIG: tl.constexpr):
    """torch.argmax over the class axes (0, 2) of a 5-d stats tile: the first
    NaN, else the first maximum; c is the class index broadcast to x's shape."""
    nan_i = tl.min(tl.min(tl.where(cmask & (x != x), c, BIG), axis=2), axis=0)
    xm = tl.where(cmask, x, float("-inf"))
    mx = _bcast_c(tl.max(tl.max(xm, axis=2), axis=0))
    max_i = tl.min(tl.min(tl.where(cmask & (xm == mx), c, BIG), axis=2), axis=0)
    return tl.where(nan_i < BIG, nan_i, max_i)


@triton.jit
def _stats_targets(zero, mask, cmask, pvalid, lab, c, t_base, s, stc, sts, label_offset, ign_f,
                   T_IS_LABEL: tl.constexpr, HAS_IGNORE: tl.constexpr):
    """(t, v, valid) of a stats tile, selected from ``zero`` (0 in the logits'
    register layout, so t and v are computed in that layout too, not in the
    smaller label tile's, which would put a layout conversion through shared
    memory into the loop); c, lab, pvalid broadcast to the tile's shape."""
    if T_IS_LABEL:
        vb = cmask & pvalid
        t = tl.where((lab == c + label_offset) & vb, 1.0, zero)
    else:
        tv = tl.load(t_base + c * stc + s * sts, mask=mask, other=0).to(tl.float32)
        vb = mask
        if HAS_IGNORE:
            vb = vb & (tv != ign_f)
        t = tl.where(vb, tv, zero)
    return t, tl.where(vb, 1.0, zero), vb


@triton.jit
def _count_confusion(conf_ptr, y, pred, ok, cidx, C):
    """conf[y, pred] += 1 (relaxed atomics) where ok and pred != y; cidx is the
    class index of the tile, so each pixel's add is issued by the one lane
    that holds class pred."""
    off = ok & (pred != y) & (cidx == pred)
    tl.atomic_add(conf_ptr + y * C + cidx, tl.where(off, 1, 0).to(tl.int64), mask=off, sem="relaxed")


@triton.jit
def _region_stats_kernel(
    x_ptr, t_ptr, out_ptr, flag_ptr, conf_ptr,
    C, S, P, L,
    sxn, sxc, sxs,
    stn, stc, sts,
    label_offset, ign_i, ign_f,
    ACT: tl.constexpr, T_IS_LABEL: tl.constexpr, HAS_IGNORE: tl.constexpr,
    SINGLE_C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
    gamma,
    XK: tl.constexpr, KO: tl.constexpr,
    HAS_FLAG: tl.constexpr = False, HAS_CONF: tl.constexpr = False,
    NW: tl.constexpr = 1, CL: tl.constexpr = 1, VEC: tl.constexpr = 4, STAGES: tl.constexpr = 1,
):
    pid = tl.program_id(0).to(tl.int64)
    n64, start, end = chunk_bounds(pid, P, L, S)
    x_base = x_ptr + n64 * sxn
    row = out_ptr + pid * C * KO  # out[n, j] is row n*P + j of [N*P, C, KO]
    ar_c = tl.arange(0, BLOCK_C)
    ar_s = tl.arange(0, BLOCK_S)

    if SINGLE_C:
        # A tile is 5-d, [CR, NW, CL, PL, VEC]: class c = cr*CL + cl, pixel
        # s0 + (w*PL + pl)*VEC + i. Triton lays it out with the VEC contiguous
        # pixels in one thread (a 16-byte load), the CL x PL lanes of a warp over
        # (classes, pixel vectors), the NW warps over pixels and the CR class
        # rows in each thread's registers. So the reductions over classes
        # (softmax, argmax) stay inside a warp (registers and shuffles), the sums
        # over pixels accumulate per thread, and the only cross-warp reduction
        # runs once after the loop: no block barrier in the loop besides the one
        # of the software pipeline's shared-memory stages.
        CR: tl.constexpr = BLOCK_C // CL
        PL: tl.constexpr = 32 // CL
        c5 = (tl.arange(0, CR)[:, None, None, None, None] * CL
              + tl.arange(0, CL)[None, None, :, None, None]).to(tl.int64)
        cm5 = c5 < C
        # pixel offsets of a tile, [NW, PL, VEC]
        offs = ((tl.arange(0, NW)[:, None, None] * PL + tl.arange(0, PL)[None, :, None]) * VEC
                + tl.arange(0, VEC)[None, None, :])
        aI = tl.zeros([CR, NW, CL, PL], tl.float32)
        aP = tl.zeros([CR, NW, CL, PL], tl.float32)
        aT = tl.zeros([CR, NW, CL, PL], tl.float32)
        aV = tl.zeros([CR, NW, CL, PL], tl.float32)
        aPP = tl.zeros([CR, NW, CL, PL], tl.float32)
        aTT = tl.zeros([CR, NW, CL, PL], tl.float32)
        aM = tl.zeros([CR, NW, CL, PL], tl.float32)
        aCE = tl.zeros([CR, NW, CL, PL], tl.float32)
        aLP = tl.zeros([CR, NW, CL, PL], tl.float32)
        aD = tl.zeros([CR, NW, CL, PL], tl.int32)  # confusion diagonal
        aBad = tl.zeros([NW, CL, PL], tl.float32)  # bad labels, in the tile's layout
        for s0 in tl.range(start, end, BLOCK_S, num_stages=STAGES):
            s3 = s0 + offs.to(tl.int64)
            sm3 = s3 < end
            s5 = s3[None, :, None, :, :]
            mask = cm5 & sm3[None, :, None, :, :]
            # logits and labels are both loaded before any arithmetic
            x = tl.load(x_base + c5 * sxc + s5 * sxs, mask=mask, other=0).to(tl.float32)
            # the labels as a tile of the logits' shape (a class axis of stride 0:
            # the same label in every class lane and row), so that Triton gives
            # both loads one register layout. As the smaller [1, NW, 1, PL, VEC]
            # tile they got a layout of their own (one label per thread, lanes
            # over pixels), and the one-hot terms were converted through shared
            # memory, with barriers, on every tile.
            sl5 = s5 + c5 * 0  # (sl5 >= 0 below: true, the pixel mask in the same shape)
            lab5, pvalid5 = load_labels(t_ptr, n64, sl5, stn, sts, sm3[None, :, None, :, :] & (sl5 >= 0), T_IS_LABEL,
                                        HAS_IGNORE, ign_i)
            zero = tl.where(mask, 0.0, x)  # in x's register layout (see _stats_targets)
            t, v, vb = _stats_targets(zero, mask, cm5, pvalid5, lab5, c5, t_ptr + n64 * stn, s5, stc, sts,
                                      label_offset, ign_f, T_IS_LABEL, HAS_IGNORE)
            if ACT == 2:
                xm = tl.where(cm5, x, float("-inf"))
                m = _bcast_c(tl.max(tl.max(xm, axis=2), axis=0))
                e = tl.exp(xm - m)
                esum = _bcast_c(tl.sum(tl.sum(e, axis=2), axis=0))
                p = e * (1.0 / esum)
            elif ACT == 1:
                p = tl.sigmoid(x)
            else:
                p = x
            pv = p * v
            aI += tl.sum(pv * t, axis=4)
            aP += tl.sum(pv, axis=4)
            aT += tl.sum(t, axis=4)
            aV += tl.sum(v, axis=4)
            aPP += tl.sum(pv * p, axis=4)
            # one-hot labels: TT = T, and with p in [0, 1] (softmax, sigmoid) M = I
            # (min(p, 1) = p, min(p, 0) = 0): two fewer accumulators
            if not T_IS_LABEL:
                aTT += tl.sum(t * t, axis=4)
            if not (T_IS_LABEL and ACT != 0):
                aM += tl.sum(tl.minimum(p, t) * v, axis=4)
            if XK != 0:  # -log p = (m - x) + log(sum)
                lls = tl.log(esum)
                h = lls
                if XK == 3:  # -log(1 - p_0) = (m - mf) + (lls - llsf), lse over classes 1..C-1
                    xf = tl.where(cm5 & (c5 >= 1), x, float("-inf"))
                    mf = _bcast_c(tl.max(tl.max(xf, axis=2), axis=0))
                    mr = tl.where(mf == float("-inf"), 0.0, mf)  # no class 1..C-1: a sum of 0, not NaN
                    llsf = tl.log(_bcast_c(tl.sum(tl.sum(tl.exp(xf - mr), axis=2), axis=0)))
                    h = (m - mf) + (lls - llsf)
                s7, s8 = _pixel_term_sums(x, p, t, v, c5, m, lls, h, gamma, XK)
                aCE += tl.sum(tl.where(mask, s7, 0.0), axis=4)
                if XK != 2:
                    aLP += tl.sum(tl.where(mask, s8, 0.0), axis=4)
            if T_IS_LABEL:
                if HAS_FLAG or HAS_CONF:
                    y, ok, bad = _label_flags(lab5, pvalid5, C, label_offset)
                if HAS_FLAG:  # from the tile's layout: no second load of the labels in another
                    aBad = tl.maximum(aBad, tl.max(tl.max(tl.where(bad, 1.0, zero), axis=4), axis=0))
                if HAS_CONF:
                    pred = _bcast_c(_first_argmax5(x, c5, cm5, BLOCK_C))
                    aD += tl.sum(((t != 0) & (c5 == pred)).to(tl.int32), axis=4)
                    _count_confusion(conf_ptr, y, pred, ok, c5, C)
        c64 = (tl.arange(0, CR)[:, None] * CL + tl.arange(0, CL)[None, :]).to(tl.int64)
        cmask = c64 < C
        o = row + c64 * KO
        tl.store(o + 0, _sum_px(aI), mask=cmask)
        tl.store(o + 1, _sum_px(aP), mask=cmask)
        tl.store(o + 2, _sum_px(aT), mask=cmask)
        tl.store(o + 3, _sum_px(aV), mask=cmask)
        tl.store(o + 4, _sum_px(aPP), mask=cmask)
        tl.store(o + 5, _sum_px(aT if T_IS_LABEL else aTT), mask=cmask)
        tl.store(o + 6, _sum_px(aI if (T_IS_LABEL and ACT != 0) else aM), mask=cmask)
        if XK != 0:
            tl.store(o + 7, _sum_px(aCE), mask=cmask)
            tl.store(o + 8, _sum_px(aLP), mask=cmask)
        if HAS_FLAG:
            tl.store(flag_ptr, 1, mask=tl.max(tl.max(tl.max(aBad, axis=2), axis=1), axis=0) != 0)
        if HAS_CONF:
            d = _sum_px(aD).to(tl.int64)
            tl.atomic_add(conf_ptr + c64 * (C + 1), d, mask=cmask & (d != 0), sem="relaxed")
    else:
        # Class chunks (C > STATS_MAX_C): one-warp programs over [BLOCK_C, BLOCK_S]
        # tiles, VEC contiguous pixels per thread (one 16-byte load), the lanes over
        # classes and pixel vectors. Per pixel tile, pass 1 reads the classes once
        # for what needs all of them (softmax max and sum, their foreground part,
        # the argmax); pass 2 re-reads them (L1/L2) and adds each class's sums into
        # this program's out row. Reductions over classes and pixels are registers
        # and warp shuffles. A class's running sums are read and written by the one
        # lane that stores the reduced value (the same lane on every tile: its own
        # writes, in program order), so the tile loop has no block barrier.
        ar_c64 = ar_c.to(tl.int64)
        if start >= end:  # an empty chunk: zero partial sums
            for c0 in range(0, C, BLOCK_C):
                c64 = c0 + ar_c64
                for k in tl.static_range(KO):
                    tl.store(row + c64 * KO + k, tl.zeros([BLOCK_C], tl.float32), mask=c64 < C)
        nbad = 0.0
        for s0 in tl.range(start, end, BLOCK_S, num_stages=STAGES):
            s2 = (s0 + ar_s.to(tl.int64))[None, :]
            sm2 = s2 < end
            lab2, pvalid2 = load_labels(t_ptr, n64, s2, stn, sts, sm2, T_IS_LABEL, HAS_IGNORE, ign_i)
            m = tl.full([1, BLOCK_S], float("-inf"), tl.float32)
            lsum = tl.zeros([1, BLOCK_S], tl.float32)
            mf = tl.full([1, BLOCK_S], float("-inf"), tl.float32)
            lsf = tl.zeros([1, BLOCK_S], tl.float32)
            best = tl.full([1, BLOCK_S], float("-inf"), tl.float32)
            best_i = tl.zeros([1, BLOCK_S], tl.int64)
            nan_i = tl.full([1, BLOCK_S], -1, tl.int64)
            if ACT == 2 or HAS_CONF:
                for c0 in range(0, C, BLOCK_C):
                    c2 = (c0 + ar_c64)[:, None]
                    cm2 = c2 < C
                    x = tl.load(x_base + c2 * sxc + s2 * sxs, mask=cm2 & sm2, other=0).to(tl.float32)
                    if ACT == 2:
                        xm = tl.where(cm2, x, float("-inf"))
                        m_new = tl.maximum(m, tl.max(xm, axis=0, keep_dims=True))
                        mr = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: a sum of 0, not NaN
                        lsum = lsum * tl.exp(m - mr) + tl.sum(tl.exp(xm - mr), axis=0, keep_dims=True)
                        m = m_new
                        if XK == 3:  # the same over the classes 1..C-1
                            xf = tl.where(cm2 & (c2 >= 1), x, float("-inf"))
                            f_new = tl.maximum(mf, tl.max(xf, axis=0, keep_dims=True))
                            fr = tl.where(f_new == float("-inf"), 0.0, f_new)
                            lsf = lsf * tl.exp(mf - fr) + tl.sum(tl.exp(xf - fr), axis=0, keep_dims=True)
                            mf = f_new
                    if HAS_CONF:
                        i, mx, isnan = _first_argmax(x, c2, cm2, 0, 2**62)
                        i = i[None, :]
                        isnan = isnan[None, :]
                        mx = mx[None, :]
                        nan_i = tl.where((nan_i < 0) & isnan, i, nan_i)
                        upd = (mx > best) & ~isnan
                        best_i = tl.where(upd, i, best_i)
                        best = tl.where(upd, mx, best)
            rl = lsum
            lls = lsum
            h = lsum
            if ACT == 2:
                rl = 1.0 / lsum
                lls = tl.log(lsum)
                h = lls
                if XK == 3:  # -log(1 - p_0) = (m - mf) + (lls - llsf)
                    h = (m - mf) + (lls - tl.log(lsf))
            if T_IS_LABEL:
                if HAS_FLAG or HAS_CONF:
                    y, ok, bad = _label_flags(lab2, pvalid2, C, label_offset)
                if HAS_CONF:  # one relaxed add per valid pixel (a barrier per tile: a layout change)
                    pred = tl.where(nan_i >= 0, nan_i, best_i)
                    tl.atomic_add(conf_ptr + y * C + pred, tl.full([1, BLOCK_S], 1, tl.int64), mask=ok, sem="relaxed")
            for c0 in range(0, C, BLOCK_C):
                c64 = c0 + ar_c64
                cmask = c64 < C
                c2 = c64[:, None]
                cm2 = cmask[:, None]
                mask = cm2 & sm2
                x = tl.load(x_base + c2 * sxc + s2 * sxs, mask=mask, other=0).to(tl.float32)
                zero = tl.where(mask, 0.0, x)
                t, v, vb = _stats_targets(zero, mask, cm2, pvalid2, lab2, c2, t_ptr + n64 * stn, s2, stc, sts,
                                          label_offset, ign_f, T_IS_LABEL, HAS_IGNORE)
                if ACT == 2:
                    p = tl.exp(x - m) * rl
                elif ACT == 1:
                    p = tl.sigmoid(x)
                else:
                    p = x
                pv = p * v
                if T_IS_LABEL and HAS_FLAG:  # in the tile's layout: no second read of the labels
                    nbad = tl.maximum(nbad, tl.max(tl.max(tl.where(bad, 1.0, zero), axis=1), axis=0))
                o = row + c64 * KO
                om = cmask & (c64 * 0 + s0 > start)  # the sums so far: none before the first tile
                tl.store(o + 0, tl.load(o + 0, mask=om, other=0) + tl.sum(pv * t, axis=1), mask=cmask)
                tl.store(o + 1, tl.load(o + 1, mask=om, other=0) + tl.sum(pv, axis=1), mask=cmask)
                tl.store(o + 2, tl.load(o + 2, mask=om, other=0) + tl.sum(t, axis=1), mask=cmask)
                tl.store(o + 3, tl.load(o + 3, mask=om, other=0) + tl.sum(v, axis=1), mask=cmask)
                tl.store(o + 4, tl.load(o + 4, mask=om, other=0) + tl.sum(pv * p, axis=1), mask=cmask)
                # one-hot labels: TT = T and (softmax, sigmoid) M = I, copied after the loop
                if not T_IS_LABEL:
                    tl.store(o + 5, tl.load(o + 5, mask=om, other=0) + tl.sum(t * t, axis=1), mask=cmask)
                if not (T_IS_LABEL and ACT != 0):
                    tl.store(o + 6, tl.load(o + 6, mask=om, other=0) + tl.sum(tl.minimum(p, t) * v, axis=1),
                             mask=cmask)
                if XK != 0:
                    s7, s8 = _pixel_term_sums(x, p, t, v, c2, m, lls, h, gamma, XK)
                    tl.store(o + 7, tl.load(o + 7, mask=om, other=0) + tl.sum(tl.where(mask, s7, 0.0), axis=1),
                             mask=cmask)
                    if XK != 2:
                        tl.store(o + 8, tl.load(o + 8, mask=om, other=0) + tl.sum(tl.where(mask, s8, 0.0), axis=1),
                                 mask=cmask)
                    else:
                        tl.store(o + 8, tl.zeros([BLOCK_C], tl.float32), mask=cmask & ~om)
        if HAS_FLAG:
            tl.store(flag_ptr, 1, mask=nbad != 0)
        if T_IS_LABEL:
            # TT = T and (softmax, sigmoid) M = I, from the row as every lane wrote it
            tl.debug_barrier()
            for c0 in range(0, C, BLOCK_C):
                c64 = c0 + ar_c64
                o = row + c64 * KO
                tl.store(o + 5, tl.load(o + 2, mask=c64 < C), mask=c64 < C)
                if ACT != 0:
                    tl.store(o + 6, tl.load(o + 0, mask=c64 < C), mask=c64 < C)


# --------------------------------------------------------------------------
# grad
# --------------------------------------------------------------------------

@triton.jit
def _region_grad_kernel(
    x_ptr, t_ptr, g_ptr, dx_ptr,
    C, S, NBLK,
    sxn, sxc, sxs,
    stn, stc, sts,
    sdn, sdc, sds,
    label_offset, ign_i, ign_f,
    ACT: tl.constexpr, T_IS_LABEL: tl.constexpr, HAS_IGNORE: tl.constexpr,
    SINGLE_C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
    gamma,
    XK: tl.constexpr, KO: tl.constexpr,
    go_ptr, HAS_GO: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n64 = pid // NBLK
    go = 1.0
    if HAS_GO:  # grad_output of a scalar loss, read on the device: g is dLoss/dStats at grad_output 1
        go = tl.load(go_ptr).to(tl.float32)
    b64 = pid % NBLK
    s64 = b64 * BLOCK_S + tl.arange(0, BLOCK_S).to(tl.int64)
    smask = s64 < S
    x_base = x_ptr + n64 * sxn
    dx_base = dx_ptr + n64 * sdn
    g_base = g_ptr + n64 * C * KO
    ar_c = tl.arange(0, BLOCK_C)
    lab, pvalid = load_labels(t_ptr, n64, s64, stn, sts, smask,
                              T_IS_LABEL, HAS_IGNORE, ign_i)
    # fused: lse_fg and k = [y >= 1] gS8_y per pixel (y = lab - label_offset)
    mf = tl.zeros([BLOCK_S], tl.float32)
    llsf = tl.zeros([BLOCK_S], tl.float32)
    k = tl.zeros([BLOCK_S], tl.float32)
    if XK == 3:
        mf, llsf = _lse_fg(x_base, s64, smask, C, sxc, sxs, BLOCK_C, BLOCK_S)
        y = lab - label_offset
        k = tl.load(g_base + y * KO + 8, mask=pvalid & (y >= 1) & (y < C), other=0)

    if SINGLE_C:
        c64 = ar_c.to(tl.int64)
        cmask = c64 < C
        mask = cmask[:, None] & smask[None, :]
        x = load_tile(x_base, c64, s64, sxc, sxs, mask)
        m = tl.zeros([BLOCK_S], tl.float32)
        rl = tl.full([BLOCK_S], 1.0, tl.float32)
        if ACT == 2:
            xm = tl.where(cmask[:, None], x, float("-inf"))
            m = tl.max(xm, axis=0)
            rl = 1.0 / tl.sum(tl.exp(xm - m[None, :]), axis=0)
        p = tl.where(cmask[:, None], _act(x, m, rl, ACT), 0.0)
        a, b = _dldp_tile(p, x, m, -tl.log(rl), mf, llsf, k, gamma, g_base, c64, cmask, t_ptr, n64, s64, stn, stc, sts,
                          pvalid, lab, label_offset, ign_f, T_IS_LABEL, HAS_IGNORE, XK, KO)
        dx = (_dx(p, a, tl.sum(p * a - b, axis=0), ACT) - b) * go
        tl.store(dx_base + c64[:, None] * sdc + s64[None, :] * sds,
                 dx.to(dx_ptr.dtype.element_ty), mask=mask)
    else:
        if ACT == 2:
            # pass 1: online max / sum of exp over all classes
            m, rl = _softmax_max_rsum(x_base, s64, smask, C, sxc, sxs, BLOCK_C, BLOCK_S)
            # pass 2: dot = sum_k p_k a_k
            dot = tl.zeros([BLOCK_S], tl.float32)
            for c0 in range(0, C, BLOCK_C):
                c64 = c0 + ar_c.to(tl.int64)
                cmask = c64 < C
                mask = cmask[:, None] & smask[None, :]
                x = load_tile(x_base, c64, s64, sxc, sxs, mask)
                p = _act(x, m, rl, ACT)
                a, b = _dldp_tile(p, x, m, -tl.log(rl), mf, llsf, k, gamma, g_base, c64, cmask, t_ptr, n64, s64,
                                  stn, stc, sts, pvalid, lab, label_offset, ign_f, T_IS_LABEL, HAS_IGNORE, XK, KO)
                dot += tl.sum(tl.where(mask, p * a - b, 0.0), axis=0)
        # last pass: write dx
        for c0 in range(0, C, BLOCK_C):
            c64 = c0 + ar_c.to(tl.int64)
            cmask = c64 < C
            mask = cmask[:, None] & smask[None, :]
            x = load_tile(x_base, c64, s64, sxc, sxs, mask)
            if ACT != 2:  # m, rl, dot are only used by softmax
                m = tl.zeros([BLOCK_S], tl.float32)
                rl = m
                dot = m
            p = _act(x, m, rl, ACT)
            a, b = _dldp_tile(p, x, m, -tl.log(rl), mf, llsf, k, gamma, g_base, c64, cmask, t_ptr, n64, s64,
                              stn, stc, sts, pvalid, lab, label_offset, ign_f, T_IS_LABEL, HAS_IGNORE, XK, KO)
            dx = (_dx(p, a, dot, ACT) - b) * go
            tl.store(dx_base + c64[:, None] * sdc + s64[None, :] * sds,
                     dx.to(dx_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------

def _blocks(C: int, block_s, block_c):
    """-> (SINGLE_C, BLOCK_C, BLOCK_S) of a single class tile, or of the stats kernel's looped path."""
    return blocks(C, block_s, block_c, tile=TILE, max_single_c=MAX_SINGLE_C,
                  loop_block_c=LOOP_BLOCK_C)


def _grad_blocks(C: int, block_s, block_c, itemsize: int = 4):
    """-> (SINGLE_C, BLOCK_C, BLOCK_S, num_warps) of the grad kernel; ``itemsize``:
    the narrowest of the logits' and dense targets' element sizes (see GRAD_LOOP_ELEMS)."""
    single, BLOCK_C, BLOCK_S = _blocks(C, block_s, block_c)
    if single:
        return single, BLOCK_C, BLOCK_S, GRAD_WARPS
    vec = max(16 // itemsize, 1)
    return (single, block_c or max(GRAD_LOOP_ELEMS // vec, 1), block_s or 32 * vec * GRAD_LOOP_WARPS,
            GRAD_LOOP_WARPS)


def _stats_blocks(C: int, block_s, block_c, itemsize: int = 4, xent: int = 0):
    """-> (SINGLE_C, BLOCK_C, BLOCK_S, num_warps, CL, VEC) of the stats kernel.

    Single class tile (C <= STATS_MAX_C unless ``block_c`` asks for the class
    loop): CL = min(BLOCK_C, STATS_CLASS_LANES) lanes of a warp over the
    classes (more for 16-bit logits, so that a thread holds at most
    STATS_THREAD_ELEMS logits; wide tile, BLOCK_C > MAX_SINGLE_C:
    min(32, BLOCK_C / 4)), 32 / CL
    over pixel vectors of VEC = 16 / itemsize pixels (wide: at most
    STATS_THREAD_ELEMS / (BLOCK_C / CL)), STATS_WARPS warps over pixels: BLOCK_S = STATS_WARPS *
    (32 / CL) * VEC. ``block_s`` overrides BLOCK_S (fewer warps, then shorter
    vectors)."""
    single, BLOCK_C, BLOCK_S = _blocks(C, block_s, block_c)
    if not single and block_c is None and C <= STATS_MAX_C:
        single, BLOCK_C = True, triton.next_power_of_2(C)
    if not single:
        if block_s is None:
            BLOCK_S = LOOP_STATS_BLOCK_S
        if block_c is None:
            BLOCK_C = LOOP_STATS_BLOCK_C
        return single, BLOCK_C, BLOCK_S, 1, 1, 1
    VEC = max(16 // itemsize, 1)
    if BLOCK_C <= MAX_SINGLE_C:
        # at most STATS_THREAD_ELEMS logits per thread (class rows x VEC): 16-bit
        # logits (VEC = 8) put more lanes over the classes, not more rows in a thread
        CL = min(BLOCK_C, max(STATS_CLASS_LANES, BLOCK_C * VEC // STATS_THREAD_ELEMS), 32)
    else:  # wide tile: every lane of a warp over the classes from BLOCK_C = 128 on
        CL = min(32, BLOCK_C // 4)
        VEC = min(VEC, STATS_THREAD_ELEMS // (BLOCK_C // CL))
    PL = 32 // CL
    warps = STATS_WARPS
    if block_s is not None:
        warps = max(1, min(warps, block_s // (PL * VEC)))
        VEC = block_s // (PL * warps)
        if VEC < 1 or VEC & (VEC - 1) or warps * PL * VEC != block_s:
            raise ValueError(f"block_s={block_s} is not a tile of the stats kernel for C={C}")
    return single, BLOCK_C, warps * PL * VEC, warps, CL, VEC


def default_chunks(N: int, C: int, S: int, sm_count: int = 132, waves: int = 4) -> int:
    """P for a device of ``sm_count`` SMs: about ``waves`` programs per SM
    over the grid of N * P programs, each streaming a whole number of pixel
    blocks (see ``chunks``)."""
    single, _, block_s, *_ = _stats_blocks(C, None, None)
    return chunks(N, S, block_s, sm_count, waves if single else waves * LOOP_STATS_WAVES)


def launch_stats(x, t, t_is_label: bool, out, N: int, C: int, S: int, P: int,
                 act: int, label_offset: int, has_ignore: bool, ignore_value: float, xent: int = 0,
                 gamma: float = 0.0, *, block_s: int | None = None, block_c: int | None = None,
                 flag=None, confusion=None) -> None:
    """Partial sums into ``out`` (float32, contiguous [N, P, C, 7], or 9 with ``xent``); see module doc.

    x: [N, C, S] (any strides); t: [N, S] labels if ``t_is_label`` else
    [N, C, S] dense. ``block_s`` / ``block_c`` override the tile (tests, tuning).

    With labels, two optional outputs of the same pass:

    * ``flag``: a 1-element int32 tensor, set to 1 when a label other than the
      ignore value lies outside [label_offset, label_offset + C) (left as it is
      otherwise: the caller zeroes it);
    * ``confusion``: an int64 contiguous [C, C] tensor to which the hard counts
      are added, row = target class, column = the logits' argmax over the classes
      (``torch.argmax``'s: the first maximum, a NaN counts as the maximum), over
      the pixels whose label is neither the ignore value nor out of range.

    Both are ignored for dense targets.
    """
    if N * P * C == 0:
        return
    t, (stn, stc, sts), has_ignore, ign_i, ign_f = target_args(t, t_is_label, has_ignore,
                                                               ignore_value)
    has_flag = flag is not None and t_is_label
    has_conf = confusion is not None and t_is_label
    single, BLOCK_C, BLOCK_S, warps, CL, VEC = _stats_blocks(C, block_s, block_c, x.element_size(), xent)
    L = chunk_len(S, P, BLOCK_S)
    wrap(_region_stats_kernel)[(N * P,)](
        x, t, out, flag if has_flag else out, confusion if has_conf else out,
        C, S, P, L,
        x.stride(0), x.stride(1), x.stride(2),
        stn, stc, sts,
        int(label_offset), ign_i, ign_f,
        ACT=int(act), T_IS_LABEL=bool(t_is_label), HAS_IGNORE=bool(has_ignore),
        SINGLE_C=single, BLOCK_C=BLOCK_C, BLOCK_S=BLOCK_S,
        gamma=float(gamma), XK=int(xent), KO=9 if xent else 7,
        HAS_FLAG=has_flag, HAS_CONF=has_conf, NW=warps if single else 1, CL=CL, VEC=VEC,
        STAGES=STATS_STAGES if single else LOOP_STATS_STAGES,
        num_warps=warps,
    )


def launch_grad(x, t, t_is_label: bool, g, dx, N: int, C: int, S: int,
                act: int, label_offset: int, has_ignore: bool, ignore_value: float, xent: int = 0,
                gamma: float = 0.0, *, block_s: int | None = None, block_c: int | None = None,
                go=None) -> None:
    """dLoss/dx into ``dx`` ([N, C, S], x's dtype, any strides) from g = dLoss/dStats
    (float32, contiguous [N, C, 7], or 9 with ``xent``); see module doc. ``go``: a
    one-element grad_output that scales g, read by the kernel (None: 1)."""
    if N * C * S == 0:
        return
    t, (stn, stc, sts), has_ignore, ign_i, ign_f = target_args(t, t_is_label, has_ignore,
                                                               ignore_value)
    itemsize = x.element_size() if t_is_label else min(x.element_size(), t.element_size())
    single, BLOCK_C, BLOCK_S, warps = _grad_blocks(C, block_s, block_c, itemsize)
    nblk = -(-S // BLOCK_S)
    wrap(_region_grad_kernel)[(N * nblk,)](
        x, t, g, dx,
        C, S, nblk,
        x.stride(0), x.stride(1), x.stride(2),
        stn, stc, sts,
        dx.stride(0), dx.stride(1), dx.stride(2),
        int(label_offset), ign_i, ign_f,
        ACT=int(act), T_IS_LABEL=bool(t_is_label), HAS_IGNORE=bool(has_ignore),
        SINGLE_C=single, BLOCK_C=BLOCK_C, BLOCK_S=BLOCK_S,
        gamma=float(gamma), XK=int(xent), KO=9 if xent else 7,
        go_ptr=go, HAS_GO=go is not None,
        num_warps=warps,
    )
