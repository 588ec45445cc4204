"""Boxes family: IoU / GIoU / DIoU / CIoU (pairwise and aligned), the box losses and
the IoU-balanced losses, every backend against the eager reference
(segfast/reference/boxes.py), hand-computed values, torchvision's formulas
transcribed independently, gradcheck, opcheck, torch.compile, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import segfast
from conftest import kernel_backends, tol
from segfast.ops import boxes as ob
from segfast.reference import boxes as ref

KINDS = ("iou", "giou", "diou", "ciou")
FMTS = ("xyxy", "xywh", "cxcywh")
def _on_device(fn):
    """fn with backend="cuda" run on CUDA copies of the (CPU) inputs, the result
    copied back: autograd carries the gradients to the CPU leaves."""
    def call(a, b, *, backend=None, **kw):
        if backend != "cuda" or not torch.cuda.is_available():  # (CPU: segfast._C_emu)
            return fn(a, b, backend=backend, **kw)
        return fn(a.cuda(), b.cuda(), backend=backend, **kw).cpu()
    return call


PAIRWISE = {k: _on_device(f) for k, f in (("iou", segfast.box_iou), ("giou", segfast.generalized_box_iou),
                                          ("diou", segfast.distance_box_iou), ("ciou", segfast.complete_box_iou))}
ALIGNED = {k: _on_device(f) for k, f in (("iou", segfast.box_iou_aligned),
                                         ("giou", segfast.generalized_box_iou_aligned),
                                         ("diou", segfast.distance_box_iou_aligned),
                                         ("ciou", segfast.complete_box_iou_aligned))}
LOSSES = {k: _on_device(f) for k, f in (("iou", segfast.iou_loss), ("giou", segfast.giou_loss),
                                        ("diou", segfast.diou_loss), ("ciou", segfast.ciou_loss))}
# kernel backends on CPU tensors, and the cuda backend where a GPU is visible
# (triton: tests/test_triton_boxes.py)
BACKENDS = [b for b in kernel_backends() if b != "triton"] + [b for b in kernel_backends("cuda") if b == "cuda"] \
    if torch.cuda.is_available() else [b for b in kernel_backends() if b != "triton"]
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def from_xyxy(b: torch.Tensor, fmt: str) -> torch.Tensor:
    xy, wh = b[..., :2], b[..., 2:] - b[..., :2]
    if fmt == "xywh":
        return torch.cat([xy, wh], -1)
    if fmt == "cxcywh":
        return torch.cat([xy + 0.5 * wh, wh], -1)
    return b


def make_boxes(*shape, degenerate=True, gen=None):
    """xyxy boxes on a 1/8 grid (exact in every format), float64: random overlapping
    and far-apart ones, and (``degenerate``) zero-width, zero-height, point, and
    identical/edge-touching boxes."""
    xy = torch.randint(0, 96, (*shape, 2), generator=gen).double() / 8
    wh = torch.randint(1, 64, (*shape, 2), generator=gen).double() / 8
    b = torch.cat([xy, xy + wh], -1)
    if degenerate and shape[-1] >= 6:
        b[..., 0, 2] = b[..., 0, 0]  # zero width
        b[..., 1, 3] = b[..., 1, 1]  # zero height
        b[..., 2, 2:] = b[..., 2, :2]  # a point
        b[..., 3, :] = b[..., 4, :]  # identical boxes (aligned: across sets via the same seed)
        b[..., 5, :] = b[..., 5, :] + 100  # far from everything
    return b


def pair(shape1, shape2, fmt, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    b1, b2 = make_boxes(*shape1, gen=g), make_boxes(*shape2, gen=g)
    if shape1 == shape2:  # aligned: some identical and edge-touching pairs
        b2[..., 3, :] = b1[..., 3, :]
        b2[..., 6:7, :] = b1[..., 6:7, :] + torch.tensor([1.0, 0, 1, 0]) * (b1[..., 6:7, 2:3] - b1[..., 6:7, 0:1])
    return from_xyxy(b1, fmt).to(dtype), from_xyxy(b2, fmt).to(dtype)


def grads(fn, b1, b2, go_seed=1):
    x1, x2 = b1.clone().requires_grad_(True), b2.clone().requires_grad_(True)
    out = fn(x1, x2)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(go_seed), dtype=torch.float64)
    g = g.to(out.dtype) if out.dim() else torch.tensor(1.7, dtype=out.dtype)  # grad_output != 1
    out.backward(g)
    return out.detach(), x1.grad, x2.grad


def check(got, want, dtype, what):
    rtol, atol = tol(dtype).values()
    scale = max(want.abs().max().item(), 1.0) if want.numel() else 1.0
    assert got.dtype == want.dtype, what
    assert torch.isfinite(got).all(), f"{what}: non-finite"
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol * scale, msg=lambda m: f"{what}: {m}")


# ------------------------------------------------------------------ parity with the reference


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("kind", KINDS)
def test_pairwise_matches_reference(kind, fmt, dtype, backend):
    for s1, s2 in (((2, 3, 9), (2, 3, 7)), ((11,), (8,))):  # batched and unbatched
        b1, b2 = pair(s1, s2, fmt, dtype)
        fn = PAIRWISE[kind]
        got = grads(lambda a, b: fn(a, b, fmt=fmt, backend=backend), b1, b2)
        want = grads(lambda a, b: fn(a, b, fmt=fmt, backend="torch"), b1, b2)  # same dtype: same rounding
        assert got[0].shape == (*s1, s2[-1])
        for name, g, w in zip(("value", "grad1", "grad2"), got, want):
            check(g, w, dtype, f"{kind} {fmt} {name}")
        if dtype == torch.float32:  # and the float64 reference
            w64 = fn(b1.double(), b2.double(), fmt=fmt, backend="torch")
            check(got[0].double(), w64, torch.float32, f"{kind} {fmt} value vs float64")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_aligned_matches_reference(kind, dtype, backend):
    for fmt in FMTS:
        for shape in ((3, 10), (13,)):
            b1, b2 = pair(shape, shape, fmt, dtype, seed=2)
            fn = ALIGNED[kind]
            got = grads(lambda a, b: fn(a, b, fmt=fmt, backend=backend), b1, b2)
            want = grads(lambda a, b: fn(a, b, fmt=fmt, backend="torch"), b1, b2)
            assert got[0].shape == shape
            for name, g, w in zip(("value", "grad1", "grad2"), got, want):
                check(g, w, dtype, f"{kind} {fmt} {name}")
            # aligned == the diagonal of pairwise
            diag = PAIRWISE[kind](b1[..., :, None, :], b2[..., :, None, :], fmt=fmt, backend="torch")
            check(got[0], diag[..., 0, 0], dtype, "aligned vs pairwise diagonal")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ("none", "mean", "sum"))
@pytest.mark.parametrize("kind", KINDS)
def test_losses_match_reference(kind, reduction, dtype, backend):
    fn = LOSSES[kind]
    for fmt in FMTS:
        b1, b2 = pair((4, 11), (4, 11), fmt, dtype, seed=3)
        got = grads(lambda a, b: fn(a, b, reduction=reduction, fmt=fmt, backend=backend), b1, b2)
        want = grads(lambda a, b: fn(a, b, reduction=reduction, fmt=fmt, backend="torch"), b1, b2)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        assert got[0].dtype == acc and got[0].shape == ((4, 11) if reduction == "none" else ())
        for name, g, w in zip(("loss", "grad1", "grad2"), got, want):
            check(g, w, dtype if name != "loss" else acc, f"{kind} {reduction} {fmt} {name}")


def test_only_needed_gradients():
    b1, b2 = pair((9,), (9,), "xyxy", torch.float32)
    x1 = b1.clone().requires_grad_(True)
    segfast.ciou_loss(x1, b2, reduction="mean", backend="cpu").backward()
    assert x1.grad is not None and b2.grad is None
    x2 = b2.clone().requires_grad_(True)
    segfast.complete_box_iou(b1, x2, backend="cpu").sum().backward()
    want = grads(lambda a, b: segfast.complete_box_iou(a, b, backend="torch").sum(), b1, b2)[2]  # grad_output 1.7
    torch.testing.assert_close(x2.grad * 1.7, want)


def test_non_contiguous():
    g = torch.Generator().manual_seed(5)
    b1 = make_boxes(2, 12, gen=g).float().transpose(0, 1).contiguous().transpose(0, 1)  # [2, 12, 4] strided
    b2 = make_boxes(2, 16, gen=g).float()[:, ::2]
    assert not b1.is_contiguous() and not b2.is_contiguous()
    for kind in KINDS:
        for backend in BACKENDS:
            got = grads(lambda a, b: PAIRWISE[kind](a, b, backend=backend), b1, b2)
            want = grads(lambda a, b: PAIRWISE[kind](a, b, backend="torch"), b1, b2)
            for g_, w in zip(got, want):
                check(g_, w, torch.float32, f"{kind} non-contiguous")
            a1, a2 = b1[:, :8], b2
            got = grads(lambda a, b: LOSSES[kind](a, b, reduction="sum", backend=backend), a1, a2)
            want = grads(lambda a, b: LOSSES[kind](a, b, reduction="sum", backend="torch"), a1, a2)
            for g_, w in zip(got, want):
                check(g_, w, torch.float32, f"{kind} loss non-contiguous")


def test_mixed_dtypes_promote():
    b1, b2 = pair((7,), (5,), "xyxy", torch.float32)
    x1 = b1.half().requires_grad_(True)
    out = segfast.box_iou(x1, b2)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert x1.grad.dtype == torch.float16


# ------------------------------------------------------------------ hand-computed values


def test_hand_computed():
    a = torch.tensor([[0.0, 0, 2, 2]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1, 3, 3]], dtype=torch.float64)
    e = 1e-7
    iou = 1 / 7
    want = {"iou": iou, "giou": iou - 2 / 9, "diou": iou - 2 / (18 + e), "ciou": iou - 2 / (18 + e)}
    c = torch.tensor([[0.0, 0, 4, 2]], dtype=torch.float64)  # vs a: different aspect ratios
    v = 4 / math.pi ** 2 * (math.atan(1.0) - math.atan(2.0)) ** 2
    want_c = {"iou": 0.5, "giou": 0.5, "diou": 0.5 - 1 / (20 + e), "ciou": 0.5 - 1 / (20 + e) - v / (0.5 + v + e) * v}
    for backend in BACKENDS + ["torch"]:
        for k in KINDS:
            assert PAIRWISE[k](a, b, backend=backend).item() == pytest.approx(want[k], rel=1e-12)
            assert ALIGNED[k](c, a, backend=backend).item() == pytest.approx(want_c[k], rel=1e-12)
            # the loss: eps on the union
            lv = LOSSES[k](a, b, backend=backend).item()
            wl = 1 - (1 / (7 + e) if k == "iou" else {"giou": 1 / (7 + e) - 2 / (9 + e),
                                                      "diou": 1 / (7 + e) - 2 / (18 + e),
                                                      "ciou": 1 / (7 + e) - 2 / (18 + e)}[k])
            assert lv == pytest.approx(wl, rel=1e-12)
            # the same boxes in the other formats
            for fmt in ("xywh", "cxcywh"):
                assert PAIRWISE[k](from_xyxy(a, fmt), from_xyxy(b, fmt), fmt=fmt,
                                   backend=backend).item() == pytest.approx(want[k], rel=1e-12)


def test_degenerate_boxes_are_finite():
    z = torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 2], [0, 0, 3, 0], [0, 0, 0, 0]])
    for backend in BACKENDS + ["torch"]:
        for k in KINDS:
            x1, x2 = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
            out = PAIRWISE[k](x1, x2, backend=backend)
            out.sum().backward()
            assert torch.isfinite(out).all() and torch.isfinite(x1.grad).all() and torch.isfinite(x2.grad).all()
            if k == "iou":
                assert (out == 0).all(), out  # union 0 -> IoU 0
            if k == "giou":  # IoU 0 minus (area_c - 0) / area_c: -1, or 0 where area_c is 0 too
                assert (out.diagonal() == 0).all() and ((out == 0) | (out == -1)).all(), out
            lz = LOSSES[k](z, z, reduction="none", backend=backend)
            assert torch.isfinite(lz).all()


def _torchvision_pairwise(b1, b2, kind, eps=1e-7):
    """torchvision's pairwise formulas, transcribed (valid boxes only)."""
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.max(b1[:, None, :2], b2[:, :2])
    rb = torch.min(b1[:, None, 2:], b2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2 - inter
    iou = inter / union
    lti = torch.min(b1[:, None, :2], b2[:, :2])
    rbi = torch.max(b1[:, None, 2:], b2[:, 2:])
    whi = (rbi - lti).clamp(min=0)
    if kind == "iou":
        return iou
    if kind == "giou":
        areai = whi[..., 0] * whi[..., 1]
        return iou - (areai - union) / areai
    diag = whi[..., 0] ** 2 + whi[..., 1] ** 2 + eps
    cx1, cy1 = (b1[:, 0] + b1[:, 2]) / 2, (b1[:, 1] + b1[:, 3]) / 2
    cx2, cy2 = (b2[:, 0] + b2[:, 2]) / 2, (b2[:, 1] + b2[:, 3]) / 2
    diou = iou - ((cx1[:, None] - cx2[None]) ** 2 + (cy1[:, None] - cy2[None]) ** 2) / diag
    if kind == "diou":
        return diou
    w1, h1 = b1[:, None, 2] - b1[:, None, 0], b1[:, None, 3] - b1[:, None, 1]
    w2, h2 = b2[:, 2] - b2[:, 0], b2[:, 3] - b2[:, 1]
    v = (4 / torch.pi ** 2) * torch.pow(torch.atan(w1 / h1) - torch.atan(w2 / h2), 2)
    alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


@pytest.mark.parametrize("kind", KINDS)
def test_torchvision_formulas(kind):
    g = torch.Generator().manual_seed(7)
    b1, b2 = make_boxes(13, degenerate=False, gen=g), make_boxes(9, degenerate=False, gen=g)
    want = _torchvision_pairwise(b1, b2, kind)
    for backend in BACKENDS + ["torch"]:
        torch.testing.assert_close(PAIRWISE[kind](b1, b2, backend=backend), want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ gradcheck, opcheck, compile


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
@pytest.mark.parametrize("kind", ("iou", "giou", "diou"))  # CIoU: alpha is a constant, see below
def test_gradcheck(kind, backend):
    g = torch.Generator().manual_seed(11)
    # continuous random boxes: no ties, so the function is smooth at the test point
    xy = torch.rand(2, 5, 2, generator=g, dtype=torch.float64) * 4
    b1 = torch.cat([xy, xy + 0.5 + torch.rand(2, 5, 2, generator=g, dtype=torch.float64) * 3], -1)
    xy = torch.rand(2, 4, 2, generator=g, dtype=torch.float64) * 4
    b2 = torch.cat([xy, xy + 0.5 + torch.rand(2, 4, 2, generator=g, dtype=torch.float64) * 3], -1)
    for fmt in ("xyxy", "cxcywh"):
        x1, x2 = from_xyxy(b1, fmt).requires_grad_(True), from_xyxy(b2, fmt).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, b: PAIRWISE[kind](a, b, fmt=fmt, backend=backend), (x1, x2))
        y2 = from_xyxy(b2[:, :4].roll(1, 1), fmt).requires_grad_(True)
        x1 = x1[:, :4].detach().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda a, b: ALIGNED[kind](a, b, fmt=fmt, backend=backend), (x1, y2))
        for red in ("none", "mean", "sum"):
            assert torch.autograd.gradcheck(
                lambda a, b: LOSSES[kind](a, b, reduction=red, fmt=fmt, backend=backend), (x1, y2))


