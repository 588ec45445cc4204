"""The typed interface of segfast._C: tensors cross as DLPack capsules
(segfast.backends.view, csrc/bind/view.h), read without being consumed and
checked by each entry, with errors that name the entry and the argument."""

import pytest
import torch

from segfast import backends

_C = backends._C
pytestmark = pytest.mark.skipif(_C is None, reason="segfast._C is not built")
view = backends.view


def _stats_args(x, t, out=None, conf=None):
    if out is None:
        out = torch.empty(x.shape[0], 1, x.shape[1], 7, dtype=torch.float64 if x.dtype == torch.float64 else None)
    return (view(x), view(t), view(out), 2, 0, 0.0, 0, None, view(conf), None, 1)


def test_view_is_a_dlpack_capsule_of_the_tensor():
    x = torch.arange(30.0).reshape(2, 3, 5)[:, 1:]
    cap = view(x)
    assert type(cap).__name__ == "PyCapsule"
    assert torch.equal(torch.utils.dlpack.from_dlpack(cap), x)  # unconsumed by no one: from_dlpack still can
    assert view(None) is None
    # tensors to_dlpack refuses on some torch versions still have a view
    for t in (torch.ones(3, requires_grad=True), torch.ones(3, dtype=torch.bool)):
        assert type(view(t)).__name__ == "PyCapsule"


def test_region_stats_runs_with_views_and_leaves_the_capsules_unconsumed():
    x, t = torch.randn(2, 3, 10), torch.randint(0, 3, (2, 10))
    out = torch.empty(2, 1, 3, 7)
    args = _stats_args(x, t, out)
    _C.cpu.region_stats(*args)
    p = x.softmax(1)
    assert torch.allclose(out[:, 0, :, 1], p.sum(2), atol=1e-5)  # P = Σ p
    _C.cpu.region_stats(*args)  # the same capsules again: reading one does not consume it
    assert torch.allclose(out[:, 0, :, 1], p.sum(2), atol=1e-5)


def test_strided_and_broadcast_views():
    """Element strides cross as they are (a transposed x, an expanded target)."""
    x = torch.randn(2, 10, 3).transpose(1, 2)
    t = torch.randint(0, 3, (1, 10)).expand(2, 10)
    out, ref = torch.empty(2, 1, 3, 7), torch.empty(2, 1, 3, 7)
    _C.cpu.region_stats(*_stats_args(x, t, out))
    _C.cpu.region_stats(*_stats_args(x.contiguous(), t.contiguous(), ref))
    torch.testing.assert_close(out, ref)


def test_size_one_dimensions_get_the_row_major_stride():
    """Whatever stride torch exports for a dimension of size 1 (torch 2.4-2.6: 1; later: the tensor's own),
    the view has the row-major one, as the error's strides show; other strides are the tensor's."""
    x, t = torch.randn(2, 3, 10), torch.randint(0, 3, (2, 10))
    out = torch.empty(2, 3, 7, 1).transpose(1, 3)  # [2, 1, 7, 3], strides (21, 1, 1, 7)
    with pytest.raises(ValueError, match=r"out must be contiguous, got shape \[2, 1, 7, 3\] strides \(21, 21, 1, 7\)"):
        _C.cpu.region_stats(*_stats_args(x, t, out))


