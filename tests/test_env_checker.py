"""check_env passes every built-in env and the README's, and catches envs that break the protocol."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import gymnasium
import pytest

import actorlearner
from actorlearner import EnvCheckError, ToolEnv, check_env, tool
from actorlearner.env.checker import EnvCheckWarning, check_step_result
from actorlearner.env.parsing import format_answer, format_tool_call, parse_turn
from envs import ENVS

README = Path(__file__).resolve().parents[1] / "README.md"
CORE_CHECKS = ["reset", "tools", "step", "determinism", "malformed"]


def make_builtin(env_id: str, **kwargs: Any) -> gymnasium.Env:
    """A built-in env; skipped (saying why) only while its module is not written yet."""
    module = ENVS[env_id].split(":")[0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{env_id}: module {module} does not exist yet")
    return gymnasium.make(env_id, disable_env_checker=True, **kwargs)


@pytest.mark.parametrize("env_id", list(ENVS))
def test_every_builtin_env_passes(env_id: str) -> None:
    env = make_builtin(env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnvCheckWarning)
        report = check_env(env, seeds=range(16), demo_episodes=16)
    expected = CORE_CHECKS + (["demonstration"] if hasattr(env.unwrapped, "demonstration") else [])
    assert report.checks == expected
    assert report.distinct_prompts > 1
    if "demonstration" in expected:
        assert report.demo_episodes == 16 and report.demo_successes >= 1


@pytest.mark.parametrize("env_id", [e for e in ENVS if e != "actorlearner/BFCL-v0"])  # BFCL: not a ToolEnv
def test_every_builtin_tool_env_speaks_the_python_call_format_too(env_id: str) -> None:
    env = make_builtin(env_id, parser="python_call")
    report = check_env(env, seeds=range(16), demo_episodes=16)
    assert report.checks[-1] == "demonstration" and report.demo_successes >= 1


def test_readme_example_env_passes() -> None:
    code = re.search(r"<!-- readme-example: tool-env -->\n```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README example 'tool-env' not found"
    env_part = code.group(1)[: code.group(1).index("gymnasium.register")]
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(env_part, "README:tool-env", "exec"), namespace)
    env_cls = next(
        v for v in namespace.values() if isinstance(v, type) and issubclass(v, ToolEnv) and v is not ToolEnv
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", EnvCheckWarning)
        report = check_env(env_cls())
    assert report.checks[: len(CORE_CHECKS)] == CORE_CHECKS


def test_check_env_is_exported() -> None:
    assert actorlearner.check_env is check_env and "check_env" in actorlearner.__all__


# ---- a plain gymnasium env that follows the protocol, and ways to break it --------------------------


class Plain(gymnasium.Env):
    """Not a ToolEnv: say the secret number, which the `reveal` tool tells you."""

    TOOLS: list[dict[str, Any]] = [  # noqa: RUF012
        {
            "type": "function",
            "function": {
                "name": "reveal",
                "description": "Says the secret number.",
                "parameters": {
                    "type": "object",
                    "properties": {"loud": {"type": "boolean", "description": "Shout it."}},
                    "required": ["loud"],
                },
            },
        }
    ]

    def __init__(self) -> None:
        self.secret = 0

    def tools(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.TOOLS)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.secret = int(self.np_random.integers(1000))
        info = {"tools": self.tools(), "prompt_id": f"plain:{self.secret}", "sub_tasks": [], "task_id": "p"}
        return [{"role": "user", "content": "Say the secret number."}], info

    def step(self, text):
        turn = parse_turn(text)
        records, messages = [], []
        for call in turn.calls:
            ok = call.error is None and call.name == "reveal" and "loud" in call.arguments
            error = None if ok else call.error or f"cannot call {call.name!r} with {call.arguments}"
            records.append({"name": call.name, "arguments": call.arguments, "ok": ok, "error": error})
            messages.append({"role": "tool", "content": str(self.secret) if ok else f"Error: {error}"})
        if turn.void or (turn.errors and not messages):
            messages.append({"role": "user", "content": "Call reveal or answer in <answer> tags."})
        components = {
            "format": -0.1 if turn.errors or turn.void or not all(r["ok"] for r in records) else 0.0
        }
        success = turn.final_answer == str(self.secret)
        if turn.final_answer is not None:
            components["answer"] = float(success)
        info = {"tool_calls": records, "final_answer": turn.final_answer, "reward_components": components}
        info["success"] = success
        return messages, sum(components.values()), turn.final_answer is not None, False, info


def test_a_plain_gymnasium_env_passes() -> None:
    report = check_env(Plain())
    assert report.checks == CORE_CHECKS and report.warnings == []


def assert_catches(env: gymnasium.Env, check: str, fragment: str, **kwargs: Any) -> EnvCheckError:
    with pytest.raises(EnvCheckError) as caught:
        check_env(env, **kwargs)
    assert caught.value.check == check, caught.value
    assert fragment in str(caught.value), caught.value
    assert str(caught.value).startswith(f"check_env [{check}]: ")
    return caught.value


class CountingReset(Plain):
    """Non-deterministic: the task depends on how many resets came before."""

    counter = itertools.count()

    def reset(self, *, seed=None, options=None):
        messages, info = super().reset(seed=seed, options=options)
        self.secret += next(self.counter)
        info["prompt_id"] = f"plain:{self.secret}"
        return messages, info


def test_catches_a_non_deterministic_reset() -> None:
    assert_catches(CountingReset(), "determinism", "another prompt_id")


class Drifting(Plain):
    """Deterministic per instance, but each instance draws its own offset (G episodes would differ)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.offset = int.from_bytes(os.urandom(4), "big")

    def reset(self, *, seed=None, options=None):
        messages, info = super().reset(seed=seed, options=options)
        messages[0]["content"] += f" ({self.offset})"
        return messages, info


