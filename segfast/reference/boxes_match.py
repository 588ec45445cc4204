"""Eager PyTorch reference of box matching and NMS: the test oracle, the
``torch`` backend and the benchmark baseline. Never imports a kernel.

The geometry is csrc/common/boxes.h written with tensors, in the same order
of operations (so float32 results match the C++ kernels bit for bit):

    inter = max(min(ax2, bx2) - max(ax1, bx1), 0) * max(min(ay2, by2) - max(ay1, by1), 0)
    union = area_a + area_b - inter          area = (x2 - x1) * (y2 - y1)
    iou   = inter / union, and 0 where union <= 0

computed in float32 (float64 for float64 boxes). IoU is then always in
[0, 1] for finite coordinates.

Tie rules, shared by every backend:

* ``box_iou_max``: the argmax is the lowest ground-truth index among equal
  maxima over the *valid* ground truths; -1 when an image has no valid
  ground truth (max 0). A row with valid ground truth but no overlap gets
  max 0 and the first valid ground truth. The per-ground-truth max is the
  max over anchors (0 when N = 0), -1 for padded (invalid) ground truth.
* ``nms``: boxes are visited in decreasing score order, equal scores in
  increasing original index (a stable sort); a box is suppressed by an
  earlier kept box when their IoU is strictly greater than the threshold.
  ``batched_nms`` treats boxes of different ``idxs`` as not overlapping.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

FMT_XYXY, FMT_XYWH, FMT_CXCYWH = 0, 1, 2
FMTS = {"xyxy": FMT_XYXY, "xywh": FMT_XYWH, "cxcywh": FMT_CXCYWH}

# Anchors per chunk of the chunked reference (memory ~ chunk * M * 4 tensors).
CHUNK = 4096


def acc_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def to_xyxy(b: Tensor, fmt: int) -> Tensor:
    """[..., 4] in ``fmt`` -> xyxy, in the accumulation dtype (boxes.h to_xyxy)."""
    b = b.to(acc_dtype(b))
    a, c, w, h = b.unbind(-1)
    if fmt == FMT_XYWH:
        return torch.stack([a, c, a + w, c + h], -1)
    if fmt == FMT_CXCYWH:
        hw, hh = w * 0.5, h * 0.5
        return torch.stack([a - hw, c - hh, a + hw, c + hh], -1)
    return b


def area(b: Tensor) -> Tensor:
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """IoU of xyxy boxes a [..., N, 4] and b [..., M, 4] -> [..., N, M]."""
    a_, b_ = a[..., :, None, :], b[..., None, :, :]
    w = (torch.minimum(a_[..., 2], b_[..., 2]) - torch.maximum(a_[..., 0], b_[..., 0])).clamp_min(0)
    h = (torch.minimum(a_[..., 3], b_[..., 3]) - torch.maximum(a_[..., 1], b_[..., 1])).clamp_min(0)
    inter = w * h
    union = area(a)[..., :, None] + area(b)[..., None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros((), dtype=inter.dtype, device=inter.device))


def box_iou_max(boxes: Tensor, gt: Tensor, gt_valid: Optional[Tensor] = None, fmt: int = FMT_XYXY,
                chunk: int = CHUNK):
    """boxes [B, N, 4], gt [B, M, 4], gt_valid [B, M] bool or None ->
    (max IoU [B, N], argmax [B, N] int64, per-gt max [B, M]), IoUs in the
    accumulation dtype. Chunked over N: memory O(chunk * M), not O(N * M).
    See the module docstring for the tie rules."""
    B, N, M = boxes.shape[0], boxes.shape[1], gt.shape[1]
    dev = boxes.device
    acc = acc_dtype(boxes)
    g = to_xyxy(gt, fmt)
    valid = torch.ones((B, M), dtype=torch.bool, device=dev) if gt_valid is None else gt_valid.to(torch.bool)
    cols = torch.arange(M, device=dev)
    gmax = torch.zeros((B, M), dtype=acc, device=dev)
    mx_out, arg_out = [], []
    for s in range(0, N, chunk):
        a = to_xyxy(boxes[:, s:s + chunk], fmt)
        iou = iou_matrix(a, g)  # [B, n, M]
        masked = torch.where(valid[:, None, :], iou, torch.full((), -1.0, dtype=acc, device=dev))
        mx = masked.amax(-1) if M else masked.new_full(masked.shape[:2], -1.0)
        # explicit tie rule: the lowest column index attaining the max
        first = torch.where(masked == mx[..., None], cols, M).amin(-1) if M else mx.long()
        arg_out.append(torch.where(mx < 0, -1, first))
        mx_out.append(mx.clamp_min(0))
        if M:
            gmax = torch.maximum(gmax, torch.where(valid[:, None, :], iou, 0).amax(1))
    if N == 0:
        mx = torch.zeros((B, 0), dtype=acc, device=dev)
        arg = torch.zeros((B, 0), dtype=torch.int64, device=dev)
    else:
        mx, arg = torch.cat(mx_out, 1), torch.cat(arg_out, 1)
    gmax = torch.where(valid, gmax, torch.full((), -1.0, dtype=acc, device=dev))
    return mx, arg, gmax


def box_iou_max_full(boxes: Tensor, gt: Tensor):
    """The benchmark baseline: what users write (the whole [B, N, M] IoU
    matrix, then max over each axis). xyxy boxes, no padding."""
    iou = iou_matrix(boxes.to(acc_dtype(boxes)), gt.to(acc_dtype(gt)))
    mx, arg = iou.max(-1)
    return mx, arg, iou.amax(-2)


def sort_by_score(scores: Tensor) -> Tensor:
    """Decreasing score, equal scores in increasing index (stable sort)."""
    return torch.sort(scores, descending=True, stable=True).indices


def nms_keep_sorted(b: Tensor, iou_threshold: float, cls: Optional[Tensor] = None, chunk: int = 2048) -> Tensor:
    """Greedy NMS on xyxy boxes ``b`` [N, 4] (accumulation dtype) already in
    visiting order -> keep flags [N] bool. ``cls``: boxes of different
    classes never suppress each other."""
    N = b.shape[0]
    over = torch.empty((N, N), dtype=torch.bool, device=b.device)
    for s in range(0, N, chunk):  # the [N, N] matrix of 'suppresses', one row chunk at a time
        o = iou_matrix(b[s:s + chunk], b) > iou_threshold
        if cls is not None:
            o &= cls[s:s + chunk, None] == cls[None, :]
        over[s:s + chunk] = o
    over.triu_(1)  # only earlier boxes suppress later ones
    removed = torch.zeros(N, dtype=torch.bool, device=b.device)
    keep = torch.zeros(N, dtype=torch.bool, device=b.device)
    i = 0
    while i < N:  # one step per kept box: jump to the next box not removed
        alive = ~removed[i:]
        j = int(torch.argmax(alive.to(torch.uint8)))
        if not bool(alive[j]):
            break
        i += j
        keep[i] = True
        removed |= over[i]
        i += 1
    return keep


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Optional[Tensor] = None,
        fmt: int = FMT_XYXY) -> Tensor:
    """Indices (int64) of the kept boxes, in decreasing score order (see the
    module docstring). ``idxs``: batched NMS, one class per box."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = sort_by_score(scores)
    b = to_xyxy(boxes[order], fmt)
    keep = nms_keep_sorted(b, iou_threshold, None if idxs is None else idxs[order])
    return order[keep]


def nms_by_class(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, fmt: int = FMT_XYXY) -> Tensor:
    """batched NMS the long way (a second oracle): NMS per class, merged by
    decreasing score, equal scores by increasing index."""
    kept = [torch.zeros(0, dtype=torch.int64, device=boxes.device)]
    for c in torch.unique(idxs):
        sel = (idxs == c).nonzero().squeeze(1)
        kept.append(sel[nms(boxes[sel], scores[sel], iou_threshold, fmt=fmt)])
    kept = torch.cat(kept).sort().values  # increasing index, then a stable sort by score
    return kept[sort_by_score(scores[kept])]
