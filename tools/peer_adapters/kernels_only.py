"""A pytest plugin for the peers' suites (run_peer_tests.py, MONAI and smp):
while a segfast.compat class runs its forward, every eager path of segfast
fails (the references of segfast.reference, torch's own losses and
log-softmax, called from segfast's code; a user's callable such as MONAI's
``other_act`` may call them), so a peer's case passes only on segfast's
kernels.

Also imported by tests/test_compat.py (``eager_paths_fail``)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys

import torch


def _targets():
    from segfast.reference import lovasz, pixel, region

    F = torch.nn.functional
    return [(pixel, "pixel_terms"), (region, "region_stats"), (region, "region_loss"),
            (lovasz, "lovasz_hinge"), (lovasz, "lovasz_softmax"),
            (F, "cross_entropy"), (F, "binary_cross_entropy_with_logits"), (F, "log_softmax"), (F, "logsigmoid"),
            (F, "nll_loss"), (torch, "log_softmax"), (torch.Tensor, "log_softmax")]


def _fail(what, original):
    import segfast

    root = os.path.dirname(segfast.__file__) + os.sep

    def f(*args, **kwargs):
        if sys._getframe(1).f_code.co_filename.startswith(root):
            raise AssertionError(f"segfast.compat took an eager path: {what}")
        return original(*args, **kwargs)
    return f


_depth = 0


@contextlib.contextmanager
def eager_paths_fail():
    """Within: calling any eager path of segfast raises AssertionError (reentrant)."""
    global _depth
    saved = []
    if _depth == 0:
        for mod, name in _targets():
            fn = getattr(mod, name)
            saved.append((mod, name, fn))
            setattr(mod, name, _fail(f"{getattr(mod, '__name__', mod)}.{name}", fn))
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for mod, name, fn in saved:
            setattr(mod, name, fn)


def guard_forwards(module) -> None:
    """Run the forward of each loss class of ``module`` under eager_paths_fail,
    unless a target requires grad (its gradient comes from an eager pass, by
    design: no kernel writes dLoss/dtarget)."""
    for name in module.__all__:
        cls = getattr(module, name)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            def forward(self, *args, _forward=cls.forward, **kwargs):
                targets = list(args[1:]) + [v for k, v in kwargs.items() if k in ("target", "y_true")]
                if any(isinstance(t, torch.Tensor) and t.requires_grad for t in targets):
                    return _forward(self, *args, **kwargs)
                with eager_paths_fail():
                    return _forward(self, *args, **kwargs)
            cls.forward = functools.wraps(cls.forward)(forward)


def pytest_configure(config):
    from segfast.compat import monai, smp

    guard_forwards(monai)
    guard_forwards(smp)
