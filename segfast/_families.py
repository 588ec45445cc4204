"""The families of segfast, one line each: where each declares its public
names and its benchmark stages.

A family's module defines its public functions and nn.Modules, with their
docstrings, and lists them in its ``__all__``. ``segfast``,
``segfast.functional`` and ``segfast.losses`` collect them from the list
below: the functions (and parameter classes such as ``segfast.Gaussian``)
become ``segfast.<name>`` and ``segfast.functional.<name>``, the Modules
``segfast.<Name>`` and ``segfast.losses.<Name>``. A family with its own
namespace (``segfast.metrics``) is imported as a submodule of segfast
instead. ``bench`` names the family's benchmark module: its ``OPS`` (op name
-> segfast.bench.Op) are the cases segfast-bench times, its ``stages(device,
args)`` any stages of its own; segfast/bench.py imports it when a run starts.
Adding a family is adding its files and one line here (docs/design.md shows
it with the metrics family).
"""

from __future__ import annotations

import importlib
from typing import NamedTuple, Optional


class Family(NamedTuple):
    module: str                   # defines the public names, listed in its __all__
    bench: Optional[str] = None   # its segfast-bench cases (OPS) and stages(device, args) -> [(name, run)]
    namespace: bool = False       # True: its names stay under segfast.<module's last name>


FAMILIES = (
    Family("segfast.ops.region", bench="segfast.ops._bench_region"),
    Family("segfast.ops.pixel", bench="segfast.ops._bench_pixel"),
    Family("segfast.ops.region_pixel", bench="segfast.ops._bench_region_pixel"),
    Family("segfast.ops.lovasz", bench="segfast.ops._bench_lovasz"),
    Family("segfast.ops.boxes", bench="segfast.ops._bench_boxes"),  # with boxes_match's ops
    Family("segfast.ops.box_losses"),
    Family("segfast.ops.boxes_match"),
    Family("segfast.ops.crf", bench="segfast.ops._bench_crf"),
    Family("segfast.metrics", bench="segfast.metrics._bench", namespace=True),
)


def _is_module(obj) -> bool:
    import torch

    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


def public(modules: Optional[bool] = None) -> dict:
    """{name: object} of every family's public names outside a namespace, in
    the families' order: the Modules (``modules=True``), the rest
    (``modules=False``) or both (None)."""
    out = {}
    for fam in FAMILIES:
        if fam.namespace:
            continue
        mod = importlib.import_module(fam.module)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if modules is None or _is_module(obj) == modules:
                if name in out and out[name] is not obj:
                    raise ImportError(f"segfast: {fam.module} and another family both define {name!r}")
                out[name] = obj
    return out


def namespaces() -> dict:
    """{short name: module} of the families with a namespace of their own (segfast.metrics)."""
    return {fam.module.rsplit(".", 1)[1]: importlib.import_module(fam.module) for fam in FAMILIES if fam.namespace}


def bench_modules() -> list:
    """The benchmark modules of the families that have one, imported."""
    return [importlib.import_module(fam.bench) for fam in FAMILIES if fam.bench]
