from __future__ import annotations

import json
import subprocess
import sys
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from actorlearner.env.parsing import format_tool_call, parse_turn
from envs import register_envs
from envs.calculator import Calculator, format_number, is_held_out, safe_eval

# ---- the safe evaluator --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression, value",
    [
        ("37 * 52", 1924),
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("-5 + +2", -3),
        ("7 // 2", 3),
        ("7 % 4", 3),
        ("2 ** 10", 1024),
        ("7 / 2", 3.5),
        ("  10 - 20  ", -10),
        ("1.5 * 2", 3.0),
        ("2 ** -1", 0.5),
        ("(" * 99 + "1" + ")" * 99, 1),
        ("-" * 199 + "1", -1),
    ],
)
def test_safe_eval_arithmetic(expression: str, value: float) -> None:
    assert safe_eval(expression) == value


@pytest.mark.parametrize(
    "expression, fragment",
    [
        ("__import__('os')", "unsupported"),
        ("__import__('os').system('echo hi')", "unsupported"),
        ("open('/etc/passwd')", "unsupported"),
        ("x + 1", "unsupported"),
        ("(1).__class__", "unsupported"),
        ("[1, 2]", "unsupported"),
        ("'a' * 3", "unsupported"),
        ("lambda: 1", "unsupported"),
        ("1 if 1 else 2", "unsupported"),
        ("1 < 2", "unsupported"),
        ("True + 1", "unsupported"),
        ("1j * 1j", "unsupported"),
        ("9**9**9", "exponent"),
        ("10 ** 60", "too large"),
        ("2 ** 0.5 ** 1000", "exponent"),
        ("2.0 ** 64 * 2.0 ** 64", "too large"),
        ("99999999999 * 99999999999", "too large"),
        ("1" * 30, "too large"),
        ("1e308 * 10", "too large"),
        ("1e-300 * 1e-300 + 1e300 * 1e-10", "too large"),
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("1 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("(-8) ** 0.5", "complex"),
        ("", "invalid expression"),
        ("1 +", "invalid expression"),
        ("(" * 150 + "1" + ")" * 150, "longer than"),
        ("1 + " * 100 + "1", "longer than"),
        ("1\x00", "invalid expression"),
    ],
)
def test_safe_eval_rejects(expression: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        safe_eval(expression)


def test_safe_eval_rejects_non_strings() -> None:
    with pytest.raises(ValueError):
        safe_eval(5)  # type: ignore[arg-type]


def test_format_number() -> None:
    assert format_number(1924) == "1924"
    assert format_number(12.0) == "12"
    assert format_number(-3.0) == "-3"
    assert format_number(3.5) == "3.5"
    assert format_number(1 / 3) == "0.333333333333"


# ---- the env -------------------------------------------------------------------------------------


def call(expression: str) -> str:
    return format_tool_call("calculator", {"expression": expression})


def test_prompt_and_info() -> None:
    env = Calculator()
    messages, info = env.reset(seed=0)
    assert env.task is not None
    a, op, b = env.task["a"], env.task["op"], env.task["b"]
    assert messages == [{"role": "user", "content": f"What is {a} {op} {b}?"}]
    assert 1 <= a <= 99 and 1 <= b <= 99 and op in "+-*"
    assert info["sub_tasks"] == [{"+": "add", "-": "sub", "*": "mul"}[op]]
    assert [t["function"]["name"] for t in info["tools"]] == ["calculator"]
    assert info["tools"][0]["function"]["parameters"]["required"] == ["expression"]
    assert info["task_id"] == "Calculator"


def true_value(env: Calculator) -> int:
    assert env.task is not None
    return int(safe_eval(f"{env.task['a']} {env.task['op']} {env.task['b']}"))


@pytest.mark.parametrize("answer_format", ["{}", " {} ", "\n{}\n", "+{}"])
def test_correct_answer_scores_one(answer_format: str) -> None:
    for seed in range(20):
        env = Calculator()
        env.reset(seed=seed)
        value = true_value(env)
        if answer_format == "+{}" and value < 0:
            continue
        _, reward, terminated, _, info = env.step(f"<answer>{answer_format.format(value)}</answer>")
        assert terminated and reward == 1.0 and info["success"] is True
        assert info["reward_components"] == {"format": 0.0, "answer": 1.0}


@pytest.mark.parametrize("wrong", ["{v1}", "{v}.0", "{v} apples", "", "seven", "9" * 40])
def test_wrong_answer_scores_zero(wrong: str) -> None:
    env = Calculator()
    env.reset(seed=1)
    v = true_value(env)
    _, reward, terminated, _, info = env.step(f"<answer>{wrong.format(v=v, v1=v + 1)}</answer>")
    assert terminated and reward == 0.0 and info["success"] is False


def test_calculator_tool_through_step() -> None:
    env = Calculator()
    env.reset(seed=0)
    obs, reward, *_, info = env.step(call("37 * 52"))
    assert obs == [{"role": "tool", "name": "calculator", "content": "1924"}]
    assert reward == 0.0 and info["tool_calls"][0]["ok"]
    obs, reward, *_, info = env.step(call("__import__('os').system('true')"))
    assert obs[0]["content"].startswith("Error: calculator: unsupported syntax")
    assert reward == pytest.approx(-env.format_penalty)
    assert info["tool_calls"][0]["ok"] is False


def play_demonstration(env: Calculator, seed: int) -> tuple[list[str], float, dict[str, Any]]:
    messages, _ = env.reset(seed=seed)
    turns: list[str] = []
    total = 0.0
    for _ in range(env.max_turns):
        text = env.demonstration(messages)
        turns.append(text)
        obs, reward, terminated, truncated, info = env.step(text)
        total += reward
        messages = [*messages, {"role": "assistant", "content": text}, *obs]
        if terminated or truncated:
            return turns, total, info
    raise AssertionError("episode did not end")


def test_demonstration_with_tool_succeeds() -> None:
    env = Calculator(ops="+-*/")
    used_tool = 0
    for seed in range(60):
        turns, total, info = play_demonstration(env, seed)
        if len(turns) == 2:
            used_tool += 1
            assert env.task is not None
            a, op, b = env.task["a"], env.task["op"], env.task["b"]
            assert turns[0] == (
                "<tool_call>"
                + json.dumps({"name": "calculator", "arguments": {"expression": f"{a} {op} {b}"}})
                + "</tool_call>"
            )
            assert turns[1] == f"<answer>{true_value(env)}</answer>"
            assert info["success"] is True and total == 1.0
        else:
            assert len(turns) == 1 and parse_turn(turns[0]).final_answer is not None
            assert info["success"] is False and total == 0.0  # the guess is deliberately wrong
    assert 10 < used_tool < 40  # demo_tool_prob = 0.4


def test_demo_tool_prob_extremes() -> None:
    always, never = Calculator(demo_tool_prob=1.0), Calculator(demo_tool_prob=0.0)
    for seed in range(10):
        assert play_demonstration(always, seed)[2]["success"]
        assert len(play_demonstration(never, seed)[0]) == 1


def test_demonstration_needs_reset() -> None:
    with pytest.raises(RuntimeError):
        Calculator().demonstration([])


def test_determinism_under_seed() -> None:
    for seed in range(30):
        a, b = Calculator(), Calculator()
        b.reset(seed=seed + 1000)  # other state first must not matter
        ma, ia = a.reset(seed=seed)
        mb, ib = b.reset(seed=seed)
        assert ma == mb and ia == ib and a.task == b.task
        assert a.demonstration(ma) == b.demonstration(mb)
        assert play_demonstration(a, seed)[0] == play_demonstration(b, seed)[0]


# ---- held-out split ------------------------------------------------------------------------------


def problems(env: Calculator, seeds: range) -> set[tuple[int, str, int]]:
    out = set()
    for seed in seeds:
        env.reset(seed=seed)
        assert env.task is not None
        out.add((env.task["a"], env.task["op"], env.task["b"]))
    return out


def test_held_out_split_is_disjoint_from_train() -> None:
    train = problems(Calculator(split="train"), range(3000))
    test = problems(Calculator(split="test"), range(1000))
    assert len(train) > 2000 and len(test) > 500
    assert not train & test
    assert all(is_held_out(a, op, b, 0.1) for a, op, b in test)
    assert not any(is_held_out(a, op, b, 0.1) for a, op, b in train)


def test_held_out_fraction_is_about_right() -> None:
    held = [is_held_out(a, op, b, 0.1) for a in range(1, 100) for b in range(1, 100) for op in "+-*"]
    assert 0.08 < float(np.mean(held)) < 0.12


def test_test_split_is_deterministic() -> None:
    assert problems(Calculator(split="test"), range(200)) == problems(Calculator(split="test"), range(200))
    env = Calculator(split="test")
    first = [env.reset(seed=s)[0] for s in range(50)]
    assert first == [Calculator(split="test").reset(seed=s)[0] for s in range(50)]


# ---- configuration -------------------------------------------------------------------------------


def test_options_change_the_tasks() -> None:
    env = Calculator(max_operand=5, ops="-")
    for a, op, b in problems(env, range(100)):
        assert op == "-" and 1 <= a <= 5 and 1 <= b <= 5
    for a, _, b in problems(Calculator(ops="/"), range(100)):
        assert a % b == 0 and 1 <= a <= 99


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"split": "val"}, "split"),
        ({"ops": "^"}, "ops"),
        ({"ops": ""}, "ops"),
        ({"ops": "++"}, "ops"),
        ({"max_operand": 0}, "max_operand"),
        ({"max_operand": 2.5}, "max_operand"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"demo_tool_prob": 1.5}, "demo_tool_prob"),
        ({"max_turns": 0}, "max_turns"),
        ({"max_operand": 1, "ops": "+", "split": "test"}, "split"),
    ],
)
def test_bad_options_raise(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Calculator(**kwargs)


def test_unknown_option_raises() -> None:
    with pytest.raises(TypeError):
        Calculator(max_operands=5)  # type: ignore[call-arg]


# ---- gymnasium registration ----------------------------------------------------------------------


def test_registered_and_passes_check_env() -> None:
    register_envs()
    register_envs()  # idempotent
    env = gym.make("actorlearner/Calculator-v0", max_operand=9)
    messages, info = env.reset(seed=0)
    assert info["task_id"] == "actorlearner/Calculator-v0"
    assert messages[0]["content"].startswith("What is ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)


def test_model_text_that_python_warns_about_prints_nothing() -> None:
    """``12is 3`` parses with a SyntaxWarning; a runner would print it for every such turn."""
    code = (
        "from envs.calculator import safe_eval\n"
        "from actorlearner.env.parsing import parse_python_call\n"
        "for text in ['12is 3', '\"\\\\d\"']:\n"
        "    try:\n        safe_eval(text)\n    except ValueError:\n        pass\n"
        "parse_python_call('<tool_call>f(x=1if 2 else 3)</tool_call>')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr
