"""Drop-in parity: segfast.compat.monai against MONAI, segfast.compat.smp
against segmentation_models_pytorch, on every backend that runs here."""

from __future__ import annotations

import warnings

import pytest
import torch

from segfast.compat import monai as cm
from segfast.compat import smp as cs

from conftest import kernel_backends, tol

BACKENDS = kernel_backends() + ["torch"]


def _shape(backend):
    return (5, 4) if backend == "triton" else (23, 19)


def _data(backend, C=4, dtype=torch.float64):
    x = torch.randn(3, C, *_shape(backend), dtype=dtype) * 2
    y = torch.randint(0, C, (3, *_shape(backend)))
    y[0, 0] = 255
    soft = torch.rand(3, C, *_shape(backend), dtype=dtype)
    onehot = torch.nn.functional.one_hot(y.clamp(0, C - 1), C).movedim(-1, 1).to(dtype)
    onehot[1, :, 0] = 0  # pixels with no class: MONAI's sentinel ignore masks them
    return x, y, soft, onehot


def _compare(ours, theirs, x, target, rtol=1e-5, atol=1e-6):
    """Loss and gradient of both modules on the same data, float32 kernels vs float64 peer."""
    xa = x.float().detach().requires_grad_(True)
    xb = x.double().detach().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ours(xa, target)
        b = theirs(xb, target.double() if target.dtype.is_floating_point else target)
    assert a.shape == b.shape, (a.shape, b.shape)
    go = torch.rand_like(b) + 0.5
    a.backward(go.float())
    b.backward(go)
    torch.testing.assert_close(a.double(), b.detach().double(), rtol=rtol, atol=atol)
    torch.testing.assert_close(xa.grad.double(), xb.grad.double(), rtol=rtol, atol=atol)


MONAI_DICE = [
    dict(softmax=True, to_onehot_y=True),
    dict(softmax=True, to_onehot_y=True, include_background=False, reduction="none"),
    dict(sigmoid=True, to_onehot_y=True, batch=True, reduction="sum"),
    dict(softmax=True, to_onehot_y=True, jaccard=True, weight=[1.0, 2.0, 0.5, 3.0]),
    dict(softmax=True, to_onehot_y=True, include_background=False, weight=[2.0, 0.5, 3.0], batch=True),
    dict(softmax=True, to_onehot_y=True, ignore_index=255, smooth_nr=0.0, smooth_dr=1e-6),
    dict(sigmoid=True, to_onehot_y=True, squared_pred=True),
    dict(softmax=True, to_onehot_y=True, other_act=None, batch=True, ignore_index=255, reduction="none"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", MONAI_DICE, ids=str)
def test_monai_dice_labels(backend, kw, monai_losses):
    x, y, _, _ = _data(backend)
    if "ignore_index" not in kw:
        y = y.clamp(0, 3)
    rtol = 1e-5 if not kw.get("squared_pred") else 1e-4  # MONAI: sqrt then square of float32 norms
    _compare(cm.DiceLoss(backend=backend, **kw), monai_losses.DiceLoss(**kw), x, y[:, None], rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(sigmoid=True), dict(sigmoid=True, soft_label=True),
                                dict(softmax=True, soft_label=True, batch=True, reduction="none"),
                                dict(other_act=torch.tanh, include_background=False)], ids=str)
def test_monai_dice_soft_targets(backend, kw, monai_losses):
    x, _, soft, _ = _data(backend)
    _compare(cm.DiceLoss(backend=backend, **kw), monai_losses.DiceLoss(**kw), x, soft)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(softmax=True, ignore_index=1),
                                dict(softmax=True, ignore_index=-1, batch=True), dict(softmax=True)], ids=str)
def test_monai_dice_onehot_ignore(backend, kw, monai_losses):
    x, _, _, onehot = _data(backend)
    _compare(cm.DiceLoss(backend=backend, **kw), monai_losses.DiceLoss(**kw), x, onehot)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [
    dict(softmax=True, to_onehot_y=True),
    dict(softmax=True, to_onehot_y=True, w_type="simple", batch=True),
    dict(sigmoid=True, to_onehot_y=True, w_type="uniform", reduction="none"),
    dict(softmax=True, to_onehot_y=True, include_background=False, reduction="sum"),
], ids=str)
def test_monai_generalized_dice(backend, kw, monai_losses):
    x, y, _, _ = _data(backend)
    y = y.clamp(0, 3)
    y[2] = 0  # classes absent from one image: MONAI's infinite-weight rule
    ours, theirs = cm.GeneralizedDiceLoss(backend=backend, **kw), monai_losses.GeneralizedDiceLoss(**kw)
    _compare(ours, theirs, x, y[:, None])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [
    dict(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7),
    dict(sigmoid=True, to_onehot_y=True, ignore_index=255, reduction="none", batch=True),
    dict(softmax=True, to_onehot_y=True, include_background=False, alpha=0.9, beta=0.1),
], ids=str)
def test_monai_tversky(backend, kw, monai_losses):
    x, y, _, _ = _data(backend)
    if "ignore_index" not in kw:
        y = y.clamp(0, 3)
    _compare(cm.TverskyLoss(backend=backend, **kw), monai_losses.TverskyLoss(**kw), x, y[:, None])


