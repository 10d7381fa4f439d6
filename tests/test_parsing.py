from __future__ import annotations

import json
import keyword

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actorlearner.core.registry import RegistryError
from actorlearner.env.parsing import (
    MAX_CALL_CHARS,
    MAX_CALLS,
    MAX_TURN_CHARS,
    PARSERS,
    ParsedTurn,
    ToolCallFormat,
    format_answer,
    format_tool_call,
    get_format,
    parse_turn,
)

CALL = '<tool_call>{"name": "calculator", "arguments": {"expression": "37 * 52"}}</tool_call>'


def test_single_valid_call() -> None:
    turn = parse_turn(CALL)
    assert len(turn.calls) == 1
    assert turn.calls[0].name == "calculator"
    assert turn.calls[0].arguments == {"expression": "37 * 52"}
    assert turn.calls[0].error is None
    assert turn.final_answer is None
    assert turn.errors == []
    assert not turn.void


def test_whitespace_is_tolerated() -> None:
    text = (
        '  thinking...\n< tool_call >\n  {"name": " calculator ",\n'
        ' "arguments": {"expression": "1+1"}}\n</tool_call >'
    )
    turn = parse_turn(text + "\n<answer>  42 \n</answer>  ")
    assert [c.name for c in turn.calls] == ["calculator"]
    assert turn.final_answer == "42"
    assert turn.errors == []


def test_multiple_calls_in_order() -> None:
    text = "".join(format_tool_call("f", {"i": i}) for i in range(3))
    turn = parse_turn(text)
    assert [c.arguments["i"] for c in turn.calls] == [0, 1, 2]
    assert turn.errors == []


def test_missing_arguments_means_no_arguments() -> None:
    turn = parse_turn('<tool_call>{"name": "now"}</tool_call>')
    assert turn.calls[0].name == "now" and turn.calls[0].arguments == {} and turn.errors == []


@pytest.mark.parametrize(
    "body, fragment",
    [
        ('{"name": "calculator", "arguments": {', "not valid JSON"),
        ("not json at all", "not valid JSON"),
        ('["calculator"]', "must be a JSON object"),
        ('{"arguments": {"expression": "1"}}', '"name"'),
        ('{"name": 3, "arguments": {}}', '"name"'),
        ('{"name": "  ", "arguments": {}}', '"name"'),
        ('{"name": "calculator", "arguments": [1, 2]}', '"arguments" must be a JSON object, got array'),
        ('{"name": "calculator", "arguments": "1+1"}', '"arguments" must be a JSON object, got string'),
        ("[" * 5000 + "]" * 5000, ""),
        ('{"n": ' + "9" * 6000 + "}", ""),
    ],
)
def test_malformed_call_is_kept_with_error(body: str, fragment: str) -> None:
    turn = parse_turn(f"<tool_call>{body}</tool_call>")
    assert len(turn.calls) == 1
    call = turn.calls[0]
    assert call.error is not None and fragment in call.error
    assert call.arguments == {}
    assert turn.errors == [call.error]
    assert not turn.void


def test_name_kept_when_only_arguments_are_bad() -> None:
    turn = parse_turn('<tool_call>{"name": "calculator", "arguments": null}</tool_call>')
    assert turn.calls[0].name == "calculator" and turn.calls[0].error is not None


def test_unclosed_tool_call() -> None:
    turn = parse_turn('<tool_call>{"name": "calculator", "arguments": {}}')
    assert len(turn.calls) == 1 and turn.calls[0].error == "unclosed <tool_call>"
    assert turn.errors == ["unclosed <tool_call>"]


def test_unclosed_answer_is_no_answer() -> None:
    turn = parse_turn("<answer>42")
    assert turn.final_answer is None
    assert turn.errors == ["unclosed <answer>"]
    assert turn.void


def test_nested_tags_make_the_block_malformed() -> None:
    turn = parse_turn(f"<tool_call>{CALL}</tool_call>")
    assert len(turn.calls) == 1 and turn.calls[0].error is not None
    assert "cannot nest" in turn.calls[0].error
    assert any("without an opening" in e for e in turn.errors)

    turn = parse_turn("<answer><tool_call>{}</tool_call></answer>")
    assert turn.final_answer is None and turn.calls == []
    assert turn.errors and "cannot nest" in turn.errors[0]


