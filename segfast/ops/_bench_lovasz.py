"""segfast-bench case of the Lovász family (collected through
segfast/_families.py): the per-image Lovász-softmax, forward+backward, on
each kernel backend and on segfast's torch backend (one batched torch sort),
against the per-segment loop reference, smp and segfast.compat's class."""

from __future__ import annotations

import torch

from .. import bench as sb
from ..reference import lovasz as ref
from . import lovasz

OPS = {
    "lovasz_softmax": sb.Op(
        lambda x, y, backend=None: lovasz.lovasz_softmax_loss(x, y, per_image=True, backend=backend),
        lambda x, y: ref.lovasz_softmax(x, y, per_image=True, dtype=torch.float32), passes=1, writes=1,
        also_torch=True, extra={
            "smp": sb.compat_peer("smp", "LovaszLoss", "multiclass", per_image=True),
            "compat_smp": sb.compat_peer("compat.smp", "LovaszLoss", "multiclass", per_image=True)}),
}
