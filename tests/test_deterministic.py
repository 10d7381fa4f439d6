"""debugging.deterministic: one seed gives one run, and N+M iterations equal N, save, restore, M.

Every run here is a real ``actorlearner train`` process in local mode on the tiny model; the resume
runs in a new process from the checkpoint on disk.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file

from actorlearner.core.errors import ConfigError
from tests.conftest import small_config
from tests.test_checkpoints import BIN, ENV, _overrides, _records

DETERMINISTIC = (
    "environment.env=tests.jitter_env:JitterCalculator",  # env steps return in a random order
    "debugging.deterministic=true",
    "reporting.checkpoint_interval=2",
    "sft.steps=4",
    "training.train_batch_groups=4",
    "env_runners.groups_in_flight=2",
)


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """``actorlearner ARGV`` with this repository on the path (for ``tests.jitter_env``)."""
    env = {**ENV, "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.run([str(BIN), *argv], capture_output=True, text=True, timeout=600, env=env)


def _train(run_dir: Path, name: str, *extra: str) -> Path:
    done = _cli("train", "configs/calculator.yaml", *_overrides(run_dir, name, *DETERMINISTIC, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir / name


def _weights(checkpoint: Path) -> str:
    """A hash of every parameter tensor of a checkpoint's model, in name order."""
    tensors = load_file(str(checkpoint / "model" / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + tensors[name].tobytes())
    return digest.hexdigest()


def _untimed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The RL records without what measures time (durations, rates per second, clock times)."""

    def timed(key: str) -> bool:
        return key.endswith("_s") or "seconds" in key or key.startswith("time") or key == "wall_time"

    return [{k: v for k, v in r.items() if not timed(k)} for r in records if r["phase"] == "rl"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four RL iterations without a break."""
    return _train(tmp_path_factory.mktemp("det"), "straight", "training.num_iterations=4")


def test_two_runs_with_one_seed_give_the_same_metrics_and_weights(straight: Path, tmp_path: Path) -> None:
    again = _train(tmp_path, "again", "training.num_iterations=4")
    first, second = (
        _untimed(_records(straight / "metrics.jsonl")),
        _untimed(_records(again / "metrics.jsonl")),
    )
    assert len(first) == 4 and first == second
    assert len({r["rollout/tokens"] for r in first}) > 1  # the iterations differ: not a constant
    assert _weights(straight / "checkpoint_000004") == _weights(again / "checkpoint_000004")
    other = _train(tmp_path, "seed1", "training.num_iterations=2", "debugging.seed=1")
    assert _untimed(_records(other / "metrics.jsonl")) != first[:2]  # the seed matters


def test_n_plus_m_iterations_equal_n_then_a_resume_in_a_new_process(straight: Path, tmp_path: Path) -> None:
    # Only the final checkpoint, written after the final evaluation (which must not move the stream).
    run = _train(tmp_path, "broken", "training.num_iterations=2", "reporting.checkpoint_interval=0")
    resumed = _cli("train", "--resume", str(run), "training.num_iterations=4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _untimed(_records(run / "metrics.jsonl")) == _untimed(_records(straight / "metrics.jsonl"))
    assert _weights(run / "checkpoint_000004") == _weights(straight / "checkpoint_000004")


def test_deterministic_needs_local_mode(tmp_path: Path) -> None:
    config = small_config(tmp_path, num_env_runners=1).debugging(deterministic=True)
    with pytest.raises(
        ConfigError, match=re.escape("debugging.deterministic: needs env_runners.num_env_runners=0")
    ):
        config.validate()
