"""Parity of the Triton region kernels (segfast.triton_kernels.region) with
the eager reference segfast.reference.region, kernel by kernel.

Without a GPU the kernels run on CPU tensors in the Triton interpreter;
conftest.py sets TRITON_INTERPRET=1 before triton is first imported.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from conftest import (DEVICE, TRITON_TOL as TOL, close_rel as _close,  # noqa: E402
                      pairwise, triton_needs_run, with_layout)

from segfast.reference import region as ref  # noqa: E402
from segfast.triton_kernels import region as R  # noqa: E402

needs_run = triton_needs_run()

STATS_TOL = {  # stats are fp32 sums of the exactly representable inputs
    torch.float32: (1e-5, 1e-6),
    torch.float64: (1e-5, 1e-6),
    torch.float16: (1e-5, 1e-6),
    torch.bfloat16: (1e-5, 1e-6),
}


def make_x(N, C, S, act, dtype, layout="contiguous", gen=None):
    """x as [N, C, S] with the requested memory layout (base cast, then viewed)."""
    def rnd(*shape):
        v = torch.randn(*shape, generator=gen, dtype=torch.float64) * 2
        return (torch.sigmoid(v) if act == 0 else v).to(dtype)
    return with_layout(rnd, N, C, S, layout)


def make_labels(N, C, S, dtype, ignore, label_offset=0, gen=None):
    lab = torch.randint(0, C, (N, S), generator=gen) + label_offset
    if ignore is not None:
        lab[torch.rand(N, S, generator=gen) < 0.2] = ignore
    return lab.to(dtype)


def make_dense(N, C, S, dtype, ignore, kind="soft", gen=None):
    if kind == "soft":
        t = torch.rand(N, C, S, generator=gen, dtype=torch.float64)
    else:  # one-hot
        t = torch.nn.functional.one_hot(torch.randint(0, C, (N, S), generator=gen), C)
        t = t.permute(0, 2, 1).to(torch.float64)
    if ignore is not None:
        t[torch.rand(N, C, S, generator=gen) < 0.2] = ignore
    return t.to(dtype)


def run_and_check(x, t, is_label, act, P, label_offset=0, ignore=None, block_s=None,
                  block_c=None, dx_layout="like"):
    N, C, S = x.shape
    dev = DEVICE
    xd, td = x.to(dev), t.to(dev)
    has_ignore = ignore is not None
    ig = float(ignore) if has_ignore else 0.0

    # stats: fill with NaN so an unwritten element fails the check
    out = torch.full((N, P, C, 7), float("nan"), device=dev)
    R.launch_stats(xd, td, is_label, out, N, C, S, P, act, label_offset, has_ignore, ig,
                   block_s=block_s, block_c=block_c)
    want = ref.region_stats(x.double(), t, is_label, act, label_offset,
                            ignore if has_ignore else None)
    rt, at = STATS_TOL[x.dtype]
    _close(out.sum(1).cpu(), want, rt, at, "stats")
    # chunk partials, checked against the reference on each chunk
    L = R.chunk_len(S, P, R._stats_blocks(C, block_s, block_c, x.element_size())[2])  # the launcher's chunk length
    for j in range(P):
        lo, hi = min(j * L, S), min((j + 1) * L, S)
        tj = t[:, lo:hi] if is_label else t[:, :, lo:hi]
        wj = ref.region_stats(x[:, :, lo:hi].double(), tj, is_label, act, label_offset,
                              ignore if has_ignore else None)
        _close(out[:, j].cpu(), wj, rt, at, f"stats chunk {j}")

    # grad with a random (not all-ones) dLoss/dStats
    gen = torch.Generator().manual_seed(123)
    g = torch.randn(N, C, 7, generator=gen, dtype=torch.float32)
    if dx_layout == "like":
        dx = torch.full_like(xd, float("nan"))
    else:  # transposed layout, independent of x's
        dx = torch.full((N, S, C), float("nan"), dtype=x.dtype, device=dev).permute(0, 2, 1)
    R.launch_grad(xd, td, is_label, g.to(dev), dx, N, C, S, act, label_offset, has_ignore, ig,
                  block_s=block_s, block_c=block_c)
    xr = x.double().requires_grad_()
    s = ref.region_stats(xr, t, is_label, act, label_offset, ignore if has_ignore else None)
    (gx,) = torch.autograd.grad((s * g.double()).sum(), xr)
    assert dx.dtype == x.dtype
    rt, at = TOL[x.dtype]
    _close(dx.cpu(), gx, rt, at, "grad")


N, S = 2, 7 * 13  # odd S


@needs_run
@pytest.mark.parametrize("C", [1, 2, 5, 37])
@pytest.mark.parametrize("act", [0, 1, 2])
def test_labels_act_C(act, C):
    gen = torch.Generator().manual_seed(C * 10 + act)
    x = make_x(N, C, S, act, torch.float32, gen=gen)
    t = make_labels(N, C, S, torch.int64, 255, gen=gen)
    run_and_check(x, t, True, act, P=3, ignore=255)


@needs_run
@pytest.mark.parametrize("case", [
    dict(C=5, act=2, dtype=torch.uint8, ignore=None, P=1),
    dict(C=5, act=2, dtype=torch.uint8, ignore=255, P=1),
    dict(C=5, act=1, dtype=torch.int64, ignore=-1, P=3),
    dict(C=4, act=2, dtype=torch.int32, ignore=0, P=3, label_offset=1),  # labels 1..C, 0 void
    dict(C=3, act=0, dtype=torch.int64, ignore=None, P=12),  # one pixel block for 12 chunks: empty chunks
])
def test_label_variants(case):
    gen = torch.Generator().manual_seed(7)
    C, act = case["C"], case["act"]
    off = case.get("label_offset", 0)
    x = make_x(N, C, S, act, torch.float32, gen=gen)
    t = make_labels(N, C, S, case["dtype"], case["ignore"], label_offset=off, gen=gen)
    run_and_check(x, t, True, act, P=case["P"], label_offset=off, ignore=case["ignore"])


@needs_run
@pytest.mark.parametrize("act,C,ignore", pairwise([0, 1, 2], [2, 5, 37], [None, -1.0]))
def test_dense_soft(act, C, ignore):
    gen = torch.Generator().manual_seed(C * 100 + act)
    x = make_x(N, C, S, act, torch.float32, gen=gen)
    t = make_dense(N, C, S, torch.float32, ignore, gen=gen)
    run_and_check(x, t, False, act, P=3, ignore=ignore)


@needs_run
@pytest.mark.parametrize("tdtype", [torch.uint8, torch.bool, torch.float16, torch.bfloat16,
                                    torch.float64])
def test_dense_target_dtypes(tdtype):
    gen = torch.Generator().manual_seed(11)
    C, act = 4, 2
    x = make_x(N, C, S, act, torch.float32, gen=gen)
    if tdtype in (torch.uint8, torch.bool):
        t = make_dense(N, C, S, torch.float64, None, kind="onehot", gen=gen).to(tdtype)
    else:
        t = make_dense(N, C, S, tdtype, -1.0, gen=gen)
    ignore = None if tdtype in (torch.uint8, torch.bool) else -1.0
    run_and_check(x, t, False, act, P=2, ignore=ignore)


@needs_run
def test_identity_ties():
    """p == t exactly: h = 1/2, like torch.minimum's backward."""
    gen = torch.Generator().manual_seed(3)
    C = 3
    t = make_dense(N, C, S, torch.float64, None, kind="onehot", gen=gen).float()
    x = make_x(N, C, S, 0, torch.float32, gen=gen)
    tie = torch.rand(N, C, S, generator=gen) < 0.3
    x = torch.where(tie, t, x)
    x[0, 0, :5] = 0.25
    t[0, 0, :5] = 0.25
    run_and_check(x, t, False, 0, P=2)


