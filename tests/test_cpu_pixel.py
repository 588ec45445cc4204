"""segfast._C.cpu.pixel_loss against the float64 reference (segfast/reference/pixel.py).

The kernel is called on raw pointers, as segfast/ops will: loss partial sums per
(image, chunk), the per-pixel / per-element map, and dx = go * d(map)/dx, each
checked against pixel_terms and autograd in float64.
"""

from __future__ import annotations

import pytest
import torch

from segfast import backends
from segfast.reference import pixel as ref
from segfast.reference.pixel import BCE, CE, FOCAL_SIGMOID, FOCAL_SOFTMAX, FUSED

from conftest import tol

_C = backends._C
pytestmark = pytest.mark.skipif(_C is None or not hasattr(getattr(_C, "cpu", None), "pixel_loss"),
                                reason="segfast._C with the pixel kernels is not built")

N, S_ODD = 3, 37 * 53


def _acc(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def run_kernel(x, t, is_label, kind, *, weight=None, pos_weight=None, beta=None, gamma=2.0,
               alpha=0.25, smoothing=0.0, label_offset=0, ignore_value=None, scale0=1.0,
               scale1=1.0, P=1, loss=True, map=False, go=None, dx=True, threads=2):
    """Calls _C.cpu.pixel_loss; outputs not asked for are None. Outputs start as NaN so
    a slot the kernel leaves unwritten fails the comparison."""
    n, C, S = x.shape
    A = _acc(x)
    softmax = kind in ref.SOFTMAX_KINDS
    map_shape = (n, S) if softmax else (n, C, S)
    out_loss = torch.full((n, P, 2), float("nan"), dtype=A) if loss else None
    out_map = torch.full(map_shape, float("nan"), dtype=A) if map else None
    out_dx = torch.full_like(x, float("nan")) if dx else None
    go_c = go.to(A).contiguous() if go is not None else None
    tt = t.view(torch.uint8) if t.dtype == torch.bool else t
    opt = [v.to(A).contiguous() if v is not None else None for v in (weight, pos_weight, beta)]
    view = backends.view
    _C.cpu.pixel_loss(
        view(x), view(tt), kind, label_offset, None if ignore_value is None else float(ignore_value),
        *(view(v) for v in opt), float(gamma), float(alpha), float(smoothing), float(scale0), float(scale1),
        view(out_loss), view(out_map), view(go_c), view(out_dx), threads)
    return out_loss, out_map, out_dx


def reference(x, t, is_label, kind, *, P=1, scale0=1.0, scale1=1.0, go=None, **kw):
    """(chunk sums [N, P, 2], map, dx) in float64."""
    xd = x.detach().double().requires_grad_(True)
    kw = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()}
    l0, l1, _ = ref.pixel_terms(xd, t, is_label, kind, **kw)
    m = scale0 * l0 + scale1 * l1
    g = torch.ones_like(m) if go is None else go.double()
    (dx,) = torch.autograd.grad((m * g).sum(), xd)
    n, C, S = x.shape
    p0, p1 = (l0, l1) if kind in ref.SOFTMAX_KINDS else (l0.sum(1), l1.sum(1))
    L = -(-S // P)
    sums = torch.zeros(n, P, 2, dtype=torch.float64)
    for j in range(P):
        sums[:, j, 0] = p0[:, j * L:(j + 1) * L].sum(1)
        sums[:, j, 1] = p1[:, j * L:(j + 1) * L].sum(1)
    return sums.detach(), m.detach(), dx


def close(actual, expected, dtype, scale_atol=True):
    rtol, atol = tol(dtype)["rtol"], tol(dtype)["atol"]
    if dtype == torch.float64:  # the float64 kernels match the reference to rounding
        rtol, atol = 1e-12, 1e-12
    if scale_atol:
        atol = atol * max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


# ---------------------------------------------------------------- inputs

def make_x(C, S, dtype, layout):
    if layout == "permuted":  # channels_last-like: classes innermost
        return (3 * torch.randn(N, S, C)).to(dtype).permute(0, 2, 1)
    if layout == "sliced":
        return (3 * torch.randn(N, 2 * C, S + 5)).to(dtype)[:, ::2, 3:S + 3]
    return (3 * torch.randn(N, C, S)).to(dtype)


def make_labels(C, S, dtype, ignore, offset=0, sliced=False):
    t = torch.randint(offset, offset + C, (N, S * 2 if sliced else S))
    if ignore is not None:
        t[torch.rand(t.shape) < 0.15] = ignore
    t = t.to(dtype)
    return t[:, ::2] if sliced else t


def make_dense(C, S, dtype, ignore, sliced=False):
    if dtype in (torch.bool, torch.uint8):
        t = (torch.rand(N, C, S) < 0.3).to(dtype)
    else:
        t = torch.rand(N, C, S)
        t[torch.rand(t.shape) < 0.3] = 0.0
        t[torch.rand(t.shape) < 0.2] = 1.0
        if ignore is not None:
            t[torch.rand(t.shape) < 0.1] = ignore
        t = t.to(dtype)
    if sliced:  # channels-last strides
        t = t.permute(0, 2, 1).contiguous().permute(0, 2, 1)
    return t


# (kind, C, target spec, loss options). target spec: ("label", dtype, ignore) or
# ("dense", dtype, ignore).
CASES = [
    (CE, 5, ("label", torch.uint8, 255), dict(weight=True, smoothing=0.1)),
    (CE, 150, ("label", torch.int64, -100), dict()),
    (CE, 2, ("label", torch.int64, None), dict(weight=True, smoothing=0.1)),
    (FOCAL_SOFTMAX, 5, ("label", torch.uint8, 255), dict(weight=True, gamma=2.0)),
    (FOCAL_SOFTMAX, 150, ("label", torch.int64, -100), dict(gamma=0.5)),
    (FOCAL_SOFTMAX, 2, ("label", torch.int32, None), dict(gamma=0.0, weight=True)),
    (FUSED, 5, ("label", torch.uint8, 255), dict(weight=True, smoothing=0.1)),
    (FUSED, 2, ("label", torch.int64, None), dict()),
    (FUSED, 150, ("label", torch.int64, -100), dict(smoothing=0.1)),
    (BCE, 1, ("label", torch.uint8, 255), dict(pos_weight=True, beta=True)),
    (BCE, 5, ("dense", torch.float32, -1.0), dict(weight=True, pos_weight=True)),
    (BCE, 2, ("dense", torch.bool, None), dict(beta=True)),
    (BCE, 150, ("label", torch.int64, -100), dict(weight=True)),
    (FOCAL_SIGMOID, 5, ("dense", torch.float32, -1.0), dict(gamma=2.0, alpha=0.25, weight=True)),
    (FOCAL_SIGMOID, 1, ("label", torch.int64, None), dict(gamma=0.5, alpha=-1.0)),
    (FOCAL_SIGMOID, 150, ("label", torch.uint8, 255), dict(gamma=0.0, alpha=0.25)),
    (FOCAL_SIGMOID, 2, ("dense", torch.float16, -1.0), dict(gamma=0.5, alpha=-1.0)),
]

# (x dtype, x layout, P, outputs): outputs "all" = loss + map + dx with go,
# "loss_dx" = forward of a mean loss, "map" = reduction none, "go_dx" = its backward.
VARIANTS = [
    (torch.float64, "contiguous", 4, "all"),
    (torch.float32, "permuted", 1, "loss_dx"),
    (torch.float32, "sliced", 4, "map"),
    (torch.float16, "sliced", 4, "go_dx"),
    (torch.bfloat16, "permuted", 1, "all"),
]


def build(case, xdtype, layout, S=S_ODD, label_offset=0):
    kind, C, (tkind, tdtype, ignore), opts = case
    x = make_x(C, S, xdtype, layout)
    sliced = layout != "contiguous"
    if tkind == "label":
        t = make_labels(C, S, tdtype, ignore, label_offset, sliced)
    else:
        t = make_dense(C, S, tdtype, ignore, sliced)
    kw = dict(ignore_value=ignore, label_offset=label_offset)
    for k in ("gamma", "alpha", "smoothing"):
        if k in opts:
            kw[k] = opts[k]
    if opts.get("weight"):
        kw["weight"] = torch.rand(C) + 0.5
    if opts.get("pos_weight"):
        kw["pos_weight"] = torch.rand(C) * 3 + 0.2
    if opts.get("beta"):
        kw["beta"] = torch.rand(N) * 0.8 + 0.1
    return x, t, tkind == "label", kind, kw


def check(x, t, is_label, kind, kw, P, outputs, scale0=1.0, scale1=1.0):
    softmax = kind in ref.SOFTMAX_KINDS
    n, C, S = x.shape
    go = None
    if outputs in ("all", "go_dx"):
        go = torch.rand((n, S) if softmax else (n, C, S)) * 2 - 0.5
    want = dict(loss=outputs in ("all", "loss_dx"), map=outputs in ("all", "map"),
                dx=outputs in ("all", "loss_dx", "go_dx"))
    sc = dict(scale0=scale0, scale1=scale1)
    loss, mp, dx = run_kernel(x, t, is_label, kind, P=P, go=go, **want, **sc, **kw)
    r_loss, r_map, r_dx = reference(x, t, is_label, kind, P=P, go=go, **sc, **kw)
    A = _acc(x)
    if want["loss"]:
        close(loss, r_loss, A)
    if want["map"]:
        close(mp, r_map, A)
    if want["dx"]:
        assert dx.dtype == x.dtype and dx.stride() == torch.empty_like(x).stride()
        close(dx, r_dx, x.dtype)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{str(v[0])[6:]}-{v[1]}-P{v[2]}-{v[3]}")
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}-C{c[1]}-{c[2][0]}-{str(c[2][1])[6:]}")
def test_pixel_kernel_matches_reference(case, variant):
    xdtype, layout, P, outputs = variant
    x, t, is_label, kind, kw = build(case, xdtype, layout)
    scales = (1.0, 0.5) if kind == FUSED else (1.0, 1.0)
    check(x, t, is_label, kind, kw, P, outputs, *scales)


