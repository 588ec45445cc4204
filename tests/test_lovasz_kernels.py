"""The Lovász kernel backends (cpu: csrc/cpu/lovasz.cpp; triton:
triton_kernels/lovasz.py, in the interpreter without a GPU; cuda when a GPU
is present) against the torch backend and the float64 loop reference
(segfast/reference/lovasz.py): the sort + weights op itself, then the losses
through it. Small shapes: the Triton interpreter is slow."""

from __future__ import annotations

import pytest
import torch

import segfast
from segfast.ops import lovasz as ops
from segfast.reference import lovasz as ref

from conftest import DEVICE, kernel_backends, pairwise
from test_lovasz import assert_compiles_alike, close, grads
from test_lovasz import labels as _labels

BACKENDS = kernel_backends(DEVICE)
pytestmark = pytest.mark.skipif(not BACKENDS, reason="no Lovász kernel backend can run here")


def labels(N, C, spatial, ignore=None, frac=0.2):
    return _labels(N, C, spatial, ignore, frac, device=DEVICE)


def weights_loop(errors, fg, valid):
    """Dense Lovász weights row by row, float64: a stable descending sort (ties in
    pixel order, as every backend breaks them), lovasz_grad, scatter back."""
    errors, fg, valid = errors.cpu(), fg.cpu(), valid.cpu()
    out = torch.zeros(errors.shape, dtype=torch.float64)
    for g in range(errors.shape[0]):
        keep = valid[g].nonzero().squeeze(1)
        if keep.numel() == 0:
            continue
        order = torch.sort(errors[g, keep].double(), descending=True, stable=True).indices
        out[g, keep[order]] = ref.lovasz_grad(fg[g, keep[order]].double())
    return out


def row_errors(G, L, kind, fgb, dtype):
    if kind == "separated":  # few candidates
        e = torch.where(fgb, 0.6 + 0.4 * torch.rand(G, L), 0.7 * torch.rand(G, L))
    elif kind == "mixed":  # most pixels are candidates
        e = torch.rand(G, L)
    else:  # "ties": quantized errors, many exact ties (and zeros)
        e = torch.randint(0, 5, (G, L)) / 4.0
    return e.to(dtype)