def test_ciou_alpha_is_constant():
    """CIoU's gradient equals the gradient with alpha detached (compared with a
    float64 autograd computation written here)."""
    g = torch.Generator().manual_seed(4)
    b1, b2 = make_boxes(10, degenerate=False, gen=g) + 0.01, make_boxes(10, degenerate=False, gen=g)  # no ties
    x1, x2 = b1.clone().requires_grad_(True), b2.clone().requires_grad_(True)
    segfast.complete_box_iou_aligned(x1, x2, backend=BACKENDS[0]).sum().backward()
    y1, y2 = b1.clone().requires_grad_(True), b2.clone().requires_grad_(True)
    diou = ref.aligned(y1, y2, ref.DIOU)
    w1, h1, w2, h2 = y1[:, 2] - y1[:, 0], y1[:, 3] - y1[:, 1], y2[:, 2] - y2[:, 0], y2[:, 3] - y2[:, 1]
    v = 4 / math.pi ** 2 * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    alpha = (v / (1 - ref.aligned(y1, y2, ref.IOU) + v + 1e-7)).detach()
    (diou - alpha * v).sum().backward()
    torch.testing.assert_close(x1.grad, y1.grad)
    torch.testing.assert_close(x2.grad, y2.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    b1, b2 = pair((2, 6), (2, 5), "xyxy", torch.float32)
    a1, a2 = pair((7,), (7,), "xyxy", torch.float32)
    dev = "cuda" if backend == "cuda" and torch.cuda.is_available() else "cpu"
    b1, b2, a1, a2 = (t.to(dev) for t in (b1, b2, a1, a2))
    r = lambda t: t.clone().requires_grad_(True)  # noqa: E731
    go = torch.randn(2, 6, 5, device=dev)
    tests = [
        (ob.box_pairwise_op, (r(b1), r(b2), 3, 0, 1e-7, backend)),
        (ob.box_pairwise_grad_op, (b1, b2, go, 2, 1, 1e-7, True, True, backend)),
        (ob.box_aligned_op, (r(a1), r(a2), 1, 2, False, 1e-7, 0.0, 1.0, True, True, backend)),
        (ob.box_loss_op, (r(a1), a2, 3, 0, 1e-7, True, True, False, backend)),
    ]
    for op, args in tests:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration",
                                                    "test_aot_dispatch_dynamic"))