@pytest.mark.parametrize("bad, match", [
    (lambda x, t: _stats_args(x[0], t), r"cpu.region_stats: x must have 3 dimensions, got shape \[3, 10\]"),
    (lambda x, t: _stats_args(x.double(), t, torch.empty(2, 1, 3, 7)), r"out must be float64, got float32"),
    (lambda x, t: _stats_args(x, torch.zeros(2, 4, 10)), r"t \[2, 4, 10\] and x \[2, 3, 10\] differ in size"),
    (lambda x, t: _stats_args(x, t.float()), r"t must be uint8/int32/int64, got float32"),
    (lambda x, t: _stats_args(x, t[:, :9]), r"t \[2, 9\] and x \[2, 3, 10\] differ in size"),
    (lambda x, t: _stats_args(x, t[:1]), r"t \[1, 10\] and x \[2, 3, 10\] differ in size"),
    (lambda x, t: _stats_args(x, t, torch.empty(2, 1, 3, 9)), r"out must be \[N, P, C, K\] with K = 7"),
    (lambda x, t: _stats_args(x, t, torch.empty(2, 3, 7, 1).transpose(1, 3)), r"out must be contiguous"),
    (lambda x, t: _stats_args(x, t, conf=torch.zeros(3, 3)), r"conf must be int64, got float32"),
    (lambda x, t: _stats_args(x, t, conf=torch.zeros(3, 4, dtype=torch.long)), r"conf must have shape \[3, 3\]"),
    (lambda x, t: _stats_args(x.to(torch.complex64), t), r"x has a dtype the kernels do not take"),
    (lambda x, t: _stats_args(x, t)[:1] + (x.data_ptr(),) + _stats_args(x, t)[2:],
     r"cpu.region_stats: t must be a tensor's DLPack capsule \(segfast.backends.view\(t\)\) or None, got int"),
    (lambda x, t: (None,) + _stats_args(x, t)[1:], r"cpu.region_stats: x is required \(got None\)"),
])
def test_region_stats_rejects_bad_views(bad, match):
    x, t = torch.randn(2, 3, 10), torch.randint(0, 3, (2, 10))
    with pytest.raises(ValueError, match=match):
        _C.cpu.region_stats(*bad(x, t))


def test_a_consumed_capsule_is_refused():
    x, t = torch.randn(2, 3, 10), torch.randint(0, 3, (2, 10))
    args = list(_stats_args(x, t))
    torch.utils.dlpack.from_dlpack(args[0])  # renames the capsule "used_dltensor"
    with pytest.raises(ValueError, match="x must be a tensor's DLPack capsule.*got a capsule that is not an unused"):
        _C.cpu.region_stats(*args)


def test_label_range_and_rank_limit():
    t = torch.tensor([[0, 3, 255], [1, 2, 2]])
    assert _C.cpu.label_range(view(t), 255, 1) == (0, 3)
    assert _C.cpu.label_range(view(t), None, 1) == (0, 255)
    with pytest.raises(ValueError, match=r"cpu.label_range: t has 7 dimensions, more than 6"):
        _C.cpu.label_range(view(torch.zeros((1,) * 7, dtype=torch.long)), None, 1)
    with pytest.raises(ValueError, match=r"cpu.label_range: t must have 2 dimensions, got shape \[6\]"):
        _C.cpu.label_range(view(t.reshape(-1)), None, 1)


def test_pixel_loss_infers_the_scalar_grad_output():
    """A 0-d go is one grad_output read by the kernel; a map-shaped go is per element."""
    x, t = torch.randn(2, 3, 10), torch.randint(0, 3, (2, 10))
    args = lambda go, dx: (view(x), view(t), 0, 0, None, None, None, None, 0.0, 0.25, 0.0, 1.0, 0.0,  # noqa: E731
                           None, None, view(go), view(dx), 1)
    dx0, dx1 = torch.empty_like(x), torch.empty_like(x)
    _C.cpu.pixel_loss(*args(torch.tensor(2.0), dx0))
    _C.cpu.pixel_loss(*args(torch.full((2, 10), 2.0), dx1))
    assert torch.equal(dx0, dx1)
    with pytest.raises(ValueError, match=r"cpu.pixel_loss: go must be \[N, S\]"):
        _C.cpu.pixel_loss(*args(torch.full((2, 9), 2.0), dx1))


def test_confusion_logits_entry():
    x, t = torch.randn(2, 3, 10), torch.randint(0, 3, (2, 10))
    out = torch.zeros(10, dtype=torch.long)
    _C.cpu.confusion_logits(view(x), view(t), None, view(out), 1)
    want = torch.bincount((t * 3 + x.argmax(1)).reshape(-1), minlength=9)
    assert torch.equal(out[:9], want) and out[9] == 0
    with pytest.raises(ValueError, match=r"cpu.confusion_logits: out must have shape \[10\], got \[9\]"):
        _C.cpu.confusion_logits(view(x), view(t), None, view(out[:9]), 1)


