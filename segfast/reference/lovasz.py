"""Eager PyTorch reference of the Lovász family: the test oracle and the
benchmark baseline, written the obvious way (a Python loop over segments
and classes, one sort each, the paper's cumulative-sum Lovász gradient).
Never imports a kernel; differentiable by autograd.

Semantics (those of segmentation_models_pytorch's LovaszLoss):

* hinge: errors e = 1 - x·(2t - 1) over all channels of a segment (an image
  with ``per_image``, else the batch), loss = dot(relu(e) sorted descending,
  lovasz_grad(t sorted)); ignored elements dropped; an empty segment is 0.
* softmax: per segment (image or batch) and class c, errors |fg_c - p_c|,
  loss = mean over the selected classes of dot(sorted errors, lovasz_grad);
  ``"present"`` selects the classes present in the segment's valid target
  (none present: 0); a segment with every pixel ignored is 0.
* ``per_image``: the mean (or ``reduction``) over images of the per-image losses.
"""

from __future__ import annotations

import torch


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """First differences of g_i = 1 - (T - cumsum(t)_i) / (T + cumsum(1 - t)_i)."""
    gts = gt_sorted.sum()
    inter = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jac = 1.0 - inter / union
    if gt_sorted.numel() > 1:
        jac = torch.cat([jac[:1], jac[1:] - jac[:-1]])
    return jac


def _hinge_flat(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if x.numel() == 0:
        return x.sum() * 0.0
    e = 1.0 - x * (2.0 * t - 1.0)
    e_sorted, perm = torch.sort(e, descending=True)
    return torch.dot(torch.relu(e_sorted), lovasz_grad(t[perm]))


def _reduce(losses, reduction):
    f = torch.stack(losses)
    if reduction == "mean":
        return f.mean() if f.numel() else f.sum()
    return f.sum() if reduction == "sum" else f


def lovasz_hinge(x: torch.Tensor, t: torch.Tensor, *, per_image: bool = True, ignore_index=None,
                 reduction: str = "mean", dtype=torch.float64) -> torch.Tensor:
    """x: logits [N, C, *]; t: float targets of the same shape (0/1 or soft;
    elements equal to ``ignore_index`` dropped)."""
    x = x.to(dtype)
    t = t.to(dtype)

    def flat(xs, ts):
        xs, ts = xs.reshape(-1), ts.reshape(-1)
        if ignore_index is not None:
            keep = ts != ignore_index
            xs, ts = xs[keep], ts[keep]
        return _hinge_flat(xs, ts)

    if not per_image:
        return flat(x, t)
    return _reduce([flat(x[i], t[i]) for i in range(x.shape[0])], reduction)


def _softmax_flat(p: torch.Tensor, lab: torch.Tensor, classes) -> torch.Tensor:
    """p: [P, C] probabilities, lab: [P] labels."""
    C = p.shape[1]
    if p.shape[0] == 0:
        return p.sum() * 0.0
    losses = []
    for c in (range(C) if isinstance(classes, str) else classes):
        fg = (lab == c).to(p.dtype)
        if classes == "present" and fg.sum() == 0:
            continue
        e = (fg - p[:, c]).abs()
        e_sorted, perm = torch.sort(e, descending=True)
        losses.append(torch.dot(e_sorted, lovasz_grad(fg[perm])))
    return torch.stack(losses).mean() if losses else p.sum() * 0.0


def lovasz_softmax(x: torch.Tensor, labels: torch.Tensor, *, classes="present", per_image: bool = False,
                   ignore_index=None, from_logits: bool = True, reduction: str = "mean",
                   dtype=torch.float64) -> torch.Tensor:
    """x: logits (or probabilities) [N, C, *]; labels: class indices [N, *]."""
    x = x.to(dtype)
    p = torch.softmax(x, 1) if from_logits else x
    C = p.shape[1]

    def flat(pp, ll):
        pp = pp.movedim(1, -1).reshape(-1, C)
        ll = ll.reshape(-1)
        if ignore_index is not None:
            keep = ll != ignore_index
            pp, ll = pp[keep], ll[keep]
        return _softmax_flat(pp, ll, classes)

    if not per_image:
        return flat(p, labels)
    return _reduce([flat(p[i:i + 1], labels[i:i + 1]) for i in range(p.shape[0])], reduction)
