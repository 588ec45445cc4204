"""Lovász hinge and Lovász-softmax: the batched ops against the per-segment,
per-class loop reference (segfast/reference/lovasz.py, float64) and against
segmentation_models_pytorch's LovaszLoss (through segfast.compat.smp)."""

from __future__ import annotations

import pytest
import torch

import segfast
from segfast import backends
from segfast.compat import smp as compat_smp
from segfast.ops import lovasz as ops
from segfast.reference import lovasz as ref

from conftest import tol


def grads(fn, x, *args, go=None, **kw):
    x = x.detach().clone().requires_grad_(True)
    loss = fn(x, *args, **kw)
    loss.backward(torch.ones_like(loss) if go is None else go)
    return loss.detach(), x.grad


def close(got, want, dtype=torch.float64):
    torch.testing.assert_close(got.to(torch.float64).cpu(), want.to(torch.float64).cpu(), **tol(dtype))


def labels(N, C, spatial, ignore=None, frac=0.2, device="cpu"):
    y = torch.randint(0, C, (N, *spatial))
    if ignore is not None:
        y[torch.rand(y.shape) < frac] = ignore
    return y.to(device)


SHAPES = [(2, 3, (5, 7)), (3, 4, (3, 4, 5)), (1, 5, (13,)), (4, 2, (6, 1))]


# ------------------------------------------------------------------ softmax vs reference


@pytest.mark.parametrize("N,C,spatial", SHAPES)
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("classes", ["present", "all", [2, 0, 0]])
def test_softmax_vs_reference(N, C, spatial, per_image, ignore, classes):
    if not isinstance(classes, str) and max(classes) >= C:
        classes = [C - 1, 0, 0]
    x = torch.randn(N, C, *spatial, dtype=torch.float64) * 2
    y = labels(N, C, spatial, ignore)
    kw = dict(classes=classes, per_image=per_image, ignore_index=ignore)
    got, gx = grads(segfast.lovasz_softmax_loss, x, y, **kw)
    want, wx = grads(ref.lovasz_softmax, x, y, **kw)
    close(got, want)
    close(gx, wx)


def test_softmax_from_probabilities_and_reduction_none():
    x = torch.randn(3, 4, 6, 5, dtype=torch.float64)
    p = torch.softmax(x, 1)
    y = labels(3, 4, (6, 5))
    go = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    got, gx = grads(segfast.lovasz_softmax_loss, p, y, per_image=True, from_logits=False, reduction="none", go=go)
    want, wx = grads(ref.lovasz_softmax, p, y, per_image=True, from_logits=False, reduction="none", go=go)
    assert got.shape == (3,)
    close(got, want)
    close(gx, wx)
    s = segfast.lovasz_softmax_loss(x, y, per_image=True, reduction="sum")
    close(s, ref.lovasz_softmax(x, y, per_image=True, reduction="sum"))


def test_softmax_grad_output_not_one():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    y = labels(2, 3, (5, 4), 255)
    go = torch.tensor(-2.5, dtype=torch.float64)
    _, gx = grads(segfast.lovasz_softmax_loss, x, y, ignore_index=255, go=go)
    _, wx = grads(ref.lovasz_softmax, x, y, ignore_index=255, go=go)
    close(gx, wx)


def test_softmax_empty_classes_and_ignored_images():
    C = 5
    x = torch.randn(3, C, 4, 6, dtype=torch.float64)
    y = torch.randint(0, 2, (3, 4, 6))  # classes 2..4 absent everywhere
    y[1] = 255  # an image with every pixel ignored
    y[2, :2] = 255
    for per_image in (True, False):
        for classes in ("present", "all", [3, 4], [0, 4]):
            kw = dict(classes=classes, per_image=per_image, ignore_index=255)
            got, gx = grads(segfast.lovasz_softmax_loss, x, y, **kw)
            want, wx = grads(ref.lovasz_softmax, x, y, **kw)
            close(got, want)
            close(gx, wx)
            assert torch.all(gx[1] == 0)
    # the whole batch ignored: 0, zero gradient
    y_all = torch.full_like(y, 255)
    for per_image in (True, False):
        got, gx = grads(segfast.lovasz_softmax_loss, x, y_all, per_image=per_image, ignore_index=255)
        assert got.item() == 0 and torch.all(gx == 0)