@pytest.mark.skipif(backends._C_emu is None, reason="segfast._C_emu is not built")
def test_one_name_per_entry_in_every_backend():
    """The cuda module (here the emulator's) registers the entries the cpu one has, under the same names,
    where the backend has the kernel; no name carries a backend suffix."""
    cpu = {n for n in dir(_C.cpu) if not n.startswith("_")}
    cuda = {n for n in dir(backends._C_emu.cuda) if not n.startswith("_")}
    for name in ("region_stats", "region_grad", "pixel_loss", "box_pairwise", "box_pairwise_grad", "box_aligned",
                 "box_iou_max", "nms_keep"):
        assert name in cpu and name in cuda, name
    assert not any(n.endswith(("_cpu", "_cuda")) for n in cpu | cuda)
    assert not any(n.endswith(("_cpu", "_cuda")) for n in dir(_C) if n not in ("has_cuda",))


@pytest.mark.skipif(backends._C_emu is None, reason="segfast._C_emu is not built")
def test_a_cpu_view_never_reaches_a_gpu_kernel_of_the_real_module():
    """segfast._C.cuda (when built) wants GPU views; the emulator takes CPU ones."""
    x, t = torch.randn(2, 3, 10), torch.randint(0, 3, (2, 10))
    out = torch.empty(2, 1, 3, 7)
    backends._C_emu.cuda.region_stats(view(x), view(t), view(out), 2, 0, 0.0, 0, None, None, None, 0)
    if getattr(_C, "cuda", None) is not None:
        with pytest.raises(ValueError, match="cuda.region_stats: x must be on the GPU, got a CPU tensor"):
            _C.cuda.region_stats(view(x), view(t), view(out), 2, 0, 0.0, 0, None, None, None, 0)


_emu_only = pytest.mark.skipif(backends._C_emu is None, reason="segfast._C_emu is not built")


@_emu_only
def test_pixel_reduced_entry():
    """The reduced pixel loss: forward (ws, out, den, counter) against pixel_loss's sums, backward (0-d go
    over den) against pixel_loss's dx; each call's arguments checked."""
    cuda = backends._C_emu.cuda
    x, t = torch.randn(2, 3, 10), torch.randint(0, 3, (2, 10))
    head = (view(x), view(t), 0, 0, None, None, None, None, 0.0, 0.25, 0.0, 1.0, 0.0)
    ws, out, den, counter = torch.empty(2, 1, 4), torch.empty(()), torch.empty(()), torch.zeros(1, dtype=torch.int32)
    cuda.pixel_reduced(*head, 1, view(ws), view(out), view(den), view(counter), None, None, 0)
    want = torch.nn.functional.cross_entropy(x, t)
    torch.testing.assert_close(out, want)
    assert den == 20 and counter == 0
    dx, want_dx = torch.empty_like(x), torch.empty_like(x)
    cuda.pixel_reduced(*head, 1, None, None, view(den), None, view(torch.tensor(3.0)), view(dx), 0)
    cuda.pixel_loss(*head, None, None, view(torch.tensor(3.0 / 20)), view(want_dx), 0)
    torch.testing.assert_close(dx, want_dx)
    with pytest.raises(ValueError, match=r"cuda.pixel_reduced: ws must be \[N, P, 4\], got \[2, 1, 2\]"):
        cuda.pixel_reduced(*head, 1, view(ws[..., :2].contiguous()), view(out), view(den), view(counter), None,
                           None, 0)
    with pytest.raises(ValueError, match=r"cuda.pixel_reduced: counter must be int32, got int64"):
        cuda.pixel_reduced(*head, 1, view(ws), view(out), view(den), view(counter.long()), None, None, 0)
    with pytest.raises(ValueError, match=r"cuda.pixel_reduced: the backward call \(out None\) needs a 0-d go"):
        cuda.pixel_reduced(*head, 1, None, None, view(den), None, view(torch.ones(2, 10)), view(dx), 0)
    with pytest.raises(ValueError, match=r"cuda.pixel_reduced: norm must be 0-2"):
        cuda.pixel_reduced(*head, 3, view(ws), view(out), view(den), view(counter), None, None, 0)


