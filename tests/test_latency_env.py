"""The slow-tool Calculator (benchmarks): lognormal waits per step, capped, independent per env."""

from __future__ import annotations

import time

import gymnasium
import numpy as np
import pytest

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner.config import ConfigError
from actorlearner.env.checker import check_env

ENV_ID = "actorlearner/SlowToolCalculator-v0"


def _waits(seed: int, n: int, **knobs: float) -> list[float]:
    env = gymnasium.make(ENV_ID, disable_env_checker=True, **knobs).unwrapped
    env.reset(seed=seed)
    return [env.latency() for _ in range(n)]


def test_waits_are_lognormal_around_the_median_capped_and_independent_per_env() -> None:
    waits = np.array(_waits(0, 4000, latency_median_s=0.3, latency_sigma=1.0, latency_cap_s=5.0))
    assert np.median(waits) == pytest.approx(0.3, rel=0.08)
    assert waits.max() == 5.0 and (waits == 5.0).mean() < 0.01  # the tail is cut at the cap
    assert np.quantile(waits, 0.99) > 6 * np.median(waits)  # a long tail
    assert _waits(3, 20) != _waits(3, 20)  # one task's episodes (one seed) wait different times


def test_a_step_waits_then_is_the_calculator() -> None:
    env = gymnasium.make(ENV_ID, disable_env_checker=True, latency_median_s=0.2, latency_sigma=0.0)
    env.reset(seed=0)
    start = time.perf_counter()
    _, _, terminated, _, info = env.step("<answer>1</answer>")
    assert 0.2 <= time.perf_counter() - start < 1.0
    assert terminated and "answer" in info["reward_components"]


def test_without_latency_it_passes_the_env_checker() -> None:
    report = check_env(gymnasium.make(ENV_ID, latency_median_s=0.0), seeds=range(8), demo_episodes=8)
    assert report.demo_successes >= 1


def test_bad_latency_knobs_fail_with_the_knob_named() -> None:
    with pytest.raises(ConfigError, match="latency_sigma"):
        gymnasium.make(ENV_ID, latency_sigma=-1.0)
