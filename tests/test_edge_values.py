"""Values and arguments at the edges, on every backend: gradients into soft
targets, double backward, infinite / NaN / huge logits, ignore_index types,
float64 on Triton, dense targets outside [0, 1], and the errors around them."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as tF

from segfast import functional as F

from conftest import kernel_backends

KERNELS = kernel_backends()
ALL = ["torch"] + KERNELS
INF = float("inf")


def _grads(fn, x, t, backend, **kw):
    x = x.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    loss = fn(x, t, backend=backend, **kw)
    loss.backward()
    return loss.detach(), x.grad, t.grad


# ---------------------------------------------------------------- gradients into soft targets

TARGET_GRAD_CASES = {
    "dice": (lambda x, t, **k: F.dice_loss(x, t, **k), "softmax"),
    "jaccard": (lambda x, t, **k: F.jaccard_loss(x, t, **k), "softmax"),
    "tversky": (lambda x, t, **k: F.tversky_loss(x, t, alpha=0.3, beta=0.7, **k), "softmax"),
    "generalized_dice": (lambda x, t, **k: F.generalized_dice_loss(x, t, **k), "softmax"),
    "dice_multilabel": (lambda x, t, **k: F.dice_loss(x, t, mode="multilabel", **k), "sigmoid"),
    "bce": (lambda x, t, **k: F.binary_cross_entropy_with_logits(x, t, **k), "sigmoid"),
    "bce_none": (lambda x, t, **k: F.binary_cross_entropy_with_logits(x, t, reduction="none", **k).sum(),
                 "sigmoid"),
    "balanced_bce": (lambda x, t, **k: F.balanced_bce_loss(x, t, **k), "sigmoid"),
    "focal_multilabel": (lambda x, t, **k: F.focal_loss(x, t, mode="multilabel", **k), "sigmoid"),
    "dice_ce_soft": (lambda x, t, **k: F.dice_ce_loss(x, t, **k), "softmax"),
}


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("name", sorted(TARGET_GRAD_CASES))
def test_soft_target_gets_gradient(name, backend):
    fn, kind = TARGET_GRAD_CASES[name]
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.softmax(torch.randn(2, 3, 4, 4, dtype=torch.float64), 1) if kind == "softmax" else torch.rand(2, 3, 4, 4)
    t = t.double()
    lw, xw, tw = _grads(fn, x, t, "torch")
    lg, xg, tg = _grads(fn, x.float(), t.float(), backend)
    assert tw is not None and tg is not None, "the target's gradient was dropped"
    torch.testing.assert_close(lg.double(), lw, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xg.double(), xw, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(tg.double(), tw, rtol=1e-4, atol=1e-6)


def test_soft_target_gradient_matches_monai():
    monai = pytest.importorskip("monai.losses")
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    t = torch.softmax(torch.randn(2, 3, 4, 4, dtype=torch.float64), 1)
    t1 = t.clone().requires_grad_(True)
    monai.DiceLoss(softmax=True)(x, t1).backward()
    for backend in ALL:
        dt = torch.float32 if backend == "triton" else torch.float64
        t2 = t.detach().to(dt, copy=True).requires_grad_(True)
        F.dice_loss(x.to(dt), t2, backend=backend, smooth_nr=1e-5, smooth_dr=1e-5).backward()
        torch.testing.assert_close(t2.grad.double(), t1.grad, rtol=1e-4 if backend == "triton" else 1e-7,
                                   atol=1e-6 if backend == "triton" else 1e-9)


# ---------------------------------------------------------------- double backward


DOUBLE = {
    "cross_entropy": lambda x, y, b: F.cross_entropy(x, y, backend=b),
    "cross_entropy_none": lambda x, y, b: F.cross_entropy(x, y, reduction="none", backend=b).sum(),
    "focal": lambda x, y, b: F.focal_loss(x, y, mode="multiclass", backend=b),
    "fused": lambda x, y, b: F.fused_loss(x, y, backend=b),
    "dice": lambda x, y, b: F.dice_loss(x, y, backend=b),
    "dice_ce": lambda x, y, b: F.dice_ce_loss(x, y, backend=b),
    "bce": lambda x, y, b: F.binary_cross_entropy_with_logits(x, (y == 1).float()[:, None].expand_as(x), backend=b),
}


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("name", sorted(DOUBLE))
def test_double_backward_is_never_silently_zero(name, backend):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 4))
    loss = DOUBLE[name](x, y, backend)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    assert g.requires_grad, "a gradient penalty on this gradient would be silently dropped"
    with pytest.raises(RuntimeError, match="differentiable once"):
        g.square().sum().backward()


def test_double_backward_on_torch_backend():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 4))
    (g,) = torch.autograd.grad(F.cross_entropy(x, y, backend="torch"), x, create_graph=True)
    (h,) = torch.autograd.grad(g.square().sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(tF.cross_entropy(x2, y), x2, create_graph=True)
    (h2,) = torch.autograd.grad(g2.square().sum(), x2)
    torch.testing.assert_close(h, h2)


# ---------------------------------------------------------------- -inf logits (class masks)


def _masked():
    x = torch.tensor([[[[0.5, 0.1]], [[-INF, 0.2]], [[0.3, 0.0]]]])
    y = torch.tensor([[[0, 2]]])
    return x, y


@pytest.mark.parametrize("backend", ALL)
def test_neg_inf_logit_cross_entropy(backend):
    x, y = _masked()
    want = tF.cross_entropy(x, y)
    got = F.cross_entropy(x, y, backend=backend)
    torch.testing.assert_close(got, want)
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(xg, y, backend=backend).backward()
    xw = x.clone().requires_grad_(True)
    tF.cross_entropy(xw, y).backward()
    torch.testing.assert_close(xg.grad, xw.grad)
    ref = F.fused_loss(x, y, backend="torch")
    assert torch.isfinite(ref)
    torch.testing.assert_close(F.fused_loss(x, y, backend=backend), ref)
    focal = F.focal_loss(x, y, mode="multiclass", backend=backend)
    torch.testing.assert_close(focal, F.focal_loss(x.double(), y, mode="multiclass", backend="torch").float())


@pytest.mark.parametrize("backend", ALL)
def test_neg_inf_logit_dice_ce(backend):
    x, y = _masked()
    d = F.dice_loss(x.double(), y, backend="torch")
    want = d + tF.cross_entropy(x.double(), y)
    torch.testing.assert_close(F.dice_ce_loss(x, y, backend=backend).double(), want, rtol=1e-5, atol=1e-6)
    want_f = d + F.focal_loss(x.double(), y, mode="multiclass", backend="torch")
    assert torch.isfinite(want_f)
    torch.testing.assert_close(F.dice_focal_loss(x, y, backend=backend).double(), want_f, rtol=1e-5, atol=1e-6)
    want_u = d + F.fused_loss(x.double(), y, backend="torch")
    torch.testing.assert_close(F.dice_fused_loss(x, y, backend=backend).double(), want_u, rtol=1e-5, atol=1e-6)
    # smoothing gives every class a share: -log 0 is inf, as torch says
    assert F.dice_ce_loss(x, y, label_smoothing=0.1, backend=backend) == INF


def test_neg_inf_logit_dice_ce_matches_monai():
    monai = pytest.importorskip("monai.losses")
    x, y = _masked()
    want = monai.DiceCELoss(softmax=True, to_onehot_y=True)(x, y[:, None])
    for backend in ALL:
        torch.testing.assert_close(F.dice_ce_loss(x, y, backend=backend), want, msg=backend)


# ---------------------------------------------------------------- NaN / inf in, NaN out


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("name", ["dice", "jaccard", "tversky", "generalized_dice"])
@pytest.mark.parametrize("bad", [float("nan"), INF])
def test_nonfinite_logit_gives_nan(name, backend, bad):
    fn = {"dice": F.dice_loss, "jaccard": F.jaccard_loss, "tversky": F.tversky_loss,
          "generalized_dice": F.generalized_dice_loss}[name]
    x = torch.randn(2, 3, 4, 4)
    x[0, 1, 2, 2] = bad
    y = torch.randint(0, 3, (2, 4, 4))
    assert torch.isnan(fn(x, y, backend=backend, smooth_nr=0.0, smooth_dr=0.0))
    assert torch.isnan(fn(x, y, backend=backend))


@pytest.mark.parametrize("backend", ALL)
def test_all_neg_inf_logits_give_nan(backend):
    x = torch.full((1, 3, 2, 2), -INF, requires_grad=True)
    y = torch.zeros(1, 2, 2, dtype=torch.long)
    loss = F.jaccard_loss(x, y, backend=backend)
    assert torch.isnan(loss)


# ---------------------------------------------------------------- ignore_index types


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("fn", ["cross_entropy", "dice_loss", "binary_cross_entropy_with_logits"])
def test_ignore_index_integer_types(fn, backend):
    x = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))
    y[0, 0] = 255
    f = getattr(F, fn)
    want = f(x, y, ignore_index=255, backend=backend)
    for ii in (np.int64(255), torch.tensor(255), np.float64(255.0), 255.0, np.uint8(255)):
        torch.testing.assert_close(f(x, y, ignore_index=ii, backend=backend), want)
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        f(x, y, ignore_index=1.5, backend=backend)
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        f(x, y, ignore_index=torch.tensor(1.5), backend=backend)
    with pytest.raises(TypeError, match="ignore_index must be an integer"):
        f(x, y, ignore_index=True, backend=backend)


def test_ignore_index_beyond_double_precision():
    x = torch.randn(2, 3, 4)
    y = torch.randint(0, 3, (2, 4))
    with pytest.raises(ValueError, match=r"ignore_index must be in \[-2\*\*53, 2\*\*53\]"):
        F.cross_entropy(x, y, ignore_index=2**62 + 1)


# ---------------------------------------------------------------- float64 on triton


FLOAT64_LOSSES = {
    "dice": lambda x, y, b: F.dice_loss(x, y, backend=b),
    "jaccard_multilabel": lambda x, y, b: F.jaccard_loss(x, y, mode="multilabel", backend=b),
    "cross_entropy": lambda x, y, b: F.cross_entropy(x, y, backend=b),
    "bce": lambda x, y, b: F.binary_cross_entropy_with_logits(x, y, backend=b),
    "focal": lambda x, y, b: F.focal_loss(x, y, mode="multiclass", backend=b),
    "dice_ce": lambda x, y, b: F.dice_ce_loss(x, y, backend=b),
    "dice_focal": lambda x, y, b: F.dice_focal_loss(x, y, backend=b),
    "fused": lambda x, y, b: F.fused_loss(x, y, backend=b),
}


@pytest.mark.skipif("triton" not in KERNELS, reason="triton is not runnable here")
@pytest.mark.parametrize("name", sorted(FLOAT64_LOSSES))
def test_triton_refuses_float64(name):
    """The Triton kernels compute in float32: float64 input is refused with a
    clear error, never returned as float64 that is float32 inside."""
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 5))
    with pytest.raises(TypeError, match=r"triton backend computes in float32 and refuses float64 input "
                                        r"\(shape \(2, 3, 5\)\)"):
        FLOAT64_LOSSES[name](x, y, "triton")
    for backend in ["torch"] + [b for b in KERNELS if b != "triton"]:
        x1 = x.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda v: FLOAT64_LOSSES[name](v, y, backend), (x1,))


def test_float64_default_backend_is_never_triton(monkeypatch):
    from segfast import backends
    from segfast.ops import _common

    monkeypatch.delenv("SEGFAST_BACKEND", raising=False)
    monkeypatch.setattr(backends, "choose", lambda backend, device: backend or "triton")
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    assert _common.float64_backend(None, x) in ("cuda", "torch")
    assert _common.float64_backend(None, x.float()) == "triton"


# ---------------------------------------------------------------- extreme logits


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("case", ["huge_one", "all_1e30", "shift_1e7", "neg_huge"])
def test_extreme_logits_match_torch(backend, case):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))
    if case == "huge_one":
        x[0, 1, 0, 0] = 3e38
    elif case == "all_1e30":
        x = torch.full_like(x, 1e30)
    elif case == "shift_1e7":
        x = x + 1e7
    else:
        x[1, 2, 1, 1] = -3e38
    want = tF.cross_entropy(x, y)
    # torch's own error at these magnitudes: float32 rounding of m - x_y
    got = F.cross_entropy(x, y, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if case == "all_1e30":
        torch.testing.assert_close(got, torch.tensor(math.log(3)))
        ps = torch.where(y == 0, math.log(3), math.log(1.5)).mean()
        torch.testing.assert_close(F.fused_loss(x, y, backend=backend), 0.5 * math.log(3) + 0.5 * ps)
        torch.testing.assert_close(F.focal_loss(x, y, mode="multiclass", backend=backend),
                                   torch.tensor((2 / 3) ** 2 * math.log(3)))
        dce = F.dice_ce_loss(x, y, backend=backend) - F.dice_loss(x, y, backend=backend)
        torch.testing.assert_close(dce, torch.tensor(math.log(3)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", KERNELS)
def test_focal_gradient_at_huge_logit(backend):
    x = torch.zeros(1, 3, 1, 1)
    x[0, 0] = 3.4e38
    y = torch.tensor([[[1]]])
    xg = x.clone().requires_grad_(True)
    F.focal_loss(xg, y, mode="multiclass", backend=backend).backward()
    # p_y = 0: the gradient of -(1 - p)^2 log p is softmax(x) - onehot(y) = (1, -1, 0)
    # (eager float32 overflows to NaN here; float64 agrees)
    x64 = x.double().requires_grad_(True)
    F.focal_loss(x64, y, mode="multiclass", backend="torch").backward()
    torch.testing.assert_close(x64.grad.flatten(), torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(xg.grad.flatten(), torch.tensor([1.0, -1.0, 0.0]))


# ---------------------------------------------------------------- dense targets outside [0, 1]


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_focal_targets_outside_unit_interval_agree(backend, mode):
    C = 1 if mode == "binary" else 3
    x = torch.randn(2, C, 5, 5) * 3
    t = torch.rand(2, C, 5, 5) * 3 - 1  # in [-1, 2)
    for gamma in (0.0, 1.0, 1.5, 2.0):
        want = F.focal_loss(x.double(), t.double(), mode=mode, gamma=gamma, backend="torch")
        xg = x.clone().requires_grad_(True)
        got = F.focal_loss(xg, t, mode=mode, gamma=gamma, backend=backend)
        got.backward()
        xw = x.double().requires_grad_(True)
        F.focal_loss(xw, t.double(), mode=mode, gamma=gamma, backend="torch").backward()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(xg.grad.double(), xw.grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- clear errors and empty batches


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("fn", ["dice_ce_loss", "dice_focal_loss", "dice_fused_loss"])
def test_empty_batch_of_combined_losses(fn, backend):
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    y = torch.zeros(0, 4, 4, dtype=torch.long)
    loss = getattr(F, fn)(x, y, backend=backend)
    assert loss.item() == 0.0
    loss.backward()


@pytest.mark.parametrize("backend", ALL)
def test_dice_ce_one_hot_targets(backend):
    x = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))
    oh = tF.one_hot(y, 3).movedim(-1, 1).float()
    torch.testing.assert_close(F.dice_ce_loss(x, oh, backend=backend), F.dice_ce_loss(x, y, backend=backend))
    soft = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    want = F.dice_loss(x, soft, backend="torch") + tF.cross_entropy(x, soft)
    torch.testing.assert_close(F.dice_ce_loss(x, soft, backend=backend), want)


def test_dice_ce_one_hot_matches_monai():
    monai = pytest.importorskip("monai.losses")
    x = torch.randn(2, 3, 4, 4)
    oh = tF.one_hot(torch.randint(0, 3, (2, 4, 4)), 3).movedim(-1, 1).float()
    torch.testing.assert_close(F.dice_ce_loss(x, oh), monai.DiceCELoss(softmax=True)(x, oh))


def test_dice_ce_wrong_dense_shape_names_user_shapes():
    x = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4)).float()
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*got \(2, 4, 4\)"):
        F.dice_ce_loss(x, y)


def test_dense_crf_iterations_zero_is_softmax():
    u = torch.randn(1, 3, 5, 6)
    im = torch.randint(0, 255, (1, 3, 5, 6), dtype=torch.uint8)
    for backend in ("torch", "cpu"):
        torch.testing.assert_close(F.dense_crf(u, im, iterations=0, backend=backend), torch.softmax(-u, 1))


def test_dense_crf_warns_on_unit_scale_image():
    u = torch.randn(1, 3, 5, 6)
    with pytest.warns(UserWarning, match="0-255 scale"):
        F.dense_crf(u, torch.rand(1, 3, 5, 6), backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.dense_crf(u, torch.rand(1, 3, 5, 6) * 255, backend="cpu")
        F.dense_crf(u, torch.rand(1, 3, 5, 6), bilateral=None, backend="cpu")


# ---------------------------------------------------------------- infinite logits in the sigmoid and fused kernels


def _match_reference(fn, x, t, backend, **kw):
    """Loss and gradient of ``backend`` against the float64 reference: NaN / inf
    exactly where the reference's are, close elsewhere."""
    if backend == "triton" and x.dtype == torch.float64:
        x = x.float()  # triton refuses float64
    lw, xw = _grads_no_target(fn, x.double(), t, "torch", **kw)
    lg, xg = _grads_no_target(fn, x, t, backend, **kw)
    torch.testing.assert_close(lg.double(), lw, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert torch.equal(torch.isfinite(xg), torch.isfinite(xw)), (xg, xw)
    fin = torch.isfinite(xw)
    torch.testing.assert_close(xg.double()[fin], xw[fin], rtol=1e-4, atol=1e-6)


def _grads_no_target(fn, x, t, backend, **kw):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, t, backend=backend, **kw)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("backend", KERNELS)
def test_sigmoid_focal_neg_inf_logit_of_a_negative(backend):
    """x = -inf with t = 0: p_t = 1 exactly, so the focal factor and its gradient are 0
    (a fast exp that clamps exp(-inf) to exp(-87) gives a factor of 1e-38 times an
    infinite ce: a NaN gradient where the reference's is 0)."""
    x = torch.tensor([[[-INF, 0.5, 2.0]], [[1.0, -INF, -0.5]]])
    t = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.float32).view(2, 1, 3)
    def fn(x, t, **k):
        return F.focal_loss(x, t, mode="multilabel", gamma=1.5, reduction="none", **k).sum()
    _match_reference(fn, x, t, backend)
    _, xg = _grads_no_target(fn, x, t, backend)
    assert xg[1, 0, 1] == 0


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("name", ["bce", "focal"])
def test_sigmoid_nan_logit_of_an_ignored_element(name, backend):
    """An ignored element's gradient is 0·d, as the reference's and the softmax
    kinds': a NaN logit there gives a NaN gradient, not 0."""
    fn = {"bce": lambda x, t, **k: F.binary_cross_entropy_with_logits(x, t, **k),
          "focal": lambda x, t, **k: F.focal_loss(x, t, mode="multilabel", gamma=1.5, **k)}[name]
    x = torch.tensor([[[float("nan"), 0.5, -1.0]], [[1.0, 2.0, -0.5]]])
    t = torch.tensor([[[255, 1, 0]], [[0, 1, 1]]], dtype=torch.float32)
    _match_reference(fn, x, t, backend, ignore_index=255)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dice_fused_huge_logit_gap_gradient(backend, dtype):
    """Class 0 ahead of every foreground class by more than exp's range: the fused
    term's q_c = p_c / (1 - p_0) is 0 / 0 from the probabilities and must come
    from the logits (the general path once gave a gradient error of 0.5)."""
    x = torch.tensor([[[-843.0, 2176.0, 5.0], [-4868.0, 14943.0, -1.0], [-900.0, -3e4, 0.5]]], dtype=dtype)
    y = torch.tensor([[1, 2, 0]])
    _match_reference(lambda x, t, **k: F.dice_fused_loss(x, t, **k), x, y, backend)


@pytest.mark.parametrize("backend", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("label", [0, 1])
def test_dice_fused_all_foreground_neg_inf(backend, dtype, label):
    """Every foreground logit -inf: -log(1 - p_0) is inf (torch's logsumexp of all
    -inf is -inf, not NaN), and the gradient is NaN on every class of that pixel, as
    the reference's."""
    x = torch.tensor([[[-0.14, 0.3, 1.0], [-INF, 2.0, -1.0]]], dtype=dtype)
    y = torch.tensor([[label, 0, 1]])
    _match_reference(lambda x, t, **k: F.dice_fused_loss(x, t, **k), x, y, backend)