@_emu_only
def test_confusion_entry_of_the_cuda_backend():
    """cuda.confusion: logits [N, C, S] or class indices [N, S] (the rank says which), C from out's size."""
    cuda = backends._C_emu.cuda
    x, t = torch.randn(2, 3, 10), torch.randint(0, 3, (2, 10))
    want = torch.bincount((t * 3 + x.argmax(1)).reshape(-1), minlength=10)
    for preds in (x, x.argmax(1)):
        out = torch.zeros(10, dtype=torch.long)
        cuda.confusion(view(preds), view(t), None, view(out), 0)
        assert torch.equal(out, want)
    with pytest.raises(ValueError, match=r"cuda.confusion: out must be \[C\*C \+ 1\] for some C >= 1, got \[9\]"):
        cuda.confusion(view(x), view(t), None, view(torch.zeros(9, dtype=torch.long)), 0)
    with pytest.raises(ValueError, match=r"cuda.confusion: x must have shape \[2, 4, 10\], got \[2, 3, 10\]"):
        cuda.confusion(view(x), view(t), None, view(torch.zeros(17, dtype=torch.long)), 0)
    with pytest.raises(ValueError, match=r"cuda.confusion: x must be uint8/int32/int64, got float32"):
        cuda.confusion(view(x[:, 0]), view(t), None, view(torch.zeros(10, dtype=torch.long)), 0)


@_emu_only
def test_coco_match_entry_checks():
    cuda = backends._C_emu.cuda
    f64, i64, u8 = torch.float64, torch.int64, torch.uint8
    box = torch.tensor([[0.0, 0, 2, 2]], dtype=f64)
    args = [torch.zeros(1, dtype=i64), torch.tensor([0, 1]), torch.tensor([0, 1]), box,
            torch.tensor([4.0], dtype=f64), torch.zeros(1, dtype=u8), torch.ones(1, dtype=u8), box,
            torch.tensor([0.5, 0.75], dtype=f64), torch.tensor([[0.0, 1e10]], dtype=f64)]
    code = torch.empty(1, 1, 2, dtype=u8)
    cuda.coco_match(*map(view, args), 1, view(code), None, 0)
    assert code.tolist() == [[[1, 1]]]  # one true positive at both thresholds
    bad = list(args)
    bad[3] = torch.zeros(1, 5, dtype=f64)
    with pytest.raises(ValueError, match=r"cuda.coco_match: gt_box must have 4 columns, got \[1, 5\]"):
        cuda.coco_match(*map(view, bad), 1, view(code), None, 0)
    with pytest.raises(ValueError, match=r"cuda.coco_match: code must have shape \[1, 1, 2\], got \[1, 2, 1\]"):
        cuda.coco_match(*map(view, args), 1, view(code.view(1, 2, 1)), None, 0)
    n = 10000  # gts of one group beyond what shared memory holds
    assert cuda.coco_match_scratch_bytes(n, 1, 2, 1) > 0
    with pytest.raises(ValueError, match=r"cuda.coco_match: scratch must hold coco_match_scratch_bytes"):
        cuda.coco_match(*map(view, args), n, view(code), None, 0)


