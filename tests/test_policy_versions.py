"""Weights staged mid-episode: one trajectory, two policy versions, and staleness by the OLDEST one.

A runner stages new weights while episodes are in flight (``AsyncBatchingEngine.stage_weights``);
the next generation step of every episode then samples with the new version. The trajectory records
both, and everything that measures staleness (the buffer's eviction and ``sample_age`` metrics, the
learner's ``staleness_*`` metrics) must count from the oldest version that produced a token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium
import numpy as np
import pytest
from transformers import AutoTokenizer

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner.config import LearnerConfig, TrainingConfig
from actorlearner.core.protocols import Generation, SamplingParams
from actorlearner.core.trajectory import Group, Trajectory
from actorlearner.env.registration import make_env
from actorlearner.learn.learner import Learner
from actorlearner.models.tiny import ensure_tiny_model, env_corpus
from actorlearner.replay.buffer import GroupReplayBuffer
from actorlearner.replay.filters import FilterChain
from actorlearner.replay.priorities import uniform
from actorlearner.rollout.engine import AsyncBatchingEngine
from actorlearner.rollout.episode import EnginePolicy, run_episode
from tests.conftest import SMALL_MODEL, make_trajectory

SPEC = gymnasium.spec("actorlearner/Calculator-v0")


@pytest.fixture(scope="module")
def model_dir() -> str:
    return str(ensure_tiny_model(env_corpus(lambda: make_env(SPEC, {})), **SMALL_MODEL))


class VersionedEngine:
    """An engine whose turns are three fixed ids, stamped with the loaded weights version."""

    def __init__(self, version: int = 0) -> None:
        self.version = version
        self.loaded: list[int] = []

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        return [Generation([10, 11, 12], [-0.5, -0.5, -0.5], "length", self.version) for _ in prompts]

    def load_weights(self, weights: Mapping[str, Any], version: int) -> None:
        self.loaded.append(version)
        self.version = version


class ThreeTurnEnv:
    """A tool env that answers every turn with an observation and ends after three turns."""

    def __init__(self) -> None:
        self.turns = 0

    def reset(self, seed: int | None = None) -> tuple[list[dict[str, str]], dict[str, Any]]:
        self.turns = 0
        return [{"role": "user", "content": "2 + 2"}], {"prompt_id": f"p{seed}"}

    def step(self, text: str) -> tuple[list[dict[str, str]], float, bool, bool, dict[str, Any]]:
        self.turns += 1
        done = self.turns == 3
        info: dict[str, Any] = {"final_answer": "4"} if done else {"void": False}
        return [{"role": "tool", "content": "4"}], float(done), done, False, info


class StagingPolicy:
    """Samples through the batching engine; after ``after`` turns the learner's new weights arrive."""

    def __init__(self, engine: AsyncBatchingEngine, after: int, version: int) -> None:
        self.inner = EnginePolicy(engine, SamplingParams(1.0, 3, ()))
        self.engine, self.after, self.version = engine, after, version
        self.calls = 0

    async def __call__(
        self, ids: Sequence[int], env: Any, messages: list[dict[str, Any]], budget: int
    ) -> Generation:
        if self.calls == self.after:
            self.engine.stage_weights({}, self.version)
        self.calls += 1
        return await self.inner(ids, env, messages, budget)


def _play_across_a_weight_update(model_dir: str, start: int, new: int) -> tuple[Trajectory, VersionedEngine]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    fake = VersionedEngine(start)

    async def main() -> Trajectory:
        engine = AsyncBatchingEngine(fake, max_wait_s=0.0)
        try:
            policy = StagingPolicy(engine, after=1, version=new)
            return await run_episode(ThreeTurnEnv(), policy, tokenizer, seed=0, max_tokens=400)
        finally:
            engine.close()

    return asyncio.run(main()), fake