@needs_run
@pytest.mark.parametrize("act", [0, 1, 2])
def test_large_C_class_loop(act):
    """C > MAX_SINGLE_C: looped classes in the grad kernel and the stats
    kernel's wide class tile, with several pixel blocks per chunk."""
    C = 70
    assert R.MAX_SINGLE_C < C <= R.STATS_MAX_C
    assert R._stats_blocks(C, None, None)[0] and not R._blocks(C, None, None)[0]
    gen = torch.Generator().manual_seed(70 + act)
    x = make_x(N, C, S, act, torch.float32, layout="channels_last", gen=gen)
    t = make_labels(N, C, S, torch.uint8, 255, gen=gen)
    run_and_check(x, t, True, act, P=2, ignore=255, block_s=16)
    if act == 2:
        td = make_dense(N, C, S, torch.float32, -1.0, gen=gen)
        run_and_check(x, td, False, act, P=1, ignore=-1.0, block_s=32)


@needs_run
@pytest.mark.parametrize("x_dt,t_dt,tile", [(torch.bfloat16, None, (2, 512)), (torch.float32, torch.bool, (1, 1024)),
                                            (torch.float32, torch.float16, (2, 512)),
                                            (torch.float16, torch.float64, (2, 512)),
                                            (torch.float32, torch.float64, (4, 256))])