@pytest.mark.parametrize("kind", [CE, FOCAL_SOFTMAX, FUSED, BCE, FOCAL_SIGMOID])
def test_more_chunks_than_pixels_and_offset(kind):
    """P > S (empty chunks are zeros), label_offset, tiny S."""
    case = next(c for c in CASES if c[0] == kind and c[2][0] == "label")
    case = (case[0], max(case[1], 2), case[2], case[3])
    x, t, is_label, k, kw = build(case, torch.float64, "contiguous", S=3, label_offset=1)
    check(x, t, is_label, k, kw, P=5, outputs="all", scale0=0.7, scale1=1.3)


def test_extreme_logits_are_finite():
    """Large logit gaps: the fused loss's fg logsumexp, focal with p_y -> 1, BCE tails.
    (The reference's focal gradient is nan where 1 - p_y == 0 exactly, gamma < 1: the
    kernel takes that term as 0; compared where the reference is finite.)"""
    C, S = 4, 64
    x = torch.randn(N, C, S, dtype=torch.float64) * 60
    x[:, 0, :8] = 200.0  # background dominates by > 87: exp(x_c - max) underflows
    t = torch.randint(0, C, (N, S))
    td = (torch.rand(N, C, S) < 0.5).float()
    runs = [(FUSED, t, True, {}), (CE, t, True, dict(smoothing=0.1)),
            (FOCAL_SOFTMAX, t, True, dict(gamma=0.5)), (FOCAL_SOFTMAX, t, True, dict(gamma=2.0)),
            (BCE, td, False, {}), (FOCAL_SIGMOID, td, False, dict(gamma=0.5))]
    for kind, tt, is_label, kw in runs:
        for dt in (torch.float64, torch.float32):
            xx = x.to(dt)
            go = torch.rand((N, S) if kind in ref.SOFTMAX_KINDS else (N, C, S))
            loss, mp, dx = run_kernel(xx, tt, is_label, kind, P=2, map=True, go=go, **kw)
            r_loss, r_map, r_dx = reference(xx, tt, is_label, kind, P=2, go=go, **kw)
            for a, b, d in ((loss, r_loss, _acc(xx)), (mp, r_map, _acc(xx)), (dx, r_dx, dt)):
                assert torch.isfinite(a).all()
                ok = torch.isfinite(b)
                close(a[ok], b[ok], d)


