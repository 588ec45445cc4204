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

Forward of a mean loss = (loss, dx) in one read of x (the gradient is written
in the forward); reduction "none" = (map); its backward = (go, dx). Without
``loss`` the grid is one program per (image, pixel block) instead.

Validity: class-index targets: v = !(ignore) per pixel. A label outside
[label_offset, label_offset + C) is, for the softmax kinds, never used as an
index and counts as invalid (contributes 0; the Python layer rejects such
labels beforehand); for the sigmoid kinds it is a valid pixel with an
all-zero target, as in the reference (binary labels {0, 1} with C = 1 and
label_offset = 1), like csrc/common/pixel.h. Dense targets (sigmoid kinds):
v = !(t == ignore) per element, t = 0 where invalid.

Closed-form gradients, with p = softmax(x), y the label, s = sigmoid(x); the
softmax dx of every kind has the form

    dx_c = a*p_c - b*[c == y] - d*w_c - f*[c == 0] - h*[c >= 1]*exp(x_c - lse_fg)

with per-pixel coefficients a, b, d, f, h (zero for invalid pixels), so the
dx pass needs only max and log-sum (and those over c >= 1 for FUSED) and
1 - p_y beside x.

Softmax kinds, two code paths chosen by the constexpr SINGLE_C:

* C <= MAX_SINGLE_C: all classes of a pixel block sit in one
  [BLOCK_C, BLOCK_S] register tile; x is read once (loss, map and dx).
* larger C: loop over class chunks of LOOP_BLOCK_C: an online pass gives
  max, sum of exp, the sum of exp without the label's class (1 - p_y without
  cancellation, for focal), x_y, w_y and (smoothing) sum_c w_c x_c, and for
  FUSED the same over c >= 1; the terms follow per pixel, and a second pass
  writes dx. So x is read 1x (loss / map) or 2x (with dx; the re-read hits L2
  when BLOCK_S * C * itemsize per program is small).

Sigmoid kinds are elementwise: a loop over class chunks (one chunk when
C <= MAX_SINGLE_C), log s = -softplus(-x) and log(1 - s) = -softplus(x).
Powers (1 - p)^gamma use exp(gamma * log), with 0^0 = 1; the focal
gradients' (1 - p)^(gamma - 1) terms are written as (1 - p)^gamma * r with a
bounded r so gamma < 1 and tiny 1 - p neither overflow nor give 0 * inf.

Offsets are 64-bit (image, class, pixel indices cast to int64 before they
multiply strides).

GPU tuning left to do (correctness verified in the Triton interpreter only):
TILE / num_warps per kind and path, MAX_SINGLE_C (softmax with dx keeps
about 4 tile-shaped fp32 values live), LOOP_BLOCK_C, exp vs exp2, and
``default_chunks`` (the loss grid is N * P programs, each streaming L pixels).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import (blocks, chunk_bounds, chunk_len, chunks, load_labels, load_target_tile, load_tile,
                      target_args, wrap)

CE, FOCAL_SOFTMAX, FUSED, BCE, FOCAL_SIGMOID = 0, 1, 2, 3, 4
SOFTMAX_KINDS = (CE, FOCAL_SOFTMAX, FUSED)
SIGMOID_KINDS = (BCE, FOCAL_SIGMOID)

# Register tile (classes x pixels) of one program, as in region.py.
TILE = 2048
# Largest C handled by a single class tile; above it the class loop is used.
MAX_SINGLE_C = 64
# Class-chunk size of the looped path (C > MAX_SINGLE_C).
LOOP_BLOCK_C = 16
NUM_WARPS = 8


# --------------------------------------------------------------------------
# device helpers
# --------------------------------------------------------------------------

@triton.jit
def _log1p(u):
    """log(1 + u), accurate for small |u| (u > -1; u == -1 gives 0, callers
    select another branch there)."""
    v = 1.0 + u
    d = v - 1.0
    tiny = d == 0.0
    return tl.where(tiny, u, tl.log(tl.where(v > 0.0, v, 1.0)) * (u / tl.where(tiny, 1.0, d)))