def test_grad_class_loop_default_tiles(x_dt, t_dt, tile):
    """The grad kernel's class loop at its default tiles: 16-byte pixel
    vectors of the narrowest of the logits' and dense targets' dtypes (BLOCK_S
    = 64 of them), 16 / vector classes per chunk; C odd, so the last chunk is
    partial."""
    C = 35
    itemsize = x_dt.itemsize if t_dt is None else min(x_dt.itemsize, t_dt.itemsize)
    assert R._grad_blocks(C, None, None, itemsize)[1:] == tile + (R.GRAD_LOOP_WARPS,)
    gen = torch.Generator().manual_seed(35)
    x = make_x(N, C, S, 2, x_dt, gen=gen)
    if t_dt is None:
        run_and_check(x, make_labels(N, C, S, torch.int64, 255, gen=gen), True, 2, P=2, ignore=255)
    elif t_dt == torch.bool:
        run_and_check(x, make_dense(N, C, S, torch.float64, None, kind="onehot", gen=gen).to(t_dt), False, 2, P=1)
    else:
        run_and_check(x, make_dense(N, C, S, t_dt, -1.0, gen=gen), False, 2, P=1, ignore=-1.0)


@needs_run
@pytest.mark.parametrize("C", [64, 150, 256])
def test_wide_class_tile(C):
    """The stats kernel's wide class tile at the class counts of its layouts
    (CL = 16, 32 with 8 class rows, the largest C), float16 logits, and the
    default tile (no block_s)."""
    gen = torch.Generator().manual_seed(C)
    x = make_x(N, C, S, 2, torch.float32, gen=gen)
    t = make_labels(N, C, S, torch.int64, 255, gen=gen)
    run_and_check(x, t, True, 2, P=3, ignore=255)
    run_and_check(x.half(), t, True, 2, P=2, ignore=255)


@needs_run
@pytest.mark.parametrize("C", [40, pytest.param(300, marks=pytest.mark.slow)])
def test_stats_class_chunk_loop(C):
    """The stats kernel's class-chunk loop: above STATS_MAX_C, or asked for with block_c."""
    gen = torch.Generator().manual_seed(C)
    x = make_x(N, C, S, 2, torch.float32, gen=gen)
    t = make_labels(N, C, S, torch.int64, 255, gen=gen)
    assert not R._stats_blocks(C, None, 16 if C < R.STATS_MAX_C else None)[0]
    run_and_check(x, t, True, 2, P=2, ignore=255, block_s=16, block_c=16 if C < R.STATS_MAX_C else None)


@needs_run
@pytest.mark.parametrize("C, dtype, act, P", [pytest.param(300, torch.float16, 2, 4, marks=pytest.mark.slow),
                                             (300, torch.bfloat16, 1, 2),
                                             pytest.param(1000, torch.float32, 2, 2, marks=pytest.mark.slow)])
def test_stats_class_chunk_loop_dtypes(C, dtype, act, P):
    """The class-chunk loop's default tile (one-warp programs) at C = 300 and
    1000, 16-bit logits, odd S, chunks of several tiles and an empty one."""
    gen = torch.Generator().manual_seed(C + act)
    x = make_x(N, C, S, act, dtype, gen=gen)
    t = make_labels(N, C, S, torch.int64, 255, gen=gen)
    assert not R._stats_blocks(C, None, None, x.element_size())[0]
    run_and_check(x, t, True, act, P=P, ignore=255)
    if act != 2:
        td = make_dense(N, C, S, dtype, -1.0, gen=gen)
        run_and_check(x, td, False, act, P=P, ignore=-1.0)