def test_monai_jaccard_via_dice_is_not_segfast_jaccard(monai_losses):
    """Documented: MONAI's DiceLoss(jaccard=True) smooths differently from segfast.jaccard_loss."""
    import segfast

    x, y, _, _ = _data("cpu")
    y = y.clamp(0, 3)
    a = segfast.jaccard_loss(x, y, smooth_nr=0, smooth_dr=0)
    b = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, jaccard=True, smooth_nr=0, smooth_dr=0)(x, y[:, None])
    torch.testing.assert_close(a, b, **tol(torch.float64))  # equal without smoothing


SMP_CASES = [
    dict(mode="multiclass"),
    dict(mode="multiclass", ignore_index=255, smooth=1.0, log_loss=True),
    dict(mode="multiclass", classes=[1, 3], class_weights=[1.0, 2.0, 3.0, 4.0]),
    dict(mode="multiclass", from_logits=False),
    dict(mode="multilabel"),
    dict(mode="multilabel", ignore_index=-1, eps=1e-3),
    dict(mode="binary"),
    dict(mode="binary", ignore_index=255),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["DiceLoss", "JaccardLoss", "TverskyLoss"])
@pytest.mark.parametrize("kw", SMP_CASES, ids=str)
def test_smp(backend, name, kw, smp_losses):
    kw = dict(kw)
    if name == "TverskyLoss":
        kw.update(alpha=0.3, beta=0.7, gamma=2.0)
    x, y, soft, _ = _data(backend)
    if kw["mode"] == "multiclass":
        target = y if kw.get("ignore_index") == 255 else y.clamp(0, 3)
        if not kw.get("from_logits", True):
            x = torch.softmax(x, 1)
    elif kw["mode"] == "multilabel":
        target = soft.clone()
        target[:, 2] = 0  # an absent class: smp zeroes its loss
        if "ignore_index" in kw:
            target[torch.rand(target.shape) < 0.1] = -1
    else:
        x = x[:, :1]
        target = (torch.rand(3, 1, *x.shape[2:]) > 0.6).long()
        if "ignore_index" in kw:
            target[0, 0, 0] = 255
    _compare(getattr(cs, name)(backend=backend, **kw), getattr(smp_losses, name)(**kw), x, target)


MONAI_FOCAL = [
    dict(to_onehot_y=True),
    dict(to_onehot_y=True, alpha=0.25, gamma=1.5, weight=[1.0, 2.0, 0.5, 3.0]),
    dict(to_onehot_y=True, include_background=False, reduction="sum"),
    dict(to_onehot_y=True, ignore_index=255, alpha=0.4),
    dict(to_onehot_y=True, reduction="none", gamma=0.5),
    dict(to_onehot_y=True, use_softmax=True),
    dict(to_onehot_y=True, use_softmax=True, alpha=0.3, ignore_index=255),
    dict(to_onehot_y=True, use_softmax=True, alpha=[0.2, 0.3, 0.4], include_background=False, reduction="none"),
    dict(to_onehot_y=True, use_softmax=True, include_background=False, alpha=0.5, weight=[1.0, 2.0, 3.0]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", MONAI_FOCAL, ids=str)
def test_monai_focal(backend, kw, monai_losses):
    x, y, soft, _ = _data(backend)
    if "ignore_index" not in kw:
        y = y.clamp(0, 3)
    _compare(cm.FocalLoss(backend=backend, **kw), monai_losses.FocalLoss(**kw), x, y[:, None])


@pytest.mark.parametrize("backend", BACKENDS)
def test_monai_focal_dense_targets(backend, monai_losses):
    """Float multi-label targets (hard: MONAI's and torchvision's p_t differ on soft ones, see the docstring)."""
    x, _, soft, _ = _data(backend)
    hard = (soft > 0.6).double()
    for kw in (dict(), dict(alpha=0.25, reduction="sum"), dict(include_background=False, gamma=3.0)):
        _compare(cm.FocalLoss(backend=backend, **kw), monai_losses.FocalLoss(**kw), x, hard)


def test_monai_focal_unsupported_is_explicit():
    x, y, _, onehot = _data("cpu")
    with pytest.raises(NotImplementedError, match="per-class alpha"):
        cm.FocalLoss(alpha=[0.1, 0.2, 0.3, 0.4])(x, onehot)
    with pytest.raises(NotImplementedError, match="sum"):
        cm.FocalLoss(to_onehot_y=True, ignore_index=255, reduction="sum")(x, y[:, None])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(to_onehot_y=True, softmax=True),
                                dict(to_onehot_y=True, softmax=True, weight=torch.tensor([1.0, 2.0, 0.5, 3.0]),
                                     lambda_ce=0.3, label_smoothing=0.1),
                                dict(to_onehot_y=True, softmax=True, include_background=False, reduction="sum",
                                     weight=torch.tensor([1.0, 2.0, 0.5, 3.0]))], ids=str)
