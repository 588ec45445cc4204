"""The fused region-loss path of the triton and cuda backends
(ops.region.finish_loss): the stats kernel, the finish kernel (loss and
dLoss/dStats in one program / block) and the grad kernel reading grad_output
on the device, against the torch formulas of segfast.functional on the eager
reference sums (backend="torch", float64); the label range flag of the stats
kernel and its device-side assertion; torch.compile(fullgraph=True) of the op.
The cuda backend runs on the CPU emulation layer (segfast._C_emu)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from conftest import kernel_backends  # noqa: E402

from segfast import functional as F  # noqa: E402
from segfast.ops import _common  # noqa: E402
from segfast.ops import region as R  # noqa: E402

_usable = kernel_backends()
needs_triton = pytest.mark.skipif("triton" not in _usable, reason="needs TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif("cuda" not in _usable, reason="segfast._C_emu is not built (SEGFAST_CUDA_EMU=ON)")
BACKENDS = [pytest.param("triton", marks=needs_triton), pytest.param("cuda", marks=needs_cuda)]
LOSS_OP = {"triton": "region_loss_triton_op", "cuda": "region_loss_cuda_op"}


def _case(N=2, C=4, spatial=(5, 6), ignore=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, *spatial, generator=g) * 2
    y = torch.randint(0, C, (N, *spatial), generator=g)
    if ignore is not None:
        y[torch.rand(y.shape, generator=g) < 0.2] = ignore
    return x, y


def _run(fn, x, y, backend, go=None, **kw):
    x = (x.double() if backend == "torch" else x).detach().clone().requires_grad_(True)
    loss = fn(x, y, backend=backend, **kw)
    loss.backward(torch.ones_like(loss) if go is None else go.to(loss.dtype))
    return loss.detach(), x.grad


def _fused_calls(monkeypatch, backend):
    """Counts the calls of the fused op (so a test fails when its case falls back to torch)."""
    seen = []
    op = getattr(R, LOSS_OP[backend])

    def spy(*args):
        seen.append(args[-1])
        return op(*args)
    monkeypatch.setattr(R, LOSS_OP[backend], spy)
    return seen


def _assert_matches(fn, x, y, monkeypatch, backend, go=None, rtol=2e-5, **kw):
    seen = _fused_calls(monkeypatch, backend)
    got, gx = _run(fn, x, y, backend, go, **kw)
    assert len(seen) == 1, "the fused path did not run"
    want, wx = _run(fn, x, y, "torch", go, **kw)
    assert gx.dtype == x.dtype and gx.shape == x.shape
    torch.testing.assert_close(got.double(), want, rtol=rtol, atol=1e-6)
    torch.testing.assert_close(gx.double(), wx, rtol=10 * rtol, atol=rtol / 10 * max(1.0, float(wx.abs().max())))


REGION = [
    (F.dice_loss, {}),
    (F.dice_loss, dict(batch=True, reduction="sum", smooth_nr=0.0, smooth_dr=0.0)),
    (F.dice_loss, dict(weight=[0.5, 1.0, 2.0, 0.0], include_background=False, log_loss=True)),
    (F.dice_loss, dict(mode="multilabel", ignore_index=3)),
    (F.jaccard_loss, dict(batch=True)),
    (F.jaccard_loss, dict(log_loss=True, reduction="sum", include_background=False)),
    (F.tversky_loss, dict(alpha=0.3, beta=0.7)),
    (F.tversky_loss, dict(alpha=0.7, beta=0.3, gamma=1.5, batch=True, weight=[1.0, 2.0, 3.0, 4.0])),
    (F.generalized_dice_loss, {}),
    (F.generalized_dice_loss, dict(w_type="simple", batch=True, include_background=False)),
    (F.generalized_dice_loss, dict(w_type="uniform", log_loss=True, reduction="sum", weight=[1.0, 0.5, 2.0, 1.0])),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn,kw", REGION, ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_region_losses_match_torch_formulas(fn, kw, monkeypatch, backend):
    x, y = _case(ignore=kw.get("ignore_index"))
    if kw.get("mode") == "multilabel":
        y = torch.nn.functional.one_hot(y.clamp(0, 3), 4).movedim(-1, 1).float()
    _assert_matches(fn, x, y, monkeypatch, backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_absent_class_and_empty_planes(monkeypatch, backend):
    """Classes absent from an image (generalized Dice: infinite weights), and
    planes with a zero denominator (no smoothing: score 1)."""
    x, y = _case(C=5, seed=3)
    y[y == 2] = 0
    _assert_matches(F.generalized_dice_loss, x, y, monkeypatch, backend)
    _assert_matches(F.dice_loss, torch.full_like(x, -30.0), y, monkeypatch, backend, mode="multilabel",
                    smooth_nr=0.0, smooth_dr=0.0)


PIXEL = [
    (F.dice_ce_loss, {}),
    (F.dice_ce_loss, dict(ignore_index=255, ce_weight=[1.0, 2.0, 0.5, 1.0], label_smoothing=0.1,
                          lambda_dice=0.3, lambda_ce=2.0, batch=True)),
    (F.dice_ce_loss, dict(include_background=False, reduction="sum", weight=[1.0, 1.0, 2.0, 3.0])),
    (F.dice_focal_loss, dict(gamma=2.0, alpha=[0.25, 0.5, 0.75, 1.0], ignore_index=255)),
    (F.dice_focal_loss, dict(gamma=0.0, lambda_focal=0.5, alpha=0.3, weight=2.0)),  # scalar weights
    (F.dice_fused_loss, dict(ws=0.3, wp=0.7, ignore_index=255)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn,kw", PIXEL, ids=lambda v: getattr(v, "__name__", None) or str(v))
def test_region_plus_pixel_term_match_torch_formulas(fn, kw, monkeypatch, backend):
    x, y = _case(ignore=kw.get("ignore_index"))
    _assert_matches(fn, x, y, monkeypatch, backend, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_ignored_batch(monkeypatch, backend):
    """No valid pixel: the pixel term's mean is 0, the Dice planes score 1 / smooth."""
    x, y = _case()
    y[:] = 255
    _assert_matches(F.dice_ce_loss, x, y, monkeypatch, backend, ignore_index=255)