def test_softmax_ties_value_matches():
    """The Lovász extension does not depend on how ties are broken."""
    x = torch.randint(-2, 3, (2, 3, 8, 8)).double()
    y = labels(2, 3, (8, 8))
    for per_image in (True, False):
        close(segfast.lovasz_softmax_loss(x, y, per_image=per_image),
              ref.lovasz_softmax(x, y, per_image=per_image))


# ------------------------------------------------------------------ hinge vs reference


def _dense_from_labels(y, C, ignore):
    """Class-index targets as the dense float targets the reference takes."""
    if C == 1:
        t = (y == 1).double().unsqueeze(1)
    else:
        t = torch.nn.functional.one_hot(y.clamp(0, C - 1), C).movedim(-1, 1).double()
    if ignore is not None:
        t = torch.where((y == ignore).unsqueeze(1), float(ignore), t)
    return t


@pytest.mark.parametrize("N,C,spatial", SHAPES + [(3, 1, (5, 6)), (2, 1, (7,))])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("target_kind", ["labels", "float", "bool"])
def test_hinge_vs_reference(N, C, spatial, per_image, ignore, target_kind):
    x = torch.randn(N, C, *spatial, dtype=torch.float64) * 2
    if target_kind == "labels":
        y = torch.randint(0, 2 if C == 1 else C, (N, *spatial))
        if ignore is not None:
            y[torch.rand(y.shape) < 0.2] = ignore
        t = _dense_from_labels(y, C, ignore)
    else:
        t = (torch.rand(N, C, *spatial) > 0.6).double()
        if ignore is not None and target_kind == "float":
            t[torch.rand(t.shape) < 0.2] = ignore
        y = t.bool() if target_kind == "bool" else t
    ign = ignore if target_kind != "bool" else None
    got, gx = grads(segfast.lovasz_hinge_loss, x, y, per_image=per_image, ignore_index=ign)
    want, wx = grads(ref.lovasz_hinge, x, t, per_image=per_image, ignore_index=ign)
    close(got, want)
    close(gx, wx)


def test_hinge_soft_targets_reduction_and_grad_output():
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    t = torch.rand(3, 2, 5, 5, dtype=torch.float64)
    go = torch.tensor([1.5, -0.5, 2.0], dtype=torch.float64)
    got, gx = grads(segfast.lovasz_hinge_loss, x, t, reduction="none", go=go)
    want, wx = grads(ref.lovasz_hinge, x, t, reduction="none", go=go)
    assert got.shape == (3,)
    close(got, want)
    close(gx, wx)
    close(segfast.lovasz_hinge_loss(x, t, reduction="sum"), ref.lovasz_hinge(x, t, reduction="sum"))


def test_hinge_all_ignored_and_ties():
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 2, (3, 4, 4))
    y[0] = 255
    for per_image in (True, False):
        got, gx = grads(segfast.lovasz_hinge_loss, x, y, per_image=per_image, ignore_index=255)
        want, wx = grads(ref.lovasz_hinge, x, _dense_from_labels(y, 1, 255), per_image=per_image, ignore_index=255)
        close(got, want)
        close(gx, wx)
        assert torch.all(gx[0] == 0)
    got, gx = grads(segfast.lovasz_hinge_loss, x, torch.full_like(y, 255), ignore_index=255)
    assert got.item() == 0 and torch.all(gx == 0)
    xt = torch.randint(-2, 3, (2, 3, 6, 6)).double()  # many ties, some errors exactly 0
    tt = (torch.rand(2, 3, 6, 6) > 0.5).double()
    for per_image in (True, False):
        close(segfast.lovasz_hinge_loss(xt, tt, per_image=per_image),
              ref.lovasz_hinge(xt, tt, per_image=per_image))


