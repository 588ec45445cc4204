"""Dice plus a pixel term (cross entropy, focal, the fused loss): the sums of
both from the region kernels where they can (softmax, class-index targets),
else each term on its own kernels."""

from typing import Optional

import torch
from torch import Tensor

from .. import _doc
from . import region as _region
from .pixel import _PixelLoss, cross_entropy, focal_loss, fused_loss
from .region import _check_args, _dice_loss, dice_loss

__all__ = ["dice_ce_loss", "dice_focal_loss", "dice_fused_loss", "DiceCELoss", "DiceFocalLoss", "DiceFusedLoss"]

# ------------------------------------------------------------ region + pixel sums
# With softmax and class-index targets the pixel term's sums ride in the
# region kernels (_two_pass): two passes in all. Otherwise each term runs its
# own kernels (region: two passes, pixel: one); both get the very same
# [N, C, S] view of the logits, so their gradients meet at one autograd node
# as fresh buffers and are summed in place (two logits-sized buffers at the
# peak, not three).


def _shared_views(input: Tensor, target: Tensor):
    if input.dim() < 3:
        return input, target
    N, C = input.shape[:2]
    spatial = tuple(input.shape[2:])
    shape = tuple(target.shape)
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        if shape == (N, C, *spatial):
            return input.flatten(2), target.flatten(2)
        if C == 1 and shape == (N, *spatial):
            return input.flatten(2), target.flatten(1)
    elif shape in ((N, *spatial), (N, 1, *spatial)):
        return input.flatten(2), target.flatten(1)  # flatten: N = 0 too
    return input, target  # a wrong shape: the term's own check reports the user's shapes


# dice_loss's formula arguments and defaults, as ops.region.finish_loss takes them
_DICE_FINISH = dict(weight=None, include_background=True, batch=False, sync_stats=False, reduction="mean",
                    smooth_nr=1e-5, smooth_dr=1e-5, log_loss=False)


def _two_pass(input, target, ignore_index, backend, dice_kwargs, xent: int, gamma: float = 0.0,
              lams=(1.0, 1.0), pixel_weight=None, **pixel):
    """Dice (softmax, class-index targets) plus the sums of a pixel term from the
    same two kernel passes -> the loss lams[0]·Dice + lams[1]·(pixel term) where
    the kernels compute it whole (ops.region.finish_loss, with the pixel term's
    class weights ``pixel_weight`` and ``pixel`` arguments), else (dice loss,
    pooled sums [C, 9]); None where the terms must run separately (dense
    targets, probabilities)."""
    if not (dice_kwargs.get("from_logits", True) and isinstance(target, Tensor) and isinstance(input, Tensor)
            and not (target.dtype.is_floating_point or target.dtype == torch.bool)):
        return None
    dice_kwargs = dict(dice_kwargs)
    confusion = dice_kwargs.pop("confusion", None)
    finish = {**_DICE_FINISH, **{k: v for k, v in dice_kwargs.items() if k in _DICE_FINISH}}
    _check_args(input, finish["reduction"], finish["smooth_nr"], finish["smooth_dr"], finish["batch"],
                finish["sync_stats"], finish["include_background"])
    conf = None if confusion is None else _region.confusion_target(confusion, input, target, "multiclass",
                                                                   ignore_index)
    prep = _region.prepare(input, target, "multiclass", True, ignore_index, backend)
    x, t, is_label, _, off, ign, be = prep
    if set(dice_kwargs) <= set(_DICE_FINISH) | {"from_logits", "process_group"}:
        loss = _region.finish_loss(prep, **finish, lam_r=lams[0], xent=xent, xgamma=gamma, lam_x=lams[1],
                                   pw=_region.check_weight(pixel_weight, x.shape[1], x.device), confusion=conf,
                                   **pixel)
        if loss is not None:
            return loss
    stats = _region.plane_stats(x, t, is_label, _region.ACT["softmax"], off, ign, be, xent=xent, gamma=gamma,
                                prepared=True, confusion=conf)
    d = _dice_loss(input, target, stats[..., :_region.K], mode="multiclass", ignore_index=ignore_index,
                   backend=backend, **dice_kwargs)
    return d, stats.sum(0)