def test_out_of_range_labels_are_never_indexed():
    """Softmax kinds: a label outside [offset, offset + C) that is not ignored is an
    invalid pixel (Python rejects these; the kernel must stay in bounds)."""
    C, S = 3, 50
    x = torch.randn(N, C, S)
    t = torch.randint(0, C, (N, S))
    bad = torch.rand(N, S) < 0.3
    t[bad] = torch.randint(C, 1 << 40, (int(bad.sum()),))
    t[0, 0], t[0, 1] = -5, -(1 << 40)
    bad[0, :2] = True
    for kind in (CE, FOCAL_SOFTMAX, FUSED):
        loss, mp, dx = run_kernel(x, t, True, kind, weight=torch.rand(C), map=True)
        assert torch.isfinite(loss).all() and (mp[bad] == 0).all()
        assert (dx.permute(0, 2, 1)[bad] == 0).all()
        tt = t.clone()
        tt[bad] = -1
        _, mp1, dx1 = run_kernel(x, tt, True, kind, map=True, ignore_value=-1)
        _, mp2, dx2 = run_kernel(x, t, True, kind, map=True)
        torch.testing.assert_close(mp1, mp2)
        torch.testing.assert_close(dx1, dx2)


def test_deterministic_across_threads():
    x = torch.randn(2, 21, 5000)
    t = torch.randint(0, 21, (2, 5000))
    outs = [run_kernel(x, t, True, FUSED, P=3, map=True, threads=n) for n in (1, 2, 0)]
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            assert torch.equal(a, b)


def test_bad_arguments():
    x = torch.randn(N, 1, 10)
    t = torch.zeros(N, 10, dtype=torch.int64)
    with pytest.raises(ValueError, match="C >= 2"):
        run_kernel(x, t, True, FUSED)
    with pytest.raises(ValueError, match="kind"):
        run_kernel(x, t, True, 7)
    with pytest.raises(ValueError, match="class-index"):
        run_kernel(x, torch.zeros(N, 1, 10), False, CE)
    with pytest.raises(ValueError, match="gamma"):
        run_kernel(x, t, True, FOCAL_SOFTMAX, gamma=-1.0)
    with pytest.raises(ValueError, match="pos_weight"):
        run_kernel(x, t, True, CE, pos_weight=torch.ones(1))