@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_output_read_on_device(monkeypatch, backend):
    x, y = _case()
    _assert_matches(F.dice_ce_loss, x, y, monkeypatch, backend, go=torch.tensor(-2.5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_logit_gives_nan(backend):
    x, y = _case()
    x[0, 1, 2, 3] = float("nan")
    x.requires_grad_(True)
    loss = F.dice_ce_loss(x, y, backend=backend)
    loss.backward()
    assert loss.isnan() and x.grad[0].isnan().any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(reduction="none"), dict(batch=True, sync_stats=False, weight=None)])
def test_fallbacks_still_agree(kw, backend):
    x, y = _case()
    got, gx = _run(F.dice_loss, x, y, backend, **kw)
    want, wx = _run(F.dice_loss, x, y, "torch", **kw)
    torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(gx.double(), wx, rtol=2e-4, atol=1e-6)


# ------------------------------------------------------------------ label flag


@needs_triton
def test_stats_kernel_label_flag():
    from segfast.triton_kernels import region as tk
    x, y = _case(N=2, C=3, spatial=(40,))
    for labels, ignore, bad in ((y, None, False), (torch.where(y == 1, 7, y), None, True),
                                (torch.where(y == 1, 7, y), 7.0, False), (torch.where(y == 1, -1, y), None, True)):
        for block_c in (None, 2):  # one class tile, and the class loop
            out = torch.empty(2, 2, 3, 7)
            flag = torch.zeros(1, dtype=torch.int32)
            tk.launch_stats(x, labels, True, out, 2, 3, 40, 2, 2, 0, ignore is not None, ignore or 0.0,
                            flag=flag, block_s=16, block_c=block_c)
            assert bool(flag) == bad, (labels, ignore, block_c)


