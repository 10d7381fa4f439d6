"""``check_env``: does an env follow the actorlearner tool-env protocol?

In the spirit of ``gymnasium.utils.env_checker.check_env`` (whose ``data_equivalence`` it reuses),
for the protocol of :mod:`actorlearner.env.toolenv` rather than gymnasium's spaces. It works on any
``gymnasium.Env`` that follows the protocol, not only :class:`~actorlearner.env.toolenv.ToolEnv`
subclasses. The checks, each named in the error it raises:

* ``reset``: ``reset(seed=...)`` returns a non-empty list of ``{"role", "content"}`` messages and an
  ``info`` that fits :class:`~actorlearner.env.info.StepInfo`: the keys of ``RESET_REQUIRED``
  present, those of ``RESET_EXPECTED`` expected (a warning when missing), and every key of
  ``StepInfo`` it has of the annotated type.
* ``tools``: each entry of ``info["tools"]`` is in the OpenAI function format
  ``{"type": "function", "function": {"name", "description", "parameters"}}``, names are unique,
  ``parameters`` is an object schema whose ``required`` names are properties, and it is a valid
  JSON Schema (checked with ``jsonschema`` when installed, structurally otherwise).
* ``step``: ``step(text)`` returns ``(messages, reward, terminated, truncated, info)`` with a
  finite float reward, bool flags and an ``info`` that fits ``StepInfo`` (the keys of
  ``STEP_REQUIRED`` present, those of ``STEP_EXPECTED_AT_END`` expected on the last step, every
  key of the annotated type, nested tool-call records included), ``reward_components`` summing to
  the reward and each failed tool call carrying its ``error`` text.
* ``determinism``: the same seed gives the same messages, tools and ``prompt_id`` (after resets
  with other seeds, and on a fresh instance when the env has a gymnasium spec); the same seed and
  turn give the same step outcome. All seeds giving one prompt is a warning.
* ``malformed``: a handful of bad turns (broken JSON or Python, empty, prose, huge, nested and
  unclosed tags, unicode garbage, an unknown tool, missing arguments) never raise; a bad turn that
  does not end the episode gets an error observation (a tool message starting with ``"Error"`` or
  a user message); an unparsable turn never earns a positive ``"format"`` component.
* ``demonstration`` (when the env has ``demonstration(messages)``): demonstrated episodes play to
  the end within ``max_demo_turns``, each turn parses without format errors (so it follows the
  env's parser), and at least one succeeds (a warning otherwise).

Example:
    >>> from actorlearner import check_env
    >>> from envs.calculator import Calculator
    >>> report = check_env(Calculator())
    >>> report.checks[0]
    'reset'
"""

from __future__ import annotations

import contextlib
import json
import math
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints, is_typeddict

import gymnasium
import numpy as np
from gymnasium.utils.env_checker import data_equivalence

from actorlearner.core.knobs import is_int, is_number
from actorlearner.env.info import (
    RESET_EXPECTED,
    RESET_REQUIRED,
    STEP_EXPECTED_AT_END,
    STEP_REQUIRED,
    StepInfo,
    as_step_info,
)
from actorlearner.env.parsing import format_tool_call

try:  # jsonschema comes with ray; without it the schema checks are structural only
    import jsonschema
except ImportError:  # pragma: no cover
    jsonschema = None  # type: ignore[assignment]


class EnvCheckError(AssertionError):
    """An env breaks the tool-env protocol.

    Attributes:
        check: Name of the failed check (``"reset"``, ``"tools"``, ``"step"``, ``"determinism"``,
            ``"malformed"`` or ``"demonstration"``).
    """

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"check_env [{check}]: {message}")
        self.check = check


class EnvCheckWarning(UserWarning):
    """A soft issue: the env works but something is probably unintended."""


