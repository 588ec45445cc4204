"""Triton kernels of box matching (box_iou_max) and NMS.

Installed as ``segfast.triton_kernels.boxes_match``. Imports only triton,
torch and the standard library, and imports cleanly without a GPU. Rules
and the IoU formula: segfast/reference/boxes_match.py. To give the same bits
as the reference and the C++ kernels, kernels are launched with
``enable_fp_fusion=False`` (no FMA) and divide with ``div_rn`` (Triton's
``/`` on float32 is an approximate division on GPU).

* ``launch_iou_max``: grid (anchor block, image). A program holds BLOCK_N
  anchors, one per thread, and sweeps the image's gts in tiles of BLOCK_M:
  a [BLOCK_M, BLOCK_N] IoU tile (each thread: the tile's gts against its
  anchor, ~50 registers in float32, ~100 in float64), its per-anchor
  argmax inside the thread (float32: the max of int64 keys packing the
  IoU's bits over 2^32 - 1 - gt index, so ties keep the lowest index, in
  one tile and across tiles; float64: value and index with a strict > across
  tiles) and its per-gt max over the program's anchors, added to gmax with
  a relaxed ``tl.atomic_max`` (a RED: IoU >= 0). Memory: the outputs only.
* ``nms_keep``: a mask kernel writes, for boxes sorted by score, 64-bit
  words ``mask[i, c]`` (bit k: box i suppresses box 64c + k > i), a grid of
  (column word, row block) programs; then ONE program sweeps the 64-box
  blocks in order (the greedy part is sequential): the block's own 64 boxes
  from the diagonal words, then the rows of its kept boxes OR-ed into the
  later ``removed`` words. GPU tuning (BLOCK sizes, warps) is untested on
  hardware; correctness is verified in the Triton interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import wrap

BLOCK_N = 128  # anchors per program: one per thread
BLOCK_M = 8  # gts per tile, held by every thread
IOU_MAX_WARPS = 4
NMS_BLOCK_R = 16  # rows per mask program (x 64 columns: 8 pairs per thread)
NMS_BLOCK_W = 128  # removed words per vector in the sweep
NO_FMA = dict(enable_fp_fusion=False)


@triton.jit
def _acc(x, F64: tl.constexpr):
    if F64:
        y = x.to(tl.float64)
    else:
        y = x.to(tl.float32)
    return y


@triton.jit
def _load_box(ptr, off, s4, mask, FMT: tl.constexpr, F64: tl.constexpr):
    """xyxy in the accumulation dtype from 4 coordinates in format FMT (0 xyxy, 1 xywh, 2 cxcywh)."""
    a = _acc(tl.load(ptr + off, mask=mask, other=0), F64)
    b = _acc(tl.load(ptr + off + s4, mask=mask, other=0), F64)
    c = _acc(tl.load(ptr + off + 2 * s4, mask=mask, other=0), F64)
    d = _acc(tl.load(ptr + off + 3 * s4, mask=mask, other=0), F64)
    x1, y1, x2, y2 = a, b, c, d
    if FMT == 1:
        x2 = a + c
        y2 = b + d
    if FMT == 2:
        hw = c * 0.5
        hh = d * 0.5
        x1 = a - hw
        y1 = b - hh
        x2 = a + hw
        y2 = b + hh
    return x1, y1, x2, y2


@triton.jit
def _iou(ax1, ay1, ax2, ay2, aa, bx1, by1, bx2, by2, ba, F64: tl.constexpr):
    """IoU tile of a [R] (rows) x b [C] (columns); boxes.h order of operations."""
    w = tl.minimum(ax2[:, None], bx2[None, :]) - tl.maximum(ax1[:, None], bx1[None, :])
    h = tl.minimum(ay2[:, None], by2[None, :]) - tl.maximum(ay1[:, None], by1[None, :])
    inter = tl.where(w > 0, w, 0.0) * tl.where(h > 0, h, 0.0)
    uni = (aa[:, None] + ba[None, :]) - inter
    den = tl.where(uni > 0, uni, 1.0)
    if F64:
        q = inter / den  # float64 division is correctly rounded
    else:
        q = tl.math.div_rn(inter, den)
    return tl.where(uni > 0, q, 0.0)


@triton.jit
def _argmax_key(iou, idx):
    """One int64 key per (IoU >= 0, gt index) pair whose order is the
    argmax's: the IoU's float32 bits (non-negative floats order as their
    bits) above 2^32 - 1 - index, so the larger IoU wins and, among equal
    IoUs, the lower index. A valid pair's key is > 0."""
    bits = iou.to(tl.int32, bitcast=True).to(tl.int64)
    return (bits << 32) | (4294967295 - idx)


