"""Parsing a model's turn into tool calls and a final answer, with a registry of formats.

Two formats are built in. ``"json_tags"`` (the default) is the one Hermes/Qwen-style chat templates
teach::

    <tool_call>{"name": "calculator", "arguments": {"expression": "37 * 52"}}</tool_call>
    <answer>1924</answer>

``"python_call"`` writes each call as a Python call with keyword arguments (Gorilla/BFCL style)::

    <tool_call>calculator(expression="37 * 52")</tool_call>
    <answer>1924</answer>

A turn holds zero or more tool calls and at most one answer. Parsers never raise on model text:
every problem (bad JSON or Python, an unclosed or nested tag, arguments that are not an object, a
huge payload) becomes an entry of :attr:`ParsedTurn.errors`, and a call that could not be read is
kept as a :class:`ParsedCall` with its ``error`` set, so the env can answer it with an error message.

A format is a :class:`ToolCallFormat`: its parser and the matching writers of calls and answers
(demonstrations and the env's instructions use them, so they follow the env's format). Formats are
registered in :data:`PARSERS` and are callable as their parser. A bare parser
``fn(text: str) -> ParsedTurn`` may be registered too (``@PARSERS.register("name")``); an env using
it cannot write calls (:func:`format_tool_call` raises). A new format with the same tags needs only
a reader of one ``<tool_call>`` block: its parser is ``lambda text: parse_tagged(text, read_block)``.

Writers escape tag-like text inside string values (its ``<`` as a JSON or Python escape), so
``parse(write_call(name, arguments))`` reads back ``(name, arguments)`` (within the size limits).
"""

from __future__ import annotations

import ast
import json
import keyword
import math
import re
import textwrap
import unicodedata
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from actorlearner.core.registry import Registry, RegistryError

MAX_TURN_CHARS = 100_000
"""Characters of a turn a parser reads; the rest is ignored (and reported as an error)."""
MAX_CALL_CHARS = 10_000
"""Largest payload of one ``<tool_call>`` block; a bigger one is a malformed call."""
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
CallWriter = Callable[[str, Mapping[str, Any]], str]
"""Writes one tool call ``(name, arguments) -> text`` in a format."""


@dataclass(frozen=True)
class ToolCallFormat:
    """A tool-call format: how a turn is read and how calls and answers are written.

    Calling the format parses a turn, so a format works wherever a parser is expected.

    Attributes:
        parse: The parser; never raises on model text.
        write_call: Writes one call; ``parse(write_call(name, args))`` reads back ``(name, args)``.
        write_answer: Writes a final answer.
        instruction: What the env says after a void turn (how to call a tool or answer).
    """

    parse: TurnParser
    write_call: CallWriter
    write_answer: Callable[[str], str]
    instruction: str

    def __call__(self, text: str) -> ParsedTurn:
        """Parses one turn (see :attr:`parse`)."""
        return self.parse(text)


PARSERS: Registry[TurnParser] = Registry("tool-call parser")
"""Tool-call formats (:class:`ToolCallFormat`) and bare parsers, by name."""