def test_stray_closing_tag() -> None:
    turn = parse_turn("</tool_call> hello")
    assert turn.calls == [] and turn.void
    assert turn.errors == ["</tool_call> without an opening <tool_call>"]


def test_answer_tag_and_first_answer_counts() -> None:
    assert parse_turn("So: <answer>1924</answer>").final_answer == "1924"
    turn = parse_turn("<answer>1</answer><answer>2</answer>")
    assert turn.final_answer == "1"
    assert len(turn.errors) == 1 and "more than one" in turn.errors[0]
    assert parse_turn("<answer></answer>").final_answer == ""


def test_calls_and_answer_in_one_turn() -> None:
    turn = parse_turn(CALL + "<answer>5</answer>")
    assert len(turn.calls) == 1 and turn.final_answer == "5" and turn.errors == []


def test_void_turn() -> None:
    for text in ["", "I think the answer is 5.", "<toolcall>{}</toolcall>", "<answer 5>"]:
        turn = parse_turn(text)
        assert turn.void and turn.calls == [] and turn.final_answer is None


def test_huge_payloads_are_capped() -> None:
    big = format_tool_call("calculator", {"expression": "1" * (MAX_CALL_CHARS + 10)})
    turn = parse_turn(big)
    assert turn.calls[0].error is not None and "longer than" in turn.calls[0].error

    turn = parse_turn("x" * (MAX_TURN_CHARS + 1000) + CALL)
    assert turn.calls == [] and any("turn longer" in e for e in turn.errors)

    turn = parse_turn(CALL * (MAX_CALLS + 5))
    assert len(turn.calls) == MAX_CALLS
    assert len(turn.errors) == 1 and "more than" in turn.errors[0]

    long_answer = parse_turn("<answer>" + "9" * 10_000 + "</answer>")
    assert long_answer.final_answer is not None and len(long_answer.final_answer) < 10_000
    assert long_answer.errors


def test_unicode() -> None:
    text = format_tool_call("calculator", {"expression": "3 × 4 ≈ 🙂"}) + "<answer>δώδεκα 😀</answer>"
    turn = parse_turn(text)
    assert turn.calls[0].arguments == {"expression": "3 × 4 ≈ 🙂"}
    assert turn.final_answer == "δώδεκα 😀"
    turn = parse_turn('<tool_call>{"name": "f", "arguments": {"s": "\\ud800"}}</tool_call>')
    assert turn.calls[0].error is None  # lone surrogate escape decodes; the env cleans outputs


@pytest.mark.parametrize(
    "text",
    [
        "<",
        "<tool_call>",
        "</answer></answer><answer>",
        "<tool_call><tool_call><answer></tool_call>",
        "<tool_call>{}</tool_call>" * 3,
        "\x00\x01<answer>\x00</answer>",
        '<tool_call>{"name": "a", "arguments": {"x": NaN}}</tool_call>',
        "<tool_call>" * 1000,
    ],
)
def test_never_raises(text: str) -> None:
    assert isinstance(parse_turn(text), ParsedTurn)


def test_non_str_input_does_not_raise() -> None:
    assert parse_turn(b"<answer>3</answer>").final_answer == "3"  # type: ignore[arg-type]
    assert parse_turn(None).void  # type: ignore[arg-type]


def test_format_helpers_round_trip() -> None:
    text = format_tool_call("calculator", {"expression": "37 * 52"})
    assert text == CALL
    assert json.loads(text[len("<tool_call>") : -len("</tool_call>")])["name"] == "calculator"
    assert parse_turn(format_answer("7")).final_answer == "7"


def test_registry() -> None:
    assert "json_tags" in PARSERS
    with pytest.raises(RegistryError, match="json_tags"):
        parse_turn("x", parser="no_such_parser")

    @PARSERS.register("test_everything_is_an_answer")
    def everything(text: str) -> ParsedTurn:
        return ParsedTurn(final_answer=text)

    try:
        assert parse_turn("hi", parser="test_everything_is_an_answer").final_answer == "hi"
        with pytest.raises(RegistryError):
            PARSERS.register("test_everything_is_an_answer")(everything)
    finally:
        PARSERS.unregister("test_everything_is_an_answer")


def test_a_raising_plugin_parser_is_contained() -> None:
    def broken(text: str) -> ParsedTurn:
        raise KeyError("boom")

    turn = parse_turn("x", parser=broken)
    assert turn.void and turn.errors and "KeyError" in turn.errors[0]