@dataclass
class EnvCheckReport:
    """What :func:`check_env` verified.

    Attributes:
        env: The env's description (gymnasium id or class name).
        checks: Names of the checks that passed, in order.
        warnings: Soft issues (also emitted as :class:`EnvCheckWarning`).
        distinct_prompts: Distinct ``prompt_id`` values over the checked seeds.
        demo_episodes: Demonstrated episodes played (0 without ``demonstration``).
        demo_successes: Of those, the ones that succeeded.
    """

    env: str
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    distinct_prompts: int = 0
    demo_episodes: int = 0
    demo_successes: int = 0

    def __str__(self) -> str:
        lines = [f"check_env({self.env}): passed {', '.join(self.checks)}"]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def check_env(
    env: gymnasium.Env,
    *,
    seeds: Sequence[int] = (0, 1, 2, 3, 4, 5, 6, 7),
    demo_episodes: int = 8,
    max_demo_turns: int = 32,
) -> EnvCheckReport:
    """Checks that ``env`` follows the actorlearner tool-env protocol (see the module docstring).

    The env is reset and stepped many times; use a fresh env for training afterwards if its state
    matters.

    Args:
        env: The env (wrapped or not).
        seeds: Reset seeds to use (at least two, distinct).
        demo_episodes: Demonstrated episodes to play when the env has ``demonstration`` (one per
            seed, at most ``len(seeds)``).
        max_demo_turns: A demonstrated episode must end within this many turns.

    Returns:
        The report of the passed checks and the warnings.

    Raises:
        EnvCheckError: At the first failed check; the message names the check and the problem.
        ValueError: If ``seeds`` has fewer than two distinct seeds.
    """
    if len(set(seeds)) < 2:
        raise ValueError(f"check_env needs at least two distinct seeds, got {list(seeds)!r}")
    return _Checker(env, list(seeds)).run(demo_episodes, max_demo_turns)


