"""The finish kernel of the region losses: one program turns the stats
kernel's partial sums into the loss and its gradient coefficients.

Installed as ``segfast.triton_kernels.region_finish``. Imports only triton
and the standard library, and imports cleanly without a GPU.

``launch_finish`` reads the partial sums ``part[N, P, C, KO]`` of
``region.launch_stats`` (KO = 7, or 9 with a pixel term) and writes, with no
torch op in between:

* ``sums[N, C, KO]``: the per-plane sums (the reduction over the P chunks);
* ``loss`` (one float32): the scalar loss;
* ``coef[N, C, KO]``: dLoss/dsums at grad_output 1, which
  ``region.launch_grad`` reads (with grad_output, on the device) in the
  backward;
* ``ok`` (one uint8): 1 unless the stats kernel's label ``flag`` is set.

The loss is ``lam_r * R + lam_x * X``. R, the region term, is one of

* a ratio per plane, score = safe(cI*I + nr, dI*I + dP*P + dT*T + dr)
  (Dice: 2, 0, 1, 1; soft IoU: 1, -1, 1, 1; Tversky: 1, 1-a-b, a, b),
  f = 1 - score or -log(max(score, 1e-7)) (LOG), then max(f, 0)^gamma
  (POW), times the class weight w_c, over the classes c >= c0
  (include_background=False: c0 = 1), summed and scaled by ``scale_r``
  (1/count for a mean, 1 for a sum); per (image, class) plane, or per class
  of the batch-pooled sums (BATCH);
* the generalized Dice score per image (or of the pooled batch) with the
  class weights 1/T^2, 1/T or 1 (GDL = 1, 2, 3), an absent class taking the
  largest finite weight of its image, times w_c.

safe(num, den) is num/den, and 1 where den == 0 (segfast.ops.region.safe_ratio).
X, the pixel term (XK: 1 CE, 2 focal, 3 fused), is a mean over the valid
pixels of the batch-pooled sums S7, S8 (0 without a valid pixel):
CE sum_c u_c((1-eps)*S7_c + eps/C*S8_c) / sum_c u_c*T_c (u: the CE class
weights), focal sum_c u_c*S7_c / sum_c T_c (u: alpha),
fused (ws*sum_c S7_c + wp*(S7_0 + sum_{c>=1} S8_c)) / sum_c T_c.

The formulas' definition is the eager code in segfast/functional.py and
segfast/reference/region.py; the tests compare this kernel with both.

One program: the sums are small (N*P*C*KO floats, L2-resident after the
stats kernel), and one program keeps the reductions deterministic and the
call free of atomics and extra launches. Its time on a GPU is unmeasured.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Largest C the kernel takes (its tiles are BLOCK_C x 16 floats).
MAX_C = 256
FINISH_TILE = 4096
FINISH_WARPS = 8

GDL_NONE, GDL_SQUARE, GDL_SIMPLE, GDL_UNIFORM = 0, 1, 2, 3


@triton.jit
def _col(tile, kk, k):
    """Column k of a [BLOCK_C, BLOCK_K] tile."""
    return tl.sum(tl.where(kk[None, :] == k, tile, 0.0), axis=1)


@triton.jit
def _pow(b, e):
    """b^e for b >= 0 (0^e = 0 for e > 0, 1 for e = 0); a NaN b stays NaN."""
    small = tl.where(b == b, tl.where(e == 0, 1.0, 0.0), b)
    return tl.where(b > 0, tl.exp(e * tl.log(tl.maximum(b, 1e-38))), small)


@triton.jit
def _safe_ratio(num, den):
    """-> (score, 1/den): score = num/den, 1 where den == 0 (then 1/den reads 0)."""
    zero = den == 0
    rden = tl.where(zero, 0.0, 1.0 / tl.where(zero, 1.0, den))
    return tl.where(zero, 1.0, num * rden), rden


@triton.jit
def _score_loss(score, gamma, LOG: tl.constexpr, POW: tl.constexpr):
    """-> (f, df/dscore) of the score."""
    if LOG:
        f = -tl.log(tl.maximum(score, 1e-7, propagate_nan=tl.PropagateNan.ALL))
        dfds = tl.where(score >= 1e-7, -1.0 / score, 0.0)
    else:
        f = 1.0 - score
        dfds = tl.full(score.shape, -1.0, tl.float32)
    if POW:
        fc = tl.maximum(f, 0.0, propagate_nan=tl.PropagateNan.ALL)
        dfds = tl.where(f >= 0, gamma * _pow(fc, gamma - 1.0), 0.0) * dfds
        f = _pow(fc, gamma)
    return f, dfds


@triton.jit
def _ratio_plane(I, Pc, T, w, keep, cI, dI, dP, dT, nr, dr, gamma, scale,
                 LOG: tl.constexpr, POW: tl.constexpr):
    """The ratio region term of one set of planes [BLOCK_C] -> (sum of the
    weighted losses, dL/dI, dL/dP, dL/dT), the dL/d* already scaled."""
    score, rden = _safe_ratio(cI * I + nr, dI * I + dP * Pc + dT * T + dr)
    f, dfds = _score_loss(score, gamma, LOG, POW)
    gs = tl.where(keep, scale * w * dfds, 0.0)
    gnum = gs * rden
    gden = -gs * score * rden
    total = scale * tl.sum(tl.where(keep, f * w, 0.0), axis=0)
    return total, gnum * cI + gden * dI, gden * dP, gden * dT


@triton.jit
def _gdl_plane(I, Pc, T, w, keep, nr, dr, scale, GDL: tl.constexpr, LOG: tl.constexpr):
    """The generalized Dice term of one image (or the pooled batch) [BLOCK_C]
    -> (scaled loss, dL/dI, dL/dP, dL/dT)."""
    if GDL == 1:
        cw = 1.0 / (T * T)
    elif GDL == 2:
        cw = 1.0 / T
    else:
        cw = tl.full(T.shape, 1.0, tl.float32)
    inf = cw == float("inf")
    cw = tl.where(keep & ~inf, cw, 0.0)
    cw = tl.where(keep & inf, tl.max(cw, axis=0), cw) * w
    score, rden = _safe_ratio(2.0 * tl.sum(cw * I, axis=0) + nr, tl.sum(cw * (Pc + T), axis=0) + dr)
    f, dfds = _score_loss(score, 1.0, LOG, False)
    gnum = scale * dfds * rden
    gden = -scale * dfds * score * rden
    return scale * f, 2.0 * cw * gnum, cw * gden, cw * gden


@triton.jit
def _region_finish_kernel(
    part_ptr, sums_ptr, coef_ptr, loss_ptr, ok_ptr, flag_ptr, w_ptr, pw_ptr,
    N, C, P,
    cI, dI, dP, dT, nr, dr, gamma, lam_r, scale_r, c0,
    lam_x, eps, ws, wp,
    KO: tl.constexpr, GDL: tl.constexpr, BATCH: tl.constexpr, LOG: tl.constexpr, POW: tl.constexpr,
    HAS_W: tl.constexpr, XK: tl.constexpr, HAS_PW: tl.constexpr, HAS_FLAG: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    ar_p = tl.arange(0, BLOCK_P)
    ar_c = tl.arange(0, BLOCK_C)
    kk = tl.arange(0, BLOCK_K)
    cmask = ar_c < C
    row = C * KO
    tmask = cmask[:, None] & (kk < KO)[None, :]
    toff = ar_c[:, None] * KO + kk[None, :]

    # 1. the sums per image (sums[n]) and pooled over the batch
    pooled = tl.zeros([BLOCK_C, BLOCK_K], tl.float32)
    for n in range(N):
        acc = tl.zeros([BLOCK_C, BLOCK_K], tl.float32)
        for p0 in range(0, P, BLOCK_P):
            pp = p0 + ar_p
            m3 = (pp < P)[:, None, None] & tmask[None, :, :]
            prow = (n * P + pp).to(tl.int64) * row  # row n*P + p of [N*P, C*KO]
            tile = tl.load(part_ptr + prow[:, None, None] + toff[None, :, :], mask=m3, other=0.0)
            acc += tl.sum(tile, axis=0)
        tl.store(sums_ptr + n * row + toff, acc, mask=tmask)
        pooled += acc
    tl.debug_barrier()  # sums[n] is read back below by other threads

    keep = cmask & (ar_c >= c0)
    if HAS_W:
        w = tl.load(w_ptr + ar_c, mask=cmask, other=0.0)
    else:
        w = tl.full([BLOCK_C], 1.0, tl.float32)

    # 2. the pixel term on the pooled sums: its value and its (n-independent) coefficients
    g7 = tl.zeros([BLOCK_C], tl.float32)
    g8 = tl.zeros([BLOCK_C], tl.float32)
    total = tl.full([], 0.0, tl.float32)
    if XK != 0:
        S7 = _col(pooled, kk, 7)
        S8 = _col(pooled, kk, 8)
        Tp = _col(pooled, kk, 2)
        if HAS_PW:
            u = tl.load(pw_ptr + ar_c, mask=cmask, other=0.0)
        else:
            u = tl.where(cmask, 1.0, 0.0)
        if XK == 1:  # CE, label smoothing eps
            num_c = (1.0 - eps) * S7
            if eps != 0:  # S8 is infinite with a -inf logit: no 0*inf without smoothing
                num_c = num_c + (eps / C) * S8
            num = tl.sum(tl.where(cmask, num_c * u, 0.0), axis=0)
            den = tl.sum(tl.where(cmask, Tp * u, 0.0), axis=0)
            u7 = (1.0 - eps) * u
            u8 = tl.where(eps != 0, (eps / C) * u, 0.0)
        elif XK == 2:  # focal: alpha-weighted S7
            num = tl.sum(tl.where(cmask, u * S7, 0.0), axis=0)
            den = tl.sum(tl.where(cmask, Tp, 0.0), axis=0)
            u7 = u
            u8 = tl.zeros([BLOCK_C], tl.float32)
        else:  # fused
            num = ws * tl.sum(tl.where(cmask, S7, 0.0), axis=0) + wp * tl.sum(
                tl.where(ar_c == 0, S7, tl.where(cmask, S8, 0.0)), axis=0)
            den = tl.sum(tl.where(cmask, Tp, 0.0), axis=0)
            u7 = ws + tl.where(ar_c == 0, wp, 0.0)
            u8 = tl.where(ar_c >= 1, wp, 0.0)
        pos = den > 0
        rden = tl.where(pos, 1.0 / tl.where(pos, den, 1.0), 0.0)
        total = lam_x * tl.where(pos, num * rden, 0.0)
        g7 = tl.where(cmask, lam_x * u7 * rden, 0.0)
        g8 = tl.where(cmask, lam_x * u8 * rden, 0.0)

    # 3. the region term and the coefficients of every image
    gscale = lam_r * scale_r
    if BATCH:
        I = _col(pooled, kk, 0)
        Pc = _col(pooled, kk, 1)
        T = _col(pooled, kk, 2)
        if GDL != 0:
            r, gI, gP, gT = _gdl_plane(I, Pc, T, w, keep, nr, dr, gscale, GDL, LOG)
        else:
            r, gI, gP, gT = _ratio_plane(I, Pc, T, w, keep, cI, dI, dP, dT, nr, dr, gamma, gscale, LOG, POW)
        total += r
    for n in range(N):
        if not BATCH:
            srow = sums_ptr + n * row + ar_c * KO
            I = tl.load(srow + 0, mask=cmask, other=0.0)
            Pc = tl.load(srow + 1, mask=cmask, other=0.0)
            T = tl.load(srow + 2, mask=cmask, other=0.0)
            if GDL != 0:
                r, gI, gP, gT = _gdl_plane(I, Pc, T, w, keep, nr, dr, gscale, GDL, LOG)
            else:
                r, gI, gP, gT = _ratio_plane(I, Pc, T, w, keep, cI, dI, dP, dT, nr, dr, gamma, gscale,
                                             LOG, POW)
            total += r
        g = tl.where(kk[None, :] == 0, gI[:, None],
                     tl.where(kk[None, :] == 1, gP[:, None],
                              tl.where(kk[None, :] == 2, gT[:, None],
                                       tl.where(kk[None, :] == 7, g7[:, None],
                                                tl.where(kk[None, :] == 8, g8[:, None], 0.0)))))
        tl.store(coef_ptr + n * row + toff, g, mask=tmask)

    tl.store(loss_ptr, total)
    if HAS_FLAG:
        tl.store(ok_ptr, (tl.load(flag_ptr) == 0).to(tl.uint8))
    else:
        tl.store(ok_ptr, tl.full([], 1, tl.uint8))


def launch_finish(part, sums, coef, loss, ok, N: int, C: int, P: int, KO: int, *, flag=None, w=None, pw=None,
                  ratio=(2.0, 0.0, 1.0, 1.0), nr: float = 0.0, dr: float = 0.0, gamma: float = 1.0,
                  log: bool = False, gdl: int = GDL_NONE, batch: bool = False, c0: int = 0,
                  lam_r: float = 1.0, scale_r: float = 1.0, xent: int = 0, lam_x: float = 0.0,
                  eps: float = 0.0, ws: float = 0.0, wp: float = 0.0) -> None:
    """See the module doc. part: float32 contiguous [N, P, C, KO]; sums, coef:
    float32 contiguous [N, C, KO]; loss: one float32; ok: one uint8; flag:
    the stats kernel's label flag (one int32) or None; w, pw: float32 [C] or
    None. ``ratio`` = (cI, dI, dP, dT)."""
    from ._common import wrap
    BLOCK_C = triton.next_power_of_2(max(C, 1))
    BLOCK_K = triton.next_power_of_2(KO)
    BLOCK_P = max(1, min(triton.next_power_of_2(max(P, 1)), FINISH_TILE // (BLOCK_C * BLOCK_K)))
    cI, dI, dP, dT = (float(v) for v in ratio)
    wrap(_region_finish_kernel)[(1,)](
        part, sums, coef, loss, ok, flag, w, pw,
        N, C, P,
        cI, dI, dP, dT, float(nr), float(dr), float(gamma), float(lam_r), float(scale_r), int(c0),
        float(lam_x), float(eps), float(ws), float(wp),
        KO=int(KO), GDL=int(gdl), BATCH=bool(batch), LOG=bool(log), POW=float(gamma) != 1.0,
        HAS_W=w is not None, XK=int(xent), HAS_PW=pw is not None, HAS_FLAG=flag is not None,
        BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, BLOCK_K=BLOCK_K,
        num_warps=FINISH_WARPS,
    )
