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
