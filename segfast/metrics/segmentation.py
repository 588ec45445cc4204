"""Semantic segmentation metrics from a confusion matrix.

``confusion_matrix(preds, target, num_classes, ignore_index=None)`` -> int64
[C, C], rows = target class, columns = predicted class (torchmetrics'
layout). ``preds`` is either logits / probabilities [N, C, *] (the
prediction is the argmax over dim 1: the first maximum wins and a NaN
counts as the maximum, as ``torch.argmax``) or class indices shaped like
``target`` [N, *]. Pixels whose target is ``ignore_index`` are skipped; any
other target outside [0, C) is an error.

From logits the matrix is counted in one read of the logits, with no
argmax tensor and no one-hot: on CPU a C++ kernel (csrc/cpu/metrics.cpp,
OpenMP, one histogram per thread), on GPU a Triton kernel
(triton_kernels/metrics.py) or, with ``backend="cuda"``, a CUDA C++ kernel
(csrc/cuda/metrics.cu: a shared-memory histogram per block, added to the
int64 matrix with relaxed atomics), otherwise argmax + ``torch.bincount``
(the ``torch`` backend, segfast/reference/metrics.py). From class indices
the ``cuda`` backend counts with the same kernel, the others with
``torch.bincount``. On CPU tensors a class-index prediction outside [0, C)
is a ValueError; on a GPU (no host sync) it counts with the out-of-range
targets and raises at ``compute()``.

``ConfusionMatrix`` accumulates it (``update``, ``compute``, ``reset``;
under torch.distributed ``compute()`` all-reduces the matrix) and derives
per-class IoU, mean IoU, Dice/F1, pixel accuracy and mean class accuracy.

A region loss counts it for free: ``segfast.dice_loss(logits, labels,
confusion=cm)`` (and jaccard, tversky, generalized Dice, Dice + CE / focal /
fused, their modules) adds the argmax's counts to ``cm`` from the loss's own
read of the logits (class-index targets, ``mode="multiclass"``; the loss's
``ignore_index`` must be ``cm``'s).

Absent classes: a class with no target and no predicted pixel has IoU and
Dice NaN (0 / 0) and is left out of the means (NaN-mean); a class with no
target pixel has class accuracy NaN, left out of the mean class accuracy.
A mean over no class at all is NaN. ``absent="zero"`` gives torchmetrics'
convention instead: per-class 0 for absent classes, still left out of the
means (as ``MulticlassJaccardIndex(average="macro")`` weighs them 0).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .. import backends

__all__ = ["confusion_matrix", "ConfusionMatrix", "scores_from_confusion"]

_INT = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check(preds, target, num_classes, ignore_index):
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
    if not isinstance(preds, Tensor) or not isinstance(target, Tensor):
        raise TypeError("preds and target must be tensors")
    if target.dtype not in _INT:
        raise TypeError(f"target must hold class indices (an integer dtype), got {target.dtype}")
    if preds.device != target.device:
        raise ValueError(f"preds and target must be on one device, got {preds.device} and {target.device}")
    if preds.is_floating_point():
        if preds.dim() < 2 or preds.shape[1] != num_classes or preds.shape[:1] + preds.shape[2:] != target.shape:
            raise ValueError(f"logits preds must be [N, num_classes={num_classes}, *] with target [N, *], got "
                             f"preds {tuple(preds.shape)} and target {tuple(target.shape)}")
        return True
    if preds.dtype not in _INT or preds.shape != target.shape:
        raise ValueError(f"class-index preds must be an integer tensor shaped like target {tuple(target.shape)}, "
                         f"got {preds.dtype} {tuple(preds.shape)}")
    return False


def _counts(preds: Tensor, target: Tensor, C: int, ignore_index, backend) -> Tensor:
    """int64 [C*C + 1]: the matrix, flat, and the count of targets outside [0, C) (not ignored)."""
    logits = _check(preds, target, C, ignore_index)
    b = backends.choose(backend, preds.device)
    if not logits:
        if b == "cuda":
            if preds.device.type == "cpu":
                _index_bins(preds, target, C, ignore_index)  # the host check of the predictions
            return _cuda_counts(preds.reshape(1, -1), target.reshape(1, -1), C, ignore_index, False)
        flat = _index_bins(preds, target, C, ignore_index)
        return torch.bincount(flat, minlength=C * C + 2)[: C * C + 1]
    N, S = preds.shape[0], math.prod(preds.shape[2:])
    x = preds.reshape(N, C, S)
    t = target.reshape(N, S)
    if b == "cpu" and not hasattr(getattr(backends._C, "cpu", None), "confusion_logits"):
        b = "torch"
    if b == "cuda":
        return _cuda_counts(x, t, C, ignore_index, True)
    if t.dtype not in (torch.uint8, torch.int32, torch.int64):
        t = t.long()
    if b == "cpu":
        out = torch.zeros(C * C + 1, dtype=torch.int64)
        view = backends.view
        backends._C.cpu.confusion_logits(view(x), view(t), ignore_index, view(out), backends.cpu_threads(x.numel()))
        return out
    if b == "triton":
        from ..triton_kernels import metrics as tk

        out = torch.zeros(C * C + 1, dtype=torch.int64, device=x.device)
        step = max(1, (2**31 - 1) // max(1, x.shape[2]))  # int32 counts per launch
        for n0 in range(0, N, step):
            out += tk.confusion_logits(x[n0:n0 + step], t[n0:n0 + step], C, ignore_index)
        return out
    p = x.argmax(1)
    return _counts(p.reshape(target.shape), target, C, ignore_index, backend)


def _index_bins(preds: Tensor, target: Tensor, C: int, ignore_index) -> Tensor:
    """The bin of every pixel from class indices: target * C + pred; C * C for a target, or on a
    GPU a prediction (no host sync), outside [0, C); C * C + 1 when ignored. On CPU tensors a
    prediction outside [0, C) is a ValueError."""
    p, t = preds.reshape(-1).long(), target.reshape(-1).long()
    valid = t != ignore_index if ignore_index is not None else torch.ones_like(t, dtype=torch.bool)
    in_range = valid & (t >= 0) & (t < C)
    good = in_range & (p >= 0) & (p < C)
    if preds.device.type == "cpu" and not bool(good.eq(in_range).all()):
        raise ValueError(f"preds holds class indices outside [0, {C})")
    return torch.where(good, t * C + p, torch.where(valid, C * C, C * C + 1))


_INDEX = (torch.uint8, torch.int32, torch.int64)  # the index dtypes the kernels read


def _cuda_counts(x: Tensor, t: Tensor, C: int, ignore_index, logits: bool) -> Tensor:
    """The CUDA kernel (csrc/cuda/metrics.cu; emulated for CPU tensors): logits x [N, C, S] or
    class indices x [N, S], targets t [N, S] -> int64 [C*C + 1] on x's device, no host sync."""
    if not logits and x.dtype not in _INDEX:
        x = x.long()
    if t.dtype not in _INDEX:
        t = t.long()
    out = torch.zeros(C * C + 1, dtype=torch.int64, device=x.device)
    view = backends.view
    with backends.cuda_launch(x.device) as (kernels, stream):
        kernels.confusion(view(x), view(t), ignore_index, view(out), stream)
    return out


