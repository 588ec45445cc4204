"""Region losses: every backend against the eager float64 reference.

Kernel backends run here: ``cpu`` always, ``triton`` on CPU tensors when the
suite runs with TRITON_INTERPRET=1 (small shapes: the interpreter is slow),
``cuda`` only on a GPU machine.
"""

from __future__ import annotations


import pytest
import torch

import segfast
from segfast import backends, functional as F
from segfast.reference import region as ref

from conftest import kernel_backends, pairwise, tol

BACKENDS = kernel_backends()
LOSSES = {
    "dice": F.dice_loss,
    "jaccard": F.jaccard_loss,
    "tversky": F.tversky_loss,
    "generalized_dice": F.generalized_dice_loss,
}


def _small(backend):
    """The Triton interpreter runs Python per program: keep its shapes small."""
    return backend == "triton"


def make_case(N, C, spatial, mode, target_kind, dtype=torch.float32, ignore_index=None, device="cpu"):
    x = (torch.randn(N, C, *spatial, dtype=torch.float64) * 3).to(dtype)
    if target_kind == "labels":
        hi = 2 if mode == "binary" else C
        t = torch.randint(0, hi, (N, *spatial))
        if ignore_index is not None:
            t[torch.rand(t.shape) < 0.2] = ignore_index
        t = t.to(torch.uint8 if 0 <= (ignore_index or 0) < 256 and hi <= 256 else torch.int64)
    elif target_kind == "onehot":
        t = torch.nn.functional.one_hot(torch.randint(0, C, (N, *spatial)), C).movedim(-1, 1).float()
    else:  # soft
        t = torch.rand(N, C, *spatial)
        if ignore_index is not None:
            t[torch.rand(t.shape) < 0.2] = ignore_index
    return x.to(device), t.to(device)


def ref_loss(name, x, t, go=None, **kw):
    """Loss and input gradient of the eager reference, in float64."""
    x64 = x.detach().double().requires_grad_(True)
    loss = ref.region_loss(x64, t, kind=name, **kw)
    loss.backward(torch.ones_like(loss) if go is None else go.double())
    return loss.detach(), x64.grad


def run_loss(name, x, t, backend, go=None, **kw):
    x = x.detach().clone().requires_grad_(True)
    loss = LOSSES[name](x, t, backend=backend, **kw)
    loss.backward(torch.ones_like(loss) if go is None else go.to(loss.dtype))
    return loss.detach(), x.grad


def assert_close(a, b, dtype, what=""):
    """Within the dtype's tolerance of the float64 reference ``b``; the absolute
    part scales with max|b| (a softmax gradient p·(a - Σp·a) cancels: eager
    PyTorch in float32 makes the same absolute error)."""
    t = tol(dtype)
    t["atol"] *= max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a.double(), b.double(), **t, msg=lambda m: f"{what}: {m}")


# ------------------------------------------------------------------ stats kernels


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("act,target_kind,C", pairwise([0, 1, 2], ["labels", "soft"], [1, 2, 21, 150],
                                                       valid=lambda act, _, C: not (act == 2 and C == 1)))
def test_stats_and_grad_match_reference(backend, act, target_kind, C):
    if act == 2 and C == 1:
        pytest.skip("softmax over one channel")
    if _small(backend) and C == 150:
        C = 70  # still beyond one class tile
    spatial = (5, 7) if _small(backend) else (37, 53)
    N = 2
    x, t = make_case(N, C, spatial, "multiclass", target_kind, ignore_index=255 if target_kind == "labels" else -1.0)
    if act == 0:
        x = torch.rand_like(x)
    x3 = x.flatten(2).requires_grad_(True)
    t2 = t.flatten(1) if target_kind == "labels" else t.flatten(2)
    is_label = target_kind == "labels"
    ignore = 255.0 if is_label else -1.0
    stats = segfast.ops.region.plane_stats(x3, t2, is_label, act, 0, ignore, backend)
    x64 = x3.detach().double().requires_grad_(True)
    want = ref.region_stats(x64, t2, is_label, act, 0, ignore)
    assert stats.shape == (N, C, ref.K) and stats.dtype == torch.float32
    assert_close(stats, want, torch.float32, "stats")
    g = torch.randn(N, C, ref.K, dtype=torch.float64)
    if not is_label:
        g[..., 6] = 0  # d min(p, t)/dp flips where |p - t| is below float32 resolution
    (dx,) = torch.autograd.grad(stats, x3, g.float())
    (dx_ref,) = torch.autograd.grad(want, x64, g)
    # DESIGN.md: error against float64 at most 2x that of eager PyTorch in the same dtype.
    x32 = x3.detach().float().requires_grad_(True)
    (dx_eager,) = torch.autograd.grad(ref.region_stats(x32, t2, is_label, act, 0, ignore), x32, g.float())
    err, eager_err = (dx.double() - dx_ref).abs().max(), (dx_eager.double() - dx_ref).abs().max()
    assert err <= 2 * eager_err + 1e-6, (float(err), float(eager_err))


