"""Drop-in parity: segfast.compat.monai against MONAI, segfast.compat.smp
against segmentation_models_pytorch, on every backend that runs here."""

from __future__ import annotations

import warnings

import pytest
import torch

from segfast.compat import monai as cm
from segfast.compat import smp as cs

from conftest import kernel_backends, pairwise, tol

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


@pytest.mark.parametrize("backend,name,kw", pairwise(BACKENDS, ["DiceLoss", "JaccardLoss", "TverskyLoss"], SMP_CASES))
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


MONAI_FOCAL_MORE = [
    dict(alpha=[0.1, 0.5, 2.0, 0.7]),  # per-class alpha in the sigmoid form: the positives only
    dict(alpha=[0.5, 2.0, 0.7], include_background=False, reduction="sum", gamma=1.5),
    dict(alpha=[0.1, 0.5, 2.0, 0.7], reduction="none", weight=[1.0, 2.0, 0.5, 3.0]),
    dict(ignore_index=2),  # one-hot targets: the pixels of class 2 are out
    dict(ignore_index=255, reduction="sum"),  # a sentinel: the pixels with no class are out
    dict(ignore_index=0, include_background=False, reduction="none"),
    dict(ignore_index=-1, alpha=0.25, reduction="sum", include_background=False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", MONAI_FOCAL_MORE, ids=str)
def test_monai_focal_dense_ignore_and_alpha(backend, kw, monai_losses):
    """One-hot targets with ignore_index (MONAI's pixel mask) and per-class
    alpha, in the sigmoid form (the kernels) and the softmax form."""
    x, _, _, onehot = _data(backend)
    for extra in (dict(), dict(use_softmax=True)):
        _compare(cm.FocalLoss(backend=backend, **kw, **extra), monai_losses.FocalLoss(**kw, **extra), x, onehot)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(ignore_index=255, reduction="sum"),
                                dict(ignore_index=2, reduction="sum", use_softmax=True),
                                dict(ignore_index=255, reduction="sum", alpha=[0.1, 0.5, 2.0, 0.7])], ids=str)
def test_monai_focal_labels_ignore_sum(backend, kw, monai_losses):
    """"sum" with ignore_index: each image's loss over its own valid pixels."""
    x, y, _, _ = _data(backend)
    y[1, :5] = 2
    if kw["ignore_index"] != 255:
        y = y.clamp(0, 3)
    _compare(cm.FocalLoss(to_onehot_y=True, backend=backend, **kw),
             monai_losses.FocalLoss(to_onehot_y=True, **kw), x, y[:, None])


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
@pytest.mark.parametrize("kw", [dict(softmax=True), dict(softmax=True, weight=torch.tensor([1.0, 2.0, 0.5, 3.0]),
                                                         label_smoothing=0.1, reduction="sum"),
                                dict(sigmoid=True, include_background=False, lambda_ce=0.5)], ids=str)
def test_monai_dice_ce_dense_targets(backend, kw, monai_losses):
    """One-hot and soft targets: the CE term is torch's cross entropy on class probabilities."""
    x, _, soft, onehot = _data(backend)
    theirs = dict(kw, weight=kw["weight"].double()) if "weight" in kw else kw
    for target in (onehot, soft / soft.sum(1, keepdim=True)):
        _compare(cm.DiceCELoss(backend=backend, **kw), monai_losses.DiceCELoss(**theirs), x, target)


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


# ------------------------------------------------- what the peers' own test suites exercise
# (tools/run_peer_tests.py runs those suites; these cases pin the same behaviours here)


