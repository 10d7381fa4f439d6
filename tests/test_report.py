"""`actorlearner report`: figures and report.md from a synthetic metrics.jsonl, in-process and by the CLI."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from actorlearner.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = {"rewards", "sft", "curriculum", "filters", "priorities", "learner"}


def _rl_record(i: int) -> dict[str, Any]:
    progress = i / 9
    record: dict[str, Any] = {
        "step": i,
        "phase": "rl",
        "iteration": float(i),
        "rollout/reward_mean": 0.2 + 0.7 * progress,
        "rollout/success_rate": 0.1 + 0.8 * progress,
        "rollout/tool_use_rate": None if i == 3 else 0.5 + 0.5 * progress,  # a non-finite value
        "learner/loss": 0.5 - 0.3 * progress,
        "learner/grad_norm": 1.0,
        "learner/mismatch_kl": 1e-3,
        "learner/entropy": 0.4 - 0.3 * progress,
        "learner/staleness_mean": 1.0,
        "learner/tokens_per_s": 4000.0 + i,
        "buffer/priority_mean": 0.5 + 0.1 * (i % 3),
        "buffer/is_weight_min": 0.8,
        "dscl/mastery/single": progress,
        "dscl/mastery/parallel": None if i == 4 else progress / 2,
        "dscl/focus/single": 0.5 - 0.3 * progress,
        "dscl/focus/parallel": 0.5 + 0.3 * progress,
        "filter/zero_variance/groups_dropped": float(i),
    }
    if i % 2:  # counters are logged only when a filter acted
        record["filter/tool_failure/tokens_masked"] = 12.0
    if i in (0, 9):
        record["eval/greedy/success_rate"] = 0.1 + 0.8 * progress
    return record


def _write_run(run_dir: Path, records: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> Path:
    run_dir.mkdir(parents=True)
    lines = [json.dumps(r) for r in records]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))  # NaN written as NaN, as train does
    return run_dir


def _full_run(tmp_path: Path) -> Path:
    sft = [
        {"step": i, "phase": "sft", "sft/loss": None if i == 1 else 3.0 - i, "sft/token_accuracy": 0.1 * i}
        for i in range(3)
    ]
    summary = {
        "phases": {
            "initial": {"eval/greedy/success_rate": 0.0, "eval/sampled/tool_use_rate": math.nan},
            "after RL": {"eval/greedy/success_rate": 0.9, "eval/sampled/reward_mean": 0.75},
        },
        "timings": {"sft_s": 12.0, "rl_s": 34.0},
    }
    return _write_run(tmp_path / "run", sft + [_rl_record(i) for i in range(10)], summary)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width >= 400 and height >= 300 and len(data) > 10_000, (path, width, height, len(data))


def test_write_report_draws_every_figure_whose_metrics_exist(tmp_path: Path) -> None:
    run_dir = _full_run(tmp_path)
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 10, "phase": "rl", "rollout/rew')  # a line cut by a crash
    written = write_report(run_dir)
    assert {p.stem for p in written[:-1]} == ALL_FIGURES
    assert written[-1] == run_dir / "report" / "report.md"
    assert all(p.parent == run_dir / "report" for p in written)
    for png in written[:-1]:
        _assert_png(png)
    report = written[-1].read_text()
    assert all(f"({name}.png)" in report for name in ALL_FIGURES)
    assert "1 unparsable line(s)" in report and "Skipped" not in report
    assert "| initial | 0.0% | n/a |" in report  # greedy success, then the absent sampled success
    assert "| after RL | 90.0% |" in report and "0.750" in report
    assert "sft 12 s, rl 34 s" in report


def test_figures_without_metrics_are_skipped(tmp_path: Path) -> None:
    keep = ("step", "phase", "iteration", "rollout/reward_mean", "rollout/success_rate", "learner/loss")
    records = [{k: v for k, v in _rl_record(i).items() if k in keep} for i in range(5)]
    records.append({"step": 5, "phase": "rl", "rollout/reward_mean": None, "learner/loss": float("nan")})
    run_dir = _write_run(tmp_path / "run", records)
    written = write_report(run_dir, tmp_path / "out")
    assert [p.name for p in written] == ["rewards.png", "learner.png", "report.md"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["learner.png", "report.md", "rewards.png"]
    report = written[-1].read_text()
    for title in ("Cold-start SFT", "DSCL curriculum", "Filter drops", "Replay priorities"):
        assert f"- {title} (" in report
    assert "Held-out evaluation" not in report  # no summary.json


def test_nothing_numeric_gives_only_the_markdown(tmp_path: Path) -> None:
    records = [{"step": 0, "phase": "rl", "rollout/reward_mean": None, "dscl/mastery/single": "n/a"}]
    run_dir = _write_run(tmp_path / "run", records)
    (run_dir / "summary.json").write_text("{not json")
    written = write_report(run_dir)
    assert [p.name for p in written] == ["report.md"]
    assert "summary.json is unreadable" in written[0].read_text()


def test_logged_priority_histograms_are_drawn(tmp_path: Path) -> None:
    records = []
    for i in range(4):
        record = {"step": i, "phase": "rl", "iteration": i, "buffer/priority_hist": [1, 4 + i, 2]}
        record["buffer/priority_bins"] = [0.0, 0.5, 1.0, 1.5] if i < 3 else [0.0, 1.0]  # last: wrong length
        records.append(record)
    records.append({"step": 4, "phase": "rl", "buffer/priority_hist": [1, None, 2]})  # ignored
    run_dir = _write_run(tmp_path / "run", records)
    written = write_report(run_dir)
    assert [p.name for p in written] == ["priorities.png", "report.md"]
    _assert_png(written[0])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actorlearner.cli", "report", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_prints_the_written_paths(tmp_path: Path) -> None:
    run_dir = _full_run(tmp_path)
    out = tmp_path / "figures"
    result = _cli(str(run_dir), "--out", str(out))
    assert result.returncode == 0, result.stderr
    paths = [Path(line) for line in result.stdout.splitlines()]
    assert {p.name for p in paths} == {f"{name}.png" for name in ALL_FIGURES} | {"report.md"}
    assert all(p.parent == out and p.is_file() for p in paths)
    _assert_png(out / "curriculum.png")


def test_cli_without_metrics_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _cli(str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no metrics.jsonl" in lines[0], result.stderr
