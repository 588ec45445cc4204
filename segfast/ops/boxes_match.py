"""Box matching without the N x M matrix (``box_iou_max``) and NMS
(``nms``, ``batched_nms``): validation, torch.library ops, backend dispatch.

Rules shared by every backend (segfast/reference/boxes_match.py, the
oracle, states them; csrc/common/boxes_match.h has the kernel side):

* IoU = inter / union, 0 where the union is not positive, computed in
  float32 (float64 for float64 boxes) with every product and sum rounded on
  its own (no FMA), so all backends return the same bits as the reference
  (Triton on a GPU: see triton_kernels/boxes_match.py).
* ``box_iou_max``: argmax = the lowest gt index among equal maxima over the
  valid gts; an anchor of an image with no valid gt gets max 0 and argmax
  -1. Per-gt max over anchors: 0 when N = 0, -1 for padded gts.
* NMS: a stable sort by decreasing score (equal scores: lower index
  first), then greedy suppression of every later box whose IoU with a kept
  box is > iou_threshold (equal does not suppress).

Matching and NMS are not differentiated: the ops take detached inputs.
"""

# torch.library.custom_op infers the op schemas from annotations: they stay real
# types (no `from __future__ import annotations`, whose strings torch 2.4 cannot
# read; typing.List, as list[float] is unsupported before torch 2.7).
from typing import Optional

import torch
from torch import Tensor

from .. import backends
from ..reference import boxes_match as ref
from ._common import FLOATS, require, triton_op

FMTS = ref.FMTS

__all__ = ["box_iou_max", "nms", "batched_nms"]
INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# ---------------------------------------------------------------- validation


def _fmt(fmt: str) -> int:
    if fmt not in FMTS:
        raise ValueError(f"fmt must be one of {', '.join(FMTS)}, got {fmt!r}")
    return FMTS[fmt]


class ShapeError(ValueError, RuntimeError):
    """A wrong box / score / category shape. torchvision's nms raises
    RuntimeError there, segfast ValueError: this is both."""


def _check_boxes(b, name: str, dims=(2, 3)) -> None:
    if not isinstance(b, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(b).__name__}")
    if b.dtype not in FLOATS:
        raise TypeError(f"{name} must be float32/float16/bfloat16/float64, got {b.dtype}")
    if b.dim() not in dims or b.shape[-1] != 4:
        want = " or ".join(("[N, 4]", "[B, N, 4]")[d - 2] for d in dims)
        raise ShapeError(f"{name} must be {want} (4 coordinates last), got shape {tuple(b.shape)}")


def _check_finite(b: Tensor, name: str, keep: Optional[Tensor] = None) -> None:
    """Non-finite coordinates would make IoUs NaN (compared as 'no overlap')
    and break ties and thresholds silently: refused. Skipped under
    torch.compile (a data-dependent check)."""
    if torch.compiler.is_compiling() or b.numel() == 0:
        return
    ok = torch.isfinite(b).all(-1)
    if keep is not None:
        ok = ok | ~keep
    require(ok.all(), f"{name} (shape {tuple(b.shape)}) has non-finite coordinates"
            + ("" if keep is None else " (in valid entries)"))


def _check_threshold(t) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"iou_threshold must be a number, got {type(t).__name__}")
    t = float(t)
    if not 0.0 <= t <= 1.0:  # also refuses NaN
        raise ValueError(f"iou_threshold must be in [0, 1], got {t}")
    return t


