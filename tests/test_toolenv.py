from __future__ import annotations

import copy
import math
import pickle
import threading
import time
import warnings
from typing import Any

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

from actorlearner.env.parsing import ParsedTurn, format_answer, format_tool_call
from actorlearner.env.toolenv import ChatMessages, ToolDefinitionError, ToolEnv, tool


class Toy(ToolEnv):
    """Say the number back; tools to exercise every failure path."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[str] = []

    @tool
    def add(self, a: int, b: int) -> str:
        """Adds two integers.

        Args:
            a: First addend.
            b: Second addend.
        """
        self.calls.append("add")
        return str(a + b)

    @tool
    def explode(self, why: str) -> str:
        """Always fails.

        Args:
            why: Text of the exception.
        """
        raise RuntimeError(why)

    @tool
    def nothing(self) -> None:
        """Returns no output."""
        return None

    @tool
    def echo(self, text: str, times: int = 1) -> Any:
        """Echoes text, as JSON.

        Args:
            text: What to echo.
            times: How many copies.
        """
        return {"echo": text * times}

    def helper(self, x: int) -> int:
        return x

    def sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"x": int(rng.integers(0, 10**6))}

    def prompt_messages(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"role": "user", "content": f"Say {task['x']}"}]

    def score_answer(self, task: dict[str, Any], answer: str) -> tuple[dict[str, float], bool]:
        ok = answer == str(task["x"])
        return {"answer": float(ok)}, ok

    def task_labels(self, task: dict[str, Any]) -> list[str]:
        return ["even" if task["x"] % 2 == 0 else "odd"]


def started(**kwargs: Any) -> Toy:
    env = Toy(**kwargs)
    env.reset(seed=0)
    return env


def assert_consistent(reward: float, info: dict[str, Any]) -> None:
    assert reward == pytest.approx(sum(info["reward_components"].values()), abs=1e-12)
    for key in ("tool_calls", "final_answer", "reward_components", "success", "void"):
        assert key in info
    for record in info["tool_calls"]:
        assert set(record) == {"name", "arguments", "ok", "error", "output"}
        assert (record["error"] is None) == record["ok"]


# ---- schemas -------------------------------------------------------------------------------------


def test_tools_are_the_marked_methods() -> None:
    env = Toy()
    assert env.tool_names == ["add", "echo", "explode", "nothing"]


def test_schema_from_signature_and_docstring() -> None:
    schema = next(s for s in Toy().tool_schemas if s["function"]["name"] == "add")
    assert schema["type"] == "function"
    fn = schema["function"]
    assert fn["description"] == "Adds two integers."
    assert fn["parameters"]["properties"] == {
        "a": {"type": "integer", "description": "First addend."},
        "b": {"type": "integer", "description": "Second addend."},
    }
    assert fn["parameters"]["required"] == ["a", "b"]
    echo = next(s for s in Toy().tool_schemas if s["function"]["name"] == "echo")
    assert echo["function"]["parameters"]["required"] == ["text"]


def test_reset_info_carries_the_schemas_and_they_are_copies() -> None:
    env = Toy()
    _, info = env.reset(seed=1)
    assert info["tools"] == env.tool_schemas
    info["tools"][0]["function"]["name"] = "mutated"
    assert env.tool_schemas[0]["function"]["name"] == "add"


def test_tool_without_docstring_args_fails_at_construction() -> None:
    class NoArgsDoc(Toy):
        @tool
        def lookup(self, key: str) -> str:
            """Looks a key up."""
            return key

    with pytest.raises(ToolDefinitionError, match=r"NoArgsDoc\.lookup.*Args"):
        NoArgsDoc()


def test_tool_without_type_hints_fails_at_construction() -> None:
    class NoHints(Toy):
        @tool
        def lookup(self, key):  # type: ignore[no-untyped-def]
            """Looks a key up.

            Args:
                key: The key.
            """
            return key

    with pytest.raises(ToolDefinitionError, match=r"NoHints\.lookup"):
        NoHints()


# ---- knobs ---------------------------------------------------------------------------------------


def test_constructor_overrides_class_knobs() -> None:
    env = Toy(max_turns=7, format_penalty=0.5, max_output_chars=100)
    assert (env.max_turns, env.format_penalty, env.max_output_chars) == (7, 0.5, 100)
    assert Toy.max_turns == 4 and Toy().max_turns == 4


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"max_turns": 0}, "max_turns"),
        ({"format_penalty": -1.0}, "format_penalty"),
        ({"max_output_chars": 1}, "max_output_chars"),
    ],
)
def test_bad_knobs_raise(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Toy(**kwargs)


def test_unknown_parser_raises_at_construction() -> None:
    with pytest.raises(ValueError, match="json_tags"):
        Toy(parser="nope")


def test_spaces() -> None:
    env = Toy()
    messages, _ = env.reset(seed=3)
    assert messages in env.observation_space
    assert format_tool_call("add", {"a": 1, "b": 2}) in env.action_space
    assert [{"role": "user"}] not in env.observation_space
    assert isinstance(env.observation_space, ChatMessages)


def test_gymnasium_check_env() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(Toy(), skip_render_check=True)


# ---- step: the happy path ------------------------------------------------------------------------


def test_tool_call_then_correct_answer() -> None:
    env = Toy()
    messages, info = env.reset(seed=4)
    x = int(messages[0]["content"].split()[-1])
    obs, reward, terminated, truncated, info = env.step(format_tool_call("add", {"a": x, "b": 0}))
    assert obs == [{"role": "tool", "name": "add", "content": str(x)}]
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["tool_calls"] == [
        {"name": "add", "arguments": {"a": x, "b": 0}, "ok": True, "error": None, "output": str(x)}
    ]
    assert info["reward_components"] == {"format": 0.0}
    assert info["success"] is False and info["void"] is False
    assert_consistent(reward, info)

    obs, reward, terminated, truncated, info = env.step(format_answer(obs[0]["content"]))
    assert terminated and not truncated
    assert reward == 1.0 and info["success"] is True and info["final_answer"] == str(x)
    assert info["reward_components"] == {"format": 0.0, "answer": 1.0}
    assert_consistent(reward, info)


def test_wrong_answer() -> None:
    env = started()
    _, reward, terminated, _, info = env.step("<answer>-1</answer>")
    assert terminated and reward == 0.0 and info["success"] is False
    assert info["reward_components"]["answer"] == 0.0


def test_non_string_output_is_json() -> None:
    env = started()
    obs, *_ = env.step(format_tool_call("echo", {"text": "ab", "times": 2}))
    assert obs[0]["content"] == '{"echo": "abab"}'


# ---- step: failures become observations ----------------------------------------------------------


def _one_failing_call(env: Toy, text: str) -> tuple[dict[str, Any], dict[str, Any], float]:
    obs, reward, terminated, truncated, info = env.step(text)
    assert not terminated and not truncated
    assert len(obs) == 1 and obs[0]["role"] == "tool" and obs[0]["content"].startswith("Error: ")
    assert len(info["tool_calls"]) == 1 and info["tool_calls"][0]["ok"] is False
    assert info["reward_components"]["format"] == pytest.approx(-env.format_penalty)
    assert reward < 0
    assert_consistent(reward, info)
    return obs[0], info["tool_calls"][0], reward


def test_unknown_tool() -> None:
    msg, record, _ = _one_failing_call(started(), format_tool_call("rm_rf", {"path": "/"}))
    assert "unknown tool 'rm_rf'" in msg["content"] and "add" in msg["content"]
    assert record["name"] == "rm_rf"


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        ({"a": 1}, "missing a required argument: 'b'"),
        ({"a": 1, "b": 2, "c": 3}, "unexpected keyword argument 'c'"),
        ({"a": "1", "b": 2}, "'a' must be integer"),
        ({"a": True, "b": 2}, "'a' must be integer"),
        ({"a": 1.5, "b": 2}, "'a' must be integer"),
        ({"a": None, "b": 2}, "'a' must be integer"),
        ({"self": 1, "a": 1, "b": 2}, "'self'"),
    ],
)
def test_wrong_arguments_are_rejected_before_running(arguments: dict[str, Any], fragment: str) -> None:
    env = started()
    msg, record, _ = _one_failing_call(env, format_tool_call("add", arguments))
    assert fragment in msg["content"] and fragment in record["error"]
    assert env.calls == []


def test_raising_tool_is_contained() -> None:
    msg, record, _ = _one_failing_call(started(), format_tool_call("explode", {"why": "kaboom"}))
    assert msg["content"] == "Error: explode: kaboom"
    assert record["error"] == "explode: kaboom"


def test_tool_returning_none_is_a_failed_call() -> None:
    _, record, _ = _one_failing_call(started(), format_tool_call("nothing", {}))
    assert "no output" in record["error"]


def test_malformed_call() -> None:
    msg, record, _ = _one_failing_call(started(), "<tool_call>{oops</tool_call>")
    assert "not valid JSON" in msg["content"] and record["name"] == ""


def test_void_turn() -> None:
    env = started()
    obs, reward, terminated, truncated, info = env.step("I don't know.")
    assert not terminated and not truncated
    assert info["void"] is True and info["tool_calls"] == [] and info["final_answer"] is None
    assert reward == pytest.approx(-0.1) and info["reward_components"] == {"format": pytest.approx(-0.1)}
    assert len(obs) == 1 and obs[0]["role"] == "user" and "<answer>" in obs[0]["content"]


def test_loose_format_error_gets_a_user_note() -> None:
    env = started()
    obs, reward, *_, info = env.step(format_tool_call("add", {"a": 1, "b": 1}) + "</answer>")
    assert [m["role"] for m in obs] == ["tool", "user"]
    assert "without an opening" in obs[1]["content"]
    assert reward == pytest.approx(-0.1)
    assert_consistent(reward, info)


def test_each_problem_costs_one_penalty() -> None:
    env = started()
    text = (
        format_tool_call("nope", {})
        + format_tool_call("add", {"a": 1})
        + format_tool_call("add", {"a": 1, "b": 1})
    )
    obs, reward, *_, info = env.step(text)
    assert [r["ok"] for r in info["tool_calls"]] == [False, False, True]
    assert reward == pytest.approx(-0.2)
    assert len(obs) == 3 and obs[2]["content"] == "2"


def test_penalty_is_capped_per_episode() -> None:
    env = Toy(max_turns=10, format_penalty=0.1, max_format_penalty=0.25)
    env.reset(seed=0)
    total = 0.0
    for _ in range(5):
        _, reward, _, _, info = env.step(format_tool_call("nope", {}) * 2)
        assert_consistent(reward, info)
        total += reward
    assert total == pytest.approx(-0.25)


def test_output_truncation_and_unicode_cleanup() -> None:
    env = started(max_output_chars=50)
    obs, *_ = env.step(format_tool_call("echo", {"text": "é" * 500}))
    assert len(obs[0]["content"]) < 100 and "characters cut" in obs[0]["content"]
    obs, *_ = env.step('<tool_call>{"name": "echo", "arguments": {"text": "\\ud800"}}</tool_call>')
    obs[0]["content"].encode("utf-8")  # lone surrogates replaced: tokenizers can encode it


# ---- episode bounds ------------------------------------------------------------------------------


def test_max_turns_truncates() -> None:
    env = started(max_turns=2)
    *_, terminated, truncated, info = env.step(format_tool_call("add", {"a": 1, "b": 2}))
    assert not terminated and not truncated
    obs, reward, terminated, truncated, info = env.step("hmm")
    assert truncated and not terminated
    assert info["reward_components"] == {"format": pytest.approx(-0.1), "answer": 0.0}
    assert info["success"] is False
    assert obs == []  # no instruction after the last turn
    assert_consistent(reward, info)


def test_answer_on_the_last_turn_terminates_not_truncates() -> None:
    env = Toy(max_turns=1)
    messages, _ = env.reset(seed=2)
    *_, terminated, truncated, info = env.step(format_answer(messages[0]["content"].split()[-1]))
    assert terminated and not truncated and info["success"]


def test_step_outside_an_episode_raises() -> None:
    env = Toy()
    with pytest.raises(RuntimeError, match="reset"):
        env.step("<answer>1</answer>")
    env.reset(seed=0)
    env.step("<answer>1</answer>")
    with pytest.raises(RuntimeError, match="reset"):
        env.step("<answer>1</answer>")
    env.reset(seed=0)
    env.step("<answer>1</answer>")  # reset starts a new episode


# ---- determinism ---------------------------------------------------------------------------------


def test_same_seed_same_task_and_ids() -> None:
    a, b = Toy(), Toy()
    ma, ia = a.reset(seed=11)
    b.reset(seed=99)
    mb, ib = b.reset(seed=11)
    assert ma == mb and ia == ib
    assert ia["prompt_id"].startswith("Toy:") and ia["sub_tasks"] in (["even"], ["odd"])
    assert ia["task_id"] == "Toy"
    _, other = a.reset(seed=12)
    assert other["prompt_id"] != ia["prompt_id"]


def test_task_matches_default_rng_of_the_seed() -> None:
    env = Toy()
    env.reset(seed=123)
    assert env.task == Toy().sample_task(np.random.default_rng(123))


def test_unseeded_resets_differ_and_continue_the_stream() -> None:
    env = Toy()
    ids = {env.reset()[1]["prompt_id"] for _ in range(20)}
    assert len(ids) > 15
    env.reset(seed=5)
    after_a = env.reset()[1]["prompt_id"]
    env.reset(seed=5)
    assert env.reset()[1]["prompt_id"] == after_a


# ---- never raise on model text -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(
                ["<tool_call>", "</tool_call>", "<answer>", "</answer>", "{", "}", '"name"', ":"]
            ),
            st.builds(
                format_tool_call,
                st.sampled_from(["add", "echo", "explode", "nothing", "zzz"]),
                st.dictionaries(
                    st.sampled_from(["a", "b", "text", "why", "times"]),
                    st.one_of(st.integers(), st.text(max_size=5), st.none()),
                ),
            ),
        ),
        max_size=8,
    )
)
def test_step_never_raises_on_model_text(parts: list[str]) -> None:
    env = Toy(max_turns=3)
    env.reset(seed=0)
    obs, reward, _, _, info = env.step("".join(parts))
    assert obs in env.observation_space
    assert_consistent(reward, info)
    assert reward <= 1.0


def test_exception_with_unprintable_message_is_contained() -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    class Env(Toy):
        @tool
        def weird(self) -> str:
            """Raises an exception that cannot be printed."""
            raise Weird()

    env = Env()
    env.reset(seed=0)
    obs, *_ = env.step(format_tool_call("weird", {}))
    assert obs[0]["content"] == "Error: weird: Weird"


# ---- the env's tool-call format ------------------------------------------------------------------


def test_python_call_env_reads_writes_and_instructs_in_its_format() -> None:
    env = Toy(parser="python_call")
    messages, _ = env.reset(seed=4)
    x = int(messages[0]["content"].split()[-1])
    call = env.format_call("add", {"a": x, "b": 0})
    assert call == f"<tool_call>add(a={x}, b=0)</tool_call>"
    obs, reward, *_ = env.step(call)
    assert obs == [{"role": "tool", "name": "add", "content": str(x)}] and reward == 0.0
    obs, *_ = env.step("no idea")
    assert "<tool_call>name(arg=value, ...)</tool_call>" in obs[0]["content"]
    *_, terminated, _, info = env.step(env.format_answer(str(x)))
    assert terminated and info["success"]


def test_json_call_is_a_format_error_in_a_python_call_env() -> None:
    env = Toy(parser="python_call")
    env.reset(seed=0)
    obs, reward, *_, info = env.step(format_tool_call("add", {"a": 1, "b": 2}))
    assert obs[0]["content"].startswith("Error: tool call must be a call") and reward < 0
    assert info["format_errors"]


def test_default_env_writes_json_tags_and_keeps_its_instruction() -> None:
    env = Toy()
    assert env.format_call("add", {"a": 1, "b": 2}) == format_tool_call("add", {"a": 1, "b": 2})
    assert env.format_answer("3") == format_answer("3")
    assert env.void_message == (
        'Reply with <tool_call>{"name": ..., "arguments": {...}}</tool_call> or <answer>...</answer>.'
    )


def test_a_subclass_void_message_wins_over_the_format() -> None:
    class Custom(Toy):
        void_message = "Call add or answer."

    env = Custom(parser="python_call")
    env.reset(seed=0)
    assert env.step("")[0][0]["content"] == "Call add or answer."


def test_bare_parser_env_cannot_write_calls() -> None:
    from actorlearner.core.registry import RegistryError
    from actorlearner.env.parsing import PARSERS

    PARSERS.register("test_bare_toolenv")(lambda text: ParsedTurn(final_answer=text or None))
    try:
        env = Toy(parser="test_bare_toolenv")
        env.reset(seed=0)
        assert "<answer>" in env.step("")[0][0]["content"]  # a generic instruction
        with pytest.raises(RegistryError, match="bare parser"):
            env.format_call("add", {})
    finally:
        PARSERS.unregister("test_bare_toolenv")


# ---- per-call tool timeouts ----------------------------------------------------------------------


class Sleepy(Toy):
    """Toy with a tool that sleeps and records in which thread tools run."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threads: list[str] = []
        self.timed_out: list[str] = []

    @tool
    def nap(self, seconds: float) -> str:
        """Sleeps.

        Args:
            seconds: How long.
        """
        self.threads.append(threading.current_thread().name)
        time.sleep(seconds)
        return "rested"

    def on_tool_timeout(self, name: str) -> None:
        self.timed_out.append(name)


