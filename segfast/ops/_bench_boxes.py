"""segfast-bench cases of the box families (boxes, boxes_match;
collected through segfast/_families.py), fp32 at shapes of their own:
pairwise IoU 4096 x 4096 (forward), the CIoU loss on 1M aligned pairs (mean,
forward+backward), ``box_iou_max`` at 200,000 anchors x 500 gts against the
whole IoU matrix reduced eagerly, and NMS on 10,000 boxes."""

from __future__ import annotations

import torch

from .. import bench as sb
from ..reference import boxes as ref_boxes
from ..reference import boxes_match as ref_match
from . import boxes, boxes_match


def _random_boxes(n, g, lo, hi, extent=1000.0):
    xy = torch.rand(n, 2, generator=g) * extent
    wh = lo + torch.rand(n, 2, generator=g) * (hi - lo)
    return torch.cat([xy, xy + wh], 1)


def _pair_inputs(requires_grad: bool):
    """xyxy boxes in [0, 512)^2, sides in [1, 65); boxes1 requires grad for the
    forward+backward cases (the pairwise IoU is timed forward only)."""
    def inputs(case: sb.Case, device: torch.device, seed: int = 0):
        g = torch.Generator(device="cpu").manual_seed(seed)

        def make(n):
            xy = torch.rand(n, 2, generator=g) * 512
            return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 64], -1).to(device=device,
                                                                                     dtype=case.dtype)

        n = case.shape[0]
        m = case.shape[1] if len(case.shape) > 1 else n
        return make(n).requires_grad_(requires_grad), make(m)
    return inputs


def _pair_bytes(case: sb.Case) -> int:
    """Pairwise: read both sets, write [N, M]; aligned loss: read both sets, write the gradient."""
    e = torch.finfo(case.dtype).bits // 8
    if len(case.shape) > 1:
        n, m = case.shape
        return (4 * (n + m) + n * m) * e
    return 3 * 4 * case.shape[0] * e


def _match_inputs(case, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, N, M = case.shape
    a = torch.stack([_random_boxes(N, g, 8, 256) for _ in range(B)])
    gt = torch.stack([_random_boxes(M, g, 16, 300) for _ in range(B)])
    return a.to(device=device, dtype=case.dtype), gt.to(device=device, dtype=case.dtype)


def _nms_inputs(case, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    (N,) = case.shape
    return (_random_boxes(N, g, 20, 120).to(device=device, dtype=case.dtype),
            torch.rand(N, generator=g).to(device))


def _match_bytes(c):
    return (c.shape[0] * (c.shape[1] + c.shape[2]) * 4 * torch.finfo(c.dtype).bits // 8
            + c.shape[0] * (c.shape[1] * 12 + c.shape[2] * 4))


OPS = {
    "box_iou": sb.Op(boxes.box_iou, lambda x, y: ref_boxes.pairwise(x, y, ref_boxes.IOU),
                     shape=lambda device: (4096, 4096), inputs=_pair_inputs(False), bytes=_pair_bytes),
    "ciou_loss": sb.Op(lambda x, y, backend=None: boxes.ciou_loss(x, y, reduction="mean", backend=backend),
                       lambda x, y: ref_boxes.box_loss(x, y, ref_boxes.CIOU, "mean"),
                       shape=lambda device: (1 << 20,), inputs=_pair_inputs(True), bytes=_pair_bytes),
    # Forward only, no GB/s column (compute-bound): the bytes serve the pytest-benchmark rows' extra_info.
    "box_iou_max": sb.Op(boxes_match.box_iou_max, ref_match.box_iou_max_full, shape=lambda device: (1, 200_000, 500),
                         inputs=_match_inputs, bytes=_match_bytes, gbps=False),
    "nms": sb.Op(lambda b, s, backend=None: boxes_match.nms(b, s, 0.5, backend=backend),
                 lambda b, s: ref_match.nms(b, s, 0.5), shape=lambda device: (10_000,), inputs=_nms_inputs,
                 bytes=lambda c: c.shape[0] * (4 * torch.finfo(c.dtype).bits // 8 + 4 + 8), gbps=False),
}