@needs_run
@pytest.mark.parametrize("xent", [1, 2, 3])
def test_stats_class_chunk_loop_pixel_term(xent):
    """The class-chunk loop with a pixel term (CE, focal, fused), the bad-label
    flag and the confusion counts: the single class tile's sums, flag and
    counts, and torch.bincount's counts."""
    C = 40
    gen = torch.Generator().manual_seed(xent)
    x = make_x(N, C, S, 2, torch.float32, gen=gen)
    t = make_labels(N, C, S, torch.int64, 255, gen=gen)
    outs = {}
    for block_c in (None, 16):  # the wide single tile, the class-chunk loop
        conf = torch.zeros((C, C), dtype=torch.int64, device=DEVICE)
        flag = torch.zeros(1, dtype=torch.int32, device=DEVICE)
        out = torch.full((N, 3, C, 9), float("nan"), device=DEVICE)
        R.launch_stats(x.to(DEVICE), t.to(DEVICE), True, out, N, C, S, 3, 2, 0, True, 255.0, xent, 1.5,
                       block_c=block_c, flag=flag, confusion=conf)
        outs[block_c] = (out.sum(1).cpu(), flag.item(), conf.cpu())
    (a, fa, ca), (b, fb, cb) = outs[None], outs[16]
    _close(b, a.double(), 1e-5, 1e-5, "loop vs tile")
    assert fa == fb == 0
    assert torch.equal(ca, cb) and torch.equal(cb, _want_confusion(x, t, C, 255))
    tb = t.clone()
    tb[1, 7] = C + 3
    flag = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    _stats_with(x, tb, C, 3, flag=flag, xent=xent, block_c=16)
    assert flag.item() != 0


@needs_run
@pytest.mark.parametrize("layout", ["slice", "channels_last", "sliced_c"])
@pytest.mark.parametrize("act", [1, 2])
def test_noncontiguous(layout, act):
    gen = torch.Generator().manual_seed(5)
    C = 5
    x = make_x(N, C, S, act, torch.float32, layout=layout, gen=gen)
    assert not x.is_contiguous()
    t = make_labels(N + 1, C, 2 * S, torch.int64, 255, gen=gen)[1:, ::2]  # strided labels
    run_and_check(x, t, True, act, P=3, ignore=255, dx_layout="transposed")
    td = make_dense(N, C, S, torch.float32, None, gen=gen).permute(0, 2, 1).contiguous()
    td = td.permute(0, 2, 1)  # channels_last-like dense target
    run_and_check(x, td, False, act, P=1)


@needs_run
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("act", [1, 2])
def test_low_precision(dtype, act):
    gen = torch.Generator().manual_seed(9)
    C = 5
    x = make_x(N, C, S, act, dtype, gen=gen)
    t = make_labels(N, C, S, torch.int64, 255, gen=gen)
    run_and_check(x, t, True, act, P=3, ignore=255)
    td = make_dense(N, C, S, dtype, -1.0, gen=gen)
    run_and_check(x, td, False, act, P=1, ignore=-1.0)


@needs_run
@pytest.mark.parametrize("P", [1, 3, 12])
def test_chunks_multi_block(P):
    """Small BLOCK_S: several loop iterations per chunk (P=1, 3) and P larger than
    the number of blocks, with empty chunks (P=12: L=16, chunks 6.. empty)."""
    gen = torch.Generator().manual_seed(P)
    C = 5
    x = make_x(N, C, S, 2, torch.float32, gen=gen)
    t = make_labels(N, C, S, torch.int64, 255, gen=gen)
    run_and_check(x, t, True, 2, P=P, ignore=255, block_s=16)


@needs_run
def test_through_triton_op():
    """The launchers work inside a torch.library.triton_op (eager)."""
    from torch.library import triton_op

    @triton_op("segfast_test_triton_region::stats", mutates_args={})
    def stats_op(x: torch.Tensor, t: torch.Tensor, P: int) -> torch.Tensor:
        N, C, S = x.shape
        out = torch.empty((N, P, C, 7), device=x.device, dtype=torch.float32)
        R.launch_stats(x, t, True, out, N, C, S, P, 2, 0, True, 255.0)
        return out.sum(1)

    gen = torch.Generator().manual_seed(1)
    x = make_x(N, 3, S, 2, torch.float32, gen=gen)
    t = make_labels(N, 3, S, torch.int64, 255, gen=gen)
    got = stats_op(x.to(DEVICE), t.to(DEVICE), 2)
    _close(got.cpu(), ref.region_stats(x.double(), t, True, 2, 0, 255), 1e-5, 1e-6, "triton_op")