@triton.jit
def _softplus(z):
    """log(1 + exp(z)), stable."""
    return tl.maximum(z, 0.0) + _log1p(tl.exp(-tl.abs(z)))


@triton.jit
def _pow(a, g):
    """a^g for a >= 0, with 0^0 = 1 and 0^g = 0 (g > 0)."""
    pos = a > 0.0
    zero_pow = tl.where(g == 0.0, 1.0, 0.0)
    return tl.where(pos, tl.exp(g * tl.log(tl.where(pos, a, 1.0))), zero_pow)


@triton.jit
def _online(m, ls, xm):
    """Merge a [BLOCK_C, BLOCK_S] tile (excluded entries -inf) into the running
    (max, sum of exp(x - max)); -inf max (nothing seen yet) stays safe."""
    m_new = tl.maximum(m, tl.max(xm, axis=0))
    mr = tl.where(m_new == float("-inf"), 0.0, m_new)
    ls = ls * tl.exp(m - mr) + tl.sum(tl.exp(xm - mr[None, :]), axis=0)
    return m_new, ls


@triton.jit
def _sm_tile(x, c64, cmask, y, w_ptr, m, ls, lny, xy, wy, x0, swx, W, mf, lsf,
             KIND: tl.constexpr, HAS_W: tl.constexpr, HAS_SMOOTH: tl.constexpr):
    """One class tile of the softmax online pass: updates the running per-pixel
    max / sums (m, ls: all classes, lny: all but y, mf, lsf: c >= 1), gathers
    x_y, w_y, x_0 and (smoothing) sum_c w_c x_c; W = sum_c w_c (a scalar)."""
    onehot = c64[:, None] == y[None, :]
    xm = tl.where(cmask[:, None], x, float("-inf"))
    m_new = tl.maximum(m, tl.max(xm, axis=0))
    mr = tl.where(m_new == float("-inf"), 0.0, m_new)
    scale = tl.exp(m - mr)
    e = tl.exp(xm - mr[None, :])
    ls = ls * scale + tl.sum(e, axis=0)
    lny = lny * scale + tl.sum(tl.where(onehot, 0.0, e), axis=0)
    m = m_new
    xy += tl.sum(tl.where(onehot, x, 0.0), axis=0)
    if HAS_W:
        wv = tl.load(w_ptr + c64, mask=cmask, other=0).to(tl.float32)
        wy += tl.sum(tl.where(onehot, wv[:, None], 0.0), axis=0)
        if HAS_SMOOTH:
            W += tl.sum(wv, axis=0)
            swx += tl.sum(tl.where(cmask[:, None], wv[:, None] * x, 0.0), axis=0)
    else:
        wy += tl.sum(tl.where(onehot, 1.0, 0.0), axis=0)
        if HAS_SMOOTH:
            W += tl.sum(tl.where(cmask, 1.0, 0.0), axis=0)
            swx += tl.sum(tl.where(cmask[:, None], x, 0.0), axis=0)
    if KIND == 2:
        x0 += tl.sum(tl.where(c64[:, None] == 0, x, 0.0), axis=0)
        mf, lsf = _online(mf, lsf, tl.where((c64 >= 1)[:, None], xm, float("-inf")))
    return m, ls, lny, xy, wy, x0, swx, W, mf, lsf


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
        logpy = tl.where(q < 0.5, _log1p(-q), (xy - m) - lls)
        py = tl.exp(logpy)
        qg = _pow(q, gamma)
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
            l1_fg = tl.where(p0 < 0.5, -_log1p(-p0), (m - mf) + (lls - llsf))
            bg = y == 0
            l1 = tl.where(bg, (m - x0) + lls, l1_fg)
            a += G1
            f = tl.where(bg, G1, 0.0)
            h = tl.where(bg, 0.0, G1)
    return l0, l1, a, b, d, f, h, lls, q, llsf


