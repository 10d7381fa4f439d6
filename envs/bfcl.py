"""BFCL: the Berkeley Function Calling Leaderboard (v4) single-turn categories as a gymnasium env.

The data comes from the ``bfcl-eval`` wheel (Apache-2.0), read through ``importlib.resources``:
``bfcl_eval/data/BFCL_v4_<category>.json`` (one task per line: ``id``, ``question`` and the
``function`` docs) and ``bfcl_eval/data/possible_answer/BFCL_v4_<category>.json`` (the ground
truth). Install it without its dependencies, which pin numpy 1.x::

    pip install --no-deps bfcl-eval

An episode is one task and one turn: ``reset`` serves the task's messages with its function docs in
``info["tools"]`` (converted to the ``{"type": "function", "function": {...}}`` format), ``step``
parses the model's ``<tool_call>`` JSON calls (:func:`actorlearner.env.parsing.parse_turn`), scores
them and terminates. ``reset(seed=i)`` serves task ``i % len(tasks)`` (so evaluation seeds
``0..n-1`` visit the tasks in file order); ``options={"index": i}`` picks one; without either the
env's generator draws one.

Scoring follows BFCL's AST checker for Python (:func:`bfcl_check`; ``bfcl_eval``'s ``ast_checker``
gives the same verdict on every task and on mutations of its answer, tests/test_bfcl_checker.py):
each ground-truth parameter maps to a list of acceptable values (``""`` in the list: the parameter
may be omitted), strings compare case-, space- and punctuation-insensitively, an int is accepted
for a float but not inside a list (array items must have the item type), a tuple (``python_call``
keeps them, :class:`~actorlearner.env.parsing.TupleList`) only for a ``tuple`` parameter, parallel
calls match in any order, and in the irrelevance categories making no call is correct. ``success``
is that verdict. The reward is ToolRL's (:func:`envs.rewards.toolrl_reward`, components ``format``,
``name``, ``keys``, ``values`` summing to it, in [-3, 4]) against the ground truth, judging a value
with the same check, so that a well-formatted turn earns the maximum exactly when BFCL marks it
correct. The env's own ``info`` keys (the ToolRL breakdown, the verdict and its reason) are
:class:`BFCLInfo`'s.

:data:`BFCL_SUITE` is the evaluation suite behind ``actorlearner eval --bfcl`` (registered by
:func:`envs.register_envs`).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from actorlearner.env.info import StepInfo, ToolCallInfo
from actorlearner.env.parsing import PARSERS, TupleList, format_answer, format_tool_call, parse_turn
from actorlearner.env.suites import EvalSuite
from actorlearner.env.toolenv import ChatMessages, Messages
from envs.rewards import toolrl_reward

CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
)
"""The supported BFCL v4 categories (single-turn, Python)."""

INSTALL_HINT = "pip install --no-deps bfcl-eval  (or `make install`)"

_TYPE_TO_JSON = {"dict": "object", "float": "number", "tuple": "array", "any": "string"}
"""BFCL parameter types that JSON schema spells differently."""
_PY_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "any": str,
}
"""BFCL parameter type -> the Python type a decoded value must have (BFCL's PYTHON_TYPE_MAPPING)."""


@dataclass(frozen=True)
class BFCLTask:
    """One BFCL task.

    Attributes:
        id: BFCL's id, e.g. ``"simple_python_0"``.
        category: The category it belongs to.
        messages: The chat messages of its (single) turn.
        functions: Its function docs, as BFCL writes them.
        ground_truth: ``[{name: {param: [acceptable values]}}]``; empty for irrelevance.
    """

    id: str
    category: str
    messages: list[dict[str, Any]]
    functions: list[dict[str, Any]]
    ground_truth: list[dict[str, dict[str, list[Any]]]]


def _data_dir() -> Any:
    try:
        return importlib.resources.files("bfcl_eval") / "data"
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"the BFCL env needs the bfcl-eval package for its data; install it with: {INSTALL_HINT}"
        ) from err


