"""The `make bench` table (benchmarks/table.py): rows against goals, failures reported, one file."""

from __future__ import annotations

import importlib.util
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


def test_the_markdown_names_every_row_goal_and_command(tmp_path):
    bench = _bench(tmp_path, "")
    rows = [
        {"key": "P9", "title": "t", "ratio": 0.5, "goal": 0.9, "met": False, "detail": "d"},
        {"key": "P8", "title": "u", "ratio": None, "goal": None, "met": None, "detail": "failed: exit 1"},
    ]
    where = {"date": "today", "commit": "abc", "cores": "2", "cpu": "cpu", "python": "3"}
    text = table.markdown(rows, [bench], where)
    assert "| P9 | t | 0.50x | >= 0.9x | **no** | d |" in text
    assert "| P8 | u | - | - | - | failed: exit 1 |" in text
    assert "at commit `abc` on 2 cores" in text
    assert f"benchmarks/{bench.argv[0]}" in text


def test_every_benchmark_script_exists_and_keys_are_unique():
    keys = [b.key for b in table.BENCHES]
    assert len(keys) == len(set(keys))
    for bench in table.BENCHES:
        assert (table.HERE / bench.argv[0]).is_file(), bench.argv[0]
