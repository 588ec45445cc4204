"""Shared body of the pytest-benchmark suites (imported by bench_*.py): one forward+backward per
(case, runner), with speed-ups over the eager reference, MONAI and smp (medians
measured in the same run with segfast.bench's timer), GB/s for the bytes the
kernels must move, and peak extra memory in each row's extra_info."""

from __future__ import annotations

import functools

import pytest
import torch

from segfast import bench as sb

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=None)
def baseline_ms(case, name):
    fn = sb.runners(case, DEVICE).get(name)
    if fn is None:
        return None
    x, y = sb.make_inputs(case, DEVICE)
    times = sb.time_fn(sb.fwd_bwd(fn, x, y), DEVICE, repeat=7)
    return 1e3 * sorted(times)[len(times) // 2]


def params(ops):
    """pytest params (case, runner name) for the given ops on this device."""
    return [pytest.param(case, name, id=f"{case.name}-{name}")
            for case in sb.cases(DEVICE) if case.op in ops
            for name in sb.runners(case, DEVICE)]


def run_benchmark(benchmark, case, name):
    benchmark.group = case.name
    x, y = sb.make_inputs(case, DEVICE)
    step = sb.fwd_bwd(sb.runners(case, DEVICE)[name], x, y)
    benchmark.pedantic(step, rounds=7, iterations=1, warmup_rounds=2)
    median_ms = 1e3 * benchmark.stats.stats.median
    ref, monai, smp = baseline_ms(case, "reference"), baseline_ms(case, "monai"), baseline_ms(case, "smp")
    benchmark.extra_info.update(
        device=str(DEVICE), backend=name,
        gbps=sb.kernel_bytes(case) / (median_ms * 1e-3) / 1e9,
        speedup_vs_reference=ref / median_ms,
        speedup_vs_monai=None if monai is None else monai / median_ms,
        speedup_vs_smp=None if smp is None else smp / median_ms,
        peak_extra_mb=sb.peak_extra_mb(case, DEVICE, [name]).get(name),
        logits_mb=x.numel() * x.element_size() / 2**20,
    )


def rows_for(op):
    """segfast.bench rows of one op measured in one run (for the target checks)."""
    case = next(c for c in sb.cases(DEVICE) if c.op == op)
    rows = {r["backend"]: r for r in sb.measure(case, DEVICE, repeat=9)}
    print(sb.format_table(list(rows.values())))
    return rows
