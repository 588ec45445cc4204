"""segfast.bench's own machinery (the timed figures live in bench/)."""

from __future__ import annotations

import sys

import pytest
import torch

import segfast.bench as sb


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


def test_train_step_and_noise_crf_rows():
    """The rows a user feels (a training step with each loss, same net and data)
    come with the loss-alone rows beside them; the noise-image CRF row has the
    pydensecrf column when pydensecrf is installed."""
    pytest.importorskip("monai")
    rows = sb.measure_train_step(torch.device("cpu"), repeat=1, min_time=0.0)
    kinds = {(r["op"], r["backend"]) for r in rows}
    for kind in ("train_step", "loss_interleaved", "loss_own_loop"):
        assert (f"dice:{kind}", "cpu") in kinds and (f"dice:{kind}", "monai") in kinds
    assert all(r["median_ms"] > 0 and r["speedup_vs_monai"] > 0 for r in rows)
    crf = sb.measure_crf_noise(torch.device("cpu"), quick=True, repeat=1)
    assert {r["backend"] for r in crf} >= {"cpu"} and all(r["shape"] == [1, 2, 128, 128] for r in crf)
    if sb.pydensecrf_loop() is not None:
        assert all(r["speedup_vs_pydensecrf"] > 0 for r in crf)
    assert "vs pydensecrf" in sb.format_table(rows + crf)
