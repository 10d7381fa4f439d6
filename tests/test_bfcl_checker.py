"""The BFCL env's scorer against BFCL's own checker, task by task and mutation by mutation.

For every task of the scored categories, the ground-truth answer and mutations of it (per parameter:
dropped, retyped, re-cased, a tuple for a list, ``[]``/``""`` for an optional one, nested dict and
list items changed; per call: an unknown parameter, a wrong name; per task: calls swapped, dropped
or repeated) go through the env, written as a turn, and through ``bfcl_eval``'s ``ast_checker``. The
env's ``success`` must be the checker's ``valid``, and ToolRL's maximum reward must go to exactly the
answers the checker accepts. Each task is checked with one mutation of each kind, drawn with a seed
(``BFCL_CHECKER_ALL=1`` checks every one); half of the answers are written as Python calls
(``python_call``, which keeps tuples), the others as JSON.
"""

from __future__ import annotations

import importlib
import keyword
import math
import os
import random
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest

from actorlearner.env.parsing import TupleList, format_tool_call, parse_turn

pytest.importorskip("bfcl_eval", reason="needs `pip install --no-deps bfcl-eval` (make install does it)")

from envs.bfcl import BFCL, BFCLTask, python_value, value_ok

CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)
"""The categories BFCL scores with its AST checker (the irrelevance ones need no call)."""
ALL = bool(os.environ.get("BFCL_CHECKER_ALL"))
"""Check every mutation of every task, not one of each kind per task (about twice as many)."""
MODEL = "stub"
"""The model name passed to the checker (names are compared as written: no ``.`` -> ``_``)."""

Call = tuple[str, dict[str, Any]]
Checker = Callable[[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], str], bool]


@dataclass(frozen=True)
class Candidate:
    """One answer to a task: the mutation kind that made it and its calls."""

    kind: str
    calls: tuple[Call, ...]


def import_ast_checker() -> Checker:
    """BFCL's ``ast_checker`` for Python, imported without the provider SDKs it drags in.

    ``bfcl_eval.constants.model_config`` imports every provider's SDK; the checker reads only
    ``MODEL_CONFIG_MAPPING[model].underscore_to_dot`` from it, so a stub stands in while importing
    (``sys.modules`` is restored afterwards).
    """
    stub = types.ModuleType("bfcl_eval.constants.model_config")
    stub.MODEL_CONFIG_MAPPING = {MODEL: types.SimpleNamespace(underscore_to_dot=False)}  # type: ignore[attr-defined]
    with mock.patch.dict(sys.modules, {stub.__name__: stub}):
        checker = importlib.import_module("bfcl_eval.eval_checker.ast_eval.ast_checker")
        enums = importlib.import_module("bfcl_eval.constants.enums")

    def check(functions: Any, output: Any, truth: Any, category: str) -> bool:
        result = checker.ast_checker(functions, output, truth, enums.Language.PYTHON, category, MODEL)
        return bool(result["valid"])

    return check


# ---- answers: the ground truth and its mutations -------------------------------------------------

OMIT = object()
"""A parameter left out."""


def first_value(options: Sequence[Any]) -> Any:
    """The first acceptable value as a model would pass it (dict answers -> plain dicts), or OMIT."""
    values = [v for v in options if v != ""]
    if not values:
        return OMIT
    value = values[0]
    if isinstance(value, dict):
        return plain_dict(value)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [plain_dict(v) for v in value]
    return value


def plain_dict(answer: Mapping[str, Any]) -> dict[str, Any]:
    """A dict parameter's answer ``{key: [acceptable values]}`` -> ``{key: first value}``."""
    out = {}
    for key, options in answer.items():
        value = first_value(options) if isinstance(options, list) else options
        if value is not OMIT:
            out[key] = value
    return out