def _stats_with(x, t, C, P, *, ignore=255, label_offset=0, flag=None, confusion=None, block_s=None, xent=0,
                block_c=None):
    N, _, S = x.shape
    out = torch.full((N, P, C, 9 if xent else 7), float("nan"), device=DEVICE)
    R.launch_stats(x.to(DEVICE), t.to(DEVICE), True, out, N, C, S, P, 2, label_offset, ignore is not None,
                   float(ignore if ignore is not None else 0), xent, block_s=block_s, flag=flag, confusion=confusion,
                   block_c=block_c)
    return out


def _want_confusion(x, t, C, ignore, label_offset=0):
    y = t.long() - label_offset
    ok = (y >= 0) & (y < C)
    if ignore is not None:
        ok &= t.long() != ignore
    pred = x.argmax(1)
    return torch.bincount((y * C + pred)[ok], minlength=C * C).view(C, C)


@needs_run
@pytest.mark.parametrize("C", [1, 3, 21, 37])
@pytest.mark.parametrize("P", [1, 3])
def test_confusion_counts(C, P):
    """confusion[y, argmax x] += 1 over the valid pixels, added to what the
    tensor holds, with torch.argmax's ties (first maximum) and NaN (first NaN)."""
    gen = torch.Generator().manual_seed(C * 3 + P)
    x = make_x(N, C, S, 2, torch.float32, gen=gen)
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.3, x.round(), x)  # ties
    x[0, :, 5] = 1.0  # an all-tied pixel: class 0
    if C > 2:
        x[0, 2, 6] = float("nan")
        x[1, 1, 7] = float("nan")
        x[1, C - 1, 7] = float("nan")
        x[1, :, 8] = float("-inf")
    t = make_labels(N, C, S, torch.uint8, 255, gen=gen)
    t[0, 9] = C  # out of range: neither counted nor an error here
    conf = torch.full((C, C), 5, dtype=torch.int64, device=DEVICE)
    _stats_with(x, t, C, P, confusion=conf, block_s=16 if C > R.MAX_SINGLE_C else 32)  # several tiles per chunk
    want = _want_confusion(x, t, C, 255) + 5
    assert torch.equal(conf.cpu(), want), (conf.cpu() - want)


@needs_run
def test_confusion_labels_offset_and_stats_unchanged():
    """label_offset, int64 labels with ignore -1, a pixel term: the confusion
    output leaves the sums as they are without it."""
    gen = torch.Generator().manual_seed(4)
    C = 4
    x = make_x(N, C, S, 2, torch.float32, gen=gen)
    t = make_labels(N, C, S, torch.int64, -1, label_offset=1, gen=gen)
    conf = torch.zeros((C, C), dtype=torch.int64, device=DEVICE)
    got = _stats_with(x, t, C, 2, ignore=-1, label_offset=1, confusion=conf, xent=1)
    plain = _stats_with(x, t, C, 2, ignore=-1, label_offset=1, xent=1)
    assert torch.equal(got, plain)
    assert torch.equal(conf.cpu(), _want_confusion(x, t, C, -1, 1))


@needs_run
@pytest.mark.parametrize("C", [3, 37])
def test_bad_label_flag(C):
    """flag is set by a label outside [offset, offset + C) other than the ignore
    value, left alone otherwise; the sums are those without it."""
    gen = torch.Generator().manual_seed(C)
    x = make_x(N, C, S, 2, torch.float32, gen=gen)
    t = make_labels(N, C, S, torch.int32, 255, gen=gen)
    flag = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    clean = _stats_with(x, t, C, 3, flag=flag)
    assert flag.item() == 0
    assert torch.equal(clean, _stats_with(x, t, C, 3))
    for bad in (C, -1, 254):
        tb = t.clone()
        tb[1, S - 1] = bad
        flag.zero_()
        _stats_with(x, tb, C, 3, flag=flag)
        assert flag.item() != 0, bad
    flag.zero_()
    _stats_with(x, t, C, 3, ignore=None, flag=flag)  # 255 is no longer ignored
    assert flag.item() != 0
