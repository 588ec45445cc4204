"""Box matching (box_iou_max) and NMS: every backend against the eager
reference (bit for bit: all backends round the IoU the same way), the
reference against hand-computed cases, the full IoU matrix and a plain
Python greedy NMS, tie rules, bad input, empty inputs, opcheck and
torch.compile(fullgraph=True).

Kernel backends run here: ``cpu`` always, ``triton`` on CPU tensors in the
interpreter (small shapes), ``cuda`` only on a GPU machine.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import segfast
from segfast.ops import boxes_match as ops
from segfast.reference import boxes_match as ref

from conftest import DEVICE, kernel_backends, pairwise

BACKENDS = kernel_backends(DEVICE) + ["torch"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
FMTS = ["xyxy", "xywh", "cxcywh"]


def small(backend):
    return backend == "triton" and DEVICE == "cpu"  # the interpreter runs Python per program


def random_xyxy(*shape, gen=None, scale=100.0, integer=False):
    """xyxy boxes: mostly ordinary, some degenerate (zero width or height, a
    point, inverted), some far away from everything, some exact duplicates."""
    xy = torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * scale
    wh = torch.rand(*shape, 2, generator=gen, dtype=torch.float64) * scale * 0.3
    if integer:
        xy, wh = xy.round(), wh.round()
    b = torch.cat([xy, xy + wh], -1)
    n = shape[-1]
    if n >= 8:
        u = torch.rand(*shape, generator=gen)
        b[..., 2] = torch.where(u < 0.05, b[..., 0], b[..., 2])  # zero width
        b[..., 3] = torch.where((u > 0.05) & (u < 0.08), b[..., 1], b[..., 3])  # zero height
        b[..., 2] = torch.where((u > 0.08) & (u < 0.1), b[..., 0] - 3, b[..., 2])  # inverted
        b[..., :2] = torch.where((u > 0.1)[..., None] & (u < 0.15)[..., None], b[..., :2] + 10 * scale, b[..., :2])
        b[..., 2:] = torch.where((u > 0.1)[..., None] & (u < 0.15)[..., None], b[..., 2:] + 10 * scale, b[..., 2:])
        b[..., n - 2, :] = b[..., 1, :]  # duplicates: exact IoU ties
    return b


def from_xyxy(b, fmt):
    if fmt == "xywh":
        return torch.cat([b[..., :2], b[..., 2:] - b[..., :2]], -1)
    if fmt == "cxcywh":
        return torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], -1)
    return b


def make_match(B, N, M, dtype, fmt="xyxy", padded=True, integer=False, gen=None):
    a = from_xyxy(random_xyxy(B, N, gen=gen, integer=integer), fmt).to(dtype)
    g = from_xyxy(random_xyxy(B, M, gen=gen, integer=integer), fmt).to(dtype)
    if N and M:  # some anchors sit exactly on a gt (IoU 1)
        a[:, : min(N, M) // 2] = g[:, : min(N, M) // 2]
    v = torch.rand(B, M, generator=gen) > 0.25 if padded else None
    return a.to(DEVICE), g.to(DEVICE), None if v is None else v.to(DEVICE)


def ref_match(a, g, v, fmt):
    aa = a if a.dim() == 3 else a.unsqueeze(0)
    gg = g if g.dim() == 3 else g.unsqueeze(0)
    B = max(aa.shape[0], gg.shape[0])
    vv = None if v is None else (v if v.dim() == 2 else v.unsqueeze(0)).expand(B, -1)
    out = ref.box_iou_max(aa.expand(B, -1, -1), gg.expand(B, -1, -1), vv, ops.FMTS[fmt])
    return out if (a.dim() == 3 or g.dim() == 3) else tuple(t.squeeze(0) for t in out)


def assert_same(got, want, what=""):
    for name, x, y in zip(("max", "argmax", "gt_max"), got, want):
        assert x.dtype == y.dtype and x.shape == y.shape, \
            f"{what} {name}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}"
        assert torch.equal(x.cpu(), y.cpu()), f"{what} {name}: {(x.cpu() != y.cpu()).sum()} differ"


# ------------------------------------------------------------------ the reference itself


def test_reference_iou_hand_computed():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1], [5, 5, 5, 9], [3, 3, 1, 1]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 1], [5, 5, 5, 9]])
    want = torch.tensor([[1 / 7, 0.5, 0.0], [0, 0.5, 0], [0, 0, 0], [0, 0, 0]])
    torch.testing.assert_close(ref.iou_matrix(a, b), want)
    # formats: the same boxes in xywh and cxcywh
    for fmt in ("xywh", "cxcywh"):
        f = ops.FMTS[fmt]
        torch.testing.assert_close(ref.iou_matrix(ref.to_xyxy(from_xyxy(a, fmt), f), ref.to_xyxy(from_xyxy(b, fmt), f)),
                                   want)


def test_reference_iou_against_float64_python():
    a, b = random_xyxy(40).tolist(), random_xyxy(30).tolist()

    def iou(p, q):
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        u = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - iw * ih
        return iw * ih / u if u > 0 else 0.0

    want = torch.tensor([[iou(p, q) for q in b] for p in a], dtype=torch.float64)
    got = ref.iou_matrix(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("padded", [False, True])
def test_reference_equals_full_matrix(padded):
    """The chunked reference is max / first argmax of the full IoU matrix."""
    a, g, v = make_match(3, 500, 41, torch.float64, padded=padded, integer=True)
    mx, arg, gmax = ref.box_iou_max(a, g, v, chunk=64)
    iou = ref.iou_matrix(a, g)
    if v is not None:
        iou_v = torch.where(v[:, None, :], iou, -1.0)
    else:
        iou_v = iou
    want_mx = iou_v.amax(-1)
    first = torch.stack([torch.tensor([int((row == m).nonzero()[0]) for row, m in zip(iou_v[b], want_mx[b])])
                         for b in range(3)])
    none = want_mx < 0
    torch.testing.assert_close(mx, want_mx.clamp_min(0), rtol=0, atol=0)
    assert torch.equal(arg, torch.where(none, -1, first))
    want_g = torch.where(v[:, None, :], iou, 0).amax(1) if v is not None else iou.amax(1)
    if v is not None:
        want_g = torch.where(v, want_g, -1.0)
    torch.testing.assert_close(gmax, want_g, rtol=0, atol=0)
    # the baseline computes the same maxima
    bmx, _, bg = ref.box_iou_max_full(a, g)
    if v is None:
        torch.testing.assert_close(bmx, mx, rtol=0, atol=0)
        torch.testing.assert_close(bg, gmax, rtol=0, atol=0)


def python_nms(boxes, scores, thr, idxs=None):
    """Greedy NMS in plain Python floats (float64 boxes)."""
    b, s = boxes.tolist(), scores.tolist()
    c = [0] * len(b) if idxs is None else idxs.tolist()
    order = sorted(range(len(b)), key=lambda i: (-s[i], i))

    def iou(p, q):
        iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        u = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - iw * ih
        return iw * ih / u if u > 0 else 0.0

    keep = []
    for i in order:
        if all(c[k] != c[i] or iou(b[k], b[i]) <= thr for k in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)


@pytest.mark.parametrize("classes", [False, True])
def test_reference_nms_against_python(classes):
    g = torch.Generator().manual_seed(1)
    b = random_xyxy(300, gen=g, integer=True)
    s = (torch.rand(300, generator=g) * 8).round().double()  # many equal scores
    i = torch.randint(0, 4, (300,), generator=g) if classes else None
    for thr in (0.0, 0.3, 0.5, 1.0):
        want = python_nms(b, s, thr, i)
        assert torch.equal(ref.nms(b, s, thr, i), want)
        if classes:
            assert torch.equal(ref.nms_by_class(b, s, i, thr), want)


# ------------------------------------------------------------------ box_iou_max, every backend


@pytest.mark.parametrize("backend,dtype,layout", pairwise(
    BACKENDS, DTYPES, ["batched", "unbatched", "shared_anchors", "shared_gt"]))
def test_iou_max_matches_reference(backend, dtype, layout):
    B, N, M = (2, 150, 19) if small(backend) else (3, 2000, 77)
    a, g, v = make_match(B, N, M, dtype, integer=dtype in (torch.float16, torch.bfloat16))
    if layout == "unbatched":
        a, g, v = a[0], g[0], v[0]
    elif layout == "shared_anchors":
        a = a[0]
    elif layout == "shared_gt":
        g, v = g[0], v[0]
    got = segfast.box_iou_max(a, g, v, backend=backend)
    want = ref_match(a, g, v, "xyxy")
    assert_same(got, want, f"{backend} {dtype} {layout}")
    assert got[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("padded", [False, True])
def test_iou_max_formats_and_padding(backend, fmt, padded):
    B, N, M = (2, 70, 11) if small(backend) else (2, 900, 45)
    a, g, v = make_match(B, N, M, torch.float32, fmt=fmt, padded=padded)
    assert_same(segfast.box_iou_max(a, g, v, fmt=fmt, backend=backend), ref_match(a, g, v, fmt), f"{backend} {fmt}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_iou_max_non_contiguous(backend):
    a, g, v = make_match(2, 60 if small(backend) else 600, 13, torch.float32)
    a2 = torch.cat([a, a], -1)[..., ::2]  # stride 2 along the coordinates
    a2[..., :] = a
    g2 = g.transpose(0, 1).contiguous().transpose(0, 1)  # batch stride 1 * M...
    v2 = v.t().contiguous().t()
    assert not a2.is_contiguous() and not g2.is_contiguous() and not v2.is_contiguous()
    assert_same(segfast.box_iou_max(a2, g2, v2, backend=backend), ref_match(a, g, v, "xyxy"), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_iou_max_tie_rules(backend):
    gt = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]]])
    anchors = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 5, 10], [100, 100, 110, 110], [22, 22, 28, 28]]])
    valid = torch.tensor([[False, True, True, True, True]])
    g, a, v = gt.to(DEVICE), anchors.to(DEVICE), valid.to(DEVICE)
    mx, arg, gmax = segfast.box_iou_max(a, g, backend=backend)
    assert arg.tolist() == [[0, 0, 0, 1]]  # duplicates: the lowest index; no overlap: the first gt
    assert mx.tolist() == [[1.0, 0.5, 0.0, 0.36]] or torch.allclose(mx.cpu(), torch.tensor([[1.0, 0.5, 0, 0.36]]))
    mx, arg, gmax = segfast.box_iou_max(a, g, v, backend=backend)
    assert arg.tolist() == [[2, 2, 1, 1]]  # the padded gt 0 is skipped; no overlap: the first VALID gt
    assert gmax[0, 0].item() == -1.0 and gmax[0, 4].item() == 0.0 and gmax[0, 2].item() == 1.0
    none = torch.zeros_like(v)
    mx, arg, gmax = segfast.box_iou_max(a, g, none, backend=backend)
    assert (arg == -1).all() and (mx == 0).all() and (gmax == -1).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,M", [(0, 5), (7, 0), (0, 0)])
def test_iou_max_empty(backend, N, M):
    a = random_xyxy(2, N).float().to(DEVICE)
    g = random_xyxy(2, M).float().to(DEVICE)
    v = torch.ones(2, M, dtype=torch.bool, device=DEVICE)
    if M:
        v[:, 0] = False
    mx, arg, gmax = segfast.box_iou_max(a, g, v, backend=backend)
    assert mx.shape == (2, N) and arg.shape == (2, N) and gmax.shape == (2, M)
    assert (mx == 0).all() and (arg == -1).all()
    assert gmax.tolist() == [[-1.0] + [0.0] * (M - 1)] * 2 if M else gmax.numel() == 0
    mx, arg, gmax = segfast.box_iou_max(a[0], g[0], backend=backend)
    assert mx.shape == (N,) and gmax.shape == (M,)


def test_iou_max_bad_input(monkeypatch):
    a, g, v = make_match(2, 10, 4, torch.float32)
    with pytest.raises(ValueError, match="4 coordinates"):
        segfast.box_iou_max(a[..., :3], g)
    with pytest.raises(ValueError, match="4 coordinates"):
        segfast.box_iou_max(a.unsqueeze(0), g)
    with pytest.raises(TypeError, match="float32"):
        segfast.box_iou_max(a.long(), g.long())
    with pytest.raises(TypeError, match="same dtype"):
        segfast.box_iou_max(a, g.double())
    with pytest.raises(ValueError, match="batch sizes"):
        segfast.box_iou_max(a, g[:1])
    with pytest.raises(ValueError, match="is on"):
        segfast.box_iou_max(a, g.to("meta"))
    with pytest.raises(TypeError, match="bool"):
        segfast.box_iou_max(a, g, v.float())
    with pytest.raises(ValueError, match="gt_valid must have shape"):
        segfast.box_iou_max(a, g, v[:, :2])
    with pytest.raises(ValueError, match="fmt"):
        segfast.box_iou_max(a, g, fmt="yxyx")
    bad = a.clone()
    bad[1, 3, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        segfast.box_iou_max(bad, g)
    g_inf = g.clone()
    g_inf[0, 1, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        segfast.box_iou_max(a, g_inf)
    v2 = v.clone()
    v2[0, 1] = False  # padding may hold anything
    segfast.box_iou_max(a, g_inf, v2)
    monkeypatch.setattr(segfast.backends, "_C_emu", None)  # the cuda backend as without segfast._C_emu
    with pytest.raises(RuntimeError, match="not available"):
        segfast.box_iou_max(a, g, backend="cuda" if DEVICE == "cpu" else "cpu")


# ------------------------------------------------------------------ NMS, every backend


def make_nms(N, dtype, fmt="xyxy", gen=None, ties=True):
    b = random_xyxy(N, gen=gen, integer=dtype in (torch.float16, torch.bfloat16))
    s = torch.rand(N, generator=gen, dtype=torch.float64)
    if ties:
        s = (s * 10).round() / 10  # many equal scores
    return from_xyxy(b, fmt).to(dtype).to(DEVICE), s.float().to(DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
# each dtype and each threshold once per backend: the threshold is one scalar
# compare, independent of how the dtype's boxes are loaded
@pytest.mark.parametrize("dtype,thr", list(zip(DTYPES, [0.0, 0.3, 0.7, 1.0])))
def test_nms_matches_reference(backend, dtype, thr):
    N = 150 if small(backend) else 1500
    b, s = make_nms(N, dtype)
    want = ref.nms(b, s, thr)
    got = segfast.nms(b, s, thr, backend=backend)
    assert got.dtype == torch.int64
    assert torch.equal(got.cpu(), want.cpu()), f"{backend} {dtype} thr={thr}: {len(got)} vs {len(want)} kept"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FMTS)
def test_batched_nms_matches_reference(backend, fmt):
    N = 140 if small(backend) else 600
    b, s = make_nms(N, torch.float32, fmt=fmt)
    i = torch.randint(0, 5, (N,)).to(DEVICE)
    want = ref.nms_by_class(b, s, i, 0.4, fmt=ops.FMTS[fmt])
    assert torch.equal(ref.nms(b, s, 0.4, i, fmt=ops.FMTS[fmt]), want)
    for idx in (i, i.to(torch.int32)):
        assert torch.equal(segfast.batched_nms(b, s, idx, 0.4, fmt=fmt, backend=backend).cpu(), want.cpu())
    assert torch.equal(segfast.nms(b, s, 0.4, fmt=fmt, backend=backend).cpu(),
                       ref.nms(b, s, 0.4, fmt=ops.FMTS[fmt]).cpu())


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_ties_and_threshold_equality(backend):
    # IoU([0,0,2,1], [0,0,1,1]) = 0.5 exactly: equal to the threshold does not suppress
    b = torch.tensor([[0.0, 0, 2, 1], [0, 0, 1, 1], [0, 0, 2, 1], [10, 10, 11, 11]], device=DEVICE)
    s = torch.tensor([0.9, 0.8, 0.9, 0.1], device=DEVICE)
    # boxes 0 and 2 are identical with equal scores: 0 is visited first and suppresses 2
    assert segfast.nms(b, s, 0.5, backend=backend).tolist() == [0, 1, 3]
    assert segfast.nms(b, s, 0.49, backend=backend).tolist() == [0, 3]
    assert segfast.nms(b, s, 1.0, backend=backend).tolist() == [0, 2, 1, 3]
    assert segfast.batched_nms(b, s, torch.tensor([1, 1, 2, 1], device=DEVICE), 0.49,
                               backend=backend).tolist() == [0, 2, 3]
    # a strided view and a single box
    b2 = torch.cat([b, b], 1)[:, ::2]
    b2[:] = b
    assert segfast.nms(b2, s, 0.5, backend=backend).tolist() == [0, 1, 3]
    assert segfast.nms(b[:1], s[:1], 0.5, backend=backend).tolist() == [0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_empty(backend):
    b = torch.zeros(0, 4, device=DEVICE)
    s = torch.zeros(0, device=DEVICE)
    for out in (segfast.nms(b, s, 0.5, backend=backend),
                segfast.batched_nms(b, s, torch.zeros(0, dtype=torch.int64, device=DEVICE), 0.5, backend=backend)):
        assert out.shape == (0,) and out.dtype == torch.int64


def test_nms_bad_input():
    b, s = make_nms(20, torch.float32)
    i = torch.zeros(20, dtype=torch.int64, device=DEVICE)
    for thr in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            segfast.nms(b, s, thr)
    with pytest.raises(TypeError, match="number"):
        segfast.nms(b, s, True)
    with pytest.raises(ValueError, match="4 coordinates"):
        segfast.nms(b[:, :3], s, 0.5)
    with pytest.raises(ValueError, match="4 coordinates"):
        segfast.nms(b.unsqueeze(0), s, 0.5)
    with pytest.raises(ValueError, match="scores must have shape"):
        segfast.nms(b, s[:5], 0.5)
    with pytest.raises(TypeError, match="scores"):
        segfast.nms(b, s.long(), 0.5)
    with pytest.raises(TypeError, match="float32"):
        segfast.nms(b.int(), s, 0.5)
    with pytest.raises(TypeError, match="idxs"):
        segfast.batched_nms(b, s, i.float(), 0.5)
    with pytest.raises(ValueError, match="idxs must have shape"):
        segfast.batched_nms(b, s, i[:3], 0.5)
    with pytest.raises(ValueError, match="is on"):
        segfast.nms(b, s.to("meta"), 0.5)
    s2 = s.clone()
    s2[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        segfast.nms(b, s2, 0.5)
    b2 = b.clone()
    b2[2, 1] = float("-inf")
    with pytest.raises(ValueError, match="non-finite"):
        segfast.nms(b2, s, 0.5)


# ------------------------------------------------------------------ torch.library / torch.compile


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton"])
def test_opcheck(backend):
    a, g, v = make_match(2, 50, 7, torch.float32)
    torch.library.opcheck(ops.box_iou_max_op, (a, g, v, 0, backend))
    torch.library.opcheck(ops.box_iou_max_op, (a[0].expand(2, -1, -1), g, None, 1, backend))
    b, s = make_nms(60, torch.float32)
    torch.library.opcheck(ops.nms_op, (b, s, None, 0.5, 0, backend))
    torch.library.opcheck(ops.nms_op, (b, s, torch.randint(0, 3, (60,), device=DEVICE), 0.5, 2, backend))


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton not runnable here")
def test_opcheck_triton():
    a, g, v = make_match(2, 40, 7, torch.float32)
    # Triton's interpreter dereferences every tensor argument, FakeTensors
    # included: the fake-tensor checks are meaningful only on a GPU.
    utils = (("test_schema", "test_autograd_registration") if DEVICE == "cpu"
             else ("test_schema", "test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"))
    torch.library.opcheck(ops.box_iou_max_triton_op, (a, g, v, 0), test_utils=utils)


# Dynamo does not trace the Triton interpreter: triton compiles only on a GPU.
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton" or DEVICE == "cuda"])
def test_compile_fullgraph(backend):
    a, g, v = make_match(2, 64, 9, torch.float32)
    b, s = make_nms(80, torch.float32)
    idx = torch.randint(0, 3, (80,), device=DEVICE)

    def step(a, g, v, b, s, idx):
        mx, arg, gmax = segfast.box_iou_max(a, g, v, backend=backend)
        pos = (mx >= 0.5) | (mx >= gmax.gather(1, arg.clamp_min(0)))  # an anchor assigner's use
        keep = segfast.batched_nms(b, s, idx, 0.5, backend=backend)
        return pos, arg, keep, segfast.nms(b, s, 0.3, backend=backend)

    # nms's output size depends on the data: torch 2.13 captures it under fullgraph=True by itself,
    # older releases (2.4.1 and 2.6.0 checked) only with capture_dynamic_output_shape_ops (README)
    older = torch.torch_version.TorchVersion(torch.__version__) < (2, 13)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True) if older else contextlib.nullcontext():
        got = torch.compile(step, fullgraph=True, backend="aot_eager")(a, g, v, b, s, idx)
    want = step(a, g, v, b, s, idx)
    for x, y in zip(got, want):
        assert torch.equal(x, y)
