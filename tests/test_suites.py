"""Evaluation suites: registered by the env package, resolved lazily, played category by category."""

from __future__ import annotations

from typing import Any

import gymnasium
import pytest

from actorlearner.core.errors import ConfigError
from actorlearner.env.suites import EvalSuite, get_eval_suite, register_eval_suite
from envs import register_envs


def test_bfcl_is_registered_by_the_envs_and_resolved_on_use() -> None:
    register_envs()  # again: registering the same suite twice is a no-op
    from envs.bfcl import BFCL_SUITE, CATEGORIES

    suite = get_eval_suite("bfcl")
    assert suite is BFCL_SUITE and suite.env == "actorlearner/BFCL-v0" and suite.categories == CATEGORIES
    assert suite.check_categories([]) == list(CATEGORIES)
    assert suite.check_categories(["irrelevance"]) == ["irrelevance"]
    with pytest.raises(ConfigError, match=r"--bfcl: unknown categories \['x'\]; allowed: simple_python"):
        suite.check_categories(["x", "irrelevance"])
    with pytest.raises(ValueError, match="already registered"):
        register_eval_suite("bfcl", "elsewhere:SUITE")


def test_unknown_and_broken_suites_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown evaluation suite 'nope'; known: .*bfcl"):
        get_eval_suite("nope")
    register_eval_suite("test-broken", "envs.bfcl:NO_SUCH_SUITE")
    with pytest.raises(ConfigError, match=r"cannot import 'envs\.bfcl:NO_SUCH_SUITE'"):
        get_eval_suite("test-broken")
    register_eval_suite("test-not-a-suite", "envs.bfcl:CATEGORIES")
    with pytest.raises(ConfigError, match="is not an EvalSuite"):
        get_eval_suite("test-not-a-suite")


def _play_ground_truth(env_id: str, env_config: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Plays the first n tasks with BFCL's own ground-truth turn; returns the final infos."""
    env = gymnasium.make(env_id, disable_env_checker=True, **env_config)
    infos = []
    for seed in range(n):
        env.reset(seed=seed)
        *_, info = env.step(env.unwrapped.ground_truth_turn())  # type: ignore[attr-defined]
        infos.append(info)
    return infos


def test_a_suite_plays_each_category_and_scores_it() -> None:
    pytest.importorskip("bfcl_eval", reason="needs `pip install --no-deps bfcl-eval`")
    suite = get_eval_suite("bfcl")
    scores, results = suite.run(_play_ground_truth, ["simple_python", "irrelevance"], 3)
    assert scores == {"simple_python": 1.0, "irrelevance": 1.0, "overall": 1.0}
    assert [len(results[c]) for c in ("simple_python", "irrelevance")] == [3, 3]


def test_a_suite_of_your_own() -> None:
    suite = EvalSuite(
        name="coin",
        env="test/Coin-v0",
        categories=("heads", "tails"),
        env_config=lambda c: {"side": c},
        num_tasks=lambda c: 2,
        score=lambda r: {c: float(sum(r[c])) / len(r[c]) for c in r},
    )
    register_eval_suite("test-coin", suite)
    assert get_eval_suite("test-coin") is suite
    calls = []

    def evaluate(env: str, env_config: dict[str, Any], n: int) -> list[bool]:
        calls.append((env, env_config, n))
        return [env_config["side"] == "heads"] * n

    scores, _ = suite.run(evaluate, suite.check_categories([]), max_episodes=5)
    assert scores == {"heads": 1.0, "tails": 0.0}
    assert calls == [("test/Coin-v0", {"side": "heads"}, 2), ("test/Coin-v0", {"side": "tails"}, 2)]