# ------------------------------------------------------------------ losses


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,batch,mode,target_kind", pairwise(
    list(LOSSES), [False, True],
    [("multiclass", "labels"), ("multilabel", "soft"), ("binary", "labels"), ("multiclass", "onehot")]))
def test_losses_match_reference(backend, name, batch, mode, target_kind):
    C = 1 if mode == "binary" else 5
    spatial = (4, 6) if _small(backend) else (37, 53)
    x, t = make_case(3, C, spatial, mode, target_kind)
    kw = dict(mode=mode, batch=batch)
    if name == "tversky":
        kw.update(alpha=0.3, beta=0.7, gamma=1.5)
    go = torch.tensor(0.37)
    want, want_dx = ref_loss(name, x, t, go, **kw)
    got, dx = run_loss(name, x, t, backend, go, **kw)
    assert_close(got, want, torch.float32, "loss")
    assert_close(dx, want_dx, torch.float32, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_precision(backend, dtype):
    spatial = (6, 5) if _small(backend) else (33, 31)
    x, t = make_case(2, 21, spatial, "multiclass", "labels", dtype=dtype)
    go = torch.tensor(1.7)
    want, want_dx = ref_loss("dice", x, t, go)
    got, dx = run_loss("dice", x, t, backend, go)
    assert got.dtype == torch.float32 and dx.dtype == dtype
    assert_close(got, want, dtype, "loss")
    # The gradient is rounded once to the input dtype: compare in its own scale.
    scale = want_dx.abs().max()
    assert_close(dx / scale, want_dx / scale, dtype, "grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spatial", [(17,), (5, 6, 7)])
def test_1d_and_3d(backend, spatial):
    if _small(backend):
        spatial = tuple(min(s, 4) for s in spatial)
    x, t = make_case(2, 4, spatial, "multiclass", "labels", ignore_index=255)
    kw = dict(ignore_index=255, include_background=False)
    want, want_dx = ref_loss("dice", x, t, **kw)
    got, dx = run_loss("dice", x, t, backend, **kw)
    assert_close(got, want, torch.float32)
    assert_close(dx, want_dx, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "sliced", "expanded_target"])
def test_non_contiguous_equals_contiguous(backend, layout):
    spatial = (6, 8) if _small(backend) else (30, 42)
    x, t = make_case(2, 6, spatial, "multiclass", "labels")
    if layout == "channels_last":
        xn = x.to(memory_format=torch.channels_last)
        tn = t
    elif layout == "sliced":
        big = torch.randn(2, 12, spatial[0], spatial[1] * 2)
        xn = big[:, ::2, :, ::2]
        x = xn.contiguous()
        tn = t
    else:
        xn = x
        tn = t[:, None].expand(2, 3, *spatial)[:, 1]
    assert not xn.is_contiguous() or layout == "expanded_target"
    a, da = run_loss("dice", x, t, backend, go=torch.tensor(2.0), weight=[1, 2, 3, 4, 5, 6])
    b, db = run_loss("dice", xn, tn, backend, go=torch.tensor(2.0), weight=[1, 2, 3, 4, 5, 6])
    assert_close(b, a, torch.float32)
    assert_close(db, da, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ignore_weight_reduction_none(backend):
    spatial = (5, 4) if _small(backend) else (19, 23)
    x, t = make_case(3, 4, spatial, "multiclass", "labels", ignore_index=255)
    kw = dict(ignore_index=255, weight=[0.5, 1.0, 2.0, 0.0], reduction="none", log_loss=True)
    go = torch.rand(3, 4) + 0.5
    want, want_dx = ref_loss("dice", x, t, go, **kw)
    got, dx = run_loss("dice", x, t, backend, go, **kw)
    assert got.shape == (3, 4)
    assert_close(got, want, torch.float32)
    assert_close(dx, want_dx, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_empty_and_fully_ignored_are_finite(backend):
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    t = torch.zeros(2, 4, 5, dtype=torch.int64)
    t[1] = 255  # image 1 entirely ignored; classes 1, 2 absent everywhere
    for name, fn in LOSSES.items():
        for smooth in (0.0, 1e-5):
            loss = fn(x, t, ignore_index=255, smooth_nr=smooth, smooth_dr=smooth, backend=backend,
                      reduction="none")
            (g,) = torch.autograd.grad(loss.sum(), x)
            assert torch.isfinite(loss).all() and torch.isfinite(g).all(), (name, smooth)
    # A fully ignored plane with no smoothing scores 1, i.e. its loss is 0.
    loss = F.dice_loss(x, t, ignore_index=255, smooth_nr=0, smooth_dr=0, reduction="none", backend=backend)
    assert torch.equal(loss[1], torch.zeros(3))
    assert g[1].abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_output_scales(backend):
    x, t = make_case(2, 3, (5, 5), "multiclass", "labels")
    _, d1 = run_loss("jaccard", x, t, backend, go=torch.tensor(1.0))
    _, d3 = run_loss("jaccard", x, t, backend, go=torch.tensor(-3.0))
    assert_close(d3, -3 * d1, torch.float32)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_gradcheck_float64(backend, name):
    if backend not in BACKENDS + ["torch"]:
        pytest.skip(f"{backend} not built")
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 3, (2, 4, 3))
    t[0, 0] = 255
    assert torch.autograd.gradcheck(
        lambda x: LOSSES[name](x, t, backend=backend, ignore_index=255, reduction="none", batch=True), (x,))
    soft = torch.rand(2, 3, 4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: LOSSES[name](x, soft, mode="multilabel", backend=backend), (x,))
    probs = torch.rand(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda p: F.region_stats(p, soft, mode="multilabel", from_logits=False, backend=backend), (probs,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_C_loops_over_classes(backend):
    C = 300 if _small(backend) else 1100
    spatial = (3, 2) if _small(backend) else (16, 16)
    x, t = make_case(1, C, spatial, "multiclass", "labels")
    want, want_dx = ref_loss("dice", x, t)
    got, dx = run_loss("dice", x, t, backend)
    assert_close(got, want, torch.float32)
    assert_close(dx, want_dx, torch.float32)


@pytest.mark.parametrize("grads", ["plain", "squared", "all"])
@pytest.mark.parametrize("layout", ["contiguous", "tail", "channels_last", "bfloat16", "ignore"])
def test_cpu_grad_with_kept_softmax(layout, grads):
    """In eager mode the cpu stats pass keeps the probabilities v·p, in the
    buffer that becomes the gradient, for float32 input with unit pixel
    stride on the fast path (ops/region.py _keeps: KEEP_PROBS; the AVX-512 build), and
    nothing else (region_keeps answers KEEP_PROBS or 0). Either
    way the gradient is the op path's, which recomputes everything
    (torch.compile's), for full and partial pixel blocks, ignored pixels, and
    every kind of dLoss/dStats (plain I/P/T; with PP; with M)."""
    from segfast.ops import region as ops

    spatial = (37, 53) if layout == "tail" else (16, 24)
    x, t = make_case(3, 21, spatial, "multiclass", "labels", ignore_index=255 if layout == "ignore" else None)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    if layout == "bfloat16":
        x = x.to(torch.bfloat16)
    x.requires_grad_(True)
    ign = 255 if layout == "ignore" else None
    args = ops.prepare(x, t, "multiclass", True, ign, "cpu")
    x3, rest = args[0], args[1:]
    keep = ops._keeps(x3, rest[1], rest[2], "cpu", 0)
    assert keep in (0, ops.KEEP_PROBS)
    fast = backends._C.region_isa() == "avx512"
    assert bool(keep & ops.KEEP_PROBS) == (fast and layout in ("contiguous", "tail", "ignore"))
    kept = ops.plane_stats(*args)  # eager: _EagerStats, keeps them
    op = ops.region_stats_op(*args, 0, 0.0, 0)[0]  # the torch.library op told to keep nothing: recomputes
    assert torch.equal(kept, op)
    g = torch.randn_like(kept)
    if grads != "all":
        g[..., 3:] = 0  # dLoss/dM = 0 (and dLoss/dPP = 0 for "plain")
    if grads == "squared":
        g[..., 4] = torch.randn_like(g[..., 4])
    (dx_kept,) = torch.autograd.grad(kept, x, g)
    (dx_op,) = torch.autograd.grad(op, x, g)
    # q path: sum_k q_k a_k instead of (sum_k e_k a_k) / sum: float32 rounding apart
    atol = 1e-2 if layout == "bfloat16" else 1e-6 * float(dx_op.abs().max())
    torch.testing.assert_close(dx_kept.float(), dx_op.float(), rtol=1e-5, atol=atol)
    assert dx_kept.stride() == x.stride()
    if layout == "ignore":
        assert (dx_kept.transpose(0, 1)[:, t == 255] == 0).all()
    _, want = ref_loss("dice", x.float(), t, ignore_index=ign)
    _, got = run_loss("dice", x.float(), t, "cpu", ignore_index=ign)
    assert_close(got, want, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logit_ranges(backend):
    """The cpu stats pass skips the softmax max where every pixel's max logit
    lies in [-20, 80] (csrc/cpu/region.cpp softmax_group_unshifted) and falls
    back to the shifted softmax elsewhere: pixels far outside that range, at
    its edges, and -inf logits, mixed within groups of pixel blocks, match
    the float64 reference in loss and gradient on every backend."""
    x, t = make_case(2, 21, (16, 40), "multiclass", "labels")
    x = x * 4
    x[0, :, :4] += 95.0  # max > 80: overflow without the shift
    x[0, :, 4:8] -= 60.0  # max < -20: every exp near the clamp without it
    x[1, :, :, :5] = x[1, :, :, :5] - x[1, :, :, :5].amax(0) - 20.0  # max exactly -20
    x[1, :, :, 5:9] = x[1, :, :, 5:9] - x[1, :, :, 5:9].amax(0) + 80.0  # max exactly 80
    x[1, 3:7, 8:] = float("-inf")  # masked classes: p = 0 (cpu: below 1e-37, the exp's clamp)
    want, want_dx = ref_loss("dice", x, t)
    got, dx = run_loss("dice", x, t, backend, go=torch.tensor(1.7))
    assert_close(got, want, torch.float32)
    assert_close(dx, 1.7 * want_dx, torch.float32)
    assert dx[1, 3:7, 8:].abs().max() < 1e-30
    if backend == "cpu":  # the grad pass that keeps nothing takes its own softmax
        from segfast.ops import region as ops

        xg = x.detach().requires_grad_(True)
        x64 = x.detach().double().requires_grad_(True)
        stats = ops.region_stats_op(*ops.prepare(xg, t, "multiclass", True, None, "cpu"))[0]
        want_stats = ops.plane_stats(*ops.prepare(x64, t, "multiclass", True, None, "torch"))
        g = torch.randn_like(stats)
        g[..., 3:] = 0  # the plain grad pass
        (dx_op,) = torch.autograd.grad(stats, xg, g)
        (want_op,) = torch.autograd.grad(want_stats, x64, g.double())
        assert_close(stats, want_stats, torch.float32)
        assert_close(dx_op, want_op, torch.float32)


def test_cpu_kept_probs_second_backward():
    """The kept probabilities become the gradient on the first backward; a
    second one (retain_graph) recomputes them from x and gives the same."""
    x, t = make_case(2, 5, (9, 11), "multiclass", "labels")
    x.requires_grad_(True)
    loss = F.dice_loss(x, t, backend="cpu")
    (g1,) = torch.autograd.grad(loss, x, torch.tensor(2.5), retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x, torch.tensor(2.5))
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-8)
    _, want = ref_loss("dice", x, t, go=torch.tensor(2.5))
    assert_close(g1, want, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_eager_and_compiled_take_the_same_kernel_path(monkeypatch, dtype):
    """What the cpu stats pass keeps for the grad pass is decided once, by the
    kernels (ops/region.py _keeps): an eager call and the same call under
    torch.compile(fullgraph=True) make the same kernel calls (float32 on the
    AVX-512 build: the probabilities kept and the gradient written over them;
    otherwise nothing kept, the grad pass recomputes) and give the same loss
    and gradient."""
    from segfast import backends

    calls = []

    def record(name, real, tag):
        def call(*a, **k):
            calls.append((name,) + tag(a))
            return real(*a, **k)
        return call

    # which buffers each call was given: the kept max/sum, the kept probabilities
    kernels = backends._C.cpu
    monkeypatch.setattr(kernels, "region_stats", record(
        "stats", kernels.region_stats, lambda a: (a[-3] is not None, a[-2] is not None)))
    monkeypatch.setattr(kernels, "region_grad", record(
        "grad", kernels.region_grad, lambda a: (a[-2] is not None,)))
    monkeypatch.setattr(kernels, "region_grad_probs", record(
        "grad_probs", kernels.region_grad_probs, lambda a: ()))
    x, t = make_case(2, 5, (8, 12), "multiclass", "labels")
    x = x.to(dtype)

    def step(fn):
        xg = x.detach().requires_grad_(True)
        calls.clear()
        loss = fn(xg, t)
        loss.backward()
        return loss.detach(), xg.grad, list(calls)

    def dice(xg, t):
        return F.dice_loss(xg, t, backend="cpu")

    eager = step(dice)
    compiled = step(torch.compile(dice, fullgraph=True, backend="aot_eager"))
    assert eager[2] == compiled[2], (eager[2], compiled[2])
    probs = dtype == torch.float32 and backends._C.region_isa() == "avx512"
    assert eager[2][-1][0] == ("grad_probs" if probs else "grad"), eager[2]
    assert eager[2][0] == ("stats", False, probs), eager[2]
    torch.testing.assert_close(compiled[0], eager[0])
    torch.testing.assert_close(compiled[1], eager[1])


def test_modules_match_functional():
    x, t = make_case(2, 4, (6, 6), "multiclass", "labels", ignore_index=255)
    for mod, fn, extra in [(segfast.DiceLoss, F.dice_loss, {}), (segfast.JaccardLoss, F.jaccard_loss, {}),
                           (segfast.TverskyLoss, F.tversky_loss, dict(alpha=0.2, beta=0.8, gamma=2.0)),
                           (segfast.GeneralizedDiceLoss, F.generalized_dice_loss, dict(w_type="simple"))]:
        m = mod("multiclass", ignore_index=255, batch=True, **extra)
        assert torch.equal(m(x, t), fn(x, t, ignore_index=255, batch=True, **extra))
    m = segfast.DiceLoss(weight=[1, 2, 3, 4])
    assert "weight" in dict(m.named_buffers())


def test_backend_choice(monkeypatch):
    x, t = make_case(1, 3, (4, 4), "multiclass", "labels")
    monkeypatch.setattr(segfast.backends, "_C_emu", None)  # the cuda backend as without segfast._C_emu
    with pytest.raises(RuntimeError, match="not available"):
        F.dice_loss(x, t, backend="cuda")
    with pytest.raises(RuntimeError, match="unknown backend"):
        F.dice_loss(x, t, backend="nope")
    monkeypatch.setenv("SEGFAST_BACKEND", "torch")
    assert segfast.backends.choose(None, x.device) == "torch"
    monkeypatch.setenv("SEGFAST_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="not available"):
        F.dice_loss(x, t)
    monkeypatch.delenv("SEGFAST_BACKEND")
    assert segfast.backends.choose(None, x.device) == "cpu"


@pytest.mark.parametrize("call,err,match", [
    (lambda x, t: F.dice_loss(x, t[:, :3]), ValueError, "class-index target"),
    (lambda x, t: F.dice_loss(x, t.float()), ValueError, "dense target"),
    (lambda x, t: F.dice_loss(x.int(), t), TypeError, "input must be"),
    (lambda x, t: F.dice_loss(x, t.short()), TypeError, "uint8/int32/int64"),
    (lambda x, t: F.dice_loss(x, t + 4), ValueError, "outside"),
    (lambda x, t: F.dice_loss(x, t - 1), ValueError, "outside"),
    (lambda x, t: F.dice_loss(x, t, mode="binary"), ValueError, "1 channel"),
    (lambda x, t: F.dice_loss(x[:, :1], t, mode="multiclass"), ValueError, "C >= 2"),
    (lambda x, t: F.dice_loss(x, t, mode="multi"), ValueError, "mode"),
    (lambda x, t: F.dice_loss(x, t, weight=[1, -1, 1, 1]), ValueError, ">= 0"),
    (lambda x, t: F.dice_loss(x, t, weight=[1, 1]), ValueError, "one entry per class"),
    (lambda x, t: F.dice_loss(x, t, reduction="avg"), ValueError, "reduction"),
    (lambda x, t: F.dice_loss(x, t, sync_stats=True), ValueError, "batch=True"),
    (lambda x, t: F.dice_loss(x, t, batch=True, sync_stats=True), RuntimeError, "process group"),
    (lambda x, t: F.dice_loss(x[0], t[0]), ValueError, "class-index target"),
    (lambda x, t: F.dice_loss(x, t.to("meta")), ValueError, "is on"),
    (lambda x, t: F.generalized_dice_loss(x, t, w_type="cube"), ValueError, "w_type"),
    (lambda x, t: F.tversky_loss(x, t, alpha=-1), ValueError, "alpha"),
    (lambda x, t: F.dice_loss(x, t, smooth_nr=-1), ValueError, "smooth"),
])
def test_bad_input_errors(call, err, match):
    x = torch.randn(2, 4, 5, 6)
    t = torch.randint(0, 4, (2, 5, 6))
    with pytest.raises(err, match=match):
        call(x, t)


def test_labels_out_of_range_with_ignore_allowed():
    x = torch.randn(2, 4, 5, 6)
    t = torch.randint(0, 4, (2, 5, 6))
    t[0, 0, 0] = -100
    assert torch.isfinite(F.dice_loss(x, t, ignore_index=-100))
    with pytest.raises(ValueError, match="-100"):
        F.dice_loss(x, t)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_label_range_check(dtype, layout):
    """The CPU label check (one read in segfast._C) finds the same smallest and
    largest non-ignored label as torch: a bad label anywhere (first, last,
    inside), ignore_index as int, integral float or non-integral float, every
    label ignored, strided label maps."""
    from segfast.ops import _common

    g = torch.Generator().manual_seed(0)
    base = torch.randint(0, 5, (3, 37 * 53 * (2 if layout == "strided" else 1)), generator=g).to(dtype)
    t0 = base[:, ::2] if layout == "strided" else base

    def check(t, ign):
        ok = t if ign is None or abs(ign) > 2**62 else torch.where(t == ign, 0, t)
        lo, hi = int(ok.min()), int(ok.max())
        if lo < 0 or hi >= 5:
            with pytest.raises(ValueError, match=f"label {lo if lo < 0 else hi} outside"):
                _common._check_labels(t, 5, ign)
        else:
            _common._check_labels(t, 5, ign)

    for pos in [(0, 0), (2, -1), (1, 700)]:
        for bad in ([5, 200] if dtype == torch.uint8 else [5, -1, 200]):
            t = t0.clone() if layout == "contiguous" else base.clone()[:, ::2]
            t[pos] = bad
            for ign in [None, 200, 200.0, 2.5, 2**70]:
                check(t, ign)
    check(torch.full_like(t0, 7), 7)  # every label ignored: nothing to check
    _common._check_labels(torch.full_like(t0, 7), 5, 7)


def test_empty_batch():
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    t = torch.zeros(0, 4, 4, dtype=torch.int64)
    for reduction in ("sum", "mean"):
        loss = F.dice_loss(x, t, reduction=reduction)
        loss.backward()
        assert loss.item() == 0 and x.grad.shape == x.shape
    assert F.dice_loss(x, t, reduction="none").shape == (0, 3)


# ------------------------------------------------------------------ properties

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(N=st.integers(1, 3), C=st.integers(1, 7), spatial=st.lists(st.integers(1, 9), min_size=1, max_size=3),
       mode=st.sampled_from(["multiclass", "multilabel", "binary"]), ignore=st.booleans(),
       soft=st.booleans(), batch=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_property_cpu_equals_reference(N, C, spatial, mode, ignore, soft, batch, seed):
    """Any shape, mode and target kind: the cpu backend's loss and gradient equal the reference's."""
    if "cpu" not in BACKENDS:
        return
    C = 1 if mode == "binary" else max(C, 2)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, *spatial, generator=g, dtype=torch.float64) * 4
    if soft and mode != "multiclass":
        t = torch.rand(N, C, *spatial, generator=g, dtype=torch.float64)
    else:
        t = torch.randint(0, 2 if mode == "binary" else C, (N, *spatial), generator=g)
    ignore_index = None
    if ignore:
        ignore_index = -1
        t[torch.rand(t.shape, generator=g) < 0.3] = -1
    kw = dict(mode=mode, ignore_index=ignore_index, batch=batch, reduction="none")
    go = torch.rand(C if batch else (N, C), generator=torch.Generator().manual_seed(seed)) + 0.1
    want, want_dx = ref_loss("dice", x, t, go, **kw)
    got, dx = run_loss("dice", x, t, "cpu", go, **kw)
    assert_close(got, want, torch.float64)
    assert_close(dx, want_dx, torch.float64)