def parse_turn(text: str, parser: str | TurnParser | Mapping[str, Any] = "json_tags") -> ParsedTurn:
    """Parses one assistant turn; never raises because of ``text``.

    Args:
        text: The model's raw turn. Non-``str`` input is converted with ``str()`` (bytes decoded).
        parser: A registered format or parser name, an import path ``"pkg.mod:fn"`` or a callable.

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


def get_format(style: str | TurnParser) -> ToolCallFormat:
    """The :class:`ToolCallFormat` registered as ``style`` (or ``style`` itself when it is one).

    Raises:
        RegistryError: If ``style`` is unknown, or is a bare parser without writers.
    """
    fmt = PARSERS.resolve(style)
    if not isinstance(fmt, ToolCallFormat):
        known = [n for n in PARSERS.names() if isinstance(PARSERS.resolve(n), ToolCallFormat)]
        raise RegistryError(
            f"tool-call parser {style!r} is a bare parser, not a ToolCallFormat, so it cannot write "
            f"calls; formats: {', '.join(known)}"
        )
    return fmt


def format_tool_call(name: str, arguments: Mapping[str, Any], style: str = "json_tags") -> str:
    """Writes one tool call in a format (the inverse of its parser).

    Args:
        name: Tool name.
        arguments: Keyword arguments, JSON-like values.
        style: Name of a registered :class:`ToolCallFormat`.

    Raises:
        ValueError: If the format cannot write the call (e.g. ``python_call`` and an argument
            name that is not a Python identifier).
        RegistryError: If ``style`` names no format.
    """
    return get_format(style).write_call(name, arguments)


def format_answer(answer: str, style: str = "json_tags") -> str:
    """Writes a final answer in a format (both built-in formats use ``<answer>...</answer>``)."""
    return get_format(style).write_answer(answer)


# ---- the tag scanner both formats share ----------------------------------------------------------

_TAG_RE = re.compile(r"<\s*(/?)\s*(tool_call|answer)\s*>")
_TOO_MANY_CALLS = f"more than {MAX_CALLS} tool calls in one turn; the rest were ignored"

BlockReader = Callable[[str], list[ParsedCall]]
"""Reads the body of one ``<tool_call>`` block into its calls (at least one; never raises)."""


def parse_tagged(text: str, read_block: BlockReader) -> ParsedTurn:
    """Scans ``<tool_call>`` blocks and an ``<answer>`` block; ``read_block`` reads each call block.

    Whitespace inside tags is tolerated. Tags do not nest: a tag opened inside another makes the
    outer block malformed. An unclosed ``<tool_call>`` is a malformed call; an unclosed
    ``<answer>`` is no answer. Only the first answer counts.

    Args:
        text: The model's raw turn.
        read_block: Reads one block's body into calls.

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
            _close_block(turn, open_kind, text[body_start : m.start()], corrupt, read_block)
            open_kind = None
        elif corrupt is None:
            tag = f"</{kind}>" if closing else f"<{kind}>"
            corrupt = f"{tag} inside <{open_kind}>; tags cannot nest"
    if open_kind is not None:
        _close_block(turn, open_kind, None, corrupt or f"unclosed <{open_kind}>", read_block)
    return turn


def _close_block(
    turn: ParsedTurn, kind: str, body: str | None, error: str | None, read_block: BlockReader
) -> None:
    """Adds the block just closed (``body`` None when it never closed) to ``turn``."""
    if kind == "answer":
        _close_answer(turn, body, error)
        return
    if len(turn.calls) >= MAX_CALLS:
        if _TOO_MANY_CALLS not in turn.errors:
            turn.errors.append(_TOO_MANY_CALLS)
        return
    calls = [ParsedCall(name="", error=error)] if error is not None else read_block(body or "")
    for call in calls:
        if len(turn.calls) >= MAX_CALLS:
            turn.errors.append(_TOO_MANY_CALLS)
            return
        if call.error is not None:
            turn.errors.append(call.error)
        turn.calls.append(call)


def _close_answer(turn: ParsedTurn, body: str | None, error: str | None) -> None:
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


def _write_answer_tag(answer: str) -> str:
    return f"<answer>{answer}</answer>"


def _escape_tags(payload: str, escape: str) -> str:
    """Escapes the ``<`` of tag-like text inside a payload's strings, so the scanner skips it."""
    return _TAG_RE.sub(lambda m: escape + m.group(0)[1:], payload)


# ---- json_tags -----------------------------------------------------------------------------------


def parse_json_tags(text: str) -> ParsedTurn:
    """Parses ``<tool_call>{json}</tool_call>`` calls and an ``<answer>...</answer>`` answer.

    One JSON object ``{"name": str, "arguments": {...}}`` per block; a missing ``"arguments"``
    means no arguments. See :func:`parse_tagged` for the tags.

    Args:
        text: The model's raw turn.

    Returns:
        The parsed turn.
    """
    return parse_tagged(text, lambda body: [_read_json_call(body)])


def _read_json_call(body: str) -> ParsedCall:
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


def _write_json_call(name: str, arguments: Mapping[str, Any]) -> str:
    payload = _escape_tags(json.dumps({"name": name, "arguments": dict(arguments)}), "\\u003c")
    return f"<tool_call>{payload}</tool_call>"


# ---- python_call ---------------------------------------------------------------------------------