def _mean_over(num: Tensor, den: Tensor) -> Tensor:
    """num / den, 0 without valid pixels (torch's losses give NaN there)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, 1), torch.zeros_like(num))


def dice_ce_loss(input: Tensor, target: Tensor, *, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 ignore_index=None, ce_weight=None, label_smoothing: float = 0.0, backend: Optional[str] = None,
                 **dice_kwargs) -> Tensor:
    """lambda_dice·dice_loss + lambda_ce·cross_entropy, as MONAI's DiceCELoss (softmax).

    With class-index targets the two terms cost two passes over the logits in
    all: the cross-entropy sums come out of the Dice statistics kernel and
    their gradient out of the Dice gradient kernel (``from_logits=False`` runs
    the two terms side by side). With one-hot / soft targets (N, C, *spatial)
    the CE term is torch's cross entropy with class probabilities (eager torch
    on every backend; no ``ignore_index``).

    Args:
        input: logits (N, C, *spatial), C >= 2.
        target: class indices (N, *spatial) / (N, 1, *spatial), or one-hot / soft
            targets (N, C, *spatial).
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        ignore_index: label whose pixels count in neither term.
        ce_weight: per-class weights [C] of the cross-entropy term.
        label_smoothing: ε in [0, 1] of the cross-entropy term.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).
        **dice_kwargs: further keyword arguments of :func:`dice_loss`
            (``weight``, ``include_background``, ``batch``, ``smooth_nr``, ...).

    Returns:
        The 0-d loss, float32 (float64 for float64 input).

    Raises:
        ValueError: ``label_smoothing`` outside [0, 1], ``ignore_index`` with
            dense targets, and what :func:`dice_loss` and :func:`cross_entropy`
            raise.
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(segfast.dice_ce_loss(logits, labels).item(), 4)   # 0.8333 + log 3
        1.9319
    """
    input, target = _shared_views(input, target)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError("label_smoothing must be in [0, 1]")
    both = _two_pass(input, target, ignore_index, backend, dice_kwargs, _region.ref.XENT_CE,
                     lams=(lambda_dice, lambda_ce), pixel_weight=ce_weight, eps=label_smoothing)
    if isinstance(both, Tensor):
        return both
    if both is not None:  # torch's mean: Σ_c w_c((1 - ε)·S7_c + ε/C·S8_c) / Σ_c w_c·T_c
        d, s = both
        C = s.shape[0]
        num = (1.0 - label_smoothing) * s[:, 7]
        if label_smoothing:  # S8 is infinite with a -inf logit (a masked class): no 0·inf
            num = num + (label_smoothing / C) * s[:, 8]
        den = s[:, 2]
        w = _region.check_weight(ce_weight, C, s.device)
        if w is not None:
            num, den = num * w.to(s.dtype), den * w.to(s.dtype)
        return lambda_dice * d + lambda_ce * _mean_over(num.sum(), den.sum())
    d = dice_loss(input, target, mode="multiclass", ignore_index=ignore_index, backend=backend, **dice_kwargs)
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        c = _soft_cross_entropy(input, target, ce_weight, label_smoothing, ignore_index)
    else:
        c = cross_entropy(input, target, weight=ce_weight, label_smoothing=label_smoothing,
                          ignore_index=-100 if ignore_index is None else ignore_index, backend=backend)
    return lambda_dice * d + lambda_ce * c


def _soft_cross_entropy(input: Tensor, target: Tensor, weight, label_smoothing: float, ignore_index) -> Tensor:
    """torch.nn.functional.cross_entropy with one-hot / soft targets (class
    probabilities), as MONAI's DiceCELoss takes them: eager torch on every
    backend; differentiable in the target too."""
    if ignore_index is not None:
        raise ValueError("ignore_index with one-hot / soft targets: cross entropy has no ignored pixels there "
                         "(pass class indices)")
    x = input.double() if input.dtype == torch.float64 else input.float()
    w = _region.check_weight(weight, x.shape[1], x.device)
    if x.numel() == 0:
        return x.new_zeros(())
    return torch.nn.functional.cross_entropy(x, target.to(x.dtype), weight=None if w is None else w.to(x.dtype),
                                             label_smoothing=float(label_smoothing))


def dice_focal_loss(input: Tensor, target: Tensor, *, mode: str = "multiclass", lambda_dice: float = 1.0,
                    lambda_focal: float = 1.0, focal_form: Optional[str] = None, alpha=None, gamma: float = 2.0,
                    ignore_index=None, backend: Optional[str] = None, **dice_kwargs) -> Tensor:
    """lambda_dice·dice_loss + lambda_focal·focal_loss.

    ``focal_form`` defaults to the Dice term's activation: "softmax" for
    ``mode="multiclass"``, "sigmoid" otherwise. MONAI's DiceFocalLoss always
    uses the sigmoid focal form, even with softmax Dice: pass
    ``focal_form="sigmoid"`` (one-hot targets per channel) for that. The
    softmax form with class-index targets costs two passes in all (the focal
    sums ride in the Dice kernels); the others run the two terms' kernels
    side by side.

    Args:
        input: logits (N, C, *spatial).
        target: class indices or one-hot / soft targets, as :func:`dice_loss`.
        mode: "multiclass", "multilabel" or "binary" (the Dice term's activation).
        lambda_dice: weight of the Dice term.
        lambda_focal: weight of the focal term.
        focal_form: "softmax", "sigmoid" or None (from ``mode``).
        alpha: the focal term's alpha (see :func:`focal_loss`).
        gamma: focusing exponent, >= 0.
        ignore_index: label (or dense target value) that counts in neither term.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).
        **dice_kwargs: further keyword arguments of :func:`dice_loss`.

    Returns:
        The 0-d loss, float32 (float64 for float64 input).

    Raises:
        ValueError: an unknown ``focal_form``, ``gamma`` < 0, and what
            :func:`dice_loss` and :func:`focal_loss` raise.
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(segfast.dice_focal_loss(logits, labels, gamma=2).item(), 4)
        1.3216
    """
    form = focal_form or ("softmax" if mode == "multiclass" else "sigmoid")
    if form not in ("softmax", "sigmoid"):
        raise ValueError("focal_form must be 'softmax' or 'sigmoid'")
    if gamma < 0:
        raise ValueError("gamma must be >= 0")
    input, target = _shared_views(input, target)
    if form == "softmax" and mode == "multiclass":
        both = _two_pass(input, target, ignore_index, backend, dice_kwargs, _region.ref.XENT_FOCAL, float(gamma),
                         lams=(lambda_dice, lambda_focal), pixel_weight=alpha)
        if isinstance(both, Tensor):
            return both
        if both is not None:  # mean over the valid pixels of α_c·S7_c (focal_loss's semantics)
            d, s = both
            a = _region.check_weight(1.0 if alpha is None else alpha, s.shape[0], s.device).to(s.dtype)
            return lambda_dice * d + lambda_focal * _mean_over((a * s[:, 7]).sum(), s[:, 2].sum())
    d = dice_loss(input, target, mode=mode, ignore_index=ignore_index, backend=backend, **dice_kwargs)
    fmode = "multiclass" if form == "softmax" else ("binary" if input.shape[1] == 1 else "multilabel")
    f = focal_loss(input, target, mode=fmode, alpha=alpha, gamma=gamma, ignore_index=ignore_index,
                   backend=backend)
    return lambda_dice * d + lambda_focal * f


def dice_fused_loss(input: Tensor, target: Tensor, *, lambda_dice: float = 1.0, lambda_fused: float = 1.0,
                    ws: float = 0.5, wp: float = 0.5, ignore_index=None, backend: Optional[str] = None,
                    **dice_kwargs) -> Tensor:
    """lambda_dice·dice_loss + lambda_fused·fused_loss (softmax, class-index targets).

    Two passes over the logits in all: the fused loss's sums ride in the Dice
    kernels.

    Args:
        input: logits (N, C, *spatial), C >= 2, class 0 the background.
        target: class indices (N, *spatial) / (N, 1, *spatial).
        lambda_dice: weight of the Dice term.
        lambda_fused: weight of the fused term.
        ws: weight of the fused term's cross entropy, >= 0.
        wp: weight of the fused term's positive-sharing loss, >= 0.
        ignore_index: label whose pixels count in neither term.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).
        **dice_kwargs: further keyword arguments of :func:`dice_loss`.

    Returns:
        The 0-d loss, float32 (float64 for float64 input).

    Raises:
        ValueError: negative ``ws`` / ``wp``, and what :func:`dice_loss` and
            :func:`fused_loss` raise.
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> labels = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> round(segfast.dice_fused_loss(logits, labels).item(), 4)   # 0.8333 + log 3
        1.9319
    """
    if ws < 0 or wp < 0:
        raise ValueError("ws and wp must be >= 0")
    input, target = _shared_views(input, target)
    both = _two_pass(input, target, ignore_index, backend, dice_kwargs, _region.ref.XENT_FUSED,
                     lams=(lambda_dice, lambda_fused), ws=ws, wp=wp)
    if isinstance(both, Tensor):
        return both
    if both is not None:  # (ws·CE + wp·(S7_0 + Σ_{c>=1} S8_c)) / valid pixels
        d, s = both
        ce, ps = s[:, 7].sum(), s[0, 7] + s[1:, 8].sum()
        return lambda_dice * d + lambda_fused * _mean_over(ws * ce + wp * ps, s[:, 2].sum())
    d = dice_loss(input, target, mode="multiclass", ignore_index=ignore_index, backend=backend, **dice_kwargs)
    f = fused_loss(input, target, ws=ws, wp=wp, ignore_index=ignore_index, backend=backend)
    return lambda_dice * d + lambda_fused * f


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
    _fn = staticmethod(dice_ce_loss)

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
    _fn = staticmethod(dice_focal_loss)

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
    _fn = staticmethod(dice_fused_loss)

    def __init__(self, lambda_dice=1.0, lambda_fused=1.0, ws=0.5, wp=0.5, ignore_index=None, backend=None,
                 **dice_kwargs):
        super().__init__(lambda_dice=lambda_dice, lambda_fused=lambda_fused, ws=ws, wp=wp,
                         ignore_index=ignore_index, backend=backend, **dice_kwargs)


_doc.fill_modules(globals(), __name__)