CALLS = {
    "dice": lambda x, y, b: F.dice_loss(x, y, backend=b),
    "dice_ce": lambda x, y, b: F.dice_ce_loss(x, y, ignore_index=255, backend=b),
    "none": lambda x, y, b: F.dice_loss(x, y, reduction="none", backend=b),  # the stats op, then torch formulas
    "stats": lambda x, y, b: F.region_stats(x, y, backend=b),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_bad_label_asserted_on_device(call, monkeypatch, backend):
    """With device-side checks (as on CUDA) the labels are not read on the host:
    the stats kernel flags them and one _assert_async raises (here, on CPU
    tensors, at once). The cuda backend's paths without the finish kernel
    check with torch ops on the device instead."""
    monkeypatch.setattr(_common, "host_checks", lambda device: False)
    x, y = _case()
    y[1, 2, 3] = 4
    reads = []
    real = _common._check_labels
    monkeypatch.setattr(_common, "_check_labels", lambda *a: reads.append(a) or real(*a))
    with pytest.raises(RuntimeError, match=r"target \(shape \(2, 30\)\) has a label outside \[0, 4\)"):
        CALLS[call](x, y, backend)
    assert len(reads) == (1 if backend == "cuda" and call in ("none", "stats") else 0)
    y[1, 2, 3] = 255  # ignored where ignore_index=255 is passed, else out of range
    y[0, 0, 0] = 3
    CALLS[call](x, y.clamp_max(3), backend)


# ------------------------------------------------------------------ torch.compile


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fake-tensor tracing of triton_ops needs real Triton "
                    "launches (the interpreter reads data pointers)")
def test_compile_fullgraph_fused_op():
    """The fused op compiles with fullgraph=True and gives the eager loss and
    gradient (backends.choose is not traceable in the interpreter: the test
    calls the op)."""
    torch._dynamo.reset()
    x, y = _case()
    x = x.flatten(2).cuda()
    y = y.flatten(1).cuda()
    fp = [2.0, 0.0, 1.0, 1.0, 1e-5, 1e-5, 1.0, 1.0, 1.0 / 8, 1.0, 0.1, 0.0, 0.0]

    def step(x, y):
        loss, _ = R.region_loss_triton_op(x, y, None, None, True, 2, 0, None, 1, 0.0, fp, [0, 0, 0, 0], "")
        return loss

    xe = x.clone().requires_grad_(True)
    want = step(xe, y)
    want.backward()
    xc = x.clone().requires_grad_(True)
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(xc, y)
    got.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(xc.grad, xe.grad)
    ref = F.dice_ce_loss(x.double(), y, label_smoothing=0.1, backend="torch")
    torch.testing.assert_close(got.double(), ref.detach(), rtol=2e-5, atol=1e-6)


@needs_triton
def test_opcheck_fused_op():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x, y = _case()
    x, y = x.flatten(2).to(dev).requires_grad_(True), y.flatten(1).to(dev)
    # the interpreter dereferences FakeTensors: the fake-tensor checks need a GPU
    utils = (("test_schema", "test_autograd_registration") if dev == "cpu"
             else ("test_schema", "test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"))
    fp = [1.0, -1.0, 1.0, 1.0, 1e-5, 1e-5, 1.0, 0.5, 1.0, 2.0, 0.0, 0.0, 0.0]
    w = torch.rand(4, device=dev)
    torch.library.opcheck(R.region_loss_triton_op, (x, y, w, w, True, 2, 0, 3.0, 1, 0.0, fp, [0, 1, 1, 1], "bad"),
                          test_utils=utils)
    torch.library.opcheck(R.region_loss_triton_op, (x, y, None, None, True, 2, 0, None, 0, 0.0, fp, [1, 0, 0, 0], ""),
                          test_utils=utils)
    torch.library.opcheck(R.region_stats_triton_op, (x, y, True, 2, 0, None, 0, 0.0, "bad"), test_utils=utils)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(), dict(gamma=2.0), dict(log_loss=True)])
def test_nan_logit_gives_nan_score(kw, backend):
    """NaN in, NaN out through the finish kernel's score transforms (the power
    of the focal Tversky form and the log of log_loss must not clamp a NaN)."""
    x = torch.tensor([[[float("nan")], [0.3]]])
    t = torch.softmax(torch.randn(1, 2, 1, generator=torch.Generator().manual_seed(0)), 1)
    assert torch.isnan(F.tversky_loss(x, t, backend=backend, **kw))


# ------------------------------------------------------------------ cuda: dtypes, layouts, confusion



