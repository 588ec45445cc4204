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
