"""Parsing a model's turn into tool calls and a final answer, with a registry of formats.

The default format, ``"json_tags"``, is the one Hermes/Qwen-style chat templates teach::

    <tool_call>{"name": "calculator", "arguments": {"expression": "37 * 52"}}</tool_call>
    <answer>1924</answer>

A turn holds zero or more tool calls and at most one answer. Parsers never raise on model text:
every problem (bad JSON, an unclosed or nested tag, arguments that are not an object, a huge
payload) becomes an entry of :attr:`ParsedTurn.errors`, and a call that could not be read is kept
as a :class:`ParsedCall` with its ``error`` set, so the env can answer it with an error message.

Register another format with ``@PARSERS.register("name")`` on a ``fn(text: str) -> ParsedTurn``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actorlearner.registry import Registry

MAX_TURN_CHARS = 100_000
"""Characters of a turn a parser reads; the rest is ignored (and reported as an error)."""
MAX_CALL_CHARS = 10_000
"""Largest JSON payload of one tool call; a bigger one is a malformed call."""
MAX_CALLS = 16
"""Tool calls read from one turn; further calls are ignored (and reported as an error)."""
MAX_ANSWER_CHARS = 2_000
"""Characters kept of a final answer; a longer one is cut (and reported as an error)."""


@dataclass
class ParsedCall:
    """One tool call as the model wrote it.

    Attributes:
        name: Tool name ("" when the call could not be read far enough to find one).
        arguments: Keyword arguments for the tool (empty when they could not be read).
        error: Why the call is malformed, or None when it was read correctly.
    """

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class ParsedTurn:
    """What one assistant turn asked for.

    Attributes:
        calls: The tool calls, in the order written, malformed ones included.
        final_answer: The text inside the answer tag (stripped), or None when there is none.
        errors: Every format problem of the turn, those of malformed calls included.
    """

    calls: list[ParsedCall] = field(default_factory=list)
    final_answer: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def void(self) -> bool:
        """True when the turn has neither a tool call nor a final answer (SimpleTIR)."""
        return not self.calls and self.final_answer is None


TurnParser = Callable[[str], ParsedTurn]
"""A parser: the raw text of a turn -> a :class:`ParsedTurn`; must never raise."""

PARSERS: Registry[TurnParser] = Registry("tool-call parser")


def parse_turn(text: str, parser: str | TurnParser | Mapping[str, Any] = "json_tags") -> ParsedTurn:
    """Parses one assistant turn; never raises because of ``text``.

    Args:
        text: The model's raw turn. Non-``str`` input is converted with ``str()`` (bytes decoded).
        parser: A registered parser name, an import path ``"pkg.mod:fn"`` or a callable.

    Returns:
        The calls, final answer and format errors of the turn. A parser that raises anyway yields
        an empty turn whose only error names the exception.

    Raises:
        RegistryError: If ``parser`` names no known parser (a configuration error, not model text).
    """
    fn = PARSERS.resolve(parser)
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    elif not isinstance(text, str):
        text = str(text)
    try:
        return fn(text)
    except Exception as err:  # a buggy plugin parser must not crash a rollout
        return ParsedTurn(errors=[f"parser failed: {type(err).__name__}: {err}"[:500]])


def format_tool_call(name: str, arguments: Mapping[str, Any]) -> str:
    """Writes one tool call in the ``json_tags`` format (the inverse of its parser)."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': dict(arguments)})}</tool_call>"


def format_answer(answer: str) -> str:
    """Writes a final answer in the ``json_tags`` format."""
    return f"<answer>{answer}</answer>"


_TAG_RE = re.compile(r"<\s*(/?)\s*(tool_call|answer)\s*>")
_TOO_MANY_CALLS = f"more than {MAX_CALLS} tool calls in one turn; the rest were ignored"


@PARSERS.register("json_tags")
def parse_json_tags(text: str) -> ParsedTurn:
    """Parses ``<tool_call>{json}</tool_call>`` calls and an ``<answer>...</answer>`` answer.

    Whitespace inside tags and around the payloads is tolerated. Tags do not nest: a tag opened
    inside another makes the outer block malformed. An unclosed ``<tool_call>`` is a malformed
    call; an unclosed ``<answer>`` is no answer. Only the first answer counts.

    Args:
        text: The model's raw turn.

    Returns:
        The parsed turn.
    """
    turn = ParsedTurn()
    if len(text) > MAX_TURN_CHARS:
        turn.errors.append(f"turn longer than {MAX_TURN_CHARS} characters; the rest was ignored")
        text = text[:MAX_TURN_CHARS]
    open_kind: str | None = None  # the tag of the block we are inside, if any
    body_start = 0
    corrupt: str | None = None  # why the open block is malformed (a nested or mismatched tag)
    for m in _TAG_RE.finditer(text):
        closing, kind = m.group(1) == "/", m.group(2)
        if open_kind is None:
            if closing:
                turn.errors.append(f"</{kind}> without an opening <{kind}>")
            else:
                open_kind, body_start, corrupt = kind, m.end(), None
        elif closing and kind == open_kind:
            _close_block(turn, open_kind, text[body_start : m.start()], corrupt)
            open_kind = None
        elif corrupt is None:
            tag = f"</{kind}>" if closing else f"<{kind}>"
            corrupt = f"{tag} inside <{open_kind}>; tags cannot nest"
    if open_kind is not None:
        _close_block(turn, open_kind, None, corrupt or f"unclosed <{open_kind}>")
    return turn


def _close_block(turn: ParsedTurn, kind: str, body: str | None, error: str | None) -> None:
    """Adds the block just closed (``body`` None when it never closed) to ``turn``."""
    if kind == "answer":
        if error is not None or body is None:
            turn.errors.append(error or "unclosed <answer>")
        elif turn.final_answer is not None:
            turn.errors.append("more than one <answer>; only the first counts")
        else:
            answer = body.strip()
            if len(answer) > MAX_ANSWER_CHARS:
                turn.errors.append(f"answer longer than {MAX_ANSWER_CHARS} characters; it was cut")
                answer = answer[:MAX_ANSWER_CHARS]
            turn.final_answer = answer
        return
    if len(turn.calls) >= MAX_CALLS:
        if _TOO_MANY_CALLS not in turn.errors:
            turn.errors.append(_TOO_MANY_CALLS)
        return
    call = ParsedCall(name="", error=error) if error is not None else _parse_call(body or "")
    if call.error is not None:
        turn.errors.append(call.error)
    turn.calls.append(call)


def _parse_call(body: str) -> ParsedCall:
    """Reads the JSON object of one tool call."""
    body = body.strip()
    if len(body) > MAX_CALL_CHARS:
        return ParsedCall("", error=f"tool call longer than {MAX_CALL_CHARS} characters")
    try:
        obj = json.loads(body)
    except ValueError as err:  # JSONDecodeError, or an integer with too many digits
        return ParsedCall("", error=f"tool call is not valid JSON: {err}"[:300])
    except RecursionError:
        return ParsedCall("", error="tool call JSON is nested too deeply")
    if not isinstance(obj, dict):
        return ParsedCall("", error=f"tool call must be a JSON object, got {_json_type(obj)}")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return ParsedCall("", error='tool call needs a "name" string')
    name = name.strip()
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, dict):
        return ParsedCall(name, error=f'"arguments" must be a JSON object, got {_json_type(arguments)}')
    return ParsedCall(name, arguments)


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