@pytest.mark.parametrize("name, kw", [
    ("DiceLoss", dict(softmax=True, to_onehot_y=True)),
    ("GeneralizedDiceLoss", dict(softmax=True, to_onehot_y=True)),
    ("TverskyLoss", dict(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)),
    ("FocalLoss", dict(to_onehot_y=True, use_softmax=True)),
    ("FocalLoss", dict(to_onehot_y=True)),
    ("DiceCELoss", dict(softmax=True, to_onehot_y=True)),
    ("DiceFocalLoss", dict(softmax=True, to_onehot_y=True)),
], ids=str)
def test_monai_float_label_maps(name, kw, monai_losses):
    """MONAI's one_hot casts labels: float32 label maps (LoadImage's) work with to_onehot_y."""
    x, y, _, _ = _data("cpu")
    y = y.clamp(0, 3)[:, None]
    _compare(getattr(cm, name)(**kw), getattr(monai_losses, name)(**kw), x, y.float())
    torch.testing.assert_close(getattr(cm, name)(**kw)(x.float(), y.float()), getattr(cm, name)(**kw)(x.float(), y))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("kw", [dict(to_onehot_y=True), dict(to_onehot_y=True, use_softmax=True, gamma=1.0),
                                dict(to_onehot_y=True, reduction="none"), dict()], ids=str)
def test_monai_focal_without_spatial_dims(backend, kw, monai_losses):
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (6, 1))
    target = y if kw else torch.nn.functional.one_hot(y[:, 0], 3).double()
    _compare(cm.FocalLoss(backend=backend, **kw), monai_losses.FocalLoss(**kw), x, target)
    if kw.get("to_onehot_y"):  # (N,) labels too
        torch.testing.assert_close(cm.FocalLoss(backend=backend, **kw)(x, y[:, 0]),
                                   cm.FocalLoss(backend=backend, **kw)(x, y))


@pytest.mark.parametrize("name", ["DiceLoss", "TverskyLoss", "DiceCELoss", "DiceFocalLoss"])
@pytest.mark.parametrize("kw", [dict(softmax=True), dict(sigmoid=True, batch=True, include_background=False),
                                dict(softmax=True, batch=True, reduction="sum"),
                                dict(softmax=True, include_background=False, reduction="sum")], ids=str)
def test_monai_region_losses_without_spatial_dims(name, kw, monai_losses):
    """(N, C) scores: MONAI sums over every dim at once (over N with batch=True); so do we."""
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (6, 1))
    _compare(getattr(cm, name)(to_onehot_y=True, **kw), getattr(monai_losses, name)(to_onehot_y=True, **kw), x, y)


@pytest.mark.parametrize("kw", [dict(use_softmax=True), dict(use_softmax=True, alpha=0.3, gamma=1.5),
                                dict(use_softmax=True, alpha=[0.1, 0.2, 0.3, 0.4], reduction="sum"),
                                dict(use_softmax=True, include_background=False, reduction="none")], ids=str)
def test_monai_softmax_focal_dense_targets(kw, monai_losses):
    x, _, soft, onehot = _data("cpu")
    for target in (onehot, soft / soft.sum(1, keepdim=True)):
        _compare(cm.FocalLoss(**kw), monai_losses.FocalLoss(**kw), x, target)


def test_monai_softmax_focal_alpha_warning():
    x, y, _, _ = _data("cpu")
    with pytest.warns(UserWarning, match="scalar `alpha` ignored"):
        cm.FocalLoss(use_softmax=True, to_onehot_y=True, include_background=False, alpha=0.25)(
            x, y.clamp(0, 3)[:, None])


@pytest.mark.parametrize("name", ["DiceLoss", "DiceCELoss", "DiceFocalLoss", "TverskyLoss"])
def test_monai_spatial_mismatch_is_assertion_and_value_error(name):
    """MONAI raises AssertionError for a target of another spatial shape, segfast ValueError: ShapeError is both."""
    loss = getattr(cm, name)(softmax=True, to_onehot_y=True)
    x, y = torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 1, 3, 3))
    for exc in (AssertionError, ValueError, cm.ShapeError):
        with pytest.raises(exc, match="different shape"):
            loss(x, y)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_smp_pixel_losses_without_spatial_dims(backend, smp_losses):
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (6,))
    y[2] = -100
    _compare(cs.SoftCrossEntropyLoss(smooth_factor=0.1, backend=backend),
             smp_losses.SoftCrossEntropyLoss(smooth_factor=0.1), x, y)
    t = (torch.rand(6, 4) > 0.5).double()
    t[1, 1] = -100
    _compare(cs.SoftBCEWithLogitsLoss(smooth_factor=0.1, backend=backend),
             smp_losses.SoftBCEWithLogitsLoss(smooth_factor=0.1), x, t)
    v = torch.tensor([0.0, 1.0, -100.0, 1.0, 0.0], dtype=torch.float64)  # one vector of N logits
    _compare(cs.SoftBCEWithLogitsLoss(smooth_factor=0.1, backend=backend),
             smp_losses.SoftBCEWithLogitsLoss(smooth_factor=0.1), torch.randn(5, dtype=torch.float64), v)