def test_catches_instances_that_disagree_on_a_seed() -> None:
    gymnasium.register("test/Drifting-v0", entry_point=Drifting)
    try:
        env = gymnasium.make("test/Drifting-v0", disable_env_checker=True)
        assert_catches(env, "determinism", "fresh instance")
    finally:
        gymnasium.registry.pop("test/Drifting-v0")


class WrongReward(Plain):
    def step(self, text):
        messages, reward, terminated, truncated, info = super().step(text)
        return messages, reward + 0.5, terminated, truncated, info


def test_catches_a_reward_that_is_not_the_sum_of_its_components() -> None:
    assert_catches(WrongReward(), "step", "!= sum of reward_components")


class RaisesOnMalformed(Plain):
    def step(self, text):
        if "<tool_call>" in text:
            json.loads(text.split("<tool_call>")[1].split("</tool_call>")[0])
        return super().step(text)


def test_catches_a_step_that_raises_on_malformed_text() -> None:
    error = assert_catches(RaisesOnMalformed(), "malformed", "raised JSONDecodeError")
    assert "step(<broken JSON>)" in str(error)


class SilentOnMalformed(Plain):
    def step(self, text):
        messages, reward, terminated, truncated, info = super().step(text)
        return [m for m in messages if m["role"] != "user"], reward, terminated, truncated, info


def test_catches_a_malformed_turn_without_an_error_observation() -> None:
    assert_catches(SilentOnMalformed(), "malformed", "the empty turn got no error observation")


class RewardsGarbage(Plain):
    def step(self, text):
        messages, _, terminated, truncated, info = super().step(text)
        info["reward_components"]["format"] = 1.0
        return messages, sum(info["reward_components"].values()), terminated, truncated, info


def test_catches_a_positive_format_component_for_unparsable_text() -> None:
    assert_catches(RewardsGarbage(), "malformed", "positive format component")


def _with_tools(tools: list[dict[str, Any]]) -> Plain:
    env = Plain()
    env.tools = lambda: copy.deepcopy(tools)  # type: ignore[method-assign]
    return env


def _params(**overrides: Any) -> list[dict[str, Any]]:
    tools = copy.deepcopy(Plain.TOOLS)
    tools[0]["function"]["parameters"].update(overrides)
    return tools


@pytest.mark.parametrize(
    "tools, fragment",
    [
        (_params(properties={"loud": {"type": "strnig"}}), "not a valid JSON Schema"),
        (_params(required="loud"), "'required' must be a list"),
        (_params(required=["loud", "quiet"]), "['quiet'] are not properties"),
        (_params(type="array"), "must be an object schema"),
        ([Plain.TOOLS[0]["function"]], "OpenAI format"),
        (Plain.TOOLS * 2, "appear twice"),
        ([{"type": "function", "function": {"name": ""}}], "'name' string"),
        (_params(**{"x-meta": object()}), "not JSON-serializable"),
    ],
)
def test_catches_invalid_tool_schemas(tools: list[dict[str, Any]], fragment: str) -> None:
    assert_catches(_with_tools(tools), "tools", fragment)


class NoPromptId(Plain):
    def reset(self, *, seed=None, options=None):
        messages, info = super().reset(seed=seed, options=options)
        del info["prompt_id"]
        return messages, info


def test_catches_a_reset_without_prompt_id() -> None:
    assert_catches(NoPromptId(), "reset", "info['prompt_id'] must be a str")


class OnePrompt(Plain):
    def reset(self, *, seed=None, options=None):
        messages, info = super().reset(seed=seed, options=options)
        self.secret = 7
        info["prompt_id"] = "always-the-same"
        return messages, info


def test_warns_when_every_seed_gives_the_same_prompt() -> None:
    with pytest.warns(EnvCheckWarning, match="same prompt_id"):
        report = check_env(OnePrompt())
    assert report.distinct_prompts == 1 and any("same prompt_id" in w for w in report.warnings)


def test_needs_two_seeds() -> None:
    with pytest.raises(ValueError, match="two distinct seeds"):
        check_env(Plain(), seeds=[3, 3])


# ---- demonstrations -----------------------------------------------------------------------------


