"""A loss call goes one way: arguments checked, tensors validated and the
backend chosen, then the kernels, the formula and the reduction. A bad
argument raises before any kernel runs."""

from __future__ import annotations

import pytest
import torch

import segfast
from segfast.ops import region


@pytest.fixture
def no_kernels(monkeypatch):
    """The region kernels' entry points raise if anything reaches them."""
    def ran(*a, **k):
        raise AssertionError("a kernel ran before the argument check")
    monkeypatch.setattr(region, "plane_stats", ran)
    monkeypatch.setattr(region, "finish_loss", ran)


@pytest.mark.parametrize("fn", [segfast.dice_loss, segfast.jaccard_loss, segfast.tversky_loss,
                                segfast.generalized_dice_loss])
@pytest.mark.parametrize("kwargs, match", [
    (dict(sync_stats=True), "sync_stats=True needs batch=True"),
    (dict(mode="binary", include_background=False), "include_background=False needs C >= 2"),
    (dict(reduction="median"), "reduction must be"),
    (dict(smooth_dr=-1.0), "smooth_nr and smooth_dr must be >= 0"),
])
def test_bad_arguments_raise_before_the_kernels(no_kernels, fn, kwargs, match):
    C = 1 if kwargs.get("mode") == "binary" else 3
    x = torch.randn(2, C, 4, 4)
    y = torch.randint(0, 2 if C == 1 else C, (2, 4, 4))
    with pytest.raises(ValueError, match=match):
        fn(x, y, **kwargs)


def test_unknown_w_type_raises_before_the_kernels(no_kernels):
    with pytest.raises(ValueError, match="w_type must be 'square', 'simple' or 'uniform'"):
        segfast.generalized_dice_loss(torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4)), w_type="cubic")


def test_dice_plus_pixel_term_checks_dice_arguments_first(no_kernels):
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(ValueError, match="sync_stats=True needs batch=True"):
        segfast.dice_ce_loss(x, y, sync_stats=True)
