"""segfast.bench's own machinery (the timed figures live in bench/)."""

from __future__ import annotations

import sys

import pytest
import torch

import segfast.bench as sb
from segfast.ops import _bench_crf, _bench_region


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU probe reads /proc/self")
def test_cpu_memory_probe_server():
    """CPU peaks come from children forked by one --probe-server (logits above
    the probe's 1 MiB mmap threshold, so the peaks are resident memory): the cpu
    backend's Dice needs about one gradient (logits-sized), the eager
    reference several times that, and every case gets a fresh child."""
    case = sb.Case("dice", (2, 5, 256, 256), torch.float32, torch.int64)
    logits_mb = 2 * 5 * 256 * 256 * 4 / 2**20
    first = sb.peak_extra_mb(case, torch.device("cpu"), ["cpu", "reference"])
    assert 0.8 * logits_mb <= first["cpu"] <= 1.5 * logits_mb, first
    assert first["reference"] > 2 * logits_mb, first
    server = sb._PROBE_SERVER
    again = sb.peak_extra_mb(case, torch.device("cpu"), ["cpu"])
    assert sb._PROBE_SERVER is server and server.poll() is None  # one server, still serving
    assert again["cpu"] == pytest.approx(first["cpu"], rel=0.1, abs=0.3)
    assert sb.peak_extra_mb(sb.Case("no_such_op", (1, 2, 3, 3), torch.float32, torch.int64),
                            torch.device("cpu"), ["cpu"]) == {}  # a failed probe answers {}


def _children() -> set:
    import os
    import threading

    path = f"/proc/self/task/{threading.main_thread().native_id}/children"
    with open(path) as f:
        return set(f.read().split()) if os.path.exists(path) else set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_background_load_is_started_and_stopped():
    before = _children()
    with sb.background_load(60) as cores:
        busy = _children() - before
        assert cores >= 1 and len(busy) == cores
    assert not (_children() & busy)  # stopped (and reaped) when the block ends


@pytest.mark.slow
def test_train_step_and_noise_crf_rows():
    """The rows a user feels (a training step with each loss, same net and data)
    come with the loss-alone rows beside them; the noise-image CRF row has the
    pydensecrf column when pydensecrf is installed."""
    pytest.importorskip("monai")
    rows = _bench_region.measure_train_step(torch.device("cpu"), repeat=1, min_time=0.0)
    kinds = {(r["op"], r["backend"]) for r in rows}
    for kind in ("train_step", "loss_interleaved", "loss_own_loop"):
        assert (f"dice:{kind}", "cpu") in kinds and (f"dice:{kind}", "monai") in kinds
    assert all(r["median_ms"] > 0 and r["speedup_vs_monai"] > 0 for r in rows)
    crf = _bench_crf.measure_crf_noise(torch.device("cpu"), quick=True, repeat=1)
    assert {r["backend"] for r in crf} >= {"cpu"} and all(r["shape"] == [1, 2, 128, 128] for r in crf)
    if _bench_crf.pydensecrf_loop() is not None:
        assert all(r["speedup_vs_pydensecrf"] > 0 for r in crf)
    assert "vs pydensecrf" in sb.format_table(rows + crf)


def test_help_lists_peers_and_defaults_without_the_benchmark_machinery(tmp_path):
    """``segfast-bench --help`` answers from the parser alone: it names every peer
    and the defaults, and imports no peer, no metrics benchmark, no Triton and no
    torch compiler stack on the way."""
    import json
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import contextlib, io, json, sys
        from segfast.bench import main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            try:
                main(["--help"])
            except SystemExit:
                pass
        heavy = ("monai", "pydensecrf", "segmentation_models_pytorch", "torchmetrics", "pycocotools",
                 "faster_coco_eval", "matplotlib", "triton", "torch._dynamo", "segfast.metrics._bench")
        print(json.dumps(dict(text=buf.getvalue(), loaded=[m for m in heavy if m in sys.modules])))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["loaded"] == [], got["loaded"]
    text = " ".join(got["text"].split())  # argparse wraps the lines
    for peer in ("MONAI", "segmentation_models_pytorch", "pydensecrf", "torchmetrics", "pycocotools",
                 "faster-coco-eval"):
        assert peer in text, peer
    assert f"default {sb.MIN_TIME}" in text and "default 10" in text and "8x21x128x128" in text