def test_smp_multiclass_focal_on_probabilities(smp_losses):
    x, y, _, _ = _data("cpu")
    p = torch.softmax(x, 1)
    kw = dict(mode="multiclass", from_logits=False)
    _compare(cs.FocalLoss(**kw), smp_losses.FocalLoss(**kw), p, y.clamp(0, 3))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_native_losses_without_spatial_dims(backend):
    import segfast

    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (7,))
    for target in (y, y[:, None]):
        torch.testing.assert_close(segfast.cross_entropy(x, target, backend=backend),
                                   torch.nn.functional.cross_entropy(x, y))
    t = (torch.rand(7, 5) > 0.5).double()
    torch.testing.assert_close(segfast.binary_cross_entropy_with_logits(x, t, backend=backend),
                               torch.nn.functional.binary_cross_entropy_with_logits(x, t))
    torch.testing.assert_close(segfast.cross_entropy(x, y, reduction="none", backend=backend),
                               torch.nn.functional.cross_entropy(x, y, reduction="none"))


def _count_kernels(monkeypatch):
    """Record the kernel entry points a loss calls: (name, pixel-term code)."""
    from segfast.ops import pixel, region

    calls = []
    stats, pix = region.plane_stats, pixel.pixel_loss

    def plane_stats(*a, **kw):
        calls.append(("plane_stats", kw.get("xent", 0)))
        return stats(*a, **kw)

    def pixel_loss(x, t, is_label, kind, *a, **kw):
        calls.append(("pixel_loss", kind))
        return pix(x, t, is_label, kind, *a, **kw)

    monkeypatch.setattr(region, "plane_stats", plane_stats)
    monkeypatch.setattr(pixel, "pixel_loss", pixel_loss)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", None)  # no torch fallback either
    return calls


def test_compat_classes_take_the_native_kernels(monkeypatch):
    """Each compat class reaches the same kernel entry points, with the same
    fused pixel terms, as the native call it corresponds to."""
    import segfast

    x, y, _, onehot = _data("cpu", dtype=torch.float32)
    y = y.clamp(0, 3)
    calls = _count_kernels(monkeypatch)
    pairs = [
        (lambda: cm.DiceCELoss(softmax=True, to_onehot_y=True)(x, y[:, None].float()),
         lambda: segfast.dice_ce_loss(x, y)),
        (lambda: cm.DiceCELoss(softmax=True, to_onehot_y=True, include_background=False, label_smoothing=0.1)(
            x, y[:, None]), lambda: segfast.dice_ce_loss(x, y, include_background=False, label_smoothing=0.1)),
        (lambda: cm.DiceFocalLoss(softmax=True, to_onehot_y=True)(x, y[:, None]),
         lambda: segfast.dice_focal_loss(x, y, focal_form="sigmoid")),
        (lambda: cm.DiceLoss(softmax=True, to_onehot_y=True)(x, y[:, None]), lambda: segfast.dice_loss(x, y)),
        (lambda: cm.FocalLoss(to_onehot_y=True, use_softmax=True)(x, y[:, None]),
         lambda: segfast.focal_loss(x, y, mode="multiclass")),
        (lambda: cm.FocalLoss()(x, onehot), lambda: segfast.focal_loss(x, onehot, mode="multilabel", alpha=-1)),
        (lambda: cm.FocalLoss(ignore_index=2, reduction="sum")(x, onehot),  # MONAI's pixel mask, per-image sums
         lambda: segfast.focal_loss(x, onehot, mode="multilabel", alpha=-1, ignore_index=2, reduction="none")),
        (lambda: cs.DiceLoss("multiclass")(x, y), lambda: segfast.dice_loss(x, y)),
        (lambda: cs.FocalLoss("multilabel")(x, onehot.float()),
         lambda: segfast.focal_loss(x, onehot.float(), mode="multilabel")),
        (lambda: cs.SoftCrossEntropyLoss()(x, y), lambda: segfast.cross_entropy(x, y)),
    ]
    for compat, native in pairs:
        calls.clear()
        compat()
        theirs = list(calls)
        calls.clear()
        native()
        assert theirs == calls, (theirs, calls)
    calls.clear()
    cm.DiceCELoss(softmax=True, to_onehot_y=True)(x, y[:, None])
    assert calls == [("plane_stats", segfast.ops.region.ref.XENT_CE)]  # the CE sums ride in the Dice pass
    calls.clear()
    cm.FocalLoss(alpha=[0.1, 0.5, 2.0, 0.7])(x, onehot)  # MONAI's per-class alpha: positives, then negatives
    assert calls == [("pixel_loss", segfast.ops.pixel.FOCAL_SIGMOID)] * 2


