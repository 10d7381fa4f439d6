"""Shared fixtures: one local Ray runtime per test session, and a tiny model built once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actorlearner.core.trajectory import Group, Trajectory, TurnRecord

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _at_repo_root() -> Iterator[None]:
    """Runs every test from the repository's root, whatever directory pytest was started in.

    Tests name shipped files by their paths in the repository (``configs/calculator.yaml``).
    """
    started = os.getcwd()
    os.chdir(REPO)
    yield
    os.chdir(started)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Starts Ray once (num_cpus=2, no dashboard) for every test that needs it."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def make_trajectory(
    reward: float,
    n_prompt: int = 3,
    n_sampled: int = 4,
    version: int = 0,
    prompt_id: str = "p0",
    success: bool = False,
) -> Trajectory:
    """A synthetic trajectory: ``n_prompt`` prompt ids then one sampled turn."""
    n = n_prompt + n_sampled
    mask = np.array([0.0] * n_prompt + [1.0] * n_sampled, dtype=np.float32)
    return Trajectory(
        token_ids=np.arange(1, n + 1, dtype=np.int32),
        loss_mask=mask,
        logprobs=np.where(mask > 0, -1.0, 0.0).astype(np.float32),
        turn_index=np.array([-1] * n_prompt + [0] * n_sampled, dtype=np.int32),
        post_tool=np.zeros(n, dtype=np.int8),
        prompt_length=n_prompt,
        turns=[TurnRecord(index=0, text="x", start=n_prompt, end=n, policy_version=version)],
        reward=reward,
        reward_components={"answer": reward},
        success=success,
        policy_versions=[version],
        prompt_id=prompt_id,
    )


def make_group(rewards: list[float], prompt_id: str = "p0", version: int = 0, group_id: str = "g") -> Group:
    """A synthetic group with the given rewards."""
    trajs = [make_trajectory(r, version=version, prompt_id=prompt_id) for r in rewards]
    return Group(group_id=group_id, prompt_id=prompt_id, trajectories=trajs)


@pytest.fixture(scope="session", autouse=True)
def _isolated_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tiny models built by tests go to a session temp dir, not the user's cache."""
    old = os.environ.get("ACTORLEARNER_CACHE")
    os.environ["ACTORLEARNER_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))
    yield
    if old is None:
        os.environ.pop("ACTORLEARNER_CACHE", None)
    else:
        os.environ["ACTORLEARNER_CACHE"] = old


SMALL_MODEL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}
"""A tiny model small enough for fast tests."""


def small_config(tmp_path, num_env_runners: int = 0, **training):
    """A fast Calculator config: small model, small groups, few iterations, no progress bar."""
    from actorlearner import AlgorithmConfig

    return (
        AlgorithmConfig()
        .environment(
            "actorlearner/Calculator-v0", env_config={"max_operand": 20}, eval_env_config={"split": "test"}
        )
        .env_runners(
            num_env_runners=num_env_runners,
            group_size=4,
            groups_in_flight=4,
            max_new_tokens=16,
            max_tokens=96,
        )
        .training(**{"num_iterations": 3, "train_batch_groups": 2, "lr": 1e-3, **training})
        .sft(steps=4, num_demos=32, batch_size=8)
        .replay(filters=[])
        .model(**SMALL_MODEL)
        .evaluation(num_episodes=8)
        .reporting(run_dir=str(tmp_path / "runs"), progress=False)
    )


def smoke_overrides(run_dir: Path, name: str, *extra: str) -> list[str]:
    """Overrides of ``actorlearner train`` for a smoke budget (tiny model, in-process, 2 iterations).

    ``extra`` come last, so they win over the defaults here.
    """
    return [
        f"reporting.run_dir={run_dir}",
        f"reporting.name={name}",
        "reporting.progress=false",
        "training.num_iterations=2",
        "training.train_batch_groups=2",
        "training.time_budget_s=null",
        "sft.steps=3",
        "sft.num_demos=16",
        "env_runners.num_env_runners=0",
        "env_runners.group_size=4",
        "env_runners.groups_in_flight=4",
        "evaluation.num_episodes=4",
        "replay.filters=[]",
        *(f"model.{k}={v}" for k, v in SMALL_MODEL.items()),
        *extra,
    ]


def train_cli(config: str, run_dir: Path, name: str, *extra: str) -> list[dict[str, Any]]:
    """``actorlearner train CONFIG`` on a smoke budget (tiny model, in-process, 2 iterations).

    Asserts the command exits 0 and returns the run's ``metrics.jsonl`` records.
    """
    overrides = smoke_overrides(run_dir, name, *extra)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "actorlearner"), "train", config, *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CI": "true"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (run_dir / name / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
