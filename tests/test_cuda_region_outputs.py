"""The CUDA C++ region kernels (csrc/cuda/region.cu) beyond plain sums, run on
the CPU emulation layer (segfast._C_emu, SEGFAST_CUDA_EMU=ON) under several
thread orders: the stats kernel's bad-label flag and confusion counts of the
logits' argmax, against torch; the finish kernel and the grad kernel reading
grad_output, against the cpu backend."""

from __future__ import annotations

import pytest
import torch

import segfast
from segfast import backends

emu = backends._C_emu
pytestmark = pytest.mark.skipif(
    emu is None, reason="segfast._C_emu is not built (install with SEGFAST_CUDA_EMU=ON)")


@pytest.fixture(params=["forward", "reverse", "shuffle"])
def schedule(request):
    before = emu.schedule()
    emu.set_schedule(request.param, 777)
    yield request.param
    emu.set_schedule(before)


def _stats(x, t, P, ignore, flag=None, confusion=None, act=2):
    N, C, S = x.shape
    out = torch.empty((N, P, C, 7), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    view = backends.view
    emu.cuda.region_stats(view(x), view(t), view(out), act, 0, 0.0, 0, None if ignore is None else float(ignore),
                          view(confusion), view(flag), 0)
    return out


def _want(x, t, C, ignore):
    ok = (t >= 0) & (t < C)
    if ignore is not None:
        ok &= t != ignore
    return torch.bincount((t.long() * C + x.argmax(1))[ok], minlength=C * C).view(C, C)


@pytest.mark.parametrize("C", [3, 21, 40, 300])  # 40: more bins than a block counts in shared memory; 300: wide
def test_confusion(schedule, C):
    gen = torch.Generator().manual_seed(C)
    N, S = 2, 300
    x = torch.randn(N, C, S, generator=gen)
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.3, x.round(), x)  # ties: the first maximum
    x[0, 1, 3] = float("nan")
    x[1, C - 1, 4] = float("nan")
    x[1, 0, 5] = float("nan")
    t = torch.randint(0, C, (N, S), generator=gen)
    t[torch.rand(N, S, generator=gen) < 0.2] = 255
    t[0, 7] = C  # out of range: not counted
    conf = torch.full((C, C), 2, dtype=torch.int64)
    flag = torch.zeros(1, dtype=torch.int32)
    got = _stats(x, t, 3, 255, flag, conf)
    assert torch.equal(conf, _want(x, t, C, 255) + 2)
    assert flag.item() == 1
    torch.testing.assert_close(got, _stats(x, t, 3, 255), rtol=0, atol=0, equal_nan=True)  # the same sums


def test_flag(schedule):
    gen = torch.Generator().manual_seed(1)
    C, N, S = 4, 2, 200
    x = torch.randn(N, C, S, generator=gen, dtype=torch.float64)
    t = torch.randint(0, C, (N, S), generator=gen).to(torch.uint8)
    t[1, 10] = 255
    flag = torch.zeros(1, dtype=torch.int32)
    _stats(x, t, 2, 255, flag)
    assert flag.item() == 0
    _stats(x, t, 2, None, flag)  # 255 is a label now, out of range
    assert flag.item() == 1


FINISH_CASES = {  # the finish kernel's branches: pixel terms, generalized Dice (block reductions per image), powers
    "dice_ce": lambda x, t, b: segfast.dice_ce_loss(x, t, ignore_index=255, label_smoothing=0.1,
                                                    ce_weight=[1.0, 2.0, 0.5] + [1.0] * (x.shape[1] - 3), backend=b),
    "dice_fused": lambda x, t, b: segfast.dice_fused_loss(x, t, ignore_index=255, backend=b),
    "gdl": lambda x, t, b: segfast.generalized_dice_loss(x, t, ignore_index=255, include_background=False,
                                                         backend=b),
    "focal_tversky_batch": lambda x, t, b: segfast.tversky_loss(x, t, ignore_index=255, alpha=0.3, beta=0.7,
                                                                gamma=1.5, batch=True, reduction="sum", backend=b),
}