def prepare_match(boxes, gt, gt_valid, fmt, backend):
    """-> (a [B, N, 4], g [B, M, 4], valid [B, M] bool or None, batched, fmt code, backend)."""
    _check_boxes(boxes, "boxes")
    _check_boxes(gt, "gt")
    f = _fmt(fmt)
    if gt.dtype != boxes.dtype:
        raise TypeError(f"boxes and gt must have the same dtype, got {boxes.dtype} and {gt.dtype}")
    if gt.device != boxes.device:
        raise ValueError(f"gt is on {gt.device} but boxes is on {boxes.device}")
    if gt_valid is not None:
        if not isinstance(gt_valid, Tensor) or gt_valid.dtype != torch.bool:
            raise TypeError("gt_valid must be a bool tensor (True = a real gt, False = padding)")
        if tuple(gt_valid.shape) != tuple(gt.shape[:-1]):
            raise ValueError(f"gt_valid must have shape {tuple(gt.shape[:-1])} (gt without its last dim), "
                             f"got {tuple(gt_valid.shape)}")
        if gt_valid.device != boxes.device:
            raise ValueError(f"gt_valid is on {gt_valid.device} but boxes is on {boxes.device}")
    if gt.shape[-2] >= 2 ** 31:
        raise ValueError(f"at most 2^31 - 1 gt boxes per image, got {gt.shape[-2]}")
    batched = boxes.dim() == 3 or gt.dim() == 3
    B = boxes.shape[0] if boxes.dim() == 3 else (gt.shape[0] if gt.dim() == 3 else 1)
    if boxes.dim() == 3 and gt.dim() == 3 and boxes.shape[0] != gt.shape[0]:
        raise ValueError(f"boxes and gt have different batch sizes: {boxes.shape[0]} and {gt.shape[0]}")
    _check_finite(boxes, "boxes")
    _check_finite(gt, "gt", gt_valid)
    a = boxes if boxes.dim() == 3 else boxes.unsqueeze(0).expand(B, -1, -1)  # batch stride 0
    g = gt if gt.dim() == 3 else gt.unsqueeze(0).expand(B, -1, -1)
    v = None
    if gt_valid is not None:
        v = gt_valid if gt_valid.dim() == 2 else gt_valid.unsqueeze(0).expand(B, -1)
    return a.detach(), g.detach(), v, batched, f, backends.choose(backend, boxes.device)


def _dequantize(t):
    """Quantized boxes / scores (torchvision's quantized nms) are read as their float values."""
    return t.dequantize() if isinstance(t, Tensor) and t.is_quantized else t


def prepare_nms(boxes, scores, idxs, iou_threshold, fmt, backend):
    boxes, scores = _dequantize(boxes), _dequantize(scores)
    _check_boxes(boxes, "boxes", dims=(2,))
    if not isinstance(scores, Tensor) or scores.dtype not in FLOATS:
        raise TypeError("scores must be a float tensor")
    N = boxes.shape[0]
    if tuple(scores.shape) != (N,):
        raise ShapeError(f"scores must have shape [N] = [{N}], got {tuple(scores.shape)}")
    if scores.device != boxes.device:
        raise ValueError(f"scores is on {scores.device} but boxes is on {boxes.device}")
    if idxs is not None:
        if not isinstance(idxs, Tensor) or idxs.dtype not in INTS:
            raise TypeError("idxs must be an integer tensor (one category per box)")
        if tuple(idxs.shape) != (N,):
            raise ShapeError(f"idxs must have shape [N] = [{N}], got {tuple(idxs.shape)}")
        if idxs.device != boxes.device:
            raise ValueError(f"idxs is on {idxs.device} but boxes is on {boxes.device}")
    thr = _check_threshold(iou_threshold)
    f = _fmt(fmt)
    _check_finite(boxes, "boxes")
    if N:
        require(~torch.isnan(scores).any(), f"scores (shape {tuple(scores.shape)}) contain NaN "
                "(no order to visit the boxes in)")
    return (boxes.detach(), scores.detach(), None if idxs is None else idxs.detach(), thr, f,
            backends.choose(backend, boxes.device))


# ---------------------------------------------------------------- box_iou_max ops


def _empty_match(a: Tensor, g: Tensor, v: Optional[Tensor]):
    B, N, M = a.shape[0], a.shape[1], g.shape[1]
    acc = ref.acc_dtype(a)
    mx = a.new_zeros((B, N), dtype=acc)
    arg = torch.full((B, N), -1, dtype=torch.int64, device=a.device)
    gmax = a.new_zeros((B, M), dtype=acc)
    return mx, arg, _mark_padding(gmax, v)


def _mark_padding(gmax: Tensor, v: Optional[Tensor]) -> Tensor:
    return gmax if v is None else torch.where(v, gmax, torch.full((), -1.0, dtype=gmax.dtype, device=gmax.device))


def _launch_iou_max_ext(a, g, v, fmt, backend):
    B, N, M = a.shape[0], a.shape[1], g.shape[1]
    acc = ref.acc_dtype(a)
    mx = torch.empty((B, N), dtype=acc, device=a.device)
    arg = torch.empty((B, N), dtype=torch.int64, device=a.device)
    gmax = torch.zeros((B, M), dtype=acc, device=a.device)
    view = backends.view
    args = (view(a), view(g), view(v), fmt, view(mx), view(arg), view(gmax))
    if backend == "cpu":
        backends._C.cpu.box_iou_max(*args, backends.cpu_threads(N * max(M, 1) // 16))
    else:
        with backends.cuda_launch(a.device) as (kernels, stream):
            kernels.box_iou_max(*args, stream)
    return mx, arg, _mark_padding(gmax, v)


@torch.library.custom_op("segfast::box_iou_max", mutates_args=())
def box_iou_max_op(boxes: Tensor, gt: Tensor, gt_valid: Optional[Tensor], fmt: int,
                   backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """boxes [B, N, 4], gt [B, M, 4] (any strides), gt_valid [B, M] bool or
    None -> (max IoU [B, N], argmax [B, N] int64, per-gt max [B, M]) with the
    ``cpu``, ``cuda`` or ``torch`` (chunked eager reference) backend."""
    if backend == "torch":
        return ref.box_iou_max(boxes, gt, gt_valid, fmt)
    if boxes.shape[0] * boxes.shape[1] * gt.shape[1] == 0:
        return _empty_match(boxes, gt, gt_valid)
    return _launch_iou_max_ext(boxes, gt, gt_valid, fmt, backend)


def _iou_max_fake(boxes, gt, gt_valid, fmt, backend=None):
    B, N, M = boxes.shape[0], boxes.shape[1], gt.shape[1]
    acc = ref.acc_dtype(boxes)
    return (boxes.new_empty((B, N), dtype=acc), boxes.new_empty((B, N), dtype=torch.int64),
            boxes.new_empty((B, M), dtype=acc))


box_iou_max_op.register_fake(_iou_max_fake)


# ---------------------------------------------------------------- NMS op


def _nms_flags_ext(b: Tensor, cls: Optional[Tensor], thr: float, fmt: int, backend: str) -> Tensor:
    N = b.shape[0]
    keep = torch.empty(N, dtype=torch.uint8, device=b.device)
    view = backends.view
    args = (view(b), view(cls), fmt, thr, view(keep))
    if backend == "cpu":
        backends._C.cpu.nms_keep(*args)
    else:
        cb = -(-N // 64)
        mask = torch.empty((N, cb), dtype=torch.int64, device=b.device)
        removed = torch.empty(cb, dtype=torch.int64, device=b.device)  # used only past 48 KiB of words
        with backends.cuda_launch(b.device) as (kernels, stream):
            kernels.nms_keep(*args, view(mask), view(removed), stream)
    return keep


@torch.library.custom_op("segfast::nms", mutates_args=())
def nms_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float, fmt: int,
           backend: str) -> Tensor:
    """Indices (int64) of the boxes NMS keeps, by decreasing score. One op
    for every backend: the sort and the final gather are torch, the greedy
    pass is the backend's kernel (triton: a mask kernel and a one-program
    sweep); the output size depends on the data (see the fake below)."""
    N = boxes.shape[0]
    if N == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    if backend == "torch":
        return ref.nms(boxes, scores, iou_threshold, idxs, fmt)
    order = ref.sort_by_score(scores)
    b = boxes[order]
    cls = None if idxs is None else idxs[order].to(torch.int64).contiguous()
    if backend == "triton":
        from ..triton_kernels import boxes_match as tk

        keep = tk.nms_keep(b, cls, iou_threshold, fmt)
    else:
        keep = _nms_flags_ext(b, cls, iou_threshold, fmt, backend)
    return order[keep.bool()]


@nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold, fmt, backend):
    k = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((k,), dtype=torch.int64)


# ---------------------------------------------------------------- Triton

@backends.triton_ops
def _register_triton_ops():
    """The Triton ops, registered when the triton backend is first asked for
    (backends.triton_ops); backends.choose() refuses that backend where Triton is missing."""
    global box_iou_max_triton_op

    @triton_op("segfast::box_iou_max_triton", mutates_args=())
    def box_iou_max_triton_op(boxes: Tensor, gt: Tensor, gt_valid: Optional[Tensor],
                              fmt: int) -> tuple[Tensor, Tensor, Tensor]:
        """box_iou_max_op with the Triton kernel (one program per anchor block and image)."""
        from ..triton_kernels import boxes_match as tk

        B, N, M = boxes.shape[0], boxes.shape[1], gt.shape[1]
        acc = ref.acc_dtype(boxes)
        mx = torch.zeros((B, N), dtype=acc, device=boxes.device)
        arg = torch.full((B, N), -1, dtype=torch.int64, device=boxes.device)
        gmax = torch.zeros((B, M), dtype=acc, device=boxes.device)
        if B * N * M != 0:
            tk.launch_iou_max(boxes, gt, gt_valid, fmt, mx, arg, gmax)
        return mx, arg, _mark_padding(gmax, gt_valid)

    box_iou_max_triton_op.register_fake(_iou_max_fake)


# ---------------------------------------------------------------- public API


def box_iou_max(boxes: Tensor, gt: Tensor, gt_valid: Optional[Tensor] = None, *, fmt: str = "xyxy",
                backend: Optional[str] = None):
    """For each anchor its best ground truth, for each ground truth its best anchor's IoU.

    Computed without the N x M IoU matrix (memory O(N + M)). IoUs are in
    float32 (float64 for float64 boxes) whatever the box dtype, so thresholds
    see unrounded values. Ties: the lowest gt index wins; an image without
    valid gt gives max 0 and argmax -1; with valid gt but no overlap, max 0
    and the first valid gt. Not differentiable: matching is a discrete
    assignment, the inputs are detached.

    Args:
        boxes: [N, 4] or [B, N, 4] anchors / predictions.
        gt: [M, 4] or [B, M, 4] ground truth; an unbatched side is shared by
            every image.
        gt_valid: optional bool [M] / [B, M], False for padding (skipped).
        fmt: "xyxy" (default), "xywh" or "cxcywh", for both.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        (max_iou [B, N], argmax [B, N] int64, gt_max_iou [B, M]), without B
        when neither input is batched. gt_max_iou is 0 for N = 0 and -1 for
        padded gts.

    Raises:
        ValueError: shapes that are not [N, 4] / [B, N, 4] or whose batch
            sizes differ, an unknown ``fmt``, non-finite coordinates (padded gts
            are not checked; checks are skipped under torch.compile).
        TypeError: a non-tensor or an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> anchors = torch.tensor([[0., 0., 2., 2.], [5., 5., 6., 6.]])
        >>> gt = torch.tensor([[0., 0., 2., 4.], [0., 0., 1., 1.]])
        >>> max_iou, argmax, gt_max = segfast.box_iou_max(anchors, gt)
        >>> max_iou, argmax, gt_max
        (tensor([0.5000, 0.0000]), tensor([0, 0]), tensor([0.5000, 0.2500]))
    """
    a, g, v, batched, f, backend = prepare_match(boxes, gt, gt_valid, fmt, backend)
    if backend == "triton":
        out = box_iou_max_triton_op(a, g, v, f)
    else:
        out = box_iou_max_op(a, g, v, f, backend)
    return out if batched else tuple(t.squeeze(0) for t in out)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, *, fmt: str = "xyxy",
        backend: Optional[str] = None) -> Tensor:
    """Non-maximum suppression with torchvision's semantics.

    Boxes are visited by decreasing score, equal scores by increasing index (a
    stable sort, the same on every backend); a box is discarded when its IoU
    with an already kept box is > ``iou_threshold`` (equal is kept). IoU of
    degenerate boxes is 0. Quantized boxes and scores are read as their
    dequantized values (torchvision's quantized nms keeps the same boxes).
    Works under torch.compile(fullgraph=True) (the output size is
    data-dependent); TorchScript is not supported.

    Args:
        boxes: [N, 4] boxes.
        scores: [N] float scores.
        iou_threshold: in [0, 1].
        fmt: "xyxy" (default), "xywh" or "cxcywh".
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        int64 [K]: the indices of the kept boxes, in decreasing score order.

    Raises:
        ShapeError: wrong shapes (a ValueError and, as torchvision's, a
            RuntimeError).
        ValueError: non-finite coordinates or NaN scores (skipped under
            torch.compile), ``iou_threshold`` outside [0, 1], an unknown ``fmt``.
        TypeError: a non-tensor or an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> boxes = torch.tensor([[0., 0., 2., 2.], [0., 0., 2., 2.1], [3., 3., 4., 4.]])
        >>> segfast.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
        tensor([0, 2])
    """
    b, s, _, thr, f, backend = prepare_nms(boxes, scores, None, iou_threshold, fmt, backend)
    return nms_op(b, s, None, thr, f, backend)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, *, fmt: str = "xyxy",
                backend: Optional[str] = None) -> Tensor:
    """NMS within each category ``idxs``: boxes of different categories never suppress each other.

    Same output and tie rules as :func:`nms`; empty ``boxes`` give an empty
    int64 result whatever the other arguments (torchvision's shortcut). Not
    torchvision's coordinate-offset trick: the kernels compare the categories
    of each pair directly, so the result is exactly per-category NMS merged by
    score, with no precision lost to large offsets (it equals torchvision's
    result wherever that one is not perturbed by the offsets).

    Args:
        boxes: [N, 4] boxes.
        scores: [N] float scores.
        idxs: [N] integer categories.
        iou_threshold: in [0, 1].
        fmt: "xyxy" (default), "xywh" or "cxcywh".
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's
            default (see :mod:`segfast.backends`).

    Returns:
        int64 [K]: the indices of the kept boxes, in decreasing score order.

    Raises:
        ShapeError: wrong shapes (a ValueError and a RuntimeError).
        ValueError: non-finite coordinates or NaN scores, ``iou_threshold``
            outside [0, 1], an unknown ``fmt``.
        TypeError: a non-tensor, an unsupported dtype, non-integer ``idxs``.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch, segfast
        >>> boxes = torch.tensor([[0., 0., 2., 2.], [0., 0., 2., 2.1], [3., 3., 4., 4.]])
        >>> scores = torch.tensor([0.9, 0.8, 0.7])
        >>> segfast.batched_nms(boxes, scores, torch.tensor([0, 1, 0]), iou_threshold=0.5)
        tensor([0, 1, 2])
    """
    if isinstance(boxes, Tensor) and boxes.numel() == 0:  # torchvision: empty in, empty out, nothing checked
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    b, s, i, thr, f, backend = prepare_nms(boxes, scores, idxs, iou_threshold, fmt, backend)
    return nms_op(b, s, i, thr, f, backend)


def __getattr__(name):  # the *_triton_op names, registered on first use
    return backends.triton_op_attr(__name__, name)