def confusion_matrix(preds: Tensor, target: Tensor, num_classes: int, ignore_index: Optional[int] = None,
                     backend: Optional[str] = None) -> Tensor:
    """The [C, C] confusion matrix of a segmentation, counted in one read of the logits.

    Rows are target classes, columns predicted classes (torchmetrics'
    layout). From logits there is no argmax tensor and no one-hot: C++/OpenMP
    on CPU, Triton or CUDA C++ on GPU. The prediction is the argmax over dim
    1: the first maximum wins and a NaN counts as the maximum, as
    ``torch.argmax``.

    Args:
        preds: logits / probabilities [N, C, *], or class indices shaped like
            ``target`` [N, *].
        target: class indices [N, *].
        num_classes: C.
        ignore_index: target value whose pixels are skipped.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's default.

    Returns:
        int64 [C, C].

    Raises:
        ValueError: shapes that do not fit, a target outside [0, C) that is
            not ``ignore_index`` (on GPU this reads one count back, a device
            sync).
        TypeError: an unsupported dtype.
        RuntimeError: a ``backend`` that is not built or does not fit the device.

    Example:
        >>> import torch
        >>> from segfast.metrics import confusion_matrix
        >>> logits = torch.tensor([[[[2., 0.]], [[0., 1.]]]])   # [1, 2, 1, 2]: predicts 0, 1
        >>> confusion_matrix(logits, torch.tensor([[[0, 0]]]), num_classes=2)
        tensor([[1, 1],
                [0, 0]])
    """
    c = _counts(preds, target, num_classes, ignore_index, backend)
    if bool(c[-1] > 0):
        raise ValueError(f"target holds {int(c[-1])} values outside [0, {num_classes}) other than "
                         f"ignore_index={ignore_index}")
    return c[:-1].reshape(num_classes, num_classes)


