"""Docstring parts written once and filled into many docstrings.

A docstring line that holds only ``{name}`` is replaced by the part of that
name, indented as the line was (torch fills its common arguments into its
docstrings the same way). ``{fn}`` inside a part stands for the function a
Module wraps.
"""

from __future__ import annotations


def expand(doc: str | None, parts: dict, **names: str) -> str | None:
    """``doc`` with every ``{name}`` line replaced by ``parts[name]``."""
    if not doc:  # python -OO strips docstrings
        return doc
    lines = []
    for line in doc.split("\n"):
        key = line.strip()
        if key.startswith("{") and key.endswith("}") and key[1:-1] in parts:
            text = parts[key[1:-1]]
            for k, v in names.items():
                text = text.replace("{" + k + "}", v)
            pad = line[:len(line) - len(line.lstrip())]
            lines += [pad + part if part else "" for part in text.split("\n")]
        else:
            lines.append(line)
    return "\n".join(lines)


def fill(parts: dict, **names: str):
    """Decorator: expand the docstring of a function or class with ``parts``."""
    def deco(obj):
        obj.__doc__ = expand(obj.__doc__, parts, **names)
        return obj
    return deco


# The parts every Module docstring shares, filled in per Module ({fn}: the
# function it wraps).
MODULE_PARTS = {
    "region_kwargs": """\
from_logits: False takes probabilities.
ignore_index: label (or dense target value) whose pixels count nowhere.
weight: per-class weights, one per channel, >= 0 (kept as a buffer, so
    ``.to(device)`` moves it).
include_background: False drops channel 0 after the sums.
batch: pool the sums over the batch (one score per class).
smooth_nr: added to the numerator.
smooth_dr: added to the denominator.
log_loss: -log(score) instead of 1 - score.
reduction: "mean", "sum" or "none".
sync_stats: with ``batch``, all-reduce the pooled sums across processes.
process_group: the process group of ``sync_stats`` (None: the default).
backend: "triton", "cuda", "cpu", "torch" or None (the device's default).""",
    "module_returns": """\
Called as ``loss_fn(input, target)``: what :func:`segfast.{fn}` returns
(the 0-d loss, or the unreduced losses with ``reduction="none"``).""",
    "module_raises": """\
ValueError, TypeError, RuntimeError: as :func:`segfast.{fn}`, when called.""",
    "reduction": 'reduction: "mean", "sum" or "none".',
    "backend": 'backend: "triton", "cuda", "cpu", "torch" or None (the device\'s default).',
    "box_args": """\
reduction: "mean" (the Module's default), "sum" or "none".
fmt: box format, "xyxy", "xywh" or "cxcywh".
eps: added to the union (and to the other denominators), as torchvision.
backend: "triton", "cuda", "cpu", "torch" or None (the device's default).""",
    "box_returns": """\
Called as ``loss_fn(boxes1, boxes2)``: what :func:`segfast.{fn}` returns.""",
    "balanced_returns": """\
Called as ``loss_fn(pred, target, iou, weight=None, avg_factor=None)``:
the 0-d loss of :func:`segfast.{fn}`.""",
}


def fill_modules(namespace: dict, module: str, default_fn: str = "") -> None:
    """Expand the docstrings of the nn.Modules defined in ``module`` (a family's
    namespace, ``globals()``) with MODULE_PARTS; ``{fn}`` is the name of the
    function each wraps (its ``_fn``, else ``default_fn``)."""
    import torch

    for cls in [c for c in list(namespace.values())
                if isinstance(c, type) and issubclass(c, torch.nn.Module) and c.__module__ == module]:
        fn = getattr(cls, "_fn", None)
        cls.__doc__ = expand(cls.__doc__, MODULE_PARTS, fn=fn.__name__ if fn is not None else default_fn)
