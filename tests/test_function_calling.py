from __future__ import annotations

import warnings
from collections import Counter
from typing import Any

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from actorlearner.env.parsing import format_answer, format_tool_call
from envs import register_envs
from envs.function_calling import CATEGORIES, NO_TOOL_ANSWER, FunctionCalling, is_held_out


def play(env: FunctionCalling, seed: int, policy: Any = None) -> tuple[list[str], float, dict[str, Any]]:
    """Plays an episode with ``policy(messages) -> text`` (the demonstration by default)."""
    messages, _ = env.reset(seed=seed)
    policy = policy or env.demonstration
    turns: list[str] = []
    total = 0.0
    for _ in range(env.max_turns):
        text = policy(messages)
        turns.append(text)
        obs, reward, terminated, truncated, info = env.step(text)
        assert sum(info["reward_components"].values()) == pytest.approx(reward)
        total += reward
        messages = [*messages, {"role": "assistant", "content": text}, *obs]
        if terminated or truncated:
            return turns, total, info
    raise AssertionError("episode did not end")


def episode_with(
    env: FunctionCalling, seed: int, turns: list[str]
) -> tuple[float, dict[str, Any], list[Any]]:
    """Plays the given turns (the episode must end by the last one)."""
    env.reset(seed=seed)
    total, observations = 0.0, []
    for i, text in enumerate(turns):
        obs, reward, terminated, truncated, info = env.step(text)
        assert sum(info["reward_components"].values()) == pytest.approx(reward)
        total += reward
        observations.append(obs)
        if terminated or truncated:
            assert i == len(turns) - 1
            return total, info, observations
    raise AssertionError("episode did not end")


def seed_of(env: FunctionCalling, category: str, start: int = 0) -> int:
    for seed in range(start, start + 500):
        env.reset(seed=seed)
        assert env.task is not None
        if env.task["category"] == category:
            return seed
    raise AssertionError(f"no {category} task")


# ---- tasks ---------------------------------------------------------------------------------------


def test_every_category_is_generated_and_labelled() -> None:
    env = FunctionCalling()
    seen: Counter[str] = Counter()
    for seed in range(300):
        messages, info = env.reset(seed=seed)
        assert env.task is not None
        category = env.task["category"]
        seen[category] += 1
        assert info["sub_tasks"] == [category]
        assert messages == [{"role": "user", "content": env.task["question"]}]
        assert len(messages[0]["content"]) <= 80  # a tiny model reads it
        offered = [t["function"]["name"] for t in info["tools"]]
        assert offered == env.task["tools"] and set(offered) <= set(env.tool_names)
        needed = {c["name"] for c in env.task["calls"]}
        assert needed <= set(offered)
        n = len(env.task["calls"])
        assert {"single": n == 1, "multiple": n == 1 and len(offered) == 3, "parallel": n == 2}.get(
            category, True
        )
        if category == "irrelevance":
            assert n == 0 and env.task["turns"] == []
        if category == "multi_turn":
            assert n == 2 and [len(t) for t in env.task["turns"]] == [1, 1]
    assert set(seen) == set(CATEGORIES) and min(seen.values()) > 30
    for category in CATEGORIES:
        only = FunctionCalling(categories=[category])
        for seed in range(20):
            assert only.reset(seed=seed)[1]["sub_tasks"] == [category]
    assert FunctionCalling(categories="single, parallel").categories == ("single", "parallel")


def test_determinism_under_seed() -> None:
    for seed in range(40):
        a, b = FunctionCalling(), FunctionCalling()
        b.reset(seed=seed + 1000)  # other state first must not matter
        ma, ia = a.reset(seed=seed)
        mb, ib = b.reset(seed=seed)
        assert ma == mb and ia == ib and a.task == b.task
        assert play(a, seed)[0] == play(b, seed)[0]
    ids = {FunctionCalling().reset(seed=s)[1]["prompt_id"] for s in range(50)}
    assert len(ids) > 40


def test_multi_turn_needs_the_first_result() -> None:
    env = FunctionCalling(categories=["multi_turn"])
    for seed in range(30):
        messages, _ = env.reset(seed=seed)
        assert env.task is not None
        first, second = env.task["calls"]
        obs, *_ = env.step(format_tool_call(first["name"], first["arguments"]))
        # the first tool's output appears among the second call's arguments
        assert obs[0]["content"] in {str(v) for v in second["arguments"].values()}
        assert obs[0]["content"] not in messages[0]["content"]


# ---- rewards -------------------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
def test_demonstration_reaches_the_max_reward(category: str) -> None:
    env = FunctionCalling(categories=[category])
    for seed in range(25):
        turns, total, info = play(env, seed)
        assert info["success"] is True and total == pytest.approx(4.0)
        assert info["toolrl"]["correct"] == pytest.approx(3.0) and info["toolrl"]["format"] == 1.0
        assert set(info["reward_components"]) == {"format", "name", "keys", "values"}
        assert len(turns) == {"irrelevance": 1, "multi_turn": 3}.get(category, 2)
    if category == "irrelevance":
        assert turns == [format_answer(NO_TOOL_ANSWER)]


