"""segfast-bench cases of the region family (Dice, soft IoU, Tversky,
generalized Dice; collected through segfast/_families.py): forward+backward
against the eager reference, MONAI, smp and segfast.compat's drop-in
classes, and a training step with the Dice loss against MONAI's."""

from __future__ import annotations

import statistics

import torch

from .. import backends
from .. import bench as sb
from ..reference import region as ref
from . import region


def _ref(kind):
    return lambda x, y: ref.region_loss(x, y, kind=kind)


OPS = {
    "dice": sb.Op(region.dice_loss, _ref("dice"), passes=2, writes=1, quick=True, extra={
        "monai": sb.monai_peer("DiceLoss", softmax=True, to_onehot_y=True),
        "compat_monai": sb.compat_peer("compat.monai", "DiceLoss", softmax=True, to_onehot_y=True, labels_1=True),
        "smp": sb.compat_peer("smp", "DiceLoss", "multiclass"),
        "compat_smp": sb.compat_peer("compat.smp", "DiceLoss", "multiclass")}),
    "jaccard": sb.Op(region.jaccard_loss, _ref("jaccard"), passes=2, writes=1, extra={
        "smp": sb.compat_peer("smp", "JaccardLoss", "multiclass"),
        "compat_smp": sb.compat_peer("compat.smp", "JaccardLoss", "multiclass")}),
    "tversky": sb.Op(region.tversky_loss, _ref("tversky"), passes=2, writes=1, extra={
        "monai": sb.monai_peer("TverskyLoss", softmax=True, to_onehot_y=True),
        "compat_monai": sb.compat_peer("compat.monai", "TverskyLoss", softmax=True, to_onehot_y=True,
                                       labels_1=True),
        "smp": sb.compat_peer("smp", "TverskyLoss", "multiclass"),
        "compat_smp": sb.compat_peer("compat.smp", "TverskyLoss", "multiclass")}),
    "generalized_dice": sb.Op(region.generalized_dice_loss, _ref("generalized_dice"), passes=2, writes=1, extra={
        "monai": sb.monai_peer("GeneralizedDiceLoss", softmax=True, to_onehot_y=True),
        "compat_monai": sb.compat_peer("compat.monai", "GeneralizedDiceLoss", softmax=True, to_onehot_y=True,
                                       labels_1=True)}),
}


def stages(device: torch.device, args) -> list:
    """The training step, after the loss cases (segfast.bench runs those from OPS)."""
    return [("training step (dice)", lambda: measure_train_step(device, repeat=args.repeat, min_time=args.min_time))]


def _train_net(C: int) -> torch.nn.Module:
    """A small segmentation net: RGB -> C logits at full resolution."""
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, C, 1))


def measure_train_step(device: torch.device, repeat: int = 10, min_time: float = sb.MIN_TIME,
                       op: str = "dice") -> list[dict]:
    """What a user feels of the loss: rows of one training step (the net of _train_net forward,
    the loss, backward) with segfast's loss and with MONAI's, same net, same data, the steps in
    turns; beside them the loss alone (forward+backward) on fresh logits each call (a clone, as a
    net writes new ones), segfast's and MONAI's calls in turns, and in a loop of its own."""
    case = next((c for c in sb.op_cases(OPS, device) if c.op == op), None)
    run = sb.runners(case, device) if case is not None else {}
    default = backends.default_backend(device)  # what a user's loss runs on (never the Triton interpreter)
    if "monai" not in run or default not in run or default == "torch":
        return []
    kernels = {default: run[default]}
    x, y = sb.make_inputs(case, device)
    N, C, H, W = case.shape
    net = _train_net(C).to(device=device, dtype=case.dtype)
    image = torch.randn((N, 3, H, W), generator=torch.Generator().manual_seed(1)).to(device, case.dtype)
    losses = dict(kernels, monai=run["monai"])

    def train_step(loss):
        net.zero_grad(set_to_none=True)
        loss(net(image), y).backward()

    def loss_step(loss):
        xf = x.detach().clone().requires_grad_(True)
        loss(xf, y).backward()

    rows = []

    def add(kind, times):
        base = statistics.median(times["monai"])
        for name, t in times.items():
            rows.append(dict(op=f"{op}:{kind}", shape=list(case.shape), dtype=str(case.dtype)[6:],
                             labels=str(case.label_dtype)[6:], backend=name, device=str(device),
                             median_ms=1e3 * statistics.median(t), iqr_ms=sb.iqr_ms(t), logits_mb=None,
                             peak_extra_mb=None, gbps=None, speedup_vs_reference=None, speedup_vs_smp=None,
                             speedup_vs_monai=base / statistics.median(t)))

    add("train_step", sb.interleaved(losses, train_step, device, repeat, min_time))
    add("loss_interleaved", sb.interleaved(losses, loss_step, device, repeat, min_time))
    alone = {name: sb.time_fn(lambda: loss_step(fn), device, repeat=repeat, min_time=min_time)
             for name, fn in losses.items()}
    add("loss_own_loop", alone)
    return rows

