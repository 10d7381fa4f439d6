"""An update that trains on nothing says so once, naming the filter and the rewards."""

from __future__ import annotations

import logging
import re

import pytest

from actorlearner.algorithm import empty_update_message
from actorlearner.core.trajectory import Group
from tests.conftest import small_config


def drop_all(group: Group) -> Group | None:
    """A filter that keeps nothing (stands for zero_variance on an untrained policy)."""
    return None


def test_the_message_names_the_filter_the_rewards_and_what_to_do() -> None:
    metrics = {
        "filter/zero_variance/groups_dropped": 12.0,
        "filter/overlong/groups_dropped": 0.0,
        "rollout/groups": 12.0,
        "rollout/reward_mean": -0.25,
        "rollout/reward_std": 0.0,
    }
    text = empty_update_message(metrics, 5.0)
    assert "12 group(s) arrived" in text and "zero_variance: 12" in text
    assert "overlong" not in text  # a filter that dropped nothing is not blamed
    assert "reward mean -0.25, std 0" in text and "sft.steps" in text
    assert "no group arrived within training.max_wait_s=5s" in empty_update_message({}, 5.0)


def test_train_warns_once_when_the_filters_drop_everything(tmp_path, caplog: pytest.LogCaptureFixture):
    config = small_config(tmp_path, max_wait_s=2.0).replay(filters=["tests.test_empty_update:drop_all"])
    algo = config.build()
    try:
        with caplog.at_level(logging.WARNING, logger="actorlearner.algorithm"):
            first = algo.train()
            second = algo.train()
    finally:
        algo.stop()
    assert first["learner/skipped"] == 1.0 and second["learner/skipped"] == 1.0
    warnings = [r.getMessage() for r in caplog.records if "trained on nothing" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "drop_all" in warnings[0]


class FailsThenRepeats:
    """An engine whose first generations raise; afterwards every turn is the same (no reward spread)."""

    failures = 0

    def __init__(self, model_path, seed: int = 0) -> None:
        self.version = 0

    def generate(self, prompts, params):
        from actorlearner.core.protocols import Generation

        if FailsThenRepeats.failures < 6:
            FailsThenRepeats.failures += 1
            raise RuntimeError("engine broke")
        return [
            Generation([5, *params.stop_token_ids[:1]], [-0.1, -0.1], "stop", self.version) for _ in prompts
        ]

    def load_weights(self, weights, version: int) -> None:
        self.version = version


def test_a_stalled_run_names_the_group_errors_of_all_its_empty_iterations(tmp_path) -> None:
    """Errors early, then only drops: the message sums every empty iteration (was: the last one's)."""
    FailsThenRepeats.failures = 0
    config = small_config(tmp_path, max_wait_s=1.0).env_runners(
        engine="tests.test_empty_update:FailsThenRepeats"
    )
    algo = config.replay(filters=["zero_variance"]).build()
    try:
        with pytest.raises(RuntimeError, match="no group reached the learner in 3 iterations") as caught:
            for _ in range(3):
                algo.train()
    finally:
        algo.stop()
    message = str(caught.value)
    errors = re.search(r"rollout/group_errors=(\d+)", message)
    assert errors is not None and int(errors.group(1)) > 0, message  # the first iteration's failures
    assert "zero_variance" in message, message