def _coco_case():
    """One category, one image: a gt and a detection on it (IoU 1), two IoU thresholds, one area range."""
    f64, i64, u8 = torch.float64, torch.int64, torch.uint8
    box = torch.tensor([[0.0, 0, 2, 2]], dtype=f64)
    T, R, K, A, M = 2, 3, 1, 1, 1
    groups = dict(gt_off=torch.tensor([0, 1]), dt_off=torch.tensor([0, 1]), gt_box=box,
                  gt_area=torch.tensor([4.0], dtype=f64), gt_crowd=torch.zeros(1, dtype=u8),
                  gt_idnz=torch.ones(1, dtype=u8), dt_box=box.clone())
    eval_in = dict(dt_score=torch.tensor([0.9], dtype=f64), iou_thr=torch.tensor([0.5, 0.75], dtype=f64),
                   area_rng=torch.tensor([[0.0, 1e10]], dtype=f64))
    outs = dict(rec_thr=torch.tensor([0.0, 0.5, 1.0], dtype=f64), max_dets=torch.tensor([10]),
                precision=torch.full((T, R, K, A, M), -1.0, dtype=f64),
                recall=torch.full((T, K, A, M), -1.0, dtype=f64),
                scores=torch.full((T, R, K, A, M), -1.0, dtype=f64),
                ap_all=torch.full((T, K, A, M), -1.0, dtype=f64), npig=torch.zeros(K, A, dtype=i64))
    curve = dict(curve_a=0, curve_m=0, curve_off=torch.tensor([0, 1]), curve_score=torch.zeros(1, dtype=f64),
                 curve_code=torch.zeros(T, 1, dtype=u8))
    return groups, eval_in, outs, curve


def _coco_args(*parts):
    return [view(v) if isinstance(v, torch.Tensor) or v is None else v for p in parts for v in p.values()] + [1]


def test_coco_eval_entry():
    """cpu.coco_eval: a detection on its gt is a true positive at every threshold; the curve keeps its code."""
    groups, eval_in, outs, curve = _coco_case()
    _C.cpu.coco_eval(*_coco_args(groups, eval_in, outs, curve))
    one = 1 / (1 + torch.finfo(torch.float64).eps)  # tp / (tp + fp + eps), as pycocotools
    assert (outs["precision"] == one).all() and (outs["recall"] == 1).all() and (outs["scores"] == 0.9).all()
    assert outs["npig"].tolist() == [[1]] and (outs["ap_all"] == one).all()
    assert curve["curve_code"].tolist() == [[1], [1]] and curve["curve_score"].tolist() == [0.9]
    groups, eval_in, outs, _ = _coco_case()
    none = dict(curve_a=-1, curve_m=-1, curve_off=None, curve_score=None, curve_code=None)
    _C.cpu.coco_eval(*_coco_args(groups, eval_in, outs, none))
    assert (outs["precision"] == one).all()


def _bad(part, key, value):
    def edit(parts):
        parts = [dict(p) for p in parts]
        parts[part][key] = value
        return parts
    return edit