def scalar_mutations(value: Any) -> Iterator[tuple[str, Any]]:
    """Retyped and changed versions of a bool, number or string."""
    if isinstance(value, bool):
        yield "bool->int", int(value)
        yield "bool flipped", not value
    elif isinstance(value, int):
        yield "int->float", float(value)
        yield "int->str", str(value)
        yield "int->bool", bool(value)
        yield "int changed", value + 1
    elif isinstance(value, float):
        yield "float->int", int(value) if math.isfinite(value) else 0
        yield "float->str", str(value)
        yield "float changed", value * 2 + 1
    elif isinstance(value, str):
        yield "str upper", value.upper()
        yield "str swapcase", value.swapcase()
        yield "str punctuation", f" {value}.-"
        yield "str changed", value + "zq"
        yield "str quotes swapped", value.replace("'", "\0").replace('"', "'").replace("\0", '"')
        yield "str->list", [value]
        if value.lstrip("-").isdigit():
            yield "str->int", int(value)


def list_mutations(value: list[Any], depth: int) -> Iterator[tuple[str, Any]]:
    """A list as a tuple, with retyped items, reordered, shortened, and its first item mutated."""
    yield "list->tuple", tuple(value)
    numbers = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if numbers:
        yield "list items->float", [float(v) if v in numbers else v for v in value]
        yield "list items->int", [int(v) if v in numbers and math.isfinite(v) else v for v in value]
    yield "list items->str", [str(v) for v in value]
    if len(value) > 1:
        yield "list reversed", value[::-1]
    if value:
        yield "list item dropped", value[:-1]
        yield "list->first item", value[0]
        yield "list item repeated", [*value, value[-1]]
        for kind, item in value_mutations(value[0], depth + 1):
            yield f"list item: {kind}", [item, *value[1:]]
    if any(isinstance(v, list) for v in value):
        yield "inner lists->tuples", [tuple(v) if isinstance(v, list) else v for v in value]
    if value and all(isinstance(v, dict) for v in value):
        yield "list of dicts->tuple", tuple(value)


def dict_mutations(value: dict[str, Any], depth: int) -> Iterator[tuple[str, Any]]:
    """A dict with a key dropped or added, a value mutated, or wrapped in a list."""
    yield "dict key added", {**value, "zq_extra": 1}
    yield "dict->list", [value]
    yield "dict empty", {}
    for key in list(value)[:3]:
        yield "dict key dropped", {k: v for k, v in value.items() if k != key}
        for kind, item in value_mutations(value[key], depth + 1):
            yield f"dict value: {kind}", {**value, key: item}


def value_mutations(value: Any, depth: int = 0) -> Iterator[tuple[str, Any]]:
    """Every mutation of a value (``depth`` bounds how deep into lists and dicts they go)."""
    if depth > 2:
        return
    if isinstance(value, list):
        yield from list_mutations(value, depth)
    elif isinstance(value, dict):
        yield from dict_mutations(value, depth)
    else:
        yield from scalar_mutations(value)
    if value is not None:
        yield "None", None