def test_weights_staged_mid_episode_give_two_versions_in_one_trajectory(model_dir: str) -> None:
    traj, engine = _play_across_a_weight_update(model_dir, start=2, new=5)
    assert engine.loaded == [5]  # loaded between two generation steps, once
    assert [t.policy_version for t in traj.turns] == [2, 5, 5]
    assert traj.policy_versions == [2, 5]
    assert traj.min_version == 2
    for turn in traj.turns:  # each turn's ids are the sampled ones, with their behaviour log-probs
        assert traj.loss_mask[turn.start : turn.end].tolist() == [1.0, 1.0, 1.0]
        assert traj.token_ids[turn.start : turn.end].tolist() == [10, 11, 12]


def test_group_min_version_is_the_oldest_over_its_trajectories(model_dir: str) -> None:
    mixed, _ = _play_across_a_weight_update(model_dir, start=2, new=5)
    fresh = make_trajectory(1.0, version=4)
    group = Group(group_id="g", prompt_id="p", trajectories=[fresh, mixed])
    assert group.min_version == 2
    no_turns = make_trajectory(0.0).replace(policy_versions=[])  # contributes no version at all
    assert Group(group_id="h", prompt_id="p", trajectories=[no_turns, fresh]).min_version == 4


def _buffer(max_staleness: int) -> GroupReplayBuffer:
    return GroupReplayBuffer(uniform, FilterChain([]), capacity=8, max_staleness=max_staleness, max_reuse=4)


def _two_version_group(oldest: int, newest: int, group_id: str = "g") -> Group:
    trajs = [
        make_trajectory(1.0, version=newest),
        make_trajectory(0.0, version=newest).replace(policy_versions=[oldest, newest]),
    ]
    return Group(group_id=group_id, prompt_id="p", trajectories=trajs)


def test_sample_age_counts_from_the_oldest_version() -> None:
    buf = _buffer(max_staleness=10)
    buf.add([_two_version_group(oldest=2, newest=5)])
    buf.sample(1, learner_version=7)
    buf.sample(1, learner_version=9)
    metrics = buf.pop_metrics()
    assert metrics["buffer/sample_age_mean"] == pytest.approx(((7 - 2) + (9 - 2)) / 2)
    assert metrics["buffer/sample_age_max"] == 9 - 2


def test_staleness_eviction_uses_the_oldest_version() -> None:
    buf = _buffer(max_staleness=3)
    buf.add([_two_version_group(oldest=2, newest=5, group_id="mixed"), _two_version_group(5, 5, "new")])
    assert buf.num_fresh(5) == 2  # 5 - 2 = 3: not yet stale
    assert buf.num_fresh(6) == 1  # 6 - 2 = 4 > 3, though its newest tokens are only 1 version old
    assert [g.group_id for g in buf.sample(2, learner_version=6)] == ["new"]
    assert buf.pop_metrics()["buffer/groups_evicted_stale"] == 1


def test_learner_staleness_metrics_use_the_oldest_version(model_dir: str) -> None:
    mixed, _ = _play_across_a_weight_update(model_dir, start=2, new=5)
    other, _ = _play_across_a_weight_update(model_dir, start=6, new=6)
    mixed.reward, other.reward = 1.0, 0.0
    learner = Learner(model_dir, TrainingConfig(lr=1e-4), LearnerConfig(device="cpu"))
    learner.start_rl()
    learner.version = 7
    metrics = learner.update([Group(group_id="g", prompt_id="p", trajectories=[mixed, other])])
    assert metrics["staleness_max"] == 7 - 2
    assert metrics["staleness_mean"] == pytest.approx(((7 - 2) + (7 - 6)) / 2)
    assert metrics["version"] == 8


def test_the_two_version_trajectory_trains_on_every_sampled_turn(model_dir: str) -> None:
    traj, _ = _play_across_a_weight_update(model_dir, start=0, new=1)
    sampled = sum(t.end - t.start for t in traj.turns)
    assert traj.num_sampled == sampled == int(traj.loss_mask.sum()) == 9
    assert np.all(traj.logprobs[traj.loss_mask > 0] == np.float32(-0.5))