@triton.jit
def _sm_dx(x, c64, cmask, y, w_ptr, a, b, d, f, h, m, lls, q, mf, llsf,
           KIND: tl.constexpr, HAS_W: tl.constexpr, HAS_SMOOTH: tl.constexpr):
    """dx of one class tile from the per-pixel coefficients (see module doc).
    p = exp((x - m) - log(ls)) keeps x - m exact near the max; at c == y,
    a*p_y - b = (a - b)*p_y - b*(1 - p_y) with 1 - p_y = q (no cancellation)."""
    p = tl.exp((x - m[None, :]) - lls[None, :])
    onehot = c64[:, None] == y[None, :]
    dx = tl.where(onehot, (a - b)[None, :] * p - (b * q)[None, :], a[None, :] * p)
    if HAS_SMOOTH:
        if HAS_W:
            wv = tl.load(w_ptr + c64, mask=cmask, other=0).to(tl.float32)
            dx -= d[None, :] * wv[:, None]
        else:
            dx -= d[None, :]
    if KIND == 2:
        fg = (c64 >= 1)[:, None]
        mfs = tl.where(mf == float("-inf"), 0.0, mf)
        qf = tl.exp((tl.where(fg, x, 0.0) - mfs[None, :]) - llsf[None, :])
        dx -= tl.where(c64[:, None] == 0, f[None, :], 0.0)
        dx -= tl.where(fg, h[None, :] * qf, 0.0)
    return dx


# --------------------------------------------------------------------------
# softmax kinds (CE, FOCAL_SOFTMAX, FUSED)
# --------------------------------------------------------------------------