def param_mutations(options: Sequence[Any], spec: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """A parameter dropped, given each acceptable value, ``""``, ``[]``, or a mutated value."""
    yield "param dropped", OMIT
    yield "empty str", ""
    yield "empty list", []
    for option in [o for o in options if o != ""][1:4]:
        yield "other acceptable value", first_value([option])
    value = first_value(options)
    yield from value_mutations(typed_value(spec) if value is OMIT else value)


def typed_value(spec: Mapping[str, Any]) -> Any:
    """A value of a parameter's documented type."""
    return {"integer": 3, "float": 1.5, "boolean": True, "dict": {}, "array": [1], "tuple": [1]}.get(
        str(spec.get("type")), "x"
    )


def base_calls(task: BFCLTask, optional: bool) -> list[Call]:
    """The ground-truth calls from the first acceptable values (``optional``: with optional ones)."""
    calls = []
    for truth in task.ground_truth:
        name, answers = next(iter(truth.items()))
        args = {k: first_value(v) for k, v in answers.items() if optional or "" not in v}
        calls.append((name, {k: v for k, v in args.items() if v is not OMIT}))
    return calls


def function_doc(task: BFCLTask, name: str) -> Mapping[str, Any]:
    """The task's doc of a function (an empty one when it has none)."""
    return next((f for f in task.functions if f["name"] == name), {})


def call_mutations(task: BFCLTask, calls: list[Call], index: int) -> Iterator[Candidate]:
    """Mutations of call ``index``: each of its parameters, an unknown parameter, a wrong name."""
    name, args = calls[index]
    answers = next(iter(task.ground_truth[index].values()))
    properties = function_doc(task, name).get("parameters", {}).get("properties", {})

    def replaced(kind: str, new_name: str, new_args: dict[str, Any]) -> Candidate:
        out = list(calls)
        out[index] = (new_name, new_args)
        return Candidate(kind, tuple(out))

    for key, options in answers.items():
        for kind, value in param_mutations(options, properties.get(key, {})):
            new = {k: v for k, v in args.items() if k != key}
            if value is not OMIT:
                new[key] = value
            yield replaced(f"{properties.get(key, {}).get('type')}: {kind}", name, new)
    yield replaced("unknown param", name, {**args, "zq_unknown": 1})
    extra = next((k for k in properties if k not in answers), None)  # documented, not in the truth
    if extra is not None:
        yield replaced("param not in ground truth", name, {**args, extra: typed_value(properties[extra])})
    yield replaced("wrong name", name + "_v2", args)
    yield replaced("name case", name.upper(), args)
    yield replaced("name dots->underscores", name.replace(".", "_"), args)
    others = [f["name"] for f in task.functions if f["name"] != name]
    if others:
        yield replaced("another function's name", others[0], args)


def candidates(task: BFCLTask) -> Iterator[Candidate]:
    """The ground truth (with and without optional parameters) and its mutations."""
    calls = base_calls(task, optional=True)
    yield Candidate("ground truth", tuple(calls))
    yield Candidate("ground truth without optional params", tuple(base_calls(task, optional=False)))
    yield Candidate("no call", ())
    yield Candidate("call repeated", (*calls, calls[0]))
    if len(calls) > 1:
        yield Candidate("calls reversed", tuple(calls[::-1]))
        yield Candidate("calls rotated", (*calls[1:], calls[0]))
        yield Candidate("call dropped", tuple(calls[:-1]))
        yield Candidate("call in place of another", (calls[0], *calls[:-1]))
    for index in range(len(calls)):
        yield from call_mutations(task, calls, index)


def sample(task: BFCLTask, found: list[Candidate]) -> list[Candidate]:
    """One candidate of each mutation kind, drawn with the task's id as seed (all with ``ALL``)."""
    if ALL:
        return found
    by_kind: dict[str, list[Candidate]] = {}
    for candidate in found:
        by_kind.setdefault(candidate.kind, []).append(candidate)
    rng = random.Random(task.id)
    return [rng.choice(group) for group in by_kind.values()]


# ---- writing a candidate as a turn ----------------------------------------------------------------


def has_tuple(value: Any) -> bool:
    """Whether a tuple occurs anywhere in a value."""
    if isinstance(value, tuple):
        return True
    if isinstance(value, list):
        return any(has_tuple(v) for v in value)
    if isinstance(value, dict):
        return any(has_tuple(v) for v in value.values())
    return False


def python_writable(name: str, args: Mapping[str, Any]) -> bool:
    """Whether a call can be written as a Python call with keyword arguments."""
    names = [*name.split("."), *args]
    return all(n.isidentifier() and not keyword.iskeyword(n) for n in names)


def render(candidate: Candidate, python: bool) -> tuple[str, str] | None:
    """``(parser, turn)``: Python calls when asked or a tuple is passed, else JSON; None if unwritable."""
    calls = candidate.calls
    python = python or any(has_tuple(args) for _, args in calls)
    if python and all(python_writable(name, args) for name, args in calls):
        text = ", ".join(
            f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})" for name, args in calls
        )
        return "python_call", f"<tool_call>[{text}]</tool_call>"
    if any(has_tuple(args) for _, args in calls):
        return None
    return "json_tags", "".join(format_tool_call(name, args) for name, args in calls)


