"""The benchmark history: CSV round trip, the generated README table, and
the regression comparison of segfast-bench --compare."""

from __future__ import annotations

import pytest

from segfast import results


def _row(op="dice", backend="cpu", ms=2.0, monai=4.0, ref=8.0):
    return dict(op=op, shape=[8, 21, 128, 128], dtype="float32", labels="int64", backend=backend, device="cpu",
                median_ms=ms, iqr_ms=0.1, logits_mb=10.5, peak_extra_mb=10.5, gbps=20.0,
                speedup_vs_reference=ref, speedup_vs_monai=monai, speedup_vs_smp=None)


def _save(path, rows, commit, run):
    results.append(results.records(rows, device="AMD EPYC", threads=2, commit=commit, date=run[:10], run=run),
                   path)


def test_round_trip(tmp_path):
    path = tmp_path / "r.csv"
    _save(path, [_row(), _row(backend="monai", ms=8.0, monai=1.0, ref=2.0)], "abc1234", "2026-01-01a")
    _save(path, [_row(ms=1.5)], "def5678", "2026-01-02a")
    recs = results.read(path)
    assert [r["run"] for r in recs] == ["2026-01-01a", "2026-01-01a", "2026-01-02a"]
    assert recs[0]["shape"] == "8x21x128x128" and recs[0]["median_ms"] == 2.0 and recs[0]["threads"] == 2
    assert recs[0]["speedup_vs_smp"] is None
    assert path.read_text().count("date,device") == 1  # one header


def test_table_takes_the_newest_commit_per_op(tmp_path):
    path = tmp_path / "r.csv"
    _save(path, [_row(ms=9.0, monai=1.0), _row(op="nms", ms=3.0)], "old", "2026-01-01a")
    _save(path, [_row(ms=2.0, monai=4.0)], "new", "2026-01-02a")
    _save(path, [_row(ms=2.5, monai=3.5)], "new", "2026-01-02b")
    table = results.table(results.read(path))
    dice = next(line for line in table.splitlines() if "| dice |" in line)
    assert "2-2.5 ms" in dice and "3.5-4x" in dice and "9" not in dice.split("|")[6]
    assert "| nms |" in table  # measured only at the older commit: still shown
    assert "monai" not in [c.strip() for c in dice.split("|")]  # peers are columns, not rows


def test_compare_flags_regressions():
    prev = results.records([_row(ms=2.0), _row(op="nms", ms=1.0), _row(backend="monai", ms=8.0)],
                           device="x", threads=2, commit="c", date="2026-01-01", run="2026-01-01a")
    prev = [{k: results._parse(k, v) for k, v in r.items()} for r in prev]
    text, slower = results.compare([_row(ms=2.1), _row(op="nms", ms=1.5), _row(backend="monai", ms=20.0)], prev)
    assert slower == 1  # nms +50%; dice +5% is within 10%; the peer's row is not ours
    assert "+50% (slower)" in text and "monai" not in text


def test_render_readme_replaces_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results.START}\nold table\n{results.END}\nrest\n")
    results.render_readme([{k: results._parse(k, v) for k, v in rec.items()} for rec in results.records(
        [_row()], device="AMD EPYC", threads=2, commit="c", date="2026-01-01", run="2026-01-01a")], readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old table" not in text
    assert "| dice |" in text


def test_render_needs_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="results-table"):
        results.render_readme([], readme)


def test_the_history_renders():
    recs = results.read()
    assert recs, "bench/results/results.csv is missing or empty (tests run from the repository root)"
    assert "| dice |" in results.table(recs)


def test_append_widens_an_older_header(tmp_path):
    """A history written before a column existed gets today's header; its old lines keep their values."""
    path = tmp_path / "r.csv"
    old_cols = [c for c in results.COLUMNS if c not in ("load_avg", "copy_gbps")]
    path.write_text(",".join(old_cols) + "\n" + ",".join("2026-01-01" if c == "date" else "7" if c == "median_ms"
                                                        else "" for c in old_cols) + "\n")
    recs = results.records([dict(_row(), load_avg=0.5, copy_gbps=12.0)], device="AMD EPYC", threads=2,
                           commit="abc", date="2026-01-02", run="2026-01-02a")
    results.append(recs, path)
    assert path.read_text().splitlines()[0] == ",".join(results.COLUMNS)
    got = results.read(path)
    assert got[0]["median_ms"] == 7.0 and got[0]["copy_gbps"] is None
    assert got[1]["copy_gbps"] == 12.0 and got[1]["load_avg"] == 0.5 and got[1]["median_ms"] == 2.0