@triton.jit
def _iou_max_kernel(a_ptr, g_ptr, v_ptr, mx_ptr, arg_ptr, gmax_ptr, N, M,
                    asB, asN, as4, gsB, gsM, gs4, vsB, vsM,
                    HAS_VALID: tl.constexpr, FMT: tl.constexpr, F64: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """The tile is [BLOCK_M gts, BLOCK_N anchors] with the anchors across the
    lanes, so each thread holds the BLOCK_M gts of its anchor: the row argmax
    is a reduction inside the thread (no shuffle), over one int64 key per
    pair in float32 (``_argmax_key``; float64 keeps the value and index)."""
    b = tl.program_id(1).to(tl.int64)
    offs_n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N
    ax1, ay1, ax2, ay2 = _load_box(a_ptr, b * asB + offs_n * asN, as4, nmask, FMT, F64)
    aa = (ax2 - ax1) * (ay2 - ay1)
    if F64:
        best = tl.full([BLOCK_N], -1.0, tl.float64)
        barg = tl.full([BLOCK_N], -1, tl.int64)
    else:
        key = tl.zeros([BLOCK_N], tl.int64)  # 0: no valid gt seen
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        mmask = offs_m < M
        gx1, gy1, gx2, gy2 = _load_box(g_ptr, b * gsB + offs_m * gsM, gs4, mmask, FMT, F64)
        ga = (gx2 - gx1) * (gy2 - gy1)
        if HAS_VALID:
            gv = mmask & (tl.load(v_ptr + b * vsB + offs_m * vsM, mask=mmask, other=0) != 0)
        else:
            gv = mmask
        # gts as rows: min, max and + are commutative, so the bits are the anchors-as-rows ones
        iou = _iou(gx1, gy1, gx2, gy2, ga, ax1, ay1, ax2, ay2, aa, F64)
        if F64:
            bm, ba = tl.max(tl.where(gv[:, None], iou, -1.0), axis=0, return_indices=True,
                            return_indices_tie_break_left=True)
            take = bm > best  # strict: an earlier tile keeps a tie
            best = tl.where(take, bm, best)
            barg = tl.where(take, ba.to(tl.int64) + m0, barg)
        else:
            k = tl.where(gv[:, None], _argmax_key(iou, offs_m[:, None]), 0)
            key = tl.maximum(key, tl.max(k, axis=0))
        col = tl.max(tl.where(nmask[None, :], iou, 0.0), axis=1)
        # relaxed: the maxima are read after the kernel ends; no fence, and RED where unused
        tl.atomic_max(gmax_ptr + b * M + offs_m, col, mask=gv, sem="relaxed")
    if not F64:
        has = key > 0
        best = tl.where(has, (key >> 32).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
        barg = tl.where(has, 4294967295 - (key & 4294967295), -1)
    tl.store(mx_ptr + b * N + offs_n, tl.maximum(best, 0.0), mask=nmask)
    tl.store(arg_ptr + b * N + offs_n, barg, mask=nmask)


def launch_iou_max(a, g, v, fmt: int, mx, arg, gmax, *, block_n: int = BLOCK_N, block_m: int = BLOCK_M) -> None:
    """a [B, N, 4], g [B, M, 4] (any strides), v [B, M] bool or None; writes
    mx / gmax (float32, float64 for float64 boxes; gmax zero-initialised,
    padded gts left at 0) and arg (int64), all contiguous [B, N] / [B, M]."""
    B, N, M = a.shape[0], a.shape[1], g.shape[1]
    if B > 65535:
        raise ValueError(f"segfast: the triton box_iou_max takes at most 65535 images, got {B}")
    if M >= 2**31:
        raise ValueError(f"segfast: the triton box_iou_max takes fewer than 2**31 gts per image, got {M}")
    vv = v.view(torch.uint8) if v is not None else None
    vs = v.stride() if v is not None else (0, 0)
    grid = (triton.cdiv(N, block_n), B)
    wrap(_iou_max_kernel)[grid](
        a, g, vv, mx, arg, gmax, N, M, *a.stride(), *g.stride(), *vs,
        HAS_VALID=v is not None, FMT=int(fmt), F64=a.dtype == torch.float64,
        BLOCK_N=block_n, BLOCK_M=block_m, num_warps=IOU_MAX_WARPS, **NO_FMA)


@triton.jit
def _nms_mask_kernel(b_ptr, cls_ptr, thr_ptr, mask_ptr, N, CB, s0, s4,
                     HAS_CLS: tl.constexpr, FMT: tl.constexpr, F64: tl.constexpr, BLOCK_R: tl.constexpr):
    c = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    k = tl.arange(0, 64).to(tl.int64)
    cols = c * 64 + k
    rmask = rows < N
    cmask = cols < N
    rx1, ry1, rx2, ry2 = _load_box(b_ptr, rows * s0, s4, rmask, FMT, F64)
    cx1, cy1, cx2, cy2 = _load_box(b_ptr, cols * s0, s4, cmask, FMT, F64)
    iou = _iou(rx1, ry1, rx2, ry2, (rx2 - rx1) * (ry2 - ry1), cx1, cy1, cx2, cy2, (cx2 - cx1) * (cy2 - cy1),
               F64)
    thr = tl.load(thr_ptr)
    sup = (iou > thr) & (cols[None, :] > rows[:, None]) & cmask[None, :]
    if HAS_CLS:
        rc = tl.load(cls_ptr + rows, mask=rmask, other=0)
        cc = tl.load(cls_ptr + cols, mask=cmask, other=0)
        sup = sup & (rc[:, None] == cc[None, :])
    one = tl.full([64], 1, tl.int64)
    bits = tl.where(sup, (one << k)[None, :], 0)
    word = tl.sum(bits, axis=1)  # disjoint bits: the sum is the OR (bit 63 wraps to the sign)
    tl.store(mask_ptr + rows * CB + c, word, mask=rmask)


@triton.jit
def _nms_sweep_kernel(mask_ptr, removed_ptr, keep_ptr, N, CB, BLOCK_W: tl.constexpr):
    k64 = tl.arange(0, 64).to(tl.int64)
    one = tl.full([], 1, tl.int64)
    for ib in range(0, CB):
        rows = ib * 64 + k64
        rmask = rows < N
        diag = tl.load(mask_ptr + rows * CB + ib, mask=rmask, other=0)
        r = tl.load(removed_ptr + ib)
        kept = tl.full([], 0, tl.int64)
        for k in range(0, 64):
            kk = k + tl.zeros([], tl.int64)  # int64 in the compiler and the interpreter alike
            alive = (((r >> kk) & 1) == 0) & (ib * 64 + k < N)
            d = tl.sum(tl.where(k64 == kk, diag, 0))
            kept = tl.where(alive, kept | (one << kk), kept)
            r = tl.where(alive, r | d, r)
        tl.store(keep_ptr + rows, ((kept >> k64) & 1).to(tl.uint8), mask=rmask)
        for w0 in range(ib + 1, CB, BLOCK_W):
            w = w0 + tl.arange(0, BLOCK_W).to(tl.int64)
            wm = w < CB
            acc = tl.load(removed_ptr + w, mask=wm, other=0)
            for k in range(0, 64):
                kk = k + tl.zeros([], tl.int64)  # int64 in the compiler and the interpreter alike
                if ((kept >> kk) & 1) != 0:  # only the kept rows are read
                    acc |= tl.load(mask_ptr + (ib * 64 + kk) * CB + w, mask=wm, other=0)
            tl.store(removed_ptr + w, acc, mask=wm)
        tl.debug_barrier()  # the next block reads removed words other threads wrote


def nms_keep(b, cls, iou_threshold: float, fmt: int, *, block_r: int = NMS_BLOCK_R,
             block_w: int = NMS_BLOCK_W):
    """Keep flags (uint8 [N]) of greedy NMS over boxes ``b`` [N, 4] already
    sorted by decreasing score; ``cls`` int64 [N] (same order) or None."""
    N = b.shape[0]
    CB = triton.cdiv(N, 64)
    if CB > 65535:
        raise ValueError("segfast: the triton nms takes at most 65535 * 64 boxes")
    acc = torch.float64 if b.dtype == torch.float64 else torch.float32
    thr = torch.full((1,), iou_threshold, dtype=acc, device=b.device)
    mask = torch.empty((N, CB), dtype=torch.int64, device=b.device)
    removed = torch.zeros(CB, dtype=torch.int64, device=b.device)
    keep = torch.empty(N, dtype=torch.uint8, device=b.device)
    wrap(_nms_mask_kernel)[(CB, triton.cdiv(N, block_r))](
        b, cls, thr, mask, N, CB, b.stride(0), b.stride(1),
        HAS_CLS=cls is not None, FMT=int(fmt), F64=b.dtype == torch.float64, BLOCK_R=block_r,
        num_warps=4, **NO_FMA)
    wrap(_nms_sweep_kernel)[(1,)](mask, removed, keep, N, CB, BLOCK_W=block_w, num_warps=1)
    return keep
