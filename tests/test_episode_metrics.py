"""Rollout metrics on hand-built episodes: each rate is a count over the episodes, checked exactly."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest

from actorlearner.core.metrics import RolloutTally, episode_metrics, group_metrics
from actorlearner.core.trajectory import Group, ToolCallRecord, Trajectory, TurnRecord
from actorlearner.replay.buffer import GroupReplayBuffer
from actorlearner.replay.filters import FilterChain, zero_variance
from actorlearner.replay.priorities import uniform
from tests.conftest import make_trajectory


def _episode(calls: tuple[bool, ...], void: bool = False, reward: float = 0.0) -> Trajectory:
    turn = TurnRecord(
        index=0,
        text="x",
        start=3,
        end=7,
        tool_calls=[ToolCallRecord(name="f", arguments={}, ok=ok) for ok in calls],
        void=void,
    )
    return make_trajectory(reward).replace(turns=[turn])


def test_tool_rates_are_exact_counts_over_episodes() -> None:
    episodes = [_episode((True, False)), _episode((False,)), _episode((), void=True), _episode(())]
    m = episode_metrics(episodes, prefix="rollout/")
    assert m["rollout/episodes"] == 4
    assert m["rollout/tool_use_rate"] == 0.5  # 2 of 4 episodes made a call
    assert m["rollout/tool_calls_per_episode"] == 0.75  # 3 calls / 4 episodes
    assert m["rollout/tool_call_success_rate"] == pytest.approx(1 / 3)
    assert m["rollout/void_turn_rate"] == 0.25


def test_rates_without_tool_calls() -> None:
    m = episode_metrics([_episode(()), _episode(())])
    assert m["tool_use_rate"] == 0.0 and m["tool_calls_per_episode"] == 0.0
    assert math.isnan(m["tool_call_success_rate"])  # no call: undefined, not 0


def test_group_metrics_count_zero_variance_groups() -> None:
    flat = Group(group_id="a", prompt_id="p", trajectories=[_episode(()), _episode(())])
    spread = Group(
        group_id="b", prompt_id="q", trajectories=[_episode((), reward=0.0), _episode((), reward=1.0)]
    )
    m = group_metrics([flat, spread])
    assert m["rollout/groups"] == 2 and m["rollout/episodes"] == 4
    assert m["rollout/zero_variance_group_rate"] == 0.5
    assert m["rollout/reward_mean"] == 0.25


def test_a_running_tally_equals_the_metrics_of_all_groups_at_once() -> None:
    rng = np.random.default_rng(0)
    groups = [
        Group(
            group_id=str(i),
            prompt_id=str(i),
            trajectories=[
                _episode(tuple(bool(b) for b in rng.integers(0, 2, rng.integers(0, 3))), reward=float(r))
                for r in rng.normal(size=4)
            ],
        )
        for i in range(5)
    ]
    tally = RolloutTally()
    for group in groups:  # one push at a time, as the buffer receives them
        tally.add([group])
    m = tally.metrics()
    assert m == pytest.approx(group_metrics(groups), nan_ok=True)
    rewards = np.array([t.reward for g in groups for t in g.trajectories])
    assert m["rollout/reward_std"] == pytest.approx(float(rewards.std()))  # from running sums
    assert RolloutTally().metrics() == {}


def test_the_buffer_keeps_nothing_of_a_group_its_filters_drop() -> None:
    buffer = GroupReplayBuffer(priority_fn=uniform, filters=FilterChain([("zero_variance", zero_variance)]))
    group = Group(group_id="a", prompt_id="p", trajectories=[_episode(()), _episode(())])  # no variance
    ids = weakref.ref(group.trajectories[0].token_ids)
    assert buffer.add([group])["dropped"] == 1
    del group
    gc.collect()
    assert ids() is None  # not held for the rollout metrics until the next pop_metrics
    assert buffer.pop_metrics()["rollout/groups"] == 1.0
