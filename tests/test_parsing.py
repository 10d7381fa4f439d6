from __future__ import annotations

import json

import pytest

from actorlearner.parsing import (
    MAX_CALL_CHARS,
    MAX_CALLS,
    MAX_TURN_CHARS,
    PARSERS,
    ParsedTurn,
    format_answer,
    format_tool_call,
    parse_turn,
)
from actorlearner.registry import RegistryError

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
