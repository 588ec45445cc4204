"""Triton kernels of the boxes family (IoU / GIoU / DIoU / CIoU, pairwise and
aligned). Installed as ``segfast.triton_kernels.boxes``; imports cleanly without
a GPU. Same math and ABI as the C++ / CUDA kernels (csrc/common/boxes.h,
semantics in segfast/reference/boxes.py); computed in fp32.

* ``launch_pairwise``: program (b, n-block, m-block) writes a [BLOCK_N, BLOCK_M]
  tile of out [B, N, M].
* ``launch_pairwise_grad``: d1 [B, N, 4]: program (b, n-block) loops over the
  m-blocks, adding each [GRAD_BR, GRAD_BL] tile's gradients into a register
  tile that is summed over m once after the loop; d2 likewise over n (its
  tile transposed, so go's contiguous m runs across the lanes). One writer
  per output row: no atomics, deterministic. Two pairs per thread keep the
  gradients at <= 90 registers without spills in the configurations
  measured (CIoU / DIoU, each format, float16 to float64; sm_80 and sm_90).
* ``launch_aligned``: program per block of pairs writes out = offset + sign *
  value and gscale * d value / d box for both sets (one pass).

atan is Cephes' float atanf (range reduction + a degree-9 odd polynomial, ~1e-7
relative): libdevice's is not available in the interpreter. GPU tuning (block
sizes, warps) is left to do: verified in the Triton interpreter only.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._common import wrap

BLOCK_N, BLOCK_M = 32, 64
# the gradient's tile: 16 own x 16 other boxes, 2 pairs per thread (<= 90 registers: >= 5 programs per SM)
GRAD_BR, GRAD_BL, GRAD_WARPS = 16, 16, 4
BLOCK_K = 256
PI = tl.constexpr(3.141592653589793)  # a constexpr global: jit code may read it


@triton.jit
def _atan(x):
    """atan(x) in fp32 (Cephes atanf)."""
    ax = tl.abs(x)
    big = ax > 2.414213562373095
    mid = (ax > 0.4142135623730950) & (ax <= 2.414213562373095)
    base = tl.where(big, PI / 2, tl.where(mid, PI / 4, 0.0))
    r = tl.where(big, -1.0 / tl.where(big, ax, 1.0), tl.where(mid, (ax - 1.0) / (ax + 1.0), ax))
    z = r * r
    p = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1) * z * r + r
    y = base + p
    return tl.where(x < 0, -y, y)


@triton.jit
def _atan_ratio(w, h):
    """atan(w / h), pi/2·sign(w) for h = 0 (0 for w = h = 0)."""
    nz = h != 0.0
    lim = tl.where(w > 0.0, PI / 2, tl.where(w < 0.0, -PI / 2, 0.0))
    return tl.where(nz, _atan(w / tl.where(nz, h, 1.0)), lim)


@triton.jit
def _tie_lt(a, b):
    """Weight of a in d min(a, b): 1 if a < b, 0.5 on a tie, 0 otherwise."""
    return tl.where(a < b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def _denominator(d, eps, LOSS: tl.constexpr):
    """A ratio's denominator (+ eps in the losses), whether it is > 0, and it
    with 1 where not (a safe divisor; the ratio is 0 there)."""
    if LOSS:
        d = d + eps
    ok = d > 0.0
    return d, ok, tl.where(ok, d, 1.0)


@triton.jit
def _load_box(ptr, off, s4, mask, FMT: tl.constexpr):
    a = tl.load(ptr + off, mask=mask, other=0).to(tl.float32)
    b = tl.load(ptr + off + s4, mask=mask, other=0).to(tl.float32)
    c = tl.load(ptr + off + 2 * s4, mask=mask, other=0).to(tl.float32)
    d = tl.load(ptr + off + 3 * s4, mask=mask, other=0).to(tl.float32)
    if FMT == 1:  # xywh
        return a, b, a + c, b + d
    elif FMT == 2:  # cxcywh
        return a - c * 0.5, b - d * 0.5, a + c * 0.5, b + d * 0.5
    else:
        return a, b, c, d


@triton.jit
def _grad_fmt(d0, d1, d2, d3, FMT: tl.constexpr):
    """A gradient with respect to xyxy -> with respect to the box's own format."""
    if FMT == 1:
        return d0 + d2, d1 + d3, d2, d3
    elif FMT == 2:
        return d0 + d2, d1 + d3, 0.5 * (d2 - d0), 0.5 * (d3 - d1)
    else:
        return d0, d1, d2, d3


@triton.jit
def _pair(px1, py1, px2, py2, gx1, gy1, gx2, gy2, eps, gout,
          KIND: tl.constexpr, LOSS: tl.constexpr, GRAD: tl.constexpr):
    """-> (value, d value/d p (4), d value/d g (4)) times gout; the gradients are 0 without GRAD.
    NaN for a pair with a non-finite coordinate."""
    allc = px1 + py1 + px2 + py2 + gx1 + gy1 + gx2 + gy2
    nonfin = allc - allc  # 0, or NaN for a NaN / inf coordinate
    wp = px2 - px1
    hp = py2 - py1
    wg = gx2 - gx1
    hg = gy2 - gy1
    iw = tl.minimum(px2, gx2) - tl.maximum(px1, gx1)
    ih = tl.minimum(py2, gy2) - tl.maximum(py1, gy1)
    pos = (iw > 0.0) & (ih > 0.0)
    inter = tl.where(pos, iw * ih, 0.0)
    uni = wp * hp + wg * hg - inter
    ud, okd, uds = _denominator(uni, eps, LOSS)
    iou = tl.where(okd, inter / uds, 0.0)
    val = iou
    zero = iou * 0.0
    g_inter = tl.where(okd, gout / uds, 0.0)
    g_uni = tl.where(okd, -gout * inter / (uds * uds), 0.0)
    g_cw = zero
    g_ch = zero
    g_dx = zero
    g_dy = zero
    g_wp = zero
    g_hp = zero
    g_wg = zero
    g_hg = zero
    cw_pass = iou == iou
    ch_pass = cw_pass
    if KIND != 0:
        cw = tl.maximum(px2, gx2) - tl.minimum(px1, gx1)
        ch = tl.maximum(py2, gy2) - tl.minimum(py1, gy1)
        if not LOSS:
            cw_pass = cw >= 0.0
            ch_pass = ch >= 0.0
            cw = tl.where(cw_pass, cw, 0.0)
            ch = tl.where(ch_pass, ch, 0.0)
        if KIND == 1:
            ac = cw * ch
            acd, oka, acs = _denominator(ac, eps, LOSS)
            val = val - tl.where(oka, (ac - uni) / acs, 0.0)
            g_ac = tl.where(oka, -gout * (acd - ac + uni) / (acs * acs), 0.0)
            g_uni += tl.where(oka, gout / acs, 0.0)
            g_cw = g_ac * ch
            g_ch = g_ac * cw
        else:
            diag = cw * cw + ch * ch + eps
            dx = (px1 + px2 - gx1 - gx2) * 0.5
            dy = (py1 + py2 - gy1 - gy2) * 0.5
            rho2 = dx * dx + dy * dy
            okg = diag > 0.0
            dgs = tl.where(okg, diag, 1.0)
            val = val - tl.where(okg, rho2 / dgs, 0.0)
            g_diag = tl.where(okg, gout * rho2 / (dgs * dgs), 0.0)
            g_cw = g_diag * 2.0 * cw
            g_ch = g_diag * 2.0 * ch
            g_dx = tl.where(okg, -gout * 2.0 * dx / dgs, 0.0)
            g_dy = tl.where(okg, -gout * 2.0 * dy / dgs, 0.0)
            if KIND == 3:
                k = 4.0 / (PI * PI)
                delta = _atan_ratio(wg, hg) - _atan_ratio(wp, hp)
                v = k * delta * delta
                ad = 1.0 - iou + v + eps
                alpha = tl.where(ad > 0.0, v / tl.where(ad > 0.0, ad, 1.0), 0.0)
                val = val - alpha * v
                g_delta = -gout * alpha * 2.0 * k * delta
                rg = wg * wg + hg * hg
                rp = wp * wp + hp * hp
                rgs = tl.where(rg > 0.0, rg, 1.0)
                rps = tl.where(rp > 0.0, rp, 1.0)
                g_wg = tl.where(rg > 0.0, g_delta * hg / rgs, 0.0)
                g_hg = tl.where(rg > 0.0, -g_delta * wg / rgs, 0.0)
                g_wp = tl.where(rp > 0.0, -g_delta * hp / rps, 0.0)
                g_hp = tl.where(rp > 0.0, g_delta * wp / rps, 0.0)
    if GRAD:
        g_inter -= g_uni
        g_wp += g_uni * hp
        g_hp += g_uni * wp
        g_wg += g_uni * hg
        g_hg += g_uni * wg
        g_iw = tl.where(pos, g_inter * ih, 0.0)
        g_ih = tl.where(pos, g_inter * iw, 0.0)
        gcw = tl.where(cw_pass, g_cw, 0.0)
        gch = tl.where(ch_pass, g_ch, 0.0)
        s_x2 = _tie_lt(px2, gx2)
        s_x1 = _tie_lt(gx1, px1)
        s_y2 = _tie_lt(py2, gy2)
        s_y1 = _tie_lt(gy1, py1)
        c_x2 = _tie_lt(gx2, px2)
        c_x1 = _tie_lt(px1, gx1)
        c_y2 = _tie_lt(gy2, py2)
        c_y1 = _tie_lt(py1, gy1)
        dp0 = -g_iw * s_x1 - gcw * c_x1 + 0.5 * g_dx - g_wp
        dp2 = g_iw * s_x2 + gcw * c_x2 + 0.5 * g_dx + g_wp
        dp1 = -g_ih * s_y1 - gch * c_y1 + 0.5 * g_dy - g_hp
        dp3 = g_ih * s_y2 + gch * c_y2 + 0.5 * g_dy + g_hp
        dg0 = -g_iw * (1.0 - s_x1) - gcw * (1.0 - c_x1) - 0.5 * g_dx - g_wg
        dg2 = g_iw * (1.0 - s_x2) + gcw * (1.0 - c_x2) - 0.5 * g_dx + g_wg
        dg1 = -g_ih * (1.0 - s_y1) - gch * (1.0 - c_y1) - 0.5 * g_dy - g_hg
        dg3 = g_ih * (1.0 - s_y2) + gch * (1.0 - c_y2) - 0.5 * g_dy + g_hg
    else:
        dp0 = zero
        dp1 = zero
        dp2 = zero
        dp3 = zero
        dg0 = zero
        dg1 = zero
        dg2 = zero
        dg3 = zero
    val = tl.where(nonfin == 0.0, val, nonfin)
    return val, dp0, dp1, dp2, dp3, dg0, dg1, dg2, dg3


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------