@triton.jit
def _pixel_softmax_kernel(
    x_ptr, t_ptr, w_ptr, go_ptr, loss_ptr, map_ptr, dx_ptr,
    C, S, P, L,
    sxn, sxc, sxs,
    stn, sts,
    sdn, sdc, sds,
    label_offset, ign_i,
    gamma, smoothing, scale0, scale1,
    KIND: tl.constexpr, HAS_IGNORE: tl.constexpr, HAS_W: tl.constexpr,
    HAS_SMOOTH: tl.constexpr, WANT_LOSS: tl.constexpr, WANT_MAP: tl.constexpr,
    HAS_GO: tl.constexpr, WANT_DX: tl.constexpr,
    SINGLE_C: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n64, start, end = chunk_bounds(pid, P, L, S)
    x_base = x_ptr + n64 * sxn
    dx_base = dx_ptr + n64 * sdn
    ar_c = tl.arange(0, BLOCK_C)
    ar_s = tl.arange(0, BLOCK_S)
    acc0 = tl.zeros([BLOCK_S], tl.float32)
    acc1 = tl.zeros([BLOCK_S], tl.float32)

    for s0 in range(start, end, BLOCK_S):
        s64 = s0 + ar_s.to(tl.int64)
        smask = s64 < end
        lab, pv = load_labels(t_ptr, n64, s64, stn, sts, smask, True, HAS_IGNORE, ign_i)
        y = lab - label_offset
        v = pv & (y >= 0) & (y < C)
        if HAS_GO:
            g = tl.load(go_ptr + n64 * S + s64, mask=v, other=0).to(tl.float32)
        else:
            g = tl.full([BLOCK_S], 1.0, tl.float32)

        m = tl.full([BLOCK_S], float("-inf"), tl.float32)
        mf = tl.full([BLOCK_S], float("-inf"), tl.float32)
        ls = tl.zeros([BLOCK_S], tl.float32)
        lny = tl.zeros([BLOCK_S], tl.float32)
        xy = tl.zeros([BLOCK_S], tl.float32)
        wy = tl.zeros([BLOCK_S], tl.float32)
        x0 = tl.zeros([BLOCK_S], tl.float32)
        swx = tl.zeros([BLOCK_S], tl.float32)
        lsf = tl.zeros([BLOCK_S], tl.float32)
        W = tl.sum(tl.zeros([BLOCK_C], tl.float32), axis=0)
        if SINGLE_C:
            c64 = ar_c.to(tl.int64)
            cmask = c64 < C
            mask = cmask[:, None] & smask[None, :]
            x = load_tile(x_base, c64, s64, sxc, sxs, mask)
            m, ls, lny, xy, wy, x0, swx, W, mf, lsf = _sm_tile(
                x, c64, cmask, y, w_ptr, m, ls, lny, xy, wy, x0, swx, W, mf, lsf,
                KIND, HAS_W, HAS_SMOOTH)
        else:
            for c0 in range(0, C, BLOCK_C):
                c64 = c0 + ar_c.to(tl.int64)
                cmask = c64 < C
                mask = cmask[:, None] & smask[None, :]
                x = load_tile(x_base, c64, s64, sxc, sxs, mask)
                m, ls, lny, xy, wy, x0, swx, W, mf, lsf = _sm_tile(
                    x, c64, cmask, y, w_ptr, m, ls, lny, xy, wy, x0, swx, W, mf, lsf,
                    KIND, HAS_W, HAS_SMOOTH)

        l0, l1, a, b, d, f, h, lls, q, llsf = _sm_terms(
            y, v, g, m, ls, lny, xy, wy, x0, swx, W, mf, lsf, C,
            gamma, smoothing, scale0, scale1, KIND, HAS_SMOOTH)
        if WANT_LOSS:
            acc0 += tl.where(v, l0, 0.0)
            acc1 += tl.where(v, l1, 0.0)
        if WANT_MAP:
            tl.store(map_ptr + n64 * S + s64, tl.where(v, scale0 * l0 + scale1 * l1, 0.0),
                     mask=smask)
        if WANT_DX:
            if SINGLE_C:
                dx = _sm_dx(x, c64, cmask, y, w_ptr, a, b, d, f, h, m, lls, q, mf, llsf,
                            KIND, HAS_W, HAS_SMOOTH)
                tl.store(dx_base + c64[:, None] * sdc + s64[None, :] * sds,
                         dx.to(dx_ptr.dtype.element_ty), mask=mask)
            else:
                for c0 in range(0, C, BLOCK_C):
                    c64 = c0 + ar_c.to(tl.int64)
                    cmask = c64 < C
                    mask = cmask[:, None] & smask[None, :]
                    x = load_tile(x_base, c64, s64, sxc, sxs, mask)
                    dx = _sm_dx(x, c64, cmask, y, w_ptr, a, b, d, f, h, m, lls, q, mf, llsf,
                                KIND, HAS_W, HAS_SMOOTH)
                    tl.store(dx_base + c64[:, None] * sdc + s64[None, :] * sds,
                             dx.to(dx_ptr.dtype.element_ty), mask=mask)

    if WANT_LOSS:
        tl.store(loss_ptr + pid * 2, tl.sum(acc0, axis=0))
        tl.store(loss_ptr + pid * 2 + 1, tl.sum(acc1, axis=0))


# --------------------------------------------------------------------------
# sigmoid kinds (BCE, FOCAL_SIGMOID)
# --------------------------------------------------------------------------

@triton.jit
def _pixel_sigmoid_kernel(
    x_ptr, t_ptr, w_ptr, pw_ptr, beta_ptr, go_ptr, loss_ptr, map_ptr, dx_ptr,
    C, S, P, L,
    sxn, sxc, sxs,
    stn, stc, sts,
    sdn, sdc, sds,
    label_offset, ign_i, ign_f,
    gamma, alpha, scale0,
    KIND: tl.constexpr, T_IS_LABEL: tl.constexpr, HAS_IGNORE: tl.constexpr,
    HAS_W: tl.constexpr, HAS_PW: tl.constexpr, HAS_BETA: tl.constexpr,
    HAS_ALPHA: tl.constexpr, WANT_LOSS: tl.constexpr, WANT_MAP: tl.constexpr,
    HAS_GO: tl.constexpr, WANT_DX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n64, start, end = chunk_bounds(pid, P, L, S)
    x_base = x_ptr + n64 * sxn
    dx_base = dx_ptr + n64 * sdn
    ar_c = tl.arange(0, BLOCK_C)
    ar_s = tl.arange(0, BLOCK_S)
    acc = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    if HAS_BETA:
        bn = tl.load(beta_ptr + n64).to(tl.float32)
        a_neg = 1.0 - bn
    else:
        bn = 1.0
        a_neg = 1.0

    for s0 in range(start, end, BLOCK_S):
        s64 = s0 + ar_s.to(tl.int64)
        smask = s64 < end
        # a label out of [label_offset, label_offset + C): all-zero target, still valid
        lab, pv = load_labels(t_ptr, n64, s64, stn, sts, smask, T_IS_LABEL, HAS_IGNORE, ign_i)
        for c0 in range(0, C, BLOCK_C):
            c64 = c0 + ar_c.to(tl.int64)
            cmask = c64 < C
            mask = cmask[:, None] & smask[None, :]
            x = load_tile(x_base, c64, s64, sxc, sxs, mask)
            t, v = load_target_tile(t_ptr, n64, c64, s64, stn, stc, sts, mask & pv[None, :],
                                    T_IS_LABEL, HAS_IGNORE, lab, label_offset, ign_f)
            if HAS_W:
                wc = tl.load(w_ptr + c64, mask=cmask, other=0).to(tl.float32)[:, None]
            else:
                wc = 1.0
            sp_neg = _softplus(-x)  # -log s
            sp_pos = _softplus(x)   # -log(1 - s)
            s = tl.exp(-sp_neg)
            oms = tl.exp(-sp_pos)
            if KIND == 3:
                if HAS_PW:
                    a_pos = tl.load(pw_ptr + c64, mask=cmask, other=0).to(tl.float32)[:, None] * bn
                else:
                    a_pos = bn
                l0 = wc * (a_pos * t * sp_neg + a_neg * (1.0 - t) * sp_pos)
                dl = wc * (a_neg * (1.0 - t) * s - a_pos * t * oms)
            else:
                ce = t * sp_neg + (1.0 - t) * sp_pos
                omp = s * (1.0 - t) + oms * t  # 1 - p_t
                pg = _pow(omp, gamma)
                # s(1-s) / (1-p_t) <= 1: (1-p_t)^(gamma-1) s(1-s) = pg * r
                r = tl.where(omp > 0.0, s * oms / tl.where(omp > 0.0, omp, 1.0), 0.0)
                if HAS_ALPHA:
                    at = alpha * t + (1.0 - alpha) * (1.0 - t)
                else:
                    at = 1.0
                l0 = wc * at * ce * pg
                # the factor's own gradient: none where it is constant (1 - p_t <= 0, gamma = 0)
                fd = tl.where((omp > 0.0) & (gamma > 0.0), gamma * ce * pg * r * (2.0 * t - 1.0), 0.0)
                dl = wc * at * ((s - t) * pg - fd)
            if WANT_LOSS:
                acc += tl.where(v, l0, 0.0)
            moff = (n64 * C + c64[:, None]) * S + s64[None, :]
            if WANT_MAP:
                tl.store(map_ptr + moff, tl.where(v, scale0 * l0, 0.0), mask=mask)
            if WANT_DX:
                if HAS_GO:
                    g = tl.load(go_ptr + moff, mask=v, other=0).to(tl.float32)
                else:
                    g = 1.0
                dx = (tl.where(v, g, 0.0) * scale0) * dl  # invalid: 0·dl (NaN stays NaN, as the reference)
                tl.store(dx_base + c64[:, None] * sdc + s64[None, :] * sds,
                         dx.to(dx_ptr.dtype.element_ty), mask=mask)

    if WANT_LOSS:
        tl.store(loss_ptr + pid * 2, tl.sum(tl.sum(acc, axis=1), axis=0))
        tl.store(loss_ptr + pid * 2 + 1, 0.0)


# --------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------

def _blocks(C: int, block_s, block_c):
    """-> (SINGLE_C, BLOCK_C, BLOCK_S)."""
    return blocks(C, block_s, block_c, tile=TILE, max_single_c=MAX_SINGLE_C,
                  loop_block_c=LOOP_BLOCK_C)


def default_chunks(N: int, C: int, S: int, sm_count: int = 132, waves: int = 4) -> int:
    """P for a device of ``sm_count`` SMs: about ``waves`` programs per SM
    over the grid of N * P programs, each streaming a whole number of pixel
    blocks (see ``chunks``). (Programs per SM to tune on GPU.)"""
    _, _, block_s = _blocks(C, None, None)
    return chunks(N, S, block_s, sm_count, waves)


def launch_pixel(x, t, t_is_label: bool, N: int, C: int, S: int, P: int, kind: int,
                 label_offset: int, has_ignore: bool, ignore_value: float,
                 w, pw, beta,
                 gamma: float, alpha: float, smoothing: float, scale0: float, scale1: float,
                 loss, map, go, dx,
                 *, block_s: int | None = None, block_c: int | None = None) -> None:
    """Pixel-loss sums / map / gradient; see the module doc.

    x: [N, C, S] logits (any strides, f32/f16/bf16); t: [N, S] labels if
    ``t_is_label`` else [N, C, S] dense (sigmoid kinds only; bool is viewed as
    uint8). w, pw: [C], beta: [N] contiguous float32 or None. loss, map, go,
    dx: tensors or None (see the module doc for layouts); every given output
    is fully written. ``block_s`` / ``block_c`` override the tile (tests,
    tuning).
    """
    kind = int(kind)
    if kind not in SOFTMAX_KINDS + SIGMOID_KINDS:
        raise ValueError(f"unknown pixel loss kind {kind}")
    softmax = kind in SOFTMAX_KINDS
    if softmax and not t_is_label:
        raise ValueError("softmax pixel losses take class-index targets")
    want_loss, want_map, want_dx = loss is not None, map is not None, dx is not None
    has_go = want_dx and go is not None
    if not (want_loss or want_map or want_dx):
        return
    if N * C * S == 0:  # nothing to stream; sums over nothing are 0
        if want_loss:
            loss.zero_()
        return

    t, (stn, stc, sts), has_ignore, ign_i, ign_f = target_args(t, t_is_label, has_ignore,
                                                               ignore_value)

    single, BLOCK_C, BLOCK_S = _blocks(C, block_s, block_c)
    if want_loss:
        P = int(P)
        L = chunk_len(S, P, BLOCK_S)
    else:  # one program per (image, pixel block)
        P = -(-S // BLOCK_S)
        L = BLOCK_S
    if N * P == 0:
        return
    dummy = x
    w_ = w if w is not None else dummy
    loss_ = loss if want_loss else dummy
    map_ = map if want_map else dummy
    go_ = go if has_go else dummy
    dx_ = dx if want_dx else dummy
    sd = (dx.stride(0), dx.stride(1), dx.stride(2)) if want_dx else (0, 0, 0)
    common = dict(WANT_LOSS=want_loss, WANT_MAP=want_map, HAS_GO=has_go, WANT_DX=want_dx,
                  BLOCK_C=BLOCK_C, BLOCK_S=BLOCK_S, num_warps=NUM_WARPS)
    if softmax:
        wrap(_pixel_softmax_kernel)[(N * P,)](
            x, t, w_, go_, loss_, map_, dx_,
            C, S, P, L,
            x.stride(0), x.stride(1), x.stride(2),
            stn, sts,
            sd[0], sd[1], sd[2],
            int(label_offset), ign_i,
            float(gamma), float(smoothing), float(scale0), float(scale1),
            KIND=kind, HAS_IGNORE=bool(has_ignore), HAS_W=w is not None,
            HAS_SMOOTH=kind != FOCAL_SOFTMAX and float(smoothing) != 0.0,
            SINGLE_C=single, **common,
        )
    else:
        wrap(_pixel_sigmoid_kernel)[(N * P,)](
            x, t, w_, pw if pw is not None else dummy, beta if beta is not None else dummy,
            go_, loss_, map_, dx_,
            C, S, P, L,
            x.stride(0), x.stride(1), x.stride(2),
            stn, stc, sts,
            sd[0], sd[1], sd[2],
            int(label_offset), ign_i, ign_f,
            float(gamma), float(alpha), float(scale0),
            KIND=kind, T_IS_LABEL=bool(t_is_label), HAS_IGNORE=bool(has_ignore),
            HAS_W=w is not None, HAS_PW=kind == BCE and pw is not None,
            HAS_BETA=kind == BCE and beta is not None, HAS_ALPHA=float(alpha) >= 0.0,
            **common,
        )
