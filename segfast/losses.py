"""nn.Module wrappers: they hold the arguments and call segfast.functional."""

from __future__ import annotations

import torch

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
    """Module form of :func:`segfast.functional.dice_loss` (same arguments)."""
    _fn = staticmethod(F.dice_loss)


class JaccardLoss(_RegionLoss):
    """Module form of :func:`segfast.functional.jaccard_loss` (soft IoU)."""
    _fn = staticmethod(F.jaccard_loss)


class TverskyLoss(_RegionLoss):
    """Module form of :func:`segfast.functional.tversky_loss`; gamma > 1: focal Tversky."""
    _fn = staticmethod(F.tversky_loss)

    def __init__(self, mode: str = "multiclass", *, alpha: float = 0.5, beta: float = 0.5,
                 gamma: float = 1.0, **kwargs):
        super().__init__(mode, alpha=alpha, beta=beta, gamma=gamma, **kwargs)


class GeneralizedDiceLoss(_RegionLoss):
    """Module form of :func:`segfast.functional.generalized_dice_loss`."""
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
    """Module form of :func:`segfast.functional.cross_entropy` (one pass)."""
    _fn = staticmethod(F.cross_entropy)

    def __init__(self, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean", backend=None):
        super().__init__(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                         reduction=reduction, backend=backend)


class BCEWithLogitsLoss(_PixelLoss):
    """Module form of :func:`segfast.functional.binary_cross_entropy_with_logits`."""
    _fn = staticmethod(F.binary_cross_entropy_with_logits)

    def __init__(self, weight=None, pos_weight=None, ignore_index=None, reduction="mean", backend=None):
        super().__init__(weight=weight, pos_weight=pos_weight, ignore_index=ignore_index, reduction=reduction,
                         backend=backend)


class BalancedBCELoss(_PixelLoss):
    """Module form of :func:`segfast.functional.balanced_bce_loss`."""
    _fn = staticmethod(F.balanced_bce_loss)

    def __init__(self, beta="auto", ignore_index=None, reduction="mean", backend=None):
        super().__init__(beta=beta, ignore_index=ignore_index, reduction=reduction, backend=backend)


class FocalLoss(_PixelLoss):
    """Module form of :func:`segfast.functional.focal_loss` (sigmoid or softmax form by ``mode``)."""
    _fn = staticmethod(F.focal_loss)

    def __init__(self, mode="binary", alpha=None, gamma=2.0, weight=None, ignore_index=None, reduction="mean",
                 backend=None):
        super().__init__(mode=mode, alpha=alpha, gamma=gamma, weight=weight, ignore_index=ignore_index,
                         reduction=reduction, backend=backend)


class FusedLoss(_PixelLoss):
    """Module form of :func:`segfast.functional.fused_loss` (softmax + positive sharing)."""
    _fn = staticmethod(F.fused_loss)

    def __init__(self, ws=0.5, wp=0.5, ignore_index=None, reduction="mean", backend=None):
        super().__init__(ws=ws, wp=wp, ignore_index=ignore_index, reduction=reduction, backend=backend)


class DiceCELoss(_PixelLoss):
    """Module form of :func:`segfast.functional.dice_ce_loss`."""
    _fn = staticmethod(F.dice_ce_loss)

    def __init__(self, lambda_dice=1.0, lambda_ce=1.0, ignore_index=None, ce_weight=None, label_smoothing=0.0,
                 backend=None, **dice_kwargs):
        super().__init__(lambda_dice=lambda_dice, lambda_ce=lambda_ce, ignore_index=ignore_index,
                         ce_weight=ce_weight, label_smoothing=label_smoothing, backend=backend, **dice_kwargs)


class DiceFocalLoss(_PixelLoss):
    """Module form of :func:`segfast.functional.dice_focal_loss`."""
    _fn = staticmethod(F.dice_focal_loss)

    def __init__(self, mode="multiclass", lambda_dice=1.0, lambda_focal=1.0, focal_form=None, alpha=None,
                 gamma=2.0, ignore_index=None, backend=None, **dice_kwargs):
        super().__init__(mode=mode, lambda_dice=lambda_dice, lambda_focal=lambda_focal, focal_form=focal_form,
                         alpha=alpha, gamma=gamma, ignore_index=ignore_index, backend=backend, **dice_kwargs)


class DiceFusedLoss(_PixelLoss):
    """Module form of :func:`segfast.functional.dice_fused_loss`."""
    _fn = staticmethod(F.dice_fused_loss)

    def __init__(self, lambda_dice=1.0, lambda_fused=1.0, ws=0.5, wp=0.5, ignore_index=None, backend=None,
                 **dice_kwargs):
        super().__init__(lambda_dice=lambda_dice, lambda_fused=lambda_fused, ws=ws, wp=wp,
                         ignore_index=ignore_index, backend=backend, **dice_kwargs)


class LovaszHingeLoss(_PixelLoss):
    """Module form of :func:`segfast.functional.lovasz_hinge_loss` (binary / multilabel, logits)."""
    _fn = staticmethod(F.lovasz_hinge_loss)

    def __init__(self, per_image=True, ignore_index=None, reduction="mean", backend=None):
        super().__init__(per_image=per_image, ignore_index=ignore_index, reduction=reduction, backend=backend)


class LovaszSoftmaxLoss(_PixelLoss):
    """Module form of :func:`segfast.functional.lovasz_softmax_loss` (multiclass)."""
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
    """Module form of :func:`segfast.functional.iou_loss`."""
    _fn = staticmethod(F.iou_loss)


class GIoULoss(_BoxLoss):
    """Module form of :func:`segfast.functional.giou_loss`."""
    _fn = staticmethod(F.giou_loss)


class DIoULoss(_BoxLoss):
    """Module form of :func:`segfast.functional.diou_loss`."""
    _fn = staticmethod(F.diou_loss)


class CIoULoss(_BoxLoss):
    """Module form of :func:`segfast.functional.ciou_loss`."""
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
    """Module form of :func:`segfast.functional.iou_balanced_focal_loss`."""
    _fn = staticmethod(F.iou_balanced_focal_loss)

    def __init__(self, gamma=2.0, alpha=0.25, eta=1.5, loss_weight=1.0):
        super().__init__(gamma=gamma, alpha=alpha, eta=eta, loss_weight=loss_weight)


class IoUBalancedBCELoss(_IoUBalancedLoss):
    """Module form of :func:`segfast.functional.iou_balanced_bce_loss`."""
    _fn = staticmethod(F.iou_balanced_bce_loss)

    def __init__(self, eta=1.5, loss_weight=1.0):
        super().__init__(eta=eta, loss_weight=loss_weight)


class IoUBalancedCELoss(_IoUBalancedLoss):
    """Module form of :func:`segfast.functional.iou_balanced_ce_loss`."""
    _fn = staticmethod(F.iou_balanced_ce_loss)

    def __init__(self, eta=1.5, background=0, loss_weight=1.0):
        super().__init__(eta=eta, background=background, loss_weight=loss_weight)


class IoUBalancedSmoothL1Loss(_IoUBalancedLoss):
    """Module form of :func:`segfast.functional.iou_balanced_smooth_l1_loss`."""
    _fn = staticmethod(F.iou_balanced_smooth_l1_loss)

    def __init__(self, beta=1.0, lam=1.5, loss_weight=1.0):
        super().__init__(beta=beta, lam=lam, loss_weight=loss_weight)

# ------------------------------------------------------------------ end of the boxes family
# ---- crf family ----------------------------------------------------------------


class DenseCRF(torch.nn.Module):
    """Module form of :func:`segfast.functional.dense_crf`: holds the CRF
    parameters; ``forward(unary, image, pos=None)`` returns the marginals Q."""

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