def test_compile_fullgraph():
    backend = BACKENDS[0]
    b1, b2 = pair((2, 9), (2, 7), "xyxy", torch.float32)
    p, t = pair((12,), (12,), "cxcywh", torch.float32)

    def step(a, b, p, t):
        return segfast.ciou_loss(p, t, reduction="mean", fmt="cxcywh", backend=backend) + \
            segfast.generalized_box_iou(a, b, backend=backend).mean()

    args = [x.clone().requires_grad_(True) for x in (b1, b2, p)] + [t]
    eager = args[:3], step(*args)
    eager[1].backward()
    want = [x.grad.clone() for x in args[:3]]
    args2 = [x.detach().clone().requires_grad_(True) for x in args[:3]] + [t]
    out = torch.compile(step, fullgraph=True, backend="aot_eager")(*args2)
    out.backward()
    torch.testing.assert_close(out, eager[1])
    for g, w in zip((x.grad for x in args2[:3]), want):
        torch.testing.assert_close(g, w)


# ------------------------------------------------------------------ bad input, empty input


def test_bad_input(monkeypatch):
    b = torch.rand(5, 4)
    with pytest.raises(ValueError, match=r"\[\.\.\., N, 4\]"):
        segfast.box_iou(torch.rand(5, 3), b)
    with pytest.raises(TypeError, match="float"):
        segfast.box_iou(b.bool(), b)
    with pytest.raises(ValueError, match="batch dims"):
        segfast.box_iou(torch.rand(2, 5, 4), torch.rand(3, 5, 4))
    with pytest.raises(ValueError, match="on meta"):
        segfast.box_iou(b, b.to("meta"))
    with pytest.raises(ValueError, match="one shape"):
        segfast.box_iou_aligned(b, torch.rand(4, 4))
    with pytest.raises(ValueError, match="fmt"):
        segfast.box_iou(b, b, fmt="yxyx")
    with pytest.raises(ValueError, match="Invalid reduction"):
        segfast.giou_loss(b, b, reduction="avg")
    bad = b.clone()
    bad[2, 1] = float("nan")
    for red in ("mean", "sum"):
        for backend in BACKENDS + ["torch"]:
            with pytest.raises(ValueError, match="non-finite"):
                segfast.ciou_loss(bad, b, reduction=red, backend=backend)
            with pytest.raises(ValueError, match="non-finite"):
                segfast.iou_loss(b, bad.flip(0), reduction=red, backend=backend)
    monkeypatch.setattr(segfast.backends, "_C_emu", None)  # the cuda backend as without segfast._C_emu
    with pytest.raises(RuntimeError, match="not available"):
        segfast.box_iou(b, b, backend="cuda")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        segfast.iou_balanced_focal_loss(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.full((5,), 1.5))


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_empty(backend):
    for n, m in ((0, 5), (4, 0), (0, 0)):
        b1 = torch.rand(3, n, 4, requires_grad=True)
        b2 = torch.rand(3, m, 4, requires_grad=True)
        for k in KINDS:
            out = PAIRWISE[k](b1, b2, backend=backend)
            assert out.shape == (3, n, m)
            out.sum().backward()
            assert b1.grad.shape == b1.shape and (b1.grad == 0).all()
            b1.grad = b2.grad = None
    e = torch.rand(0, 4, requires_grad=True)
    for k in KINDS:
        assert ALIGNED[k](e, e, backend=backend).shape == (0,)
        assert LOSSES[k](e, e, reduction="none", backend=backend).shape == (0,)
        loss = LOSSES[k](e, e, reduction="mean", backend=backend)
        assert loss.shape == () and loss.item() == 0.0
        loss.backward()
    assert PAIRWISE["iou"](torch.rand(0, 2, 4), torch.rand(0, 3, 4), backend=backend).shape == (0, 2, 3)