@pytest.mark.filterwarnings("ignore:.*quantize_per_tensor")
def test_box_ops_take_torchvision_inputs():
    import segfast

    b = torch.tensor([[0, 0, 100, 100], [0, 0, 50, 50], [200, 200, 300, 300], [0, 0, 25, 25]])
    for dt in (torch.int16, torch.int32, torch.int64, torch.uint8):
        for fn in (segfast.box_iou, segfast.generalized_box_iou, segfast.distance_box_iou, segfast.complete_box_iou):
            out = fn(b.to(dt) if dt != torch.uint8 else (b // 2).to(dt), b[:3].to(dt) if dt != torch.uint8
                     else (b[:3] // 2).to(dt))
            assert out.dtype == torch.float32
            ref = fn(b.float() if dt != torch.uint8 else (b // 2).float(),
                     b[:3].float() if dt != torch.uint8 else (b[:3] // 2).float())
            torch.testing.assert_close(out, ref)
    # batched_nms of empty boxes: empty int64 whatever the other arguments (dtype not checked first)
    empty = torch.empty((0,), dtype=torch.int64)
    out = segfast.batched_nms(empty, None, None, None)
    assert out.dtype == torch.int64 and out.numel() == 0
    # quantized boxes and scores: NMS of their dequantized values
    boxes = torch.rand(200, 4) * 100
    boxes[:, 2:] += boxes[:, :2]
    scores = torch.rand(200) * 100
    qb = torch.quantize_per_tensor(boxes, scale=2, zero_point=50, dtype=torch.quint8)
    qs = torch.quantize_per_tensor(scores, scale=2, zero_point=50, dtype=torch.quint8)
    torch.testing.assert_close(segfast.nms(qb, qs, 0.5), segfast.nms(qb.dequantize(), qs.dequantize(), 0.5))
    # torchvision's exception kinds
    for args in ((torch.rand(4), torch.rand(3)), (torch.rand(3, 5), torch.rand(3)),
                 (torch.rand(3, 4), torch.rand(3, 2)), (torch.rand(3, 4), torch.rand(4))):
        with pytest.raises(RuntimeError):
            segfast.nms(*args, 0.5)
        with pytest.raises(ValueError):
            segfast.nms(*args, 0.5)
    for fn in (segfast.giou_loss, segfast.diou_loss, segfast.ciou_loss):
        with pytest.raises(ValueError, match="Invalid"):
            fn(boxes[:2], boxes[:2], reduction="xyz")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_monai_focal_ignore_single_channel_and_no_spatial_dims(reduction, monai_losses):
    """ignore_index on a one-channel float target (MONAI compares it element-wise)
    and on (N, C) inputs with (N, 1) labels."""
    x = torch.randn(3, 1, 5, 6, dtype=torch.float64)
    t = (torch.rand(3, 1, 5, 6) > 0.5).double()
    t[0, 0, :2] = 255
    _compare(cm.FocalLoss(ignore_index=255, reduction=reduction),
             monai_losses.FocalLoss(ignore_index=255, reduction=reduction), x, t)
    if reduction != "none":
        x2, y2 = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 4, (6, 1))
        y2[1] = 255
        for sm in (False, True):
            kw = dict(to_onehot_y=True, ignore_index=255, reduction=reduction, use_softmax=sm)
            _compare(cm.FocalLoss(**kw), monai_losses.FocalLoss(**kw), x2, y2)


def _kernels_only(monkeypatch):
    """Record the kernel entry points of segfast._C that run; -> (calls, the
    context in which segfast's eager paths fail: tools/peer_adapters/kernels_only.py)."""
    import importlib.util
    from pathlib import Path

    from segfast import backends

    path = Path(__file__).resolve().parents[1] / "tools" / "peer_adapters" / "kernels_only.py"
    spec = importlib.util.spec_from_file_location("segfast_kernels_only", path)
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    calls = []

    class Kernels:
        """segfast._C.cpu, each entry recording its name when called."""

        def __getattr__(self, name):
            fn = getattr(real.cpu, name)
            if not callable(fn):
                return fn

            def call(*a, **kw):
                calls.append(name)
                return fn(*a, **kw)
            return call

    class Recorder:
        cpu = Kernels()

        def __getattr__(self, name):
            return getattr(real, name)

    real = backends._C
    monkeypatch.setattr(backends, "_C", Recorder())
    return calls, guard.eager_paths_fail


def _audit_cases():
    """(name, loss, input, target) for each compat class and the argument sets it runs on kernels."""
    x, y, soft, onehot = _data("cpu", dtype=torch.float32)
    y = y.clamp(0, 3)
    soft, onehot = soft.float(), onehot.float()
    norm = soft / soft.sum(1, keepdim=True)
    yi = y.clone()
    yi[0, :3] = 255
    b = (soft[:, :1] > 0.5).float()
    L = y[:, None]
    cases = [
        ("monai.DiceLoss", cm.DiceLoss(softmax=True, to_onehot_y=True), x, L),
        ("monai.DiceLoss", cm.DiceLoss(sigmoid=True, batch=True), x, onehot),
        ("monai.DiceLoss", cm.DiceLoss(softmax=True, soft_label=True, ignore_index=1), x, onehot),
        ("monai.GeneralizedDiceLoss", cm.GeneralizedDiceLoss(softmax=True, to_onehot_y=True), x, L),
        ("monai.TverskyLoss", cm.TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7), x, L),
        ("monai.TverskyLoss", cm.TverskyLoss(sigmoid=True), x, soft),
        ("monai.FocalLoss", cm.FocalLoss(), x, onehot),
        ("monai.FocalLoss", cm.FocalLoss(to_onehot_y=True, alpha=[0.1, 0.5, 2.0, 0.7]), x, L),
        ("monai.FocalLoss", cm.FocalLoss(to_onehot_y=True, use_softmax=True, ignore_index=255), x, yi[:, None]),
        ("monai.FocalLoss", cm.FocalLoss(use_softmax=True), x, onehot),
        ("monai.FocalLoss", cm.FocalLoss(use_softmax=True, alpha=0.3, reduction="sum"), x, norm),
        ("monai.FocalLoss", cm.FocalLoss(use_softmax=True, ignore_index=2, reduction="sum"), x, onehot),
        ("monai.FocalLoss", cm.FocalLoss(use_softmax=True, include_background=False, reduction="none"), x, norm),
        ("monai.DiceCELoss", cm.DiceCELoss(softmax=True, to_onehot_y=True), x, L),
        ("monai.DiceCELoss", cm.DiceCELoss(sigmoid=True), x[:, :1], b),
        ("monai.DiceCELoss", cm.DiceCELoss(softmax=True, label_smoothing=0.1), x, norm),
        ("monai.DiceFocalLoss", cm.DiceFocalLoss(softmax=True, to_onehot_y=True), x, L),
        ("monai.DiceFocalLoss", cm.DiceFocalLoss(sigmoid=True, alpha=0.25), x, onehot),
        ("smp.DiceLoss", cs.DiceLoss("multiclass"), x, y),
        ("smp.DiceLoss", cs.DiceLoss("multilabel"), x, onehot),
        ("smp.DiceLoss", cs.DiceLoss("binary"), x[:, :1], b),
        ("smp.JaccardLoss", cs.JaccardLoss("multiclass"), x, y),
        ("smp.TverskyLoss", cs.TverskyLoss("multiclass", alpha=0.3, beta=0.7), x, y),
        ("smp.FocalLoss", cs.FocalLoss("multiclass"), x, y),
        ("smp.FocalLoss", cs.FocalLoss("multilabel"), x, onehot),
        ("smp.FocalLoss", cs.FocalLoss("binary"), x[:, :1], b),
        ("smp.SoftBCEWithLogitsLoss", cs.SoftBCEWithLogitsLoss(smooth_factor=0.1), x, onehot),
        ("smp.SoftCrossEntropyLoss", cs.SoftCrossEntropyLoss(smooth_factor=0.1), x, y),
        ("smp.LovaszLoss", cs.LovaszLoss("multiclass"), x, y),
        ("smp.LovaszLoss", cs.LovaszLoss("multilabel"), x, onehot),
        ("smp.LovaszLoss", cs.LovaszLoss("binary"), x[:, :1], b),
    ]
    return cases


def test_every_compat_class_is_audited():
    names = {c[0] for c in _audit_cases()}
    assert names == ({f"monai.{n}" for n in cm.__all__ if n != "ShapeError"}
                     | {f"smp.{n}" for n in cs.__all__ if n.endswith("Loss")})


@pytest.mark.parametrize("case", range(len(_audit_cases())))
def test_compat_class_runs_kernels_only(case, monkeypatch):
    """Each compat class, forward and backward, on the cpu backend: the
    kernels of segfast._C run and no eager path does (the references,
    torch's losses and log-softmax all fail when called)."""
    name, loss, x, t = _audit_cases()[case]
    calls, eager_paths_fail = _kernels_only(monkeypatch)
    xg = x.detach().requires_grad_(True)
    with warnings.catch_warnings(), eager_paths_fail():
        warnings.simplefilter("ignore")
        out = loss(xg, t)
        out.sum().backward()
    assert calls, name
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_every_compat_class_has_a_benchmark_row():
    """segfast-bench times each compat class beside the native call and the peer."""
    import inspect

    from segfast import bench

    rows = {(inspect.getclosurevars(make).nonlocals["module"], inspect.getclosurevars(make).nonlocals["name"])
            for op in bench.ops().values() for key, make in op.extra.items() if key.startswith("compat_")}
    want = ({("compat.monai", n) for n in cm.__all__ if n != "ShapeError"}
            | {("compat.smp", n) for n in cs.__all__ if n.endswith("Loss")})
    assert want <= rows, want - rows


def test_dense_softmax_focal_benchmark_rows(monai_losses):
    """The dense-target focal case: one-hot float targets; the compat row gives MONAI's value."""
    from segfast import bench

    c = bench.Case("focal_dense", (2, 3, 16, 16), torch.float32, torch.float32)
    x, y = bench.make_inputs(c, torch.device("cpu"))
    assert y.shape == x.shape and y.dtype == torch.float32
    run = bench.runners(c, torch.device("cpu"))
    assert {"cpu", "reference", "monai", "compat_monai"} <= set(run), set(run)
    vals = {name: float(fn(x, y).detach()) for name, fn in run.items()}
    assert vals["compat_monai"] == pytest.approx(vals["monai"], rel=1e-5)
    assert vals["cpu"] == pytest.approx(vals["reference"], rel=1e-5)
    assert vals["cpu"] == pytest.approx(3 * vals["monai"], rel=1e-5)  # native: mean over pixels, MONAI: elements
