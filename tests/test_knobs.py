"""The knob checks shared by envs, filters and DSCL: one line naming the knob and what is allowed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from actorlearner.core.errors import ConfigError
from actorlearner.core.knobs import (
    check_choice,
    check_fraction,
    check_int,
    check_names,
    check_non_negative,
    check_number,
    check_positive,
    check_probability,
    check_range,
)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: check_int("max_turns", 0, 1), "max_turns must be an int >= 1, got 0"),
        (lambda: check_int("max_turns", 2.0, 1), "max_turns must be an int >= 1, got 2.0"),
        (lambda: check_int("flag", True), "flag must be an int, got True"),
        (
            lambda: check_int("db_seed", -1, 0, 2**63 - 1),
            "db_seed must be an int in [0, 9223372036854775807]",
        ),
        (lambda: check_number("tool_bonus", "1", 0.0), "tool_bonus must be a number >= 0, got '1'"),
        (lambda: check_number("t", math.nan), "t must be a number, got nan"),
        (
            lambda: check_number("t", 60.5, 0.0, 60.0, open_low=True),
            "t must be a number in (0, 60], got 60.5",
        ),
        (lambda: check_positive("tau", 0), "tau must be a number > 0, got 0"),
        (lambda: check_non_negative("eps", math.inf), "eps must be a finite number >= 0, got inf"),
        (lambda: check_fraction("strength", 1.5), "strength must be a number in [0, 1], got 1.5"),
        (
            lambda: check_fraction("test_fraction", 1.0, open_interval=True),
            "test_fraction must be a number in (0, 1), got 1.0",
        ),
        (lambda: check_probability("p", -0.1), "p must be a number in [0, 1], got -0.1"),
        (
            lambda: check_choice("split", "val", ("train", "test")),
            "split must be one of 'train', 'test', got 'val'",
        ),
        (
            lambda: check_names("templates", "a,a", ["a", "b"]),
            "templates must be distinct names among ['a', 'b']",
        ),
        (lambda: check_names("templates", [], ["a"]), "templates must be distinct names among ['a'], got []"),
        (lambda: check_names("templates", "a", ["a"], comma_separated=False), "got 'a'"),
        (
            lambda: check_range("reward_range", [4, -3]),
            "reward_range must be a finite [low, high] with high > low",
        ),
        (lambda: check_range("reward_range", 3), "reward_range must be a finite [low, high]"),
    ],
)
def test_a_bad_knob_raises_one_line_naming_it(call: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        call()
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_good_knobs_come_back_converted() -> None:
    assert check_int("n", np.int64(3), 1) == 3 and type(check_int("n", np.int64(3))) is int
    assert check_number("x", np.float32(0.5), 0.0, 1.0) == 0.5
    assert check_positive("timeout", math.inf) == math.inf
    assert check_fraction("f", 0) == 0.0 and check_fraction("f", 1) == 1.0
    assert check_choice("split", "test", ("train", "test")) == "test"
    assert check_names("categories", " single, parallel ", ["single", "parallel"]) == ("single", "parallel")
    assert check_names("categories", ["parallel"], ["single", "parallel"]) == ("parallel",)
    assert check_range("reward_range", [-3, 4]) == (-3.0, 4.0)
    with pytest.raises(ConfigError):
        check_number("x", np.bool_(True))