# ------------------------------------------------------------------ layouts, dtypes, gradcheck


def test_noncontiguous_and_low_precision():
    x = torch.randn(2, 6, 7, 3).permute(0, 3, 1, 2)  # channels_last-like [2, 3, 6, 7]
    y = labels(2, 3, (6, 7), 255)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        got, gx = grads(segfast.lovasz_softmax_loss, xd, y, per_image=True, ignore_index=255)
        want, wx = grads(ref.lovasz_softmax, xd, y, per_image=True, ignore_index=255)
        assert got.dtype == torch.float32 and gx.dtype == dtype
        # the float64 reference of the same (rounded) logits; sort order may differ only on near-ties
        close(got, want, dtype)
        close(gx, wx, dtype)
    t = (torch.rand(2, 6, 7, 3) > 0.5).permute(0, 3, 1, 2)
    close(segfast.lovasz_hinge_loss(x, t), ref.lovasz_hinge(x, t.double()), torch.float32)


def test_gradcheck():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = labels(2, 3, (4, 5), 255)
    for per_image in (True, False):
        assert torch.autograd.gradcheck(
            lambda a: segfast.lovasz_softmax_loss(a, y, per_image=per_image, ignore_index=255), (x,))
        assert torch.autograd.gradcheck(
            lambda a: segfast.lovasz_softmax_loss(a, y, classes="all", per_image=per_image,
                                               ignore_index=255, reduction="none"), (x,))
    t = (torch.rand(2, 3, 4, 5) > 0.5).double()
    for per_image in (True, False):
        assert torch.autograd.gradcheck(lambda a: segfast.lovasz_hinge_loss(a, t, per_image=per_image), (x,))


def test_modules():
    x = torch.randn(2, 3, 5, 5)
    y = labels(2, 3, (5, 5))
    m = segfast.LovaszSoftmaxLoss(per_image=True, classes="all")
    close(m(x, y), ref.lovasz_softmax(x, y, per_image=True, classes="all"), torch.float32)
    t = (torch.rand(2, 3, 5, 5) > 0.5).float()
    m = segfast.LovaszHingeLoss(per_image=False)
    close(m(x, t), ref.lovasz_hinge(x, t, per_image=False), torch.float32)
    assert "per_image=False" in repr(m)


# ------------------------------------------------------------------ smp parity


@pytest.mark.parametrize("mode", ["binary", "multilabel", "multiclass"])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("ignore", [None, 255])
def test_smp_parity(smp_losses, mode, per_image, ignore):
    N, H, W = 3, 9, 11
    if mode == "multiclass":
        C = 4
        y = labels(N, C, (H, W), ignore)
    elif mode == "binary":
        C = 1
        y = torch.randint(0, 2, (N, H, W))
        if ignore is not None:
            y[torch.rand(y.shape) < 0.2] = ignore
    else:
        C = 3
        y = (torch.rand(N, C, H, W) > 0.5).long()
        if ignore is not None:
            y[torch.rand(y.shape) < 0.2] = ignore
    x = torch.randn(N, C, H, W) * 2
    ours = compat_smp.LovaszLoss(mode, per_image=per_image, ignore_index=ignore)
    theirs = smp_losses.LovaszLoss(mode, per_image=per_image, ignore_index=ignore)
    got, gx = grads(ours, x, y)
    want, wx = grads(theirs, x, y)
    close(got, want, torch.float32)
    close(gx, wx, torch.float32)


