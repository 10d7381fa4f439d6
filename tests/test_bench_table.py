"""The `make bench` table (benchmarks/table.py): rows against goals, failures reported, one file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bench_table", Path(__file__).parents[1] / "benchmarks" / "table.py"
)
assert _spec is not None and _spec.loader is not None
table = importlib.util.module_from_spec(_spec)
sys.modules["bench_table"] = table  # dataclasses look the module up while the class is built
_spec.loader.exec_module(table)


def _bench(tmp_path: Path, body: str, goal: float | None = 2.0) -> object:
    script = tmp_path / "fake_bench.py"
    script.write_text(body)
    return table.Bench("X", "a fake", (str(script),), lambda r: r["ratio"], goal, lambda r: f"{r['n']} n")


def test_a_script_s_last_json_line_becomes_a_row_against_the_goal(tmp_path):
    body = 'import json\nprint("a table")\nprint(json.dumps({"ratio": 1.0, "n": 0}))\n'
    body += 'print(json.dumps({"ratio": 2.5, "n": 7}))\n'
    bench = _bench(tmp_path, body)
    result = table.run(bench)
    assert result == {"ratio": 2.5, "n": 7}
    row = table.row(bench, result)
    assert (row["ratio"], row["met"], row["detail"]) == (2.5, True, "7 n")
    assert table.row(_bench(tmp_path, body, goal=3.0), result)["met"] is False
    assert table.row(_bench(tmp_path, body, goal=None), result)["met"] is None


def test_a_failing_script_is_a_failed_row_not_a_crash(tmp_path):
    bench = _bench(tmp_path, "import sys\nprint('{\"ratio\": 9}')\nsys.exit(3)\n")
    result = table.run(bench)
    assert result == {"error": "exit 3"}
    row = table.row(bench, result)
    assert row["ratio"] is None and row["met"] is False and row["detail"] == "failed: exit 3"
    assert table.run(_bench(tmp_path, "print('no json')\n")) == {"error": "no JSON line"}
    assert table.run(_bench(tmp_path, "print('{not json')\n"))["error"].startswith("bad JSON line")
    assert table.run(_bench(tmp_path, "import time\ntime.sleep(30)\n"), timeout_s=0.5) == {
        "error": "killed after 0.5 s"
    }


def test_a_json_line_without_what_the_row_reads_is_a_failed_row(tmp_path):
    bench = _bench(tmp_path, "")
    row = table.row(bench, {"speed": 3})
    assert row["ratio"] is None and row["met"] is False
    assert row["detail"].startswith("failed: unexpected JSON (KeyError")


def test_the_markdown_names_every_row_goal_and_command():
    rows = [
        {
            "key": "P2",
            "title": "t",
            "ratio": 0.5,
            "goal": 0.9,
            "met": False,
            "detail": "d",
            "measured": "today",
        },
        {"key": "P3", "title": "u", "ratio": None, "goal": None, "met": None, "detail": "failed: exit 1"},
    ]
    where = {"cores": "2", "cpu": "cpu", "python": "3"}
    text = table.markdown(rows, where)
    assert "| P2 | t | 0.50x | >= 0.9x | **no** | d | today |" in text
    assert "| P3 | u | - | - | - | failed: exit 1 | - |" in text
    assert "Last run on 2 cores (cpu)" in text
    assert "- P2: `.venv/bin/python benchmarks/rollout_vs_generate.py`" in text


def test_rows_of_an_earlier_run_are_kept_with_their_date_and_commit(tmp_path):
    path = tmp_path / "bench.json"
    assert table.earlier(path) == ({}, {})
    old_row = {"key": "P4", "title": "t", "ratio": 19.0, "goal": 10.0, "met": True, "detail": "d"}
    gone = {**old_row, "key": "P0"}  # a benchmark no longer in the list is dropped
    machine = {"date": "2026-12-03 22:00 UTC", "commit": "db9fc7d"}
    path.write_text(
        json.dumps({"machine": machine, "rows": [old_row, gone], "results": {"P4": {"ratio": 19.0}}})
    )
    rows, results = table.earlier(path)
    assert list(rows) == ["P4"]
    assert rows["P4"]["measured"] == "2026-12-03 22:00 UTC, `db9fc7d`"
    assert results == {"P4": {"ratio": 19.0}}


def test_every_benchmark_script_exists_and_keys_are_unique():
    keys = [b.key for b in table.BENCHES]
    assert len(keys) == len(set(keys))
    for bench in table.BENCHES:
        assert (table.HERE / bench.argv[0]).is_file(), bench.argv[0]


def test_async_vs_sync_alternates_the_order_and_reports_medians(monkeypatch):
    """P1's rounds alternate which schedule runs first; the ratio is the median of the rounds'."""
    spec = importlib.util.spec_from_file_location(
        "async_vs_sync", Path(__file__).parents[1] / "benchmarks" / "async_vs_sync.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    order: list[str] = []
    speeds = iter([100.0, 90.0, 120.0, 80.0, 100.0, 130.0])  # sync, async | async, sync | sync, async

    def measure(args, where, synchronous, sft_model=None):
        order.append("sync" if synchronous else "async")
        return {"samples_per_s": next(speeds), "seconds_per_iteration": 1.0}

    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(sys, "argv", ["async_vs_sync.py", "--rounds=3"])
    results, rounds = bench.run_rounds(bench._parse(), None)
    assert order == ["sync", "async", "async", "sync", "sync", "async"]
    assert [r["ratio"] for r in rounds] == [0.9, 1.5, 1.3]
    assert results["sync"]["samples_per_s"] == 100.0 and results["async"]["samples_per_s"] == 120.0