def _read_lines(path: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@functools.cache
def load_bfcl(category: str) -> tuple[BFCLTask, ...]:
    """Loads the tasks of one BFCL category from the installed ``bfcl-eval`` wheel.

    Args:
        category: One of :data:`CATEGORIES`.

    Returns:
        The tasks in file order.

    Raises:
        ValueError: If the category is not supported.
        ModuleNotFoundError: If ``bfcl-eval`` is not installed (the message says how to install it).
    """
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {list(CATEGORIES)}, got {category!r}")
    data = _data_dir()
    rows = _read_lines(data / f"BFCL_v4_{category}.json")
    answers: dict[str, Any] = {}
    if "irrelevance" not in category:
        answers = {
            a["id"]: a["ground_truth"]
            for a in _read_lines(data / "possible_answer" / f"BFCL_v4_{category}.json")
        }
    tasks = []
    for row in rows:
        truth = answers.get(row["id"], []) if answers else []
        if answers and row["id"] not in answers:
            raise ValueError(f"BFCL {category}: task {row['id']} has no possible answer")
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in row["question"][0]]
        tasks.append(BFCLTask(row["id"], category, messages, list(row["function"]), list(truth)))
    return tuple(tasks)


def to_tool_schema(function: Mapping[str, Any]) -> dict[str, Any]:
    """Converts a BFCL function doc to ``{"type": "function", "function": {...}}`` (JSON-schema types)."""
    return {
        "type": "function",
        "function": {
            "name": function["name"],
            "description": function.get("description", ""),
            "parameters": _convert_types(function.get("parameters", {"type": "dict", "properties": {}})),
        },
    }


