"""Eager PyTorch reference of the boxes family (IoU, GIoU, DIoU, CIoU, pairwise and
aligned; the box losses; the IoU-balanced losses): the test oracle and the
benchmark baseline. Never imports a kernel. Written from torchvision's documented
formulas (torchvision.ops.box_iou / generalized_box_iou / distance_box_iou /
complete_box_iou and the *_box_iou_loss functions), with segfast's conventions for
degenerate boxes, where torchvision divides 0 by 0:

* IoU = inter / union, 0 where union <= 0 (``eps`` is added to the union only
  in the losses, as torchvision's losses do).
* GIoU's enclosing term (area_c - union) / area_c is 0 where area_c <= 0
  (losses: / (area_c + eps), 0 where that is <= 0).
* DIoU divides by the squared enclosing diagonal + eps (1e-7 by default).
* CIoU's atan(w / h) is pi/2 * sign(w) for h = 0 and 0 for a 0 x 0 box (torch
  gives atan(±inf) = ±pi/2 and atan(NaN) = NaN); alpha = v / (1 - iou + v + eps)
  is a constant in the backward.
* a pair with a non-finite coordinate gives NaN (torchvision's min / max can
  hide a NaN coordinate; segfast does not, so a reduced loss shows it).
* min / max ties split the gradient in halves (torch.minimum / maximum), and the
  intersection's gradient is 0 where its width or height is 0.

Kinds: IOU, GIOU, DIOU, CIOU. Formats: "xyxy", "xywh", "cxcywh".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

IOU, GIOU, DIOU, CIOU = 0, 1, 2, 3
KINDS = {"iou": IOU, "giou": GIOU, "diou": DIOU, "ciou": CIOU}
FMTS = {"xyxy": 0, "xywh": 1, "cxcywh": 2}
EPS = 1e-7  # torchvision's eps for DIoU / CIoU and the losses


def to_xyxy(b: Tensor, fmt: str = "xyxy") -> Tensor:
    a, c = b[..., :2], b[..., 2:]
    if fmt == "xywh":
        return torch.cat([a, a + c], -1)
    if fmt == "cxcywh":
        return torch.cat([a - 0.5 * c, a + 0.5 * c], -1)
    return b


def _div0(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den > 0, else 0 (and a zero gradient)."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _atan_ratio(w: Tensor, h: Tensor) -> Tensor:
    """atan(w / h), finite for h = 0: pi/2·sign(w); d/dw = h / (w²+h²), d/dh = -w / (w²+h²)."""
    zero = h == 0
    safe = torch.where(zero, torch.ones_like(h), h)
    lim = (math.pi / 2) * torch.sign(w)
    # at h = 0 the derivative formulas stay finite: write the value through a
    # linearisation whose gradient is the formula's limit.
    r2 = torch.where(zero & (w == 0), torch.ones_like(w), w * w + h * h)
    lin = lim.detach() + (-w.detach() / r2) * (h - h.detach()) + (h.detach() / r2) * (w - w.detach())
    return torch.where(zero, lin, torch.atan(w / safe))


def _pair_terms(p: Tensor, g: Tensor, kind: int, loss: bool, eps: float) -> Tensor:
    """The IoU variant of broadcast xyxy boxes p and g (p: predictions, g: targets);
    NaN for a pair with a non-finite coordinate."""
    val = _pair_values(p, g, kind, loss, eps)
    finite = torch.isfinite(p).all(-1) & torch.isfinite(g).all(-1)
    return torch.where(finite, val, torch.full_like(val, float("nan")))


def _pair_values(p: Tensor, g: Tensor, kind: int, loss: bool, eps: float) -> Tensor:
    x1, y1, x2, y2 = p.unbind(-1)
    X1, Y1, X2, Y2 = g.unbind(-1)
    iw = torch.minimum(x2, X2) - torch.maximum(x1, X1)
    ih = torch.minimum(y2, Y2) - torch.maximum(y1, Y1)
    pos = (iw > 0) & (ih > 0)
    inter = torch.where(pos, iw * ih, torch.zeros_like(iw))
    union = (x2 - x1) * (y2 - y1) + (X2 - X1) * (Y2 - Y1) - inter
    iou = _div0(inter, union + eps if loss else union)
    if kind == IOU:
        return iou
    cw = torch.maximum(x2, X2) - torch.minimum(x1, X1)
    ch = torch.maximum(y2, Y2) - torch.minimum(y1, Y1)
    if not loss:  # torchvision's pairwise functions clamp the enclosing box
        cw, ch = cw.clamp(min=0), ch.clamp(min=0)
    if kind == GIOU:
        area_c = cw * ch
        return iou - _div0(area_c - union, area_c + eps if loss else area_c)
    diag = cw * cw + ch * ch + eps
    rho2 = ((x1 + x2 - X1 - X2) * 0.5) ** 2 + ((y1 + y2 - Y1 - Y2) * 0.5) ** 2
    diou = iou - _div0(rho2, diag)
    if kind == DIOU:
        return diou
    v = (4 / math.pi ** 2) * (_atan_ratio(X2 - X1, Y2 - Y1) - _atan_ratio(x2 - x1, y2 - y1)) ** 2
    with torch.no_grad():
        alpha = _div0(v, 1 - iou + v + eps)
    return diou - alpha * v


def _acc(b: Tensor) -> Tensor:
    return b if b.dtype == torch.float64 else b.float()


def pairwise(boxes1: Tensor, boxes2: Tensor, kind: int = IOU, fmt: str = "xyxy", eps: float = EPS) -> Tensor:
    """[..., N, 4] x [..., M, 4] -> [..., N, M] in the boxes' dtype (computed in fp32/fp64)."""
    p = to_xyxy(_acc(boxes1), fmt)[..., :, None, :]
    g = to_xyxy(_acc(boxes2), fmt)[..., None, :, :]
    return _pair_terms(p, g, kind, False, eps).to(boxes1.dtype)


