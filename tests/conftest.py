"""Shared fixtures: the backends testable here, peer libraries, tolerances."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest
import torch

from segfast import backends

# One per-dtype table (DESIGN.md): (rtol, atol) against the float64 reference.
TOL = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2e-2, 2e-3),
    torch.bfloat16: (5e-2, 1e-2),
}


def tol(dtype):
    """assert_close keyword arguments for results in ``dtype``."""
    rtol, atol = TOL[dtype]
    return dict(rtol=rtol, atol=atol)


def kernel_backends(device="cpu"):
    """Kernel backends that can run in this process (triton only under the interpreter)."""
    return [b for b in ("cpu", "cuda", "triton") if backends.unavailable_reason(b, torch.device(device)) is None]


def load_smp_losses():
    """segmentation_models_pytorch.losses from an installed smp, without running
    smp's package __init__ (it imports the model zoo, which needs torchvision)."""
    spec = importlib.util.find_spec("segmentation_models_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "segmentation_models_pytorch.losses" in sys.modules:
        return sys.modules["segmentation_models_pytorch.losses"]
    pkg = types.ModuleType("segmentation_models_pytorch")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("segmentation_models_pytorch", pkg)
    return importlib.import_module("segmentation_models_pytorch.losses")


@pytest.fixture(scope="session")
def smp_losses():
    mod = load_smp_losses()
    if mod is None:
        pytest.skip("segmentation_models_pytorch is not installed (pip install --no-deps segmentation-models-pytorch)")
    return mod


@pytest.fixture(scope="session")
def monai_losses():
    return pytest.importorskip("monai.losses")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