@triton.jit
def _pairwise_kernel(p1, sB1, sK1, s41, p2, sB2, sK2, s42, out, N, M, eps,
                     KIND: tl.constexpr, FMT: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64) * BN + tl.arange(0, BN).to(tl.int64)
    m = tl.program_id(2).to(tl.int64) * BM + tl.arange(0, BM).to(tl.int64)
    nm, mm = n < N, m < M
    px1, py1, px2, py2 = _load_box(p1, b * sB1 + n * sK1, s41, nm, FMT)
    gx1, gy1, gx2, gy2 = _load_box(p2, b * sB2 + m * sK2, s42, mm, FMT)
    val = _pair(px1[:, None], py1[:, None], px2[:, None], py2[:, None], gx1[None, :], gy1[None, :],
                gx2[None, :], gy2[None, :], eps, 0.0, KIND, False, False)[0]
    ptr = out + (b * N + n[:, None]) * M + m[None, :]
    tl.store(ptr, val.to(out.dtype.element_ty), mask=nm[:, None] & mm[None, :])


@triton.jit
def _pairwise_grad_kernel(p1, sB1, sK1, s41, p2, sB2, sK2, s42, go, d, N, M, eps,
                          KIND: tl.constexpr, FMT: tl.constexpr, FIRST: tl.constexpr,
                          BR: tl.constexpr, BL: tl.constexpr):
    """d [B, K, 4] for the own set (FIRST: boxes1, rows n; else boxes2, rows m).
    The tile keeps go's contiguous index (m) on its last axis: [BR own, BL
    other] for FIRST, [BL other, BR own] otherwise. Each thread adds its pairs'
    gradients into a register tile; the tile is summed over the other set once,
    after the loop (no reduction inside it)."""
    b = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1).to(tl.int64) * BR + tl.arange(0, BR).to(tl.int64)
    if FIRST:
        K = N
        L = M
    else:
        K = M
        L = N
    rm = r < K
    if FIRST:
        qx1, qy1, qx2, qy2 = _load_box(p1, b * sB1 + r * sK1, s41, rm, FMT)
        a0 = tl.zeros([BR, BL], dtype=tl.float32)
    else:
        qx1, qy1, qx2, qy2 = _load_box(p2, b * sB2 + r * sK2, s42, rm, FMT)
        a0 = tl.zeros([BL, BR], dtype=tl.float32)
    a1 = a0
    a2 = a0
    a3 = a0
    for l0 in range(0, L, BL):
        lidx = l0 + tl.arange(0, BL).to(tl.int64)
        lm = lidx < L
        if FIRST:
            ox1, oy1, ox2, oy2 = _load_box(p2, b * sB2 + lidx * sK2, s42, lm, FMT)
            g = tl.load(go + (b * N + r[:, None]) * M + lidx[None, :], mask=rm[:, None] & lm[None, :], other=0.0)
            res = _pair(qx1[:, None], qy1[:, None], qx2[:, None], qy2[:, None], ox1[None, :], oy1[None, :],
                        ox2[None, :], oy2[None, :], eps, g, KIND, False, True)
            a0 += res[1]
            a1 += res[2]
            a2 += res[3]
            a3 += res[4]
        else:
            ox1, oy1, ox2, oy2 = _load_box(p1, b * sB1 + lidx * sK1, s41, lm, FMT)
            g = tl.load(go + (b * N + lidx[:, None]) * M + r[None, :], mask=lm[:, None] & rm[None, :], other=0.0)
            res = _pair(ox1[:, None], oy1[:, None], ox2[:, None], oy2[:, None], qx1[None, :], qy1[None, :],
                        qx2[None, :], qy2[None, :], eps, g, KIND, False, True)
            a0 += res[5]
            a1 += res[6]
            a2 += res[7]
            a3 += res[8]
    if FIRST:
        s0, s1, s2, s3 = _grad_fmt(tl.sum(a0, axis=1), tl.sum(a1, axis=1), tl.sum(a2, axis=1), tl.sum(a3, axis=1),
                                   FMT)
    else:
        s0, s1, s2, s3 = _grad_fmt(tl.sum(a0, axis=0), tl.sum(a1, axis=0), tl.sum(a2, axis=0), tl.sum(a3, axis=0),
                                   FMT)
    base = d + (b * K + r) * 4
    ty = d.dtype.element_ty
    tl.store(base, s0.to(ty), mask=rm)
    tl.store(base + 1, s1.to(ty), mask=rm)
    tl.store(base + 2, s2.to(ty), mask=rm)
    tl.store(base + 3, s3.to(ty), mask=rm)