def _convert_types(node: Any) -> Any:
    """A copy of a BFCL schema node with ``dict/float/tuple/any`` types renamed for JSON schema."""
    if isinstance(node, list):
        return [_convert_types(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, str):
            out[key] = _TYPE_TO_JSON.get(value, value)
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: _convert_types(spec) for name, spec in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _convert_types(value)
        else:
            out[key] = value
    return out


# ---- BFCL's acceptable-values checker (Python; after bfcl_eval's ast_checker, Apache-2.0) -------

_PUNCTUATION_RE = re.compile(r"[ ,./\-_*^]")


def standardize_string(text: str) -> str:
    """BFCL's string normalization: no spaces or ``,./-_*^``, lowercase, ``'`` -> ``"``."""
    return _PUNCTUATION_RE.sub("", text).lower().replace("'", '"')


def _std(value: Any) -> Any:
    return standardize_string(value) if isinstance(value, str) else value


def _answer_type(acceptable: Sequence[Any]) -> type | None:
    return next((type(a) for a in acceptable if a != ""), None)


def _type_ok(value: Any, acceptable: Sequence[Any], expected: type, nested: type | None) -> tuple[bool, bool]:
    """BFCL's type check: ``(valid, is_variable)``; the type of the acceptable values may stand in.

    A value of the expected type must pass the check of its items (``nested``) against one list of
    acceptable values, else it is invalid even when the acceptable values have its type.
    """
    answer_type = _answer_type(acceptable)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if nested is None or any(_items_ok(value, item, nested) for item in acceptable):
            return True, is_variable
        return False, False
    if answer_type is not None and type(value) is answer_type:
        return True, True
    return False, False


def _items_ok(value: Any, acceptable_item: Any, nested: type) -> bool:
    """BFCL's nested check of one acceptable value: a list holds the expected item type."""
    if not isinstance(acceptable_item, list):
        return True  # "" (optional) or a variable name: nothing to check the items against
    return all(_type_ok(v, acceptable_item, nested, None)[0] for v in value)


def _dict_ok(value: Mapping[str, Any], acceptable: Sequence[Any]) -> bool:
    for answer in acceptable:
        if answer == "" or not isinstance(answer, dict):
            continue
        if all(k in answer and _std(v) in [_std(a) for a in answer[k]] for k, v in value.items()) and all(
            k in value or "" in options for k, options in answer.items()
        ):
            return True
    return False


def _list_dict_ok(value: Sequence[Any], acceptable: Sequence[Any]) -> bool:
    """BFCL's list-of-dicts check: one acceptable list matched dict by dict (``""`` is empty)."""
    return any(
        isinstance(answer, (list, str))
        and len(answer) == len(value)
        and all(isinstance(v, dict) and _dict_ok(v, [a]) for v, a in zip(value, answer, strict=True))
        for answer in acceptable
    )


def _list_ok(value: Sequence[Any], acceptable: Sequence[Any]) -> bool:
    """BFCL's list check: strings normalized; a string acceptable value counts as its characters."""
    standardized = [_std(v) for v in value]
    return any(
        isinstance(answer, (list, str)) and standardized == [_std(x) for x in answer] for answer in acceptable
    )


def value_ok(spec: Mapping[str, Any], value: Any, acceptable: Sequence[Any]) -> bool:
    """Whether ``value`` is an acceptable value of a parameter (BFCL's type and value checks).

    Args:
        spec: The parameter's BFCL schema (its ``type`` and, for arrays, ``items``); without a
            known type (an undocumented parameter) no value is acceptable.
        value: The decoded value the model passed; a tuple is acceptable only for a ``tuple``
            parameter (BFCL's decoder keeps Python tuples).
        acceptable: The ground truth's acceptable values for the parameter.
    """
    type_name = spec.get("type")
    expected = _PY_TYPES.get(type_name) if isinstance(type_name, str) else None
    if expected is None:
        return False
    nested = None
    if type_name in ("array", "tuple"):
        items = spec.get("items")
        nested = _PY_TYPES.get(str(items.get("type"))) if isinstance(items, dict) else None
    if type_name == "tuple" and type(value) is tuple:
        value = list(value)
    if type_name == "float" and type(value) is int:
        value = float(value)
    valid, is_variable = _type_ok(value, acceptable, expected, nested)
    if not valid:
        return False
    if is_variable:
        return bool(value in acceptable)
    return _value_matches(value, acceptable, expected, nested)


def _value_matches(value: Any, acceptable: Sequence[Any], expected: type, nested: type | None) -> bool:
    """BFCL's value check of a value of the expected type."""
    if expected is dict:
        return _dict_ok(value, acceptable)
    if expected is list and nested is dict:
        return _list_dict_ok(value, acceptable)
    if expected is str:
        return standardize_string(value) in [standardize_string(a) for a in acceptable if isinstance(a, str)]
    if expected is list:
        return _list_ok(value, acceptable)
    return bool(value in acceptable)


def python_value(value: Any) -> Any:
    """A parsed argument as BFCL's decoder gives it: tuples the ``python_call`` parser read are tuples.

    Args:
        value: A JSON-like value from :func:`actorlearner.env.parsing.parse_turn`.

    Returns:
        A copy with every :class:`~actorlearner.env.parsing.TupleList` a ``tuple``.
    """
    if isinstance(value, TupleList):
        return tuple(python_value(v) for v in value)
    if isinstance(value, list):
        return [python_value(v) for v in value]
    if isinstance(value, dict):
        return {k: python_value(v) for k, v in value.items()}
    return value


def _find_function(functions: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    return next((f for f in functions if f.get("name") == name), None)


def _function_for(
    functions: Sequence[Mapping[str, Any]], truth: Mapping[str, Any], category: str
) -> Mapping[str, Any] | None:
    """The doc BFCL checks a ground-truth call with: the first one in the simple categories."""
    if "parallel" in category or "multiple" in category:
        return _find_function(functions, next(iter(truth)))
    return functions[0] if functions else None


def check_call(
    function: Mapping[str, Any] | None, call: Mapping[str, Any], truth: Mapping[str, Any]
) -> str | None:
    """Why one call does not match one ground-truth call (BFCL's simple checker), or None if it does.

    Args:
        function: The BFCL doc the ground-truth call is checked with (None: the data has none).
        call: ``{"name": str, "arguments": {...}}``, tuples as :func:`python_value` gives them.
        truth: ``{name: {param: [acceptable values]}}``.
    """
    answers = next(iter(truth.values()))
    if function is None:
        return f"no function doc for {next(iter(truth))!r}"
    name = function.get("name")
    if call.get("name") != name:
        return f"function name {name!r} not found"
    args = call.get("arguments", {})
    params = function.get("parameters", {})
    properties = params.get("properties", {})
    missing = [p for p in params.get("required", []) if p not in args]
    if missing:
        return f"missing required parameter {missing[0]!r}"
    for key, value in args.items():
        if key not in properties or key not in answers:
            return f"unexpected parameter {key!r}"
        if not value_ok(properties[key], value, answers[key]):
            return f"invalid value for parameter {key!r}: {value!r}"
    for key, options in answers.items():
        if key not in args and "" not in options:
            return f"parameter {key!r} not provided and not optional"
    return None


def bfcl_check(
    functions: Sequence[Mapping[str, Any]],
    calls: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    category: str,
) -> tuple[bool, str]:
    """BFCL's verdict on a model's calls for one task.

    Args:
        functions: The task's BFCL function docs.
        calls: The model's well-formed calls, ``{"name", "arguments"}`` each.
        ground_truth: ``[{name: {param: [acceptable values]}}]``.
        category: The task's category: ``irrelevance`` in it means making no call is correct,
            ``parallel`` that the calls match in any order, ``multiple`` that one call is expected.

    Returns:
        ``(correct, reason)``; the reason is ``""`` when correct.
    """
    if "irrelevance" in category:
        return (not calls, "" if not calls else "made a call where no function applies")
    if len(calls) != len(ground_truth):
        return False, f"wrong number of calls: {len(calls)} instead of {len(ground_truth)}"
    if "parallel" not in category:
        truth = ground_truth[0]
        error = check_call(_function_for(functions, truth, category), calls[0], truth)
        return error is None, error or ""
    used: set[int] = set()
    for index, truth in enumerate(ground_truth):
        function = _function_for(functions, truth, category)
        hit = next(
            (i for i, c in enumerate(calls) if i not in used and check_call(function, c, truth) is None), None
        )
        if hit is None:
            return False, f"no call matches ground-truth call {index} ({next(iter(truth))})"
        used.add(hit)
    return True, ""


@dataclass(frozen=True)
class Acceptable:
    """A ground-truth argument for ToolRL's value term: any of BFCL's acceptable values matches."""

    spec: Mapping[str, Any]
    values: tuple[Any, ...]

    def matches(self, value: Any) -> bool:
        """Whether ``value`` is acceptable (:func:`value_ok`)."""
        return value_ok(self.spec, value, list(self.values))


def _values_equal(predicted: Any, truth: Any) -> bool:
    return truth.matches(predicted) if isinstance(truth, Acceptable) else bool(predicted == truth)


def toolrl_ground_truth(
    functions: Sequence[Mapping[str, Any]],
    calls: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Ground-truth calls for ToolRL's reward from BFCL's acceptable values.

    Each argument is an :class:`Acceptable`, so ToolRL counts a value right exactly when BFCL's
    check of that parameter accepts it. A ground-truth call that one of the model's calls satisfies
    (BFCL's checker, matched in the same order) takes that call's parameters, so a BFCL-correct
    answer is an exact ToolRL match whichever optional parameters it passed. Otherwise it takes its
    non-optional and its required parameters (a required one without acceptable values never
    matches), so an answer BFCL rejects does not reach ToolRL's maximum.
    """
    used: set[int] = set()
    out: list[dict[str, Any]] = []
    for truth in ground_truth:
        name, answers = next(iter(truth.items()))
        function = _find_function(functions, name)
        hit = next(
            (i for i, c in enumerate(calls) if i not in used and check_call(function, c, truth) is None), None
        )
        params = (function or {}).get("parameters", {})
        if hit is not None:
            used.add(hit)
            keys = list(calls[hit]["arguments"])
        else:
            required = list(params.get("required", []))
            keys = [k for k, v in answers.items() if "" not in v or k in required]
            keys += [k for k in required if k not in answers]
        properties = params.get("properties", {})
        arguments = {k: Acceptable(properties.get(k, {}), tuple(answers.get(k, ()))) for k in keys}
        out.append({"name": name, "arguments": arguments})
    return out


class BFCLInfo(StepInfo, total=False):
    """BFCL's ``info``: :class:`~actorlearner.env.info.StepInfo` and the keys below.

    Attributes:
        bfcl_id: (reset) The task's BFCL id, e.g. ``simple_python_0``.
        toolrl: (step) ToolRL's full breakdown (:func:`envs.rewards.toolrl_reward`: ``format``,
            ``name``, ``keys``, ``values``, ``correct`` and ``total``).
        bfcl: (step) BFCL's verdict: ``{"id": str, "correct": bool, "error": str | None}`` (the reason
            when not correct).
    """

    bfcl_id: str
    toolrl: dict[str, float]
    bfcl: dict[str, Any]


class BFCL(gym.Env[Messages, str]):
    """One BFCL category as a single-turn env (see the module docstring).

    Args:
        category: One of :data:`CATEGORIES`.
        parser: Name of the tool-call parser in :data:`actorlearner.env.parsing.PARSERS`.
        render_mode: Unused.

    Raises:
        ValueError: If ``category`` is not supported (the message lists the supported ones).
        ModuleNotFoundError: If ``bfcl-eval`` is not installed (the message says how to install it).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012  (gymnasium's convention)

    def __init__(
        self, *, category: str = "simple_python", parser: str = "json_tags", render_mode: str | None = None
    ):
        if category not in CATEGORIES:
            raise ValueError(f"category must be one of {list(CATEGORIES)}, got {category!r}")
        self.category = category
        self.tasks = load_bfcl(category)
        self._parse = PARSERS.resolve(parser)
        self.render_mode = render_mode
        self.action_space = gym.spaces.Text(max_length=16_384, min_length=0, charset=string.printable)
        self.observation_space = ChatMessages(max_messages=64)
        self.task: BFCLTask | None = None
        self._done = True

    @property
    def task_id(self) -> str:
        """The gymnasium id when made with ``gymnasium.make``, else ``"BFCL"``."""
        return self.spec.id if self.spec is not None else type(self).__name__

    def __len__(self) -> int:
        return len(self.tasks)

    def reset(  # type: ignore[override]  # a typed info dict
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Messages, BFCLInfo]:
        """Serves task ``options["index"]``, else ``seed % len(tasks)``, else a random one.

        Returns:
            The task's messages and ``info`` (``sub_tasks`` is ``[category]``; see :class:`BFCLInfo`).
        """
        super().reset(seed=seed)
        if options and "index" in options:
            index = int(options["index"]) % len(self.tasks)
        elif seed is not None:
            index = int(seed) % len(self.tasks)
        else:
            index = int(self.np_random.integers(len(self.tasks)))
        self.task, self._done = self.tasks[index], False
        info: BFCLInfo = {
            "tools": [to_tool_schema(f) for f in self.task.functions],
            "prompt_id": f"BFCL:{self.task.id}",
            "sub_tasks": [self.category],
            "task_id": self.task_id,
            "bfcl_id": self.task.id,
        }
        return [dict(m) for m in self.task.messages], info

    def step(self, action: str) -> tuple[Messages, float, bool, bool, BFCLInfo]:  # type: ignore[override]
        """Scores the turn's calls and ends the episode (see the module docstring).

        Raises:
            RuntimeError: If called before ``reset`` or after the episode ended.
        """
        if self.task is None or self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        self._done = True
        task = self.task
        turn = parse_turn(action, self._parse)
        calls = [
            {"name": c.name, "arguments": python_value(c.arguments)} for c in turn.calls if c.error is None
        ]
        unparsable = any(c.error is not None for c in turn.calls)
        correct, reason = bfcl_check(task.functions, calls, task.ground_truth, task.category)
        if unparsable and "irrelevance" not in task.category:
            correct, reason = False, "a tool call could not be parsed"
        truth = toolrl_ground_truth(task.functions, calls, task.ground_truth)
        parts = toolrl_reward(
            None if unparsable else calls,
            truth,
            not turn.errors and not turn.void,
            values_equal=_values_equal,
        )
        components = {k: parts[k] for k in ("format", "name", "keys", "values")}
        names = {f["name"] for f in task.functions}
        records: list[ToolCallInfo] = [
            {
                "name": c.name,
                "arguments": c.arguments,
                "ok": c.error is None and c.name in names,
                "error": c.error or (None if c.name in names else f"unknown function {c.name!r}"),
                "output": None,
            }
            for c in turn.calls
        ]
        info: BFCLInfo = {
            "tool_calls": records,
            "final_answer": turn.final_answer,
            "reward_components": components,
            "success": bool(correct),
            "void": turn.void,
            "format_errors": list(turn.errors),
            "turn": 0,
            "toolrl": parts,
            "bfcl": {"id": task.id, "correct": bool(correct), "error": reason},
        }
        return [], float(sum(components.values())), True, False, info

    def ground_truth_turn(self, index: int | None = None) -> str:
        """A turn BFCL scores correct, built from the first acceptable value of each parameter.

        Args:
            index: Task index; the current task when None.

        Returns:
            ``<tool_call>`` blocks, or an ``<answer>`` when no function applies.

        Raises:
            RuntimeError: If ``index`` is None before ``reset``.
        """
        task = self.task if index is None else self.tasks[index]
        if task is None:
            raise RuntimeError("ground_truth_turn() needs reset() or an index")
        if not task.ground_truth:
            return format_answer("None of the functions applies.")
        turn = ""
        for truth in task.ground_truth:
            name, answers = next(iter(truth.items()))
            function = _find_function(task.functions, name) or {}
            required = set(function.get("parameters", {}).get("required", []))
            turn += format_tool_call(name, _first_values(answers, required))
        return turn


def _first_values(answers: Mapping[str, Sequence[Any]], required: Iterable[str] = ()) -> dict[str, Any]:
    """Arguments from acceptable values: the first value of each parameter not optional or required."""
    out = {}
    for key, options in answers.items():
        values = [v for v in options if v != ""]
        if not values or ("" in options and key not in required):
            continue
        value = values[0]
        if _is_answer_dict(value):
            value = _first_values(value)
        elif isinstance(value, list) and value and all(_is_answer_dict(v) for v in value):
            value = [_first_values(v) for v in value]
        out[key] = value
    return out


def _is_answer_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, list) for v in value.values())


def _num_tasks(category: str) -> int:
    return len(load_bfcl(category))


def _category_config(category: str) -> dict[str, Any]:
    return {"category": category}


def bfcl_accuracy(results_by_category: Mapping[str, Iterable[Any]]) -> dict[str, float]:
    """Accuracy per BFCL category and their unweighted mean.

    Args:
        results_by_category: Category -> its episodes: trajectories (anything with a ``success``
            attribute), ``info``-like mappings with ``"success"``, or booleans.

    Returns:
        ``{category: accuracy}`` for each category with at least one episode, and ``"overall"``,
        the mean of those accuracies (BFCL weighs categories, not tasks); empty when there is none.
    """
    out: dict[str, float] = {}
    for category, results in results_by_category.items():
        flags = [_success(r) for r in results]
        if flags:
            out[category] = float(np.mean(flags))
    if out:
        out["overall"] = float(np.mean(list(out.values())))
    return out


def _success(result: Any) -> bool:
    if isinstance(result, Mapping):
        return bool(result.get("success", False))
    if hasattr(result, "success"):
        return bool(result.success)
    return bool(result)


BFCL_SUITE = EvalSuite(
    name="bfcl",
    env="actorlearner/BFCL-v0",
    categories=CATEGORIES,
    env_config=_category_config,
    num_tasks=_num_tasks,
    score=bfcl_accuracy,
)
"""The BFCL evaluation suite (``actorlearner eval --bfcl``): greedy accuracy per category and overall."""