def aligned(boxes1: Tensor, boxes2: Tensor, kind: int = IOU, fmt: str = "xyxy", eps: float = EPS) -> Tensor:
    """[..., N, 4] x [..., N, 4] -> [..., N]: the diagonal of ``pairwise``."""
    out = _pair_terms(to_xyxy(_acc(boxes1), fmt), to_xyxy(_acc(boxes2), fmt), kind, False, eps)
    return out.to(boxes1.dtype)


def reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum() * 0.0
    if reduction == "sum":
        return loss.sum()
    return loss


def box_loss(boxes1: Tensor, boxes2: Tensor, kind: int = IOU, reduction: str = "none", fmt: str = "xyxy",
             eps: float = EPS) -> Tensor:
    """1 - (IoU variant) with torchvision's loss eps semantics; fp32 (fp64) result."""
    val = _pair_terms(to_xyxy(_acc(boxes1), fmt), to_xyxy(_acc(boxes2), fmt), kind, True, eps)
    return reduce(1 - val, reduction)


# ------------------------------------------------------------------ IoU-balanced losses
# Wu et al., "IoU-balanced Loss Functions for Single-stage Object Detection"
# (the authors' code): element losses L (element weights included), positives t,
# w = (1 - t) + (t·iou)^eta · normalizer, normalizer = Σ L·t / (Σ L·t·iou^eta + 1e-6),
# w detached; loss = Σ L·w / avg_factor.


def iou_balance(L: Tensor, t: Tensor, iou: Tensor, eta: float) -> Tensor:
    """Σ L·w with the detached IoU-balanced weights w (iou broadcast against L)."""
    with torch.no_grad():
        tw = (t * iou).pow(eta)
        normalizer = (L * t).sum() / ((L * tw * t).sum() + 1e-6)
        w = (1 - t) + tw * normalizer
    return (L * w).sum()


def sigmoid_focal_terms(x: Tensor, t: Tensor, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    p = torch.sigmoid(x)
    pt = (1 - p) * t + p * (1 - t)
    fw = (alpha * t + (1 - alpha) * (1 - t)) * pt.pow(gamma)
    return torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none") * fw


def smooth_l1(pred: Tensor, target: Tensor, beta: float = 1.0) -> Tensor:
    d = (pred - target).abs()
    return torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta) if beta > 0 else d