def test_smp_parity_bench_shape_and_absent_classes(smp_losses):
    x = torch.randn(2, 6, 16, 16)
    y = torch.randint(0, 3, (2, 16, 16))  # classes 3..5 absent
    y[1, :4] = 255
    for per_image in (True, False):
        got, gx = grads(compat_smp.LovaszLoss("multiclass", per_image=per_image, ignore_index=255), x, y)
        want, wx = grads(smp_losses.LovaszLoss("multiclass", per_image=per_image, ignore_index=255), x, y)
        close(got, want, torch.float32)
        close(gx, wx, torch.float32)
    xb, yb = torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 1, 8, 8))  # smp fails on bool
    close(compat_smp.LovaszLoss("binary")(xb, yb), smp_losses.LovaszLoss("binary")(xb, yb), torch.float32)


# ------------------------------------------------------------------ errors


def test_bad_inputs(monkeypatch):
    x = torch.randn(2, 3, 4, 4)
    y = labels(2, 3, (4, 4))
    with pytest.raises(TypeError, match="class-index"):
        segfast.lovasz_softmax_loss(x, torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="outside"):
        segfast.lovasz_softmax_loss(x, y + 3)
    with pytest.raises(ValueError, match="C >= 2"):
        segfast.lovasz_softmax_loss(x[:, :1], y.clamp_max(0))
    with pytest.raises(ValueError, match="classes"):
        segfast.lovasz_softmax_loss(x, y, classes="some")
    with pytest.raises(ValueError, match="classes"):
        segfast.lovasz_softmax_loss(x, y, classes=[0, 3])
    with pytest.raises(ValueError, match="classes"):
        segfast.lovasz_softmax_loss(x, y, classes=[])
    with pytest.raises(ValueError, match="reduction"):
        segfast.lovasz_hinge_loss(x, y, reduction="max")
    with pytest.raises(ValueError, match="shape"):
        segfast.lovasz_hinge_loss(x, torch.rand(2, 3, 4, 5))
    with pytest.raises(ValueError, match="outside"):
        segfast.lovasz_hinge_loss(x[:, :1], y)  # binary labels must be {0, 1}
    # (N, C) scores without spatial dims are one pixel per image (smp accepts them too)
    x2, t2 = torch.randn(2, 3), (torch.rand(2, 3) > 0.5).float()
    torch.testing.assert_close(segfast.lovasz_hinge_loss(x2, t2),
                               segfast.lovasz_hinge_loss(x2[..., None], t2[..., None]))
    with pytest.raises(TypeError):
        segfast.lovasz_hinge_loss(x.long(), y)
    with pytest.raises(RuntimeError, match="not available|unknown"):
        segfast.lovasz_softmax_loss(x, y, backend="nope")
    monkeypatch.setattr(backends, "_C_emu", None)  # the cuda backend as without segfast._C_emu
    with pytest.raises(RuntimeError, match="not available"):
        segfast.lovasz_softmax_loss(x, y, backend="cuda")  # CPU tensors
    assert ops.choose_backend(None, x.device) == backends.default_backend(x.device)
    segfast.lovasz_softmax_loss(x, y, backend="torch")
    with pytest.raises(ValueError, match="mode"):
        compat_smp.LovaszLoss("softmax")
    with pytest.raises(TypeError, match="class indices"):
        compat_smp.LovaszLoss("multiclass")(x, torch.rand(2, 4, 4))


# ------------------------------------------------------------------ the sort + weights step


