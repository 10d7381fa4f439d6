"""Fuzz: thousands of malformed turns never make a parser or a built-in env raise.

Each generated turn mixes fragments: broken JSON, calls with wrong types, unknown tools (env
methods that are not tools included) and missing arguments, huge payloads, unicode (lone surrogates,
RTL marks, emoji, NUL), nested and unclosed tags, and Python-call garbage. Every built-in env
(:data:`envs.ENVS`) is fuzzed with both tool-call formats. A step must follow the
protocol (:func:`actorlearner.env.checker.check_step_result`), give messages a tokenizer can encode,
and answer each problem with an error observation unless the episode ended.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import gymnasium
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import actorlearner  # noqa: F401  (registers the built-in envs)
from actorlearner.env.checker import check_step_result
from actorlearner.env.parsing import MAX_CALL_CHARS, ParsedTurn, format_tool_call, parse_turn
from envs import ENVS

pytestmark = pytest.mark.fuzz

STYLES = ["json_tags", "python_call"]
ENV_EXAMPLES = 250
"""Episodes per (env, format); each plays up to 3 fuzzed turns."""
PARSER_EXAMPLES = 300
"""Turns per format fed to the parsers alone."""

_SPECIAL = [
    "\ud800",
    "\udfff",
    "\u202e",
    "\u200f",
    "\u200b",
    "\ufeff",
    "\x00",
    "\x1b[31m",
    "🙂",
    "👩‍👩‍👧",
    "e\u0301",
    "𝔘𝔫𝔦",
    "\r\n",
    "\t",
]
_TAGS = [
    "<tool_call>",
    "</tool_call>",
    "<answer>",
    "</answer>",
    "< tool_call >",
    "</ answer >",
    "<tool_call",
    "tool_call>",
    "<answer/>",
    "<TOOL_CALL>",
]
_JSON_BITS = [
    "{",
    "}",
    '"name"',
    '"arguments"',
    ":",
    ",",
    "[",
    "]",
    "null",
    "NaN",
    "1e999",
    '"\\ud800"',
    "\\",
]
_PY_BITS = [
    "(",
    ")",
    "=",
    ",",
    "f(",
    "lambda: 1",
    "__import__('os').system('true')",
    "*",
    "**",
    "...",
    "True",
]
_NOT_TOOLS = [
    "",
    "nope",
    " ",
    "__init__",
    "reset",
    "step",
    "_run_call",
    "sample_task",
    "demonstration",
    "a.b",
]

unicode_text = st.text(st.characters(exclude_categories=()), max_size=30)  # surrogates included
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | unicode_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(unicode_text, inner, max_size=3),
    max_leaves=8,
)


def _write(style: str, name: str, arguments: dict[str, Any]) -> str:
    """A call in ``style``; the Python writer's refusals are written by hand (still garbage-in)."""
    try:
        return format_tool_call(name, arguments, style=style)
    except (ValueError, TypeError):
        inner = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
        return f"<tool_call>{name}({inner})</tool_call>"


def calls(style: str, tools: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """Calls to real and fake tools with missing, extra and mistyped arguments."""
    names = st.sampled_from(sorted(tools) + _NOT_TOOLS) | unicode_text
    params = sorted({p for ps in tools.values() for p in ps}) or ["x"]
    arguments = st.dictionaries(st.sampled_from(params) | unicode_text, json_values, max_size=4)
    return st.builds(lambda n, a: _write(style, n, a), names, arguments)


def huge() -> st.SearchStrategy[str]:
    sizes = st.integers(MAX_CALL_CHARS - 5, 120_000)
    return st.one_of(
        sizes.map(lambda n: '<tool_call>{"name": "x", "arguments": {"a": "' + "y" * n + '"}}</tool_call>'),
        sizes.map(lambda n: "<tool_call>x(a='" + "y" * n + "')</tool_call>"),
        sizes.map(lambda n: "<answer>" + "9" * n + "</answer>"),
        st.integers(1, 3000).map(lambda n: "<tool_call>" + "[" * n + "</tool_call>"),
        st.integers(1, 3000).map(lambda n: "<tool_call>" * n),
    )


def turns(style: str, tools: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """A turn: a few fragments of every kind, concatenated."""
    fragment = st.one_of(
        unicode_text,
        st.sampled_from(_SPECIAL + _TAGS + _JSON_BITS + _PY_BITS),
        calls(style, tools),
        calls(style, tools).map(lambda t: t[: len(t) // 2]),  # cut in the middle: broken, unclosed
        st.builds(
            lambda n, body: f"<tool_call>{n}({body})</tool_call>", st.sampled_from(_NOT_TOOLS), unicode_text
        ),
        huge(),
    )
    return st.lists(fragment, max_size=6).map("".join)


def _env(env_id: str, style: str) -> gymnasium.Env:
    module = ENVS[env_id].split(":")[0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{env_id}: module {module} does not exist yet")
    return gymnasium.make(env_id, disable_env_checker=True, parser=style)


def _tools(env: gymnasium.Env) -> dict[str, list[str]]:
    _, info = env.reset(seed=0)
    return {
        t["function"]["name"]: sorted(t["function"].get("parameters", {}).get("properties", {}))
        for t in info["tools"]
    }


def assert_handled(out: tuple[Any, ...]) -> None:
    """The step follows the protocol and answers every problem, unless the episode ended."""
    check_step_result(out, "a fuzzed step")
    messages, _, terminated, truncated, info = out
    for m in messages:
        m["content"].encode("utf-8")  # the chat template's tokenizer must be able to encode it
    failed = sum(not r["ok"] for r in info["tool_calls"])
    unparsable = bool(info.get("format_errors")) or bool(info.get("void"))
    if terminated or truncated or not (failed or unparsable):
        return
    errors = [m for m in messages if m["role"] == "tool" and m["content"].startswith("Error")]
    notes = [m for m in messages if m["role"] == "user"]
    assert len(errors) >= failed, messages
    assert errors or notes, messages
    if unparsable and "format" in info["reward_components"]:
        assert info["reward_components"]["format"] <= 0


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("env_id", list(ENVS))
def test_builtin_envs_survive_malformed_turns(env_id: str, style: str) -> None:
    env = _env(env_id, style)
    tools = _tools(env)

    @settings(max_examples=ENV_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(seed=st.integers(0, 2**31 - 1), texts=st.lists(turns(style, tools), min_size=1, max_size=3))
    def episode(seed: int, texts: list[str]) -> None:
        env.reset(seed=seed)
        for text in texts:
            out = env.step(text)
            assert_handled(out)
            if out[2] or out[3]:
                break

    episode()


@pytest.mark.parametrize("style", STYLES)
@settings(max_examples=PARSER_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_parsers_never_raise(style: str, data: st.DataObject) -> None:
    text = data.draw(turns(style, {"calculator": ["expression"], "f": ["a", "b"]}))
    turn = parse_turn(text, style)
    assert isinstance(turn, ParsedTurn)
    assert all(c.error in turn.errors for c in turn.calls if c.error is not None)
    assert all(isinstance(c.arguments, dict) for c in turn.calls)