# ---- python_call ---------------------------------------------------------------------------------

PY = "python_call"


def py(text: str) -> ParsedTurn:
    return parse_turn(text, PY)


def test_python_call_reads_keyword_literals() -> None:
    turn = py('<tool_call>calculator(expression="37 * 52")</tool_call> <answer>1924</answer>')
    assert [(c.name, c.arguments, c.error) for c in turn.calls] == [
        ("calculator", {"expression": "37 * 52"}, None)
    ]
    assert turn.final_answer == "1924" and turn.errors == []
    turn = py("<tool_call>f(a=-1.5, b=[1, (2, 3)], c={'k': None}, d=True, e='x')</tool_call>")
    assert turn.calls[0].arguments == {"a": -1.5, "b": [1, [2, 3]], "c": {"k": None}, "d": True, "e": "x"}
    assert py("<tool_call>now()</tool_call>").calls[0].arguments == {}


@pytest.mark.parametrize(
    "body",
    [
        "\n    f(i=0)\n    g(i=1)\n",  # one per line, indented
        "f(i=0); g(i=1)",
        "[f(i=0), g(i=1)]",  # BFCL's list style
        "f(\n  i=0,\n)\ng(i=1)",  # a call spanning lines
    ],
)
def test_python_call_several_calls_per_block(body: str) -> None:
    turn = py(f"<tool_call>{body}</tool_call>")
    assert [(c.name, c.arguments) for c in turn.calls] == [("f", {"i": 0}), ("g", {"i": 1})]
    assert turn.errors == []


def test_python_call_dotted_names() -> None:
    assert py("<tool_call>math.factorial(n=5)</tool_call>").calls[0].name == "math.factorial"


@pytest.mark.parametrize(
    "body, name, fragment",
    [
        ("f(1, 2)", "f", "positional arguments are not allowed"),
        ("f(*xs)", "f", "positional arguments are not allowed"),
        ("f(**kw)", "f", "** unpacking"),
        ("f(a=1, a=2)", "f", "given twice"),
        ("f(a=x)", "f", "is not a literal"),
        ("f(a=true)", "f", "True/False/None"),
        ("f(a=1 + 2)", "f", "is not a literal"),
        ("f(a=g(b=1))", "f", "is not a literal"),
        ("f(a={1, 2})", "f", "set is not a JSON value"),
        ("f(a=b'x')", "f", "bytes is not a JSON value"),
        ("f(a=1j)", "f", "complex is not a JSON value"),
        ("f(a={1: 2})", "f", "keys must be strings"),
        ("f(a=...)", "f", "ellipsis is not a JSON value"),
        ("f()(a=1)", "", "must be a (dotted) name"),
        ('{"name": "f", "arguments": {}}', "", "must be a call, got Dict"),
        ("x = f(a=1)", "", "must be a call, got Assign"),
        ("import os", "", "must be a call, got Import"),
        ("f(a=", "", "not valid Python"),
        ("f(a=1", "", "not valid Python"),
        ("", "", "empty tool call"),
        ("[]", "", "empty tool call"),
        ("f(a=" + "[" * 300 + "]" * 300 + ")", "", "not valid Python"),
        ("f(a=1" + "0" * 5000 + ")", "", "not valid Python"),
        ("f(a='\ud800')", "", "not valid Python"),
        ("f\x00(a=1)", "", "not valid Python"),
    ],
)
def test_python_call_malformed_call_is_kept_with_error(body: str, name: str, fragment: str) -> None:
    turn = py(f"<tool_call>{body}</tool_call>")
    assert len(turn.calls) == 1, turn
    call = turn.calls[0]
    assert call.name == name and call.arguments == {}
    assert call.error is not None and fragment in call.error, call.error
    assert turn.errors == [call.error] and not turn.void
    assert "0x" not in call.error  # no object addresses: the same turn gives the same message


def test_python_call_one_bad_call_does_not_spoil_its_neighbours() -> None:
    turn = py("<tool_call>f(a=1)\ng(2)\nh(c='x')</tool_call>")
    assert [(c.name, c.error is None) for c in turn.calls] == [("f", True), ("g", False), ("h", True)]
    assert len(turn.errors) == 1


