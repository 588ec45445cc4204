"""The softmax focal loss on dense (one-hot or soft) targets, MONAI's
softmax_focal_loss, on every backend: against the eager reference, MONAI's
formula and the class-index form; dtypes, strides, grad_output, gradcheck,
NaN, ignore_index."""

from __future__ import annotations

import pytest
import torch

import segfast.functional as SF
from segfast import backends
from segfast.ops import pixel as P

from conftest import kernel_backends, tol

BACKENDS = kernel_backends() + ["torch"]


def _shape(backend):
    return (5, 6) if backend == "triton" else (13, 17)


def _data(backend, C=5, dtype=torch.float32, soft=True):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, C, *_shape(backend), generator=g) * 2).to(dtype)
    y = torch.randint(0, C, (2, *_shape(backend)), generator=g)
    onehot = torch.nn.functional.one_hot(y, C).movedim(-1, 1).float()
    t = torch.rand(2, C, *_shape(backend), generator=g).softmax(1) if soft else onehot
    return x, y, t


def monai_formula(x, t, gamma, alpha=None):
    """MONAI's softmax_focal_loss written out ([N, C, *] per element), float64."""
    ls = x.double().log_softmax(1)
    loss = -(1 - ls.exp()).pow(gamma) * ls * t.double()
    if alpha is not None:
        loss = loss * torch.as_tensor(alpha, dtype=torch.float64).view(1, -1, *[1] * (x.dim() - 2))
    return loss


def _run(fn, x, go=None):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward(torch.ones_like(out) if go is None else go.to(out.dtype))
    return out.detach(), x.grad


def _close(a, b, dtype=torch.float32, scale=None):
    t = tol(dtype)
    t["atol"] *= max(1.0, float(b.abs().max()) if scale is None else scale)
    torch.testing.assert_close(a.double(), b.double(), **t)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (1.5, [0.1, 0.4, 0.2, 0.8, 0.5]), (0.0, None), (0.5, 0.3)])
def test_matches_monai_formula(backend, reduction, gamma, alpha):
    """Loss and gradient (grad_output != 1) against MONAI's formula, soft targets."""
    x, _, t = _data(backend)
    go = None
    if reduction == "none":
        go = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    else:
        go = torch.tensor(2.5)
    a = alpha if alpha is None or isinstance(alpha, list) else [alpha] * 5
    got, gx = _run(lambda x: SF.focal_loss(x, t, mode="multiclass", gamma=gamma, alpha=alpha,
                                           reduction=reduction, backend=backend), x, go)

    def want_fn(x):
        m = monai_formula(x, t, gamma, a)
        if reduction == "none":
            return m
        return m.sum() / (m.numel() / m.shape[1]) if reduction == "mean" else m.sum()

    want, wx = _run(want_fn, x.double(), go)
    assert got.shape == want.shape
    _close(got, want)
    _close(gx, wx)