# ---- the comparison ----------------------------------------------------------------------------


@dataclass
class Tally:
    """A comparison run: candidates checked, checker crashes, disagreements by kind and examples."""

    checked: int = 0
    crashed: int = 0
    disagreements: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(
        self, task: BFCLTask, candidate: Candidate, valid: bool, success: bool, reward: float, turn: str
    ) -> None:
        """Records one comparison: the env's verdict, and whether its reward is ToolRL's maximum."""
        self.checked += 1
        best = reward == pytest.approx(4.0)
        if success == valid and best == valid:
            return
        what = "success" if success != valid else "reward"
        self.disagreements[f"{what}: {candidate.kind}"] += 1
        self.examples.append(
            f"{task.id} {candidate.kind}: bfcl={valid} env={success} reward={reward:.2f} {turn[:300]}"
        )


def compare(category: str, check: Checker, tally: Tally) -> None:
    """Scores every task's candidates with the env and the checker, counting disagreements."""
    envs = {parser: BFCL(category=category, parser=parser) for parser in ("json_tags", "python_call")}
    for index, task in enumerate(envs["json_tags"].tasks):
        for position, candidate in enumerate(sample(task, list(candidates(task)))):
            turn = render(candidate, python=position % 2 == 1)
            if turn is None:
                continue
            output = [{name: args} for name, args in candidate.calls]
            try:
                valid = check(task.functions, output, task.ground_truth, category)
            except Exception:  # BFCL's checker crashes on some malformed answers: no verdict to match
                tally.crashed += 1
                continue
            env = envs[turn[0]]
            env.reset(options={"index": index})
            _, reward, _, _, info = env.step(turn[1])
            tally.add(task, candidate, valid, info["success"], reward, turn[1])


@pytest.fixture(scope="module")
def ast_checker() -> Checker:
    return import_ast_checker()


@pytest.mark.parametrize("category", CATEGORIES)
def test_env_agrees_with_bfcl_ast_checker(category: str, ast_checker: Checker) -> None:
    tally = Tally()
    compare(category, ast_checker, tally)
    assert tally.checked > 10 * len(BFCL(category=category))
    assert not tally.disagreements, (tally.disagreements, tally.examples[:10])


# ---- the disagreements found before, one by one --------------------------------------------------

FLOATS = {"type": "array", "items": {"type": "float"}}
INTS = {"type": "array", "items": {"type": "integer"}}
DICTS = {"type": "array", "items": {"type": "dict", "properties": {"a": {"type": "integer"}}}}
PAIR = {"type": "tuple", "items": {"type": "integer"}}


@pytest.mark.parametrize(
    "spec, acceptable, value, expected",
    [
        (FLOATS, [[1.0, 2.0]], [1.0, 2.0], True),
        (FLOATS, [[1.0, 2.0]], [1, 2], False),  # ints for a float array: the nested type check fails
        (FLOATS, [[1.0, 2.0]], [1.0, 2], False),
        (INTS, [[1, 2]], [1.0, 2.0], False),  # and the reverse
        (INTS, [[1, 2]], [True, 2], False),
        (INTS, [[1, 2]], [1, 2], True),
        (DICTS, ["", [{"a": [1]}]], [], True),  # [] for an optional list of dicts ("" has length 0)
        (DICTS, ["", [{"a": [1]}]], [{"a": 1}], True),
        (DICTS, ["", [{"a": [1]}]], [{"a": 2}], False),
        (INTS, [[1, 2]], (1, 2), False),  # a tuple for an array
        (PAIR, [[1, 2]], (1, 2), True),  # but not for a tuple
        (PAIR, [[1, 2]], [1, 2], True),
        ({"type": "dict"}, [{"k": [[1]]}], {"k": (1,)}, False),
        ({"type": "integer"}, [2], 2.0, False),
        ({"type": "float"}, [2.0], 2, True),  # an int for a float is fine
        ({"type": "string"}, ["New York, NY"], "new york ny", True),
    ],
)
def test_value_check_is_bfcls(
    spec: dict[str, Any], acceptable: list[Any], value: Any, expected: bool, ast_checker: Checker
) -> None:
    assert value_ok(spec, value, acceptable) is expected
    functions = [{"name": "f", "parameters": {"type": "dict", "properties": {"x": spec}, "required": []}}]
    assert (
        ast_checker(functions, [{"f": {"x": value}}], [{"f": {"x": acceptable}}], "simple_python") is expected
    )


