"""nn.Module wrappers: they hold the arguments and call segfast.functional."""

from __future__ import annotations

import torch

from . import _doc
from . import functional as F


class _RegionLoss(torch.nn.Module):
    _fn = None

    def __init__(self, mode: str = "multiclass", *, from_logits: bool = True, ignore_index=None,
                 weight=None, include_background: bool = True, batch: bool = False,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, log_loss: bool = False,
                 reduction: str = "mean", sync_stats: bool = False, process_group=None,
                 backend=None, **extra):
        super().__init__()
        self.kwargs = dict(mode=mode, from_logits=from_logits, ignore_index=ignore_index,
                           include_background=include_background, batch=batch, smooth_nr=smooth_nr,
                           smooth_dr=smooth_dr, log_loss=log_loss, reduction=reduction,
                           sync_stats=sync_stats, process_group=process_group, backend=backend, **extra)
        # A buffer, so .to(device) moves the class weights with the module.
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return type(self)._fn(input, target, weight=self.weight, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items() if k != "process_group")


class DiceLoss(_RegionLoss):
    """Module form of :func:`segfast.dice_loss`: the soft Dice loss.

    Holds the arguments; ``forward(input, target)`` calls :func:`segfast.dice_loss`
    (see it for the shapes, the formula and each argument).

    Args:
        mode: "multiclass", "multilabel" or "binary".
        {region_kwargs}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.DiceLoss("multiclass")
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.8333
        >>> loss.backward()
    """
    _fn = staticmethod(F.dice_loss)


class JaccardLoss(_RegionLoss):
    """Module form of :func:`segfast.jaccard_loss`: the soft IoU loss.

    Holds the arguments; ``forward(input, target)`` calls :func:`segfast.jaccard_loss`
    (see it for the shapes, the formula and each argument).

    Args:
        mode: "multiclass", "multilabel" or "binary".
        {region_kwargs}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.JaccardLoss("multiclass")
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.8889
        >>> loss.backward()
    """
    _fn = staticmethod(F.jaccard_loss)


class TverskyLoss(_RegionLoss):
    """Module form of :func:`segfast.tversky_loss`; gamma != 1 gives the focal Tversky loss.

    Holds the arguments; ``forward(input, target)`` calls :func:`segfast.tversky_loss`
    (see it for the shapes, the formula and each argument).

    Args:
        mode: "multiclass", "multilabel" or "binary".
        alpha: weight of the false positives, >= 0.
        beta: weight of the false negatives, >= 0.
        gamma: focal exponent, > 0.
        {region_kwargs}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.TverskyLoss("multiclass", alpha=0.3, beta=0.7)
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.8611
        >>> loss.backward()
    """
    _fn = staticmethod(F.tversky_loss)

    def __init__(self, mode: str = "multiclass", *, alpha: float = 0.5, beta: float = 0.5,
                 gamma: float = 1.0, **kwargs):
        super().__init__(mode, alpha=alpha, beta=beta, gamma=gamma, **kwargs)


class GeneralizedDiceLoss(_RegionLoss):
    """Module form of :func:`segfast.generalized_dice_loss`.

    Holds the arguments; ``forward(input, target)`` calls :func:`segfast.generalized_dice_loss`
    (see it for the shapes, the formula and each argument).

    Args:
        mode: "multiclass", "multilabel" or "binary".
        w_type: class weights from the target sums: "square", "simple" or "uniform".
        {region_kwargs}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.GeneralizedDiceLoss("multiclass")
        >>> logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> loss = loss_fn(logits, labels)
        >>> round(loss.item(), 4)
        0.6666
        >>> loss.backward()
    """
    _fn = staticmethod(F.generalized_dice_loss)

    def __init__(self, mode: str = "multiclass", *, w_type: str = "square", **kwargs):
        super().__init__(mode, w_type=w_type, **kwargs)


