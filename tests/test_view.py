"""``actorlearner view``: the samples log the buffer writes and the page made from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actorlearner.cli import main
from actorlearner.replay.samplelog import SAMPLES_FILE, SampleLog
from actorlearner.view import read_samples, render, token_runs, write_view
from tests.conftest import small_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-iteration in-process run that logs 2 groups per draw, with groups dropped by zero_variance."""
    config = small_config(tmp_path_factory.mktemp("view"), synchronous=True)
    algo = config.replay(filters=["zero_variance"]).reporting(log_samples=2).build()
    try:
        algo.pretrain()
        for _ in range(3):
            algo.train()
    finally:
        algo.stop()
    return algo.run_dir


def test_the_buffer_logs_what_each_draw_handed_the_learner(run_dir: Path) -> None:
    rows = read_samples(run_dir)
    sampled = [r for r in rows if r["kind"] == "sampled"]
    assert sorted({r["draw"] for r in sampled}) == [0, 1, 2]
    assert all(sum(r["draw"] == d for r in sampled) <= 2 for d in range(3))  # log_samples per draw
    for row in sampled:
        assert row["filter_note"] == "kept" and row["priority"] >= 0 and 0 < row["inclusion"] <= 1
        assert row["staleness"] >= 0 and len(row["trajectories"]) == 4
        traj = row["trajectories"][0]
        assert len(traj["token_ids"]) == len(traj["loss_mask"]) > traj["prompt_length"]
    for row in rows:
        if row["kind"] == "dropped":
            assert row["filter_note"].startswith("dropped by ")


def test_the_page_shows_tokens_kinds_calls_and_the_groups_numbers(run_dir: Path) -> None:
    page = write_view(run_dir).read_text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    for text in ('class="prompt"', 'class="trained"', "priority", "inclusion", "IS weight", "staleness"):
        assert text in page, text
    assert "advantage " in page and "Draw 2 (learner version" in page
    assert "<|im_start|>" not in page  # decoded with the run's tokenizer, escaped
    assert "&lt;|im_start|&gt;" in page
    rows = read_samples(run_dir)
    call = next(c for r in rows for t in r["trajectories"] for turn in t["turns"] for c in turn["tool_calls"])
    assert json.dumps(call["arguments"]).replace('"', "&quot;") in page


def test_token_runs_tell_prompt_trained_masked_and_observation_apart() -> None:
    traj = {
        "token_ids": list(range(10)),
        "loss_mask": [0, 0, 1, 1, 0, 0, 0, 1, 0, 0],
        "prompt_length": 2,
        "turns": [{"start": 2, "end": 5}, {"start": 6, "end": 8}],
    }
    kinds = [(kind, ids) for kind, ids in token_runs(traj)]
    assert kinds == [
        ("prompt", [0, 1]),
        ("trained", [2, 3]),
        ("masked", [4]),
        ("obs", [5]),
        ("masked", [6]),
        ("trained", [7]),
        ("obs", [8, 9]),
    ]


def test_text_from_tools_cannot_inject_markup() -> None:
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    traj = {
        "token_ids": [1, 2],
        "loss_mask": [0, 1],
        "prompt_length": 1,
        "turns": [
            {
                "index": 0,
                "start": 1,
                "end": 2,
                "tool_calls": [
                    {"name": evil, "arguments": {"x": evil}, "ok": True, "error": None, "output": evil}
                ],
            }
        ],
        "reward": 1.0,
        "reward_components": {evil: 1.0},
        "success": True,
        "policy_versions": [0],
    }
    row = {
        "kind": "dropped",
        "draw": 0,
        "group_id": evil,
        "prompt_id": "p",
        "task_id": evil,
        "sub_tasks": [evil],
        "filter_note": evil,
        "trajectories": [traj],
    }
    page = render([row], evil, "grpo", tokenizer=None)
    assert "<script" not in page and "<img" not in page and "&lt;script&gt;" in page


def test_a_failed_write_never_raises_and_stops_logging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = SampleLog(tmp_path / "missing" / SAMPLES_FILE, 1)
    log._write([{"kind": "sampled"}])
    log._write([{"kind": "sampled"}])
    assert log._broken and "samples are no longer logged" in caplog.text
    assert caplog.text.count("no longer logged") == 1


def test_view_of_a_directory_without_samples_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no samples.jsonl" in err


def test_view_cli_writes_the_page(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "page.html"
    assert main(["view", str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.read_text().endswith("</html>")
