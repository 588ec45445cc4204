"""Benchmark results as data.

One machine-readable history, ``bench/results/results.csv``: a line per
benchmark row, keyed by device, commit, date and run. ``segfast-bench --save``
appends to it; the README's performance table and the speed-up plot are
generated from it; ``segfast-bench --compare RUN`` reads it back.

    python -m segfast.results render     # README table + bench/results/speedup.png
    python -m segfast.results runs       # the runs recorded, newest last
"""

from __future__ import annotations

import argparse
import csv
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

# Paths are relative to the working directory: run from the repository's root.
ROOT = Path(".")
CSV_PATH = ROOT / "bench" / "results" / "results.csv"
PLOT_PATH = ROOT / "bench" / "results" / "speedup.png"
README = ROOT / "README.md"

# Peer columns: every ``speedup_vs_<peer>`` a benchmark row can carry.
PEERS = ("reference", "monai", "smp", "pydensecrf", "torchmetrics", "pycocotools", "faster_coco_eval")

# load_avg: the 1-minute load average when the run started; copy_gbps: the
# machine's copy bandwidth measured at its start (the yardstick of gbps).
COLUMNS = ["date", "device", "threads", "under_load", "load_avg", "copy_gbps", "commit", "run", "op", "shape",
           "dtype", "labels", "backend", "median_ms", "iqr_ms", "per_image_ms", "logits_mb", "peak_extra_mb", "gbps",
           *[f"speedup_vs_{p}" for p in PEERS]]
FLOATS = ("load_avg", "copy_gbps", "median_ms", "iqr_ms", "per_image_ms", "logits_mb", "peak_extra_mb", "gbps")

# What the peers are called in the table, and what segfast's rows are (not peers).
PEER_NAMES = {"monai": "MONAI", "smp": "smp", "pydensecrf": "pydensecrf", "torchmetrics": "torchmetrics",
              "pycocotools": "pycocotools", "faster_coco_eval": "faster-coco-eval"}



def is_segfast(backend: str) -> bool:
    """Whether a row measures segfast (a kernel backend, a compat class, or a
    segfast entry point), not a baseline or a peer."""
    return backend in ("cpu", "cuda", "triton") or backend.startswith(("segfast", "compat"))


def device_name(device: str = "cpu", threads: int | None = None) -> str:
    """A readable name of the machine a run measured: the GPU's name, or the CPU model."""
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_name()
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return model