def _weights_loop(errors, fg, valid):
    """Dense Lovász weights row by row: sort, lovasz_grad, scatter back (float64)."""
    out = torch.zeros(errors.shape, dtype=torch.float64)
    for g in range(errors.shape[0]):
        keep = valid[g].nonzero().squeeze(1)
        if keep.numel() == 0:
            continue
        order = torch.sort(errors[g, keep].double(), descending=True).indices
        out[g, keep[order]] = ref.lovasz_grad(fg[g, keep[order]].double())
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spread", ["separated", "mixed"])  # few candidates (compacted) / most (whole rows)
@pytest.mark.parametrize("soft", [False, True])
def test_sort_weights_paths(dtype, spread, soft):
    G, L = 7, 300
    fgb = torch.rand(G, L) < 0.3
    fgb[2] = False  # a row without foreground
    fg = torch.where(fgb, torch.rand(G, L) * 0.9 + 0.1, 0.0).to(dtype) if soft else fgb
    if spread == "separated":
        errors = torch.where(fgb, 0.6 + 0.4 * torch.rand(G, L), 0.7 * torch.rand(G, L))
    else:
        errors = torch.rand(G, L)
    errors = errors.to(dtype)
    valid = torch.rand(G, L) > 0.1
    valid[4] = False  # a fully ignored row
    for v in (None, valid):
        got = ops.lovasz_sort_weights(errors, fg, v)
        want = _weights_loop(errors, fg, torch.ones_like(valid) if v is None else v)
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        close(got, want, torch.float32)
        # the loss of each row: Σ e·w
        close((errors.double() * got.double()).sum(1), (errors.double() * want).sum(1), dtype)


def test_confident_logits_vs_reference():
    """Trained-network-like logits: most pixels are candidates (whole-row sort)."""
    y = labels(2, 4, (16, 16), 255)
    x = 8 * torch.nn.functional.one_hot(y.clamp_max(3), 4).movedim(-1, 1).double() + torch.randn(2, 4, 16, 16)
    for per_image in (True, False):
        got, gx = grads(segfast.lovasz_softmax_loss, x, y, per_image=per_image, ignore_index=255)
        want, wx = grads(ref.lovasz_softmax, x, y, per_image=per_image, ignore_index=255)
        close(got, want)
        close(gx, wx)


def test_env_backend_applies(monkeypatch):
    """SEGFAST_BACKEND picks the Lovász backend like every other family's."""
    x = torch.randn(2, 3, 4, 4)
    y = labels(2, 3, (4, 4))
    t = (torch.rand(2, 3, 4, 4) > 0.5)
    for b in ["torch"] + [k for k in ("cpu",) if backends.unavailable_reason(k, x.device) is None]:
        monkeypatch.setenv("SEGFAST_BACKEND", b)
        assert ops.choose_backend(None, x.device) == b
        close(segfast.lovasz_softmax_loss(x, y), ref.lovasz_softmax(x, y), torch.float32)
        close(compat_smp.LovaszLoss("multilabel")(x, t), ref.lovasz_hinge(x, t.double(), per_image=False),
              torch.float32)
    monkeypatch.setenv("SEGFAST_BACKEND", "nope")
    with pytest.raises(RuntimeError, match="unknown"):
        segfast.lovasz_softmax_loss(x, y)


def test_sort_weights_op_and_compile_fullgraph():
    """The sort + weights step is a torch.library op (fake impl, no autograd):
    opcheck passes and the losses compile with fullgraph=True."""
    from segfast.ops import lovasz as L

    torch.library.opcheck(L.lovasz_sort_weights_op, (torch.rand(3, 20), torch.rand(3, 20) > 0.5, None, "cpu"))
    torch.library.opcheck(L.lovasz_sort_weights_op,
                          (torch.rand(2, 9, dtype=torch.float64), torch.rand(2, 9), torch.rand(2, 9) > 0.2, "cpu"))
    torch._dynamo.reset()
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    y = torch.randint(0, 4, (2, 9, 7))
    yb = (torch.rand(2, 1, 9, 7) > 0.5).long()
    assert_compiles_alike(x, (lambda x: segfast.lovasz_softmax_loss(x, y, classes="all", per_image=True),
                              lambda x: segfast.lovasz_softmax_loss(x, y),
                              lambda x: segfast.lovasz_hinge_loss(x[:, :1], yb)))


def assert_compiles_alike(x, fns):
    """Each loss fn(x) compiled with fullgraph=True gives the eager loss and gradient."""
    for fn in fns:
        got = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
        want = fn(x)
        (g1,) = torch.autograd.grad(got, x)
        (g2,) = torch.autograd.grad(want, x)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(g1, g2)