class _Checker:
    """Runs the checks of :func:`check_env` on one env."""

    def __init__(self, env: gymnasium.Env, seeds: list[int]) -> None:
        self.env = env
        self.seeds = seeds
        self.report = EnvCheckReport(env=_describe(env))

    def run(self, demo_episodes: int, max_demo_turns: int) -> EnvCheckReport:
        _, info = self.reset(self.seeds[0])
        self.passed("reset")
        self.check_tools(info["tools"])
        self.passed("tools")
        first = self.first_turn()
        self.step(first, "step", "a first turn")
        self.passed("step")
        self.check_determinism(first)
        self.passed("determinism")
        self.check_malformed(info["tools"])
        self.passed("malformed")
        if callable(getattr(self.env.unwrapped, "demonstration", None)):
            self.check_demonstration(demo_episodes, max_demo_turns)
            self.passed("demonstration")
        return self.report

    def passed(self, check: str) -> None:
        self.report.checks.append(check)

    def warn(self, check: str, message: str) -> None:
        text = f"[{check}] {message}"
        self.report.warnings.append(text)
        warnings.warn(f"check_env({self.report.env}) {text}", EnvCheckWarning, stacklevel=4)

    # ---- reset and step, validated -------------------------------------------------------------

    def reset(self, seed: int, check: str = "reset") -> tuple[list[dict[str, Any]], StepInfo]:
        """``env.reset(seed=seed)``, with its return checked against the protocol."""
        with _raising(check, f"reset(seed={seed})"):
            out = self.env.reset(seed=seed)
        where = f"reset(seed={seed})"
        _require(isinstance(out, tuple) and len(out) == 2, check, f"{where} must return (messages, info)")
        messages, info = out
        _check_messages(check, messages, where)
        _require(bool(messages), check, f"{where} returned no messages")
        check_info(info, RESET_REQUIRED, where, check)
        for key in RESET_EXPECTED:
            if key not in info and check == "reset":
                self.warn(check, f"info has no {key!r} (the curriculum and metrics use it)")
        space = getattr(self.env, "observation_space", None)
        if check == "reset" and isinstance(space, gymnasium.spaces.Space) and messages not in space:
            self.warn(check, f"the reset messages are not in observation_space {space}")
        return messages, as_step_info(info)

    def step(
        self, text: str, check: str, label: str
    ) -> tuple[list[dict[str, Any]], float, bool, bool, StepInfo]:
        """``env.step(text)``, with its return checked against the protocol."""
        where = f"step({label})"
        with _raising(check, where):
            out = self.env.step(text)
        check_step_result(out, where, check)
        messages, reward, terminated, truncated, info = out
        for key in STEP_EXPECTED_AT_END:
            if key not in info and (terminated or truncated):
                self.warn(check, f"{where} ended the episode without info[{key!r}]")
        return messages, float(reward), bool(terminated), bool(truncated), as_step_info(info)

    # ---- the checks ----------------------------------------------------------------------------

    def check_tools(self, tools: list[Any]) -> None:
        if not tools:
            self.warn("tools", "info['tools'] is empty: the model is offered no tool")
        names = [_check_tool_schema(schema, i) for i, schema in enumerate(tools)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        _require(not dupes, "tools", f"tool names appear twice: {dupes}")
        for i, schema in enumerate(tools):
            if not schema["function"].get("description"):
                self.warn("tools", f"info['tools'][{i}] ({names[i]}) has no description")
        try:
            json.dumps(tools)
        except (TypeError, ValueError) as err:
            raise EnvCheckError("tools", f"info['tools'] is not JSON-serializable: {err}") from err

    def first_turn(self) -> str:
        """The demonstration's first turn after a reset, or a plain answer."""
        demo = getattr(self.env.unwrapped, "demonstration", None)
        messages, _ = self.reset(self.seeds[0])
        if not callable(demo):
            return "<answer>check_env</answer>"
        with _raising("demonstration", "demonstration(messages)"):
            text = demo(list(messages))
        _require(isinstance(text, str), "demonstration", f"demonstration() must return a str, got {text!r}")
        self.reset(self.seeds[0])
        return str(text)

    def check_determinism(self, turn: str) -> None:
        seed, other = self.seeds[0], self.seeds[1]
        first = self.reset(seed, "determinism")
        self.reset(other, "determinism")
        again = self.reset(seed, "determinism")
        _require_same(first, again, f"reset(seed={seed}) after reset(seed={other})")
        twin = _twin(self.env)
        if twin is not None:
            try:
                with _raising("determinism", "reset on a fresh instance"):
                    fresh = twin.reset(seed=seed)
                _require_same(
                    first, fresh, f"reset(seed={seed}) on a fresh instance made from the env's spec"
                )
            finally:
                twin.close()
        ids = {self.reset(s, "determinism")[1]["prompt_id"] for s in self.seeds}
        self.report.distinct_prompts = len(ids)
        if len(ids) == 1:
            self.warn("determinism", f"all {len(self.seeds)} seeds give the same prompt_id {ids.pop()!r}")
        outcomes = []
        for _ in range(2):
            self.reset(seed, "determinism")
            messages, reward, terminated, truncated, info = self.step(turn, "determinism", "a first turn")
            outcomes.append((messages, reward, terminated, truncated, info["reward_components"]))
        _require(
            data_equivalence(outcomes[0], outcomes[1]),
            "determinism",
            f"the same seed and turn gave different steps:\n  {outcomes[0]!r}\n  {outcomes[1]!r}"[:2000],
        )

    def check_malformed(self, tools: list[dict[str, Any]]) -> None:
        with_format = 0
        for label, text, unparsable in _bad_turns(self.env, tools):
            self.reset(self.seeds[0], "malformed")
            messages, _, terminated, truncated, info = self.step(text, "malformed", f"<{label}>")
            if info.get("success"):
                self.warn("malformed", f"the {label} turn counted as a success")
            if not (terminated or truncated):
                _require(
                    any(_is_feedback(m) for m in messages),
                    "malformed",
                    f"the {label} turn got no error observation (a tool message starting with 'Error' "
                    f"or a user message); got {messages!r}"[:1000],
                )
            score = info["reward_components"].get("format")
            if score is None:
                continue
            with_format += 1
            if unparsable or not (terminated or truncated):
                _require(
                    score <= 0, "malformed", f"the {label} turn earned a positive format component {score}"
                )
        if not with_format:
            self.warn("malformed", "no 'format' reward component: malformed turns cost nothing")

    def check_demonstration(self, episodes: int, max_turns: int) -> None:
        for seed in self.seeds[:episodes]:
            success = self.play_demonstration(seed, max_turns)
            self.report.demo_episodes += 1
            self.report.demo_successes += int(success)
        if self.report.demo_episodes and not self.report.demo_successes:
            self.warn(
                "demonstration",
                f"none of {self.report.demo_episodes} demonstrated episodes succeeded (fine only if the "
                "demonstration fails on purpose; check more seeds)",
            )

    def play_demonstration(self, seed: int, max_turns: int) -> bool:
        """Plays one demonstrated episode; returns whether it succeeded."""
        demo: Callable[[list[dict[str, Any]]], str] = self.env.unwrapped.demonstration  # type: ignore[attr-defined]
        messages, _ = self.reset(seed, "demonstration")
        conversation = list(messages)
        for turn in range(max_turns):
            with _raising("demonstration", f"demonstration() at seed {seed}, turn {turn}"):
                text = demo(list(conversation))
            _require(isinstance(text, str), "demonstration", f"demonstration() returned {text!r}, not a str")
            obs, _, terminated, truncated, info = self.step(
                text, "demonstration", f"demonstrated turn {turn}"
            )
            errors = info.get("format_errors", [])
            _require(
                not errors and not info.get("void", False),
                "demonstration",
                f"seed {seed}, turn {turn}: the demonstrated turn {text[:300]!r} does not parse "
                f"(format errors {errors}); does it follow the env's parser? Write calls with "
                "env.format_call(name, arguments).",
            )
            if any(not c["ok"] for c in info["tool_calls"]):
                self.warn("demonstration", f"seed {seed}, turn {turn}: a demonstrated tool call failed")
            if terminated or truncated:
                return bool(info.get("success", False))
            conversation += [{"role": "assistant", "content": text}, *obs]
        raise EnvCheckError(
            "demonstration",
            f"seed {seed}: the demonstration did not end the episode within {max_turns} turns",
        )


def check_step_result(out: Any, where: str = "step", check: str = "step") -> None:
    """Checks what one ``env.step`` returned against the protocol (the ``step`` check of :func:`check_env`).

    Useful on its own in an env's tests or fuzzers.

    Args:
        out: The return value of ``env.step(text)``.
        where: How the step is named in the error message.
        check: The check name the error carries.

    Raises:
        EnvCheckError: If the return breaks the protocol (the message says how).
    """
    _require(isinstance(out, tuple) and len(out) == 5, check, f"{where} must return a 5-tuple")
    messages, reward, terminated, truncated, info = out
    _check_messages(check, messages, where)
    _require(_is_number(reward), check, f"{where}: reward must be a finite float, got {reward!r}")
    for name, flag in (("terminated", terminated), ("truncated", truncated)):
        _require(isinstance(flag, (bool, np.bool_)), check, f"{where}: {name} must be a bool")
    check_info(info, STEP_REQUIRED, where, check)
    for i, call in enumerate(info["tool_calls"]):
        _require(
            call["ok"] or isinstance(call.get("error"), str),
            check,
            f"{where}: info['tool_calls'][{i}] failed without an 'error' text",
        )
    _check_components(check, info["reward_components"], float(reward), where)


def check_info(info: Any, required: Sequence[str], where: str = "info", check: str = "step") -> None:
    """Checks an ``info`` dict against :class:`~actorlearner.env.info.StepInfo`'s annotations.

    Every key of ``required`` must be present, and every key of ``StepInfo`` that is present must
    have the annotated type (recursively: lists, dicts, unions, nested TypedDicts such as the
    tool-call records). Keys ``StepInfo`` does not know are the env's own and are not checked.

    Args:
        info: What ``reset`` or ``step`` returned as ``info``.
        required: Keys that must be present (e.g. :data:`~actorlearner.env.info.STEP_REQUIRED`).
        where: How the call is named in the error message.
        check: The check name the error carries.

    Raises:
        EnvCheckError: At the first missing key or mistyped value (the message gives its path).
    """
    _require(isinstance(info, dict), check, f"{where}: info must be a dict, got {type(info).__name__}")
    for key in required:
        _require(
            key in info, check, f"{where}: info[{key!r}] must be {_describe_type(_INFO_TYPES[key])} (missing)"
        )
    for key, annotation in _INFO_TYPES.items():
        if key in info:
            problem = _type_problem(info[key], annotation, f"info[{key!r}]")
            _require(problem is None, check, f"{where}: {problem}")


# ---- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _raising(check: str, what: str) -> Iterator[None]:
    """Turns an exception the env raises into an :class:`EnvCheckError` of ``check``."""
    try:
        yield
    except EnvCheckError:
        raise
    except Exception as err:
        raise EnvCheckError(check, f"{what} raised {type(err).__name__}: {err}"[:1000]) from err


def _require(condition: bool, check: str, message: str) -> None:
    if not condition:
        raise EnvCheckError(check, message)


def _require_same(a: tuple[Any, Any], b: tuple[Any, Any], what: str) -> None:
    """Two resets gave the same messages, tools and prompt id."""
    (ma, ia), (mb, ib) = a, b
    _require(
        data_equivalence(ma, mb), "determinism", f"{what} gave other messages:\n  {ma!r}\n  {mb!r}"[:2000]
    )
    _require(ia["prompt_id"] == ib["prompt_id"], "determinism", f"{what} gave another prompt_id")
    _require(data_equivalence(ia["tools"], ib["tools"]), "determinism", f"{what} gave other tools")


def _describe(env: gymnasium.Env) -> str:
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


def _twin(env: gymnasium.Env) -> gymnasium.Env | None:
    """A fresh instance made from the env's spec, or None without one."""
    spec = getattr(env, "spec", None)
    if spec is None:
        return None
    with _raising("determinism", f"gymnasium.make({spec.id!r}) (a fresh instance)"):
        return gymnasium.make(spec, disable_env_checker=True)


def _is_number(value: Any) -> bool:
    """A finite int or float (numpy scalars too), not a bool."""
    return is_number(value) and math.isfinite(float(value))


_INFO_TYPES: dict[str, Any] = get_type_hints(StepInfo)
"""``StepInfo``'s keys and their annotations: what :func:`check_info` validates against."""

_SCALARS: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    str: ("a str", lambda v: isinstance(v, str)),
    bool: ("a bool", lambda v: isinstance(v, (bool, np.bool_))),
    int: ("an int", is_int),
    float: ("a finite float", _is_number),
    type(None): ("None", lambda v: v is None),
}


