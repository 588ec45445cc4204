"""The boxes family's Triton kernels (segfast.triton_kernels.boxes) through the
public API with backend="triton", against the eager reference: values and
gradients (grad_output != 1), every kind and format, fp32/fp16/bf16, batched
and unbatched, degenerate and non-overlapping boxes, empty sets.

Without a GPU the kernels run on CPU tensors in the Triton interpreter
(TRITON_INTERPRET=1): small shapes only.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

from conftest import DEVICE, kernel_backends, triton_needs_run  # noqa: E402
from test_boxes import ALIGNED, KINDS, LOSSES, PAIRWISE, check, grads, pair  # noqa: E402

pytestmark = [triton_needs_run(),
              pytest.mark.skipif("triton" not in kernel_backends(DEVICE), reason="triton backend not usable here")]


def _dev(*ts):
    return [t.to(DEVICE) for t in ts]


@pytest.mark.parametrize("kind", KINDS)
def test_pairwise(kind):
    for fmt, dtype, (s1, s2) in (("xyxy", torch.float32, ((2, 9), (2, 7))), ("xywh", torch.float16, ((8,), (6,))),
                                 ("cxcywh", torch.bfloat16, ((1, 7), (1, 8)))):
        b1, b2 = _dev(*pair(s1, s2, fmt, dtype))
        got = grads(lambda a, b: PAIRWISE[kind](a, b, fmt=fmt, backend="triton"), b1, b2)
        want = grads(lambda a, b: PAIRWISE[kind](a, b, fmt=fmt, backend="torch"), b1, b2)
        for name, g, w in zip(("value", "grad1", "grad2"), got, want):
            check(g.cpu(), w.cpu(), dtype, f"triton {kind} {fmt} {name}")


@pytest.mark.parametrize("kind", KINDS)
def test_aligned_and_losses(kind):
    for fmt, dtype in (("xyxy", torch.float32), ("cxcywh", torch.float16), ("xywh", torch.bfloat16)):
        b1, b2 = _dev(*pair((2, 9), (2, 9), fmt, dtype, seed=2))
        got = grads(lambda a, b: ALIGNED[kind](a, b, fmt=fmt, backend="triton"), b1, b2)
        want = grads(lambda a, b: ALIGNED[kind](a, b, fmt=fmt, backend="torch"), b1, b2)
        for name, g, w in zip(("value", "grad1", "grad2"), got, want):
            check(g.cpu(), w.cpu(), dtype, f"triton aligned {kind} {fmt} {name}")
        for red in ("none", "mean", "sum"):
            got = grads(lambda a, b: LOSSES[kind](a, b, reduction=red, fmt=fmt, backend="triton"), b1, b2)
            want = grads(lambda a, b: LOSSES[kind](a, b, reduction=red, fmt=fmt, backend="torch"), b1, b2)
            for name, g, w in zip(("loss", "grad1", "grad2"), got, want):
                check(g.cpu(), w.cpu(), dtype if name != "loss" else torch.float32, f"triton loss {kind} {red} {name}")


def test_empty():
    b1 = torch.rand(2, 0, 4, device=DEVICE, requires_grad=True)
    b2 = torch.rand(2, 3, 4, device=DEVICE, requires_grad=True)
    out = PAIRWISE["giou"](b1, b2, backend="triton")
    assert out.shape == (2, 0, 3)
    out.sum().backward()
    assert b2.grad.shape == b2.shape and (b2.grad == 0).all()
    e = torch.rand(0, 4, device=DEVICE, requires_grad=True)
    loss = LOSSES["ciou"](e, e, reduction="mean", backend="triton")
    assert loss.item() == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fake-tensor tracing of triton_ops needs real Triton "
                    "launches (the interpreter reads data pointers)")
def test_compile_and_opcheck():
    from segfast.ops import boxes as ob
    b1, b2 = _dev(*pair((1, 7), (1, 6), "xyxy", torch.float32))
    p, t = _dev(*pair((9,), (9,), "xyxy", torch.float32, seed=3))

    # the triton_ops themselves: backends.choose("triton") is not traceable here (an
    # lru_cache'd import check), so the public functions pick the backend outside
    def step(a, b, p, t):
        return ob.box_pairwise_triton_op(a, b, 2, 0, 1e-7).mean() + \
            ob.box_loss_triton_op(p, t, 1, 0, 1e-7, False, True, False)[0]

    args = [x.clone().requires_grad_(True) for x in (b1, b2, p)] + [t]
    want = step(*args)
    want.backward()
    args2 = [x.detach().clone().requires_grad_(True) for x in args[:3]] + [t]
    got = torch.compile(step, fullgraph=True, backend="aot_eager")(*args2)
    got.backward()
    torch.testing.assert_close(got, want)
    for a, b in zip(args[:3], args2[:3]):
        torch.testing.assert_close(b.grad, a.grad)
    r = lambda x: x.clone().requires_grad_(True)  # noqa: E731
    for op, a in ((ob.box_pairwise_triton_op, (r(b1), r(b2), 3, 2, 1e-7)),
                  (ob.box_aligned_triton_op, (r(p), r(t), 1, 0, True, 1e-7, 1.0, -1.0, True, True)),
                  (ob.box_loss_triton_op, (r(p), t, 3, 1, 1e-7, True, True, False))):
        torch.library.opcheck(op, a, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_opcheck_schema_autograd():
    """Runs in the interpreter too (the fake-tensor checks above need a GPU)."""
    from segfast.ops import boxes as ob
    b1, b2 = _dev(*pair((1, 7), (1, 6), "xyxy", torch.float32))
    p, t = _dev(*pair((9,), (9,), "xyxy", torch.float32, seed=3))
    r = lambda x: x.clone().requires_grad_(True)  # noqa: E731
    for op, a in ((ob.box_pairwise_triton_op, (r(b1), r(b2), 3, 2, 1e-7)),
                  (ob.box_aligned_triton_op, (r(p), r(t), 1, 0, True, 1e-7, 1.0, -1.0, True, True)),
                  (ob.box_loss_triton_op, (r(p), t, 3, 1, 1e-7, True, True, False))):
        torch.library.opcheck(op, a, test_utils=("test_schema", "test_autograd_registration"))