def test_slow_call_times_out_as_an_error_and_the_episode_goes_on() -> None:
    env = Sleepy(tool_timeout_s=0.2)
    env.reset(seed=0)
    start = time.monotonic()
    obs, reward, terminated, truncated, info = env.step(
        format_tool_call("nap", {"seconds": 2}) + format_tool_call("add", {"a": 1, "b": 2})
    )
    assert time.monotonic() - start < 1.0
    assert obs[0] == {"role": "tool", "content": "Error: nap timed out after 0.2 s"}
    assert obs[1]["content"] == "3"  # later calls of the turn still run
    assert (
        info["tool_calls"][0]["ok"] is False and info["tool_calls"][0]["error"] == "nap timed out after 0.2 s"
    )
    assert reward == pytest.approx(-env.format_penalty)  # charged like a raising tool
    assert not terminated and not truncated
    assert env.timed_out == ["nap"]
    assert_consistent(reward, info)
    obs, *_ = env.step(format_tool_call("nap", {"seconds": 0}))
    assert obs[0]["content"] == "rested"  # in a new thread: the stray nap still holds the old one


def test_tools_run_in_a_worker_thread_unless_the_timeout_is_infinite() -> None:
    env = Sleepy()
    env.reset(seed=0)
    env.step(format_tool_call("nap", {"seconds": 0}))
    env.step(format_tool_call("nap", {"seconds": 0}))
    assert env.threads == ["tool:Sleepy"] * 2
    inline = Sleepy(tool_timeout_s=math.inf)
    inline.reset(seed=0)
    inline.step(format_tool_call("nap", {"seconds": 0}))
    assert inline.threads[-1] == threading.current_thread().name


def test_tool_errors_cross_the_thread() -> None:
    env = Sleepy(tool_timeout_s=5)
    env.reset(seed=0)
    obs, *_ = env.step(format_tool_call("explode", {"why": "kaboom"}))
    assert obs[0]["content"] == "Error: explode: kaboom"


def test_tool_timeout_knob() -> None:
    assert Toy().tool_timeout_s == 10.0 and Toy(tool_timeout_s=2).tool_timeout_s == 2
    for bad in (0, -1.0, "5", True, float("nan")):
        with pytest.raises(ValueError, match="tool_timeout_s"):
            Toy(tool_timeout_s=bad)


def test_an_env_that_ran_a_tool_can_be_copied_and_pickled() -> None:
    env = Sleepy()
    env.reset(seed=0)
    env.step(format_tool_call("nap", {"seconds": 0}))
    for clone in (copy.deepcopy(env), pickle.loads(pickle.dumps(env))):
        obs, *_ = clone.step(format_tool_call("nap", {"seconds": 0}))
        assert obs[0]["content"] == "rested"  # in the clone's own tool thread