def test_monai_dice_ce(backend, kw, monai_losses):
    x, y, _, _ = _data(backend)
    y = y.clamp(0, 3)
    theirs = dict(kw, weight=kw["weight"].double()) if "weight" in kw else kw  # MONAI: weight in the input dtype
    _compare(cm.DiceCELoss(backend=backend, **kw), monai_losses.DiceCELoss(**theirs), x, y[:, None])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(to_onehot_y=True, softmax=True),
                                dict(to_onehot_y=True, sigmoid=True, alpha=0.25, gamma=1.0, lambda_focal=2.0),
                                dict(to_onehot_y=True, softmax=True, include_background=False)], ids=str)
def test_monai_dice_focal(backend, kw, monai_losses):
    x, y, _, _ = _data(backend)
    y = y.clamp(0, 3)
    _compare(cm.DiceFocalLoss(backend=backend, **kw), monai_losses.DiceFocalLoss(**kw), x, y[:, None])


SMP_FOCAL = [
    dict(mode="multiclass"),
    dict(mode="multiclass", alpha=0.25, gamma=1.5, ignore_index=255),
    dict(mode="multiclass", class_weights=[1.0, 2.0, 0.5, 3.0], reduction="sum"),
    dict(mode="multilabel", alpha=0.4),
    dict(mode="binary"),
    dict(mode="binary", ignore_index=255, gamma=0.5),
    dict(mode="multilabel", from_logits=False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", SMP_FOCAL, ids=str)
def test_smp_focal(backend, kw, smp_losses):
    x, y, soft, _ = _data(backend)
    if kw["mode"] == "multiclass":
        target = y if kw.get("ignore_index") == 255 else y.clamp(0, 3)
    elif kw["mode"] == "multilabel":
        target = (soft > 0.6).double()
        if kw.get("from_logits") is False:
            x = torch.sigmoid(x)
    else:
        x = x[:, :1]
        target = (torch.rand(3, 1, *x.shape[2:]) > 0.6).long()
        if "ignore_index" in kw:
            target[0, 0, 0] = 255
    _compare(cs.FocalLoss(backend=backend, **kw), smp_losses.FocalLoss(**kw), x, target)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(), dict(smooth_factor=0.1), dict(reduction="sum", ignore_index=None),
                                dict(pos_weight=torch.tensor([1.0, 2.0, 3.0, 0.5]).view(4, 1, 1),
                                     weight=torch.tensor([0.5, 1.0, 2.0, 1.0]).view(4, 1, 1), smooth_factor=0.05)],
                         ids=str)
def test_smp_soft_bce(backend, kw, smp_losses):
    x, _, soft, _ = _data(backend)
    target = (soft > 0.5).double()
    target[0, 0, 0] = -100
    theirs = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    _compare(cs.SoftBCEWithLogitsLoss(backend=backend, **kw), smp_losses.SoftBCEWithLogitsLoss(**theirs),
             x, target)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(smooth_factor=0.0), dict(smooth_factor=0.1),
                                dict(smooth_factor=0.2, reduction="sum", ignore_index=255)], ids=str)
def test_smp_soft_ce(backend, kw, smp_losses):
    x, y, _, _ = _data(backend)
    target = y if kw.get("ignore_index") == 255 else y.clamp(0, 3)
    _compare(cs.SoftCrossEntropyLoss(backend=backend, **kw), smp_losses.SoftCrossEntropyLoss(**kw), x, target)