def _describe_type(annotation: Any) -> str:
    """How an annotation reads in a message: ``a str or None``, ``a list``, ``a ToolCallInfo dict``."""
    if annotation is Any:
        return "anything"
    if annotation in _SCALARS:
        return _SCALARS[annotation][0]
    if get_origin(annotation) in (Union, types.UnionType):
        return " or ".join(_describe_type(a) for a in get_args(annotation))
    if is_typeddict(annotation):
        return f"a {annotation.__name__} dict"
    origin = get_origin(annotation)
    return f"a {getattr(origin, '__name__', annotation)}"


def _type_problem(value: Any, annotation: Any, where: str) -> str | None:
    """Why ``value`` does not fit ``annotation`` (naming the path of the first bad part), or None."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return None
    if annotation in _SCALARS:
        fits = _SCALARS[annotation][1](value)
    elif origin in (Union, types.UnionType):
        fits = any(_type_problem(value, a, where) is None for a in args)
    elif is_typeddict(annotation) or origin in (list, dict):
        return _container_problem(value, annotation, where)
    else:  # pragma: no cover  (an annotation StepInfo does not use)
        raise TypeError(f"check_info cannot check {annotation!r}")
    return None if fits else _wrong_type(value, annotation, where)


def _wrong_type(value: Any, annotation: Any, where: str) -> str:
    return f"{where} must be {_describe_type(annotation)}, got {value!r}"[:500]


def _container_problem(value: Any, annotation: Any, where: str) -> str | None:
    """:func:`_type_problem` of a list, dict or TypedDict annotation: the container, then its items."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list:
        if not isinstance(value, list):
            return _wrong_type(value, annotation, where)
        items = [(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    elif not isinstance(value, dict):
        return _wrong_type(value, annotation, where)
    elif origin is dict:
        items = [(k, args[0], f"{where}: key {k!r}") for k in value]
        items += [(v, args[1], f"{where}[{k!r}]") for k, v in value.items()]
    else:
        missing = sorted(annotation.__required_keys__ - set(value))
        if missing:
            return f"{where} has no {missing[0]!r} (a {annotation.__name__} needs it)"
        hints = get_type_hints(annotation)
        items = [(value[k], a, f"{where}[{k!r}]") for k, a in hints.items() if k in value]
    return next((p for v, a, w in items if (p := _type_problem(v, a, w)) is not None), None)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_feedback(message: dict[str, Any]) -> bool:
    """An error observation: a tool message starting with "Error", or a user message."""
    role, content = message.get("role"), str(message.get("content", ""))
    return role == "user" or (role == "tool" and content.startswith("Error"))


def _check_messages(check: str, messages: Any, where: str) -> None:
    _require(
        isinstance(messages, list), check, f"{where}: messages must be a list, got {type(messages).__name__}"
    )
    for i, m in enumerate(messages):
        ok = isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        _require(
            ok, check, f"{where}: message {i} must be a dict with str 'role' and 'content', got {m!r}"[:500]
        )
        _require(
            m["role"] in ("system", "user", "assistant", "tool"),
            check,
            f"{where}: message {i} has role {m['role']!r}; chat templates know system/user/assistant/tool",
        )


def _check_components(check: str, components: dict[str, float], reward: float, where: str) -> None:
    """The components (already type-checked) add up to the reward."""
    total = float(sum(float(v) for v in components.values()))
    _require(
        math.isclose(total, reward, rel_tol=1e-6, abs_tol=1e-6),
        check,
        f"{where}: reward {reward} != sum of reward_components {total} ({components})",
    )


def _check_tool_schema(schema: Any, index: int) -> str:
    """Checks one entry of ``info["tools"]``; returns the tool's name."""
    where = f"info['tools'][{index}]"
    _require(
        isinstance(schema, dict)
        and schema.get("type") == "function"
        and isinstance(schema.get("function"), dict),
        "tools",
        f"{where} must be {{'type': 'function', 'function': {{...}}}} (OpenAI format), got {schema!r}"[:500],
    )
    fn = schema["function"]
    name = fn.get("name")
    _require(isinstance(name, str) and bool(name.strip()), "tools", f"{where} needs a 'name' string")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    where = f"{where} ({name}) parameters"
    _require(
        isinstance(params, dict) and params.get("type") == "object",
        "tools",
        f"{where} must be an object schema",
    )
    properties = params.get("properties", {})
    _require(
        isinstance(properties, dict) and all(isinstance(p, dict) for p in properties.values()),
        "tools",
        f"{where}: 'properties' must map names to schemas",
    )
    required = params.get("required", [])
    _require(_is_str_list(required), "tools", f"{where}: 'required' must be a list of names")
    missing = sorted(set(required) - set(properties))
    _require(not missing, "tools", f"{where}: required names {missing} are not properties")
    _check_json_schema(params, where)
    return str(name)


_JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}


def _check_json_schema(schema: dict[str, Any], where: str) -> None:
    """Validates a JSON Schema with ``jsonschema`` when installed, else checks the property types."""
    if jsonschema is not None:
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.exceptions.SchemaError as err:
            raise EnvCheckError("tools", f"{where} is not a valid JSON Schema: {err.message}") from err
        return
    for key, prop in schema.get("properties", {}).items():  # pragma: no cover
        types = prop.get("type", [])
        types = [types] if isinstance(types, str) else types
        _require(
            isinstance(types, list) and set(types) <= _JSON_TYPES,
            "tools",
            f"{where}: property {key!r} has an unknown type {prop.get('type')!r}",
        )


def _bad_turns(env: gymnasium.Env, tools: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """Malformed turns ``(label, text, unparsable)`` in the env's format where it has one."""
    write = getattr(env.unwrapped, "format_call", None)
    if not callable(write):
        write = format_tool_call
    names = [t["function"]["name"] for t in tools]
    first = names[0] if names else "tool"
    turns = [
        ("broken JSON", '<tool_call>{"name": "' + first + '", "arguments": {</tool_call>', True),
        ("broken Python call", f"<tool_call>{first}(1, =</tool_call>", True),
        ("empty", "", True),
        ("prose", "I am not sure what to do here.", True),
        ("huge", "<tool_call>" + "x" * 200_000, True),
        ("nested tags", '<tool_call><tool_call>{"name": "x"}</tool_call></tool_call>', True),
        ("answer inside a tool call", "<tool_call><answer>1</answer></tool_call>", True),
        ("unclosed tag", '<tool_call>{"name": "' + first + '"', True),
        ("unicode garbage", "\ud800\u202e🙂 <tool_call>\x00\u0000</tool_call>", True),
        ("unknown tool", write("no_such_tool_check_env", {}), False),
    ]
    for tool in tools:
        if tool["function"].get("parameters", {}).get("required"):
            turns.append(("missing arguments", write(tool["function"]["name"], {}), False))
            break
    return turns