@pytest.mark.parametrize("backend", kernel_backends())
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_against_reference_with_ignore_and_weight(backend, reduction):
    x, _, t = _data(backend, soft=False)
    t[0, :, 1, :3] = -100.0  # whole ignored pixels
    t[1, 2, 4, 4] = -100.0   # one ignored channel drops the whole pixel
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5])
    go = torch.rand(x.shape) + 0.5 if reduction == "none" else torch.tensor(0.7)

    def fn(b):
        return lambda x: SF.focal_loss(x, t, mode="multiclass", weight=w, gamma=2.0, ignore_index=-100,
                                       reduction=reduction, backend=b)

    got, gx = _run(fn(backend), x, go)
    want, wx = _run(fn("torch"), x.double(), go)
    _close(got, want)
    _close(gx, wx)
    if reduction == "none":
        assert (got[0, :, 1, :3] == 0).all() and (got[1, :, 4, 4] == 0).all()
        assert (gx[0, :, 1, :3] == 0).all() and (gx[1, :, 4, 4] == 0).all()
    # the mean is over the valid pixels: as if the ignored ones were not there
    keep = (t != -100).all(1)
    n_valid = int(keep.sum())
    if reduction == "mean":
        m = monai_formula(x, torch.where(keep[:, None], t, 0), 2.0, w.tolist())
        _close(got, m.sum() / n_valid)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_equals_class_indices(backend):
    x, y, onehot = _data(backend, soft=False)
    for red in ("mean", "sum"):
        a, ga = _run(lambda x: SF.focal_loss(x, onehot, mode="multiclass", alpha=[0.5, 1, 2, 1, 0.3],
                                             reduction=red, backend=backend), x)
        b, gb = _run(lambda x: SF.focal_loss(x, y, mode="multiclass", alpha=[0.5, 1, 2, 1, 0.3],
                                             reduction=red, backend=backend), x)
        _close(a, b)
        _close(ga, gb)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtypes(backend, dtype):
    x, _, t = _data(backend, dtype=dtype)
    got, gx = _run(lambda x: SF.focal_loss(x, t.to(dtype), mode="multiclass", backend=backend), x)
    want, wx = _run(lambda x: SF.focal_loss(x.double(), t.to(dtype).double(), mode="multiclass",
                                            backend="torch"), x)
    assert gx.dtype == dtype and got.dtype == torch.float32
    _close(got, want, dtype)
    _close(gx.float(), wx, dtype, scale=float(wx.abs().max()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous(backend):
    base = torch.randn(2, 10, *[2 * s for s in _shape(backend)], requires_grad=True)
    x = base[:, ::2, ::2, ::2]  # C = 5, strided
    t = torch.rand(2, *_shape(backend), 5).softmax(-1).movedim(-1, 1)  # channels-last target
    assert not x.is_contiguous() and not t.is_contiguous()
    go = torch.rand(x.shape)
    got = SF.focal_loss(x, t, mode="multiclass", reduction="none", backend=backend)
    got.backward(go)
    want, wx = _run(lambda x: SF.focal_loss(x, t.contiguous().double(), mode="multiclass",
                                            reduction="none", backend="torch"), x.detach().double(), go)
    _close(got.detach(), want)
    _close(base.grad[:, ::2, ::2, ::2], wx)
    assert base.grad[:, 1::2].abs().max() == 0


@pytest.mark.parametrize("backend", [b for b in ("cpu", "cuda", "torch") if b in BACKENDS])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_float64(backend, reduction):
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.rand(2, 3, 4, 3, dtype=torch.float64).softmax(1)
    t[0, :, 0, 0] = 255
    for gamma in (2.0, 0.5):
        assert torch.autograd.gradcheck(
            lambda x: SF.focal_loss(x, t, mode="multiclass", gamma=gamma, alpha=[0.2, 0.5, 1.0], ignore_index=255,
                                    reduction=reduction, backend=backend), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_nan_out(backend):
    x, _, t = _data(backend)
    x[0, 2, 1, 1] = float("nan")
    loss, gx = _run(lambda x: SF.focal_loss(x, t, mode="multiclass", backend=backend), x)
    assert loss.isnan()
    assert gx[0, :, 1, 1].isnan().all() and not gx[1].isnan().any()
    x, _, t = _data(backend)
    t[1, 0, 2, 2] = float("nan")
    loss, gx = _run(lambda x: SF.focal_loss(x, t, mode="multiclass", backend=backend), x)
    assert loss.isnan()
    m = SF.focal_loss(x, t, mode="multiclass", reduction="none", backend=backend)
    assert m[1, 0, 2, 2].isnan() and not m[0].isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored(backend):
    x, _, t = _data(backend)
    t[:] = -1.0
    x.requires_grad_(True)
    loss = SF.focal_loss(x, t, mode="multiclass", ignore_index=-1, backend=backend)
    (g,) = torch.autograd.grad(loss, x)
    assert loss.item() == 0 and g.abs().max() == 0


def test_soft_target_gradient():
    """A soft target that requires grad gets its gradient (kernel for x, eager for t)."""
    x, _, t = _data("cpu")
    t = t.double().requires_grad_(True)
    (gt,) = torch.autograd.grad(SF.focal_loss(x.double(), t, mode="multiclass", backend="cpu"), t)
    (wt,) = torch.autograd.grad(SF.focal_loss(x.double(), t, mode="multiclass", backend="torch"), t)
    torch.testing.assert_close(gt, wt)


def test_other_softmax_kinds_refuse_dense_targets():
    x = torch.randn(2, 3, 4)
    t = torch.rand(2, 3, 4)
    for kind in (P.CE, P.FUSED):
        with pytest.raises(ValueError, match="class-index targets"):
            P.pixel_loss(x, t, False, kind, backend="torch")


@pytest.mark.skipif(backends._C_emu is None, reason="segfast._C_emu is not built (SEGFAST_CUDA_EMU=ON)")
@pytest.mark.parametrize("schedule", ["forward", "reverse", "shuffle"])
def test_cuda_kernel_thread_orders(schedule):
    """softmax_dense_kernel under several orders of a block's threads (its block sum)."""
    emu = backends._C_emu
    before = emu.schedule()
    emu.set_schedule(schedule, 12345)
    try:
        x = torch.randn(3, 4, 40, 41)
        t = torch.rand(3, 4, 40, 41).softmax(1)
        t[0, :, :3] = 7.0
        for red in ("mean", "sum", "none"):
            go = torch.rand(x.shape) if red == "none" else torch.tensor(1.3)
            got, gx = _run(lambda x: SF.focal_loss(x, t, mode="multiclass", ignore_index=7, reduction=red,
                                                   backend="cuda"), x, go)
            want, wx = _run(lambda x: SF.focal_loss(x, t, mode="multiclass", ignore_index=7, reduction=red,
                                                    backend="cpu"), x, go)
            _close(got, want)
            _close(gx, wx)
    finally:
        emu.set_schedule(before)


@pytest.mark.parametrize("C", [65, 130])
def test_many_classes_triton(C):
    """Beyond one class tile (C > 64) the Triton kernel loops over class chunks."""
    if "triton" not in BACKENDS:
        pytest.skip("triton is not usable here")
    torch.manual_seed(C)
    x = torch.randn(2, C, 5, 7)
    t = torch.softmax(torch.randn(2, C, 5, 7), 1)
    for red in ("mean", "none"):
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        a = SF.focal_loss(xa, t, mode="multiclass", reduction=red, backend="triton")
        b = SF.focal_loss(xb, t, mode="multiclass", reduction=red, backend="torch")
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        a.sum().backward()
        b.sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)
