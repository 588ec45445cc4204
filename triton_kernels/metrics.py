"""Triton kernels of the metrics family: the segmentation confusion matrix
read straight from the logits, and the COCO box matching (IoU and greedy
matching of each (category, image) group; ``coco_match`` below).

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


# ---- COCO box matching (pycocotools' evaluateImg) -----------------------------------------
#
# One program per (category, image) group with detections: the group's gts in registers
# ([NG] vectors), the detections in score order one by one, every IoU threshold at once
# ([TP, NG] tiles), each area range in turn. Greedy rule of pycocotools, restated
# without the scan: a detection takes, among the unmatched regular gts whose IoU reaches
# the threshold, the last one (in input order) of the highest IoU; only when there is
# none, the same among the ignored gts that are unmatched or crowd. Float64 throughout,
# launched with fp fusion off, so every IoU is rounded as the C++ pass rounds it.


@triton.jit
def _coco_match_kernel(groups_ptr, gt_off_ptr, dt_off_ptr, gt_box_ptr, gt_area_ptr, gt_crowd_ptr,
                       gt_idnz_ptr, dt_box_ptr, thr_ptr, area_ptr, code_ptr, T, A,
                       NG: tl.constexpr, TP: tl.constexpr):
    g = tl.load(groups_ptr + tl.program_id(0)).to(tl.int64)
    g0 = tl.load(gt_off_ptr + g)
    ng = tl.load(gt_off_ptr + g + 1) - g0
    d0 = tl.load(dt_off_ptr + g)
    nd = tl.load(dt_off_ptr + g + 1) - d0
    jj = tl.arange(0, NG)
    jm = jj < ng
    gb = gt_box_ptr + (g0 + jj) * 4
    gx = tl.load(gb, mask=jm, other=0.0)
    gy = tl.load(gb + 1, mask=jm, other=0.0)
    gw = tl.load(gb + 2, mask=jm, other=0.0)
    gh = tl.load(gb + 3, mask=jm, other=0.0)
    garea = tl.load(gt_area_ptr + g0 + jj, mask=jm, other=0.0)
    crowd = tl.load(gt_crowd_ptr + g0 + jj, mask=jm, other=0) != 0
    idnz = tl.load(gt_idnz_ptr + g0 + jj, mask=jm, other=0).to(tl.int32)
    ga = gw * gh
    gx2 = gw + gx
    gy2 = gh + gy
    tt = tl.arange(0, TP)
    tm = tt < T
    thr = tl.load(thr_ptr + tt, mask=tm, other=2.0)  # padding rows never match
    for a in range(A):
        lo = tl.load(area_ptr + 2 * a)
        hi = tl.load(area_ptr + 2 * a + 1)
        gig = crowd | (garea < lo) | (garea > hi)
        reg = jm & (gig == 0)
        ign = jm & gig
        matched = tl.zeros([TP, NG], dtype=tl.int32)
        for d in range(nd):
            db = dt_box_ptr + (d0 + d) * 4
            bx = tl.load(db)
            by = tl.load(db + 1)
            bw = tl.load(db + 2)
            bh = tl.load(db + 3)
            da = bw * bh
            w = tl.minimum(bw + bx, gx2) - tl.maximum(bx, gx)
            h = tl.minimum(bh + by, gy2) - tl.maximum(by, gy)
            inter = w * h
            u = tl.where(crowd, da, da + ga - inter)
            iou = tl.where((w > 0) & (h > 0), inter / u, 0.0)
            iou2 = iou[None, :]
            ok = iou2 >= thr[:, None]
            free = matched == 0
            er = reg[None, :] & free & ok
            ei = ign[None, :] & (free | crowd[None, :]) & ok
            has_reg = tl.max(er.to(tl.int32), axis=1) > 0
            cand = tl.where(has_reg[:, None], er, ei)
            best = tl.max(tl.where(cand, iou2, -1.0), axis=1)
            m = tl.max(tl.where(cand & (iou2 == best[:, None]), jj[None, :], -1), axis=1)
            sel = jj[None, :] == m[:, None]
            matched = tl.where(sel, 1, matched)
            hit = tl.max(tl.where(sel, idnz[None, :], 0), axis=1) > 0
            ig = (m >= 0) & (has_reg == 0)  # matched to an ignored gt
            dav = tl.zeros([TP], dtype=tl.float64) + da
            ig = ig | ((hit == 0) & ((dav < lo) | (dav > hi)))  # unmatched, outside the range
            code = tl.where(ig, 0, tl.where(hit, 1, 2)).to(tl.uint8)
            tl.store(code_ptr + ((d0 + d) * A + a) * T + tt, code, mask=tm)


def coco_match(groups: torch.Tensor, gt_off: torch.Tensor, dt_off: torch.Tensor, gt_box: torch.Tensor,
               gt_area: torch.Tensor, gt_crowd: torch.Tensor, gt_idnz: torch.Tensor, dt_box: torch.Tensor,
               thr: torch.Tensor, area_rng: torch.Tensor, max_gts: int) -> torch.Tensor:
    """Codes [D, A, T] uint8 (0 ignored, 1 true positive, 2 false positive) of the detections.

    groups: int64 ids of the (category, image) groups with detections; gt_off / dt_off
    [G + 1] row offsets of each group; gt_box [Ng, 4], dt_box [D, 4] float64 xywh (the
    detections of a group in score order, already cut to maxDets[-1]); gt_area [Ng]
    float64; gt_crowd, gt_idnz [Ng] uint8; thr [T] float64 min(t, 1 - 1e-10); area_rng
    [A, 2] float64; max_gts: the most gts of one group.
    """
    T, A = thr.numel(), area_rng.shape[0]
    code = torch.empty(dt_box.shape[0], A, T, dtype=torch.uint8, device=dt_box.device)
    if groups.numel():
        _coco_match_kernel[(groups.numel(),)](
            groups, gt_off, dt_off, gt_box, gt_area, gt_crowd, gt_idnz, dt_box, thr, area_rng, code, T, A,
            NG=max(16, triton.next_power_of_2(max(max_gts, 1))), TP=max(2, triton.next_power_of_2(T)),
            enable_fp_fusion=False)
    return code