class _PixelLoss(torch.nn.Module):
    """Holds keyword arguments (class-weight tensors as buffers, so .to()
    moves them) and calls the functional form."""
    _fn = None
    _tensor_args = ("weight", "pos_weight", "ce_weight")

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = {}
        for k, v in kwargs.items():
            if k in self._tensor_args and v is not None and not isinstance(v, str):
                self.register_buffer(k, torch.as_tensor(v, dtype=torch.float32))
            else:
                self.kwargs[k] = v

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        buffers = {k: b for k, b in self.named_buffers(recurse=False)}
        return type(self)._fn(input, target, **self.kwargs, **buffers)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class CrossEntropyLoss(_PixelLoss):
    """Module form of :func:`segfast.cross_entropy` (one pass over the logits).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.cross_entropy`.

    Args:
        weight: per-class weights [C], >= 0.
        ignore_index: label whose pixels count nowhere.
        label_smoothing: ε in [0, 1].
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.CrossEntropyLoss(ignore_index=255)
        >>> labels = torch.randint(0, 4, (2, 8, 8))
        >>> round(loss_fn(torch.zeros(2, 4, 8, 8), labels).item(), 4)
        1.3863
    """
    _fn = staticmethod(F.cross_entropy)

    def __init__(self, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean", backend=None):
        super().__init__(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                         reduction=reduction, backend=backend)


class BCEWithLogitsLoss(_PixelLoss):
    """Module form of :func:`segfast.binary_cross_entropy_with_logits`.

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.binary_cross_entropy_with_logits`.

    Args:
        weight: per-class factors [C], >= 0.
        pos_weight: per-class weight of the positive term [C], >= 0.
        ignore_index: target value that counts nowhere.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.BCEWithLogitsLoss(pos_weight=torch.tensor([2.0]))
        >>> masks = torch.zeros(2, 1, 8, 8)
        >>> round(loss_fn(torch.zeros(2, 1, 8, 8), masks).item(), 4)
        0.6931
    """
    _fn = staticmethod(F.binary_cross_entropy_with_logits)

    def __init__(self, weight=None, pos_weight=None, ignore_index=None, reduction="mean", backend=None):
        super().__init__(weight=weight, pos_weight=pos_weight, ignore_index=ignore_index, reduction=reduction,
                         backend=backend)


class BalancedBCELoss(_PixelLoss):
    """Module form of :func:`segfast.balanced_bce_loss` (HED's class-balanced BCE).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.balanced_bce_loss`.

    Args:
        beta: "auto" (per image, the fraction of negative elements) or a number in [0, 1].
        ignore_index: target value that counts nowhere.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.BalancedBCELoss(beta=0.5)
        >>> round(loss_fn(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)).item(), 4)   # 0.5·log 2
        0.3466
    """
    _fn = staticmethod(F.balanced_bce_loss)

    def __init__(self, beta="auto", ignore_index=None, reduction="mean", backend=None):
        super().__init__(beta=beta, ignore_index=ignore_index, reduction=reduction, backend=backend)


class FocalLoss(_PixelLoss):
    """Module form of :func:`segfast.focal_loss` (sigmoid or softmax form by ``mode``).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.focal_loss`.

    Args:
        mode: "binary", "multilabel" (sigmoid form) or "multiclass" (softmax form).
        alpha: see :func:`segfast.focal_loss` (None: 0.25 in the sigmoid form, 1 in the softmax form).
        gamma: focusing exponent, >= 0.
        weight: per-class factors [C], >= 0.
        ignore_index: label (or dense target value) that counts nowhere.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.FocalLoss("multiclass", gamma=2.0)
        >>> labels = torch.zeros(2, 8, 8, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 4, 8, 8), labels).item(), 4)
        0.7798
    """
    _fn = staticmethod(F.focal_loss)

    def __init__(self, mode="binary", alpha=None, gamma=2.0, weight=None, ignore_index=None, reduction="mean",
                 backend=None):
        super().__init__(mode=mode, alpha=alpha, gamma=gamma, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, backend=backend)


class FusedLoss(_PixelLoss):
    """Module form of :func:`segfast.fused_loss` (softmax + positive sharing).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.fused_loss`.

    Args:
        ws: weight of the cross-entropy term, >= 0.
        wp: weight of the positive-sharing term, >= 0.
        ignore_index: label whose pixels count nowhere.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.FusedLoss(ws=0.5, wp=0.5)
        >>> labels = torch.zeros(2, 8, 8, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 4, 8, 8), labels).item(), 4)
        1.3863
    """
    _fn = staticmethod(F.fused_loss)

    def __init__(self, ws=0.5, wp=0.5, ignore_index=None, reduction="mean", backend=None):
        super().__init__(ws=ws, wp=wp, ignore_index=ignore_index, reduction=reduction, backend=backend)


class DiceCELoss(_PixelLoss):
    """Module form of :func:`segfast.dice_ce_loss`: Dice + cross entropy in two passes.

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.dice_ce_loss`.

    Args:
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        ignore_index: label whose pixels count in neither term.
        ce_weight: per-class weights [C] of the CE term.
        label_smoothing: ε in [0, 1] of the CE term.
        {backend}
        **dice_kwargs: further keyword arguments of :func:`segfast.dice_loss`.

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.DiceCELoss(lambda_dice=1.0, lambda_ce=1.0)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 3, 4, 4), labels).item(), 4)
        1.9319
    """
    _fn = staticmethod(F.dice_ce_loss)

    def __init__(self, lambda_dice=1.0, lambda_ce=1.0, ignore_index=None, ce_weight=None, label_smoothing=0.0,
                 backend=None, **dice_kwargs):
        super().__init__(lambda_dice=lambda_dice, lambda_ce=lambda_ce, ignore_index=ignore_index,
                         ce_weight=ce_weight, label_smoothing=label_smoothing, backend=backend, **dice_kwargs)


class DiceFocalLoss(_PixelLoss):
    """Module form of :func:`segfast.dice_focal_loss`.

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.dice_focal_loss`.

    Args:
        mode: the Dice term's activation: "multiclass", "multilabel" or "binary".
        lambda_dice: weight of the Dice term.
        lambda_focal: weight of the focal term.
        focal_form: "softmax", "sigmoid" or None (from ``mode``).
        alpha: the focal term's alpha.
        gamma: focusing exponent, >= 0.
        ignore_index: label that counts in neither term.
        {backend}
        **dice_kwargs: further keyword arguments of :func:`segfast.dice_loss`.

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.DiceFocalLoss("multiclass", gamma=2.0)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 3, 4, 4), labels).item(), 4)
        1.3216
    """
    _fn = staticmethod(F.dice_focal_loss)

    def __init__(self, mode="multiclass", lambda_dice=1.0, lambda_focal=1.0, focal_form=None, alpha=None,
                 gamma=2.0, ignore_index=None, backend=None, **dice_kwargs):
        super().__init__(mode=mode, lambda_dice=lambda_dice, lambda_focal=lambda_focal, focal_form=focal_form,
                         alpha=alpha, gamma=gamma, ignore_index=ignore_index, backend=backend, **dice_kwargs)


class DiceFusedLoss(_PixelLoss):
    """Module form of :func:`segfast.dice_fused_loss`.

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.dice_fused_loss`.

    Args:
        lambda_dice: weight of the Dice term.
        lambda_fused: weight of the fused term.
        ws: weight of the fused term's cross entropy, >= 0.
        wp: weight of its positive-sharing loss, >= 0.
        ignore_index: label that counts in neither term.
        {backend}
        **dice_kwargs: further keyword arguments of :func:`segfast.dice_loss`.

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.DiceFusedLoss()
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 3, 4, 4), labels).item(), 4)
        1.9319
    """
    _fn = staticmethod(F.dice_fused_loss)

    def __init__(self, lambda_dice=1.0, lambda_fused=1.0, ws=0.5, wp=0.5, ignore_index=None, backend=None,
                 **dice_kwargs):
        super().__init__(lambda_dice=lambda_dice, lambda_fused=lambda_fused, ws=ws, wp=wp,
                         ignore_index=ignore_index, backend=backend, **dice_kwargs)


class LovaszHingeLoss(_PixelLoss):
    """Module form of :func:`segfast.lovasz_hinge_loss` (binary / multilabel, logits).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.lovasz_hinge_loss`.

    Args:
        per_image: one segment per image (True) or the whole batch.
        ignore_index: label (or dense target value) whose elements are dropped.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.LovaszHingeLoss(per_image=True)
        >>> loss_fn(torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)).item()
        1.0
    """
    _fn = staticmethod(F.lovasz_hinge_loss)

    def __init__(self, per_image=True, ignore_index=None, reduction="mean", backend=None):
        super().__init__(per_image=per_image, ignore_index=ignore_index, reduction=reduction, backend=backend)


class LovaszSoftmaxLoss(_PixelLoss):
    """Module form of :func:`segfast.lovasz_softmax_loss` (multiclass).

    Holds the arguments (class-weight tensors as buffers, so ``.to(device)``
    moves them); ``forward(input, target)`` calls :func:`segfast.lovasz_softmax_loss`.

    Args:
        classes: "present", "all" or a list of class indices.
        per_image: one segment per image (True) or the whole batch.
        ignore_index: label whose pixels are dropped.
        from_logits: False takes probabilities.
        {reduction}
        {backend}

    Returns:
        {module_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.LovaszSoftmaxLoss(classes="present")
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(loss_fn(torch.zeros(2, 3, 4, 4), labels).item(), 4)
        0.6667
    """
    _fn = staticmethod(F.lovasz_softmax_loss)

    def __init__(self, classes="present", per_image=False, ignore_index=None, from_logits=True,
                 reduction="mean", backend=None):
        super().__init__(classes=classes, per_image=per_image, ignore_index=ignore_index,
                         from_logits=from_logits, reduction=reduction, backend=backend)


# ------------------------------------------------------------------ boxes family
class _BoxLoss(torch.nn.Module):
    """Box losses on aligned pairs: forward(boxes1, boxes2)."""
    _fn = None

    def __init__(self, reduction: str = "mean", fmt: str = "xyxy", eps: float = 1e-7, backend=None):
        super().__init__()
        self.kwargs = dict(reduction=reduction, fmt=fmt, eps=eps, backend=backend)

    def forward(self, boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
        return type(self)._fn(boxes1, boxes2, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


class IoULoss(_BoxLoss):
    """Module form of :func:`segfast.iou_loss`: the 1 - IoU loss of aligned box pairs.

    ``forward(boxes1, boxes2)`` calls :func:`segfast.iou_loss` on predictions and
    targets [..., 4].

    Args:
        {box_args}

    Returns:
        {box_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.IoULoss()
        >>> pred = torch.tensor([[0., 0., 2., 2.]])
        >>> round(loss_fn(pred, torch.tensor([[0., 0., 2., 4.]])).item(), 4)
        0.5
    """
    _fn = staticmethod(F.iou_loss)


class GIoULoss(_BoxLoss):
    """Module form of :func:`segfast.giou_loss`: the 1 - GIoU loss of aligned box pairs.

    ``forward(boxes1, boxes2)`` calls :func:`segfast.giou_loss` on predictions and
    targets [..., 4].

    Args:
        {box_args}

    Returns:
        {box_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.GIoULoss()
        >>> pred = torch.tensor([[0., 0., 2., 2.]])
        >>> round(loss_fn(pred, torch.tensor([[0., 0., 2., 4.]])).item(), 4)
        0.5
    """
    _fn = staticmethod(F.giou_loss)


class DIoULoss(_BoxLoss):
    """Module form of :func:`segfast.diou_loss`: the 1 - DIoU loss of aligned box pairs.

    ``forward(boxes1, boxes2)`` calls :func:`segfast.diou_loss` on predictions and
    targets [..., 4].

    Args:
        {box_args}

    Returns:
        {box_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.DIoULoss()
        >>> pred = torch.tensor([[0., 0., 2., 2.]])
        >>> round(loss_fn(pred, torch.tensor([[0., 0., 2., 4.]])).item(), 4)
        0.55
    """
    _fn = staticmethod(F.diou_loss)


class CIoULoss(_BoxLoss):
    """Module form of :func:`segfast.ciou_loss`: the 1 - CIoU loss of aligned box pairs.

    ``forward(boxes1, boxes2)`` calls :func:`segfast.ciou_loss` on predictions and
    targets [..., 4].

    Args:
        {box_args}

    Returns:
        {box_returns}

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> loss_fn = segfast.CIoULoss()
        >>> pred = torch.tensor([[0., 0., 2., 2.]])
        >>> round(loss_fn(pred, torch.tensor([[0., 0., 2., 4.]])).item(), 4)
        0.5532
    """
    _fn = staticmethod(F.ciou_loss)


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
    _fn = staticmethod(F.iou_balanced_focal_loss)

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
    _fn = staticmethod(F.iou_balanced_bce_loss)

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
    _fn = staticmethod(F.iou_balanced_ce_loss)

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
    _fn = staticmethod(F.iou_balanced_smooth_l1_loss)

    def __init__(self, beta=1.0, lam=1.5, loss_weight=1.0):
        super().__init__(beta=beta, lam=lam, loss_weight=loss_weight)

# ------------------------------------------------------------------ end of the boxes family
# ---- crf family ----------------------------------------------------------------


class DenseCRF(torch.nn.Module):
    """Module form of :func:`segfast.dense_crf`: holds the CRF parameters.

    Args:
        iterations: mean-field updates, >= 0.
        gaussian: :class:`segfast.Gaussian` spatial kernel, or None.
        bilateral: :class:`segfast.Bilateral` appearance kernel, or None.
        compat: overrides both kernels' compat (a number or a [C, C] matrix).
        normalization: "symmetric", "after", "before" or "none".
        method: "permutohedral" or "exact".
        unary_from: "energy", "logits" or "probs".
        self_message: whether the message sum includes the pixel itself.
        backend: "cpu", "triton", "cuda", "torch" or None (the device's default).

    Returns:
        Called as ``crf(unary, image, pos=None)``: the marginals Q
        [B, C, H, W] of :func:`segfast.dense_crf`.

    Raises:
        {module_raises}

    Example:
        >>> import torch, segfast
        >>> crf = segfast.DenseCRF(iterations=3, unary_from="logits")
        >>> image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
        >>> crf(torch.randn(1, 2, 16, 16), image).shape
        torch.Size([1, 2, 16, 16])
    """

    def __init__(self, iterations: int = 5, gaussian=F.Gaussian(), bilateral=F.Bilateral(), compat=None,
                 normalization: str = "symmetric", method: str = "permutohedral", unary_from: str = "energy",
                 self_message: bool = True, backend=None):
        super().__init__()
        self.kwargs = dict(iterations=iterations, gaussian=gaussian, bilateral=bilateral, compat=compat,
                           normalization=normalization, method=method, unary_from=unary_from,
                           self_message=self_message, backend=backend)

    def forward(self, unary: torch.Tensor, image: torch.Tensor, pos=None) -> torch.Tensor:
        return F.dense_crf(unary, image, pos=pos, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())


# ------------------------------------------------------------------ docstrings
# The parts every Module docstring shares, filled in per Module ({fn}: the
# function it wraps).
_MODULE_DOC = {
    "region_kwargs": """\
from_logits: False takes probabilities.
ignore_index: label (or dense target value) whose pixels count nowhere.
weight: per-class weights, one per channel, >= 0 (kept as a buffer, so
    ``.to(device)`` moves it).
include_background: False drops channel 0 after the sums.
batch: pool the sums over the batch (one score per class).
smooth_nr: added to the numerator.
smooth_dr: added to the denominator.
log_loss: -log(score) instead of 1 - score.
reduction: "mean", "sum" or "none".
sync_stats: with ``batch``, all-reduce the pooled sums across processes.
process_group: the process group of ``sync_stats`` (None: the default).
backend: "triton", "cuda", "cpu", "torch" or None (the device's default).""",
    "module_returns": """\
Called as ``loss_fn(input, target)``: what :func:`segfast.{fn}` returns
(the 0-d loss, or the unreduced losses with ``reduction="none"``).""",
    "module_raises": """\
ValueError, TypeError, RuntimeError: as :func:`segfast.{fn}`, when called.""",
    "reduction": 'reduction: "mean", "sum" or "none".',
    "backend": 'backend: "triton", "cuda", "cpu", "torch" or None (the device\'s default).',
    "box_args": """\
reduction: "mean" (the Module's default), "sum" or "none".
fmt: box format, "xyxy", "xywh" or "cxcywh".
eps: added to the union (and to the other denominators), as torchvision.
backend: "triton", "cuda", "cpu", "torch" or None (the device's default).""",
    "box_returns": """\
Called as ``loss_fn(boxes1, boxes2)``: what :func:`segfast.{fn}` returns.""",
    "balanced_returns": """\
Called as ``loss_fn(pred, target, iou, weight=None, avg_factor=None)``:
the 0-d loss of :func:`segfast.{fn}`.""",
}
for _cls in [c for c in list(globals().values())
             if isinstance(c, type) and issubclass(c, torch.nn.Module) and c.__module__ == __name__]:
    _fn = getattr(_cls, "_fn", None) or F.dense_crf
    _cls.__doc__ = _doc.expand(_cls.__doc__, _MODULE_DOC, fn=_fn.__name__)