def step(category: str, task_id: str, turn: str, parser: str = "json_tags") -> tuple[bool, float]:
    """``(success, reward)`` of one turn on one task."""
    env = BFCL(category=category, parser=parser)
    env.reset(options={"index": next(i for i, t in enumerate(env.tasks) if t.id == task_id)})
    _, reward, _, _, info = env.step(turn)
    return info["success"], reward


def test_python_call_tuples_are_rejected_for_arrays() -> None:
    parsed = parse_turn("<tool_call>f(a=(1, 2), b=[(3,)], c={'k': ()})</tool_call>", "python_call")
    args = parsed.calls[0].arguments
    assert args == {"a": [1, 2], "b": [[3]], "c": {"k": []}}  # still lists to everyone else
    assert type(args["a"]) is TupleList and type(args["b"][0]) is TupleList and type(args["b"]) is list
    assert python_value(args) == {"a": (1, 2), "b": [(3,)], "c": {"k": ()}}
    written = format_tool_call("f", args, style="python_call")
    assert written == "<tool_call>f(a=(1, 2), b=[(3,)], c={'k': ()})</tool_call>"
    call = "create_histogram(data={}, bins=5)"  # data: an array of integers
    good, bad = call.format("[85, 90, 88, 92, 86, 89, 91]"), call.format("(85, 90, 88, 92, 86, 89, 91)")
    assert step("simple_python", "simple_python_79", f"<tool_call>{good}</tool_call>", "python_call") == (
        True,
        4.0,
    )
    success, reward = step(
        "simple_python", "simple_python_79", f"<tool_call>{bad}</tool_call>", "python_call"
    )
    assert not success and reward < 4.0


def test_int_list_for_a_float_array_fails() -> None:
    call = {"function": "x**2", "interval": [1.0, 3.0]}
    assert step("simple_python", "simple_python_13", format_tool_call("calculate_area_under_curve", call))[0]
    call["interval"] = [1, 3]
    success, reward = step(
        "simple_python", "simple_python_13", format_tool_call("calculate_area_under_curve", call)
    )
    assert not success and reward < 4.0


def test_empty_list_for_an_optional_list_of_dicts() -> None:
    call = {"rank": "Queen", "suit": "Hearts", "deck": []}
    assert step("simple_python", "simple_python_335", format_tool_call("find_card_in_deck", call)) == (
        True,
        4.0,
    )


def test_toolrl_maximum_only_for_bfcl_correct_answers() -> None:
    calls = [(5, 2.0), (5, 2), (10, 3), (10, 3)]  # a float for an int, before the right call
    turn = "".join(format_tool_call("random.normalvariate", {"mu": m, "sigma": s}) for m, s in calls)
    success, reward = step("parallel", "parallel_158", turn)
    assert not success and reward < 4.0
    assert step("parallel", "parallel_158", turn.replace("2.0", "2")) == (True, 4.0)
    # a ground-truth parameter the function does not document: BFCL can accept no answer
    turn = format_tool_call(
        "transfer_to_human_agent", {"question": "Can you tell me what is the minimum package arrival time?"}
    )
    success, reward = step("live_multiple", "live_multiple_964-207-0", turn)
    assert not success and reward < 4.0
