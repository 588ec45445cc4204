"""IoU-balanced losses of Wu et al., "IoU-balanced Loss Functions for Single-stage
Object Detection", as the authors' code defines them. PyTorch on top of the
aligned IoU kernels (segfast/ops/boxes.py): the losses are element-wise on the
class logits / regression targets, and their IoU weights carry no gradient.

Classification (sigmoid focal, BCE, softmax cross entropy): element losses L
(element weights included), t the positive indicator,

    w = (1 - t) + (t·iou)^eta · normalizer,   normalizer = Σ L·t / (Σ L·t·iou^eta + 1e-6)

w detached (no gradient through iou or the normalizer), loss = Σ L·w / avg_factor.
The normalizer keeps the summed loss of the positives equal to the unweighted one.

Localization: smooth-L1(beta) of the regression targets weighted by
weight·iou^lambda (detached), summed and divided by avg_factor, times loss_weight.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _doc
from ..reference import boxes as ref
from . import boxes as _boxes
from ._common import require


__all__ = ["iou_balanced_focal_loss", "iou_balanced_bce_loss", "iou_balanced_ce_loss", "iou_balanced_smooth_l1_loss",
           "matched_iou", "IoUBalancedFocalLoss", "IoUBalancedBCELoss", "IoUBalancedCELoss", "IoUBalancedSmoothL1Loss"]


def matched_iou(pred_boxes: Tensor, gt_boxes: Tensor, *, fmt: str = "xyxy", backend: Optional[str] = None) -> Tensor:
    """The aligned IoU of decoded predicted boxes and their ground truth, detached.

    The ``iou`` argument of the IoU-balanced losses: computed without
    gradient, in float32 (float64 for float64 boxes).

    Args:
        pred_boxes: [..., 4] decoded predicted boxes.
        gt_boxes: [..., 4] their matched ground-truth boxes.
        fmt: "xyxy", "xywh" or "cxcywh", for both.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        [...] IoUs, float32 (float64 for float64 boxes), not requiring grad.

    Raises:
        ValueError: sets of different shapes or not [..., 4], an unknown ``fmt``.
        TypeError: a non-tensor or an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> pred = torch.tensor([[0., 0., 2., 2.]], requires_grad=True)
        >>> segfast.matched_iou(pred, torch.tensor([[0., 0., 2., 4.]]))
        tensor([0.5000])
    """
    with torch.no_grad():
        iou = _boxes.aligned(pred_boxes.detach(), gt_boxes.detach(), "iou", fmt=fmt, backend=backend,
                             what="matched_iou")
    return iou.to(torch.float64 if iou.dtype == torch.float64 else torch.float32)


def _check_iou(iou: Tensor, n: int, what: str) -> Tensor:
    if not isinstance(iou, Tensor) or not iou.dtype.is_floating_point:
        raise TypeError(f"{what}: iou must be a float tensor")
    if iou.numel() != n:
        raise ValueError(f"{what}: iou must have one value per sample ({n}), got shape {tuple(iou.shape)}")
    if iou.numel():
        require(((iou >= 0) & (iou <= 1)).all(), f"{what}: iou (shape {tuple(iou.shape)}) values must lie in [0, 1]")
    return iou.detach().reshape(n)


def _check_param(what: str, **kw) -> None:
    for k, v in kw.items():
        if not (isinstance(v, (int, float)) and v >= 0 and v == v and v != float("inf")):
            raise ValueError(f"{what}: {k} must be a finite number >= 0, got {v!r}")


def _logits_2d(pred: Tensor, what: str) -> Tensor:
    if not isinstance(pred, Tensor) or pred.dtype not in _boxes._FLOATS:
        raise TypeError(f"{what}: pred must be a float tensor")
    if pred.dim() < 1:
        raise ValueError(f"{what}: pred must be [..., C]")
    return pred.reshape(-1, pred.shape[-1])


def _sigmoid_targets(pred2: Tensor, target: Tensor, shape, what: str) -> Tensor:
    """[N, C] positive indicator from dense {0, 1} targets [..., C] or labels [...]
    (a label in [0, C) is that class, any other value is background)."""
    N, C = pred2.shape
    if target.device != pred2.device:
        raise ValueError(f"{what}: target is on {target.device} but pred is on {pred2.device}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        if tuple(target.shape) != tuple(shape):
            raise ValueError(f"{what}: dense target must have pred's shape {tuple(shape)}, got {tuple(target.shape)}")
        return target.reshape(N, C).to(pred2.dtype if pred2.dtype == torch.float64 else torch.float32)
    if tuple(target.shape) != tuple(shape[:-1]):
        raise ValueError(f"{what}: label target must be pred's shape without C, {tuple(shape[:-1])}, "
                         f"got {tuple(target.shape)}")
    lab = target.reshape(N).long()
    cls = torch.arange(C, device=pred2.device)
    return (lab[:, None] == cls[None, :]).to(torch.float64 if pred2.dtype == torch.float64 else torch.float32)


def _weight(weight, shape, n: int, dtype, device, what: str) -> Optional[Tensor]:
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=dtype, device=device)
    try:
        return torch.broadcast_to(w, shape).reshape(n, -1) if w.dim() else w.expand(n, 1)
    except RuntimeError:
        raise ValueError(f"{what}: weight of shape {tuple(w.shape)} does not broadcast to {tuple(shape)}") from None


def _balanced(L: Tensor, t: Tensor, iou: Tensor, eta: float, avg_factor) -> Tensor:
    """Σ L·w / avg_factor with the detached IoU-balanced weights."""
    with torch.no_grad():
        tw = (t * iou[:, None]).pow(eta)
        Ld = L.detach()
        normalizer = (Ld * t).sum() / ((Ld * tw * t).sum() + 1e-6)
        w = (1 - t) + tw * normalizer
    return (L * w).sum() / avg_factor


def _avg(avg_factor, default):
    return default if avg_factor is None else avg_factor


def iou_balanced_focal_loss(pred: Tensor, target: Tensor, iou: Tensor, *, weight=None, gamma: float = 2.0,
                            alpha: float = 0.25, eta: float = 1.5, avg_factor=None,
                            loss_weight: float = 1.0) -> Tensor:
    """IoU-balanced sigmoid focal loss (Wu et al.).

    From "IoU-balanced Loss Functions for Single-stage Object Detection": the
    focal loss of each positive element is scaled by iou^eta (detached),
    renormalised so that the positives' total is unchanged.

    Args:
        pred: logits [..., C].
        target: {0, 1} targets [..., C], or labels [...] (a label outside
            [0, C) is background).
        iou: [...] IoU of each sample with its ground truth (see
            :func:`matched_iou`), in [0, 1].
        weight: element weights broadcastable to ``pred``.
        gamma: focusing exponent, >= 0.
        alpha: weight of the positives.
        eta: exponent of the IoU weights, >= 0.
        avg_factor: the normaliser; default the number of positive elements
            (at least 1).
        loss_weight: factor of the whole loss, >= 0.

    Returns:
        The 0-d loss, float32 (float64 for float64 logits).

    Raises:
        ValueError: shapes that do not fit (naming the argument), ``iou``
            values outside [0, 1], negative or non-finite hyper-parameters,
            labels out of range.
        TypeError: a non-float ``pred`` or ``iou``.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(4, 3)
        >>> labels = torch.tensor([0, 1, 2, 3])   # a label outside [0, C): background
        >>> iou = torch.tensor([0.9, 0.5, 0.7, 0.0])
        >>> loss = segfast.iou_balanced_focal_loss(logits, labels, iou)
        >>> loss.shape
        torch.Size([])
    """
    what = "iou_balanced_focal_loss"
    _check_param(what, gamma=gamma, eta=eta, loss_weight=loss_weight)
    x = _logits_2d(pred, what)
    t = _sigmoid_targets(x, target, pred.shape, what)
    iou = _check_iou(iou, x.shape[0], what).to(t.dtype)
    xf = x.to(t.dtype)
    L = ref.sigmoid_focal_terms(xf, t, gamma, alpha)
    w = _weight(weight, pred.shape, x.shape[0], t.dtype, x.device, what)
    if w is not None:
        L = L * w
    return loss_weight * _balanced(L, t, iou, eta, _avg(avg_factor, t.sum().clamp_min(1)))


def iou_balanced_bce_loss(pred: Tensor, target: Tensor, iou: Tensor, *, weight=None, eta: float = 1.5,
                          avg_factor=None, loss_weight: float = 1.0) -> Tensor:
    """IoU-balanced binary cross entropy on logits.

    The BCE of each positive element is scaled by iou^eta (detached),
    renormalised so that the positives' total is unchanged.

    Args:
        pred: logits [..., C].
        target: {0, 1} targets [..., C], or labels [...] (a label outside
            [0, C) is background).
        iou: [...] IoU of each sample (see :func:`matched_iou`), in [0, 1].
        weight: element weights broadcastable to ``pred``.
        eta: exponent of the IoU weights, >= 0.
        avg_factor: the normaliser; default the number of elements with
            weight > 0 (at least 1), as the authors' code.
        loss_weight: factor of the whole loss, >= 0.

    Returns:
        The 0-d loss, float32 (float64 for float64 logits).

    Raises:
        ValueError: shapes that do not fit (naming the argument), ``iou``
            values outside [0, 1], negative or non-finite hyper-parameters,
            labels out of range.
        TypeError: a non-float ``pred`` or ``iou``.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(4, 3)
        >>> labels = torch.tensor([0, 1, 2, 3])   # a label outside [0, C): background
        >>> iou = torch.tensor([0.9, 0.5, 0.7, 0.0])
        >>> loss = segfast.iou_balanced_bce_loss(logits, labels, iou)
        >>> loss.shape
        torch.Size([])
    """
    what = "iou_balanced_bce_loss"
    _check_param(what, eta=eta, loss_weight=loss_weight)
    x = _logits_2d(pred, what)
    t = _sigmoid_targets(x, target, pred.shape, what)
    iou = _check_iou(iou, x.shape[0], what).to(t.dtype)
    L = F.binary_cross_entropy_with_logits(x.to(t.dtype), t, reduction="none")
    w = _weight(weight, pred.shape, x.shape[0], t.dtype, x.device, what)
    if w is not None:
        L = L * w
    default = torch.as_tensor(float(max(t.numel(), 1)), dtype=t.dtype, device=x.device) if w is None else \
        (torch.broadcast_to(w, L.shape) > 0).sum().to(t.dtype).clamp_min(1)
    return loss_weight * _balanced(L, t, iou, eta, _avg(avg_factor, default))


def iou_balanced_ce_loss(pred: Tensor, target: Tensor, iou: Tensor, *, weight=None, eta: float = 1.5,
                         background: int = 0, avg_factor=None, loss_weight: float = 1.0) -> Tensor:
    """IoU-balanced softmax cross entropy.

    A sample is positive when its label != ``background`` (the authors' code:
    0); the cross entropy of each positive is scaled by iou^eta (detached),
    renormalised so that the positives' total is unchanged.

    Args:
        pred: logits [..., C].
        target: integer labels [...] in [0, C).
        iou: [...] IoU of each sample (see :func:`matched_iou`), in [0, 1].
        weight: per-sample weights [...].
        eta: exponent of the IoU weights, >= 0.
        background: the background label.
        avg_factor: the normaliser; default the number of samples with
            weight > 0 (at least 1).
        loss_weight: factor of the whole loss, >= 0.

    Returns:
        The 0-d loss, float32 (float64 for float64 logits).

    Raises:
        ValueError: shapes that do not fit (naming the argument), ``iou``
            values outside [0, 1], negative or non-finite hyper-parameters,
            labels out of range.
        TypeError: a non-float ``pred`` or ``iou``.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(4, 3)                        # CE = log 3 for every sample
        >>> labels = torch.tensor([0, 1, 2, 1])
        >>> loss = segfast.iou_balanced_ce_loss(logits, labels, torch.tensor([0.9, 0.5, 0.7, 0.2]))
        >>> round(loss.item(), 4)
        1.0986
    """
    what = "iou_balanced_ce_loss"
    _check_param(what, eta=eta, loss_weight=loss_weight)
    x = _logits_2d(pred, what)
    N, C = x.shape
    if target.dtype.is_floating_point or target.dtype == torch.bool or tuple(target.shape) != tuple(pred.shape[:-1]):
        raise ValueError(f"{what}: target must be integer labels of shape {tuple(pred.shape[:-1])}")
    lab = target.reshape(N).long()
    if N:
        require(~((lab < 0) | (lab >= C)).any(), f"{what}: target (shape {tuple(target.shape)}) labels must lie in "
                f"[0, {C})")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    iou = _check_iou(iou, N, what).to(acc)
    L = F.cross_entropy(x.to(acc), lab, reduction="none")[:, None]
    t = (lab != background).to(acc)[:, None]
    w = None if weight is None else torch.as_tensor(weight, dtype=acc, device=x.device).reshape(-1)
    if w is not None:
        if w.numel() not in (1, N):
            raise ValueError(f"{what}: weight must have one value per sample ({N})")
        L = L * w.expand(N)[:, None]
    default = torch.as_tensor(float(max(N, 1)), dtype=acc, device=x.device) if w is None else \
        (w.expand(N) > 0).sum().to(acc).clamp_min(1)
    return loss_weight * _balanced(L, t, iou, eta, _avg(avg_factor, default))


def iou_balanced_smooth_l1_loss(pred: Tensor, target: Tensor, iou: Tensor, *, weight=None, beta: float = 1.0,
                                lam: float = 1.5, avg_factor=None, loss_weight: float = 1.0) -> Tensor:
    """IoU-balanced smooth-L1 localization loss.

    Σ smooth_l1(pred - target; beta)·weight·iou^lam (detached) / avg_factor ·
    loss_weight.

    Args:
        pred: regression outputs [..., 4].
        target: regression targets [..., 4].
        iou: [...] IoU of each sample (see :func:`matched_iou`), in [0, 1].
        weight: broadcastable to ``pred`` (the authors: 1 on positives).
        beta: the smooth-L1 threshold, >= 0.
        lam: exponent of the IoU weights, >= 0.
        avg_factor: the normaliser; default (number of weights > 0) / 4 + 1e-6,
            as the authors' code.
        loss_weight: factor of the whole loss, >= 0.

    Returns:
        The 0-d loss, float32 (float64 for float64 input).

    Raises:
        ValueError: shapes that do not fit (naming the argument), ``iou``
            values outside [0, 1], negative or non-finite hyper-parameters,
            labels out of range.
        TypeError: a non-float ``pred`` or ``iou``.

    Example:
        >>> import torch, segfast
        >>> pred, target = torch.zeros(2, 4), torch.full((2, 4), 0.5)
        >>> loss = segfast.iou_balanced_smooth_l1_loss(pred, target, torch.ones(2))
        >>> round(loss.item(), 4)                     # 0.5·0.5² per coordinate, 8 / (8/4)
        0.5
    """
    what = "iou_balanced_smooth_l1_loss"
    _check_param(what, beta=beta, lam=lam, loss_weight=loss_weight)
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor) or pred.shape != target.shape:
        raise ValueError(f"{what}: pred and target must be tensors of one shape")
    if pred.dim() < 1 or pred.shape[-1] != 4:
        raise ValueError(f"{what}: pred must be [..., 4], got shape {tuple(pred.shape)}")
    if pred.dtype not in _boxes._FLOATS:
        raise TypeError(f"{what}: pred must be a float tensor")
    acc = torch.float64 if pred.dtype == torch.float64 else torch.float32
    p, tg = pred.reshape(-1, 4).to(acc), target.reshape(-1, 4).to(acc)
    n = p.shape[0]
    iou = _check_iou(iou, n, what).to(acc)
    w = torch.ones((n, 4), dtype=acc, device=p.device) if weight is None else \
        _weight(weight, pred.shape, n, acc, p.device, what).expand(n, 4)
    with torch.no_grad():
        iw = w * iou[:, None].pow(lam)
    L = ref.smooth_l1(p, tg, beta)
    default = (w > 0).sum().to(acc) / 4 + 1e-6
    return loss_weight * (L * iw).sum() / _avg(avg_factor, default)


# ---------------------------------------------------------------- Modules


class _IoUBalancedLoss(torch.nn.Module):
    """IoU-balanced losses: forward(pred, target, iou, weight=None, avg_factor=None)."""
    _fn = None

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, pred, target, iou, weight=None, avg_factor=None):
        return type(self)._fn(pred, target, iou, weight=weight, avg_factor=avg_factor, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class IoUBalancedFocalLoss(_IoUBalancedLoss):
    """Module form of :func:`segfast.iou_balanced_focal_loss`.

    Holds the hyper-parameters; ``forward(pred, target, iou, weight=None,
    avg_factor=None)`` calls :func:`segfast.iou_balanced_focal_loss`.

    Args:
        gamma: focusing exponent.
        alpha: weight of the positives.
        eta: exponent of the IoU weights.
        loss_weight: factor of the whole loss.

    Returns:
        {balanced_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.IoUBalancedFocalLoss(eta=1.5)
        >>> logits, labels = torch.zeros(4, 3), torch.tensor([0, 1, 2, 3])   # label 3: background
        >>> loss_fn(logits, labels, torch.full((4,), 0.5)).shape
        torch.Size([])
    """
    _fn = staticmethod(iou_balanced_focal_loss)

    def __init__(self, gamma=2.0, alpha=0.25, eta=1.5, loss_weight=1.0):
        super().__init__(gamma=gamma, alpha=alpha, eta=eta, loss_weight=loss_weight)


class IoUBalancedBCELoss(_IoUBalancedLoss):
    """Module form of :func:`segfast.iou_balanced_bce_loss`.

    Holds the hyper-parameters; ``forward(pred, target, iou, weight=None,
    avg_factor=None)`` calls :func:`segfast.iou_balanced_bce_loss`.

    Args:
        eta: exponent of the IoU weights.
        loss_weight: factor of the whole loss.

    Returns:
        {balanced_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.IoUBalancedBCELoss(eta=1.5)
        >>> logits, labels = torch.zeros(4, 3), torch.tensor([0, 1, 2, 3])
        >>> loss_fn(logits, labels, torch.full((4,), 0.5)).shape
        torch.Size([])
    """
    _fn = staticmethod(iou_balanced_bce_loss)

    def __init__(self, eta=1.5, loss_weight=1.0):
        super().__init__(eta=eta, loss_weight=loss_weight)


class IoUBalancedCELoss(_IoUBalancedLoss):
    """Module form of :func:`segfast.iou_balanced_ce_loss`.

    Holds the hyper-parameters; ``forward(pred, target, iou, weight=None,
    avg_factor=None)`` calls :func:`segfast.iou_balanced_ce_loss`.

    Args:
        eta: exponent of the IoU weights.
        background: the background label.
        loss_weight: factor of the whole loss.

    Returns:
        {balanced_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.IoUBalancedCELoss(eta=1.5, background=0)
        >>> logits, labels = torch.zeros(4, 3), torch.tensor([0, 1, 2, 1])
        >>> round(loss_fn(logits, labels, torch.full((4,), 0.5)).item(), 4)
        1.0986
    """
    _fn = staticmethod(iou_balanced_ce_loss)

    def __init__(self, eta=1.5, background=0, loss_weight=1.0):
        super().__init__(eta=eta, background=background, loss_weight=loss_weight)


class IoUBalancedSmoothL1Loss(_IoUBalancedLoss):
    """Module form of :func:`segfast.iou_balanced_smooth_l1_loss`.

    Holds the hyper-parameters; ``forward(pred, target, iou, weight=None,
    avg_factor=None)`` calls :func:`segfast.iou_balanced_smooth_l1_loss`.

    Args:
        beta: the smooth-L1 threshold.
        lam: exponent of the IoU weights.
        loss_weight: factor of the whole loss.

    Returns:
        {balanced_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.IoUBalancedSmoothL1Loss(beta=1.0, lam=1.5)
        >>> deltas = torch.zeros(2, 4)
        >>> loss_fn(deltas, deltas, torch.ones(2)).item()
        0.0
    """
    _fn = staticmethod(iou_balanced_smooth_l1_loss)

    def __init__(self, beta=1.0, lam=1.5, loss_weight=1.0):
        super().__init__(beta=beta, lam=lam, loss_weight=loss_weight)


_doc.fill_modules(globals(), __name__)