def current_commit() -> str:
    """The checkout's commit (with ``+dirty`` for local changes), else the package version."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        if sha:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from . import __version__
    return f"v{__version__}"


def records(rows: list[dict], *, device: str, threads: int, commit: str, date: str, run: str) -> list[dict]:
    """Benchmark rows (segfast-bench's dicts) as CSV records."""
    out = []
    for r in rows:
        rec = {k: r.get(k) for k in COLUMNS}
        rec.update(date=date, device=device, threads=threads, commit=commit, run=run)
        rec["shape"] = "x".join(map(str, r["shape"])) if isinstance(r.get("shape"), (list, tuple)) else r.get("shape")
        out.append({k: _fmt(v) for k, v in rec.items()})
    return out


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def append(recs: list[dict], path: Path | str = CSV_PATH) -> None:
    """Append records; a history written with fewer columns is rewritten with
    today's header first (the new columns empty in its old lines)."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != COLUMNS:
            old = read(path)
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS)
                w.writeheader()
                w.writerows({k: _fmt(r.get(k)) for k in COLUMNS} for r in old)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerows(recs)


def read(path: Path | str = CSV_PATH) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: _parse(k, v) for k, v in rec.items()} for rec in csv.DictReader(f)]


def _parse(key, v):
    if v == "" or v is None:
        return None
    if key in FLOATS or key.startswith("speedup"):
        return float(v)
    if key == "threads":
        return int(v)
    return v


def save_run(rows: list[dict], device: str, threads: int, path: Path | str = CSV_PATH) -> str:
    """Append one benchmark run; returns its run id."""
    run = time.strftime("%Y-%m-%dT%H:%M:%S")
    append(records(rows, device=device_name(device), threads=threads, commit=current_commit(),
                   date=run[:10], run=run), path)
    return run


# ---------------------------------------------------------------- comparison


def compare(rows: list[dict], prev: list[dict], threshold: float = 0.10) -> tuple[str, int]:
    """A table of this run's segfast rows against a previous run's, and the
    number of rows whose median grew by more than ``threshold``."""
    def key(r):
        shape = r["shape"]
        return (r["op"], "x".join(map(str, shape)) if isinstance(shape, (list, tuple)) else shape,
                r["dtype"], r["backend"])

    before = {key(r): r["median_ms"] for r in prev if r.get("median_ms")}
    lines = ["| op | shape | backend | before ms | now ms | change |", "| --- | --- | --- | --- | --- | --- |"]
    slower = 0
    for r in rows:
        b = before.get(key(r))
        if b is None or not is_segfast(r["backend"]):
            continue
        change = r["median_ms"] / b - 1
        flag = " (slower)" if change > threshold else ""
        slower += bool(flag)
        lines.append(f"| {r['op']} | {key(r)[1]} | {r['backend']} | {b:.3g} | {r['median_ms']:.3g} | "
                     f"{100 * change:+.0f}%{flag} |")
    return "\n".join(lines), slower


def run_rows(run: str, path: Path | str = CSV_PATH) -> list[dict]:
    """The records of one run (a run id, or ``latest``)."""
    recs = read(path)
    if run == "latest":
        run = recs[-1]["run"] if recs else ""
    got = [r for r in recs if r["run"] == run]
    if not got:
        raise SystemExit(f"no run {run!r} in {path}; `python -m segfast.results runs` lists them")
    return got


# ---------------------------------------------------------------- README table and plot


def _latest_day(recs: list[dict]) -> list[dict]:
    """Per (device, op): the records of the runs at the newest commit that
    measured it (the file is in time order)."""
    last = {}
    for r in recs:
        last[(r["device"], r["op"])] = r["commit"]
    return [r for r in recs if r["commit"] == last[(r["device"], r["op"])]]


def _range(vals, fmt, unit=""):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    lo, hi = fmt(min(vals)), fmt(max(vals))
    return (lo if lo == hi else f"{lo}-{hi}") + unit


def _g3(v):
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _x(v):
    return f"{v:.2g}" if v < 10 else f"{v:.0f}"


def table(recs: list[dict]) -> str:
    """Markdown: per device, op, shape and segfast backend, ranges over the
    runs at the newest commit that measured the op."""
    groups = defaultdict(list)
    for r in _latest_day(recs):
        if not is_segfast(r["backend"]):
            continue
        groups[(r["device"], r["op"], r["shape"], r["dtype"], r["backend"])].append(r)
    peers = [p for p in PEERS if p != "reference" and any(r.get(f"speedup_vs_{p}") for r in recs)]
    head = ["device", "op", "shape", "backend", "runs", "median", "vs eager reference",
            *[f"vs {PEER_NAMES[p]}" for p in peers], "peak extra memory", "date"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for (dev, op, shape, dtype, backend), rs in groups.items():
        cells = [dev, op, f"{shape} {dtype}", backend, str(len({r['run'] for r in rs})),
                 _range([r["median_ms"] for r in rs], _g3, " ms"),
                 _range([r["speedup_vs_reference"] for r in rs], _x, "x"),
                 *[_range([r.get(f"speedup_vs_{p}") for r in rs], _x, "x") for p in peers],
                 _range([r["peak_extra_mb"] for r in rs], _g3, " MB"),
                 max(r["date"] for r in rs)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(recs: list[dict], png: Path | str = PLOT_PATH) -> Path:
    """One bar chart: median speed-up of each op and segfast backend over each
    peer (runs at the newest commit per op; log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)
    for r in _latest_day(recs):
        if is_segfast(r["backend"]):
            groups[(r["op"], r["backend"])].append(r)
    peers = [p for p in PEERS if any(r.get(f"speedup_vs_{p}") for r in recs)]
    labels = [f"{op}\n({backend})" for op, backend in groups]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    width = 0.8 / max(len(peers), 1)
    for i, p in enumerate(peers):
        vals = []
        for rs in groups.values():
            v = [r[f"speedup_vs_{p}"] for r in rs if r.get(f"speedup_vs_{p}")]
            vals.append(statistics.median(v) if v else 0)
        ax.bar([j + i * width for j in range(len(labels))], vals, width,
               label="eager reference" if p == "reference" else PEER_NAMES[p])
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up (x, median of runs)")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, fontsize=7)
    devices = sorted({r["device"] for r in recs})
    ax.set_title("segfast speed-up over each peer: " + ", ".join(devices), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


START, END = "<!-- results-table -->", "<!-- /results-table -->"


def render_readme(recs: list[dict], readme: Path | str = README) -> None:
    """Replace the README's generated table (between the results-table markers)."""
    readme = Path(readme)
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block")
    pat = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    readme.write_text(pat.sub(lambda _: f"{START}\n{table(recs)}\n{END}", text))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m segfast.results", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("render", "table", "runs"))
    p.add_argument("--csv", default=str(CSV_PATH))
    p.add_argument("--readme", default=str(README))
    p.add_argument("--plot", default=str(PLOT_PATH))
    args = p.parse_args(argv)
    recs = read(args.csv)
    if args.what == "runs":
        seen = {}
        for r in recs:
            seen.setdefault(r["run"], (r["date"], r["device"], r["commit"], 0))
            d = seen[r["run"]]
            seen[r["run"]] = (*d[:3], d[3] + 1)
        for run, (date, dev, commit, n) in seen.items():
            print(f"{run}  {dev}  {commit}  {n} rows")
    elif args.what == "table":
        print(table(recs))
    else:
        render_readme(recs, args.readme)
        print(f"wrote {args.readme} and {plot(recs, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
