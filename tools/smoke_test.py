"""Smoke test of an installed segfast: every op family forward + backward on the
cpu backend, compared with the torch backend, and torch.compile on one loss.

Run from outside the source tree (the installed package, not the checkout):
    python tools/smoke_test.py
Exit status 0 when everything passes; one line per check.
"""

import os
import sys
import time

import torch

import segfast

failures = []


def check(name, fn):
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as e:  # report every failure, not only the first
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}")
        return
    print(f"ok   {name} ({time.perf_counter() - t0:.2f} s)")


def close(a, b, what):
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise AssertionError(f"{what}: cpu backend and torch backend differ by {(a - b).abs().max().item():.3g}")


def fwd_bwd(fn, *inputs, diff=(0,), **kw):
    """Loss and gradients (for the inputs at positions ``diff``) of fn on the cpu
    backend and on the torch backend (reference)."""
    outs = []
    for backend in ("cpu", "torch"):
        xs = [x.detach().clone().requires_grad_(i in diff) for i, x in enumerate(inputs)]
        loss = fn(*xs, backend=backend, **kw).sum()
        wrt = [x for x in xs if x.requires_grad]
        grads = torch.autograd.grad(loss, wrt) if wrt else ()
        outs.append((loss.detach(), [g.detach() for g in grads]))
    (l1, g1), (l2, g2) = outs
    close(l1, l2, f"{fn.__name__} loss")
    for a, b in zip(g1, g2):
        close(a, b, f"{fn.__name__} gradient")


torch.manual_seed(0)
logits = torch.randn(2, 4, 16, 16)
labels = torch.randint(0, 4, (2, 16, 16))
binary = torch.randn(2, 1, 16, 16)
binary_t = (torch.rand(2, 1, 16, 16) > 0.5).float()


def boxes(n):
    xy = torch.rand(n, 2) * 50
    return torch.cat([xy, xy + 1 + torch.rand(n, 2) * 30], 1)


b1, b2 = boxes(8), boxes(8)

print(f"segfast {segfast.__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
info = segfast.info(print_out=False)
print(f"extension {info['extension']}, cuda kernels {info['cuda_kernels_compiled']} {info['cuda_archs']} "
      f"(CUDA runtime {info.get('cuda_runtime')}, driver {info.get('cuda_driver')}), "
      f"cpu backends {info['backends_cpu']}")
if segfast.backends._C is None:
    sys.exit("FAIL the compiled extension segfast._C is missing")

check("region: dice_loss", lambda: fwd_bwd(segfast.dice_loss, logits, labels))
check("region: tversky_loss", lambda: fwd_bwd(segfast.tversky_loss, logits, labels, alpha=0.3, beta=0.7))
check("pixel: cross_entropy", lambda: fwd_bwd(segfast.cross_entropy, logits, labels))
check("pixel: focal_loss", lambda: fwd_bwd(segfast.focal_loss, binary, binary_t))
check("pixel: dice_ce_loss", lambda: fwd_bwd(segfast.dice_ce_loss, logits, labels))
check("lovasz: lovasz_softmax_loss", lambda: fwd_bwd(segfast.lovasz_softmax_loss, logits, labels))
check("lovasz: lovasz_hinge_loss", lambda: fwd_bwd(segfast.lovasz_hinge_loss, binary, binary_t))
check("boxes: giou_loss", lambda: fwd_bwd(segfast.giou_loss, b1, b2, diff=(0, 1)))
check("boxes: ciou_loss", lambda: fwd_bwd(segfast.ciou_loss, b1, b2, diff=(0, 1)))


def boxes_match():
    scores = torch.rand(8)
    keep = segfast.nms(b1, scores, 0.5, backend="cpu")
    ref = segfast.nms(b1, scores, 0.5, backend="torch")
    assert torch.equal(keep, ref), (keep, ref)
    got = segfast.box_iou_max(b1[None], b2[None], backend="cpu")
    ref = segfast.box_iou_max(b1[None], b2[None], backend="torch")
    for a, b in zip(got, ref):
        close(a.double(), b.double(), "box_iou_max")


check("boxes_match: nms, box_iou_max", boxes_match)


def crf():
    unary = torch.randn(1, 3, 12, 12)
    image = torch.randint(0, 256, (1, 3, 12, 12), dtype=torch.uint8)
    q = segfast.dense_crf(unary, image, backend="cpu")
    ref = segfast.dense_crf(unary, image, backend="torch")
    assert q.shape == (1, 3, 12, 12) and torch.isfinite(q).all()
    assert torch.allclose(q.sum(1), torch.ones(1, 12, 12), atol=1e-4)
    assert (q - ref).abs().max() < 0.05, (q - ref).abs().max()


check("crf: dense_crf", crf)


def compiled():
    f = torch.compile(lambda x, t: segfast.dice_loss(x, t, backend="cpu"), fullgraph=True)
    x = logits.clone().requires_grad_()
    loss = f(x, labels)
    loss.backward()
    x2 = logits.clone().requires_grad_()
    ref = segfast.dice_loss(x2, labels, backend="cpu")
    ref.backward()
    close(loss.detach(), ref.detach(), "compiled dice_loss")
    close(x.grad, x2.grad, "compiled dice_loss gradient")


if os.environ.get("SEGFAST_SMOKE_NO_COMPILE"):
    print("skip torch.compile (SEGFAST_SMOKE_NO_COMPILE set)")
else:
    check("torch.compile(dice_loss, fullgraph=True) forward + backward", compiled)

print(f"{len(failures)} failed: {', '.join(failures)}" if failures else "all smoke checks passed")
sys.exit(1 if failures else 0)
