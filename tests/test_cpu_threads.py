"""backends.cpu_threads: the OpenMP thread count of the cpu backend, fewer
threads for small work and on a machine whose cores other processes take."""

from __future__ import annotations

import pytest
import torch

from segfast import backends


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


def test_small_work_runs_on_fewer_threads(threads):
    threads(2)
    assert backends.cpu_threads(backends.CPU_GRAIN) == 1
    assert backends.cpu_threads(2 * backends.CPU_GRAIN) == 2


def test_busy_machine_leaves_others_their_cores(threads, monkeypatch):
    monkeypatch.setattr(backends, "ADAPTIVE_THREADS", True)
    monkeypatch.setattr(backends, "_CORES", 4)
    taken = {"n": 0}
    monkeypatch.setattr(backends, "_cores_taken", lambda own: taken["n"])
    threads(4)
    assert backends.cpu_threads() == 4
    taken["n"] = 1
    assert backends.cpu_threads() == 3
    taken["n"] = 9  # every core taken: one thread still runs
    assert backends.cpu_threads() == 1
    threads(6)  # more threads than cores, asked for on an idle machine: kept
    taken["n"] = 0
    assert backends.cpu_threads() == 6
    taken["n"] = 2
    torch.use_deterministic_algorithms(True)
    try:
        assert backends.cpu_threads() == 6  # thread counts stay fixed for reproducible sums
    finally:
        torch.use_deterministic_algorithms(False)
    monkeypatch.setattr(backends, "ADAPTIVE_THREADS", False)
    assert backends.cpu_threads() == 6


def test_cores_taken_reads_the_runnable_count(monkeypatch):
    monkeypatch.setattr(backends, "_sample", [-1.0, 0])
    n = backends._cores_taken(1)
    assert isinstance(n, int) and n >= 0
    assert backends._cores_taken(10 ** 6) in (0, n)  # sampled at most every LOAD_SAMPLE_S
    monkeypatch.setattr(backends, "_sample", [-1.0, 0])
    assert backends._cores_taken(10 ** 6) == 0
