"""CLI smoke test: a tiny budget through `actorlearner train`, then `actorlearner eval` on its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMALL_MODEL

BIN = Path(sys.executable).parent / "actorlearner"


@pytest.mark.slow
def test_train_then_eval_from_the_command_line(tmp_path: Path) -> None:
    model = [f"model.{k}={v}" for k, v in SMALL_MODEL.items()]
    overrides = [
        f"reporting.run_dir={tmp_path}",
        "reporting.name=smoke",
        "reporting.progress=false",
        "training.num_iterations=2",
        "training.train_batch_groups=2",
        "sft.steps=3",
        "sft.num_demos=16",
        "env_runners.num_env_runners=0",
        "env_runners.group_size=4",
        "env_runners.groups_in_flight=4",
        "evaluation.num_episodes=6",
        "replay.filters=[]",
        *model,
    ]
    env = {**os.environ, "CI": "true"}
    train = subprocess.run(
        [str(BIN), "train", "configs/calculator.yaml", *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "after RL" in train.stdout and "greedy success" in train.stdout
    summary = json.loads((tmp_path / "smoke" / "summary.json").read_text())
    assert summary["iterations"] == 2
    assert set(summary["phases"]) == {"initial", "after SFT", "after RL"}
    ckpt = Path(summary["checkpoint"])
    assert (ckpt / "model" / "model.safetensors").is_file() and (ckpt / "optimizer.safetensors").is_file()
    ev = subprocess.run(
        [str(BIN), "eval", str(ckpt), "evaluation.num_episodes=4", f"reporting.run_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads(ev.stdout[ev.stdout.index("{") :])
    assert metrics["eval/greedy/episodes"] == 4
    bfcl = subprocess.run(
        [
            str(BIN),
            "eval",
            str(ckpt),
            "evaluation.num_episodes=3",
            "env_runners.max_tokens=1024",
            f"reporting.run_dir={tmp_path}",
            "--bfcl",
            "simple_python",
            "irrelevance",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert bfcl.returncode == 0, bfcl.stderr[-3000:]
    accuracy = json.loads(bfcl.stdout[bfcl.stdout.index("{") :])
    assert set(accuracy) == {"simple_python", "irrelevance", "overall"}
    assert all(0.0 <= v <= 1.0 for v in accuracy.values())


def test_eval_checks_the_bfcl_categories_before_anything_starts(tmp_path: Path, capsys) -> None:
    import ray

    from actorlearner.cli import main

    ray_was_up = ray.is_initialized()
    # tmp_path is no checkpoint: the categories are checked before the checkpoint is read or Ray starts
    assert main(["eval", str(tmp_path), "--bfcl", "simple_python", "nope"]) == 2
    err = capsys.readouterr().err
    assert "config error: --bfcl: unknown categories ['nope']; allowed: simple_python, multiple" in err
    assert ray.is_initialized() == ray_was_up


def test_the_cli_imports_no_env_internals() -> None:
    code = "import sys, actorlearner.cli; print(sorted(m for m in sys.modules if m.startswith('envs.')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == "[]"


def test_overrides_may_follow_an_option() -> None:
    from actorlearner.cli import _parse

    argv = ["train", "configs/calculator.yaml", "--no-initial-eval", "sft.steps=3", "training.lr=1e-4"]
    args = _parse(argv)
    assert args.no_initial_eval and args.config == "configs/calculator.yaml"
    assert args.overrides == ["sft.steps=3", "training.lr=1e-4"]
    with pytest.raises(SystemExit) as err:  # an unknown option is still refused, exit code 2
        _parse(["train", "configs/calculator.yaml", "--no-initial-eval", "--fast"])
    assert err.value.code == 2
    with pytest.raises(SystemExit):  # report takes no overrides
        _parse(["report", "runs/x", "extra"])