@triton.jit
def _store_grad4(d, i, msk, g0, g1, g2, g3, FMT: tl.constexpr):
    """An xyxy gradient, converted to the boxes' format, into rows i of d [K, 4]."""
    g0, g1, g2, g3 = _grad_fmt(g0, g1, g2, g3, FMT)
    ty = d.dtype.element_ty
    tl.store(d + 4 * i, g0.to(ty), mask=msk)
    tl.store(d + 4 * i + 1, g1.to(ty), mask=msk)
    tl.store(d + 4 * i + 2, g2.to(ty), mask=msk)
    tl.store(d + 4 * i + 3, g3.to(ty), mask=msk)


@triton.jit
def _aligned_kernel(p1, sK1, s41, p2, sK2, s42, out, d1, d2, K, eps, offset, sign, gscale,
                    KIND: tl.constexpr, FMT: tl.constexpr, LOSS: tl.constexpr, HAS_D1: tl.constexpr,
                    HAS_D2: tl.constexpr, BK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BK + tl.arange(0, BK).to(tl.int64)
    msk = i < K
    px1, py1, px2, py2 = _load_box(p1, i * sK1, s41, msk, FMT)
    gx1, gy1, gx2, gy2 = _load_box(p2, i * sK2, s42, msk, FMT)
    v, dp0, dp1, dp2, dp3, dg0, dg1, dg2, dg3 = _pair(px1, py1, px2, py2, gx1, gy1, gx2, gy2, eps, gscale,
                                                      KIND, LOSS, HAS_D1 or HAS_D2)
    tl.store(out + i, (offset + sign * v).to(out.dtype.element_ty), mask=msk)
    if HAS_D1:
        _store_grad4(d1, i, msk, dp0, dp1, dp2, dp3, FMT)
    if HAS_D2:
        _store_grad4(d2, i, msk, dg0, dg1, dg2, dg3, FMT)


# --------------------------------------------------------------------------
# launchers (tensors validated by segfast/ops/boxes.py)
# --------------------------------------------------------------------------


def launch_pairwise(b1, b2, out, kind: int, fmt: int, eps: float, *, block_n=BLOCK_N, block_m=BLOCK_M) -> None:
    """out [B, N, M] (contiguous) = IoU variant of b1 [B, N, 4] x b2 [B, M, 4] (any strides)."""
    B, N, M = out.shape
    if out.numel() == 0:
        return
    grid = (B, triton.cdiv(N, block_n), triton.cdiv(M, block_m))
    wrap(_pairwise_kernel)[grid](b1, *b1.stride(), b2, *b2.stride(), out, N, M, float(eps),
                                 KIND=int(kind), FMT=int(fmt), BN=block_n, BM=block_m)


def launch_pairwise_grad(b1, b2, go, d1, d2, kind: int, fmt: int, eps: float, *, block_r=GRAD_BR,
                         block_l=GRAD_BL) -> None:
    """d1 [B, N, 4], d2 [B, M, 4] (contiguous, or None to skip) from go [B, N, M] (fp32, contiguous)."""
    B, N, M = go.shape
    if B * N * M == 0:
        return
    for d, first, K in ((d1, True, N), (d2, False, M)):
        if d is None:
            continue
        grid = (B, triton.cdiv(K, block_r))
        wrap(_pairwise_grad_kernel)[grid](b1, *b1.stride(), b2, *b2.stride(), go, d, N, M, float(eps),
                                          KIND=int(kind), FMT=int(fmt), FIRST=first, BR=block_r, BL=block_l,
                                          num_warps=GRAD_WARPS)


def launch_aligned(b1, b2, out, d1, d2, kind: int, fmt: int, loss: bool, eps: float, offset: float, sign: float,
                   gscale: float, *, block_k=BLOCK_K) -> None:
    """out [K] = offset + sign * value; d1, d2 [K, 4] (contiguous, or None) = gscale * d value / d box."""
    K = b1.shape[0]
    if K == 0:
        return
    grid = (triton.cdiv(K, block_k),)
    wrap(_aligned_kernel)[grid](b1, *b1.stride(), b2, *b2.stride(), out, d1, d2, K, float(eps), float(offset),
                                float(sign), float(gscale), KIND=int(kind), FMT=int(fmt), LOSS=bool(loss),
                                HAS_D1=d1 is not None, HAS_D2=d2 is not None, BK=block_k)