# ------------------------------------------------------------------ the op


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["separated", "mixed", "ties"])
@pytest.mark.parametrize("fg_kind", ["bool", "soft", "uint8", "int64"])
def test_sort_weights_vs_torch_and_loop(backend, dtype, kind, fg_kind):
    G, L = 6, 301
    fgb = torch.rand(G, L) < 0.3
    fgb[2] = False  # a row without foreground
    fgb[3] = True  # a row of foreground only
    fg = {"bool": fgb, "uint8": fgb.to(torch.uint8), "int64": fgb.long(),
          "soft": torch.where(fgb, torch.rand(G, L) * 0.9 + 0.1, 0.0).to(dtype)}[fg_kind]
    errors = row_errors(G, L, kind, fgb, dtype)
    valid = torch.rand(G, L) > 0.1
    valid[4] = False  # a fully ignored row
    for v in (None, valid):
        args = [a.to(DEVICE) for a in (errors, fg)] + [None if v is None else v.to(DEVICE)]
        got = ops.lovasz_sort_weights(*args, backend=backend)
        want = ops.lovasz_sort_weights(*args, backend="torch")
        assert got.dtype == want.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert got.shape == (G, L) and got.device == want.device
        # same order of ties as the torch backend: equal weights up to rounding, pixel by pixel
        close(got, want, dtype)
        close(got, weights_loop(errors, fg, torch.ones_like(valid) if v is None else v), torch.float32)
        if v is not None:
            assert torch.all(got.cpu()[~valid] == 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sort_weights_4d_strided_views(backend):
    """[R1, R2, B, S] segments of non-contiguous views (a class over the batch,
    expanded valid masks) give the weights of the same rows laid out as [G, L]."""
    N, K, S = 3, 4, 37
    e = torch.rand(N, K, S, device=DEVICE)
    fg = torch.rand(N, K, S, device=DEVICE) < 0.3
    valid = (torch.rand(N, 1, S, device=DEVICE) > 0.2).expand(N, K, S)  # stride 0 over classes
    four = lambda a: a.transpose(0, 1).unsqueeze(0)  # noqa: E731  [1, K, N, S]
    got = ops.lovasz_sort_weights(four(e), four(fg), four(valid), backend=backend)
    assert got.shape == (1, K, N, S) and got.is_contiguous()
    flat = lambda a: a.transpose(0, 1).reshape(K, N * S)  # noqa: E731
    want = ops.lovasz_sort_weights(flat(e), flat(fg), flat(valid), backend="torch")
    close(got.reshape(K, N * S), want, torch.float32)
    per = ops.lovasz_sort_weights(e.unsqueeze(2), fg.unsqueeze(2), valid.unsqueeze(2), backend=backend)
    want = ops.lovasz_sort_weights(e.reshape(N * K, S), fg.reshape(N * K, S), valid.reshape(N * K, S),
                                   backend="torch")
    close(per.reshape(N * K, S), want, torch.float32)
    sl = torch.rand(5, 2 * 41, dtype=torch.float64, device=DEVICE)[:, ::2]  # strided rows
    fs = torch.rand(5, 41, device=DEVICE) > 0.5
    close(ops.lovasz_sort_weights(sl, fs, backend=backend), weights_loop(sl, fs, torch.ones_like(fs)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sort_weights_empty_and_low_precision_errors(backend):
    for G, L in ((0, 5), (3, 0), (0, 0)):
        w = ops.lovasz_sort_weights(torch.rand(G, L, device=DEVICE), torch.rand(G, L, device=DEVICE) > 0.5,
                                    backend=backend)
        assert w.shape == (G, L) and w.dtype == torch.float32
    e = torch.rand(4, 50, device=DEVICE)
    fg = torch.rand(4, 50, device=DEVICE) > 0.6
    for dt in (torch.float16, torch.bfloat16):
        got = ops.lovasz_sort_weights(e.to(dt), fg, backend=backend)
        assert got.dtype == torch.float32
        close(got, ops.lovasz_sort_weights(e.to(dt), fg, backend="torch"), torch.float32)


def test_sort_weights_bad_input():
    e = torch.rand(3, 10, device=DEVICE)
    fg = torch.rand(3, 10, device=DEVICE) > 0.5
    for b in BACKENDS:
        with pytest.raises(ValueError, match="shape"):
            ops.lovasz_sort_weights(e, fg[:, :9], backend=b)
        with pytest.raises(ValueError, match=r"\[G, L\]"):
            ops.lovasz_sort_weights(e[0], fg[0], backend=b)
        with pytest.raises(TypeError, match="float"):
            ops.lovasz_sort_weights(e.long(), fg, backend=b)
        with pytest.raises(TypeError, match="valid"):
            ops.lovasz_sort_weights(e, fg, valid=fg.float(), backend=b)
        with pytest.raises(TypeError, match="tensors"):
            ops.lovasz_sort_weights(e, [1, 2], backend=b)
    with pytest.raises(RuntimeError, match="unknown"):
        ops.lovasz_sort_weights(e, fg, backend="nope")


def test_opcheck():
    e, fg, v = torch.rand(3, 20), torch.rand(3, 20) > 0.5, torch.rand(3, 20) > 0.2
    e4 = torch.rand(2, 3, 4, 5, dtype=torch.float64).transpose(0, 2)
    f4 = torch.rand(e4.shape) > 0.5
    if "cpu" in BACKENDS:
        torch.library.opcheck(ops.lovasz_sort_weights_op, (e, fg, v, "cpu"))
        torch.library.opcheck(ops.lovasz_sort_weights_op, (e4, f4.double(), None, "cpu"))
        p = torch.softmax(torch.randn(2, 3, 11), 1)
        lab = torch.randint(0, 4, (2, 11)).to(torch.int32)
        for per_image in (True, False):
            torch.library.opcheck(ops.lovasz_softmax_rows_op, (p, lab, torch.tensor([0, 2, 3]), 3.0, per_image))
            torch.library.opcheck(ops.lovasz_softmax_rows_op, (p.double().transpose(0, 1).contiguous().transpose(0, 1),
                                                               lab.long(), torch.arange(3), None, per_image))
    if "triton" in BACKENDS:  # fake-tensor tracing cannot run the kernel in the CPU interpreter
        utils = None if DEVICE == "cuda" else ("test_schema", "test_autograd_registration")
        torch.library.opcheck(ops.lovasz_sort_weights_triton_op, (e.to(DEVICE), fg.to(DEVICE), v.to(DEVICE)),
                              **({} if utils is None else dict(test_utils=utils)))


# ------------------------------------------------------------------ the losses


def _confident(y, C):
    """Trained-network-like logits: the worst case for pruning (most pixels are candidates)."""
    oh = torch.nn.functional.one_hot(y.clamp(0, C - 1), C).movedim(-1, 1).double()
    return 8 * oh + torch.randn(oh.shape, dtype=torch.float64, device=oh.device)


@pytest.mark.parametrize("backend,per_image,ignore,classes,logits", pairwise(
    BACKENDS, [True, False], [None, 255], ["present", "all", [2, 0, 0]], ["random", "confident", "ties"]))
def test_softmax_backends(backend, per_image, ignore, classes, logits):
    N, C, sp = 3, 4, (5, 7)
    y = labels(N, C, sp, ignore)
    y[1, :, :3] = 0  # more overlap of classes; class 3 often absent from an image
    if logits == "random":
        x = 2 * torch.randn(N, C, *sp, dtype=torch.float64, device=DEVICE)
    elif logits == "confident":
        x = _confident(y, C)
    else:  # ties in the errors
        x = torch.randint(-2, 3, (N, C, *sp), device=DEVICE).double()
    kw = dict(classes=classes, per_image=per_image, ignore_index=ignore)
    got, gx = grads(segfast.lovasz_softmax_loss, x, y, backend=backend, **kw)
    mid, mx = grads(segfast.lovasz_softmax_loss, x, y, backend="torch", **kw)
    close(got, mid)
    close(gx, mx)  # same tie order: same gradient
    want, wx = grads(ref.lovasz_softmax, x.cpu(), y.cpu(), **kw)
    close(got, want)
    if logits != "ties":  # the reference's (unstable) sort may order tied errors differently
        close(gx, wx)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softmax_empty_classes_ignored_images_and_grad_output(backend):
    C = 5
    x = torch.randn(3, C, 4, 6, dtype=torch.float64, device=DEVICE)
    y = torch.randint(0, 2, (3, 4, 6), device=DEVICE)  # classes 2..4 absent everywhere
    y[1] = 255  # an image with every pixel ignored
    y[2, :2] = 255
    go = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64, device=DEVICE)
    for per_image in (True, False):
        for classes in ("present", "all", [3, 4], [0, 4]):
            kw = dict(classes=classes, per_image=per_image, ignore_index=255)
            if per_image:
                kw["reduction"] = "none"
            g = go if per_image else torch.tensor(-2.5, dtype=torch.float64, device=DEVICE)
            got, gx = grads(segfast.lovasz_softmax_loss, x, y, backend=backend, go=g, **kw)
            want, wx = grads(ref.lovasz_softmax, x.cpu(), y.cpu(), go=g.cpu(), **kw)
            close(got, want)
            close(gx, wx)
            assert torch.all(gx[1] == 0)
    for per_image in (True, False):
        got, gx = grads(segfast.lovasz_softmax_loss, x, torch.full_like(y, 255), per_image=per_image,
                        ignore_index=255, backend=backend)
        assert got.item() == 0 and torch.all(gx == 0)


def _dense_from_labels(y, C, ignore):
    t = (y == 1).double().unsqueeze(1) if C == 1 else \
        torch.nn.functional.one_hot(y.clamp(0, C - 1), C).movedim(-1, 1).double()
    if ignore is not None:
        t = torch.where((y == ignore).unsqueeze(1), float(ignore), t)
    return t


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("C", [1, 3])  # binary / multilabel
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("target_kind", ["labels", "float", "soft"])
def test_hinge_backends(backend, C, per_image, ignore, target_kind):
    N, sp = 3, (5, 6)
    x = 2 * torch.randn(N, C, *sp, dtype=torch.float64, device=DEVICE)
    if target_kind == "labels":
        y = torch.randint(0, 2 if C == 1 else C, (N, *sp), device=DEVICE)
        if ignore is not None:
            y[torch.rand(y.shape, device=DEVICE) < 0.2] = ignore
        y[0] = ignore if ignore is not None else y[0]  # an all-ignored image
        t = _dense_from_labels(y, C, ignore)
    else:
        t = (torch.rand(N, C, *sp, device=DEVICE) > 0.6).double()
        if target_kind == "soft":
            t = t * torch.rand(t.shape, dtype=torch.float64, device=DEVICE)
        if ignore is not None:
            t[torch.rand(t.shape, device=DEVICE) < 0.2] = ignore
        y = t
    go = torch.linspace(-1, 2, N, dtype=torch.float64, device=DEVICE) if per_image else None
    kw = dict(per_image=per_image, ignore_index=ignore, reduction="none" if per_image else "mean")
    got, gx = grads(segfast.lovasz_hinge_loss, x, y, backend=backend, go=go, **kw)
    mid, mx = grads(segfast.lovasz_hinge_loss, x, y, backend="torch", go=go, **kw)
    want, wx = grads(ref.lovasz_hinge, x.cpu(), t.cpu(), go=None if go is None else go.cpu(), **kw)
    close(got, mid)
    close(gx, mx)
    close(got, want)
    close(gx, wx)


@pytest.mark.parametrize("backend", BACKENDS)
def test_low_precision_and_noncontiguous(backend):
    x = torch.randn(2, 6, 7, 3, device=DEVICE).permute(0, 3, 1, 2)  # channels_last-like [2, 3, 6, 7]
    y = labels(2, 3, (6, 7), 255)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        for per_image in (True, False):
            got, gx = grads(segfast.lovasz_softmax_loss, xd, y, per_image=per_image, ignore_index=255,
                            backend=backend)
            mid, mx = grads(segfast.lovasz_softmax_loss, xd, y, per_image=per_image, ignore_index=255,
                            backend="torch")
            want, wx = grads(ref.lovasz_softmax, xd.cpu(), y.cpu(), per_image=per_image, ignore_index=255)
            assert got.dtype == torch.float32 and gx.dtype == dtype
            close(got, mid, torch.float32)
            close(gx, mx, torch.float32)
            close(got, want, dtype)
            close(gx, wx, dtype)
    t = (torch.rand(2, 6, 7, 3, device=DEVICE) > 0.5).permute(0, 3, 1, 2)
    for per_image in (True, False):
        close(segfast.lovasz_hinge_loss(x, t, per_image=per_image, backend=backend),
              ref.lovasz_hinge(x.cpu(), t.double().cpu(), per_image=per_image), torch.float32)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not built")
def test_gradcheck_cpu():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    y = labels(2, 3, (4, 5), 255).cpu()
    for per_image in (True, False):
        assert torch.autograd.gradcheck(
            lambda a: segfast.lovasz_softmax_loss(a, y, classes="all", per_image=per_image, ignore_index=255,
                                                  reduction="none", backend="cpu"), (x,))
    t = (torch.rand(2, 3, 4, 5) > 0.5).double()
    for per_image in (True, False):
        assert torch.autograd.gradcheck(
            lambda a: segfast.lovasz_hinge_loss(a, t, per_image=per_image, backend="cpu"), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_long_rows_and_threads(backend):
    """Rows longer than the GPU kernels' block (the carry between blocks) and the cpu
    radix sort's small-sort cutoff, few (and one) candidates, a long tie, over
    several threads: the torch backend's weights."""
    torch.set_num_threads(2)
    G, L = (33, 4099) if backend == "cpu" else (4, 2600)
    fgb = torch.rand(G, L) < 0.01
    fgb[0] = False
    fgb[1] = False
    fgb[1, 7] = True
    fgb[3] = torch.rand(L) < 0.5
    e = torch.rand(G, L)
    e[2] = 0.5  # one long tie
    e[3] = torch.randint(0, 3, (L,)) / 2.0
    for v in (None, torch.rand(G, L) > 0.05):
        args = [a.to(DEVICE) for a in (e, fgb)] + [None if v is None else v.to(DEVICE)]
        close(ops.lovasz_sort_weights(*args, backend=backend), ops.lovasz_sort_weights(*args, backend="torch"),
              torch.float32)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="cpu backend not built")
def test_compile_fullgraph_cpu():
    torch._dynamo.reset()
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    y = torch.randint(0, 4, (2, 9, 7))
    assert_compiles_alike(x, (lambda x: segfast.lovasz_softmax_loss(x, y, per_image=True, backend="cpu"),
                              lambda x: segfast.lovasz_softmax_loss(x, y, backend="cpu"),
                              lambda x: segfast.lovasz_hinge_loss(
                                  x, y.clamp_max(1).unsqueeze(1).expand(2, 4, 9, 7).float(), backend="cpu")))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int32, torch.int64])
def test_softmax_label_dtypes_and_layouts(backend, label_dtype):
    """The fused cpu path reads labels of every dtype and stride itself (and compares them
    with ignore_index): uint8 / int32 / int64, [N, 1, H, W] and strided label tensors."""
    N, C, H, W = 2, 4, 6, 5
    x = torch.randn(N, C, H, W, dtype=torch.float64, device=DEVICE)
    y = torch.randint(0, C, (N, H, 2 * W), device=DEVICE)
    y[torch.rand(y.shape, device=DEVICE) < 0.2] = 255 if label_dtype == torch.uint8 else -100
    ign = 255 if label_dtype == torch.uint8 else -100
    y = y.to(label_dtype)[..., ::2]  # strided
    for target in (y, y.unsqueeze(1)):
        for per_image in (True, False):
            for classes in ("present", [3, 1]):
                kw = dict(per_image=per_image, ignore_index=ign, classes=classes)
                got, gx = grads(segfast.lovasz_softmax_loss, x, target, backend=backend, **kw)
                want, wx = grads(ref.lovasz_softmax, x.cpu(), y.long().cpu(), **kw)
                close(got, want)
                close(gx, wx)
