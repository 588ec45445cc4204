"""What ``import segfast`` costs and what it leaves for later: no torch._dynamo,
no Triton until the triton backend is asked for (structural checks, each in a
fresh interpreter), and torch.compile(fullgraph=True) working when the first
call of a backend is the compiled one."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

# Modules a user of the cpu / cuda backends never needs at import: torch's
# compiler stack (torch.compile imports it when it runs) and Triton with the
# peers of the benchmark.
HEAVY = ("torch._dynamo", "torch._inductor", "triton", "monai", "segmentation_models_pytorch", "pydensecrf")


def run_fresh(code: str, tmp_path, **env) -> dict:
    """Run ``code`` in a fresh interpreter (outside the source tree) and return
    the JSON it prints on its last line."""
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=environ,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_leaves_compiler_and_triton_for_later(tmp_path):
    got = run_fresh(f"""
        import json, sys
        import torch
        import segfast
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        ops = [n for n in ("region_stats", "pixel_loss", "box_pairwise", "dense_crf_cpu")
               if not hasattr(torch.ops.segfast, n)]
        print(json.dumps(dict(heavy=heavy, missing_ops=ops, version=segfast.__version__)))
    """, tmp_path)
    assert got["heavy"] == [], got  # imported by `import segfast`
    assert got["missing_ops"] == [], got  # the C++ ops are registered at import
    assert got["version"]


def test_info_and_backends_after_fresh_import(tmp_path):
    got = run_fresh("""
        import json, segfast
        d = segfast.info(print_out=False)
        print(json.dumps(dict(cpu=d["backends_cpu"], default=d["default_backend"])))
    """, tmp_path)
    assert "cpu" in got["cpu"] and "torch" in got["cpu"] and got["default"] == "cpu"


@pytest.mark.slow
def test_compile_fullgraph_is_the_first_call(tmp_path):
    """The first call of each backend is a torch.compile(fullgraph=True) one and
    matches the eager result. The Triton ops are registered while it traces:
    on a CPU tensor (Triton's interpreter) the trace reaches the Triton op, whose
    kernel the interpreter cannot run on the trace's fake tensors, so there the
    test checks that the op is in the trace."""
    have_triton = importlib.util.find_spec("triton") is not None
    got = run_fresh("""
        import json
        import torch
        import segfast
        registered_before = hasattr(torch.ops.segfast, "region_stats_triton")
        torch.manual_seed(0)
        x = torch.randn(2, 3, 8, 8)
        y = torch.randint(0, 3, (2, 8, 8))
        out, traced = {}, None
        for b in ("torch", "cpu", "triton"):
            f = torch.compile(lambda x, y: segfast.dice_loss(x, y, backend=b), fullgraph=True, backend="aot_eager")
            xc = x.clone().requires_grad_(True)
            try:
                loss = f(xc, y)
            except Exception as e:
                if b != "triton":
                    raise
                # Triton's interpreter on fake tensors, in the fused loss op or the stats op
                traced = any(f"segfast.region_{op}_triton" in str(e) for op in ("loss", "stats"))
                continue
            loss.backward()
            xe = x.clone().requires_grad_(True)
            ref = segfast.dice_loss(xe, y, backend="torch")
            ref.backward()
            out[b] = [abs(float(loss) - float(ref)), float((xc.grad - xe.grad).abs().max())]
        print(json.dumps(dict(before=registered_before, err=out, traced=traced,
                              after=hasattr(torch.ops.segfast, "region_stats_triton"))))
    """, tmp_path, **({"TRITON_INTERPRET": "1"} if have_triton else {}))
    assert not got["before"]  # registered on first use, not at import
    for b, (dl, dg) in got["err"].items():
        assert dl < 1e-5 and dg < 1e-5, (b, dl, dg)
    assert got["after"] == have_triton
    assert "triton" in got["err"] or got["traced"] or not have_triton, got


def test_every_public_name_comes_from_its_family():
    """segfast, segfast.functional and segfast.losses hold exactly the names the
    families list in their __all__ (segfast/_families.py): functions in
    functional, Modules in losses, both at the top level."""
    import inspect

    import torch

    import segfast
    import segfast.functional
    import segfast.losses
    from segfast import _families

    declared = {}
    for fam in _families.FAMILIES:
        mod = importlib.import_module(fam.module)
        assert mod.__all__, fam.module
        for name in mod.__all__:
            obj = getattr(mod, name)
            assert not callable(obj) or obj.__module__.startswith(fam.module), (fam.module, name)
            if not fam.namespace:
                declared[name] = getattr(mod, name)
    is_module = {n: inspect.isclass(o) and issubclass(o, torch.nn.Module) for n, o in declared.items()}
    assert set(segfast.functional.__all__) == {n for n in declared if not is_module[n]}
    assert set(segfast.losses.__all__) == {n for n in declared if is_module[n]}
    assert set(segfast.__all__) == set(declared) | {"info", "empty_cache", "backends", "__version__"}
    for name, obj in declared.items():
        assert getattr(segfast, name) is obj
        assert getattr(segfast.losses if is_module[name] else segfast.functional, name) is obj
    assert segfast.metrics is importlib.import_module("segfast.metrics")


def test_a_new_family_is_one_line(monkeypatch):
    """A family added to the list (its own module: a function, a Module, bench
    stages) is collected with no other change: its function and Module, and
    its segfast-bench stages."""
    import types

    import torch

    import segfast.bench as sb
    from segfast import _families

    fam = types.ModuleType("segfast_test_family")

    def twice(x):
        return 2 * x

    class Twice(torch.nn.Module):
        def forward(self, x):
            return twice(x)

    fam.twice, fam.Twice, fam.__all__ = twice, Twice, ["twice", "Twice"]
    fam.stages = lambda device, args: [("twice", lambda: [dict(op="twice", quick=args.quick)])]
    monkeypatch.setitem(sys.modules, "segfast_test_family", fam)
    monkeypatch.setattr(_families, "FAMILIES",
                        _families.FAMILIES + (_families.Family("segfast_test_family", bench="segfast_test_family"),))
    assert _families.public(modules=False)["twice"] is twice
    assert _families.public(modules=True)["Twice"] is Twice
    stages = dict(sb.stages(torch.device("cpu"), sb.parser().parse_args(["--quick", "--no-memory"])))
    assert stages["twice"]() == [dict(op="twice", quick=True)]
    assert {"coco_map", "confusion_matrix"} <= set(stages)  # the metrics family's own stages
    clash = types.ModuleType("segfast_test_clash")
    clash.dice_loss, clash.__all__ = twice, ["dice_loss"]
    monkeypatch.setitem(sys.modules, "segfast_test_clash", clash)
    monkeypatch.setattr(_families, "FAMILIES", _families.FAMILIES + (_families.Family("segfast_test_clash"),))
    with pytest.raises(ImportError, match="both define 'dice_loss'"):
        _families.public()
