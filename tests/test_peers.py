"""Peers' tasks as envs: reasoning-gym's generators with a tool, SkyRL-Gym's text envs; each trains."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

from actorlearner.core.errors import ConfigError
from actorlearner.env.checker import check_env
from envs import register_envs
from tests.conftest import train_cli

REPO = Path(__file__).resolve().parent.parent
TASKS = REPO / "configs" / "data" / "skyrl_gsm8k_sample.jsonl"
ARITHMETIC = {
    "datasets": "basic_arithmetic",
    "dataset_config": {
        "basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
    },
    "size": 200,
}

register_envs()


def _make(env_id: str, **kwargs):
    return gym.make(env_id, **kwargs).unwrapped


def _call(name: str, arguments: dict) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def test_a_reasoning_gym_task_is_scored_by_its_generator() -> None:
    env = _make("actorlearner/ReasoningGym-Calculator-v0", **ARITHMETIC)
    messages, info = env.reset(seed=3)
    assert messages[-1]["content"] == env.task["question"] and info["sub_tasks"] == ["basic_arithmetic"]
    obs, *_ = env.step(_call("calculator", {"expression": "6 * 7"}))
    assert obs[0]["content"] == "42"
    _, reward, terminated, _, info = env.step(f"<answer>{env.task['answer']}</answer>")
    assert terminated and reward == 1.0 and info["success"]
    env.reset(seed=3)
    _, reward, _, _, info = env.step("<answer>not a number</answer>")
    assert reward == 0.0 and not info["success"]


def test_reasoning_gym_splits_do_not_overlap_and_unknown_generators_fail() -> None:
    train = _make("actorlearner/ReasoningGym-Calculator-v0", **ARITHMETIC)
    test = _make("actorlearner/ReasoningGym-Calculator-v0", **ARITHMETIC, split="test")
    assert not set(train.indices["basic_arithmetic"]) & set(test.indices["basic_arithmetic"])
    with pytest.raises(ConfigError, match=r"^datasets: unknown reasoning-gym generators \['no_such'\]"):
        _make("actorlearner/ReasoningGym-Calculator-v0", datasets="no_such")


def test_the_python_variant_runs_programs_in_the_sandbox() -> None:
    env = _make("actorlearner/ReasoningGym-Python-v0", **ARITHMETIC)
    env.reset(seed=0)
    obs, *_ = env.step(_call("python", {"code": "print(6 * 7)"}))
    assert obs[0]["content"] == "42"
    obs, *_ = env.step(_call("python", {"code": "import socket\nsocket.socket()"}))
    assert "not allowed" in obs[0]["content"]


def test_each_python_env_gives_the_sandbox_its_own_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared python tool (envs.python_tir.SandboxedPython) passes each env's limits on."""
    import envs.python_tir

    seen: list[dict] = []
    monkeypatch.setattr(envs.python_tir, "program_output", lambda code, **limits: seen.append(limits) or "ok")
    peer = _make("actorlearner/ReasoningGym-Python-v0", **ARITHMETIC)
    tir = _make("actorlearner/PythonTIR-v0")
    for env in (peer, tir):
        env.reset(seed=0)
        env.step(_call("python", {"code": "print(1)"}))
    limits = [{k: v for k, v in call.items() if k != "allow_weak_sandbox"} for call in seen]
    assert limits[0] == {"cpu_time_s": 5.0, "wall_time_s": 5.0, "memory_mb": 512, "max_file_mb": 16,
                         "max_output_chars": peer.max_output_chars}  # fmt: skip
    assert limits[1] == {"cpu_time_s": 2.0, "wall_time_s": 5.0, "memory_mb": 256, "max_file_mb": 4,
                         "max_output_chars": tir.max_output_chars}  # fmt: skip


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("actorlearner/ReasoningGym-Calculator-v0", ARITHMETIC),
        ("actorlearner/SkyRLText-v0", {"tasks": str(TASKS)}),
    ],
)
def test_the_adapters_pass_the_env_checker(env_id: str, kwargs: dict) -> None:
    check_env(gym.make(env_id, **kwargs).unwrapped)


def test_a_skyrl_gsm8k_row_is_played_through_skyrl_gym() -> None:
    env = _make("actorlearner/SkyRLText-v0", tasks=str(TASKS))
    messages, info = env.reset(seed=0)
    truth = env._row["extras"]["reward_spec"]["ground_truth"]
    assert messages == env._row["prompt"] and info["task_id"] == "skyrl/gsm8k"
    obs, reward, done, truncated, info = env.step(f"It is #### {truth}")
    assert (obs, reward, done, truncated, info["success"]) == ([], 1.0, True, False, True)
    env.reset(seed=0)
    assert env.step("#### -1")[1] == 0.0


def _echo_env(**kwargs: Any) -> Any:
    """A SkyRL-Gym text env that answers each turn with a user message, as its search env does."""
    from skyrl_gym.envs.base_text_env import BaseTextEnv

    class Echo(BaseTextEnv):
        def step(self, action: str) -> Any:
            hit = "<information>found</tool_response></information>"
            return {
                "observations": [{"role": "user", "content": hit}],
                "reward": 0.0,
                "done": False,
                "metadata": {},
            }

    return Echo()


def test_skyrl_tool_results_sent_as_user_messages_are_marked_as_tool_output(tmp_path: Path) -> None:
    import skyrl_gym

    from actorlearner.env.info import TOOL_OUTPUT

    with contextlib.suppress(Exception):  # registered once per session
        skyrl_gym.register(id="actorlearner_echo", entry_point=_echo_env)
    path = tmp_path / "tasks.jsonl"
    row = {"prompt": [{"role": "user", "content": "find it"}], "env_class": "actorlearner_echo"}
    path.write_text(json.dumps(row))
    env = _make("actorlearner/SkyRLText-v0", tasks=str(path))
    env.reset(seed=0)
    obs = env.step("<search>it</search>")[0]
    hit = "<information>found</tool_response></information>"
    assert obs == [{"role": "user", "content": hit, TOOL_OUTPUT: True}]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 1 is not JSON"),
        ('{"prompt": "hi"}', "line 1 needs 'prompt' (messages) and 'env_class'"),
    ],
)
def test_a_bad_task_file_fails_with_one_line_naming_it(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"tasks: {path} {message}")):
        _make("actorlearner/SkyRLText-v0", tasks=str(path))
    with pytest.raises(ConfigError, match=r"^tasks: cannot read"):
        _make("actorlearner/SkyRLText-v0", tasks=str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize(
    ("config", "extra"),
    [
        ("configs/reasoning_gym.yaml", ()),
        ("configs/skyrl_gsm8k.yaml", ()),  # its tasks path is relative to the repository, the cwd
    ],
)
def test_the_peer_configs_train_the_tiny_model(tmp_path: Path, config: str, extra: tuple[str, ...]) -> None:
    records = train_cli(str(REPO / config), tmp_path, "peer", *extra)
    rl = [r for r in records if r.get("phase") == "rl"]
    assert len(rl) == 2 and all(r["learner/tokens"] > 0 for r in rl)
    assert any(r.get("phase") == "sft" for r in records)
