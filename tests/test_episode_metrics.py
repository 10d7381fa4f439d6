"""Rollout metrics on hand-built episodes: each rate is a count over the episodes, checked exactly."""

from __future__ import annotations

import math

import pytest

from actorlearner.core.metrics import episode_metrics, group_metrics
from actorlearner.core.trajectory import Group, ToolCallRecord, Trajectory, TurnRecord
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
