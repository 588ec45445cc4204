"""The confusion counts a region loss adds from its own statistics pass
(``confusion=`` of dice_loss and the other region losses): on every backend
they equal ``torch.bincount(t*C + x.argmax(1))`` over the valid pixels, and
the loss and its gradient are those without the option."""

from __future__ import annotations

import pytest
import torch

import segfast
from segfast import backends
from segfast import functional as F
from segfast.metrics import ConfusionMatrix
from segfast.ops import region as _region

from conftest import kernel_backends, with_layout

BACKENDS = kernel_backends() + ["torch"]
IGN = 255

LOSSES = {
    "region_stats": lambda x, t, **kw: F.region_stats(x, t, **kw).sum(),
    "dice_loss": F.dice_loss,
    "jaccard_loss": F.jaccard_loss,
    "tversky_loss": lambda x, t, **kw: F.tversky_loss(x, t, alpha=0.3, beta=0.7, **kw),
    "generalized_dice_loss": F.generalized_dice_loss,
    "dice_ce_loss": F.dice_ce_loss,
    "dice_focal_loss": F.dice_focal_loss,
    "dice_fused_loss": F.dice_fused_loss,
}


def reference(x: torch.Tensor, t: torch.Tensor, C: int, ignore_index=None) -> torch.Tensor:
    """The definition: bincount of t*C + argmax over the pixels whose label is not ignore_index."""
    p = x.float().argmax(1).reshape(-1) if x.dtype != torch.float64 else x.argmax(1).reshape(-1)
    t = t.reshape(-1).long()
    keep = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    return torch.bincount(t[keep] * C + p[keep], minlength=C * C).reshape(C, C)


def logits(N, C, S, dtype=torch.float32, layout="contiguous", ties=True, nan=True):
    """[N, C, S] logits with many ties (small integers) and a few NaNs (one column all NaN)."""
    def rnd(*shape):
        r = torch.randint(-2, 3, shape).float() if ties else torch.randn(*shape)
        return r.to(dtype)
    x = with_layout(rnd, N, C, S, layout)
    if nan and x.numel():
        x[0, C // 2, S // 3] = float("nan")
        x[-1, :, S - 1] = float("nan")
        x[-1, 0, 0] = float("-inf")
    return x


def labels(N, S, C, ignore=True):
    t = torch.randint(0, C, (N, S))
    if ignore and t.numel():
        t[torch.rand(N, S) < 0.2] = IGN
    return t


def _dtype_ok(backend, dtype):
    return not (backend == "triton" and dtype == torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LOSSES))
def test_counts_equal_argmax_bincount(backend, name):
    N, C, H, W = 2, 5, 7, 9
    x = logits(N, C, H * W).reshape(N, C, H, W)
    t = labels(N, H * W, C).reshape(N, H, W)
    cm = torch.zeros(C, C, dtype=torch.int64)
    LOSSES[name](x, t, ignore_index=IGN, backend=backend, confusion=cm)
    torch.testing.assert_close(cm, reference(x, t, C, IGN), rtol=0, atol=0)
    LOSSES[name](x, t, ignore_index=IGN, backend=backend, confusion=cm)  # adds
    torch.testing.assert_close(cm, 2 * reference(x, t, C, IGN), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "slice", "sliced_c"])