def scores_from_confusion(cm: Tensor, absent: str = "nan") -> dict:
    """Per-class IoU, Dice and accuracy and their means from a [C, C] matrix.

    A class with no target and no predicted pixel has IoU and Dice NaN and is
    left out of the means; ``absent="zero"`` reports it as 0 instead
    (torchmetrics' convention), still left out of the means.

    Args:
        cm: [C, C] counts, rows target, columns prediction.
        absent: "nan" or "zero".

    Returns:
        dict: ``confusion_matrix`` (int64), per-class ``iou``, ``dice``,
        ``class_accuracy`` and ``miou``, ``mean_dice``, ``pixel_accuracy``,
        ``mean_class_accuracy`` (float64).

    Raises:
        ValueError: an unknown ``absent``.

    Example:
        >>> import torch
        >>> from segfast.metrics import scores_from_confusion
        >>> s = scores_from_confusion(torch.tensor([[3, 1], [0, 4]]))
        >>> s["iou"].tolist(), s["pixel_accuracy"].item()
        ([0.75, 0.8], 0.875)
    """
    if absent not in ("nan", "zero"):
        raise ValueError(f"absent must be 'nan' or 'zero', got {absent!r}")
    cm = cm.double()
    tp = cm.diagonal()
    row, col = cm.sum(1), cm.sum(0)  # target pixels, predicted pixels
    union = row + col - tp
    iou = tp / union
    dice = 2 * tp / (row + col)
    acc = tp / row
    means = dict(miou=torch.nanmean(iou), mean_dice=torch.nanmean(dice), mean_class_accuracy=torch.nanmean(acc))
    if absent == "zero":
        iou, dice = iou.nan_to_num(0.0), dice.nan_to_num(0.0)
        acc = acc.nan_to_num(0.0)
    return dict(confusion_matrix=cm.long(), iou=iou, dice=dice, class_accuracy=acc,
                pixel_accuracy=tp.sum() / cm.sum(), **means)


class ConfusionMatrix:
    """Accumulated [C, C] confusion matrix (int64) and the scores derived from it.

    ``update(preds, target)`` per batch (logits [N, C, *] or class indices
    [N, *]), ``compute()``, ``reset()``. Under torch.distributed
    ``compute()`` all-reduces the matrix. Targets outside [0, C) other than
    ``ignore_index`` raise at ``compute()`` (no device sync in ``update``).

    Args:
        num_classes: C, a positive int.
        ignore_index: target value whose pixels are skipped.
        absent: "nan" (absent classes NaN, left out of the means) or "zero".
        dist_sync: all-reduce across processes in ``compute()``.
        backend: "triton", "cuda", "cpu" or "torch"; None picks the device's default.

    Returns:
        ``compute()`` returns the dict of :func:`scores_from_confusion`.

    Raises:
        ValueError: ``num_classes`` not a positive int, an unknown ``absent``;
            at ``compute()``, targets out of range.

    Example:
        >>> import torch
        >>> from segfast.metrics import ConfusionMatrix
        >>> m = ConfusionMatrix(2)
        >>> m.update(torch.tensor([[[[2., 0.]], [[0., 1.]]]]), torch.tensor([[[0, 1]]]))
        >>> m.compute()["miou"].item()
        1.0
    """

    def __init__(self, num_classes: int, ignore_index: Optional[int] = None, absent: str = "nan",
                 dist_sync: bool = True, backend: Optional[str] = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if absent not in ("nan", "zero"):
            raise ValueError(f"absent must be 'nan' or 'zero', got {absent!r}")
        self.num_classes, self.ignore_index, self.absent = num_classes, ignore_index, absent
        self.dist_sync, self.backend = dist_sync, backend
        self.reset()

    def reset(self) -> None:
        """Forget every update.

        Returns:
            None.
        """
        self._counts = None

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add the counts of a batch.

        Args:
            preds: logits [N, C, *] or class indices [N, *].
            target: class indices [N, *].

        Returns:
            None.

        Raises:
            ValueError: shapes that do not fit.
            TypeError: an unsupported dtype.
        """
        c = _counts(preds, target, self.num_classes, self.ignore_index, self.backend)
        self._counts = c if self._counts is None else self._counts + c.to(self._counts.device)

    def counts_view(self, device) -> Tensor:
        """The int64 [C, C] matrix counted so far (rows: target, columns:
        prediction), as a view on ``device`` (the counts move there) that a
        loss's ``confusion=`` argument adds to in place (segfast.dice_loss and
        the other region losses).

        Args:
            device: where the counts live from now on.

        Returns:
            The [C, C] int64 view of the counts.

        Raises:
            RuntimeError: a device torch cannot allocate on.

        Example:
            >>> import segfast
            >>> cm = segfast.metrics.ConfusionMatrix(3)
            >>> cm.counts_view("cpu").shape
            torch.Size([3, 3])
        """
        C = self.num_classes
        if self._counts is None:
            self._counts = torch.zeros(C * C + 1, dtype=torch.int64, device=device)
        elif self._counts.device != torch.device(device):
            self._counts = self._counts.to(device)
        return self._counts[: C * C].view(C, C)

    def compute(self) -> dict:
        """The scores of everything added so far.

        Returns:
            dict: see :func:`scores_from_confusion`.

        Raises:
            ValueError: a target value outside [0, C) other than ``ignore_index``.
        """
        C = self.num_classes
        c = self._counts if self._counts is not None else torch.zeros(C * C + 1, dtype=torch.int64)
        dist = torch.distributed
        if self.dist_sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else c.device
            c = c.to(dev).clone()
            dist.all_reduce(c)
        if bool(c[-1] > 0):
            raise ValueError(f"target held {int(c[-1])} values outside [0, {C}) other than "
                             f"ignore_index={self.ignore_index}")
        return scores_from_confusion(c[:-1].reshape(C, C).cpu(), self.absent)
