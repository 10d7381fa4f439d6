from __future__ import annotations

import math

import pytest

from envs.rewards import (
    multiset_match,
    otc_reward,
    otc_tool_reward,
    toolrl_match,
    toolrl_reward,
)


def call(name: str, **arguments: object) -> dict[str, object]:
    return {"name": name, "arguments": arguments}


def assert_parts_add_up(r: dict[str, float]) -> None:
    assert r["name"] + r["keys"] + r["values"] == pytest.approx(r["correct"])
    assert r["format"] + r["correct"] == pytest.approx(r["total"])
    assert -3.0 - 1e-9 <= r["correct"] <= 3.0 + 1e-9


# ---- multiset Jaccard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([], [], 1.0),
        (["f"], [], 0.0),
        ([], ["f"], 0.0),
        (["f"], ["f"], 1.0),
        (["f", "g"], ["g", "f"], 1.0),
        (["f"], ["g"], 0.0),
        (["f", "f"], ["f"], 0.5),  # 1 / (2 + 1 - 1)
        (["f", "f", "g"], ["f", "g", "g"], 0.5),  # 2 / (3 + 3 - 2)
        (["a", "b", "c"], ["a"], 1 / 3),
    ],
)
def test_multiset_match(a: list[str], b: list[str], expected: float) -> None:
    assert multiset_match(a, b) == pytest.approx(expected)


# ---- ToolRL --------------------------------------------------------------------------------------

GT = [call("f", a=1, b=2)]  # S_max = 1 + (1 + 2) = 4


def test_exact_match_is_three_and_four_with_format() -> None:
    r = toolrl_reward([call("f", a=1, b=2)], GT, format_ok=True)
    assert r["correct"] == pytest.approx(3.0) and r["total"] == pytest.approx(4.0) and r["format"] == 1.0
    # each part: (6 x - 3 M) / S_max with name 1/1, keys 1/1, values 2/2
    assert r["name"] == pytest.approx(0.75) and r["keys"] == pytest.approx(0.75)
    assert r["values"] == pytest.approx(1.5)
    assert_parts_add_up(r)
    assert toolrl_reward([call("f", b=2, a=1)], GT, format_ok=False)["total"] == pytest.approx(3.0)


def test_unparsable_is_minus_three() -> None:
    r = toolrl_reward(None, GT, format_ok=False)
    assert r["correct"] == pytest.approx(-3.0) and r["total"] == pytest.approx(-3.0)
    assert r["name"] == pytest.approx(-0.75) and r["values"] == pytest.approx(-1.5)
    assert_parts_add_up(r)
    assert toolrl_reward(None, GT, format_ok=True)["total"] == pytest.approx(-2.0)


@pytest.mark.parametrize(
    "predicted, correct",
    [
        ([call("f", a=1, b=3)], 6 * 3 / 4 - 3),  # name 1 + keys 1 + values 1 -> 1.5
        ([call("f", a=1)], 6 * (1 + 0.5 + 1) / 4 - 3),  # keys 1/2, one value -> 0.75
        ([call("f", a=1, b=2, c=3)], 6 * (1 + 2 / 3 + 2) / 4 - 3),  # extra key: keys 2/3 -> 2.5
        ([call("g", a=1, b=2)], -3.0),  # wrong name: nothing counts
        ([], -3.0),
        ([call("f", a=1, b=2), call("f", a=1, b=2)], 6 * (0.5 + 1 + 2) / 4 - 3),  # a duplicate: names 1/2
        ([call("f", a="1", b=2.0)], 6 * (1 + 1 + 1) / 4 - 3),  # "1" != 1, 2.0 == 2
    ],
)
def test_partial_matches(predicted: list[dict[str, object]], correct: float) -> None:
    r = toolrl_reward(predicted, GT, format_ok=True)
    assert r["correct"] == pytest.approx(correct)
    assert r["total"] == pytest.approx(1.0 + correct)
    assert_parts_add_up(r)


def test_parallel_calls_match_in_any_order() -> None:
    truth = [call("f", x=1), call("g", y=2)]
    r = toolrl_reward([call("g", y=2), call("f", x=1)], truth, format_ok=True)
    assert r["correct"] == pytest.approx(3.0)