def test_otc_component_is_optional() -> None:
    env = FunctionCalling(otc_alpha=0.5)
    for seed in range(20):
        _, total, info = play(env, seed)
        assert info["reward_components"]["otc"] == pytest.approx(0.5) and total == pytest.approx(4.5)
    seed = seed_of(env, "single")
    env.reset(seed=seed)
    assert env.task is not None
    right = format_tool_call(env.task["calls"][0]["name"], env.task["calls"][0]["arguments"])
    total, info, _ = episode_with(env, seed, [right + right, format_answer("x")])  # one call too many
    assert 0 < info["reward_components"]["otc"] < 0.5
    assert info["success"] is False


def test_wrong_and_partial_calls() -> None:
    env = FunctionCalling(categories=["single"])
    env.reset(seed=0)
    assert env.task is not None
    truth = env.task["calls"][0]
    # no call at all: format fine, correct -3
    total, info, _ = episode_with(env, 0, [format_answer("a guess")])
    assert total == pytest.approx(-2.0) and info["success"] is False
    # one wrong value: name, keys right; S_max = 2 + |args|
    wrong = dict(truth["arguments"])
    key = sorted(wrong)[0]
    wrong[key] = "nonsense" if not isinstance(wrong[key], str) else wrong[key] + "x"
    n = len(wrong)
    total, info, _ = episode_with(env, 0, [format_tool_call(truth["name"], wrong), format_answer("x")])
    expected_correct = 6 * (1 + 1 + n - 1) / (2 + n) - 3
    assert info["toolrl"]["correct"] == pytest.approx(expected_correct) and info["success"] is False
    assert info["toolrl"]["format"] == 0.0  # the tool rejected the bad argument: a format problem
    assert total == pytest.approx(expected_correct)


def test_irrelevance_calls_score_minus_three() -> None:
    env = FunctionCalling(categories=["irrelevance"])
    env.reset(seed=3)
    assert env.task is not None
    offered = env.task["tools"][0]
    args = {p: 1 for p in env._properties[offered]}
    _, info, _ = episode_with(env, 3, [format_tool_call(offered, args), format_answer("x")])
    assert info["toolrl"]["correct"] == pytest.approx(-3.0) and info["success"] is False


def test_unparsable_call_anywhere_scores_minus_three() -> None:
    env = FunctionCalling(categories=["multi_turn"])
    seed = 5
    env.reset(seed=seed)
    assert env.task is not None
    first, second = (format_tool_call(c["name"], c["arguments"]) for c in env.task["calls"])
    total, info, obs = episode_with(
        env, seed, [first, second + "<tool_call>{oops</tool_call>", format_answer("x")]
    )
    assert obs[1][-1]["content"].startswith("Error: tool call is not valid JSON")
    assert info["toolrl"]["correct"] == pytest.approx(-3.0) and total == pytest.approx(-3.0)


def test_truncation_scores_the_calls_made() -> None:
    env = FunctionCalling(categories=["single"], max_turns=2)
    env.reset(seed=1)
    assert env.task is not None
    right = format_tool_call(env.task["calls"][0]["name"], env.task["calls"][0]["arguments"])
    total, info, _ = episode_with(env, 1, [right, right])
    # two calls for one: names 1/2, the first call matches fully; no answer -> format 0
    n = len(env.task["calls"][0]["arguments"])
    assert total == pytest.approx(6 * (0.5 + 1 + n) / (2 + n) - 3)
    assert info["success"] is False and "answer" not in info["reward_components"]


# ---- malformed turns -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("<tool_call>{not json</tool_call>", "not valid JSON"),
        ('<tool_call>{"name": "launch_rocket", "arguments": {}}</tool_call>', "unknown tool"),
        (
            format_tool_call("get_weather", {"city": "Atlantis", "unit": "celsius"}),
            "",
        ),
        ('<tool_call>{"name": "add", "arguments": {"a": "x", "b": 1}}</tool_call>', ""),
        ('<tool_call>{"name": "add_days", "arguments": {"date": "soon", "days": 1}}</tool_call>', ""),
        ("<tool_call>", "unclosed"),
        ("just text", None),
    ],
)
def test_malformed_turns_give_error_observations(text: str, fragment: str | None) -> None:
    env = FunctionCalling(format_penalty=0.1)
    for seed in range(10):
        env.reset(seed=seed)
        obs, reward, terminated, truncated, info = env.step(text)
        assert not terminated and not truncated
        assert sum(info["reward_components"].values()) == pytest.approx(reward)
        assert reward == pytest.approx(-0.1)
        assert obs and all(isinstance(m["content"], str) for m in obs)
        if fragment is None:
            assert obs[-1]["role"] == "user" and info["void"]
        else:
            assert obs[0]["content"].startswith("Error:") and fragment in obs[0]["content"]


def test_tool_not_offered_is_unknown() -> None:
    env = FunctionCalling(categories=["single"])
    env.reset(seed=0)
    assert env.task is not None
    other = next(t for t in env.tool_names if t not in env.task["tools"])
    obs, *_ = env.step(format_tool_call(other, {}))
    assert obs[0]["content"].startswith(f"Error: unknown tool {other!r}")


