"""``python -m segfast check``: the pieces that need no GPU (bytes model, step
selection, CSV/markdown, exit codes) and the no-GPU route end to end."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from segfast.gpucheck import acceptance as A


def test_slug():
    assert A.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert A.slug("  ") == "gpu"


def test_ideal_bytes():
    # [8, 21, 128, 128] fp32 logits, int64 labels: read logits + labels, write the gradient
    px = 8 * 128 * 128
    assert A.ideal_bytes((8, 21, 128, 128)) == 2 * px * 21 * 4 + px * 8
    assert A.ideal_bytes((16, 21, 512, 512)) == 2 * 16 * 21 * 512 * 512 * 4 + 16 * 512 * 512 * 8
    assert A.ideal_bytes((2, 3, 5), itemsize=2, label_itemsize=1) == 2 * 2 * 3 * 5 * 2 + 2 * 5


def test_select_steps():
    assert A.select_steps(True) == ["tests", "sanitizer", "bench"]
    assert A.select_steps(False) == ["cuda-emu", "triton-aot", "cuda-resources"]
    assert A.select_steps(True, ["bench"]) == ["bench"]
    assert A.select_steps(False, ["bench"]) == []
    with pytest.raises(ValueError, match="unknown step"):
        A.select_steps(True, ["nope"])


def test_exit_code():
    R = A.StepResult
    assert A.exit_code([]) == 0
    assert A.exit_code([R("a", "ok"), R("b", "skip")]) == 0
    assert A.exit_code([R("a", "ok"), R("b", "fail")]) == 1


def test_write_results(tmp_path):
    row = dict(gpu="NVIDIA H100 80GB HBM3", date="2026-12-06", op="dice_loss", backend="triton",
               shape="8x21x128x128", dtype="float32", ms="0.1000", ideal_bytes=A.ideal_bytes((8, 21, 128, 128)),
               gbps="2300.0", copy_gbps="3000.0", pct_of_copy="76.7", max_abs_diff="0")
    c, m = A.write_results([row], tmp_path / "out", row["gpu"], "2026-12-06")
    assert c.name == "nvidia-h100-80gb-hbm3-2026-12-06.csv" and m.suffix == ".md"
    with open(c) as f:
        rows = list(csv.DictReader(f))
    assert rows == [{k: str(v) for k, v in row.items()}]
    md = m.read_text()
    assert "| dice_loss | triton | 8x21x128x128 | 0.100 |" in md and "| 77 |" in md


def test_no_gpu_route_runs_cpu_checks(monkeypatch, capsys):
    ran = []

    def fake_cpu_check(name, timeout):
        ran.append(name)
        return A.StepResult(name, "skip", detail="not present (x)")
    monkeypatch.setattr(A, "step_cpu_check", fake_cpu_check)
    assert A.run_checks(True, has_gpu=lambda: False) == 0
    out = capsys.readouterr().out
    assert "no CUDA GPU is visible" in out
    assert ran == list(A.CPU_STEPS)


def test_failing_step_exits_nonzero(monkeypatch):
    monkeypatch.setattr(A, "step_cpu_check", lambda name, t: A.StepResult(name, "fail", detail="boom"))
    assert A.run_checks(False, has_gpu=lambda: False) == 1


def test_gpu_route_selects_gpu_steps(monkeypatch):
    """With a GPU (simulated) the three GPU steps run in order; their results decide the exit code."""
    import torch
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    calls = []
    monkeypatch.setattr(A, "step_tests", lambda t: calls.append("tests") or A.StepResult("tests", "ok"))
    monkeypatch.setattr(A, "step_sanitizer", lambda t: calls.append("sanitizer") or A.StepResult("sanitizer", "skip"))
    monkeypatch.setattr(A, "step_bench", lambda t, out: calls.append("bench") or A.StepResult("bench", "fail"))
    assert A.run_checks(True, has_gpu=lambda: True) == 1
    assert calls == ["tests", "sanitizer", "bench"]
    assert sum(A.TIMEOUTS[s] for s in A.GPU_STEPS) < 8 * 60


def test_cpu_check_not_present(monkeypatch, tmp_path):
    monkeypatch.setattr(A, "repo_root", lambda: tmp_path)
    r = A.step_cpu_check("triton-aot", 10)
    assert r.status == "skip" and r.detail.startswith("not present")


def test_sanitizer_absent(monkeypatch):
    monkeypatch.setattr(A.shutil, "which", lambda name: None)
    assert A.step_sanitizer(10).status == "skip"


@pytest.mark.slow  # its steps rerun tests/test_triton_aot.py and tests/test_cuda_resources.py
def test_check_command_end_to_end():
    """``python -m segfast check --gpu`` here (no GPU): says so, runs the CPU-side checks, exits 0."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the GPU route would run")
    p = subprocess.run([sys.executable, "-m", "segfast", "check", "--gpu", "--steps", "triton-aot,cuda-resources"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no CUDA GPU is visible" in p.stdout
    assert "step 1/2: triton-aot" in p.stdout and "summary:" in p.stdout


def test_bench_runs_on_cpu_tensors(tmp_path):
    """The bench step's code on CPU tensors (tiny shapes, the cpu backend, a
    wall-clock timer in place of triton.testing.do_bench): every case runs,
    matches the torch backend, and lands in the CSV."""
    import time

    def bench(fn, grad_to_none=None):
        t0 = time.perf_counter()
        fn()
        return max((time.perf_counter() - t0) * 1e3, 1e-3)

    rc = A.run_bench(tmp_path, backends_=("cpu",), device="cpu", bench=bench, gpu_name="test cpu",
                     case_args=dict(loss_shapes=((2, 3, 8, 8),), n_boxes=64, crf_shape=(1, 3, 9, 11)))
    assert rc == 0
    (c,) = tmp_path.glob("test-cpu-*.csv")
    with open(c) as f:
        rows = list(csv.DictReader(f))
    assert [r["op"] for r in rows] == ["dice_loss", "dice_ce_loss", "cross_entropy", "focal_loss", "fused_loss",
                                       "giou_loss", "ciou_loss", "dense_crf"]
    assert all(r["backend"] == "cpu" and float(r["ms"]) > 0 and float(r["pct_of_copy"]) >= 0 for r in rows)
    assert rows[0]["ideal_bytes"] == str(A.ideal_bytes((2, 3, 8, 8)))


@pytest.mark.parametrize("family", ["pixel", "region", "lovasz", "boxes", "boxes_match", "crf"])
def test_sanitizer_cases_run_on_cpu(monkeypatch, family):
    """The cases run under compute-sanitizer, on CPU tensors with the cpu backend."""
    from segfast import backends
    from segfast.gpucheck import sanitize_case as S
    if backends.unavailable_reason("cpu", __import__("torch").device("cpu")) is not None:
        pytest.skip("the cpu backend is not built")
    monkeypatch.setattr(S, "DEVICE", "cpu")
    for run in S.cases(family):
        run("cpu")


def test_bench_step_streams_and_times_out(monkeypatch, capsys):
    """The bench step echoes its subprocess's lines as they come and kills it at the limit."""
    popen = A.subprocess.Popen
    script = {"ok": "print('case 1'); print('wrote r.csv')", "hang": "import time; time.sleep(60)"}
    for kind, status, detail in (("ok", "ok", "wrote r.csv"), ("hang", "fail", "timed out after 2 s")):
        monkeypatch.setattr(A.subprocess, "Popen",
                            lambda cmd, s=script[kind], **kw: popen([sys.executable, "-c", s], **kw))
        r = A.step_bench(2 if kind == "hang" else 60, "out")
        assert (r.status, r.detail) == (status, detail)
    assert "    case 1" in capsys.readouterr().out
