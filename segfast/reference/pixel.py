"""Eager PyTorch reference of the pixel family (cross entropy, BCE, balanced
BCE, focal, the softmax + positive-sharing "fused" loss): the test oracle
and the benchmark baseline. Never imports a kernel.

``pixel_terms`` gives the per-element loss terms the kernels sum (and whose
gradient they write), differentiable by autograd. Kinds:

softmax kinds (class-index targets, one term per pixel, maps [N, S]):
  CE            l0 = (1 - eps) * w_y * (-log p_y) + (eps / C) * sum_c w_c * (-log p_c)
  FOCAL_SOFTMAX l0 = -w_y * (1 - p_y)^gamma * log p_y        (w already holds alpha_c)
  FUSED         l0 = CE as above; l1 = -log p_0 on background pixels (y = 0),
                -log(1 - p_0) on foreground pixels, computed stably as
                -(logsumexp_{c>=1} x_c - logsumexp_c x_c)
FOCAL_SOFTMAX also takes dense (one-hot or soft) targets t [N, C, S]: one
term per element (maps [N, C, S]), MONAI's softmax_focal_loss,
  l0 = -w_c * t_c * (1 - p_c)^gamma * log p_c,
and a pixel with any channel equal to ignore_value counts nowhere (all its
elements 0).
sigmoid kinds (one term per element, maps [N, C, S]; t from dense targets or
one-hot of labels):
  BCE           l0 = -w_c * (a_pos * t * log s + a_neg * (1 - t) * log(1 - s)),
                a_pos = pw_c * beta_n, a_neg = 1 - beta_n with balanced beta
                (a_pos = pw_c, a_neg = 1 without)
  FOCAL_SIGMOID l0 = w_c * bce(x, t) * (1 - p_t)^gamma * alpha_t,
                p_t = s t + (1 - s)(1 - t), alpha_t = alpha t + (1 - alpha)(1 - t)
                (alpha_t = 1 when alpha < 0): torchvision's sigmoid_focal_loss
Invalid elements (ignore_index; for softmax kinds also a label that names
no channel of the input, e.g. label 0 when channel 0 was dropped with
label_offset = 1) have l0 = l1 = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CE, FOCAL_SOFTMAX, FUSED, BCE, FOCAL_SIGMOID = 0, 1, 2, 3, 4
SOFTMAX_KINDS = (CE, FOCAL_SOFTMAX, FUSED)


def focal_factor(om: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p)^gamma from om = 1 - p, with the gradient's limit (0) at p = 1 for
    gamma > 0 instead of autograd's inf * 0 = NaN when gamma < 1 (torch's 0^0 = 1)."""
    pos = om > 0
    safe = torch.where(pos, om, torch.ones_like(om))
    return torch.where(pos, safe ** gamma, torch.full_like(om, 1.0 if gamma == 0 else 0.0))


def _dense_softmax_focal(xf, t, w, gamma, ignore_value):
    """FOCAL_SOFTMAX on dense targets: per-element terms [N, C, S]."""
    tt = t.to(xf.dtype)
    valid = torch.ones_like(tt[:, :1], dtype=torch.bool) if ignore_value is None else \
        (tt != ignore_value).all(1, keepdim=True)
    valid = valid.expand_as(tt)
    logp = torch.log_softmax(xf, dim=1)
    l0 = -w.view(1, -1, 1) * torch.where(valid, tt, 0) * focal_factor(1 - logp.exp(), gamma) * logp
    zero = torch.zeros_like(l0)
    return torch.where(valid, l0, zero), zero, valid


def pixel_terms(x, t, is_label, kind, *, weight=None, pos_weight=None, beta=None, gamma=2.0,
                alpha=0.25, smoothing=0.0, label_offset=0, ignore_value=None):
    """-> (l0, l1, valid): per-pixel [N, S] (softmax kinds) or per-element
    [N, C, S] (sigmoid kinds) loss terms, float32 (float64 for float64 x)."""
    xf = x.double() if x.dtype == torch.float64 else x.float()
    N, C, S = xf.shape
    w = torch.ones(C, dtype=xf.dtype, device=x.device) if weight is None else weight.to(xf)
    if kind in SOFTMAX_KINDS:
        if not is_label:
            if kind != FOCAL_SOFTMAX:
                raise ValueError("softmax pixel losses other than focal take class-index targets")
            return _dense_softmax_focal(xf, t, w, gamma, ignore_value)
        lab = t.long()
        valid = torch.ones_like(lab, dtype=torch.bool) if ignore_value is None else lab != ignore_value
        valid = valid & (lab >= label_offset) & (lab < label_offset + C)  # no class of this input: no loss
        y = torch.where(valid, lab - label_offset, 0)
        logp = torch.log_softmax(xf, dim=1)
        logp_y = logp.gather(1, y[:, None])[:, 0]
        w_y = w[y]
        if kind == FOCAL_SOFTMAX:
            p_y = logp_y.exp()
            l0 = -w_y * focal_factor(1 - p_y, gamma) * logp_y
        else:
            l0 = (1 - smoothing) * w_y * (-logp_y)
            if smoothing:
                l0 = l0 + (smoothing / C) * (-(w[None, :, None] * logp).sum(1))
        l1 = torch.zeros_like(l0)
        if kind == FUSED:  # -log(1 - p_0) = -logsumexp_{c>=1} log p_c (exact for huge logits)
            l1 = torch.where(y == 0, -logp[:, 0], -torch.logsumexp(logp[:, 1:], dim=1))
        zero = torch.zeros_like(l0)
        return torch.where(valid, l0, zero), torch.where(valid, l1, zero), valid
    # sigmoid kinds
    if is_label:
        lab = t.long()[:, None]
        classes = torch.arange(C, device=x.device).view(1, C, 1) + label_offset
        tt = (lab == classes).to(xf.dtype)
        valid = (torch.ones_like(lab, dtype=torch.bool) if ignore_value is None
                 else lab != ignore_value).expand(N, C, S)
    else:
        valid = torch.ones_like(t, dtype=torch.bool) if ignore_value is None else t != ignore_value
        tt = torch.where(valid, t.to(xf.dtype), 0)
    wc = w.view(1, C, 1)
    log_s, log_1ms = F.logsigmoid(xf), F.logsigmoid(-xf)
    if kind == BCE:
        a_pos = torch.ones_like(wc) if pos_weight is None else pos_weight.to(xf).view(1, C, 1)
        a_neg = torch.ones_like(wc)
        if beta is not None:
            b = beta.to(xf).view(N, 1, 1)
            a_pos, a_neg = a_pos * b, a_neg * (1 - b)
        l0 = -wc * (a_pos * tt * log_s + a_neg * (1 - tt) * log_1ms)
    elif kind == FOCAL_SIGMOID:
        s = xf.sigmoid()
        ce = -(tt * log_s + (1 - tt) * log_1ms)
        p_t = s * tt + (1 - s) * (1 - tt)
        l0 = ce * focal_factor(1 - p_t, gamma)
        if alpha >= 0:
            l0 = l0 * (alpha * tt + (1 - alpha) * (1 - tt))
        l0 = wc * l0
    else:
        raise ValueError(f"unknown pixel loss kind {kind}")
    zero = torch.zeros_like(l0)
    return torch.where(valid, l0, zero), zero, valid