def test_table_has_a_column_per_peer_filled_on_segfast_rows_only():
    rows = [dict(op="dense_crf", shape=[4, 21, 64, 64], dtype="float32", backend=b, median_ms=ms,
                 iqr_ms=0.1, gbps=None, peak_extra_mb=None, speedup_vs_reference=ref,
                 speedup_vs_pydensecrf=peer)
            for b, ms, ref, peer in (("cpu", 10.0, 30.0, 4.0), ("torch", 300.0, 1.0, 0.13),
                                     ("pydensecrf", 40.0, 7.5, 1.0))]
    rows.append(dict(op="confusion_matrix", shape=[2, 21, 8, 8], dtype="float32", backend="torchmetrics",
                     median_ms=5.0, iqr_ms=0.1, gbps=None, peak_extra_mb=None, speedup_vs_reference=0.5,
                     speedup_vs_torchmetrics=1.0))
    lines = sb.format_table(rows).splitlines()
    head = lines[0].split()
    assert "pydensecrf" in head and "torchmetrics" in head and "MONAI" not in head  # "vs <peer>" columns
    by_runner = {line.split()[3]: line for line in lines[2:]}
    assert "4.00x" in by_runner["cpu"] and "30.00x" in by_runner["cpu"]
    peer_line = next(line for line in lines[2:] if "pydensecrf (peer)" in line)
    assert "x" not in peer_line.split("(peer)")[1].replace("64x64", "")  # no ratio on the peer's row
    assert any("torchmetrics (peer)" in line for line in lines)


def test_dense_target_ops_and_sigmoid_focal_rows():
    """The BCE case gets one-hot float targets of the logits' shape, and its bytes count them;
    the sigmoid focal and BCE ops carry smp's classes and segfast.compat.smp's beside the native call."""
    case = next(c for c in sb.cases(torch.device("cpu")) if c.op == "bce")
    small = sb.Case("bce", (2, 3, 16, 16), case.dtype, case.label_dtype)
    x, y = sb.make_inputs(small, torch.device("cpu"))
    assert y.shape == x.shape and y.dtype == x.dtype and torch.equal(y.sum(1), torch.ones(2, 16, 16))
    assert sb.kernel_bytes(small) == 3 * x.numel() * 4
    for op in ("bce", "focal_sigmoid"):
        c = sb.Case(op, (2, 3, 16, 16), torch.float32, y.dtype if op == "bce" else torch.int64)
        xi, yi = sb.make_inputs(c, torch.device("cpu"))
        run = sb.runners(c, torch.device("cpu"))
        assert {"cpu", "reference", "compat_smp"} <= set(run), (op, set(run))
        vals = {name: float(fn(xi, yi).detach()) for name, fn in run.items()}
        assert vals["compat_smp"] == pytest.approx(vals.get("smp", vals["compat_smp"]), rel=1e-5), vals
        assert all(v == v and v > 0 for v in vals.values()), vals


def test_busy_machine_warning(monkeypatch):
    info = dict(segfast="0", torch="0", gpu_name=None)
    monkeypatch.setattr(sb.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    quiet = sb.machine_header(torch.device("cpu"), info)
    assert "load average 0.00" in quiet[1] and "cores available" in quiet[1]
    assert not any(line.startswith("warning") for line in quiet)
    monkeypatch.setattr(sb.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    assert sb.machine_header(torch.device("cpu"), info)[-1].startswith("warning: the machine is busy")
    assert sb.copy_bandwidth(torch.device("cpu"), mb=8, repeat=2) > 0


def test_missing_peers_are_named_with_their_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "segmentation_models_pytorch" else real(name, *a))
    lines = [line for line in sb.missing_peers() if "segmentation_models_pytorch" in line]
    assert lines == ["peer not installed: segmentation_models_pytorch "
                     "(pip install --no-deps segmentation-models-pytorch==0.6.0)"]
