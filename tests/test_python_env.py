"""PythonTIR: word problems solved with the sandboxed ``python`` tool, through gymnasium.make."""

from __future__ import annotations

import json
import math
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from actorlearner.env.parsing import format_answer, format_tool_call
from actorlearner.models.tiny import corpus_words, env_corpus
from envs import register_envs, sandbox
from envs.python_tir import TEMPLATES, PythonTIR, answer_of, is_held_out, program_of
from tests.conftest import train_cli

ENV_ID = "actorlearner/PythonTIR-v0"
register_envs()
if ENV_ID not in gym.registry:  # until the id is in envs.ENVS
    gym.register(id=ENV_ID, entry_point="envs.python_tir:PythonTIR")

FAST = {"cpu_time_s": 1, "wall_time_s": 3}


def make(**kwargs: Any) -> PythonTIR:
    env = gym.make(ENV_ID, disable_env_checker=True, **{**FAST, **kwargs})
    assert isinstance(env.unwrapped, PythonTIR)
    return env.unwrapped


def play_demonstration(env: PythonTIR, seed: int) -> tuple[list[str], float, dict[str, Any]]:
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


def call(code: str) -> str:
    return format_tool_call("python", {"code": code})


# ---- tasks and demonstrations --------------------------------------------------------------------


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_demonstration_with_the_tool_succeeds_on_every_template(template: str) -> None:
    env = make(templates=[template], demo_tool_prob=1.0)
    for seed in range(3):
        turns, total, info = play_demonstration(env, seed)
        assert len(turns) == 2 and turns[0].startswith("<tool_call>") and turns[1].startswith("<answer>")
        assert (
            info["success"] and total == 1.0 and info["reward_components"] == {"format": 0.0, "answer": 1.0}
        )
        assert env.task is not None and turns[1] == format_answer(str(answer_of(env.task)))
        assert env.task_labels(env.task) == [template]


def test_demonstration_without_the_tool_guesses_wrong() -> None:
    env = make(demo_tool_prob=0.0)
    for seed in range(20):
        turns, total, info = play_demonstration(env, seed)
        assert len(turns) == 1 and turns[0].startswith("<answer>")
        assert not info["success"] and total == 0.0


def test_demo_tool_prob_mixes_both() -> None:
    env = make(demo_tool_prob=0.5)
    first_turns = []
    for seed in range(40):
        messages, _ = env.reset(seed=seed)
        first_turns.append(env.demonstration(messages))
    assert 8 < sum(t.startswith("<tool_call>") for t in first_turns) < 32


def test_programs_are_one_line_and_print_the_answer() -> None:
    env = make()
    for seed in range(50):
        env.reset(seed=seed)
        assert env.task is not None
        program = program_of(env.task)
        assert "\n" not in program and '"' not in program and "print(" in program
        assert len(program) < 90


def test_prompt_and_info() -> None:
    env = make()
    messages, info = env.reset(seed=0)
    assert len(messages) == 1 and messages[0]["role"] == "user" and messages[0]["content"].endswith("?")
    assert info["task_id"] == ENV_ID and [t["function"]["name"] for t in info["tools"]] == ["python"]
    assert info["sub_tasks"] == [env.task["template"]] and info["prompt_id"].startswith("PythonTIR:")


# ---- scoring -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["{}", " {} ", "+{}"])
def test_the_right_answer_scores_one(shape: str) -> None:
    env = make()
    env.reset(seed=3)
    assert env.task is not None
    _, reward, terminated, _, info = env.step(format_answer(shape.format(answer_of(env.task))))
    assert terminated and info["success"] and reward == 1.0


@pytest.mark.parametrize("wrong", ["{plus_one}", "{minus_one}", "", "twelve", "{value}.5", "{value} dollars"])
def test_a_wrong_answer_scores_zero(wrong: str) -> None:
    env = make()
    env.reset(seed=3)
    assert env.task is not None
    value = answer_of(env.task)
    text = wrong.format(value=value, plus_one=value + 1, minus_one=value - 1)
    _, reward, terminated, _, info = env.step(format_answer(text))
    assert terminated and not info["success"] and reward == 0.0 and info["reward_components"]["answer"] == 0.0


# ---- the tool ------------------------------------------------------------------------------------


def test_the_tool_returns_what_the_program_prints() -> None:
    env = make()
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(call("print(37 * 52)\nprint('done')"))
    assert obs[0] == {"role": "tool", "name": "python", "content": "1924\ndone"}
    assert reward == 0.0 and not terminated and not truncated and info["tool_calls"][0]["ok"]
    obs, *_ = env.step(call("x = 5"))
    assert obs[0]["content"] == "(no output: print the result)"


