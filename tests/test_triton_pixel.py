"""Parity of the Triton pixel kernels (segfast.triton_kernels.pixel) with the
eager reference segfast.reference.pixel, kernel by kernel.

Every check runs the launcher three times, with the output subsets the ops
use: (loss, dx) for the forward of a mean loss, (map) for reduction "none",
and (go, dx) for its backward; loss partials are compared chunk by chunk, the
map elementwise and dx against torch.autograd in float64.

Without a GPU the kernels run on CPU tensors in the Triton interpreter
(TRITON_INTERPRET=1).
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from conftest import (DEVICE, TRITON_TOL as TOL, close_rel as _close,  # noqa: E402
                      pairwise, triton_needs_run, with_layout)

from segfast.reference import pixel as ref  # noqa: E402
from segfast.triton_kernels import pixel as TP  # noqa: E402

needs_run = triton_needs_run()

CE, FOCAL_SOFTMAX, FUSED, BCE, FOCAL_SIGMOID = 0, 1, 2, 3, 4
SOFTMAX = (CE, FOCAL_SOFTMAX, FUSED)
SIGMOID = (BCE, FOCAL_SIGMOID)

# dx tolerances per dtype: TOL (conftest.TRITON_TOL)
# loss and map are fp32 whatever x's dtype (computed from the rounded inputs)
F32_TOL = (2e-5, 2e-6)

N, S = 2, 7 * 13  # odd S


def make_x(C, dtype=torch.float32, layout="contiguous", gen=None, scale=2.0):
    def rnd(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
    return with_layout(rnd, N, C, S, layout)


def make_labels(C, dtype, ignore, label_offset=0, gen=None):
    lab = torch.randint(0, C, (N, S), generator=gen) + label_offset
    if ignore is not None:
        lab[torch.rand(N, S, generator=gen) < 0.2] = ignore
    return lab.to(dtype)


def make_dense(C, dtype, ignore, kind="soft", gen=None):
    if kind == "soft":
        t = torch.rand(N, C, S, generator=gen, dtype=torch.float64)
        t[torch.rand(N, C, S, generator=gen) < 0.2] = 1.0  # exact 0 / 1 too
        t[torch.rand(N, C, S, generator=gen) < 0.2] = 0.0
    else:  # one-hot
        t = torch.nn.functional.one_hot(torch.randint(0, C, (N, S), generator=gen), C)
        t = t.permute(0, 2, 1).to(torch.float64)
    if ignore is not None:
        t[torch.rand(N, C, S, generator=gen) < 0.2] = ignore
    return t.to(dtype)


def run_and_check(x, t, is_label, kind, P=3, *, label_offset=0, ignore=None, w=None, pw=None,
                  beta=None, gamma=2.0, alpha=0.25, smoothing=0.0, block_s=None, block_c=None,
                  dx_layout="like", ref_ignore="same", nan_grad_is_zero=False):
    N_, C, S_ = x.shape
    dev = DEVICE
    gen = torch.Generator().manual_seed(1234)
    # scale1 multiplies l1 == 0 except for FUSED: still passed, must not matter
    scale0, scale1 = (0.5, 1.5) if kind == FUSED else (0.75, 0.3)
    xd, td = x.to(dev), t.to(dev)
    opt = lambda a: None if a is None else a.float().to(dev)  # noqa: E731
    has_ignore = ignore is not None
    ig = float(ignore) if has_ignore else 0.0
    map_shape = (N_, S_) if kind in SOFTMAX else (N_, C, S_)

    def launch(loss=None, map=None, go=None, dx=None):
        TP.launch_pixel(xd, td, is_label, N_, C, S_, P, kind, label_offset, has_ignore, ig,
                        opt(w), opt(pw), opt(beta), gamma, alpha, smoothing, scale0, scale1,
                        loss, map, go, dx, block_s=block_s, block_c=block_c)

    def new_dx():
        if dx_layout == "like":
            return torch.full_like(xd, float("nan"))
        return torch.full((N_, S_, C), float("nan"), dtype=x.dtype, device=dev).permute(0, 2, 1)

    kw = dict(weight=w, pos_weight=pw, beta=beta, gamma=gamma, alpha=alpha, smoothing=smoothing,
              label_offset=label_offset,
              ignore_value=(ignore if ref_ignore == "same" else ref_ignore))
    xr = x.double().requires_grad_()
    l0, l1, _ = ref.pixel_terms(xr, t, is_label, kind, **{
        k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    want_map = (scale0 * l0 + scale1 * l1).detach()

    # (loss, dx): forward of a mean loss, go = 1
    loss = torch.full((N_, P, 2), float("nan"), device=dev)
    dx = new_dx()
    launch(loss=loss, dx=dx)
    L = TP.chunk_len(S_, P, TP.block_pixels(kind, C, block_s, block_c))  # the launcher's chunk length
    want = torch.zeros(N_, P, 2, dtype=torch.float64)
    for j in range(P):
        lo, hi = min(j * L, S_), min((j + 1) * L, S_)
        for k, lk in enumerate((l0, l1)):
            want[:, j, k] = lk[..., lo:hi].detach().reshape(N_, -1).sum(1)
    _close(loss.cpu(), want, *F32_TOL, "loss chunks")
    (gx,) = torch.autograd.grad((scale0 * l0 + scale1 * l1).sum(), xr, retain_graph=True)
    if nan_grad_is_zero:
        gx = gx.nan_to_num(nan=0.0)
    assert dx.dtype == x.dtype
    _close(dx.cpu(), gx, *TOL[x.dtype], "dx (go = 1)")

    # (map): reduction none
    mp = torch.full(map_shape, float("nan"), device=dev)
    launch(map=mp)
    _close(mp.cpu(), want_map, *F32_TOL, "map")

    # (go, dx): backward of reduction none
    go = torch.randn(map_shape, generator=gen, dtype=torch.float32)
    dx = new_dx()
    launch(go=go.to(dev), dx=dx)
    (gx,) = torch.autograd.grad(((scale0 * l0 + scale1 * l1) * go.double()).sum(), xr)
    if nan_grad_is_zero:
        gx = gx.nan_to_num(nan=0.0)
    _close(dx.cpu(), gx, *TOL[x.dtype], "dx (go)")


def _weights(C, gen, lo=0.5):
    return torch.rand(C, generator=gen, dtype=torch.float64).float() + lo


# --------------------------------------------------------------------------
# every kind, class-index targets
# --------------------------------------------------------------------------

@needs_run
@pytest.mark.parametrize("kind,C", [
    pytest.param(kind, C, marks=pytest.mark.slow if C == 70 and kind in SOFTMAX else ())
    for C in (1, 2, 5, 70) for kind in (CE, FOCAL_SOFTMAX, FUSED, BCE, FOCAL_SIGMOID)])
def test_kinds_labels(kind, C):
    """uint8 labels with ignore 255, class weights, gamma 2, alpha 0.25,
    smoothing 0.1; C = 70 takes the class loop (softmax) / several class chunks
    (the softmax class loop of every kind: test_class_loop_small_chunks)."""
    if C == 1 and kind in SOFTMAX:
        pytest.skip("softmax over one class")
    gen = torch.Generator().manual_seed(10 * C + kind)
    x = make_x(C, gen=gen)
    t = make_labels(C, torch.uint8, 255, gen=gen)
    w = _weights(C, gen)
    pw = _weights(C, gen, lo=1.0) if kind == BCE else None
    run_and_check(x, t, True, kind, P=3, ignore=255, w=w, pw=pw, smoothing=0.1,
                  block_s=32 if C == 70 else None)


@needs_run
@pytest.mark.parametrize("case", [
    dict(kind=CE, dtype=torch.int64, ignore=-100, w=False, smoothing=0.0),
    dict(kind=CE, dtype=torch.int64, ignore=None, w=True, smoothing=0.1),
    dict(kind=CE, dtype=torch.int32, ignore=0, w=True, smoothing=0.1, label_offset=1),
    dict(kind=FOCAL_SOFTMAX, dtype=torch.int64, ignore=-100, w=False, gamma=0.0),
    dict(kind=FOCAL_SOFTMAX, dtype=torch.uint8, ignore=None, w=True, gamma=0.5),
    dict(kind=FUSED, dtype=torch.int64, ignore=-100, w=False, smoothing=0.0),
    dict(kind=FUSED, dtype=torch.uint8, ignore=None, w=True, smoothing=0.1),
    dict(kind=BCE, dtype=torch.int64, ignore=-100, w=False),
    dict(kind=BCE, dtype=torch.uint8, ignore=255, w=True, pw=True, beta=True),
    dict(kind=BCE, dtype=torch.int64, ignore=None, w=False, beta=True),
    dict(kind=BCE, dtype=torch.int32, ignore=0, w=True, pw=True, label_offset=1),
    dict(kind=FOCAL_SIGMOID, dtype=torch.int64, ignore=-100, w=False, gamma=0.0, alpha=-1.0),
    dict(kind=FOCAL_SIGMOID, dtype=torch.uint8, ignore=None, w=True, gamma=0.5, alpha=0.25),
    dict(kind=FOCAL_SIGMOID, dtype=torch.uint8, ignore=255, w=False, gamma=2.0, alpha=-1.0),
])
def test_label_options(case):
    gen = torch.Generator().manual_seed(7)
    kind, C = case["kind"], 5
    off = case.get("label_offset", 0)
    x = make_x(C, gen=gen)
    t = make_labels(C, case["dtype"], case["ignore"], label_offset=off, gen=gen)
    run_and_check(x, t, True, kind, P=3, label_offset=off, ignore=case["ignore"],
                  w=_weights(C, gen) if case["w"] else None,
                  pw=_weights(C, gen, lo=1.0) if case.get("pw") else None,
                  beta=torch.rand(N, generator=gen, dtype=torch.float64).float()
                  if case.get("beta") else None,
                  gamma=case.get("gamma", 2.0), alpha=case.get("alpha", 0.25),
                  smoothing=case.get("smoothing", 0.0))


@needs_run
@pytest.mark.parametrize("kind", [BCE, FOCAL_SIGMOID])
def test_binary_labels(kind):
    """Binary mode: C = 1, labels {0, 1}, label_offset = 1 (label 0 = all-negative
    target, valid), ignore 255."""
    gen = torch.Generator().manual_seed(21)
    x = make_x(1, gen=gen)
    t = (torch.rand(N, S, generator=gen) > 0.6).long()
    t[torch.rand(N, S, generator=gen) < 0.2] = 255
    run_and_check(x, t, True, kind, P=2, label_offset=1, ignore=255)


# --------------------------------------------------------------------------
# dense targets (sigmoid kinds)
# --------------------------------------------------------------------------

@needs_run
@pytest.mark.parametrize("kind,ignore,C", pairwise([BCE, FOCAL_SIGMOID], [None, -1.0], [1, 5, 70]))
def test_dense_soft(kind, ignore, C):
    gen = torch.Generator().manual_seed(100 * C + kind)
    x = make_x(C, gen=gen)
    t = make_dense(C, torch.float32, ignore, gen=gen)
    w = _weights(C, gen) if ignore is None else None
    extra = {}
    if kind == BCE:
        extra = dict(pw=_weights(C, gen, lo=1.0),
                     beta=torch.rand(N, generator=gen, dtype=torch.float64).float())
    else:
        extra = dict(gamma=0.5 if ignore is None else 2.0, alpha=0.25 if C != 5 else -1.0)
    run_and_check(x, t, False, kind, P=3, ignore=ignore, w=w, **extra)


@needs_run
@pytest.mark.parametrize("tdtype", [torch.uint8, torch.bool, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", [BCE, FOCAL_SIGMOID])
def test_dense_target_dtypes(kind, tdtype):
    gen = torch.Generator().manual_seed(11)
    C = 4
    x = make_x(C, gen=gen)
    if tdtype in (torch.uint8, torch.bool):
        t = make_dense(C, torch.float64, None, kind="onehot", gen=gen).to(tdtype)
        ignore = None
    else:
        t = make_dense(C, tdtype, -1.0, gen=gen)
        ignore = -1.0
    run_and_check(x, t, False, kind, P=2, ignore=ignore)


# --------------------------------------------------------------------------
# chunks, layouts, dtypes, edge values
# --------------------------------------------------------------------------

@needs_run
@pytest.mark.parametrize("P", [1, 3, 12])
@pytest.mark.parametrize("kind", [FUSED, FOCAL_SIGMOID])
def test_chunks_multi_block(kind, P):
    """block_s=16: several pixel blocks per chunk (P = 1, 3) and more chunks
    than pixel blocks, the empty ones zeros (P = 12: L = 16, chunks 6.. empty)."""
    gen = torch.Generator().manual_seed(P + kind)
    C = 5
    x = make_x(C, gen=gen)
    t = make_labels(C, torch.int64, 255, gen=gen)
    run_and_check(x, t, True, kind, P=P, ignore=255, block_s=16, smoothing=0.1)


@needs_run
@pytest.mark.parametrize("kind", [CE, FOCAL_SOFTMAX, FUSED])
def test_class_loop_small_chunks(kind):
    """Softmax class loop with the class chunks not dividing C, forced on C = 37
    (block_c = 8), channels_last x."""
    gen = torch.Generator().manual_seed(37 + kind)
    C = 37
    x = make_x(C, layout="channels_last", gen=gen)
    t = make_labels(C, torch.int64, -100, gen=gen)
    run_and_check(x, t, True, kind, P=2, ignore=-100, w=_weights(C, gen), smoothing=0.1,
                  gamma=0.5, block_c=8, block_s=32)


@needs_run
@pytest.mark.parametrize("layout", ["slice", "channels_last", "sliced_c"])
@pytest.mark.parametrize("kind", [CE, FUSED, BCE, FOCAL_SIGMOID])
def test_noncontiguous(layout, kind):
    gen = torch.Generator().manual_seed(5)
    C = 5
    x = make_x(C, layout=layout, gen=gen)
    assert not x.is_contiguous()
    t = make_labels(C, torch.int64, 255, gen=gen)
    t = torch.cat([t, t], 1)[:, ::2]  # strided labels
    run_and_check(x, t, True, kind, P=3, ignore=255, dx_layout="transposed")
    if kind in SIGMOID:
        td = make_dense(C, torch.float32, None, gen=gen).permute(0, 2, 1).contiguous()
        run_and_check(x, td.permute(0, 2, 1), False, kind, P=1)


@needs_run
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", [CE, FOCAL_SOFTMAX, FUSED, BCE, FOCAL_SIGMOID])
def test_low_precision(kind, dtype):
    gen = torch.Generator().manual_seed(9)
    C = 5
    x = make_x(C, dtype, gen=gen)
    t = make_labels(C, torch.int64, 255, gen=gen)
    run_and_check(x, t, True, kind, P=3, ignore=255, w=_weights(C, gen), smoothing=0.1)
    if kind in SIGMOID:
        td = make_dense(C, dtype, -1.0, gen=gen)
        run_and_check(x, td, False, kind, P=1, ignore=-1.0)


@needs_run
@pytest.mark.parametrize("kind,gamma", [  # gamma is read by the focal kinds only
    pytest.param(kind, gamma, marks=() if gamma == 2.0 or kind in (FOCAL_SOFTMAX, FOCAL_SIGMOID) else pytest.mark.slow)
    for kind in (CE, FOCAL_SOFTMAX, FUSED, BCE, FOCAL_SIGMOID) for gamma in (0.0, 0.5, 2.0)])
def test_extreme_logits(kind, gamma):
    """|x| up to ~100: p_y == 1 exactly, tiny 1 - p_t, softplus tails; finite
    everywhere and equal to the float64 reference. Where 1 - p == 0 exactly
    in float64, autograd's (1 - p)^gamma with gamma < 1 gives 0 * inf = NaN;
    the limit there is 0 (the kernels drop the (1-p)^(gamma-1) term at 0)."""
    gen = torch.Generator().manual_seed(3)
    C = 5
    x = make_x(C, gen=gen, scale=30.0)
    x[0, :, :5] = torch.tensor([100.0, -100.0, 0.0, 50.0, -50.0])[:, None]
    t = make_labels(C, torch.int64, None, gen=gen)
    t[0, :5] = 0
    nz = 0.0 < gamma < 1.0
    run_and_check(x, t, True, kind, P=2, gamma=gamma, smoothing=0.1, nan_grad_is_zero=nz)
    if kind in SIGMOID:
        td = make_dense(C, torch.float32, None, kind="onehot", gen=gen)
        run_and_check(x, td, False, kind, P=2, gamma=gamma, nan_grad_is_zero=nz)


@needs_run
@pytest.mark.parametrize("kind", [CE, FOCAL_SOFTMAX, FUSED, BCE, FOCAL_SIGMOID])
def test_out_of_range_labels_invalid(kind):
    """Non-ignored labels outside [offset, offset + C): softmax kinds never use
    them as an index, they count as ignored (the Python layer rejects them
    anyway); sigmoid kinds take them as valid all-zero targets (reference)."""
    gen = torch.Generator().manual_seed(2)
    C = 5
    x = make_x(C, gen=gen)
    t = make_labels(C, torch.int64, 255, label_offset=1, gen=gen)
    bad = torch.rand(N, S, generator=gen) < 0.2
    t = torch.where(bad, torch.where(torch.rand(N, S, generator=gen) < 0.5, 0, C + 1), t)
    t_ref = torch.where(bad, 255, t) if kind in SOFTMAX else t
    xd = x.to(DEVICE)
    mp = torch.full((N, S) if kind in SOFTMAX else (N, C, S), float("nan"), device=DEVICE)
    dx = torch.full_like(xd, float("nan"))
    loss = torch.full((N, 2, 2), float("nan"), device=DEVICE)
    TP.launch_pixel(xd, t.to(DEVICE), True, N, C, S, 2, kind, 1, True, 255.0, None, None, None,
                    2.0, 0.25, 0.0, 1.0, 1.0, loss, mp, None, dx)
    xr = x.double().requires_grad_()
    l0, l1, _ = ref.pixel_terms(xr, t_ref, True, kind, label_offset=1, ignore_value=255)
    _close(mp.cpu(), (l0 + l1).detach(), *F32_TOL, "map")
    (gx,) = torch.autograd.grad((l0 + l1).sum(), xr)
    _close(dx.cpu(), gx, *TOL[torch.float32], "dx")
    _close(loss.sum((1, 2)).cpu(), (l0 + l1).detach().reshape(N, -1).sum(1), *F32_TOL, "loss")


@needs_run
def test_empty_and_nothing_wanted():
    x = torch.randn(N, 3, 0, device=DEVICE)
    t = torch.zeros(N, 0, dtype=torch.int64, device=DEVICE)
    loss = torch.full((N, 2, 2), float("nan"), device=DEVICE)
    TP.launch_pixel(x, t, True, N, 3, 0, 2, CE, 0, False, 0.0, None, None, None,
                    2.0, 0.25, 0.0, 1.0, 0.0, loss, None, None, None)
    assert (loss == 0).all()
    # no output wanted: no launch, no error
    TP.launch_pixel(x, t, True, N, 3, 0, 2, CE, 0, False, 0.0, None, None, None,
                    2.0, 0.25, 0.0, 1.0, 0.0, None, None, None, None)


@needs_run
def test_through_triton_op():
    """The launcher works inside a torch.library.triton_op (eager)."""
    from torch.library import triton_op

    @triton_op("segfast_test_triton_pixel::ce_loss_grad", mutates_args={})
    def ce_op(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        N_, C, S_ = x.shape
        loss = torch.empty((N_, 2, 2), device=x.device, dtype=torch.float32)
        dx = torch.empty_like(x)
        TP.launch_pixel(x, t, True, N_, C, S_, 2, CE, 0, True, 255.0, None, None, None,
                        2.0, 0.25, 0.0, 1.0, 0.0, loss, None, None, dx)
        return loss.sum((1, 2)), dx

    gen = torch.Generator().manual_seed(1)
    x = make_x(3, gen=gen)
    t = make_labels(3, torch.int64, 255, gen=gen)
    loss, dx = ce_op(x.to(DEVICE), t.to(DEVICE))
    xr = x.double().requires_grad_()
    l0, _, _ = ref.pixel_terms(xr, t, True, CE, ignore_value=255)
    (gx,) = torch.autograd.grad(l0.sum(), xr)
    _close(loss.cpu(), l0.detach().sum(1), *F32_TOL, "loss")
    _close(dx.cpu(), gx, *TOL[torch.float32], "dx")


@needs_run
@pytest.mark.parametrize("norm", [0, 1, 2])
@pytest.mark.parametrize("kind", SOFTMAX)
def test_reduced_in_kernel(kind, norm):
    """``out``: the loss divided by its normalizer (NORM_SUM 1, NORM_COUNT the
    valid pixels, NORM_WEIGHT their summed w_y), summed by the last program of
    the launch; the ticket counter is zero again afterwards; a 0-d ``go``
    with ``den`` scales dx by go / den; a non-ignored label out of range
    makes the loss, the normalizer and then the gradient NaN."""
    gen = torch.Generator().manual_seed(30 + kind + 3 * norm)
    C, P = 5, 3
    x = make_x(C, gen=gen)
    t = make_labels(C, torch.int64, -100, gen=gen)
    w = _weights(C, gen)
    smoothing = 0.0 if kind == FOCAL_SOFTMAX else 0.1
    scale0, scale1 = (0.5, 1.5) if kind == FUSED else (0.75, 0.0)
    xd, td, wd = x.to(DEVICE), t.to(DEVICE), w.to(DEVICE)
    cnt = torch.zeros(1, dtype=torch.int32, device=DEVICE)  # the ticket counter: reset by each launch's last program

    def forward(labels):
        ws = torch.full((N * P * 4,), float("nan"), device=DEVICE)
        out = torch.full((), float("nan"), device=DEVICE)
        den = torch.full((), float("nan"), device=DEVICE)
        TP.launch_pixel(xd, labels, True, N, C, S, P, kind, 0, True, -100.0, wd, None, None, 2.0, 0.25,
                        smoothing, scale0, scale1, ws, None, None, None, out=out, den=den, norm=norm,
                        counter=cnt)
        return out, den

    out, den = forward(td)
    xr = x.double().requires_grad_()
    l0, l1, _ = ref.pixel_terms(xr, t, True, kind, weight=w.double(), gamma=2.0, smoothing=smoothing,
                                ignore_value=-100)
    valid = t != -100
    want_den = {0: torch.tensor(1.0, dtype=torch.float64), 1: valid.sum().double(),
                2: w.double()[t.clamp(0)][valid].sum()}[norm]
    want = (scale0 * l0 + scale1 * l1).sum() / want_den
    _close(out.cpu(), want.detach(), *F32_TOL, "loss")
    _close(den.cpu(), want_den, *F32_TOL, "normalizer")
    assert int(cnt[0]) == 0

    dx = torch.full_like(xd, float("nan"))
    TP.launch_pixel(xd, td, True, N, C, S, 1, kind, 0, True, -100.0, wd, None, None, 2.0, 0.25,
                    smoothing, scale0, scale1, None, None, torch.tensor(0.7, device=DEVICE), dx, den=den)
    (gx,) = torch.autograd.grad(want * 0.7, xr)
    _close(dx.cpu(), gx, *TOL[torch.float32], "dx (go / den)")

    bad = t.clone()
    bad[1, 3] = C
    out, den = forward(bad.to(DEVICE))
    assert out.isnan() and den.isnan()
    assert int(cnt[0]) == 0


@needs_run
@pytest.mark.parametrize("norm", [0, 1])
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("kind", SIGMOID)
def test_reduced_in_kernel_sigmoid(kind, dense, norm):
    """The sigmoid kinds reduce in the launch too: ``out`` = the loss over the
    valid elements (NORM_COUNT) or their sum, ``den`` the count; the counter
    is zero afterwards; a 0-d ``go`` with ``den`` scales dx by go / den; a
    label out of [0, label_offset + C) that is not ignored makes the loss,
    the normalizer and the gradient NaN."""
    gen = torch.Generator().manual_seed(50 + kind + 3 * norm + 7 * dense)
    C, P = 5, 3
    x = make_x(C, gen=gen)
    ignore = -1.0 if dense else 255
    t = make_dense(C, torch.float32, ignore, gen=gen) if dense else make_labels(C, torch.int64, ignore, gen=gen)
    w = _weights(C, gen)
    pw = _weights(C, gen, lo=1.0) if kind == BCE else None
    beta = torch.rand(N, generator=gen, dtype=torch.float64).float() if kind == BCE else None
    scale0 = 0.75
    xd, td = x.to(DEVICE), t.to(DEVICE)
    opt = lambda a: None if a is None else a.to(DEVICE)  # noqa: E731
    cnt = torch.zeros(1, dtype=torch.int32, device=DEVICE)

    def forward(target):
        ws = torch.full((N * P * 4,), float("nan"), device=DEVICE)
        out = torch.full((), float("nan"), device=DEVICE)
        den = torch.full((), float("nan"), device=DEVICE)
        TP.launch_pixel(xd, target, not dense, N, C, S, P, kind, 0, True, float(ignore), opt(w), opt(pw),
                        opt(beta), 2.0, 0.25, 0.0, scale0, 0.0, ws, None, None, None, out=out, den=den, norm=norm,
                        counter=cnt)
        return out, den

    out, den = forward(td)
    xr = x.double().requires_grad_()
    l0, _, _ = ref.pixel_terms(xr, t, not dense, kind, weight=w.double(),
                               pos_weight=None if pw is None else pw.double(),
                               beta=None if beta is None else beta.double(), gamma=2.0, alpha=0.25,
                               ignore_value=ignore)
    valid = (t != ignore).double()
    want_den = torch.tensor(1.0, dtype=torch.float64) if norm == 0 else valid.sum() * (1 if dense else C)
    want = scale0 * l0.sum() / want_den
    _close(out.cpu(), want.detach(), *F32_TOL, "loss")
    _close(den.cpu(), want_den, *F32_TOL, "normalizer")
    assert int(cnt[0]) == 0

    dx = torch.full_like(xd, float("nan"))
    TP.launch_pixel(xd, td, not dense, N, C, S, 1, kind, 0, True, float(ignore), opt(w), opt(pw), opt(beta),
                    2.0, 0.25, 0.0, scale0, 0.0, None, None, torch.tensor(0.7, device=DEVICE), dx, den=den)
    (gx,) = torch.autograd.grad(want * 0.7, xr)
    _close(dx.cpu(), gx, *TOL[torch.float32], "dx (go / den)")

    if not dense:
        bad = t.clone()
        bad[1, 3] = C
        out, den = forward(bad.to(DEVICE))
        assert out.isnan() and den.isnan()
        assert int(cnt[0]) == 0
