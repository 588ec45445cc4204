"""The metrics family's cuda dispatch never reads a device value on the host:
``ConfusionMatrix.update`` from logits and from class indices on fake CUDA
tensors (tests/test_no_sync.py's harness: the ``_C.cuda`` entry points record
and run nothing) launches the CUDA kernel and reads nothing back."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from segfast.metrics import ConfusionMatrix  # noqa: E402

from test_no_sync import fake_cuda_guard, gpu  # noqa: E402,F401  (fixtures)

C = 5


def _logits():
    return torch.randn(2, C, 7, 9, device="cuda"), torch.randint(0, C, (2, 7, 9), device="cuda")


def _indices():
    return torch.randint(0, C, (2, 7, 9), device="cuda"), torch.randint(0, C, (2, 7, 9), device="cuda")


@pytest.mark.parametrize("make", [_logits, _indices], ids=["logits", "indices"])
def test_confusion_update_no_host_sync(gpu, make):  # noqa: F811
    m = ConfusionMatrix(C, ignore_index=255, backend="cuda")
    reads, launches, err = gpu(m.update, make)
    assert err is None, err
    assert reads == [], "\n".join(reads)
    assert launches == ["confusion"]
