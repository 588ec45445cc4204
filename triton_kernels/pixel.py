"""Triton kernels of the pixel family (CE, focal, positive-sharing "fused",
BCE / balanced BCE, sigmoid focal).

Installed as ``segfast.triton_kernels.pixel``. Imports only triton, torch and
the standard library, and imports cleanly without a GPU.

One launcher, ``launch_pixel``, and one kernel per activation (softmax over C
for the kinds CE=0, FOCAL_SOFTMAX=1, FUSED=2; elementwise sigmoid for BCE=3,
FOCAL_SIGMOID=4). The per-element terms l0, l1 are those of
``segfast.reference.pixel.pixel_terms``. A call asks for any subset of:

* ``loss``: float32 contiguous [N, P, 2], the unscaled sums of l0 and l1 over
  chunk j of image n (pixels [j*L, min((j+1)*L, S)), L = ceil(S/P), all
  classes for sigmoid kinds; an empty chunk gives zeros). One program per
  (image, chunk), no atomics: deterministic.
* ``map``: float32 contiguous [N, S] (softmax kinds) / [N, C, S] (sigmoid
  kinds): scale0*l0 + scale1*l1, 0 where invalid.
* ``dx``: [N, C, S], x's dtype, any strides: g*(scale0*dl0/dx + scale1*dl1/dx)
  with g = go (float32 contiguous, map's layout) or 1; 0 where invalid.

Reduced losses (``out``): the forward is (loss) and the last program to end
sums every program's partials and divides by the normalizer (see
``launch_pixel``); the backward is (dx) with a 0-d go and that normalizer,
read on the device. Reduction "none" = (map); its backward = (go, dx).
Without ``loss`` the grid is one program per (image, pixel block).

Validity: class-index targets: v = !(ignore) per pixel. A label outside
[label_offset, label_offset + C) is, for the softmax kinds, never used as an
index and counts as invalid (contributes 0; the Python layer rejects such
labels beforehand); for the sigmoid kinds it is a valid pixel with an
all-zero target, as in the reference (binary labels {0, 1} with C = 1 and
label_offset = 1), like csrc/common/pixel.h. Dense targets (sigmoid kinds):
v = !(t == ignore) per element, t = 0 where invalid. FOCAL_SOFTMAX on dense
targets has a kernel of its own (``_pixel_softmax_dense_kernel``): one term
per element, a pixel with any channel equal to the ignore value invalid.

Closed-form gradients, with p = softmax(x), y the label, s = sigmoid(x); the
softmax dx of every kind has the form

    dx_c = a*p_c - b*[c == y] - d*w_c - f*[c == 0] - h*[c >= 1]*exp(x_c - lse_fg)

with per-pixel coefficients a, b, d, f, h (zero for invalid pixels), so the
dx pass needs only max and log-sum (and those over c >= 1 for FUSED) and
1 - p_y beside x.

Both kernels share one layout: each thread owns 4 pixels (one 128-bit load
of fp32 logits per class and thread; BLOCK_S pixels per program) and loops
over the classes (the softmax forward unrolled in full for C <= MAX_UNROLL_C,
other loops SOFTMAX_UNROLL / SIGMOID_UNROLL classes per step), so the labels are read
once per pixel, every per-pixel reduction stays in registers and the tile
loop has no block barrier (its only barriers are in the end-of-program sums
and the finishing step). The softmax kernel runs an online pass over the
classes (max, sum of exp, the sum of exp without the label's class: 1 - p_y
without cancellation, x_y, w_y, (smoothing) sum_c w_c x_c, and for FUSED the
same over c >= 1), then the terms per pixel, then a second loop over the
classes for dx (re-reading the pixel block's logits, which are in L1/L2).

Sigmoid kinds are elementwise: per class, softplus(+-x), s and 1 - s from
one exp and one log (``sigmoid_parts``). Powers (1 - p)^gamma use
exp(gamma * log), with 0^0 = 1; the focal gradients' (1 - p)^(gamma - 1)
terms are written as (1 - p)^gamma * r with a bounded r so gamma < 1 and tiny
1 - p neither overflow nor give 0 * inf.

Offsets are 64-bit (image, class, pixel indices cast to int64 before they
multiply strides).

GPU tuning left to do (correctness verified in the Triton interpreter only):
WARPS and pixels per thread, MAX_UNROLL_C, SOFTMAX_STAGES / SIGMOID_STAGES
(software pipelining of the tile loop, off), exp vs exp2, and
``default_chunks`` (the loss grid is N * P programs, each streaming L pixels).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import (blocks, chunk_bounds, chunk_len, chunks, focal_pow, load_labels, load_tile,
                      log1p, sigmoid_parts, target_args, wrap)
from .region import _softmax_max_rsum

CE, FOCAL_SOFTMAX, FUSED, BCE, FOCAL_SIGMOID = 0, 1, 2, 3, 4
SOFTMAX_KINDS = (CE, FOCAL_SOFTMAX, FUSED)
SIGMOID_KINDS = (BCE, FOCAL_SIGMOID)

# Warps per program and pixels per tile (4 per thread: one 128-bit load of
# fp32 logits per class), classes unrolled up to MAX_UNROLL_C (the softmax
# forward; beyond it, and in every other loop over classes, a few classes
# per step), and the block of partials the finishing program sums per step.
WARPS = 2
BLOCK_S = 4 * 32 * WARPS
MAX_UNROLL_C = 24
# Classes per step of the loops that are not unrolled in full (the softmax
# kernel's backward and C > MAX_UNROLL_C, the sigmoid kernel's class loop):
# the most that compiles without spills for sm_80 and sm_90.
SOFTMAX_UNROLL = 2
SIGMOID_UNROLL = 4
# Stages of the tile loop's software pipeline (``tl.range(num_stages=)``; 1:
# none). More compiles to 16-byte cp.async copies into shared memory (the
# softmax forward's unrolled class loads; the other loops over classes are
# inner loops, not pipelined), each tile waited for behind two block barriers
# in the loop, with more registers and shared memory (docs/design.md).
SOFTMAX_STAGES = 1
SIGMOID_STAGES = 1
# The AOT workload's view of the class tiles (segfast.gpucheck.triton_workload):
# C up to MAX_SINGLE_C is unrolled, each C its own compile.
MAX_SINGLE_C = MAX_UNROLL_C
FIN_BLOCK = 256
# Normalizers of the in-kernel reduction (segfast.ops.pixel NORM_*).
NORM_SUM, NORM_COUNT, NORM_WEIGHT = 0, 1, 2


# --------------------------------------------------------------------------
# device helpers
# --------------------------------------------------------------------------

@triton.jit
def _sm_step(xc, c, y, w_ptr, m, ls, lny, xy, wy, x0, swx, mf, lsf,
             KIND: tl.constexpr, HAS_W: tl.constexpr, HAS_SMOOTH: tl.constexpr):
    """Class c of the per-thread online softmax: xc is x[:, c] of the pixel
    block [BLOCK_S]; updates the running max / sums (m, ls: all classes,
    lny: all but y, mf, lsf: c >= 1), gathers x_y, w_y, x_0 and (smoothing)
    sum_c w_c x_c. A -inf max (nothing seen yet) stays safe."""
    hit = y == c
    m_new = tl.maximum(m, xc)
    mr = tl.where(m_new == float("-inf"), 0.0, m_new)
    scale = tl.exp(m - mr)
    e = tl.exp(xc - mr)
    ls = ls * scale + e
    lny = lny * scale + tl.where(hit, 0.0, e)
    m = m_new
    xy += tl.where(hit, xc, 0.0)
    if HAS_W:
        wc = tl.load(w_ptr + c).to(tl.float32)
    else:
        wc = 1.0
    wy += tl.where(hit, wc, 0.0)
    if HAS_SMOOTH:
        swx += wc * xc
    if KIND == 2:
        if c == 0:
            x0 = xc
        else:
            f_new = tl.maximum(mf, xc)
            fr = tl.where(f_new == float("-inf"), 0.0, f_new)
            lsf = lsf * tl.exp(mf - fr) + tl.exp(xc - fr)
            mf = f_new
    return m, ls, lny, xy, wy, x0, swx, mf, lsf


@triton.jit
def _sm_dx(xc, c, y, w_ptr, a, b, d, f, h, m, lls, q, mf, llsf,
           KIND: tl.constexpr, HAS_W: tl.constexpr, HAS_SMOOTH: tl.constexpr):
    """dx[:, c] of the pixel block from the per-pixel coefficients (see module
    doc). p = exp((x - m) - log(ls)) keeps x - m exact near the max; at
    c == y, a*p_y - b = (a - b)*p_y - b*(1 - p_y) with 1 - p_y = q (no
    cancellation)."""
    p = tl.exp((xc - m) - lls)
    dx = tl.where(y == c, (a - b) * p - b * q, a * p)
    if HAS_SMOOTH:
        if HAS_W:
            dx -= d * tl.load(w_ptr + c).to(tl.float32)
        else:
            dx -= d
    if KIND == 2:
        if c == 0:
            dx -= f
        else:
            mfs = tl.where(mf == float("-inf"), 0.0, mf)
            dx -= h * tl.exp((xc - mfs) - llsf)
    return dx


@triton.jit
def _sm_terms(y, v, g, m, ls, lny, xy, wy, x0, swx, W, mf, lsf, C,
              gamma, smoothing, scale0, scale1,
              KIND: tl.constexpr, HAS_SMOOTH: tl.constexpr):
    """Per-pixel (l0, l1), the dx coefficients (a, b, d, f, h), log(ls),
    1 - p_y and log(lsf) (lse = m + log(ls), lse_fg = mf + log(lsf))."""
    lls = tl.log(ls)
    xy = tl.where(v, xy, m)  # an invalid pixel has no x_y: keep its (masked) terms finite
    q = lny / ls  # 1 - p_y, without cancellation
    G0 = tl.where(v, g * scale0, 0.0)
    G1 = tl.where(v, g * scale1, 0.0)
    zero = tl.zeros_like(lls)
    d = zero
    f = zero
    h = zero
    l1 = zero
    llsf = zero
    if KIND == 1:
        logpy = tl.where(q < 0.5, log1p(-q), (xy - m) - lls)
        py = tl.exp(logpy)
        qg = focal_pow(q, gamma)
        l0 = -wy * qg * logpy
        ratio = tl.where(q > 0.0, logpy / tl.where(q > 0.0, q, 1.0), 0.0)
        Fc = qg - gamma * py * qg * ratio
        a = G0 * wy * Fc
        b = a
    else:
        eps = smoothing
        l0 = (1.0 - eps) * wy * ((m - xy) + lls)
        a = G0 * (1.0 - eps) * wy
        b = a
        if HAS_SMOOTH:
            l0 += (eps / C) * ((W * m - swx) + W * lls)
            a += G0 * (eps / C) * W
            d = G0 * (eps / C)
        if KIND == 2:
            has_fg = lsf > 0.0
            llsf = tl.log(tl.where(has_fg, lsf, 1.0))
            p0 = tl.exp((x0 - m) - lls)
            l1_fg = tl.where(p0 < 0.5, -log1p(-p0), (m - mf) + (lls - llsf))
            bg = y == 0
            l1 = tl.where(bg, (m - x0) + lls, l1_fg)
            a += G1
            f = tl.where(bg, G1, 0.0)
            h = tl.where(bg, 0.0, G1)
    return l0, l1, a, b, d, f, h, lls, q, llsf


@triton.jit
def _load_class(x_base, c, s64, sxc, sxs, smask):
    """x[c, s] of the pixel block as fp32 [BLOCK_S]; 0 off ``smask``."""
    return tl.load(x_base + c * sxc + s64 * sxs, mask=smask, other=0).to(tl.float32)


@triton.jit
def _go_over_den(go_ptr, den_ptr):
    """grad_output / normalizer of a reduced loss, both 0-d and read on the
    device: 0 for a mean over nothing, NaN for a NaN normalizer (bad labels)."""
    dg = tl.load(den_ptr)
    gs = tl.where(dg > 0.0, tl.load(go_ptr).to(tl.float32) / tl.where(dg > 0.0, dg, 1.0), 0.0)
    return tl.where(dg == dg, gs, dg)


@triton.jit
def _finish(part_ptr, out_ptr, den_ptr, cnt_ptr, pid, nprog, a0, a1, dn, nbad, scale0, scale1,
            NORM: tl.constexpr, FIN_BLOCK: tl.constexpr):
    """The reduction of the per-program partials by the last program to end.

    Each program writes its (sum l0, sum l1, normalizer, bad labels) to
    part[pid] and takes a ticket from the counter (acq_rel: its partials are
    visible before the ticket); the program holding the last ticket sums the
    partials of every program in a fixed order (deterministic), writes
    the loss to out[0] and the normalizer to den[0], and resets the counter to 0 for the next launch.
    A non-ignored label outside [0, C) makes the loss and the normalizer NaN
    (so is then the gradient, which divides by the normalizer)."""
    tl.store(part_ptr + pid * 4, a0)
    tl.store(part_ptr + pid * 4 + 1, a1)
    tl.store(part_ptr + pid * 4 + 2, dn)
    tl.store(part_ptr + pid * 4 + 3, nbad)
    tl.debug_barrier()
    ticket = tl.atomic_add(cnt_ptr, 1, sem="acq_rel")
    if ticket == nprog - 1:
        tl.debug_barrier()
        r = tl.arange(0, FIN_BLOCK)
        s0 = tl.zeros([FIN_BLOCK], tl.float32)
        s1 = tl.zeros([FIN_BLOCK], tl.float32)
        sd = tl.zeros([FIN_BLOCK], tl.float32)
        sb = tl.zeros([FIN_BLOCK], tl.float32)
        for i0 in range(0, nprog, FIN_BLOCK):
            i = i0 + r
            ok = i < nprog
            s0 += tl.load(part_ptr + i * 4, mask=ok, other=0, cache_modifier=".cg")
            s1 += tl.load(part_ptr + i * 4 + 1, mask=ok, other=0, cache_modifier=".cg")
            sd += tl.load(part_ptr + i * 4 + 2, mask=ok, other=0, cache_modifier=".cg")
            sb += tl.load(part_ptr + i * 4 + 3, mask=ok, other=0, cache_modifier=".cg")
        total = scale0 * tl.sum(s0, axis=0) + scale1 * tl.sum(s1, axis=0)
        if NORM == 0:
            den = tl.sum(sd, axis=0) * 0.0 + 1.0
        else:
            den = tl.sum(sd, axis=0)
        loss = tl.where(den > 0.0, total / tl.where(den > 0.0, den, 1.0), 0.0)  # a mean over nothing is 0
        bad = tl.sum(sb, axis=0) > 0.0
        tl.store(out_ptr, tl.where(bad, float("nan"), loss))
        tl.store(den_ptr, tl.where(bad, float("nan"), den))
        tl.atomic_xchg(cnt_ptr, 0, sem="relaxed")


# --------------------------------------------------------------------------
# softmax kinds (CE, FOCAL_SOFTMAX, FUSED)
# --------------------------------------------------------------------------

@triton.jit
def _pixel_softmax_kernel(
    x_ptr, t_ptr, w_ptr, go_ptr, den_ptr, loss_ptr, out_ptr, cnt_ptr, map_ptr, dx_ptr,
    C, S, P, L,
    sxn, sxc, sxs,
    stn, sts,
    sdn, sdc, sds,
    label_offset, ign_i,
    gamma, smoothing, scale0, scale1,
    KIND: tl.constexpr, HAS_IGNORE: tl.constexpr, HAS_W: tl.constexpr,
    HAS_SMOOTH: tl.constexpr, WANT_LOSS: tl.constexpr, FINISH: tl.constexpr, NORM: tl.constexpr,
    WANT_MAP: tl.constexpr, GO: tl.constexpr, WANT_DX: tl.constexpr,
    CONST_C: tl.constexpr, UNROLL: tl.constexpr, BLOCK_S: tl.constexpr, FIN_BLOCK: tl.constexpr,
    STAGES: tl.constexpr = 1,
):
    """Each thread owns pixels and loops over the classes (CONST_C > 0: the
    constexpr C, unrolled, for the forward; else, and for the dx pass, a loop
    over the runtime C, UNROLL classes per step): every per-pixel reduction
    stays in registers, and the tile loop has no block barrier.
    GO: 0 none (g = 1), 1 per pixel (go: [N, S]), 2 a scalar (go: 0-d,
    g = go / den[0])."""
    pid = tl.program_id(0).to(tl.int64)
    n64, start, end = chunk_bounds(pid, P, L, S)
    x_base = x_ptr + n64 * sxn
    dx_base = dx_ptr + n64 * sdn
    ar_s = tl.arange(0, BLOCK_S)
    acc0 = tl.zeros([BLOCK_S], tl.float32)
    acc1 = tl.zeros([BLOCK_S], tl.float32)
    accd = tl.zeros([BLOCK_S], tl.float32)
    accb = tl.zeros([BLOCK_S], tl.float32)
    if HAS_SMOOTH:
        if HAS_W:
            W = 0.0  # CONST_C > 0: summed in each tile's class loop, from the weights it loads there
            if CONST_C == 0:
                W = tl.load(w_ptr).to(tl.float32)
                for k in range(1, C):
                    W += tl.load(w_ptr + k).to(tl.float32)
        else:
            W = C * 1.0
    else:
        W = 0.0
    if GO == 2:
        gs = _go_over_den(go_ptr, den_ptr)
    else:
        gs = 1.0

    for s0 in tl.range(start, end, BLOCK_S, num_stages=STAGES):
        s64 = s0 + ar_s.to(tl.int64)
        smask = s64 < end
        lab, pv = load_labels(t_ptr, n64, s64, stn, sts, smask, True, HAS_IGNORE, ign_i)
        y = lab - label_offset
        inr = (y >= 0) & (y < C)
        v = pv & inr
        if GO == 1:
            g = tl.load(go_ptr + n64 * S + s64, mask=v, other=0).to(tl.float32)
        else:
            g = tl.full([BLOCK_S], 1.0, tl.float32) * gs

        m = tl.full([BLOCK_S], float("-inf"), tl.float32)
        mf = tl.full([BLOCK_S], float("-inf"), tl.float32)
        ls = tl.zeros([BLOCK_S], tl.float32)
        lny = tl.zeros([BLOCK_S], tl.float32)
        xy = tl.zeros([BLOCK_S], tl.float32)
        wy = tl.zeros([BLOCK_S], tl.float32)
        x0 = tl.zeros([BLOCK_S], tl.float32)
        swx = tl.zeros([BLOCK_S], tl.float32)
        lsf = tl.zeros([BLOCK_S], tl.float32)
        if CONST_C > 0:
            if HAS_SMOOTH and HAS_W:
                W = 0.0
            for c in tl.static_range(CONST_C):
                if HAS_SMOOTH and HAS_W:
                    W += tl.load(w_ptr + c).to(tl.float32)
                xc = _load_class(x_base, c, s64, sxc, sxs, smask)
                m, ls, lny, xy, wy, x0, swx, mf, lsf = _sm_step(
                    xc, c, y, w_ptr, m, ls, lny, xy, wy, x0, swx, mf, lsf, KIND, HAS_W, HAS_SMOOTH)
        else:
            for c in tl.range(0, C, loop_unroll_factor=UNROLL):
                xc = _load_class(x_base, c, s64, sxc, sxs, smask)
                m, ls, lny, xy, wy, x0, swx, mf, lsf = _sm_step(
                    xc, c, y, w_ptr, m, ls, lny, xy, wy, x0, swx, mf, lsf, KIND, HAS_W, HAS_SMOOTH)

        l0, l1, a, b, d, f, h, lls, q, llsf = _sm_terms(
            y, v, g, m, ls, lny, xy, wy, x0, swx, W, mf, lsf, C,
            gamma, smoothing, scale0, scale1, KIND, HAS_SMOOTH)
        if WANT_LOSS:
            acc0 += tl.where(v, l0, 0.0)
            acc1 += tl.where(v, l1, 0.0)
            if NORM == 1:
                accd += tl.where(v, 1.0, 0.0)
            if NORM == 2:
                accd += tl.where(v, wy, 0.0)
            accb += tl.where(pv & ((lab < 0) | (y >= C)), 1.0, 0.0)  # below label_offset: a class without a channel
        if WANT_MAP:
            tl.store(map_ptr + n64 * S + s64, tl.where(v, scale0 * l0 + scale1 * l1, 0.0),
                     mask=smask)
        if WANT_DX:
            # a loop (not unrolled in full) re-reads x from the cache: unrolled, the
            # compiler keeps each thread's whole [C, 4] block live from the first
            # pass and spills (sm_80, C >= 24); the backward's first pass loops too
            for c in tl.range(0, C, loop_unroll_factor=UNROLL):
                xc = _load_class(x_base, c, s64, sxc, sxs, smask)
                dx = _sm_dx(xc, c, y, w_ptr, a, b, d, f, h, m, lls, q, mf, llsf, KIND, HAS_W, HAS_SMOOTH)
                tl.store(dx_base + c * sdc + s64 * sds, dx.to(dx_ptr.dtype.element_ty), mask=smask)

    if WANT_LOSS:
        a0 = tl.sum(acc0, axis=0)
        a1 = tl.sum(acc1, axis=0)
        if FINISH:
            _finish(loss_ptr, out_ptr, den_ptr, cnt_ptr, pid, tl.num_programs(0), a0, a1, tl.sum(accd, axis=0),
                    tl.sum(accb, axis=0), scale0, scale1, NORM, FIN_BLOCK)
        else:
            tl.store(loss_ptr + pid * 2, a0)
            tl.store(loss_ptr + pid * 2 + 1, a1)


# --------------------------------------------------------------------------
# softmax focal on dense targets
# --------------------------------------------------------------------------

@triton.jit
def _pixel_softmax_dense_kernel(
    x_ptr, t_ptr, w_ptr, go_ptr, loss_ptr, map_ptr, dx_ptr,
    C, S, P, L,
    sxn, sxc, sxs,
    stn, stc, sts,
    sdn, sdc, sds,
    ign_f, gamma, scale0,
    HAS_IGNORE: tl.constexpr, HAS_W: tl.constexpr, WANT_LOSS: tl.constexpr, WANT_MAP: tl.constexpr,
    HAS_GO: tl.constexpr, WANT_DX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """FOCAL_SOFTMAX on dense targets [N, C, S], one term per element
    (MONAI's softmax_focal_loss): l_c = -w_c·t_c·(1 - p_c)^gamma·log p_c and
    dx_c = p_c·Σ_k g_k·aq_k - g_c·aq_c with aq_c = w_c·t_c·q_c, q = -df/dlog p.
    Class chunks of BLOCK_C: an online pass for max and sum of exp, a pass
    for the terms (loss, map, Σ g·aq), a pass for dx. A pixel with any
    channel equal to the ignore value counts nowhere. map and go: [N, C, S]."""
    pid = tl.program_id(0).to(tl.int64)
    n64, start, end = chunk_bounds(pid, P, L, S)
    x_base = x_ptr + n64 * sxn
    t_base = t_ptr + n64 * stn
    dx_base = dx_ptr + n64 * sdn
    ar_c = tl.arange(0, BLOCK_C)
    ar_s = tl.arange(0, BLOCK_S)
    acc = tl.zeros([BLOCK_S], tl.float32)
    for s0 in range(start, end, BLOCK_S):
        s64 = s0 + ar_s.to(tl.int64)
        smask = s64 < end
        m, rl = _softmax_max_rsum(x_base, s64, smask, C, sxc, sxs, BLOCK_C, BLOCK_S)
        ls = 1.0 / rl
        lls = tl.log(ls)
        lp = tl.zeros([BLOCK_S], tl.float32)
        bsum = tl.zeros([BLOCK_S], tl.float32)
        nbad = tl.zeros([BLOCK_S], tl.int32)
        for c0 in range(0, C, BLOCK_C):
            c64 = c0 + ar_c.to(tl.int64)
            cmask = c64 < C
            mask = cmask[:, None] & smask[None, :]
            x = load_tile(x_base, c64, s64, sxc, sxs, mask)
            t = load_tile(t_base, c64, s64, stc, sts, mask)
            if HAS_IGNORE:
                bad = mask & (t == ign_f)
                nbad += tl.sum(bad.to(tl.int32), axis=0)
                t = tl.where(bad, 0.0, t)
            if HAS_W:
                wc = tl.load(w_ptr + c64, mask=cmask, other=0).to(tl.float32)[:, None]
            else:
                wc = 1.0
            l, aq, p = _dense_focal(x, t, wc, m, ls, lls, gamma)
            l = tl.where(mask, l, 0.0)
            lp += tl.sum(l, axis=0)
            moff = (n64 * C + c64[:, None]) * S + s64[None, :]
            if HAS_GO:
                g = tl.load(go_ptr + moff, mask=mask, other=0).to(tl.float32)
            else:
                g = 1.0
            bsum += tl.sum(tl.where(mask, g * aq, 0.0), axis=0)
            if WANT_MAP:
                tl.store(map_ptr + moff, scale0 * l, mask=mask)
        valid = smask & (nbad == 0)
        acc += tl.where(valid, lp, 0.0)
        if WANT_MAP:
            if HAS_IGNORE:
                for c0 in range(0, C, BLOCK_C):
                    c64 = c0 + ar_c.to(tl.int64)
                    mask = (c64 < C)[:, None] & (smask & (nbad > 0))[None, :]
                    tl.store(map_ptr + (n64 * C + c64[:, None]) * S + s64[None, :],
                             tl.zeros([BLOCK_C, BLOCK_S], tl.float32), mask=mask)
        if WANT_DX:
            gv = tl.where(valid, scale0, 0.0)[None, :]  # 0·d: NaN stays NaN, as the reference
            for c0 in range(0, C, BLOCK_C):
                c64 = c0 + ar_c.to(tl.int64)
                cmask = c64 < C
                mask = cmask[:, None] & smask[None, :]
                x = load_tile(x_base, c64, s64, sxc, sxs, mask)
                t = tl.where(valid[None, :], load_tile(t_base, c64, s64, stc, sts, mask), 0.0)
                if HAS_W:
                    wc = tl.load(w_ptr + c64, mask=cmask, other=0).to(tl.float32)[:, None]
                else:
                    wc = 1.0
                l, aq, p = _dense_focal(x, t, wc, m, ls, lls, gamma)
                if HAS_GO:
                    g = tl.load(go_ptr + (n64 * C + c64[:, None]) * S + s64[None, :], mask=mask,
                                other=0).to(tl.float32)
                else:
                    g = 1.0
                dx = gv * (p * bsum[None, :] - g * aq)
                tl.store(dx_base + c64[:, None] * sdc + s64[None, :] * sds,
                         dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if WANT_LOSS:
        tl.store(loss_ptr + pid * 2, tl.sum(acc, axis=0))
        tl.store(loss_ptr + pid * 2 + 1, 0.0)


@triton.jit
def _dense_focal(x, t, wc, m, ls, lls, gamma):
    """(l, aq, p) of a [BLOCK_C, BLOCK_S] tile (csrc/common/pixel.h
    dense_focal_term); m, ls, lls: the pixels' max, sum of exp and its log."""
    e = tl.exp(x - m[None, :])
    p = e / ls[None, :]
    om = (ls[None, :] - e) / ls[None, :]  # 1 - p
    logp = (x - m[None, :]) - lls[None, :]
    pg = focal_pow(tl.maximum(om, 0.0), gamma)
    ratio = tl.where(om > 0.0, logp / tl.where(om > 0.0, om, 1.0), 0.0)
    a = wc * t
    return -a * pg * logp, a * (pg - gamma * p * pg * ratio), p


# --------------------------------------------------------------------------
# sigmoid kinds (BCE, FOCAL_SIGMOID)
# --------------------------------------------------------------------------

@triton.jit
def _sig_class(x_base, t_ptr, w_ptr, pw_ptr, go_ptr, map_ptr, dx_base, c, n64, s64, smask, lab, pv,
               bn, a_neg, gs, acc, accd, C, S, stn, stc, sts, sxc, sxs, sdc, sds, label_offset, ign_f,
               gamma, alpha, scale0,
               KIND: tl.constexpr, T_IS_LABEL: tl.constexpr, HAS_IGNORE: tl.constexpr,
               HAS_W: tl.constexpr, HAS_PW: tl.constexpr, HAS_ALPHA: tl.constexpr,
               WANT_LOSS: tl.constexpr, WANT_MAP: tl.constexpr, GO: tl.constexpr, WANT_DX: tl.constexpr):
    """Class c of the pixel block [BLOCK_S]: writes the map / dx of its
    elements and returns the running sums (acc + l0, accd + 1) over its
    valid elements."""
    x = _load_class(x_base, c, s64, sxc, sxs, smask)
    if T_IS_LABEL:
        # a label out of [label_offset, label_offset + C): all-zero target, still valid
        v = pv
        t = tl.where(pv & (lab == c + label_offset), 1.0, 0.0)
    else:
        tv = tl.load(t_ptr + n64 * stn + c * stc + s64 * sts, mask=smask, other=0).to(tl.float32)
        if HAS_IGNORE:
            v = smask & (tv != ign_f)
        else:
            v = smask
        t = tl.where(v, tv, 0.0)
    if HAS_W:
        wc = tl.load(w_ptr + c).to(tl.float32)
    else:
        wc = 1.0
    sp_pos, sp_neg, s, oms = sigmoid_parts(x)  # -log(1 - s), -log s, s, 1 - s
    if KIND == 3:
        if HAS_PW:
            a_pos = tl.load(pw_ptr + c).to(tl.float32) * bn
        else:
            a_pos = bn
        l0 = wc * (a_pos * t * sp_neg + a_neg * (1.0 - t) * sp_pos)
        dl = wc * (a_neg * (1.0 - t) * s - a_pos * t * oms)
    else:
        ce = t * sp_neg + (1.0 - t) * sp_pos
        omp = s * (1.0 - t) + oms * t  # 1 - p_t
        pg = focal_pow(omp, gamma)
        # s(1-s) / (1-p_t) <= 1: (1-p_t)^(gamma-1) s(1-s) = pg * r
        r = tl.where(omp > 0.0, s * oms / tl.where(omp > 0.0, omp, 1.0), 0.0)
        if HAS_ALPHA:
            wc = wc * (alpha * t + (1.0 - alpha) * (1.0 - t))
        l0 = wc * ce * pg
        # the factor's own gradient: none where it is constant (1 - p_t <= 0, gamma = 0)
        fd = tl.where((omp > 0.0) & (gamma > 0.0), gamma * ce * pg * r * (2.0 * t - 1.0), 0.0)
        dl = wc * ((s - t) * pg - fd)
    moff = (n64 * C + c) * S + s64
    if WANT_MAP:
        tl.store(map_ptr + moff, tl.where(v, scale0 * l0, 0.0), mask=smask)
    if WANT_DX:
        if GO == 1:
            g = tl.load(go_ptr + moff, mask=v, other=0).to(tl.float32)
        else:
            g = tl.where(v, gs, 0.0)
        dx = (g * scale0) * dl  # invalid: 0·dl (NaN stays NaN, as the reference)
        tl.store(dx_base + c * sdc + s64 * sds, dx.to(dx_base.dtype.element_ty), mask=smask)
    if WANT_LOSS:
        acc += tl.where(v, l0, 0.0)
        accd += tl.where(v, 1.0, 0.0)
    return acc, accd


@triton.jit
def _pixel_sigmoid_kernel(
    x_ptr, t_ptr, w_ptr, pw_ptr, beta_ptr, go_ptr, den_ptr, loss_ptr, out_ptr, cnt_ptr, map_ptr, dx_ptr,
    C, S, P, L,
    sxn, sxc, sxs,
    stn, stc, sts,
    sdn, sdc, sds,
    label_offset, ign_i, ign_f,
    gamma, alpha, scale0,
    KIND: tl.constexpr, T_IS_LABEL: tl.constexpr, HAS_IGNORE: tl.constexpr,
    HAS_W: tl.constexpr, HAS_PW: tl.constexpr, HAS_BETA: tl.constexpr,
    HAS_ALPHA: tl.constexpr, WANT_LOSS: tl.constexpr, FINISH: tl.constexpr, NORM: tl.constexpr,
    WANT_MAP: tl.constexpr, GO: tl.constexpr, WANT_DX: tl.constexpr,
    UNROLL: tl.constexpr, BLOCK_S: tl.constexpr, FIN_BLOCK: tl.constexpr,
    STAGES: tl.constexpr = 1,
):
    """Elementwise, as the softmax kernel is laid out: each thread owns pixels
    and loops over the classes (UNROLL classes per step: the classes are
    independent, and a full unroll lets the compiler hoist every class's
    loads and math at once, past 255 registers), so the labels are loaded
    once per pixel, every value keeps one layout and the tile loop has no
    block barrier. GO: 0 none (g = 1), 1 per element (go: [N, C, S]), 2 a
    scalar (go: 0-d, g = go / den[0])."""
    pid = tl.program_id(0).to(tl.int64)
    n64, start, end = chunk_bounds(pid, P, L, S)
    x_base = x_ptr + n64 * sxn
    dx_base = dx_ptr + n64 * sdn
    ar_s = tl.arange(0, BLOCK_S)
    acc = tl.zeros([BLOCK_S], tl.float32)
    accd = tl.zeros([BLOCK_S], tl.float32)
    accb = tl.zeros([BLOCK_S], tl.float32)
    if HAS_BETA:
        bn = tl.load(beta_ptr + n64).to(tl.float32)
        a_neg = 1.0 - bn
    else:
        bn = 1.0
        a_neg = 1.0
    if GO == 2:
        gs = _go_over_den(go_ptr, den_ptr)
    else:
        gs = 1.0

    for s0 in tl.range(start, end, BLOCK_S, num_stages=STAGES):
        s64 = s0 + ar_s.to(tl.int64)
        smask = s64 < end
        lab, pv = load_labels(t_ptr, n64, s64, stn, sts, smask, T_IS_LABEL, HAS_IGNORE, ign_i)
        for c in tl.range(0, C, loop_unroll_factor=UNROLL):
            acc, accd = _sig_class(x_base, t_ptr, w_ptr, pw_ptr, go_ptr, map_ptr, dx_base, c, n64, s64, smask,
                                   lab, pv, bn, a_neg, gs, acc, accd, C, S, stn, stc, sts, sxc, sxs, sdc, sds,
                                   label_offset, ign_f, gamma, alpha, scale0, KIND, T_IS_LABEL, HAS_IGNORE,
                                   HAS_W, HAS_PW, HAS_ALPHA, WANT_LOSS, WANT_MAP, GO, WANT_DX)
        if WANT_LOSS and T_IS_LABEL:
            accb += tl.where(pv & ((lab < 0) | (lab >= C + label_offset)), 1.0, 0.0)

    if WANT_LOSS:
        a0 = tl.sum(acc, axis=0)
        if FINISH:
            _finish(loss_ptr, out_ptr, den_ptr, cnt_ptr, pid, tl.num_programs(0), a0, 0.0, tl.sum(accd, axis=0),
                    tl.sum(accb, axis=0), scale0, 0.0, NORM, FIN_BLOCK)
        else:
            tl.store(loss_ptr + pid * 2, a0)
            tl.store(loss_ptr + pid * 2 + 1, 0.0)


# --------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------

def _blocks(C: int, block_s=None, block_c=None):
    """-> (unrolled, a class-count representative, BLOCK_S): the kernels'
    choices for C; C's of one representative (the next power of two up to
    MAX_UNROLL_C, 0 beyond) compile alike but for the unroll count."""
    unrolled = C <= MAX_UNROLL_C
    return unrolled, triton.next_power_of_2(max(C, 1)) if unrolled else 0, block_pixels(CE, C, block_s)


# The dense-target softmax kernel streams [BLOCK_C, BLOCK_S] tiles of about
# DENSE_TILE elements: one class tile up to DENSE_MAX_SINGLE_C classes, class
# chunks of DENSE_LOOP_BLOCK_C beyond.
DENSE_TILE, DENSE_MAX_SINGLE_C, DENSE_LOOP_BLOCK_C, DENSE_WARPS = 2048, 64, 16, 8


def _dense_blocks(C: int, block_s=None, block_c=None):
    """-> (SINGLE_C, BLOCK_C, BLOCK_S) of the dense softmax kernel's tiles."""
    return blocks(C, block_s, block_c, tile=DENSE_TILE, max_single_c=DENSE_MAX_SINGLE_C,
                  loop_block_c=DENSE_LOOP_BLOCK_C)


def block_pixels(kind: int, C: int, block_s=None, block_c=None) -> int:
    """Pixels per tile (BLOCK_S) of ``kind``'s kernel (every kind: BLOCK_S);
    ``block_s`` overrides. ``block_c`` is accepted and ignored (the classes
    are a per-thread loop)."""
    return int(block_s) if block_s is not None else BLOCK_S


def default_chunks(N: int, C: int, S: int, sm_count: int = 132, waves: int = 4, kind: int = CE) -> int:
    """P for a device of ``sm_count`` SMs: about ``waves`` programs per SM
    over the grid of N * P programs, each streaming a whole number of pixel
    blocks (see ``chunks``; one block is enough, so small images still give
    several programs per SM)."""
    return chunks(N, S, block_pixels(kind, C), sm_count, waves, min_blocks=1)


def launch_pixel(x, t, t_is_label: bool, N: int, C: int, S: int, P: int, kind: int,
                 label_offset: int, has_ignore: bool, ignore_value: float,
                 w, pw, beta,
                 gamma: float, alpha: float, smoothing: float, scale0: float, scale1: float,
                 loss, map, go, dx,
                 *, block_s: int | None = None, block_c: int | None = None,
                 out=None, norm: int = NORM_SUM, den=None, counter=None) -> None:
    """Pixel-loss sums / map / gradient; see the module doc.

    x: [N, C, S] logits (any strides, f32/f16/bf16); t: [N, S] labels if
    ``t_is_label`` else [N, C, S] dense (sigmoid kinds and FOCAL_SOFTMAX, whose
    map and go are then [N, C, S]; bool is viewed as uint8). w, pw: [C],
    beta: [N] contiguous float32 or None. loss, map, go,
    dx: tensors or None (see the module doc for layouts); every given output
    is fully written. ``block_s`` / ``block_c`` override the tile (tests,
    tuning).

    ``out`` (float32 0-d) asks for the reduced loss in the same launch:
    ``loss`` is then a float32 workspace of N * P * 4 elements, out =
    (scale0 * sum l0 + scale1 * sum l1) / normalizer and ``den`` (float32
    0-d) = the normalizer, with ``norm`` NORM_SUM (1), NORM_COUNT (valid
    pixels; for the sigmoid kinds valid elements) or NORM_WEIGHT (summed w_y
    of the valid pixels, softmax kinds); both NaN if a non-ignored label is
    outside [0, label_offset + C) Without ``out``, ``den`` with a 0-d ``go`` scales dx
    by go / den (the backward of that loss). ``counter``: the int32 ticket
    counter of the reduction (zero between launches: each launch's last
    program resets it; default a fresh zero).
    """
    kind = int(kind)
    if kind not in SOFTMAX_KINDS + SIGMOID_KINDS:
        raise ValueError(f"unknown pixel loss kind {kind}")
    softmax = kind in SOFTMAX_KINDS
    if softmax and not t_is_label and kind != FOCAL_SOFTMAX:
        raise ValueError("softmax pixel losses other than focal take class-index targets")
    if softmax and not t_is_label and (out is not None or den is not None):
        raise ValueError("the in-kernel reduction takes class-index targets")
    if out is not None and not softmax and norm == NORM_WEIGHT:
        raise ValueError("the sigmoid kinds normalize by a count or not at all")
    want_loss, want_map, want_dx = loss is not None, map is not None, dx is not None
    has_go = want_dx and go is not None
    if not (want_loss or want_map or want_dx):
        return
    if N * C * S == 0:  # nothing to stream; sums over nothing are 0
        if want_loss and out is None:
            loss.zero_()
        if out is not None:
            out.zero_()
            den.fill_(1.0 if norm == NORM_SUM else 0.0)
        return

    t, (stn, stc, sts), has_ignore, ign_i, ign_f = target_args(t, t_is_label, has_ignore,
                                                               ignore_value)

    dense_softmax = softmax and not t_is_label
    BLOCK_S = (_dense_blocks(C, block_s, block_c)[2] if dense_softmax
               else block_pixels(kind, C, block_s, block_c))
    if want_loss:
        P = int(P)
        L = chunk_len(S, P, BLOCK_S)
    else:  # one program per (image, pixel block)
        P = -(-S // BLOCK_S)
        L = BLOCK_S
    if N * P == 0:
        return
    # absent optional tensors are None (the kernel's flags keep them unread);
    # dx stands in for itself with x, whose dtype it has (the kernel forms its base pointer)
    loss_ = loss if want_loss else None
    map_ = map if want_map else None
    go_ = go if has_go else None
    dx_ = dx if want_dx else x
    sd = (dx.stride(0), dx.stride(1), dx.stride(2)) if want_dx else (0, 0, 0)
    if dense_softmax:
        wrap(_pixel_softmax_dense_kernel)[(N * P,)](
            x, t, w, go_, loss_, map_, dx_,
            C, S, P, L,
            x.stride(0), x.stride(1), x.stride(2),
            stn, stc, sts,
            sd[0], sd[1], sd[2],
            ign_f, float(gamma), float(scale0),
            HAS_IGNORE=bool(has_ignore), HAS_W=w is not None, HAS_GO=has_go,
            WANT_LOSS=want_loss, WANT_MAP=want_map, WANT_DX=want_dx, BLOCK_S=BLOCK_S,
            BLOCK_C=_dense_blocks(C, block_s, block_c)[1], num_warps=DENSE_WARPS,
        )
        return
    finish = out is not None
    if finish and loss.numel() < N * P * 4:
        raise ValueError(f"the reduction workspace needs {N * P * 4} elements, got {loss.numel()}")
    common = dict(WANT_LOSS=want_loss, WANT_MAP=want_map, WANT_DX=want_dx, BLOCK_S=BLOCK_S,
                  FINISH=finish, NORM=int(norm) if finish else NORM_SUM,
                  GO=(2 if den is not None and not finish else 1) if has_go else 0,
                  FIN_BLOCK=FIN_BLOCK, num_warps=WARPS)
    out_ = out if finish else None
    if finish and counter is None:
        import torch
        counter = torch.zeros(1, dtype=torch.int32, device=x.device)
    cnt_ = counter if finish else None
    if softmax:
        wrap(_pixel_softmax_kernel)[(N * P,)](
            x, t, w, go_, den, loss_, out_, cnt_, map_, dx_,
            C, S, P, L,
            x.stride(0), x.stride(1), x.stride(2),
            stn, sts,
            sd[0], sd[1], sd[2],
            int(label_offset), ign_i,
            float(gamma), float(smoothing), float(scale0), float(scale1),
            KIND=kind, HAS_IGNORE=bool(has_ignore), HAS_W=w is not None,
            HAS_SMOOTH=kind != FOCAL_SOFTMAX and float(smoothing) != 0.0,
            CONST_C=C if C <= MAX_UNROLL_C and not want_dx else 0, UNROLL=SOFTMAX_UNROLL, STAGES=SOFTMAX_STAGES,
            **common,
        )
    else:
        wrap(_pixel_sigmoid_kernel)[(N * P,)](
            x, t, w, pw, beta,
            go_, den, loss_, out_, cnt_, map_, dx_,
            C, S, P, L,
            x.stride(0), x.stride(1), x.stride(2),
            stn, stc, sts,
            sd[0], sd[1], sd[2],
            int(label_offset), ign_i, ign_f,
            float(gamma), float(alpha), float(scale0),
            KIND=kind, T_IS_LABEL=bool(t_is_label), HAS_IGNORE=bool(has_ignore),
            HAS_W=w is not None, HAS_PW=kind == BCE and pw is not None,
            HAS_BETA=kind == BCE and beta is not None, HAS_ALPHA=float(alpha) >= 0.0,
            UNROLL=SIGMOID_UNROLL, STAGES=SIGMOID_STAGES, **common,
        )