@pytest.mark.parametrize(
    "code, fragment, wall_time_s",
    [
        ("print(", "SyntaxError", 3),
        ("print(1 / 0)", "ZeroDivisionError: division by zero", 3),
        ("while True: pass", "CPU time limit (1 s) exceeded", 10),  # room for the CPU limit to come first
        ("import time\ntime.sleep(60)", "wall time limit (1.5 s) exceeded", 1.5),
        ("x = bytearray(10**10)", "memory limit (256 MB) exceeded", 3),
        (
            "open('/tmp/escape_python_env', 'w')",
            "PermissionError: sandbox: writing /tmp/escape_python_env",
            3,
        ),
        ("import socket\nsocket.socket()", "sandbox: socket.__new__ is not allowed", 3),
        ("while True: print('spam' * 100)", "output limit (2000 bytes) exceeded", 3),
    ],
    ids=["syntax", "exception", "cpu", "wall", "memory", "file", "network", "output"],
)
def test_a_failing_program_is_an_error_observation_and_the_episode_continues(
    code: str, fragment: str, wall_time_s: float
) -> None:
    env = make(wall_time_s=wall_time_s)
    env.reset(seed=0)
    assert env.task is not None
    obs, reward, terminated, truncated, info = env.step(call(code))
    assert obs[0]["role"] == "tool" and obs[0]["content"].startswith("Error: python: ")
    assert fragment in obs[0]["content"] and len(obs[0]["content"]) < 1000
    assert not terminated and not truncated and not info["tool_calls"][0]["ok"]
    assert reward == -env.format_penalty  # a failed call costs the format penalty
    assert not os.path.exists("/tmp/escape_python_env")
    _, reward, terminated, _, info = env.step(format_answer(str(answer_of(env.task))))
    assert terminated and info["success"]


def test_a_program_waiting_for_a_sandbox_slot_does_not_time_out() -> None:
    """The sandbox enforces the wall time; an outer per-call timeout would also count the slot wait."""
    assert PythonTIR.tool_timeout_s == math.inf
    env = make()
    assert env.tool_timeout_s == math.inf
    env.reset(seed=0)
    for _ in range(sandbox.MAX_CONCURRENT_RUNS):  # the machine is busy: every slot is taken
        sandbox._SLOTS.acquire()
    release = threading.Timer(
        1.0, lambda: [sandbox._SLOTS.release() for _ in range(sandbox.MAX_CONCURRENT_RUNS)]
    )
    release.start()
    try:
        env.tool_timeout_s = 0.5  # what a finite timeout shorter than the wait does ...
        obs, *_ = env.step(call("print(6 * 7)"))
        assert obs[0]["content"] == "Error: python timed out after 0.5 s"
        env.tool_timeout_s = math.inf  # ... and what the default does
        obs, *_ = env.step(call("print(6 * 7)"))
        assert obs[0]["content"] == "42"
    finally:
        release.join()


# ---- seeds, splits, knobs ------------------------------------------------------------------------


def test_determinism_under_seed() -> None:
    for seed in range(20):
        a, b = make(), make()
        b.reset(seed=seed + 1000)  # other state first must not matter
        ma, ia = a.reset(seed=seed)
        mb, ib = b.reset(seed=seed)
        assert ma == mb and ia["prompt_id"] == ib["prompt_id"] and a.task == b.task
        assert a.demonstration(ma) == b.demonstration(mb)


def _tasks(env: PythonTIR, seeds: range) -> set[str]:
    found = set()
    for seed in seeds:
        env.reset(seed=seed)
        found.add(json.dumps(env.task, sort_keys=True))
    return found


def test_held_out_split_is_disjoint_from_train() -> None:
    train, test = _tasks(make(split="train"), range(2000)), _tasks(make(split="test"), range(500))
    assert len(train) > 1500 and len(test) > 400
    assert not train & test
    assert all(is_held_out(json.loads(t), 0.1) for t in test)
    assert not any(is_held_out(json.loads(t), 0.1) for t in train)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"templates": ["nope"]}, "templates"),
        ({"templates": []}, "templates"),
        ({"templates": "shopping"}, "templates"),
        ({"templates": ["tank", "tank"]}, "templates"),
        ({"split": "val"}, "split"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"demo_tool_prob": 1.5}, "demo_tool_prob"),
        ({"cpu_time_s": 0}, "cpu_time_s"),
        ({"wall_time_s": -1}, "wall_time_s"),
        ({"memory_mb": 0.5}, "memory_mb"),
        ({"max_file_mb": 0}, "max_file_mb"),
        ({"max_turns": 0}, "max_turns"),
    ],
)
def test_bad_options_raise(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        PythonTIR(**kwargs)


def test_registered_and_passes_check_env() -> None:
    env = gym.make(ENV_ID, **FAST)
    _, info = env.reset(seed=0)
    assert info["task_id"] == ENV_ID
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped, skip_render_check=True)


def test_the_tiny_model_vocabulary_covers_the_programs() -> None:
    words = set(corpus_words(env_corpus(lambda: gym.make(ENV_ID, **FAST), num_episodes=48)))
    assert {"print", "sum", "for", "in", "range", "if", "or", "import", "math", "comb", "int", "str"} <= words
    assert {"python", "code"} <= words


# ---- training from the command line --------------------------------------------------------------


@pytest.mark.slow
def test_train_from_the_command_line(tmp_path: Path) -> None:
    rows = train_cli("configs/python.yaml", tmp_path, "python")
    assert json.loads((tmp_path / "python" / "summary.json").read_text())["iterations"] == 2
    rl_steps = [row for row in rows if row.get("phase") == "rl"]
    assert [row["step"] for row in rl_steps] == [1, 2] and all("learner/loss" in row for row in rl_steps)
    measured = [row for row in rl_steps if "rollout/episodes" in row]  # iterations groups arrived in
    assert measured
    for row in measured:  # the rate is over the episodes that arrived: a count / episodes
        episodes, rate = row["rollout/episodes"], row["rollout/tool_use_rate"]
        calls = row["rollout/tool_calls_per_episode"]
        assert episodes >= 4 and episodes % 4 == 0  # whole groups of 4
        assert 0.0 <= rate <= 1.0 and rate * episodes == pytest.approx(round(rate * episodes))
        assert rate <= calls and (rate == 0.0) == (calls == 0.0)  # a tool-using episode made >= 1 call