def test_modules():
    p, t = pair((6,), (6,), "xyxy", torch.float32)
    for cls, k in ((segfast.IoULoss, "iou"), (segfast.GIoULoss, "giou"), (segfast.DIoULoss, "diou"),
                   (segfast.CIoULoss, "ciou")):
        torch.testing.assert_close(cls(reduction="sum")(p, t), LOSSES[k](p, t, reduction="sum"))


# ------------------------------------------------------------------ IoU-balanced losses


def _authors_sigmoid(pred, t, iou, eta, L):
    """The authors' weighting, transcribed: the element losses L, then
    normalized IoU weights, detached."""
    iou_e = iou.view(-1, 1).expand(-1, t.size(1))
    iou_w = (1 - t) + (t * iou_e).pow(eta)
    normalizer = (L * t).sum() / ((L * iou_w * t).sum() + 1e-6)
    w = ((1 - t) + (t * iou_e).pow(eta) * normalizer).detach()
    return L * w


def _focal(x, t, gamma=2.0, alpha=0.25):
    p = x.sigmoid()
    pt = (1 - p) * t + p * (1 - t)
    return torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none") * \
        (alpha * t + (1 - alpha) * (1 - t)) * pt.pow(gamma)


def _cls_data(N=40, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g, dtype=torch.float64) * 2
    lab = torch.randint(0, C + 1, (N,), generator=g)  # label C: background
    iou = torch.rand(N, generator=g, dtype=torch.float64)
    return x, lab, iou


def test_iou_balanced_focal_and_bce():
    x, lab, iou = _cls_data()
    t = torch.nn.functional.one_hot(lab, 6)[:, :5].double()
    for name, fn, L in (("focal", segfast.iou_balanced_focal_loss, _focal),
                        ("bce", segfast.iou_balanced_bce_loss,
                         lambda a, b: torch.nn.functional.binary_cross_entropy_with_logits(a, b, reduction="none"))):
        for target in (lab, t, t.bool()):
            xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            iou_g = iou.clone().requires_grad_(True)
            got = fn(xa, target, iou_g, eta=1.5, avg_factor=7.0)
            want = _authors_sigmoid(xb, t, iou, 1.5, L(xb, t)).sum() / 7.0
            torch.testing.assert_close(got, want)
            got.backward()
            want.backward()
            torch.testing.assert_close(xa.grad, xb.grad)
            assert iou_g.grad is None  # no gradient through iou
        # the normalizer keeps the positives' total loss equal to the unweighted one
        Le = L(x, t)
        wl = _authors_sigmoid(x, t, iou, 1.5, Le)
        torch.testing.assert_close((wl * t).sum(), (Le * t).sum(), rtol=1e-6, atol=0)


def test_iou_balanced_ce():
    x, lab, iou = _cls_data(C=6)
    lab = lab % 6
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got = segfast.iou_balanced_ce_loss(xa, lab, iou, eta=2.0)
    L = torch.nn.functional.cross_entropy(xb, lab, reduction="none")
    t = (lab > 0).double()
    iw = (1 - t) + (t * iou).pow(2.0)
    normalizer = (L * t).sum() / ((L * iw * t).sum() + 1e-6)
    want = (L * ((1 - t) + (t * iou).pow(2.0) * normalizer).detach()).sum() / x.shape[0]
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    # positives keep their total
    w = ((1 - t) + (t * iou).pow(2.0) * normalizer)
    torch.testing.assert_close((L * w * t).sum(), (L * t).sum(), rtol=1e-6, atol=0)