def test_f_of_g_is_greedy_in_ground_truth_order() -> None:
    # gt f(x=1) takes the only f call (keys 1, values 0 > 0); f(x=2) then finds none.
    # names: {f, f} vs {f} = 1/2; S_max = 1 + 2 * (1 + 1) = 5; score = 0.5 + 1 + 0.
    m = toolrl_match([call("f", x=2)], [call("f", x=1), call("f", x=2)])
    assert (m.name, m.keys, m.values, m.s_max) == (0.5, 1.0, 0.0, 5.0)
    r = toolrl_reward([call("f", x=2)], [call("f", x=1), call("f", x=2)], format_ok=False)
    assert r["correct"] == pytest.approx(6 * 1.5 / 5 - 3)


def test_best_unused_prediction_is_chosen() -> None:
    truth = [call("f", x=1, y=2)]
    m = toolrl_match([call("f", x=9, y=9), call("f", x=1, y=2)], truth)
    assert (m.keys, m.values) == (1.0, 2.0)  # the second (better) f call is f(g)
    # two identical gt calls each use one prediction
    m = toolrl_match([call("f", x=1), call("f", x=1)], [call("f", x=1), call("f", x=1)])
    assert m.score == m.s_max == 5.0


def test_no_ground_truth_call_means_answer_without_calling() -> None:
    assert toolrl_reward([], [], format_ok=True)["total"] == pytest.approx(4.0)
    r = toolrl_reward([call("f", x=1)], [], format_ok=True)
    assert r["correct"] == pytest.approx(-3.0) and r["name"] == pytest.approx(-3.0)


def test_zero_argument_calls_and_parameters_alias() -> None:
    assert toolrl_reward([call("now")], [call("now")], True)["total"] == pytest.approx(4.0)
    toolrl_style = [{"name": "f", "parameters": {"a": 1, "b": 2}}]
    assert toolrl_reward(toolrl_style, GT, True)["correct"] == pytest.approx(3.0)


def test_custom_value_comparison() -> None:
    loose = toolrl_reward([call("f", a="1", b="2")], GT, True, values_equal=lambda p, g: str(p) == str(g))
    assert loose["correct"] == pytest.approx(3.0)
    assert toolrl_reward([call("f", a="1", b="2")], GT, True)["correct"] == pytest.approx(6 * 2 / 4 - 3)


# ---- OTC -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m, n, c, expected",
    [
        (2, 2, 1.0, 1.0),  # f = n: sin(pi / 2)
        (1, 1, 1.0, 1.0),
        (0, 2, 1.0, 0.0),  # f = 0
        (4, 2, 1.0, math.sin((16 / 6) * math.pi / 4)),  # f = 2*2*4/6 = 8/3 -> sin(2 pi / 3)
        (1, 2, 1.0, math.sin((4 / 3) * math.pi / 4)),  # f = 4/3 -> sin(pi / 3)
        (0, 0, 1.0, 1.0),  # cos(0)
        (1, 0, 1.0, 0.5),  # cos(pi / 3)
        (3, 0, 2.0, math.cos(3 * math.pi / 8)),
    ],
)
def test_otc_tool_reward(m: int, n: int, c: float, expected: float) -> None:
    assert otc_tool_reward(m, n, c) == pytest.approx(expected)


def test_otc_reward_scales() -> None:
    assert otc_reward(4, 2, 1.0, alpha=0.5) == pytest.approx(0.5 * math.sqrt(3) / 2)
    assert otc_reward(4, 2, 1.0, alpha=0.5, r_correct=2.0) == pytest.approx(math.sqrt(3) / 2)
    assert otc_reward(2, 2, alpha=0.0) == 0.0


@pytest.mark.parametrize("m, n, c", [(-1, 1, 1.0), (1, -1, 1.0), (1, 0, 0.0)])
def test_otc_rejects_bad_arguments(m: int, n: int, c: float) -> None:
    with pytest.raises(ValueError):
        otc_tool_reward(m, n, c)