def parse_python_call(text: str) -> ParsedTurn:
    """Parses ``<tool_call>name(arg=value, ...)</tool_call>`` calls and an ``<answer>`` answer.

    A block holds one or more calls, one statement each (one per line, or separated by ``;``),
    or one bracketed list of calls ``[f(a=1), g(b=2)]`` (BFCL's style). The name may be dotted
    (``math.factorial``). Arguments are keywords whose values are Python literals (strings,
    numbers, ``True``/``False``/``None``, lists, tuples, dicts with string keys), read with
    ``ast.literal_eval``: nothing is ever evaluated. A tuple becomes a :class:`TupleList`, a list
    that remembers it was written as a tuple (BFCL's checker rejects a tuple for an array).
    Positional arguments, ``*``/``**`` unpacking, repeated keywords and non-literal values make a
    malformed call. A block that is not valid Python is one malformed call. See
    :func:`parse_tagged` for the tags.

    Args:
        text: The model's raw turn.

    Returns:
        The parsed turn.
    """
    return parse_tagged(text, _read_python_block)


MODEL_TEXT_FILENAME = "<model text>"
"""The file name :func:`parse_model_text` gives the parser; its warnings are filtered out."""

# Python warns as it parses text like ``12is 3`` (SyntaxWarning) or ``"\d"`` (an invalid escape:
# DeprecationWarning before 3.12, SyntaxWarning after); in a run, every such turn of a model would
# print a line from the runner. Only this file name is silenced, once for the process (a
# catch_warnings block would race between the tool threads).
for _category in (SyntaxWarning, DeprecationWarning):
    warnings.filterwarnings("ignore", category=_category, module=re.escape(MODEL_TEXT_FILENAME) + "$")


@overload
def parse_model_text(source: str, mode: Literal["exec"] = "exec") -> ast.Module: ...
@overload
def parse_model_text(source: str, mode: Literal["eval"]) -> ast.Expression: ...
def parse_model_text(source: str, mode: Literal["exec", "eval"] = "exec") -> ast.Module | ast.Expression:
    """``ast.parse`` of text a model wrote, without the parser's SyntaxWarnings.

    Raises:
        SyntaxError, ValueError, RecursionError, MemoryError: As ``ast.parse``.
    """
    tree = ast.parse(source, filename=MODEL_TEXT_FILENAME, mode=mode)
    assert isinstance(tree, (ast.Module, ast.Expression))
    return tree


_EXAMPLE = "write name(arg=value, ...) with Python literals"
_LITERALS = "a quoted string, a number, True/False/None, or a list or dict of those"


def _read_python_block(body: str) -> list[ParsedCall]:
    """Reads the Python calls of one block."""
    source = textwrap.dedent(body).strip()
    if len(source) > MAX_CALL_CHARS:
        return [ParsedCall("", error=f"tool call longer than {MAX_CALL_CHARS} characters")]
    try:
        tree = parse_model_text(source)
    except SyntaxError as err:
        return [ParsedCall("", error=f"tool call is not valid Python: {err.msg}"[:300])]
    except (ValueError, RecursionError, MemoryError, OverflowError) as err:  # e.g. lone surrogates
        return [ParsedCall("", error=f"tool call is not valid Python: {type(err).__name__}: {err}"[:300])]
    calls: list[ParsedCall] = []
    for statement in tree.body:
        value = statement.value if isinstance(statement, ast.Expr) else statement
        items = value.elts if isinstance(value, (ast.List, ast.Tuple)) else [value]
        calls.extend(_read_python_call(item) for item in items)
    return calls or [ParsedCall("", error=f"empty tool call; {_EXAMPLE}")]


