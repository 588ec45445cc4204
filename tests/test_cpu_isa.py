"""The CPU region kernels under each instruction-set build
(SEGFAST_CPU_ISA=avx512|avx2|baseline, csrc/cpu/region.cpp). The choice is
read once per process, so each build runs in a fresh process: softmax with
class-index targets (the fast path in the AVX-512 build, the general path in
the others) with the probabilities kept for the grad pass (float32) or not
(float16; a second backward recomputes from x), large logits, the
confusion counts, the CE / focal / fused pixel terms (the grad pass's full
kind), and the general path (dense targets, sigmoid), in float32 and
float16, against the torch backend in float64. A build the CPU cannot run
is skipped."""

import os
import subprocess
import sys
import textwrap

import pytest

from segfast import backends

pytestmark = pytest.mark.skipif(backends._C is None, reason="segfast._C is not built")

SCRIPT = textwrap.dedent("""
    import sys, torch
    from segfast import backends, functional as F
    try:
        isa = backends._C.region_isa()
    except ValueError as e:
        print("SKIP", e)
        sys.exit(0)
    assert isa == sys.argv[1], (isa, sys.argv[1])
    torch.manual_seed(0)
    cases = [  # (function, keyword arguments, target kind, logit scale)
        (F.dice_loss, {}, "labels", 3.0),                           # fast path (AVX-512); keeps q (f32)
        (F.dice_loss, {"ignore_index": 1}, "labels", 3.0),
        (F.dice_loss, {}, "labels", 60.0),                          # large logits
        (F.jaccard_loss, {}, "labels", 3.0),
        (F.dice_loss, {"mode": "multilabel"}, "dense", 3.0),        # general path, sigmoid
        (F.dice_loss, {}, "onehot", 3.0),                           # general path, dense targets
        (F.dice_ce_loss, {"label_smoothing": 0.1}, "labels", 3.0),  # pixel terms: the full grad kind
        (F.dice_focal_loss, {"gamma": 1.5}, "labels", 3.0),
        (F.dice_fused_loss, {}, "labels", 3.0),
    ]
    for shape in [(2, 5, 300), (1, 21, 16, 16), (3, 2, 33)]:
        N, C = shape[:2]
        lab = torch.randint(0, C, (N,) + shape[2:])
        targets = {"labels": lab, "dense": torch.rand(shape).round(),
                   "onehot": torch.nn.functional.one_hot(lab, C).movedim(-1, 1).float()}
        for fn, kw, kind, scale in cases:
            for dtype in (torch.float32, torch.float16):
                x = (scale * torch.randn(shape)).to(dtype)
                t = targets[kind]
                ref = x.double().requires_grad_(True)
                lref = fn(ref, t, backend="torch", **kw)
                lref.backward()
                xb = x.clone().requires_grad_(True)
                loss = fn(xb, t, backend="cpu", **kw)
                loss.backward(retain_graph=True)
                g1 = xb.grad.clone()
                loss.backward()                                     # recomputed from x: nothing kept
                g2 = xb.grad - g1
                tol = 2e-5 if dtype == torch.float32 else 3e-3
                what = (fn.__name__, kw, kind, scale, shape, dtype)
                torch.testing.assert_close(loss.double(), lref.detach(), rtol=tol, atol=tol, msg=str(what))
                for g in (g1, g2):
                    gmax = ref.grad.abs().max().item()
                    torch.testing.assert_close(g.double(), ref.grad, rtol=tol, atol=tol * gmax, msg=str(what))
        x = 3 * torch.randn(shape)
        x[0, :, 0] = float("nan")                                   # torch.argmax's rule for NaN
        x[0, :2, 1] = 5.0                                           # ties: the first maximum
        counts = torch.zeros(C, C, dtype=torch.int64)
        F.dice_loss(x, lab, backend="cpu", confusion=counts)
        want = torch.bincount(lab.flatten() * C + x.argmax(1).flatten(), minlength=C * C).view(C, C)
        assert torch.equal(counts, want), (shape, counts, want)
    print("OK", isa)
""")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_region_kernels_under_each_isa(isa):
    env = dict(os.environ, SEGFAST_CPU_ISA=isa)
    r = subprocess.run([sys.executable, "-c", SCRIPT, isa], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    if r.stdout.startswith("SKIP"):
        pytest.skip(r.stdout.strip())
    assert r.stdout.strip() == f"OK {isa}"


def test_default_isa_is_the_best_build():
    code = "from segfast import backends; print(backends._C.region_isa())"
    env = {k: v for k, v in os.environ.items() if k != "SEGFAST_CPU_ISA"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("avx512", "avx2", "baseline")


@pytest.mark.parametrize("value", ["AVX2", pytest.param("sse9", marks=pytest.mark.slow),
                                   pytest.param("avx-512", marks=pytest.mark.slow)])
def test_unknown_isa_is_a_clear_error(value):
    # the query and a kernel call both name the value
    code = textwrap.dedent("""
        import torch, segfast
        from segfast import backends
        for call in (backends._C.region_isa,
                     lambda: segfast.dice_loss(torch.randn(1, 3, 8), torch.zeros(1, 8, dtype=torch.long),
                                               backend="cpu")):
            try:
                call()
            except ValueError as e:
                print(e)
            else:
                print("no error")
    """)
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, SEGFAST_CPU_ISA=value),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2, r.stdout
    for line in lines:
        assert f"SEGFAST_CPU_ISA='{value}'" in line and "must be avx512, avx2 or baseline" in line, line
