"""Shared fixtures: the backends testable here, peer libraries, tolerances."""

from __future__ import annotations

import itertools
import os
import socket

import pytest
import torch

# Without a GPU the triton backend runs on CPU tensors in Triton's
# interpreter, which must be switched on before triton is first imported
# (segfast imports it when it registers its Triton ops).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests that pin torch's thread count get it: the cpu backend would otherwise
# run on fewer threads while other processes keep this machine's cores busy
# (backends.cpu_threads; tests/test_cpu_threads.py tests that on its own).
os.environ.setdefault("SEGFAST_CPU_ADAPTIVE", "0")

from segfast import backends  # noqa: E402

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


# Triton kernel tests (test_triton_<family>.py): per-dtype (rtol, atol relative
# to max |reference|) of kernel outputs against the float64 reference.
TRITON_TOL = {
    torch.float32: (1e-5, 1e-6),
    torch.float64: (1e-5, 1e-6),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (1e-2, 8e-3),
}

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def triton_needs_run():
    """skipif marker for tests that launch Triton kernels: they run on CUDA, or
    on CPU tensors in the interpreter when TRITON_INTERPRET=1 was set before
    triton was first imported. Call after pytest.importorskip("triton")."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    return pytest.mark.skipif(
        not CUDA and not isinstance(tl.zeros, InterpretedFunction),
        reason="triton was imported before TRITON_INTERPRET=1 was set")


def close_rel(got, want, rtol, atol_rel, what):
    """assert_close in float64 with atol = atol_rel * max(|want|, 1e-3); got must
    be finite (catches unwritten outputs); ``what`` names the output."""
    want = want.to(torch.float64)
    got = got.to(torch.float64)
    atol = atol_rel * max(want.abs().max().item(), 1e-3)
    assert torch.isfinite(got).all(), f"{what}: non-finite values (unwritten output?)"
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def with_layout(rnd, N, C, S, layout):
    """An [N, C, S] tensor from ``rnd(*shape)`` in a memory layout: "contiguous",
    "slice" (strided along S), "channels_last" (stride(1) == 1) or "sliced_c"
    (every other class, and an offset image)."""
    if layout == "contiguous":
        return rnd(N, C, S)
    if layout == "slice":  # strided along S
        return rnd(N, C, 2 * S)[..., ::2]
    if layout == "channels_last":  # stride(1) == 1
        return rnd(N, S, C).permute(0, 2, 1)
    if layout == "sliced_c":  # every other class, and an offset image
        return rnd(N + 1, 2 * C, S)[1:, ::2]
    raise ValueError(layout)


def _param_id(v):
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, dict):
        return ",".join(f"{k}={_param_id(x)}" for k, x in v.items()) or "default"
    return str(v).replace(" ", "")


def pairwise(*axes, valid=None):
    """pytest params for the whole product of ``axes`` (lists of values; a tuple
    value fills consecutive argnames), where the default tier runs a covering
    set and the ``slow`` tier the rest: every value of each axis meets every
    value of each other axis in at least one default case (chosen greedily, in
    the order given). ``valid(*values)`` False: the combination is left to the
    slow tier (where the test skips it) and covers no pair."""
    def flat(combo):
        return tuple(x for v in combo for x in (v if isinstance(v, tuple) else (v,)))

    def covers(idx):  # the combination's values and pairs of values
        return ({(i, idx[i]) for i in range(len(idx))}
                | {(i, idx[i], j, idx[j]) for i in range(len(idx)) for j in range(i + 1, len(idx))})

    every = list(itertools.product(*(range(len(a)) for a in axes)))
    values = {idx: flat(tuple(a[i] for a, i in zip(axes, idx))) for idx in every}
    ok = [idx for idx in every if valid is None or valid(*values[idx])]
    todo = set().union(*map(covers, ok))
    default = set()
    while todo:
        best = max(ok, key=lambda idx: len(covers(idx) & todo))
        default.add(best)
        todo -= covers(best)
    return [pytest.param(*values[idx], marks=() if idx in default else pytest.mark.slow,
                         id="-".join(map(_param_id, values[idx]))) for idx in every]


def kernel_backends(device="cpu"):
    """Kernel backends that can run in this process (triton only under the interpreter)."""
    return [b for b in ("cpu", "cuda", "triton") if backends.unavailable_reason(b, torch.device(device)) is None]


from segfast.compat.smp import load_smp_losses  # noqa: E402,F401  (the peer loader, shared with bench/)


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



def free_port() -> int:
    """A free TCP port on the loopback, for the process groups of the distributed tests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