@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_cuda_dtypes(monkeypatch, dtype):
    """Half inputs (float32 sums and loss, the gradient in the input's dtype) and
    float64 (a float64 finish kernel)."""
    x, y = _case(ignore=255)
    x = x.to(dtype)
    rtol = {torch.float64: 1e-10, torch.float16: 4e-4, torch.bfloat16: 1e-3}[dtype]  # the gradient's rounding
    _assert_matches(F.dice_ce_loss, x, y, monkeypatch, "cuda", go=torch.tensor(0.75), rtol=rtol, ignore_index=255)
    got = F.dice_loss(x, y, ignore_index=255, backend="cuda")
    assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@needs_cuda
def test_cuda_noncontiguous(monkeypatch):
    x, y = _case(C=5, spatial=(6, 8), ignore=255)
    x = x.to(memory_format=torch.channels_last)[..., ::2]
    y = y[..., ::2]
    assert not x.is_contiguous() and not y.is_contiguous()
    _assert_matches(F.dice_focal_loss, x, y, monkeypatch, "cuda", go=torch.tensor(3.0), gamma=2.0, ignore_index=255)


@needs_cuda
def test_cuda_many_classes(monkeypatch):
    """More classes than a warp, the chunk sums of several pixel tiles per image."""
    x, y = _case(N=1, C=70, spatial=(40, 60), seed=7)
    _assert_matches(F.generalized_dice_loss, x, y, monkeypatch, "cuda", rtol=1e-4)
    _assert_matches(F.dice_loss, x, y, monkeypatch, "cuda", rtol=1e-4, include_background=False)


@needs_cuda
def test_cuda_confusion_counts_from_the_finish_path(monkeypatch):
    """confusion= on the cuda finish path: the counts of its stats pass, and the
    loss bit for bit the one without counting."""
    x, y = _case(C=4, ignore=255)
    seen = _fused_calls(monkeypatch, "cuda")
    conf = torch.full((4, 4), 3, dtype=torch.int64)
    got = F.dice_ce_loss(x, y, ignore_index=255, backend="cuda", confusion=conf)
    plain = F.dice_ce_loss(x, y, ignore_index=255, backend="cuda")
    assert seen == [True, False]
    ok = y != 255
    want = torch.bincount((y * 4 + x.argmax(1))[ok], minlength=16).view(4, 4) + 3
    assert torch.equal(conf, want)
    assert torch.equal(got, plain)


@needs_cuda
def test_cuda_finish_max_c_matches_the_module():
    from segfast import backends
    assert backends._C_emu.cuda.REGION_FINISH_MAX_C == R.CUDA_FINISH_MAX_C


@needs_cuda
@pytest.mark.slow
def test_cuda_ops_opcheck_and_compile():
    """region_loss_cuda / region_grad_go_cuda as torch.library ops: opcheck, and
    one graph under torch.compile(fullgraph=True) with the eager loss and
    gradient (on the emulator's CPU tensors)."""
    x, y = _case()
    x, y = x.flatten(2), y.flatten(1)
    fp = [2.0, 0.0, 1.0, 1.0, 1e-5, 1e-5, 1.0, 1.0, 1.0 / 8, 1.0, 0.1, 0.0, 0.0]
    w = torch.rand(4)
    for args in ((x.requires_grad_(True), y, w, w, True, 2, 0, 3.0, 1, 0.0, fp, [0, 1, 1, 1], "bad", True),
                 (x, y, None, None, True, 2, 0, None, 0, 0.0, fp, [1, 0, 0, 0], "")):
        torch.library.opcheck(R.region_loss_cuda_op, args)

    def step(x, y):
        return R.region_loss_cuda_op(x, y, None, None, True, 2, 0, None, 1, 0.0, fp, [0, 0, 0, 0], "")[0]

    torch._dynamo.reset()
    xe, xc = x.detach().clone().requires_grad_(True), x.detach().clone().requires_grad_(True)
    want = step(xe, y)
    want.backward()
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(xc, y)
    got.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(xc.grad, xe.grad)
    ref = F.dice_ce_loss(x.detach().double(), y, label_smoothing=0.1, backend="torch")
    torch.testing.assert_close(got.double(), ref, rtol=2e-5, atol=1e-6)