@pytest.mark.parametrize("C", [3, 40])
@pytest.mark.parametrize("case", sorted(FINISH_CASES))
def test_finish_kernel_agrees_with_cpu(schedule, monkeypatch, case, C):
    """cuda.region_finish (the whole loss from the partial sums, one block) and
    the grad kernel reading grad_output, against the cpu backend's torch
    formulas, under several thread orders (its block reductions share memory)."""
    calls = []
    real = emu.cuda.region_finish
    monkeypatch.setattr(emu.cuda, "region_finish", lambda *a: calls.append(a) or real(*a))
    gen = torch.Generator().manual_seed(C)
    x = torch.randn(2, C, 9, 7, generator=gen) * 2
    t = torch.randint(0, C, (2, 9, 7), generator=gen)
    t[0, 1, :4] = 255
    got = {}
    for b in ("cuda", "cpu"):
        xb = x.clone().requires_grad_(True)
        loss = FINISH_CASES[case](xb, t, b)
        loss.backward(torch.tensor(-1.7))
        got[b] = (loss.detach(), xb.grad)
    assert len(calls) == 1
    torch.testing.assert_close(got["cuda"][0], got["cpu"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["cuda"][1], got["cpu"][1], rtol=1e-4, atol=1e-6)


def _layout(x, layout):
    """x [N, C, S] in the layout a test asks for: its values, other strides or alignment."""
    if layout == "offset":  # a view one element into its storage: no 16-byte alignment
        return x.new_empty(x.numel() + 1)[1:].view(x.shape).copy_(x)
    if layout == "strided":  # pixels 2 apart
        return torch.stack([x, x], -1)[..., 0]
    if layout == "half":
        return x.half()
    return x.contiguous()


def _sums(x, t, C, ignore):
    """The 7 sums of the softmax stats pass, in float64 from torch ops."""
    p = torch.softmax(x.double(), 1)
    v = (t != ignore).double().unsqueeze(1) if ignore is not None else torch.ones_like(p[:, :1])
    oh = torch.nn.functional.one_hot(torch.where(t == ignore, 0, t).long(), C).permute(0, 2, 1).double() * v
    return torch.stack([(v * p * oh).sum(2), (v * p).sum(2), oh.sum(2), v.sum(2).expand(-1, C),
                        (v * p * p).sum(2), (oh * oh).sum(2), (v * torch.minimum(p, oh)).sum(2)], -1)


@pytest.mark.parametrize("C", [2, 5, 40, 130, 300])  # class lanes G x classes per lane: 2x1, 8x1, 32x2, 32x8; wide
@pytest.mark.parametrize("layout", ["contiguous", "offset", "strided", "half"])
def test_stats_runs_and_layouts(schedule, C, layout):
    """The stats kernel's runs of 4 pixels: vector loads (contiguous, S a
    multiple of 4), their element fallback (a misaligned base, a pixel stride,
    S = 50 cutting a row's runs), float16; chunks that end inside a run (P = 3),
    int32 labels. The sums over the chunks equal torch's."""
    gen = torch.Generator().manual_seed(C)
    for S in (48, 50):
        x = torch.randn(2, C, S, generator=gen) * 2
        t = torch.randint(0, C, (2, S), generator=gen, dtype=torch.int32)
        t[0, :5] = 255
        xl = _layout(x, layout)
        got = _stats(xl, t, 3, 255).sum(1)
        torch.testing.assert_close(got.double(), _sums(xl.float(), t, C, 255), rtol=1e-4, atol=1e-4)


def _dtype_layout(x, layout):
    if layout in ("bfloat16", "float64"):
        return x.to(getattr(torch, layout))
    return _layout(x, layout)


@pytest.mark.parametrize("C", [1, 2, 21, 257])
@pytest.mark.parametrize("layout", ["contiguous", "offset", "strided", "half", "bfloat16", "float64"])
def test_grad_runs_and_layouts(schedule, C, layout):
    """The grad kernel's runs of 4 pixels: one vector load per class row and
    one vector store of dx (contiguous and aligned, S = 48), the element path
    (a misaligned base, a pixel stride, S = 50 cutting the last run), 16-bit and
    float64 logits; softmax on labels with ignore, with a pixel term (Dice + CE:
    the stats pass's sums too), sigmoid on dense targets. Against the cpu backend."""
    gen = torch.Generator().manual_seed(C)
    tol = dict(rtol=2e-2, atol=2e-3) if layout in ("half", "bfloat16") else dict(rtol=1e-4, atol=1e-6)
    for S in (48, 50):
        x = torch.randn(2, C, 1, S, generator=gen) * 2
        t = torch.randint(0, C, (2, 1, S), generator=gen)
        t[0, 0, :5] = 255
        dense = (torch.rand(2, C, 1, S, generator=gen) > 0.5).float()
        dense[1, 0, :3] = -1
        cases = [lambda a, b: segfast.tversky_loss(a, dense, mode="multilabel", ignore_index=-1, backend=b)]
        if C > 1:
            cases += [lambda a, b: segfast.dice_loss(a, t, ignore_index=255, backend=b),
                      lambda a, b: segfast.dice_ce_loss(a, t, ignore_index=255, backend=b)]
        else:
            cases += [lambda a, b: segfast.dice_loss(a, dense.clamp(min=0), mode="binary", backend=b)]
        for fn in cases:
            got = {}
            for b in ("cuda", "cpu"):
                xb = _dtype_layout(x.view(2, C, S), layout).view(2, C, 1, S).detach().requires_grad_(True)
                loss = fn(xb, b)
                loss.backward(torch.tensor(0.7, dtype=loss.dtype))
                got[b] = (loss.detach().double(), xb.grad.double())
            torch.testing.assert_close(got["cuda"][0], got["cpu"][0], **tol)
            torch.testing.assert_close(got["cuda"][1], got["cpu"][1], **tol)


WIDE_CASES = {  # stats_wide_kernel: C > 256, float64 from 129 classes; with the pixel terms
    "dice": lambda x, t, d, b: segfast.dice_loss(x, t, ignore_index=255, reduction="none", backend=b),
    "dice_ce": lambda x, t, d, b: segfast.dice_ce_loss(x, t, ignore_index=255, label_smoothing=0.1, backend=b),
    "dice_focal": lambda x, t, d, b: segfast.dice_focal_loss(x, t, ignore_index=255, gamma=2.0, backend=b),
    "dice_fused": lambda x, t, d, b: segfast.dice_fused_loss(x, t, ignore_index=255, backend=b),
    "dense_sigmoid": lambda x, t, d, b: segfast.dice_loss(x, d, mode="multilabel", ignore_index=-1, backend=b),
    "dense_softmax": lambda x, t, d, b: segfast.jaccard_loss(x, d, ignore_index=-1, backend=b),
}


@pytest.mark.parametrize("C, dtype", [(257, torch.float32), (300, torch.float32), (150, torch.float64)])
@pytest.mark.parametrize("case", sorted(WIDE_CASES))
def test_wide_stats_agrees_with_cpu(schedule, case, C, dtype):
    """The wide stats kernel (each warp its own tiles and running sums, no block
    barrier in the tile loop, the warps' sums reduced once per image), and the
    grad kernel at those C, against the cpu backend: S = 300 gives blocks with
    several warp tiles and a last run cut short."""
    gen = torch.Generator().manual_seed(C)
    x = (torch.randn(2, C, 300, generator=gen) * 2).to(dtype)
    t = torch.randint(0, C, (2, 300), generator=gen)
    t[0, :7] = 255
    d = torch.softmax(torch.randn(2, C, 300, generator=gen), 1).to(dtype)
    d[1, :, :3] = -1
    if case == "dense_sigmoid":
        d = (d > 1.0 / C).to(dtype)
        d[1, 0, :3] = -1
    got = {}
    for b in ("cuda", "cpu"):
        xb = x.clone().requires_grad_(True)
        loss = WIDE_CASES[case](xb, t, d, b)
        loss.backward(torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).view_as(loss))
        got[b] = (loss.detach(), xb.grad)
    torch.testing.assert_close(got["cuda"][0], got["cpu"][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["cuda"][1], got["cpu"][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("C, dtype", [(300, torch.float32), (900, torch.float64)])
@pytest.mark.parametrize("layout", ["contiguous", "offset", "strided"])
def test_wide_stats_layouts(schedule, C, dtype, layout):
    """The wide stats kernel on vector and element loads; at C = 900 in float64
    one warp's running sums [C, 7] pass the kernel's shared memory budget and
    stay in the block's out slot (one warp per block). P = 3 chunks, S = 150
    (chunks of whole runs, the last run cut short)."""
    gen = torch.Generator().manual_seed(C)
    x = (torch.randn(2, C, 150, generator=gen) * 2).to(dtype)
    t = torch.randint(0, C, (2, 150), generator=gen, dtype=torch.int32)
    t[1, :9] = 255
    xl = _layout(x, layout)
    got = _stats(xl, t, 3, 255).sum(1)
    torch.testing.assert_close(got.double(), _sums(xl.double(), t, C, 255), rtol=1e-5, atol=1e-5)
