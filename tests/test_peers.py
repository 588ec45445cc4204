"""The peers' own test suites, run against segfast with only the import
swapped (tools/run_peer_tests.py). segmentation_models_pytorch publishes its
tests in its sdist: the pinned release's tests/test_losses.py is downloaded
from PyPI and must pass in full. MONAI's and torchvision's tests are not on
PyPI; run them from a checkout with the same tool (see the README)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("run_peer_tests", ROOT / "tools" / "run_peer_tests.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_peer_tests", mod)
    spec.loader.exec_module(mod)
    return mod


def test_smp_own_loss_tests(smp_losses):
    rpt = _runner()
    try:
        rpt.fetch_sdist("smp")
    except OSError as e:  # no network: a developer's offline run; CI must reach PyPI
        if os.environ.get("CI"):
            raise
        pytest.skip(f"smp's sdist could not be downloaded: {e}")
    out = rpt.run("smp")
    assert out["failed"] == [], out["log"]
    assert len(out["passed"]) == 30, out["log"]  # every case of smp 0.6.0's tests/test_losses.py