class Echo(ToolEnv):
    """Repeat the word the `word` tool gives; demonstrations in the env's own format."""

    max_turns = 6

    @tool
    def word(self) -> str:
        """Tells the word."""
        assert self.task is not None
        return self.task["word"]

    def sample_task(self, rng):
        return {"word": str(rng.choice(["apple", "river", "stone", "cloud"]))}

    def prompt_messages(self, task):
        return [{"role": "user", "content": "Say the word."}]

    def score_answer(self, task, answer):
        return {"answer": float(answer == task["word"])}, answer == task["word"]

    def demonstration(self, messages):
        if messages[-1]["role"] == "tool":
            return self.format_answer(messages[-1]["content"])
        return self.format_call("word", {})


@pytest.mark.parametrize("parser", ["json_tags", "python_call"])
def test_a_demonstration_in_the_env_format_passes(parser: str) -> None:
    report = check_env(Echo(parser=parser))
    assert report.checks == [*CORE_CHECKS, "demonstration"]
    assert report.demo_successes == report.demo_episodes == 8


class JsonDemoOnly(Echo):
    def demonstration(self, messages):
        if messages[-1]["role"] == "tool":
            return format_answer(messages[-1]["content"])
        return format_tool_call("word", {})  # always json_tags, whatever the env's parser


def test_catches_a_demonstration_that_ignores_the_env_parser() -> None:
    check_env(JsonDemoOnly())
    error = assert_catches(JsonDemoOnly(parser="python_call"), "demonstration", "does not parse")
    assert "env.format_call" in str(error)


class Endless(Echo):
    max_turns = 100

    def demonstration(self, messages):
        return self.format_call("word", {})


def test_catches_a_demonstration_that_never_ends() -> None:
    assert_catches(Endless(), "demonstration", "did not end the episode within 5 turns", max_demo_turns=5)


class WrongDemo(Echo):
    def demonstration(self, messages):
        return self.format_answer("banana")


def test_warns_when_no_demonstration_succeeds() -> None:
    with pytest.warns(EnvCheckWarning, match="none of 8 demonstrated episodes succeeded"):
        check_env(WrongDemo())


def test_check_step_result_alone() -> None:
    env = Plain()
    env.reset(seed=0)
    check_step_result(env.step("<answer>1</answer>"))
    with pytest.raises(EnvCheckError, match=r"\[step\].*5-tuple"):
        check_step_result(([], 0.0, False, False))
    with pytest.raises(EnvCheckError, match=r"info\['final_answer'\] must be a str or None, got 3"):
        check_step_result(
            ([], 0.0, True, False, {"tool_calls": [], "final_answer": 3, "reward_components": {}})
        )


GOOD_CALL = {"name": "reveal", "arguments": {"loud": True}, "ok": True, "error": None, "output": "7"}


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"tool_calls": None}, "info['tool_calls'] must be a list, got None"),
        ({"tool_calls": [{**GOOD_CALL, "ok": "yes"}]}, "info['tool_calls'][0]['ok'] must be a bool"),
        ({"tool_calls": [{"name": "reveal", "ok": True}]}, "info['tool_calls'][0] has no 'arguments'"),
        ({"tool_calls": [{**GOOD_CALL, "output": 7}]}, "['output'] must be a str or None, got 7"),
        ({"tool_calls": [{**GOOD_CALL, "ok": False}]}, "info['tool_calls'][0] failed without an 'error'"),
        ({"reward_components": {"answer": "1"}}, "['reward_components']['answer'] must be a finite float"),
        ({"reward_components": {"answer": math.nan}}, "must be a finite float, got nan"),
        ({"void": 1}, "info['void'] must be a bool, got 1"),
        ({"turn": True}, "info['turn'] must be an int, got True"),
        ({"format_errors": ["ok", 3]}, "info['format_errors'][1] must be a str"),
        ({"sub_task_scores": {"name": None}}, "info['sub_task_scores']['name'] must be a finite float"),
        ({"env_error": None}, "info['env_error'] must be a str, got None"),
    ],
)
def test_check_step_result_follows_the_step_info_annotations(changes: dict[str, Any], fragment: str) -> None:
    info = {"tool_calls": [GOOD_CALL], "final_answer": None, "reward_components": {"answer": 0.0}}
    info.update(changes)
    with pytest.raises(EnvCheckError) as caught:
        check_step_result(([], 0.0, False, False, info))
    assert fragment in str(caught.value)


def test_check_step_result_ignores_keys_the_env_adds() -> None:
    info = {"tool_calls": [], "final_answer": "1", "reward_components": {}, "toolrl": object()}
    check_step_result(([], 0.0, True, False, info))


class BadSubTasks(Plain):
    def reset(self, *, seed=None, options=None):
        messages, info = super().reset(seed=seed, options=options)
        info["sub_tasks"] = ["fine", 3]
        return messages, info


def test_reset_info_follows_the_step_info_annotations() -> None:
    assert_catches(BadSubTasks(), "reset", "info['sub_tasks'][1] must be a str, got 3")