def test_format_penalty_and_format_reward_stay_consistent() -> None:
    env = FunctionCalling(categories=["single"], format_penalty=0.25)
    seed = 2
    _, total, info = play(env, seed)
    assert total == pytest.approx(4.0)
    messages, _ = env.reset(seed=seed)
    turns = ["oops", env.demonstration(messages)]
    total, info, _ = episode_with(env, seed, [*turns, format_answer("x")])
    # the void turn costs 0.25 and loses R_format; the calls are still exact
    assert info["toolrl"]["correct"] == pytest.approx(3.0) and info["success"] is True
    assert total == pytest.approx(3.0 - 0.25)


def test_tools_compute_real_results() -> None:
    env = FunctionCalling()
    assert env.get_weather("Paris", "fahrenheit") == "64.4 fahrenheit, sunny"
    assert env.get_capital("Japan") == "Tokyo" and env.get_population("Tokyo") == "14 million"
    assert env.add(2, 3.5) == "5.5" and env.multiply(12, 7) == "84"
    assert (
        env.convert_units(10, "km", "mi") == "6.2137"
        and env.convert_units(100, "celsius", "fahrenheit") == "212"
    )
    assert env.convert_currency(100, "USD", "EUR") == "90" and env.get_price("laptop") == "999"
    assert env.search_products(300) == "headphones, watch"
    assert env.get_event_date("standup") == "2026-03-04" and env.get_weekday("2026-03-04") == "Wednesday"
    assert env.add_days("2026-03-04", 30) == "2026-04-03"
    with pytest.raises(ValueError):
        env.convert_units(1, "km", "kg")


# ---- held-out split ------------------------------------------------------------------------------


def questions(env: FunctionCalling, seeds: range) -> set[str]:
    out = set()
    for seed in seeds:
        env.reset(seed=seed)
        assert env.task is not None
        out.add(env.task["question"])
    return out


def test_held_out_split_is_disjoint_from_train() -> None:
    train = questions(FunctionCalling(split="train"), range(1500))
    test = questions(FunctionCalling(split="test"), range(500))
    assert len(train) > 700 and len(test) > 200
    assert not train & test
    assert all(is_held_out(q, 0.1) for q in test) and not any(is_held_out(q, 0.1) for q in train)
    assert questions(FunctionCalling(split="test"), range(100)) == questions(
        FunctionCalling(split="test"), range(100)
    )


# ---- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"split": "val"}, "split"),
        ({"categories": ["single", "nope"]}, "categories"),
        ({"categories": []}, "categories"),
        ({"categories": ["single", "single"]}, "categories"),
        ({"categories": 3}, "categories"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"distractors": 0}, "distractors"),
        ({"distractors": 2.5}, "distractors"),
        ({"otc_alpha": -1.0}, "otc_alpha"),
        ({"otc_c": 0.0}, "otc_c"),
        ({"max_turns": 0}, "max_turns"),
    ],
)
def test_bad_options_raise(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        FunctionCalling(**kwargs)


def test_demonstration_needs_reset() -> None:
    with pytest.raises(RuntimeError):
        FunctionCalling().demonstration([])


def test_registered_and_passes_check_env() -> None:
    register_envs()
    env = gym.make("actorlearner/FunctionCalling-v0", categories=["single", "multi_turn"])
    _, info = env.reset(seed=0)
    assert info["task_id"] == "actorlearner/FunctionCalling-v0"
    assert info["sub_tasks"][0] in ("single", "multi_turn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)


def test_final_step_reports_normalized_sub_task_scores() -> None:
    from envs.function_calling import FunctionCalling

    env = FunctionCalling()
    messages, _ = env.reset(seed=3)
    info: dict = {}
    for _ in range(env.max_turns):
        text = env.demonstration(messages)
        out, _, terminated, truncated, info = env.step(text)
        messages = [*messages, {"role": "assistant", "content": text}, *out]
        if terminated or truncated:
            break
    assert info["sub_task_scores"] == {"format": 1.0, "name": 1.0, "keys": 1.0, "values": 1.0}
    env.reset(seed=3)
    _, _, _, _, info = env.step("<answer>no idea</answer>")
    assert all(0.0 <= v <= 1.0 for v in info["sub_task_scores"].values())


def test_irrelevance_sub_task_scores_do_not_reward_a_wrong_call() -> None:
    from envs.function_calling import _sub_task_scores

    wrong = _sub_task_scores([{"name": "get_weather", "arguments": {"city": "Oslo"}}], [], 0.0)
    assert wrong["keys"] == 0.0 and wrong["values"] == 0.0
    right = _sub_task_scores([], [], 1.0)
    assert right["keys"] == 1.0 and right["values"] == 1.0
    no_args = _sub_task_scores([{"name": "now", "arguments": {}}], [{"name": "now", "arguments": {}}], 1.0)
    assert no_args["values"] == 1.0 and no_args["keys"] == 1.0  # a call without arguments, made right