def test_iou_balanced_smooth_l1_and_matched_iou():
    g = torch.Generator().manual_seed(3)
    pb, gb = pair((30,), (30,), "xyxy", torch.float32, seed=9)
    iou = segfast.matched_iou(pb, gb)
    torch.testing.assert_close(iou, ref.aligned(pb, gb, ref.IOU))
    assert not iou.requires_grad and iou.dtype == torch.float32
    pred = torch.randn(30, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(30, 4, generator=g, dtype=torch.float64)
    w = (torch.rand(30, 1, generator=g) > 0.3).double().expand(30, 4)
    got = segfast.iou_balanced_smooth_l1_loss(pred, target, iou, weight=w, beta=0.5, lam=1.5, loss_weight=2.0)
    d = (pred - target).abs()
    L = torch.where(d < 0.5, 0.5 * d * d / 0.5, d - 0.25)
    want = 2.0 * (L * w * iou.double()[:, None].pow(1.5)).sum() / ((w > 0).sum() / 4 + 1e-6)
    torch.testing.assert_close(got, want)
    m = segfast.IoUBalancedSmoothL1Loss(beta=0.5, lam=1.5, loss_weight=2.0)
    torch.testing.assert_close(m(pred, target, iou, weight=w), want)
    x, lab, iou2 = _cls_data()
    torch.testing.assert_close(segfast.IoUBalancedFocalLoss()(x, lab, iou2, avg_factor=3.0),
                               segfast.iou_balanced_focal_loss(x, lab, iou2, avg_factor=3.0))


def test_non_finite_gives_nan_only_there():
    b1, b2 = pair((2, 7), (2, 6), "xyxy", torch.float32)
    b1[0, 2, 1] = float("nan")
    b2[1, 3, 2] = float("inf")
    for backend in BACKENDS + ["torch"]:
        for k in KINDS:
            out = PAIRWISE[k](b1, b2, backend=backend)
            bad = torch.zeros_like(out, dtype=torch.bool)
            bad[0, 2, :] = True
            bad[1, :, 3] = True
            assert out[bad].isnan().all() and torch.isfinite(out[~bad]).all(), (k, backend)
            a = ALIGNED[k](b1[:, :6], b2, backend=backend)
            assert a[0, 2].isnan() and a[1, 3].isnan() and a.isfinite().sum() == a.numel() - 2
