"""Differential fuzzing: every kernel backend against the eager reference.

Hypothesis draws a loss, a shape (N = 0 included, C = 1 for the sigmoid
forms, now and then C = 1000; 1-D to 3-D spatial), a dtype, a memory layout
of the logits (contiguous, channels_last, strided, expanded along N), a value
regime (normal, +-1e4, +-inf, NaN, ties) and a target (labels with or without
ignore_index, one-hot, soft). Every backend of ``kernel_backends()`` must
give the loss and dLoss/dlogits of the ``torch`` backend (segfast/reference)
in float64 within the design's error rule: at most twice the error of eager
PyTorch in the same dtype, plus the dtype's tolerance (conftest.TOL); the
loss NaN exactly where the reference's is, the gradient non-finite exactly
where the reference's is. Bad arguments must raise the same
exception type with the same message on every backend.

The default run draws a few dozen examples; ``-m slow`` runs many more.
The Triton interpreter runs Python per program: its shapes stay small.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from segfast import functional as F

from conftest import TOL, kernel_backends

BACKENDS = kernel_backends()
FAST = settings(max_examples=30, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# name -> (call(x, t, backend, **kw), mode, allowed target kinds)
#   mode "softmax": C >= 2, "sigmoid": any C, "binary": C = 1
LOSSES = {
    "dice": (lambda x, t, b, **k: F.dice_loss(x, t, backend=b, **k), "softmax", ("labels", "onehot", "soft")),
    "dice_multilabel": (lambda x, t, b, **k: F.dice_loss(x, t, mode="multilabel", backend=b, **k), "sigmoid",
                        ("labels", "soft")),
    "dice_binary": (lambda x, t, b, **k: F.dice_loss(x, t, mode="binary", backend=b, **k), "binary",
                    ("labels", "soft")),
    "jaccard": (lambda x, t, b, **k: F.jaccard_loss(x, t, backend=b, **k), "softmax", ("labels", "soft")),
    "tversky": (lambda x, t, b, **k: F.tversky_loss(x, t, alpha=0.3, beta=0.7, gamma=1.5, backend=b, **k),
                "softmax", ("labels", "soft")),
    "generalized_dice": (lambda x, t, b, **k: F.generalized_dice_loss(x, t, backend=b, **k), "softmax",
                         ("labels", "onehot")),
    "cross_entropy": (lambda x, t, b, **k: F.cross_entropy(x, t, backend=b, **k), "softmax", ("labels",)),
    "cross_entropy_smooth": (lambda x, t, b, **k: F.cross_entropy(x, t, label_smoothing=0.1, backend=b, **k),
                             "softmax", ("labels",)),
    "focal_multiclass": (lambda x, t, b, **k: F.focal_loss(x, t, mode="multiclass", backend=b, **k), "softmax",
                         ("labels",)),
    "fused": (lambda x, t, b, **k: F.fused_loss(x, t, backend=b, **k), "softmax", ("labels",)),
    "bce": (lambda x, t, b, **k: F.binary_cross_entropy_with_logits(x, t, backend=b, **k), "sigmoid",
            ("labels", "soft")),
    "balanced_bce": (lambda x, t, b, **k: F.balanced_bce_loss(x, t, backend=b, **k), "sigmoid", ("soft",)),
    "focal_sigmoid": (lambda x, t, b, **k: F.focal_loss(x, t, mode="multilabel", gamma=1.5, backend=b, **k),
                      "sigmoid", ("labels", "soft")),
    "dice_ce": (lambda x, t, b, **k: F.dice_ce_loss(x, t, backend=b, **k), "softmax", ("labels", "onehot")),
    "dice_focal": (lambda x, t, b, **k: F.dice_focal_loss(x, t, backend=b, **k), "softmax", ("labels",)),
    "dice_fused": (lambda x, t, b, **k: F.dice_fused_loss(x, t, backend=b, **k), "softmax", ("labels",)),
}
REGION = {"dice", "dice_multilabel", "dice_binary", "jaccard", "tversky", "generalized_dice"}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided", "expanded"]
REGIMES = ["normal", "large", "inf", "nan", "ties"]
def _leaf_and_view(base: torch.Tensor, layout: str):
    """(leaf shape, view of the leaf with base's [N, C, *spatial] shape)."""
    N, C, *sp = base.shape
    if layout == "channels_last":
        return (N, *sp, C), lambda leaf: leaf.movedim(-1, 1)
    if layout == "strided":
        return (N, C, *sp[:-1], 2 * sp[-1]), lambda leaf: leaf[..., ::2]
    if layout == "expanded":
        return (1, C, *sp), lambda leaf: leaf.expand(N, *leaf.shape[1:])
    return tuple(base.shape), lambda leaf: leaf


@st.composite
def cases(draw):
    name = draw(st.sampled_from(sorted(LOSSES)))
    _, mode, kinds = LOSSES[name]
    N = draw(st.sampled_from([0, 1, 1, 2, 2, 3]))
    big_c = mode != "binary" and draw(st.integers(0, 19)) == 0
    if mode == "binary":
        C = 1
    elif big_c:
        C = 1000
    else:
        C = draw(st.integers(2 if mode == "softmax" else 1, 6))
    ndim = draw(st.integers(1, 3))
    spatial = tuple(draw(st.lists(st.integers(1, 2 if big_c else 5), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(LAYOUTS))
    regime = draw(st.sampled_from(REGIMES))
    target = draw(st.sampled_from(kinds))
    ignore = target == "labels" and draw(st.booleans())
    kw = {}
    if name in REGION:
        kw["batch"] = draw(st.booleans())
        kw["reduction"] = draw(st.sampled_from(["mean", "sum", "none"]))
    elif name in ("cross_entropy", "bce", "focal_multiclass", "fused", "focal_sigmoid"):
        kw["reduction"] = draw(st.sampled_from(["mean", "sum", "none"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(name=name, N=N, C=C, spatial=spatial, dtype=dtype, layout=layout, regime=regime,
                target=target, ignore=ignore, kw=kw, seed=seed)


def _make(case):
    g = torch.Generator().manual_seed(case["seed"])
    N, C, sp = case["N"], case["C"], case["spatial"]
    _, mode, _ = LOSSES[case["name"]]
    shape = (N, C, *sp)
    regime = case["regime"]
    if regime == "ties":
        x = torch.randint(-1, 2, shape, generator=g).double()
    else:
        x = torch.randn(shape, generator=g, dtype=torch.float64) * (1e4 if regime == "large" else 3.0)
    if regime in ("inf", "nan") and x.numel():
        k = max(1, x.numel() // 10)
        idx = torch.randperm(x.numel(), generator=g)[:k]
        vals = {"inf": torch.tensor([float("inf"), -float("inf")], dtype=torch.float64),
                "nan": torch.tensor([float("nan")], dtype=torch.float64)}[regime]
        x.view(-1)[idx] = vals[torch.randint(0, len(vals), (k,), generator=g)]
    ignore_index = None
    if case["target"] == "labels":
        hi = 2 if mode == "binary" else C
        t = torch.randint(0, hi, (N, *sp), generator=g)
        if case["ignore"]:
            ignore_index = 255 if C < 255 else -1
            t[torch.rand(t.shape, generator=g) < 0.3] = ignore_index
        t = t.to(torch.uint8 if ignore_index != -1 and hi <= 255 else torch.int64)
    elif case["target"] == "onehot":
        t = torch.nn.functional.one_hot(torch.randint(0, C, (N, *sp), generator=g), C).movedim(-1, 1).float()
    elif mode == "softmax":
        t = torch.softmax(torch.randn(shape, generator=g), 1)
    else:
        t = torch.rand(shape, generator=g)
    return x, t, ignore_index


def _run(fn, leaf, view, t, backend, kw):
    leaf = leaf.detach().clone().requires_grad_(True)
    loss = fn(view(leaf), t, backend, **kw)
    w = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view(loss.shape) if loss.dim() else None
    (loss if w is None else (loss * w).sum()).backward()
    return loss.detach(), leaf.grad


def _check(got, want, eager, dtype, what, exact_nan=True):
    """``exact_nan``: NaN exactly where the reference has NaN and the same
    infinities (values); else (gradients) non-finite exactly where the
    reference is non-finite (at an infinite logit one backend's inf is
    another's NaN)."""
    got, want, eager = got.double(), want.double(), eager.double()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    nan = torch.isnan(want)
    inf = torch.isinf(want)
    if exact_nan:
        assert torch.equal(torch.isnan(got), nan), f"{what}: NaN where the reference has none, or the reverse"
        assert torch.equal(got[inf], want[inf]), f"{what}: infinities differ"
    else:
        assert torch.equal(~torch.isfinite(got), nan | inf), \
            f"{what}: non-finite where the reference is finite, or the reverse"
    fin = ~(nan | inf)
    if not fin.any():
        return
    g, w, e = got[fin], want[fin], eager[fin]
    assert torch.isfinite(g).all(), f"{what}: non-finite where the reference is finite"
    rtol, atol = TOL[dtype]
    scale = max(1.0, float(w.abs().max()))
    err = (g - w).abs()
    e_err = (e - w).abs().nan_to_num(posinf=0.0)
    bound = 2 * e_err + atol * scale + rtol * w.abs()
    bad = err > bound
    assert not bad.any(), (f"{what}: error {float(err.max()):.3g} > 2 x eager's {float(e_err.max()):.3g} "
                           f"+ tolerance ({int(bad.sum())} of {bad.numel()} elements)")


def _fuzz_one(case):
    name, dtype = case["name"], case["dtype"]
    fn = LOSSES[name][0]
    x64, t, ignore_index = _make(case)
    kw = dict(case["kw"])
    if ignore_index is not None:
        kw["ignore_index"] = ignore_index
    leaf_shape, view = _leaf_and_view(x64, case["layout"])
    if case["layout"] == "channels_last":
        leaf64 = x64.movedim(1, -1).contiguous()
    elif case["layout"] == "strided":
        leaf64 = torch.stack([x64, torch.full_like(x64, 7.0)], -1).flatten(-2)
    elif case["layout"] == "expanded":
        leaf64 = x64[:1].clone() if x64.shape[0] else torch.zeros(leaf_shape, dtype=torch.float64)
    else:
        leaf64 = x64
    assert tuple(leaf64.shape) == leaf_shape
    leaf = leaf64.to(dtype)
    leaf64 = leaf.double()  # the reference sees exactly the rounded logits
    want, want_dx = _run(fn, leaf64, view, t, "torch", kw)
    eager, eager_dx = _run(fn, leaf, view, t, "torch", kw)
    for backend in BACKENDS:
        if backend == "triton":
            if dtype == torch.float64:
                with pytest.raises(TypeError, match="refuses float64"):
                    fn(view(leaf), t, backend, **kw)
                continue
            if leaf.numel() > 512:
                continue  # the interpreter's cost
        got, dx = _run(fn, leaf, view, t, backend, kw)
        assert got.dtype == want.dtype or dtype != torch.float64, f"{backend}: loss dtype {got.dtype}"
        _check(got, want, eager, dtype, f"{backend} {name} loss")
        _check(dx, want_dx, eager_dx, dtype, f"{backend} {name} grad", exact_nan=False)


@FAST
@given(case=cases())
def test_fuzz_backends_match_reference(case):
    _fuzz_one(case)


@pytest.mark.slow
@SLOW
@given(case=cases())
def test_fuzz_backends_match_reference_many(case):
    _fuzz_one(case)


# ---------------------------------------------------------------- bad input: one error everywhere

BAD = {
    "label_too_large": lambda x, y, b: F.dice_loss(x, torch.where(y == 0, x.shape[1], y), backend=b),
    "label_negative": lambda x, y, b: F.cross_entropy(x, torch.where(y == 0, -3, y), ignore_index=255, backend=b),
    "ignore_fraction": lambda x, y, b: F.cross_entropy(x, y, ignore_index=1.5, backend=b),
    "ignore_huge": lambda x, y, b: F.dice_loss(x, y, ignore_index=2**62 + 1, backend=b),
    "ignore_bool": lambda x, y, b: F.dice_loss(x, y, ignore_index=True, backend=b),
    "target_shape": lambda x, y, b: F.dice_loss(x, y[:, :-1], backend=b),
    "dense_shape": lambda x, y, b: F.dice_ce_loss(x, y.float(), backend=b),
    "weight_negative": lambda x, y, b: F.cross_entropy(x, y, weight=[-1.0] + [1.0] * (x.shape[1] - 1), backend=b),
    "weight_count": lambda x, y, b: F.dice_loss(x, y, weight=[1.0] * (x.shape[1] + 1), backend=b),
    "binary_channels": lambda x, y, b: F.dice_loss(x, y, mode="binary", backend=b),
    "ce_one_channel": lambda x, y, b: F.cross_entropy(x[:, :1], y.clamp(max=0), backend=b),
    "reduction": lambda x, y, b: F.focal_loss(x, y, mode="multiclass", reduction="avg", backend=b),
    "smoothing": lambda x, y, b: F.cross_entropy(x, y, label_smoothing=1.5, backend=b),
    "gamma": lambda x, y, b: F.focal_loss(x, y, mode="multiclass", gamma=-1.0, backend=b),
    "int_input": lambda x, y, b: F.dice_loss(x.long(), y, backend=b),
    "float_labels_ce": lambda x, y, b: F.cross_entropy(x, y.float(), backend=b),
    "no_spatial": lambda x, y, b: F.dice_loss(x[:, :, 0, 0], y[:, 0, 0], backend=b),
}


@settings(max_examples=20, deadline=None, derandomize=True)
@given(bad=st.sampled_from(sorted(BAD)), N=st.integers(1, 2), C=st.integers(2, 4),
       seed=st.integers(0, 2**31 - 1))
def test_bad_input_same_error_everywhere(bad, N, C, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, 3, 4, generator=g)
    y = torch.randint(0, C, (N, 3, 4), generator=g)
    errors = {}
    for backend in ["torch"] + BACKENDS:
        try:
            BAD[bad](x, y, backend)
        except Exception as e:  # noqa: BLE001
            errors[backend] = (type(e), str(e))
        else:
            errors[backend] = None
    assume(errors["torch"] is not None)  # a few draws make a valid call (e.g. no label 0 to replace)
    for backend, err in errors.items():
        assert err == errors["torch"], f"{bad}: {backend} raised {err}, torch {errors['torch']}"