def test_python_call_shares_the_tag_rules_and_limits() -> None:
    assert py("<tool_call>f(a=1)").calls[0].error == "unclosed <tool_call>"
    nested = py("<tool_call><tool_call>f(a=1)</tool_call></tool_call>")
    assert "cannot nest" in (nested.calls[0].error or "")
    assert py("I think 5.").void
    big = py("<tool_call>f(a='" + "1" * MAX_CALL_CHARS + "')</tool_call>")
    assert "longer than" in (big.calls[0].error or "")
    many = py("<tool_call>" + "\n".join(f"f(i={i})" for i in range(MAX_CALLS + 5)) + "</tool_call>")
    assert len(many.calls) == MAX_CALLS and len(many.errors) == 1 and "more than" in many.errors[0]
    blocks = py("<tool_call>f(i=0)\nf(i=1)</tool_call>" * MAX_CALLS)
    assert len(blocks.calls) == MAX_CALLS and len(blocks.errors) == 1
    assert py("x" * (MAX_TURN_CHARS + 10)).errors


def test_formats_are_registered_parsers_with_writers() -> None:
    for name in ("json_tags", "python_call"):
        fmt = get_format(name)
        assert isinstance(fmt, ToolCallFormat) and PARSERS.resolve(name) is fmt
        assert fmt("<answer>7</answer>").final_answer == "7"  # callable as its parser
        assert "<answer>" in fmt.instruction
    assert format_tool_call("f", {"a": 1}, style="python_call") == "<tool_call>f(a=1)</tool_call>"
    assert format_answer("7", style="python_call") == "<answer>7</answer>"
    assert format_tool_call("f", {"a": 1}) == format_tool_call("f", {"a": 1}, style="json_tags")


def test_a_bare_parser_has_no_writer() -> None:
    PARSERS.register("test_bare")(lambda text: ParsedTurn(final_answer=text))
    try:
        with pytest.raises(RegistryError, match=r"bare parser.*json_tags, python_call"):
            format_tool_call("f", {}, style="test_bare")
    finally:
        PARSERS.unregister("test_bare")


@pytest.mark.parametrize(
    "name, arguments",
    [
        ("f-g", {}),
        ("1f", {}),
        ("f", {"class": 1}),
        ("f", {"from-unit": 1}),
        ("f", {"ﬁ": 1}),  # NFKC-normalized by Python: would read back as "fi"
        ("f", {"a": float("nan")}),
        ("f", {"a": {1: 2}}),
        ("f", {"a": {1, 2}}),
    ],
)
def test_python_call_writer_refuses_what_it_cannot_write(name: str, arguments: dict) -> None:
    with pytest.raises(ValueError, match="python_call"):
        format_tool_call(name, arguments, style="python_call")


def test_writers_escape_tag_like_strings() -> None:
    arguments = {"sql": "SELECT '</tool_call>' WHERE a < 5", "s": "<answer>x</answer>"}
    for style in ("json_tags", "python_call"):
        text = format_tool_call("f", arguments, style=style)
        assert text.count("</tool_call>") == 1 and "<answer>" not in text
        assert "a < 5" in text  # a plain "<" stays readable
        turn = parse_turn(text, style)
        assert turn.calls[0].arguments == arguments and turn.errors == []


_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True).filter(
    lambda s: not keyword.iskeyword(s)
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _same(a: object, b: object) -> bool:
    """Equal with types (True != 1, 1.0 != 1), as JSON text."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@settings(max_examples=300, deadline=None)
@given(
    style=st.sampled_from(["json_tags", "python_call"]),
    name=st.builds(lambda parts: ".".join(parts), st.lists(_NAME, min_size=1, max_size=3)),
    arguments=st.dictionaries(_NAME, _JSON, max_size=5),
)
def test_round_trip_parse_of_format(style: str, name: str, arguments: dict) -> None:
    turn = parse_turn(format_tool_call(name, arguments, style=style), style)
    assert turn.errors == [] and len(turn.calls) == 1
    call = turn.calls[0]
    assert call.name == name and _same(call.arguments, arguments)


@settings(max_examples=300, deadline=None)
@given(style=st.sampled_from(["json_tags", "python_call"]), text=st.text(max_size=300))
def test_parsers_never_raise_on_text(style: str, text: str) -> None:
    for candidate in (text, f"<tool_call>{text}</tool_call>", f"<tool_call>f(a={text})</tool_call>"):
        assert isinstance(parse_turn(candidate, style), ParsedTurn)
