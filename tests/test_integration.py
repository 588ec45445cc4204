"""PyTorch integration: torch.library.opcheck, torch.compile(fullgraph=True),
autocast, and `python -m segfast info`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import segfast
from segfast.ops import region as R

from conftest import kernel_backends

EXT = [b for b in kernel_backends() if b in ("cpu", "cuda")]


def _args(is_label):
    x = torch.randn(2, 5, 24, requires_grad=True)
    t = torch.randint(0, 5, (2, 24)) if is_label else torch.rand(2, 5, 24)
    return x, t


@pytest.mark.parametrize("backend", EXT)
@pytest.mark.parametrize("is_label", [True, False])
def test_opcheck_ext_ops(backend, is_label):
    x, t = _args(is_label)
    torch.library.opcheck(R.region_stats_op, (x, t, is_label, 2, 0, None, backend))
    torch.library.opcheck(R.region_stats_op, (x, t, is_label, 1, 0, 3.0, backend))
    g = torch.randn(2, 5, R.K)
    torch.library.opcheck(R.region_grad_op, (x.detach(), t, g, is_label, 2, 0, None, backend))
    if is_label:  # with the cross-entropy sums (Dice + CE in two passes)
        torch.library.opcheck(R.region_stats_op, (x, t, True, 2, 0, None, backend, True))
        gx = torch.randn(2, 5, R.KX)
        torch.library.opcheck(R.region_grad_op, (x.detach(), t, gx, True, 2, 0, None, backend, True))


@pytest.mark.skipif("triton" not in kernel_backends(), reason="triton backend not runnable here")
def test_opcheck_triton_ops():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x, t = _args(True)
    x, t = x.detach().to(dev).requires_grad_(True), t.to(dev)
    # Triton's interpreter dereferences every tensor argument, FakeTensors
    # included: the fake-tensor check is meaningful only on a GPU.
    utils = (("test_schema", "test_autograd_registration") if dev == "cpu"
             else ("test_schema", "test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"))
    torch.library.opcheck(R.region_stats_triton_op, (x, t, True, 2, 0, None), test_utils=utils)
    g = torch.randn(2, 5, R.K, device=dev)
    torch.library.opcheck(R.region_grad_triton_op, (x.detach(), t, g, True, 2, 0, None), test_utils=utils)
    torch.library.opcheck(R.region_stats_triton_op, (x, t, True, 2, 0, None, True), test_utils=utils)
    gx = torch.randn(2, 5, R.KX, device=dev)
    torch.library.opcheck(R.region_grad_triton_op, (x.detach(), t, gx, True, 2, 0, None, True), test_utils=utils)


class _Step(torch.nn.Module):
    """Model forward plus two region losses: what a training step compiles."""

    def __init__(self, backend):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.dice = segfast.DiceLoss("multiclass", ignore_index=255, backend=backend)
        self.backend = backend

    def forward(self, x, y):
        logits = self.conv(x)
        return self.dice(logits, y) + segfast.tversky_loss(logits, y, ignore_index=255, gamma=2.0,
                                                           batch=True, backend=self.backend)


@pytest.mark.parametrize("backend", EXT)
@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_training_step(backend, compiler):
    torch._dynamo.reset()
    step = _Step(backend)
    opt = torch.optim.SGD(step.parameters(), lr=0.1)
    x = torch.randn(2, 3, 12, 10)
    y = torch.randint(0, 4, (2, 12, 10))
    y[0, 0] = 255
    eager_loss = step(x, y)
    eager_loss.backward()
    eager_grad = step.conv.weight.grad.clone()
    opt.zero_grad()
    compiled = torch.compile(step, fullgraph=True, backend=compiler)
    loss = compiled(x, y)
    loss.backward()
    torch.testing.assert_close(loss.detach(), eager_loss.detach())
    torch.testing.assert_close(step.conv.weight.grad, eager_grad)
    opt.step()  # the compiled step trains like the eager one


@pytest.mark.parametrize("backend", EXT)
def test_compile_inductor_loss(backend):
    torch._dynamo.reset()
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    y = torch.randint(0, 4, (2, 9, 7))
    f = torch.compile(lambda x, y: segfast.dice_loss(x, y, batch=True, backend=backend), fullgraph=True)
    torch.testing.assert_close(f(x, y), segfast.dice_loss(x, y, batch=True, backend=backend))


AUTOCAST_LOSSES = {
    "dice": lambda logits, y, backend: segfast.dice_loss(logits, y, backend=backend),
    "fused+ce": lambda logits, y, backend: (segfast.fused_loss(logits, y, backend=backend)
                                            + segfast.cross_entropy(logits, y, backend=backend)),
}


@pytest.mark.parametrize("backend", EXT + ["torch"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(AUTOCAST_LOSSES))
def test_autocast(backend, dtype, name):
    """fp16/bf16 logits under autocast: an fp32 loss, finite gradients, the reference's value."""
    loss_fn = AUTOCAST_LOSSES[name]
    conv = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 8, 8)
    y = torch.randint(0, 4, (2, 8, 8))
    with torch.autocast("cpu", dtype=dtype):
        logits = conv(x)
        assert logits.dtype == dtype
        loss = loss_fn(logits, y, backend)
    assert loss.dtype == torch.float32
    loss.backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    ref = loss_fn(logits.detach(), y, "torch")
    torch.testing.assert_close(loss.detach(), ref.detach().float(), rtol=1e-4, atol=1e-5)


def test_info_cli():
    out = subprocess.run([sys.executable, "-m", "segfast", "info"], capture_output=True, text=True, check=True)
    assert "segfast" in out.stdout and "backends_cpu" in out.stdout
    d = segfast.info(print_out=False)
    assert d["segfast"] == segfast.__version__
    assert "torch" in d["backends_cpu"]
