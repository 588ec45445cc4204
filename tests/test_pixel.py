"""Pixel-wise losses on every backend: against torch's own functions
(cross_entropy, binary_cross_entropy_with_logits), torchvision's focal formula
(written out: torchvision has no CPU build here) and the float64 reference;
one-pass gradient and memory, reduction="none", gradcheck, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segfast.functional as SF
from segfast.ops import pixel as P
from segfast.ops import region_pixel as RP
from segfast.reference import pixel as ref

from conftest import kernel_backends, pairwise, tol

BACKENDS = kernel_backends() + ["torch"]


def _shape(backend):
    return (5, 6) if backend == "triton" else (23, 29)


def _run(fn, x, go=None, **kw):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x, **kw)
    out.backward(torch.ones_like(out) if go is None else go.to(out.dtype))
    return out.detach(), x.grad


def _assert_close(a, b, dtype=torch.float32):
    t = tol(dtype)
    t["atol"] *= max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a.double(), b.double(), **t)


def _labels(N, C, shape, ignore=None):
    y = torch.randint(0, C, (N, *shape))
    if ignore is not None:
        y[torch.rand(y.shape) < 0.2] = ignore
    return y


@pytest.mark.parametrize("backend,reduction,weighted,smoothing", pairwise(
    BACKENDS, ["mean", "sum", "none"], [(False, 0.0), (True, 0.0), (True, 0.1), (False, 0.2)]))
def test_cross_entropy_matches_torch(backend, reduction, weighted, smoothing):
    C = 6
    x = torch.randn(3, C, *_shape(backend)) * 3
    y = _labels(3, C, _shape(backend), ignore=-100)
    w = torch.rand(C) + 0.2 if weighted else None
    go = torch.rand(3, *_shape(backend)) + 0.5 if reduction == "none" else torch.tensor(0.7)
    got, gx = _run(lambda x: SF.cross_entropy(x, y, weight=w, label_smoothing=smoothing, reduction=reduction,
                                              backend=backend), x, go)
    want, wx = _run(lambda x: F.cross_entropy(x.double(), y, weight=None if w is None else w.double(),
                                              label_smoothing=smoothing, reduction=reduction), x, go)
    _assert_close(got, want)
    _assert_close(gx, wx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_matches_torch(backend, reduction):
    C = 4
    x = torch.randn(2, C, *_shape(backend)) * 3
    t = torch.rand(2, C, *_shape(backend))
    w, pw = torch.rand(C) + 0.2, torch.rand(C) * 3
    go = torch.rand_like(x) + 0.5 if reduction == "none" else torch.tensor(1.3)
    got, gx = _run(lambda x: SF.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw, reduction=reduction,
                                                                 backend=backend), x, go)
    want, wx = _run(lambda x: F.binary_cross_entropy_with_logits(
        x.double(), t.double(), weight=w.double().view(C, 1, 1), pos_weight=pw.double().view(C, 1, 1),
        reduction=reduction), x, go)
    _assert_close(got, want)
    _assert_close(gx, wx)


def _torchvision_focal(x, t, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss written out (reduction='none')."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.5), (0.6, 0.0), (0.25, 1.5)])
def test_sigmoid_focal_matches_torchvision(backend, alpha, gamma):
    x = torch.randn(2, 3, *_shape(backend)) * 3
    t = (torch.rand_like(x) > 0.7).float()
    got, gx = _run(lambda x: SF.focal_loss(x, t, mode="multilabel", alpha=alpha, gamma=gamma, backend=backend),
                   x, torch.tensor(2.0))
    want, wx = _run(lambda x: _torchvision_focal(x.double(), t.double(), alpha, gamma).mean(), x, torch.tensor(2.0))
    _assert_close(got, want)
    _assert_close(gx, wx)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["focal_softmax", "fused", "balanced_bce", "binary_focal_labels"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_against_reference(backend, kind, reduction):
    N, C = 2, 5
    x = torch.randn(N, C, *_shape(backend)) * 3
    y = _labels(N, C, _shape(backend), ignore=255)
    if kind == "focal_softmax":
        fn = lambda x: SF.focal_loss(x, y, mode="multiclass", alpha=[0.5, 1, 2, 1, 0.25], gamma=2.0,  # noqa: E731
                                     ignore_index=255, reduction=reduction, backend=backend)
        ref_fn = lambda x: SF.focal_loss(x, y, mode="multiclass", alpha=[0.5, 1, 2, 1, 0.25], gamma=2.0,  # noqa: E731
                                         ignore_index=255, reduction=reduction, backend="torch")
    elif kind == "fused":
        fn = lambda x: SF.fused_loss(x, y, ws=0.3, wp=0.7, ignore_index=255, reduction=reduction,  # noqa: E731
                                     backend=backend)
        ref_fn = lambda x: SF.fused_loss(x, y, ws=0.3, wp=0.7, ignore_index=255, reduction=reduction,  # noqa: E731
                                         backend="torch")
    elif kind == "balanced_bce":
        t = torch.rand(N, C, *_shape(backend))
        fn = lambda x: SF.balanced_bce_loss(x, t, reduction=reduction, backend=backend)  # noqa: E731
        ref_fn = lambda x: SF.balanced_bce_loss(x, t, reduction=reduction, backend="torch")  # noqa: E731
    else:
        x = x[:, :1]
        yb = (torch.rand(N, *_shape(backend)) > 0.6).long()
        yb[0, 0] = 255
        fn = lambda x: SF.focal_loss(x, yb, mode="binary", ignore_index=255, reduction=reduction,  # noqa: E731
                                     backend=backend)
        ref_fn = lambda x: SF.focal_loss(x.double(), yb, mode="binary", ignore_index=255,  # noqa: E731
                                         reduction=reduction, backend="torch")
    go = None if reduction == "mean" else torch.rand(fn(x).shape) + 0.5
    got, gx = _run(fn, x, go)
    want, wx = _run(lambda x: ref_fn(x.double()), x, go)
    _assert_close(got, want)
    _assert_close(gx, wx)


def test_positive_sharing_closed_form_gradient():
    """Liu & Lew's closed form: dL1/dx_c = p_c - δ_c0 on background pixels,
    p_c - [c >= 1]·p_c/(1 - p0) on foreground pixels, equals autograd."""
    x = torch.randn(2, 4, 50, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (2, 50))
    _, l1, _ = ref.pixel_terms(x, y, True, ref.FUSED)
    (auto,) = torch.autograd.grad(l1.sum(), x)
    p = torch.softmax(x.detach(), 1)
    fg = (y != 0)[:, None]
    cls = torch.arange(4).view(1, 4, 1)
    bg_grad = p - (cls == 0).double()
    fg_grad = p - (cls >= 1).double() * p / (1 - p[:, :1])
    torch.testing.assert_close(auto, torch.where(fg, fg_grad, bg_grad))
    for backend in kernel_backends():
        got, gx = _run(lambda x: SF.fused_loss(x, y.view(2, 50), ws=0.0, wp=1.0, reduction="sum", backend=backend),
                       x.detach().float().view(2, 4, 50))
        _assert_close(gx, torch.where(fg, fg_grad, bg_grad))


@pytest.mark.parametrize("backend", [b for b in kernel_backends() if b not in ("triton", "cuda")])
def test_one_pass_keeps_only_the_gradient(backend):
    """The forward writes dLoss/dx once; autograd saves nothing else, and
    x.grad is that very buffer (no copy, no zeros for the unused output)."""
    x = torch.randn(4, 21, 32, 32, requires_grad=True)
    y = _labels(4, 21, (32, 32), ignore=255)
    saved = []
    written = []
    run = P._run

    def spy(*a, **k):
        out = run(*a, **k)
        written.append(out[2].data_ptr())
        return out

    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        P._run = spy
        try:
            loss = SF.fused_loss(x, y, ignore_index=255, backend=backend)
        finally:
            P._run = run
    assert saved == []
    loss.backward()
    assert x.grad.data_ptr() == written[0]
    g1 = x.grad.clone()
    x.grad = None
    (SF.fused_loss(x, y, ignore_index=255, backend=backend) * 3).backward()
    torch.testing.assert_close(x.grad, 3 * g1)
    # A retained graph backpropagates again: the gradient is recomputed.
    x.grad = None
    loss = SF.fused_loss(x, y, ignore_index=255, backend=backend)
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    (g,) = torch.autograd.grad(2 * loss, x)
    torch.testing.assert_close(x.grad, 2 * g1)
    torch.testing.assert_close(g, 2 * g1)


@pytest.mark.parametrize("backend", [b for b in kernel_backends() if b in ("triton", "cuda")])
@pytest.mark.parametrize("name", ["ce", "bce", "focal_sigmoid", "balanced"])
def test_backward_recomputes_with_grad_output(backend, name):
    """GPU backends: the forward writes no gradient; the backward runs the
    kernel once with grad_output (times the normalizer's share) as a 0-d
    tensor it reads itself (no second pass scaling dx), also through a
    retained graph; softmax and sigmoid kinds alike."""
    x = torch.randn(2, 5, 6, 7, requires_grad=True)
    y = _labels(2, 5, (6, 7), ignore=255)
    w = torch.rand(5) + 0.5
    t = torch.rand(2, 5, 6, 7)
    t[t < 0.1] = -1.0  # ignored elements
    calls = {
        "ce": lambda be, x: SF.cross_entropy(x, y, weight=w, ignore_index=255, label_smoothing=0.1, backend=be),
        "bce": lambda be, x: SF.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=w + 0.5,
                                                                 ignore_index=-1, backend=be),
        "focal_sigmoid": lambda be, x: SF.focal_loss(x, y, mode="multilabel", gamma=1.5, weight=w,
                                                     ignore_index=255, backend=be),
        "balanced": lambda be, x: SF.balanced_bce_loss(x, t, ignore_index=-1, backend=be),
    }
    scaled = []
    orig = torch.Tensor.mul_

    def no_mul_(t, *a, **k):
        scaled.append(t.shape)
        return orig(t, *a, **k)

    torch.Tensor.mul_ = no_mul_
    try:
        loss = calls[name](backend, x)
        (loss * 3).backward(retain_graph=True)
        g1 = x.grad.clone()
        x.grad = None
        (loss * 0.5).backward()
    finally:
        torch.Tensor.mul_ = orig
    assert not any(len(s) == 3 for s in scaled)  # no full-size rescaling of dx
    xr = x.detach().clone().requires_grad_()
    want = calls[name]("torch", xr)
    want.backward()
    torch.testing.assert_close(loss.detach(), want.detach().float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g1, 3 * xr.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, 0.5 * xr.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(backend, dtype):
    x = (torch.randn(2, 7, *_shape(backend)) * 2).to(dtype)
    y = _labels(2, 7, _shape(backend))
    got, gx = _run(lambda x: SF.cross_entropy(x, y, backend=backend), x)
    want, wx = _run(lambda x: F.cross_entropy(x.double(), y), x)
    assert gx.dtype == dtype
    _assert_close(got, want, dtype)
    _assert_close(gx.float() / wx.abs().max(), wx / wx.abs().max(), dtype)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_non_contiguous_and_large_C(backend):
    base = torch.randn(2, 300, 9, 14)
    x = base[:, ::2, :, ::2]  # C = 150, sliced
    y = _labels(2, 150, (9, 7), ignore=-100)
    got, gx = _run(lambda x: SF.fused_loss(x, y, ignore_index=-100, backend=backend), x)
    want, wx = _run(lambda x: SF.fused_loss(x.contiguous().double(), y, ignore_index=-100, backend="torch"), x)
    _assert_close(got, want)
    _assert_close(gx, wx)


@pytest.mark.parametrize("backend", [b for b in ["torch", "cpu"] if b in BACKENDS])
@pytest.mark.parametrize("name", ["ce", "bce", "focal_sigmoid", "focal_softmax", "fused", "balanced"])
def test_gradcheck_float64(backend, name):
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 3))
    y[0, 0, 0] = 255
    t = torch.rand(2, 3, 4, 3, dtype=torch.float64)
    fns = {
        "ce": lambda x: SF.cross_entropy(x, y, ignore_index=255, label_smoothing=0.1, weight=[1, 2, 0.5],
                                         backend=backend),
        "bce": lambda x: SF.binary_cross_entropy_with_logits(x, t, pos_weight=[1, 2, 3], backend=backend),
        "focal_sigmoid": lambda x: SF.focal_loss(x, t, mode="multilabel", gamma=1.5, backend=backend),
        "focal_softmax": lambda x: SF.focal_loss(x, y, mode="multiclass", ignore_index=255, backend=backend),
        "fused": lambda x: SF.fused_loss(x, y, ignore_index=255, reduction="none", backend=backend),
        "balanced": lambda x: SF.balanced_bce_loss(x, t, backend=backend),
    }
    assert torch.autograd.gradcheck(fns[name], (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored_and_empty(backend):
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = torch.full((2, 4, 4), 255)
    for fn in (lambda: SF.cross_entropy(x, y, ignore_index=255, backend=backend),
               lambda: SF.fused_loss(x, y, ignore_index=255, backend=backend),
               lambda: SF.focal_loss(x, y, mode="multiclass", ignore_index=255, backend=backend)):
        loss = fn()
        (g,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0 and g.abs().max() == 0
    e = torch.randn(0, 3, 4, 4, requires_grad=True)
    loss = SF.cross_entropy(e, torch.zeros(0, 4, 4, dtype=torch.long), backend=backend)
    loss.backward()
    assert loss.item() == 0 and e.grad.shape == e.shape


@pytest.mark.parametrize("backend", kernel_backends())
def test_opcheck(backend):
    if backend == "triton":
        pytest.skip("the Triton interpreter cannot run on FakeTensors (see test_integration)")
    x = torch.randn(2, 4, 10, requires_grad=True)
    y = torch.randint(0, 4, (2, 10))
    args = (x, y, torch.rand(4), None, None, True, P.CE, 0, None, 2.0, 0.25, 0.1, 0.05, 0.0)
    torch.library.opcheck(P.pixel_loss_op, args + (P.NORM_WEIGHT, backend))
    torch.library.opcheck(P.pixel_loss_map_op, args + (backend,))
    t = torch.rand(2, 4, 10)
    args = (x, t, None, torch.rand(4), torch.rand(2), False, P.BCE, 0, None, 2.0, 0.25, 0.0, 1.0, 0.0)
    torch.library.opcheck(P.pixel_loss_op, args + (P.NORM_COUNT, backend))
    torch.library.opcheck(P.pixel_loss_map_op, args + (backend,))
    if backend == "cuda":  # the reduced op of that backend (its counter is 0 before and after)
        counter = torch.zeros(1, dtype=torch.int32)
        torch.library.opcheck(P.pixel_reduced_cuda_op, (x, y, torch.rand(4), None, None, counter, True, P.CE, 0,
                                                        None, 2.0, 0.25, 0.1, 0.05, 0.0, P.NORM_WEIGHT))
        torch.library.opcheck(P.pixel_reduced_cuda_op, (x, t, None, torch.rand(4), torch.rand(2), counter, False,
                                                        P.BCE, 0, None, 2.0, 0.25, 0.0, 1.0, 0.0, P.NORM_COUNT))


@pytest.mark.parametrize("backend", [b for b in kernel_backends() if b != "triton"])
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    conv = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 8, 8)
    y = torch.randint(0, 4, (2, 8, 8))

    def step(x, y):
        logits = conv(x)
        return SF.fused_loss(logits, y, backend=backend) + SF.dice_ce_loss(logits, y, backend=backend)

    eager = step(x, y)
    eager.backward()
    g = conv.weight.grad.clone()
    conv.weight.grad = None
    out = torch.compile(step, fullgraph=True, backend="aot_eager")(x, y)
    out.backward()
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(conv.weight.grad, g)


@pytest.mark.parametrize("call,err,match", [
    (lambda x, y: SF.cross_entropy(x, y.float()), TypeError, "class-index"),
    (lambda x, y: SF.cross_entropy(x, y + 7), ValueError, "outside"),
    (lambda x, y: SF.cross_entropy(x[:, :1], y.clamp(0, 0)), ValueError, "C >= 2"),
    (lambda x, y: SF.cross_entropy(x, y, label_smoothing=2.0), ValueError, "label_smoothing"),
    (lambda x, y: SF.cross_entropy(x, y, weight=[1, -1, 1, 1]), ValueError, ">= 0"),
    (lambda x, y: SF.cross_entropy(x, y, reduction="avg"), ValueError, "reduction"),
    (lambda x, y: SF.focal_loss(x, y, mode="binary"), ValueError, "1 channel"),
    (lambda x, y: SF.focal_loss(x, y, mode="multiclass", gamma=-1), ValueError, "gamma"),
    (lambda x, y: SF.focal_loss(x, y, mode="other"), ValueError, "mode"),
    (lambda x, y: SF.fused_loss(x, y, ws=-1), ValueError, "ws"),
    (lambda x, y: SF.balanced_bce_loss(x, y, beta=1.5), ValueError, "beta"),
    (lambda x, y: SF.binary_cross_entropy_with_logits(x, y[:, :2].float()), ValueError, "shape"),
    (lambda x, y: SF.dice_focal_loss(x, y, focal_form="tanh"), ValueError, "focal_form"),
])
def test_bad_input(call, err, match):
    x = torch.randn(2, 4, 5, 6)
    y = torch.randint(0, 4, (2, 5, 6))
    with pytest.raises(err, match=match):
        call(x, y)


def test_dice_sums_equal_sum_of_terms():
    x = torch.randn(2, 4, 9, 9)
    y = _labels(2, 4, (9, 9))
    torch.testing.assert_close(SF.dice_ce_loss(x, y, lambda_dice=0.3, lambda_ce=2.0),
                               0.3 * SF.dice_loss(x, y) + 2.0 * SF.cross_entropy(x, y))
    torch.testing.assert_close(SF.dice_focal_loss(x, y, focal_form="sigmoid"),
                               SF.dice_loss(x, y) + SF.focal_loss(x, y, mode="multilabel"))
    torch.testing.assert_close(SF.dice_fused_loss(x, y, lambda_fused=0.5),
                               SF.dice_loss(x, y) + 0.5 * SF.fused_loss(x, y))


def test_modules_match_functional():
    import segfast

    x = torch.randn(2, 4, 6, 6)
    y = _labels(2, 4, (6, 6), ignore=255)
    t = torch.rand(2, 4, 6, 6)
    cases = [
        (segfast.CrossEntropyLoss(weight=[1, 2, 3, 4], ignore_index=255, label_smoothing=0.1),
         lambda: SF.cross_entropy(x, y, weight=[1, 2, 3, 4], ignore_index=255, label_smoothing=0.1), y),
        (segfast.BCEWithLogitsLoss(pos_weight=[1, 2, 3, 4]),
         lambda: SF.binary_cross_entropy_with_logits(x, t, pos_weight=[1, 2, 3, 4]), t),
        (segfast.BalancedBCELoss(), lambda: SF.balanced_bce_loss(x, t), t),
        (segfast.FocalLoss("multiclass", alpha=0.5, ignore_index=255),
         lambda: SF.focal_loss(x, y, mode="multiclass", alpha=0.5, ignore_index=255), y),
        (segfast.FusedLoss(ws=0.2, wp=0.8, ignore_index=255),
         lambda: SF.fused_loss(x, y, ws=0.2, wp=0.8, ignore_index=255), y),
        (segfast.DiceCELoss(lambda_ce=0.5, ignore_index=255),
         lambda: SF.dice_ce_loss(x, y, lambda_ce=0.5, ignore_index=255), y),
        (segfast.DiceFocalLoss(ignore_index=255), lambda: SF.dice_focal_loss(x, y, ignore_index=255), y),
        (segfast.DiceFusedLoss(ignore_index=255), lambda: SF.dice_fused_loss(x, y, ignore_index=255), y),
    ]
    for module, fn, target in cases:
        torch.testing.assert_close(module(x, target), fn())
    assert "weight" in dict(cases[0][0].named_buffers())


# ---------------------------------------------------------------- Dice + CE in two passes

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def _computes_in(backend, dtype, *_):
    return not (backend == "triton" and dtype == torch.float64)


@pytest.mark.parametrize("backend,dtype,C,weighted,smoothing,ignore,batch", pairwise(
    BACKENDS, DTYPES, [(4, False, 0.0, None, False), (21, True, 0.1, 255, True), (40, True, 0.0, 3, False),
                       (2, False, 0.3, None, True)], valid=_computes_in))
def test_dice_ce_two_pass_matches_torch(backend, dtype, C, weighted, smoothing, ignore, batch):
    """The CE sums ride in the Dice kernels: loss and gradient equal Dice (float64
    reference) + torch's cross_entropy, with grad_output != 1 and a non-contiguous input."""
    if dtype == torch.float64 and backend == "triton":
        pytest.skip("triton computes in float32")
    h, w = _shape(backend)
    x = (3 * torch.randn(2, h, w, C, dtype=torch.float64)).permute(0, 3, 1, 2).to(dtype)
    y = _labels(2, C, (h, w), ignore)
    wt = torch.rand(C, dtype=torch.float64) + 0.2 if weighted else None
    go = torch.tensor(0.7)
    loss, g = _run(lambda z: SF.dice_ce_loss(z, y, ce_weight=wt, label_smoothing=smoothing, ignore_index=ignore,
                                             batch=batch, lambda_ce=1.5, backend=backend), x, go)

    def expect(z):
        d = SF.dice_loss(z, y, ignore_index=ignore, batch=batch, backend="torch")
        c = F.cross_entropy(z, y, weight=wt, label_smoothing=smoothing, ignore_index=-100 if ignore is None else ignore)
        return d + 1.5 * c
    want, gw = _run(expect, x.double(), go)
    _assert_close(loss, want, dtype)
    _assert_close(g, gw.to(dtype), dtype)
    assert g.dtype == dtype


TWO_PASS = {  # name -> (segfast's sum, the same sum from the separate float64 references)
    "focal": (lambda z, y, ign, be, **kw: SF.dice_focal_loss(z, y, ignore_index=ign, backend=be, **kw),
              lambda z, y, ign, **kw: SF.dice_loss(z, y, ignore_index=ign, backend="torch")
              + kw.get("lambda_focal", 1.0) * SF.focal_loss(z, y, mode="multiclass", ignore_index=ign, backend="torch",
                                                            alpha=kw.get("alpha"), gamma=kw.get("gamma", 2.0))),
    "fused": (lambda z, y, ign, be, **kw: SF.dice_fused_loss(z, y, ignore_index=ign, backend=be, **kw),
              lambda z, y, ign, **kw: SF.dice_loss(z, y, ignore_index=ign, backend="torch")
              + kw.get("lambda_fused", 1.0) * SF.fused_loss(z, y, ignore_index=ign, backend="torch",
                                                            ws=kw.get("ws", 0.5), wp=kw.get("wp", 0.5))),
}
TWO_PASS_KW = {"focal": [dict(), dict(gamma=0.0), dict(gamma=0.5, alpha=0.3), dict(gamma=3.0, lambda_focal=0.4)],
               "fused": [dict(), dict(ws=0.2, wp=1.3, lambda_fused=2.0)]}


@pytest.mark.parametrize("backend,dtype,name,kw,C,ignore", pairwise(
    BACKENDS, DTYPES, [(n, kw) for n, kws in TWO_PASS_KW.items() for kw in kws], [(4, None), (21, 255), (40, 0)],
    valid=_computes_in))
def test_dice_focal_fused_two_pass(backend, dtype, name, kw, C, ignore):
    """Dice + focal (softmax form) and Dice + fused from the two region passes
    equal the sum of the float64 references of the separate terms."""
    if dtype == torch.float64 and backend == "triton":
        pytest.skip("triton computes in float32")
    h, w = _shape(backend)
    x = (3 * torch.randn(2, h, w, C, dtype=torch.float64)).permute(0, 3, 1, 2)
    # a few pixels sure of the background: fused's foreground exps underflow (for
    # focal with gamma < 1 torch's autograd of (1 - p)^gamma is NaN at p = 1: less sure)
    x[0, 0, 0, :2] = 120.0 if name == "fused" else 25.0
    x = x.to(dtype)
    y = _labels(2, C, (h, w), ignore if ignore is not None and ignore >= C else None)
    if ignore is not None and ignore < C:  # ignore a real class (0: the fused loss's background)
        y[1, 0] = ignore
    y[0, 0, :2] = torch.tensor([0, 1])  # background and foreground among the sure pixels
    mine, ref_sum = TWO_PASS[name]
    go = torch.tensor(1.7)
    loss, g = _run(lambda z: mine(z, y, ignore, backend, **kw), x, go)
    want, gw = _run(lambda z: ref_sum(z, y, ignore, **kw), x.double(), go)
    _assert_close(loss, want, dtype)
    _assert_close(g, gw.to(dtype), dtype)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cpu", "torch")])
@pytest.mark.parametrize("name", ["focal", "fused"])
def test_dice_focal_fused_gradcheck_float64(backend, name):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = _labels(2, 3, (4, 5), 255)
    kw = dict(gamma=1.5, alpha=[0.2, 0.5, 1.0]) if name == "focal" else dict(ws=0.3, wp=0.9)
    assert torch.autograd.gradcheck(lambda z: TWO_PASS[name][0](z, y, 255, backend, **kw), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dice_ce_is_two_passes(backend, monkeypatch):
    """No pixel-loss kernel runs: the stats kernel carries the pixel term's sums."""
    def boom(*a, **k):
        raise AssertionError("a Dice + pixel loss ran the pixel kernel")
    monkeypatch.setattr(P, "pixel_loss_op", boom, raising=False)
    for fn in ("cross_entropy", "focal_loss", "fused_loss"):  # as ops/region_pixel.py calls them
        monkeypatch.setattr(RP, fn, boom)
    monkeypatch.setattr(P, "_pixel_reduce", boom)
    h, w = _shape(backend)
    y = _labels(2, 5, (h, w), 255)
    for loss in (SF.dice_ce_loss, SF.dice_focal_loss, SF.dice_fused_loss):
        x = torch.randn(2, 5, h, w, requires_grad=True)
        loss(x, y, ignore_index=255, backend=backend).backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cpu", "torch")])
def test_dice_ce_gradcheck_float64(backend):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = _labels(2, 3, (4, 5), 255)
    w = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda z: SF.dice_ce_loss(z, y, ce_weight=w, label_smoothing=0.1, ignore_index=255, backend=backend), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dice_ce_all_ignored_is_finite(backend):
    y = torch.full((2, 4, 5), 255)
    for loss in (SF.dice_ce_loss, SF.dice_focal_loss, SF.dice_fused_loss):
        x = torch.randn(2, 3, 4, 5, requires_grad=True)
        out = loss(x, y, ignore_index=255, backend=backend)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("xent,gamma", [(1, 0.0), (2, 2.0), (2, 0.7), (3, 0.0)])
def test_region_stats_xent_sums(backend, xent, gamma):
    """The pixel-term sums of every backend against the float64 reference."""
    from segfast.ops import region as R
    from segfast.reference import region as rref

    h, w = _shape(backend)
    x = 2 * torch.randn(3, 6, h * w)
    y = _labels(3, 6, (h * w,), 255)
    got = R.plane_stats(x, y, True, R.ACT["softmax"], 0, 255, backend, xent=xent, gamma=gamma)
    want = rref.region_stats(x.double(), y, True, R.ACT["softmax"], 0, 255, xent=xent, gamma=gamma)
    assert got.shape == (3, 6, 9)
    _assert_close(got, want)
    with pytest.raises(ValueError, match="class-index"):
        R.plane_stats(x, torch.rand(3, 6, h * w), False, R.ACT["softmax"], 0, None, backend, xent=xent)
    with pytest.raises(ValueError, match="pixel term"):
        R.plane_stats(x, y, True, R.ACT["softmax"], 0, None, backend, xent=7)