@pytest.mark.parametrize("edit, match", [
    (_bad(0, "gt_box", torch.zeros(1, 5, dtype=torch.float64)), r"gt_box must have 4 columns, got \[1, 5\]"),
    (_bad(0, "gt_area", torch.zeros(2, dtype=torch.float64)), r"gt_area \[2\] and gt_box \[1, 4\] differ in size"),
    (_bad(0, "gt_crowd", torch.zeros(1)), r"gt_crowd must be uint8, got float32"),
    (_bad(0, "dt_off", torch.tensor([0, 1, 1])), r"dt_off \[3\] and gt_off \[2\] differ in size"),
    (_bad(0, "dt_off", torch.tensor([1, 1])), r"dt_off must rise from 0 to 1 \(dt_box's rows\)"),
    (_bad(0, "gt_off", torch.tensor([0, 2])), r"gt_off must rise from 0 to 1 \(gt_box's rows\)"),
    (_bad(0, "gt_off", torch.tensor([[0, 1], [0, 1]])[:, 1]), r"gt_off must be contiguous"),
    (_bad(0, "gt_off", 12345), r"gt_off must be a tensor's DLPack capsule .* got int"),
    (_bad(1, "dt_score", torch.zeros(2, dtype=torch.float64)), r"dt_score \[2\] and dt_box \[1, 4\] differ in size"),
    (_bad(1, "iou_thr", torch.tensor([1, 2])), r"iou_thr must be float64, got int64"),
    (_bad(1, "area_rng", torch.zeros(0, 2, dtype=torch.float64)), r"area_rng must not be empty"),
    (_bad(2, "max_dets", torch.tensor([0])), r"max_dets must be >= 1"),
    (_bad(2, "npig", torch.zeros(2, 1, dtype=torch.long)), r"gt_off must hold K \* I \+ 1 offsets .* K = 2"),
    (_bad(2, "precision", torch.zeros(2, 3, 1, 1, 2, dtype=torch.float64)),
     r"precision must have shape \[2, 3, 1, 1, 1\], got \[2, 3, 1, 1, 2\]"),
    (_bad(2, "recall", torch.zeros(2, 1, 1, 1)), r"recall must be float64, got float32"),
    (_bad(3, "curve_code", None), r"curve_off and curve_score come with curve_code"),
    (_bad(3, "curve_code", torch.zeros(2, 3, dtype=torch.uint8)), r"curve_code must have shape \[2, 1\], got \[2, 3\]"),
    (_bad(3, "curve_off", torch.tensor([0, 2])), r"curve_off must rise from 0 to 1"),
    (_bad(3, "curve_a", 1), r"curve_a and curve_m must index an area range and a max_dets entry"),
])
def test_coco_eval_rejects_bad_arguments(edit, match):
    with pytest.raises(ValueError, match=r"segfast._C cpu.coco_eval: " + match):
        _C.cpu.coco_eval(*_coco_args(*edit(_coco_case())))


def test_coco_accumulate_entry():
    """cpu.coco_accumulate of the codes coco_eval finds gives coco_eval's outputs; each argument checked."""
    groups, eval_in, want, _ = _coco_case()
    _C.cpu.coco_eval(*_coco_args(groups, eval_in, want, dict(a=-1, m=-1, off=None, sc=None, code=None)))
    codes = dict(cat_off=torch.tensor([0, 1]), sc=torch.tensor([0.9], dtype=torch.float64),
                 rank=torch.zeros(1, dtype=torch.int32), code=torch.ones(1, 1, 2, dtype=torch.uint8))
    _, _, outs, curve = _coco_case()
    outs["npig"].copy_(want["npig"])
    _C.cpu.coco_accumulate(*_coco_args(codes, outs, curve))
    for k in ("precision", "recall", "scores", "ap_all"):
        assert torch.equal(outs[k], want[k]), k
    assert curve["curve_code"].tolist() == [[1], [1]]
    for key, value, match in [
        ("rank", torch.zeros(1, dtype=torch.long), r"rank must be int32, got int64"),
        ("cat_off", torch.tensor([0, 0]), r"cat_off must rise from 0 to 1 \(code's rows\)"),
        ("sc", torch.zeros(2, dtype=torch.float64), r"sc \[2\] and code \[1, 1, 2\] differ in size"),
        ("code", torch.ones(1, 2, 2, dtype=torch.uint8),
         r"precision must have shape \[2, 3, 1, 2, 1\], got \[2, 3, 1, 1, 1\]"),
    ]:
        bad = dict(codes, **{key: value})
        with pytest.raises(ValueError, match=r"segfast._C cpu.coco_accumulate: " + match):
            _C.cpu.coco_accumulate(*_coco_args(bad, outs, curve))


def test_an_empty_view_is_contiguous():
    """As torch's is_contiguous: an empty tensor is contiguous whatever its strides (a column slice of [0, 9])."""
    x, t = torch.randn(2, 3, 10), torch.randint(0, 3, (2, 10))
    assert torch.zeros(0, 9)[:, 0].is_contiguous()
    with pytest.raises(ValueError, match=r"out must have shape \[10\], got \[0\]"):  # not "must be contiguous"
        _C.cpu.confusion_logits(view(x), view(t), None, view(torch.zeros(0, 9, dtype=torch.long)[:, 0]), 1)
