"""The CUDA C++ kernels (csrc/cuda) on the CPU emulation layer (segfast._C_emu,
built with SEGFAST_CUDA_EMU=ON): (a) self-tests of the emulator, (b) every
kernel through the public ops, ``cuda`` backend on CPU tensors against the
``cpu`` backend and the eager reference (``torch``), under several orders of
the threads of a block (a missing __syncthreads shows only under some).
"""

from __future__ import annotations

import pytest
import torch

import segfast
from segfast import backends

emu = backends._C_emu
pytestmark = pytest.mark.skipif(
    emu is None, reason="segfast._C_emu is not built (install with SEGFAST_CUDA_EMU=ON)")

SCHEDULES = ["forward", "reverse", "shuffle"]


@pytest.fixture(params=SCHEDULES)
def schedule(request):
    before = emu.schedule()
    emu.set_schedule(request.param, 12345)
    yield request.param
    emu.set_schedule(before)


def close(got, want, rtol=1e-5, atol=1e-6, what=""):
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def agree(fn, *inputs, rtol=1e-5, atol=1e-6, grad=True):
    """fn(*inputs, backend) for cuda (emulated), cpu and torch: values (and
    gradients of the float inputs) agree."""
    outs = {}
    for b in ("cuda", "cpu", "torch"):
        xs = [x.detach().clone().requires_grad_(grad and x.is_floating_point()) for x in inputs]
        out = fn(*xs, b)
        gs = []
        if grad:
            (out.double() * torch.linspace(0.5, 1.5, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
            gs = [x.grad for x in xs if x.grad is not None]
        outs[b] = (out.detach(), gs)
    for ref in ("cpu", "torch"):
        close(outs["cuda"][0], outs[ref][0], rtol, atol, f"value vs {ref}")
        for g, w in zip(outs["cuda"][1], outs[ref][1]):
            close(g, w, rtol, atol, f"gradient vs {ref}")
    return outs["cuda"][0]


# ---------------------------------------------------------------- (a) the emulator itself


def test_module_and_backend():
    assert emu.EMULATED and emu.has_cuda()
    assert "cuda" in backends.available("cpu")
    assert backends.default_backend(torch.device("cpu")) != "cuda"
    assert "cuda (emulated)" in backends.info()["backends_cpu"]
    with pytest.raises(ValueError, match="forward, reverse or shuffle"):
        emu.set_schedule("backwards")


def test_barrier_deadlock_is_reported():
    with pytest.raises(RuntimeError, match="deadlock"):
        emu.selftest("deadlock")


def test_divergent_barrier_is_reported():
    with pytest.raises(RuntimeError, match="divergent __syncthreads"):
        emu.selftest("divergent_barrier")


def test_mask_naming_an_exited_lane_is_reported():
    with pytest.raises(RuntimeError, match="names lane 16, which has exited"):
        emu.selftest("exited_lane")


def test_warp_shuffles(schedule):
    x = torch.tensor([i * 3 % 7 for i in range(64)], dtype=torch.float64).view(2, 32)
    out = torch.tensor(emu.selftest("warp_scan")).view(2, 32, 3)
    assert torch.equal(out[..., 0], x.cumsum(1))                       # shfl_up scan
    assert torch.equal(out[..., 1], x.sum(1, keepdim=True).expand(2, 32))  # shfl_xor butterfly
    assert torch.equal(out[..., 2], x.view(2, 4, 8)[:, :, 3:4].expand(2, 4, 8).reshape(2, 32))  # width 8


def test_ballot_and_reduce_on_a_partial_warp(schedule):
    out = torch.tensor(emu.selftest("ballot"), dtype=torch.float64).view(48, 2)
    t = torch.arange(48)
    bits = lambda ts: sum(1 << (int(i) % 32) for i in ts if i % 3 == 0)  # noqa: E731
    want_ballot = torch.tensor([bits(range(32))] * 32 + [bits(range(32, 48))] * 16, dtype=torch.float64)
    v = t * 7 % 11
    want_max = torch.cat([v[:32].max().expand(32), v[32:].max().expand(16)]).double()
    assert torch.equal(out[:, 0], want_ballot)
    assert torch.equal(out[:, 1], want_max)


def test_atomics_under_contention(schedule):
    blocks = 96  # 24576 threads: the blocks run on several OS threads
    count, fsum, mx, total = emu.selftest("atomics", blocks)
    n = blocks * 256
    assert count == n and fsum == n and total == n
    assert mx == max((g * 2654435761) % (1 << 32) % 1000003 for g in range(n))


def test_launch_configuration_limits():
    assert emu.selftest("block_threads", 1024)[:4] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="invalid configuration argument"):
        emu.selftest("block_threads", 1025)
    with pytest.raises(RuntimeError, match="invalid configuration argument"):
        emu.selftest("grid_y", 65536)
    assert emu.selftest("grid_y", 3)[:1] == [0]


def test_shared_memory_limits():
    assert emu.selftest("dynamic_smem", 48 * 1024) == [48 * 256]
    with pytest.raises(RuntimeError, match="dynamic shared memory, over the per-block limit of 49152"):
        emu.selftest("dynamic_smem", 48 * 1024 + 4)
    assert emu.selftest("dynamic_smem_optin", 96 * 1024) == [96 * 256]  # cudaFuncSetAttribute opt-in
    assert emu.selftest("static_and_dynamic", 44 * 1024) == [2]
    with pytest.raises(RuntimeError, match="too much shared memory: 4096 bytes static"):
        emu.selftest("static_and_dynamic", 44 * 1024 + 8)


def test_schedules_expose_a_missing_barrier(schedule):
    want = [float((t + 1) % 64 + 1) for t in range(64)]
    assert emu.selftest("neighbour") == want
    assert emu.selftest("neighbour_racy") != want  # reads shared memory its neighbour has not written


# ---------------------------------------------------------------- (b) every CUDA kernel vs cpu and the reference


def _logits(N, C, H, W, dtype=torch.float32):
    return torch.randn(N, C, H, W, dtype=dtype) * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_region_stats_and_grad(schedule, dtype):
    """region stats_kernel / grad_kernel: softmax with labels and ignore, sigmoid with dense targets."""
    x = _logits(2, 3, 9, 7, dtype)
    lab = torch.randint(0, 3, (2, 9, 7))
    lab[0, 0, :3] = 255
    agree(lambda a, t, b: segfast.dice_loss(a, t, ignore_index=255, reduction="none", backend=b), x, lab)
    tgt = (torch.rand(2, 3, 9, 7) > 0.5).to(dtype)
    agree(lambda a, t, b: segfast.tversky_loss(a, t, mode="multilabel", alpha=0.3, beta=0.7, backend=b), x, tgt)


@pytest.mark.parametrize("loss", ["ce", "focal", "fused"])
def test_region_pixel_terms(schedule, loss):
    """stats/grad with the fused pixel terms (xent CE, focal, fused)."""
    x, lab = _logits(2, 4, 8, 5), torch.randint(0, 4, (2, 8, 5))
    if loss == "ce":
        fn = lambda a, t, b: segfast.dice_ce_loss(a, t, backend=b)  # noqa: E731
    elif loss == "focal":
        fn = lambda a, t, b: segfast.dice_focal_loss(a, t, gamma=2.0, backend=b)  # noqa: E731
    else:
        fn = lambda a, t, b: segfast.dice_fused_loss(a, t, backend=b)  # noqa: E731
    agree(fn, x, lab, rtol=1e-4, atol=1e-5)


def test_region_stats_many_classes_and_tiles(schedule):
    """C = 11 (16 class lanes, 2 runs per warp) and S = 1200 (loop steps of 1024 pixels and a partial one)."""
    x, lab = _logits(1, 11, 40, 30), torch.randint(0, 11, (1, 40, 30))
    agree(lambda a, t, b: segfast.jaccard_loss(a, t, reduction="none", backend=b), x, lab, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["ce", "focal_softmax", "fused", "bce", "focal_sigmoid"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_pixel_loss(schedule, kind, reduction):
    """pixel softmax_kernel<CE / focal / fused> and sigmoid_kernel<BCE / focal>: loss sums, map, dx."""
    x = _logits(2, 3, 6, 7)
    lab = torch.randint(0, 3, (2, 6, 7))
    lab[1, 2, :4] = 255
    tgt = (torch.rand(2, 3, 6, 7) > 0.5).float()
    w = torch.tensor([0.5, 1.0, 2.0])
    if kind == "ce":
        fn = lambda a, t, b: segfast.cross_entropy(a, t, weight=w, ignore_index=255, label_smoothing=0.1,  # noqa
                                                   reduction=reduction, backend=b)
    elif kind == "focal_softmax":
        fn = lambda a, t, b: segfast.focal_loss(a, t, mode="multiclass", gamma=2.0, ignore_index=255,  # noqa
                                                reduction=reduction, backend=b)
    elif kind == "fused":
        fn = lambda a, t, b: segfast.fused_loss(a, t, ignore_index=255, reduction=reduction, backend=b)  # noqa
    elif kind == "bce":
        fn = lambda a, t, b: segfast.binary_cross_entropy_with_logits(  # noqa
            a, t, pos_weight=torch.tensor([1.0, 2.0, 0.5]), reduction=reduction, backend=b)
    else:
        fn = lambda a, t, b: segfast.focal_loss(a, t, mode="multilabel", alpha=0.25, reduction=reduction,  # noqa
                                                backend=b)
    agree(fn, x, tgt if kind in ("bce", "focal_sigmoid") else lab, rtol=1e-4, atol=1e-5)


def _pixel_layout(a, layout):
    if layout == "offset":  # one element into its storage: not 16-byte aligned
        return a.new_empty(a.numel() + 1)[1:].view(a.shape).copy_(a)
    if layout == "strided":  # pixels 2 apart
        return torch.stack([a, a], -1)[..., 0]
    return a


REDUCED = {
    "ce": lambda a, t, d, b: segfast.cross_entropy(a, t, weight=torch.tensor([0.5, 1.0, 2.0]), ignore_index=255,
                                                   label_smoothing=0.1, backend=b),
    "ce_sum": lambda a, t, d, b: segfast.cross_entropy(a, t, ignore_index=255, reduction="sum", backend=b),
    "focal_softmax": lambda a, t, d, b: segfast.focal_loss(a, t, mode="multiclass", ignore_index=255, backend=b),
    "fused": lambda a, t, d, b: segfast.fused_loss(a, t, ignore_index=255, backend=b),
    "bce_labels": lambda a, t, d, b: segfast.focal_loss(a, t, mode="multilabel", ignore_index=255, backend=b),
    "bce_dense": lambda a, t, d, b: segfast.binary_cross_entropy_with_logits(
        a, d, pos_weight=torch.tensor([1.0, 2.0, 0.5]), ignore_index=-1, backend=b),
    "focal_dense": lambda a, t, d, b: segfast.focal_loss(a, d.clamp(min=0), mode="multiclass", backend=b),
}


@pytest.mark.parametrize("layout", ["contiguous", "offset", "strided"])
@pytest.mark.parametrize("kind", sorted(REDUCED))
def test_pixel_reduced(schedule, kind, layout):
    """The reduced pixel losses of the cuda backend: one launch whose blocks sum
    the loss and count its normaliser, the last one reducing; the gradient with
    grad_output / normaliser read on the device. Runs of 4 pixels with vector
    access (contiguous, S = 48), their element fallback (misaligned, strided,
    S = 50 ending inside a run), against the cpu backend and torch."""
    gen = torch.Generator().manual_seed(len(kind))
    for H, W in ((4, 12), (5, 10)):
        x = torch.randn(3, 3, H, W, generator=gen) * 2
        lab = torch.randint(0, 3, (3, H, W), generator=gen)
        lab[1, 2, :4] = 255
        dense = (torch.rand(3, 3, H, W, generator=gen) > 0.5).float()
        dense[0, 1, 0, :3] = -1
        agree(lambda a, t, b: REDUCED[kind](_pixel_layout(a, layout), t, dense, b), x, lab, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("C", [2, 21, 257])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_pixel_dense_focal_dtypes(schedule, dtype, C):
    """softmax_dense_kernel's runs of 4 pixels in 16-bit and float64 logits and
    targets (S = 48: whole vector runs; S = 50: the last run cut short), with an
    ignored pixel: the reduced loss and its gradient, the map, against the cpu
    backend and the reference."""
    gen = torch.Generator().manual_seed(C)
    tol = dict(rtol=2e-2, atol=2e-3) if dtype != torch.float64 else dict(rtol=1e-6, atol=1e-8)
    for S in (48, 50):
        x = (torch.randn(2, C, 1, S, generator=gen) * 2).to(dtype)
        d = torch.softmax(torch.randn(2, C, 1, S, generator=gen), 1).to(dtype)
        d[1, :, 0, 3] = -1
        for red in ("mean", "none"):
            agree(lambda a, t, b: segfast.focal_loss(a, t, mode="multiclass", ignore_index=-1, reduction=red,
                                                     backend=b), x, d, grad=True, **tol)


@pytest.mark.parametrize("kind", ["ce", "bce"])
def test_pixel_reduced_bad_label_and_counter(schedule, kind):
    """A non-ignored label outside the classes makes the loss and its normaliser
    NaN in the kernel (on a GPU, no host check runs before it); the ticket
    counter is left at 0 for the next launch."""
    from segfast.ops import pixel as P
    gen = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 3, 50, generator=gen), torch.randint(0, 3, (2, 50), generator=gen)
    t[0, 4] = 255
    counter = torch.zeros(1, dtype=torch.int32)
    k = P.CE if kind == "ce" else P.BCE

    def run(t):
        return P.pixel_reduced_cuda_op(x, t, None, None, None, counter, True, k, 0, 255.0, 2.0, 0.25, 0.0,
                                       1.0, 0.0, P.NORM_COUNT)
    loss, den = run(t)
    assert counter.item() == 0
    assert den.item() == (99 if kind == "ce" else 99 * 3)
    if kind == "ce":
        close(loss, segfast.cross_entropy(x, t, ignore_index=255, backend="torch"), rtol=1e-5, atol=1e-6)
    bad = t.clone()
    bad[1, 7] = 3
    loss, den = run(bad)
    assert loss.isnan() and den.isnan() and counter.item() == 0


def test_pixel_reduced_counter_per_stream(monkeypatch):
    """The reduced pixel losses' ticket counter is one per (device, stream):
    two losses on two streams of a device at once take tickets from different
    counters (a shared one would let the last block of either finish early);
    calls on one stream reuse its counter, which each launch leaves at 0."""
    from segfast.ops import pixel as P
    stream = [11]
    monkeypatch.setattr(P, "_counter_stream", lambda device: stream[0])
    monkeypatch.setattr(P, "_COUNTERS", type(P._COUNTERS)())
    dev = torch.device("cpu")
    a = P._ticket_counter(dev)
    assert P._ticket_counter(dev) is a
    stream[0] = 12
    b = P._ticket_counter(dev)
    assert b is not a and b.data_ptr() != a.data_ptr()
    gen = torch.Generator().manual_seed(4)
    x, t = torch.randn(2, 3, 6, 7, generator=gen), torch.randint(0, 3, (2, 6, 7), generator=gen)
    for s in (11, 12, 11):
        stream[0] = s
        got = segfast.cross_entropy(x, t, backend="cuda")
        close(got, segfast.cross_entropy(x, t, backend="torch"), what=f"stream {s}")
    assert a.item() == 0 and b.item() == 0 and len(P._COUNTERS) == 2
    for s in range(P._MAX_COUNTERS + 5):  # a small cache: the least recently used go
        stream[0] = 100 + s
        P._ticket_counter(dev)
    assert len(P._COUNTERS) == P._MAX_COUNTERS


def test_lovasz_weights(schedule):
    """lovasz weights_kernel: rows longer than one 1024-position tile (the carry), ties, ignore."""
    x = _logits(2, 1, 40, 30)
    t = (torch.rand(2, 1, 40, 30) > 0.5).long()
    t[0, 0, :2] = 255
    agree(lambda a, tt, b: segfast.lovasz_hinge_loss(a, tt, ignore_index=255, backend=b), x, t, rtol=1e-4, atol=1e-5)
    xs, lab = _logits(1, 3, 8, 6), torch.randint(0, 3, (1, 8, 6))
    agree(lambda a, tt, b: segfast.lovasz_softmax_loss(a, tt, backend=b), xs, lab, rtol=1e-4, atol=1e-5)


def _boxes(*shape, dtype=torch.float32):
    xy = torch.rand(*shape, 2, dtype=dtype) * 10
    return torch.cat([xy, xy + torch.rand(*shape, 2, dtype=dtype) * 5 + 0.1], -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_pairwise_grad_aligned(schedule, dtype):
    """boxes pairwise_fwd_kernel, pairwise_bwd_kernel<FIRST = true / false>, aligned_kernel."""
    b1, b2 = _boxes(2, 5, dtype=dtype), _boxes(2, 37, dtype=dtype)  # 37 > one warp of lanes
    agree(lambda p, q, b: segfast.box_iou(p, q, backend=b), b1, b2, grad=False)
    agree(lambda p, q, b: segfast.complete_box_iou(p, q, backend=b), b1, b2, rtol=1e-4, atol=1e-5)
    p, q = _boxes(40, dtype=dtype), _boxes(40, dtype=dtype)
    agree(lambda u, v, b: segfast.ciou_loss(u, v, reduction="none", backend=b), p, q, rtol=1e-4, atol=1e-5)
    agree(lambda u, v, b: segfast.generalized_box_iou_aligned(u, v, backend=b), p, q, grad=False)


def test_box_iou_max(schedule):
    """boxes_match iou_max_kernel: more gts than one shared-memory tile, padding, ties."""
    a, g = _boxes(2, 300), _boxes(2, 260)
    g[0, 7] = g[0, 3]  # a tie: the lower index wins
    v = torch.rand(2, 260) > 0.2
    got = segfast.box_iou_max(a, g, v, backend="cuda")
    for b in ("cpu", "torch"):
        want = segfast.box_iou_max(a, g, v, backend=b)
        for x, y in zip(got, want):
            assert torch.equal(x, y), b


@pytest.mark.parametrize("classes", [False, True])
def test_nms(schedule, classes):
    """boxes_match nms_mask_kernel and nms_reduce_kernel (200 boxes: 4 mask words per row)."""
    b = _boxes(200) * 0.5
    s = torch.rand(200)
    s[10] = s[20]  # tied scores
    if classes:
        idx = torch.randint(0, 3, (200,))
        got = segfast.batched_nms(b, s, idx, 0.4, backend="cuda")
        wants = [segfast.batched_nms(b, s, idx, 0.4, backend=k) for k in ("cpu", "torch")]
    else:
        got = segfast.nms(b, s, 0.4, backend="cuda")
        wants = [segfast.nms(b, s, 0.4, backend=k) for k in ("cpu", "torch")]
    for want in wants:
        assert torch.equal(got, want)


@pytest.mark.parametrize("C", [2, 3, 21, 40])  # update_kernel: 2, 4, 8, 16 lanes per pixel
def test_dense_crf(schedule, C):
    """crf splat_kernel (atomics), blur_kernel, update_kernel (lanes per pixel follow C;
    30 pixels: the last warp has groups past the last pixel)."""
    U = torch.randn(1, C, 5, 6)
    img = torch.randint(0, 256, (1, 3, 5, 6), dtype=torch.uint8)
    got = segfast.dense_crf(U, img, iterations=2, backend="cuda")
    for b in ("cpu", "torch"):
        close(got, segfast.dense_crf(U, img, iterations=2, backend=b), 1e-4, 1e-5, b)


def test_launch_error_reaches_python():
    """A kernel fault is a RuntimeError from the op, not a crash (block over 1024 threads)."""
    with pytest.raises(RuntimeError, match="launch failed: invalid configuration argument"):
        emu.selftest("block_threads", 2048)


@pytest.mark.parametrize("loss", ["dice_ce", "ce", "bce"])
def test_cuda_grid_geometry(schedule, monkeypatch, loss):
    """The grids the ops size on a GPU (ops/_common.py stats_chunks /
    pixel_chunks), here for 8 SMs: C = 21 and S = 1200 give 5 chunks of 240
    pixels per image (stats: under one 256-pixel chunk of 8 block steps; pixel:
    under one step of the 64-thread block), 10 blocks that the reduced loss's
    last block sums."""
    from segfast.ops import _common as c
    from segfast.ops import pixel as OP
    from segfast.ops import region as OR
    monkeypatch.setattr(OR, "stats_chunks", lambda N, C, S, device, f64: c.cuda_chunks(
        N, S, 8, *c.cuda_stats_geometry(C, f64)))
    monkeypatch.setattr(OP, "pixel_chunks", lambda N, S, device: c.cuda_chunks(
        N, S, 8, c.CUDA_PIXEL_CHUNK, c.CUDA_PIXEL_PER_SM))
    assert c.cuda_chunks(2, 1200, 8, *c.cuda_stats_geometry(21, False)) == 5
    x, lab = _logits(2, 21, 30, 40), torch.randint(0, 21, (2, 30, 40))
    lab[1, :3] = 255
    if loss == "dice_ce":
        fn = lambda a, t, b: segfast.dice_ce_loss(a, t, ignore_index=255, backend=b)  # noqa: E731
    elif loss == "ce":
        fn = lambda a, t, b: segfast.cross_entropy(a, t, ignore_index=255, backend=b)  # noqa: E731
    else:
        lab = (torch.rand(2, 21, 30, 40) > 0.5).float()
        fn = lambda a, t, b: segfast.binary_cross_entropy_with_logits(a, t, backend=b)  # noqa: E731
    agree(fn, x, lab, rtol=1e-4, atol=1e-5)
