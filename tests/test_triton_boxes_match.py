"""The Triton kernels of box matching and NMS (segfast.triton_kernels.boxes_match),
launched directly with small block sizes, so that every tiling path runs in
the interpreter: several gt tiles per program (ties across tiles), partial
tiles, several NMS words per row and several removed-word vectors per sweep.

Without a GPU the kernels run on CPU tensors in the Triton interpreter;
conftest.py sets TRITON_INTERPRET=1 before triton is first imported.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from conftest import DEVICE, triton_needs_run  # noqa: E402
from test_boxes_match import random_xyxy  # noqa: E402

from segfast.reference import boxes_match as ref  # noqa: E402
from segfast.triton_kernels import boxes_match as K  # noqa: E402

pytestmark = triton_needs_run()


def run_iou_max(a, g, v, fmt, **blocks):
    B, N, M = a.shape[0], a.shape[1], g.shape[1]
    acc = ref.acc_dtype(a)
    mx = torch.zeros((B, N), dtype=acc, device=a.device)
    arg = torch.full((B, N), -1, dtype=torch.int64, device=a.device)
    gmax = torch.zeros((B, M), dtype=acc, device=a.device)
    K.launch_iou_max(a, g, v, fmt, mx, arg, gmax, **blocks)
    if v is not None:
        gmax = torch.where(v, gmax, -1.0)
    return mx, arg, gmax


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("block_n,block_m", [(16, 8), (32, 16)])
def test_iou_max_tiles(dtype, block_n, block_m):
    g0 = torch.Generator().manual_seed(3)
    a = random_xyxy(2, 45, gen=g0, integer=True).to(dtype)
    gt = random_xyxy(2, 21, gen=g0, integer=True).to(dtype)
    gt[:, 2] = torch.tensor([10.0, 20, 40, 45]).to(dtype)
    gt[:, 17] = gt[:, 2]  # a tie across gt tiles: the earlier tile must win
    a[:, :5] = gt[:, 2:3]
    v = torch.rand(2, 21, generator=g0) > 0.2
    v[:, 2] = True
    a, gt, v = a.to(DEVICE), gt.to(DEVICE), v.to(DEVICE)
    got = run_iou_max(a, gt, v, 0, block_n=block_n, block_m=block_m)
    want = ref.box_iou_max(a, gt, v, 0)
    for x, y in zip(got, want):
        assert torch.equal(x, y)
    assert (got[1][:, :5] == 2).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("classes", [False, True])
def test_nms_words_and_sweep(dtype, classes):
    g0 = torch.Generator().manual_seed(4)
    N = 200  # 4 words per row, the last one partial
    b = random_xyxy(N, gen=g0).to(dtype).to(DEVICE)
    s = (torch.rand(N, generator=g0) * 5).round().to(DEVICE)
    cls = torch.randint(0, 3, (N,), generator=g0).to(DEVICE) if classes else None
    order = ref.sort_by_score(s)
    bs = b[order]
    cs = None if cls is None else cls[order]
    for thr in (0.2, 0.6):
        want = ref.nms_keep_sorted(ref.to_xyxy(bs, 0), thr, cs)
        got = K.nms_keep(bs, cs, thr, 0, block_r=32, block_w=2)  # 2 words per vector: the sweep loops
        assert torch.equal(got.bool(), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iou_max_first_index_rule(dtype):
    """The argmax's tie rule inside one gt tile and across tiles (the
    float32 kernel orders packed (IoU, index) keys): equal IoUs go to the
    lowest valid index; a row without overlap gets IoU 0 and the first valid
    gt; an image without a valid gt gets -1; invalid gts never win."""
    g0 = torch.Generator().manual_seed(5)
    gt = random_xyxy(3, 19, gen=g0, integer=True).to(dtype)
    a = random_xyxy(3, 40, gen=g0, integer=True).to(dtype)
    gt[:, 1] = torch.tensor([10.0, 10.0, 30.0, 40.0], dtype=dtype)
    gt[:, 4] = gt[:, 1]  # same tile as 1 (tiles of 8)
    gt[:, 6] = gt[:, 1]
    gt[:, 13] = gt[:, 1]  # a later tile
    a[:, :6] = gt[:, 1:2]  # IoU 1 with 1, 4, 6, 13
    a[:, 6:9] = torch.tensor([1000.0, 1000.0, 1001.0, 1001.0], dtype=dtype)  # overlaps nothing
    v = torch.ones(3, 19, dtype=torch.bool)
    v[1, :2] = False  # image 1: gt 1 invalid, 4 is the first valid duplicate; 2 the first valid gt
    v[2] = False  # image 2: nothing valid
    a, gt, v = a.to(DEVICE), gt.to(DEVICE), v.to(DEVICE)
    want = ref.box_iou_max(a, gt, v, 0)
    got = run_iou_max(a, gt, v, 0, block_n=16, block_m=8)
    for x, y in zip(got, want):
        assert torch.equal(x, y)
    mx, arg, _ = got
    assert (arg[0, :6] == 1).all() and (arg[1, :6] == 4).all() and (arg[2] == -1).all()
    assert (mx[0, :6] == 1).all() and (mx[2] == 0).all()
    assert (arg[0, 6:9] == 0).all() and (arg[1, 6:9] == 2).all() and (mx[:2, 6:9] == 0).all()
    # the default tiles
    got = run_iou_max(a, gt, v, 0)
    for x, y in zip(got, want):
        assert torch.equal(x, y)