def _read_python_call(node: ast.AST) -> ParsedCall:
    """Reads one ``name(arg=literal, ...)`` expression."""
    if not isinstance(node, ast.Call):
        return ParsedCall("", error=f"tool call must be a call, got {type(node).__name__}; {_EXAMPLE}")
    name = _dotted_name(node.func)
    if name is None:
        return ParsedCall("", error=f"the called function must be a (dotted) name; {_EXAMPLE}")
    if node.args:
        return ParsedCall(name, error=f"{name}: positional arguments are not allowed; {_EXAMPLE}")
    arguments: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            return ParsedCall(name, error=f"{name}: ** unpacking is not allowed; {_EXAMPLE}")
        if kw.arg in arguments:
            return ParsedCall(name, error=f"{name}: argument {kw.arg!r} given twice")
        try:
            value = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            error = f"{name}: argument {kw.arg!r} is not a literal ({_LITERALS}): {_source(kw.value)}"
            return ParsedCall(name, error=error)
        try:
            arguments[kw.arg] = _json_like(value)
        except ValueError as err:
            return ParsedCall(name, error=f"{name}: argument {kw.arg!r}: {err}")
    return ParsedCall(name, arguments)


def _source(node: ast.AST, limit: int = 80) -> str:
    """The source text of an expression, cut to ``limit`` characters."""
    try:
        text = ast.unparse(node)
    except Exception:  # a tree ast.parse built always unparses; never let it escape anyway
        return type(node).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _dotted_name(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attribute lookups on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


class TupleList(list):  # type: ignore[type-arg]  # holds any JSON-like values, as a list does
    """A tuple the ``python_call`` parser read: a list, marked as written as a tuple.

    It is a list to everything (``==``, ``isinstance``, JSON), so a tuple argument works wherever a
    list does; a scorer that tells the two apart (BFCL's, :mod:`envs.bfcl`) checks for this type.
    The ``python_call`` writer writes it back as a tuple.
    """

    __slots__ = ()


def _json_like(value: Any) -> Any:
    """A literal as the JSON parser would give it (tuples become :class:`TupleList`).

    Raises:
        ValueError: If the literal holds something JSON has no value for (a set, bytes, ...).
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return TupleList(_json_like(v) for v in value)
    if isinstance(value, list):
        return [_json_like(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("dict keys must be strings")
        return {k: _json_like(v) for k, v in value.items()}
    raise ValueError(f"{type(value).__name__} is not a JSON value")


def _write_python_call(name: str, arguments: Mapping[str, Any]) -> str:
    if not all(_is_identifier(part) for part in name.split(".")):
        raise ValueError(f"python_call cannot write a call to {name!r}: not a (dotted) Python name")
    parts = []
    for key, value in arguments.items():
        if not _is_identifier(key):
            raise ValueError(f"python_call cannot write argument {key!r} of {name}: not a Python identifier")
        parts.append(f"{key}={_python_literal(value)}")
    return f"<tool_call>{name}({', '.join(parts)})</tool_call>"


def _is_identifier(text: str) -> bool:
    """A name Python reads back unchanged (identifiers are NFKC-normalized, keywords are taken)."""
    return (
        isinstance(text, str)
        and text.isidentifier()
        and not keyword.iskeyword(text)
        and unicodedata.normalize("NFKC", text) == text
    )


def _python_literal(value: Any) -> str:
    """A JSON-like value as a Python literal ``ast.literal_eval`` reads back."""
    if isinstance(value, str):
        return _escape_tags(repr(value), "\\x3c")
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            raise ValueError("python_call cannot write NaN")
        return "1e999" if value > 0 else "-1e999"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    if isinstance(value, TupleList):
        items = [_python_literal(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_python_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ValueError("python_call writes only dicts with string keys")
        return "{" + ", ".join(f"{_python_literal(k)}: {_python_literal(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"python_call cannot write a {type(value).__name__}")


JSON_TAGS = ToolCallFormat(
    parse=parse_json_tags,
    write_call=_write_json_call,
    write_answer=_write_answer_tag,
    instruction=(
        'Reply with <tool_call>{"name": ..., "arguments": {...}}</tool_call> or <answer>...</answer>.'
    ),
)
"""The default format: a JSON object per ``<tool_call>`` block."""

PYTHON_CALL = ToolCallFormat(
    parse=parse_python_call,
    write_call=_write_python_call,
    write_answer=_write_answer_tag,
    instruction="Reply with <tool_call>name(arg=value, ...)</tool_call> or <answer>...</answer>.",
)
"""Python calls with keyword arguments per ``<tool_call>`` block."""

PARSERS.register("json_tags")(JSON_TAGS)
PARSERS.register("python_call")(PYTHON_CALL)