def test_dtypes_and_layouts(backend, dtype, layout):
    if not _dtype_ok(backend, dtype):
        pytest.skip("the triton backend refuses float64")
    N, C, S = 3, 6, 37
    x = logits(N, C, S, dtype, layout)
    t = labels(N, S, C)
    cm = torch.zeros(C, C, dtype=torch.int64)
    F.dice_loss(x, t, ignore_index=IGN, backend=backend, confusion=cm)
    torch.testing.assert_close(cm, reference(x, t, C, IGN), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_ties_many_pixels(backend):
    """Distinct logits (no ties), more pixels than a tile, no ignore_index, uint8 / int32 labels."""
    N, C, S = 2, 4, 3000
    x = torch.randn(N, C, S)
    for dt in (torch.uint8, torch.int32):
        t = torch.randint(0, C, (N, S), dtype=dt)
        cm = torch.zeros(C, C, dtype=torch.int64)
        F.jaccard_loss(x, t, backend=backend, confusion=cm)
        torch.testing.assert_close(cm, reference(x, t, C), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("C", [3, 21, 40])
def test_whole_tiles_ties_nan_inf(backend, C):
    """Many pixels per image (whole tiles, the cpu kernel's grouped blocks), tied logits,
    NaN and +-inf inside whole blocks, and blocks whose logits lie beyond the range of
    the cpu kernel's single-read softmax (which then takes the shifted one)."""
    N, S = 2, 1500
    x = logits(N, C, S)
    x[0, C // 2, 500] = float("nan")
    x[1, C - 1, 700:720] = float("nan")
    x[0, :, 600] = float("-inf")
    x[1, 0, 300] = x[1, C - 1, 300] = float("inf")
    x[0, :, 200:264] += 100.0
    x[1, :, 900:1000] -= 40.0
    x[1, 1, 950] = float("nan")
    t = labels(N, S, C)
    cm = torch.zeros(C, C, dtype=torch.int64)
    F.dice_loss(x, t, ignore_index=IGN, backend=backend, confusion=cm)
    torch.testing.assert_close(cm, reference(x, t, C, IGN), rtol=0, atol=0)


@pytest.mark.parametrize("C", [70, 1030])
def test_many_classes_cpu(C):
    """C x C tables larger than the interleaved per-thread copies, and larger than any per-thread table."""
    x = logits(2, C, 50, ties=False)
    t = labels(2, 50, C)
    cm = torch.zeros(C, C, dtype=torch.int64)
    F.dice_loss(x, t, ignore_index=IGN, backend="cpu", confusion=cm)
    torch.testing.assert_close(cm, reference(x, t, C, IGN), rtol=0, atol=0)


def test_threads_cpu(monkeypatch):
    """Several OpenMP threads add their counts to one table."""
    monkeypatch.setattr(backends, "cpu_threads", lambda numel=None: 4)
    N, C, S = 8, 21, 4096
    x, t = logits(N, C, S), labels(N, S, C)
    for dtype in (torch.float32, torch.float64):
        cm = torch.zeros(C, C, dtype=torch.int64)
        F.dice_loss(x.to(dtype), t, ignore_index=IGN, backend="cpu", confusion=cm)
        torch.testing.assert_close(cm, reference(x, t, C, IGN), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_probabilities_and_one_pixel_inputs(backend):
    """from_logits=False (the argmax of the probabilities) and (N, C) scores."""
    C = 4
    p = torch.softmax(torch.randn(6, C, 10), 1)
    t = labels(6, 10, C)
    cm = torch.zeros(C, C, dtype=torch.int64)
    F.dice_loss(p, t, from_logits=False, ignore_index=IGN, backend=backend, confusion=cm)
    torch.testing.assert_close(cm, reference(p, t, C, IGN), rtol=0, atol=0)
    x2, t2 = torch.randn(9, C), torch.randint(0, C, (9,))
    cm.zero_()
    F.dice_loss(x2, t2, backend=backend, confusion=cm)
    torch.testing.assert_close(cm, reference(x2.unsqueeze(-1), t2, C), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    C = 3
    cm = torch.zeros(C, C, dtype=torch.int64)
    F.dice_loss(torch.randn(0, C, 4, 4), torch.zeros(0, 4, 4, dtype=torch.long), backend=backend, confusion=cm)
    assert int(cm.sum()) == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["dice_loss", "generalized_dice_loss", "dice_ce_loss", "dice_focal_loss"])
def test_loss_and_gradient_unchanged(backend, name):
    N, C, S = 2, 5, 40
    x0 = torch.randn(N, C, S)
    t = labels(N, S, C)
    outs = []
    for conf in (None, torch.zeros(C, C, dtype=torch.int64)):
        x = x0.clone().requires_grad_(True)
        loss = LOSSES[name](x, t, ignore_index=IGN, backend=backend, confusion=conf)
        loss.backward()
        outs.append((loss.detach(), x.grad))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_confusion_matrix_object(backend):
    """A ConfusionMatrix as the target: the same state as its own update(), and compute() works."""
    N, C, S = 2, 4, 30
    cm, own = ConfusionMatrix(C, ignore_index=IGN), ConfusionMatrix(C, ignore_index=IGN)
    for _ in range(2):
        x, t = logits(N, C, S), labels(N, S, C)
        F.dice_loss(x, t, ignore_index=IGN, backend=backend, confusion=cm)
        own.update(x, t)
    got, want = cm.compute(), own.compute()
    assert torch.equal(got["confusion_matrix"], want["confusion_matrix"])
    torch.testing.assert_close(got["miou"], want["miou"], equal_nan=True)


def test_modules():
    N, C, S = 2, 4, 30
    x, t = logits(N, C, S), labels(N, S, C)
    want = reference(x, t, C, IGN)
    for cls in (segfast.DiceLoss, segfast.JaccardLoss, segfast.TverskyLoss, segfast.GeneralizedDiceLoss,
                segfast.DiceCELoss, segfast.DiceFocalLoss, segfast.DiceFusedLoss):
        cm = ConfusionMatrix(C, ignore_index=IGN)
        cls(ignore_index=IGN, confusion=cm)(x, t)
        assert torch.equal(cm.compute()["confusion_matrix"], want), cls.__name__


def test_errors_before_any_kernel(monkeypatch):
    def no_kernel(*a, **k):
        raise AssertionError("a kernel ran before the bad argument was reported")
    monkeypatch.setattr(_region, "plane_stats", no_kernel)
    N, C, S = 2, 4, 6
    x, t = torch.randn(N, C, S), torch.randint(0, C, (N, S))
    ok = torch.zeros(C, C, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"confusion must be \[C, C\] = \[4, 4\] for input of shape \(2, 4, 6\), "
                                         r"got \(3, 3\)"):
        F.dice_loss(x, t, confusion=torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="confusion must be an int64 tensor, got torch.int32"):
        F.dice_loss(x, t, confusion=torch.zeros(C, C, dtype=torch.int32))
    with pytest.raises(ValueError, match="confusion must be contiguous"):
        F.dice_loss(x, t, confusion=torch.zeros(C, C, dtype=torch.int64).t())
    with pytest.raises(TypeError, match="ConfusionMatrix or an int64"):
        F.dice_loss(x, t, confusion=[[0] * C] * C)
    with pytest.raises(ValueError, match=r"ConfusionMatrix\(num_classes=5\) does not match input of shape"):
        F.dice_loss(x, t, confusion=ConfusionMatrix(5))
    with pytest.raises(ValueError, match="ignore_index=None.*ignore_index=255 differ"):
        F.dice_loss(x, t, ignore_index=IGN, confusion=ConfusionMatrix(C))
    with pytest.raises(ValueError, match="needs class-index targets.*dense torch.float32 target of shape"):
        F.dice_loss(x, torch.rand(N, C, S), confusion=ok)
    with pytest.raises(ValueError, match="dense"):
        F.dice_ce_loss(x, torch.rand(N, C, S), confusion=ok)
    for mode in ("multilabel", "binary"):
        with pytest.raises(ValueError, match=f"needs mode='multiclass', got mode='{mode}'"):
            F.dice_loss(x, t, mode=mode, confusion=ok)
    with pytest.raises(ValueError, match="needs mode='multiclass'"):
        F.dice_focal_loss(x, t, mode="multilabel", confusion=ok)
    assert int(ok.sum()) == 0


def test_compile_fullgraph_cpu():
    N, C, S = 2, 5, 40
    x0, t = torch.randn(N, C, S), labels(N, S, C)

    def step(x, t, cm):
        return F.dice_loss(x, t, ignore_index=IGN, backend="cpu", confusion=cm)

    cm = torch.zeros(C, C, dtype=torch.int64)
    x = x0.clone().requires_grad_(True)
    loss = torch.compile(step, fullgraph=True, backend="aot_eager")(x, t, cm)
    loss.backward()
    torch.testing.assert_close(cm, reference(x0, t, C, IGN), rtol=0, atol=0)
    xe = x0.clone().requires_grad_(True)
    want = step(xe, t, None)
    want.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(x.grad, xe.grad)


def test_compile_fullgraph_confusion_matrix_cpu():
    N, C, S = 2, 5, 40
    x, t = torch.randn(N, C, S), labels(N, S, C)
    cm = ConfusionMatrix(C, ignore_index=IGN)
    f = torch.compile(lambda x, t: F.dice_ce_loss(x, t, ignore_index=IGN, backend="cpu", confusion=cm),
                      fullgraph=True, backend="aot_eager")
    f(x, t)
    f(x, t)
    torch.testing.assert_close(cm.compute()["confusion_matrix"], 2 * reference(x, t, C, IGN), rtol=0, atol=0)


def test_kernel_routing():
    """Which backends count inside the stats kernel (torch: argmax + index_add_ on the device)."""
    assert all(_region._conf_kernel_supported(b) for b in ("cpu", "cuda", "triton"))
    assert not _region._conf_kernel_supported("torch")


def test_compat_smp():
    from segfast.compat import smp

    N, C, S = 2, 4, 30
    x, t = logits(N, C, S), labels(N, S, C)
    for cls in (smp.DiceLoss, smp.JaccardLoss):
        cm = ConfusionMatrix(C, ignore_index=IGN)
        plain = cls("multiclass", ignore_index=IGN)(x, t)
        got = cls("multiclass", ignore_index=IGN, confusion=cm)(x, t)
        assert torch.equal(cm.compute()["confusion_matrix"], reference(x, t, C, IGN)), cls.__name__
        torch.testing.assert_close(got, plain, equal_nan=True)
    with pytest.raises(ValueError, match="needs mode='multiclass'"):
        smp.DiceLoss("multilabel", confusion=ConfusionMatrix(C))(x, torch.rand(N, C, S))
