"""Tool envs: a ``gymnasium.Env`` whose actions are the model's turns and whose tools are methods.

A subclass writes typed methods marked :func:`tool` (the JSON schema comes from the signature and
the Google docstring, via ``transformers.utils.get_json_schema``) and three task methods::

    class Adder(ToolEnv):
        @tool
        def add(self, a: int, b: int) -> str:
            ...  # a docstring with a summary and an Args entry for a and b

        def sample_task(self, rng): ...           # a pure function of rng
        def prompt_messages(self, task): ...      # the first chat messages
        def score_answer(self, task, answer): ... # ({"answer": 1.0}, True)

``envs.calculator.Calculator`` is a complete example.

The protocol the rollout runner relies on:

* ``reset(seed)`` returns the prompt messages and an ``info``; equal seeds give equal tasks.
* ``step(text)`` parses the turn, runs its tool calls in order and returns the messages to append
  (one ``role="tool"`` message per call, ``"Error: ..."`` for a call that failed, a short
  ``role="user"`` instruction after a void turn), the reward, the two flags and an ``info``.
* Both ``info`` dicts are a :class:`~actorlearner.env.info.StepInfo`, whose docstring documents
  every key (``tools``, ``prompt_id``, ``tool_calls``, ``reward_components``...).
* Model text never makes ``step`` raise: format problems, unknown tools, bad arguments and tools that
  raise become error messages and a format penalty.

Format penalty: each problem of a turn costs ``format_penalty`` in the ``"format"`` component: each
format error of the parser (bad JSON, unclosed or nested tag, ...), each call to an unknown tool,
with bad arguments, that raised, returned None or timed out, and a void turn. The penalties of an
episode add up to at most ``max_format_penalty``; once it is reached further problems cost nothing.

Tool-call format: ``parser`` names a :class:`~actorlearner.env.parsing.ToolCallFormat` (``"json_tags"``,
``"python_call"``, or one you register). The instruction after a void turn follows it, and
:meth:`ToolEnv.format_call` / :meth:`ToolEnv.format_answer` write turns in it, so a demonstration
that uses them follows whatever format the env is configured with.

Tool timeouts: each call runs in the env's daemon tool thread
(:class:`~actorlearner.env.toolthread.ToolThread`) and the env waits at most ``tool_timeout_s`` for
it. A call that takes longer becomes the error ``"<tool> timed out after N s"`` (a failed call,
charged like a raising tool) and the episode goes on. Python cannot kill a thread: the stray call
finishes in the background in its thread (its result is dropped; the next call gets a new thread)
and may still touch the env's state, so a tool that can run away (user code, a database query)
should enforce a hard limit itself, e.g. in a subprocess, or stop the stray call in
:meth:`ToolEnv.on_tool_timeout`. ``tool_timeout_s=math.inf`` runs tools inline in the caller's
thread (for tools tied to one thread). The rollout runner's ``step_timeout_s`` stays the outer
guard on a whole turn: keep it above the longest turn you allow (up to ``MAX_CALLS`` calls of
``tool_timeout_s`` each).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import string
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
from transformers.utils import get_json_schema

from actorlearner.core.knobs import check_int, check_number, check_positive
from actorlearner.env.info import StepInfo, ToolCallInfo
from actorlearner.env.parsing import PARSERS, ParsedCall, ParsedTurn, ToolCallFormat, get_format, parse_turn
from actorlearner.env.toolthread import CallTimeout, ToolThread

F = TypeVar("F", bound=Callable[..., Any])
Messages = list[dict[str, Any]]

_TOOL_MARK = "__actorlearner_tool__"


def tool(fn: F) -> F:
    """Marks a method of a :class:`ToolEnv` as a tool the model may call.

    The method needs type hints on every argument and a Google docstring whose summary describes
    the tool and whose ``Args:`` section describes every argument; its name is the tool's name.
    It returns the output shown to the model (``str``, or anything ``json.dumps`` or ``str``
    accepts) and raises to report an error.
    """
    setattr(fn, _TOOL_MARK, True)
    return fn


class ToolDefinitionError(TypeError):
    """A ``@tool`` method cannot be turned into a JSON schema (no type hints or docstring Args)."""


class ToolTimeout(Exception):
    """A tool call ran longer than the env's ``tool_timeout_s`` (internal; becomes an error message)."""


_DEFAULT_INSTRUCTION = "Reply with a tool call or <answer>...</answer>."
"""Instruction after a void turn when the env's parser is a bare parser (no format to quote)."""


class ChatMessages(gym.spaces.Space[Messages]):
    """The space of chat message lists: ``[{"role": str, "content": str, ...}, ...]``.

    Informational: the runner tokenizes messages with the chat template, it never samples them.

    Args:
        max_messages: Longest list the space contains.
    """

    def __init__(self, max_messages: int = 64) -> None:
        super().__init__()
        self.max_messages = max_messages

    @property
    def is_np_flattenable(self) -> bool:
        """Messages cannot be flattened to an array."""
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> Messages:
        """A random one-message list (for API completeness)."""
        n = int(self.np_random.integers(1, 9))
        return [{"role": "user", "content": "".join(self.np_random.choice(list(string.ascii_lowercase), n))}]

    def contains(self, x: Any) -> bool:
        """Whether ``x`` is a list of dicts with string ``role`` and ``content``."""
        return (
            isinstance(x, list)
            and len(x) <= self.max_messages
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in x
            )
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChatMessages) and other.max_messages == self.max_messages

    def __repr__(self) -> str:
        return f"ChatMessages(max_messages={self.max_messages})"


class ToolEnv(gym.Env[Messages, str]):
    """Base class of multi-turn tool-use envs (see the module docstring for the protocol).

    Each knob is a class attribute a subclass may override and a constructor keyword that overrides
    both (None keeps the class value).

    Args:
        max_turns: Assistant turns before the episode is truncated without an answer.
        format_penalty: Cost of each format problem (positive; subtracted as the ``"format"``
            component).
        max_format_penalty: Cap on the total format penalty of an episode.
        max_output_chars: Tool outputs and error texts are cut to this many characters.
        parser: Name of the tool-call format (or bare parser) in :data:`actorlearner.env.parsing.PARSERS`.
        tool_timeout_s: Longest wait for one tool call, in seconds (> 0; ``math.inf`` runs tools
            inline without a thread). See the module docstring.
        turn_time_s: Total seconds the tool calls of one turn may take (> 0). Once spent, the
            turn's remaining calls are not run and each gets an error; a tool may bound its own
            work by :meth:`turn_time_left` (the Python sandbox does).
        render_mode: Unused; tool envs do not render.

    Raises:
        ConfigError: If a knob is out of range (a ValueError; the message names it).
        RegistryError: If ``parser`` is unknown.
        ToolDefinitionError: If a ``@tool`` method lacks type hints or docstring ``Args``.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012  (gymnasium's convention)

    max_turns: int = 4
    format_penalty: float = 0.1
    max_format_penalty: float = 1.0
    max_output_chars: int = 2000
    parser: str = "json_tags"
    tool_timeout_s: float = 10.0
    turn_time_s: float = 30.0
    max_action_chars: int = 16_384
    """Informational length bound of ``action_space`` (turns are never rejected for length)."""
    void_message: str | None = None
    """The user message that follows a void turn; None uses the parser format's instruction."""

    def __init__(
        self,
        *,
        max_turns: int | None = None,
        format_penalty: float | None = None,
        max_format_penalty: float | None = None,
        max_output_chars: int | None = None,
        parser: str | None = None,
        tool_timeout_s: float | None = None,
        turn_time_s: float | None = None,
        render_mode: str | None = None,
    ) -> None:
        knobs = {
            "max_turns": max_turns,
            "format_penalty": format_penalty,
            "max_format_penalty": max_format_penalty,
            "max_output_chars": max_output_chars,
            "parser": parser,
            "tool_timeout_s": tool_timeout_s,
            "turn_time_s": turn_time_s,
        }
        for key, value in knobs.items():
            if value is not None:
                setattr(self, key, value)
        self._validate_knobs()
        self._parse = PARSERS.resolve(self.parser)
        if self.void_message is None:
            self.void_message = _DEFAULT_INSTRUCTION
            if isinstance(self._parse, ToolCallFormat):
                self.void_message = self._parse.instruction
        self.render_mode = render_mode
        self.action_space = gym.spaces.Text(
            max_length=self.max_action_chars, min_length=0, charset=string.printable
        )
        self.observation_space = ChatMessages(max_messages=64)
        self._tools, self._schemas = self._collect_tools()
        self._properties: dict[str, dict[str, Any]] = {
            s["function"]["name"]: s["function"].get("parameters", {}).get("properties", {})
            for s in self._schemas
        }
        self.task: dict[str, Any] | None = None
        self._turn = 0
        self._done = True
        self._penalty_total = 0.0
        self._turn_deadline = math.inf

    def turn_time_left(self) -> float:
        """Seconds left of the current turn's ``turn_time_s`` (``inf`` outside ``step``)."""
        return max(0.0, self._turn_deadline - time.monotonic())

    def __getstate__(self) -> dict[str, Any]:
        """For pickle and deepcopy: everything but the tool thread (the copy starts its own)."""
        state = dict(self.__dict__)
        state.pop("_tool_thread", None)
        return state

    def _validate_knobs(self) -> None:
        check_int("max_turns", self.max_turns, 1)
        check_number("format_penalty", self.format_penalty, 0.0)
        check_number("max_format_penalty", self.max_format_penalty, 0.0)
        check_int("max_output_chars", self.max_output_chars, 16)
        check_positive("tool_timeout_s", self.tool_timeout_s)
        check_positive("turn_time_s", self.turn_time_s)

    def _collect_tools(self) -> tuple[dict[str, Callable[..., Any]], list[dict[str, Any]]]:
        """Finds the ``@tool`` methods and builds their schemas, in name order."""
        tools: dict[str, Callable[..., Any]] = {}
        schemas: list[dict[str, Any]] = []
        for name in sorted(dir(type(self))):
            if not getattr(inspect.getattr_static(type(self), name, None), _TOOL_MARK, False):
                continue
            method = getattr(self, name)
            try:
                schema = get_json_schema(method)
            except Exception as err:
                raise ToolDefinitionError(
                    f"@tool {type(self).__name__}.{name}: cannot build its JSON schema ({err}). A tool "
                    "needs type hints on every argument and a Google docstring with a summary and an "
                    "'Args:' entry for every argument."
                ) from err
            tools[name] = method
            schemas.append(schema)
        return tools, schemas

    # ---- what subclasses implement -------------------------------------------------------------

    def sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draws a task; must be a pure function of ``rng`` (GRPO groups rely on it).

        Args:
            rng: The generator reset seeded.

        Returns:
            The task, JSON-serializable (its digest is the prompt id).
        """
        raise NotImplementedError

    def prompt_messages(self, task: dict[str, Any]) -> Messages:
        """The first chat messages of an episode on ``task`` (e.g. the user question)."""
        raise NotImplementedError

    def score_answer(self, task: dict[str, Any], answer: str) -> tuple[dict[str, float], bool]:
        """Scores a final answer.

        Args:
            task: The episode's task.
            answer: The text inside the answer tag, stripped.

        Returns:
            The reward components of the answer and whether it solves the task.
        """
        raise NotImplementedError

    def on_tool_timeout(self, name: str) -> None:
        """Called (in the step's thread) when a call to tool ``name`` timed out; does nothing.

        Override it to stop the stray call if the tool allows it, e.g. ``sqlite3.Connection.interrupt``.
        """

    def task_labels(self, task: dict[str, Any]) -> list[str]:
        """Sub-task labels of ``task`` (the curriculum reads them); none by default."""
        return []

    def prompt_id(self, task: dict[str, Any]) -> str:
        """A stable id of ``task``: the class name and a digest of the task's JSON."""
        blob = json.dumps(task, sort_keys=True, default=str).encode("utf-8", errors="replace")
        return f"{type(self).__name__}:{hashlib.sha256(blob).hexdigest()[:16]}"

    # ---- the gymnasium API ---------------------------------------------------------------------

    @property
    def task_id(self) -> str:
        """Task family: the gymnasium id when made with ``gymnasium.make``, else the class name."""
        return self.spec.id if self.spec is not None else type(self).__name__

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools, sorted."""
        return list(self._tools)

    @property
    def tool_schemas(self) -> list[dict[str, Any]]:
        """JSON schemas of the tools in the transformers format (a copy, safe to mutate)."""
        return copy.deepcopy(self._schemas)

    def format_call(self, name: str, arguments: Mapping[str, Any]) -> str:
        """Writes one tool call in this env's format (for demonstrations).

        Args:
            name: Tool name.
            arguments: The call's keyword arguments.

        Returns:
            The call as the env's parser reads it, e.g. ``<tool_call>{...}</tool_call>``.

        Raises:
            RegistryError: If the env's parser is a bare parser without a writer.
            ValueError: If the format cannot write this call.
        """
        return get_format(self._parse).write_call(name, arguments)

    def format_answer(self, answer: str) -> str:
        """Writes a final answer in this env's format (for demonstrations)."""
        return get_format(self._parse).write_answer(answer)

    def reset(  # type: ignore[override]  # StepInfo is gymnasium's info dict, typed
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Messages, StepInfo]:
        """Starts an episode on the task the seed determines.

        ``np_random`` is seeded as ``np.random.default_rng(seed)`` would be; without a seed the
        generator goes on from its state (fresh entropy the first time), as in gymnasium.

        Args:
            seed: Seed of the task (a GRPO group resets its G episodes with one seed).
            options: Unused.

        Returns:
            The prompt messages and the reset keys of :class:`~actorlearner.env.info.StepInfo`.
        """
        super().reset(seed=seed)
        self.task = self.sample_task(self.np_random)
        self._turn, self._done, self._penalty_total = 0, False, 0.0
        info: StepInfo = {
            "tools": self.tool_schemas,
            "prompt_id": self.prompt_id(self.task),
            "sub_tasks": list(self.task_labels(self.task)),
            "task_id": self.task_id,
        }
        return [dict(m) for m in self.prompt_messages(self.task)], info

    def step(self, action: str) -> tuple[Messages, float, bool, bool, StepInfo]:  # type: ignore[override]
        """Plays one assistant turn.

        Args:
            action: The model's raw turn.

        Returns:
            ``(messages, reward, terminated, truncated, info)``: see the module docstring; ``info``
            holds the step keys of :class:`~actorlearner.env.info.StepInfo`.

        Raises:
            RuntimeError: If called before ``reset`` or after the episode ended (never because of
                the turn's text).
        """
        if self.task is None or self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        turn = parse_turn(action, self._parse)
        self._turn_deadline = time.monotonic() + self.turn_time_s
        try:
            records = [self._run_call(call) for call in turn.calls]
        finally:
            self._turn_deadline = math.inf
        messages = [_call_message(r) for r in records]
        problems = len(turn.errors) + sum(
            1 for c, r in zip(turn.calls, records, strict=True) if c.error is None and not r["ok"]
        )
        problems += int(turn.void)
        components = {"format": 0.0 - self._charge(problems)}
        success, terminated = False, turn.final_answer is not None
        if turn.final_answer is not None:
            scored, success = self.score_answer(self.task, turn.final_answer)
            for key, value in scored.items():
                components[key] = components.get(key, 0.0) + float(value)
        self._turn += 1
        truncated = not terminated and self._turn >= self.max_turns
        if truncated:
            components["answer"] = components.get("answer", 0.0)
        self._done = terminated or truncated
        if not self._done:
            messages.extend(self._format_feedback(turn))
        info: StepInfo = {
            "tool_calls": records,
            "final_answer": turn.final_answer,
            "reward_components": components,
            "success": bool(success),
            "void": turn.void,
            "format_errors": list(turn.errors),
            "turn": self._turn - 1,
        }
        return messages, float(sum(components.values())), terminated, truncated, info

    # ---- helpers -------------------------------------------------------------------------------

    def _charge(self, problems: int) -> float:
        """The format penalty of ``problems`` problems, within the episode's cap."""
        room = max(0.0, self.max_format_penalty - self._penalty_total)
        penalty = round(min(problems * self.format_penalty, room), 12)
        self._penalty_total += penalty
        return float(penalty)

    def _format_feedback(self, turn: ParsedTurn) -> Messages:
        """A user message after a void turn or format errors not tied to a call, else nothing."""
        loose = Counter(turn.errors) - Counter(c.error for c in turn.calls if c.error is not None)
        notes = [self._clip(e) for e in loose.elements()]
        if turn.void:
            return [
                {
                    "role": "user",
                    "content": " ".join(["Format error: " + n for n in notes] + [str(self.void_message)]),
                }
            ]
        if notes:
            return [{"role": "user", "content": "Format error: " + "; ".join(notes)}]
        return []

    def _run_call(self, call: ParsedCall) -> ToolCallInfo:
        """Runs one call, containing every failure; returns its ``info["tool_calls"]`` record."""
        record: ToolCallInfo = {
            "name": call.name,
            "arguments": call.arguments,
            "ok": False,
            "error": None,
            "output": None,
        }
        error = call.error or self._check_call(call)
        if error is None and self.turn_time_left() <= 0:
            error = f"{call.name} not run: the turn's tool time ({self.turn_time_s:g} s) is spent"
        if error is None:
            try:
                result = self._call_tool(call.name, call.arguments)
            except ToolTimeout as timeout:
                error = str(timeout)
                self.on_tool_timeout(call.name)
            except Exception as err:  # a tool's failure is an observation, never a crash
                error = f"{call.name}: {_describe(err)}"
            else:
                if result is None:
                    error = f"{call.name} returned no output"
                else:
                    record["ok"], record["output"] = True, self._clip(_to_text(result))
        if error is not None:
            record["error"] = self._clip(error)
        return record

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        """Runs a tool in a daemon thread, waiting at most ``tool_timeout_s`` or the turn's time left.

        Raises:
            ToolTimeout: If the tool is still running after that wait (it goes on in the
                background; its result is dropped).
            BaseException: Whatever the tool raised.
        """
        fn = self._tools[name]
        if math.isinf(self.tool_timeout_s):
            return fn(**arguments)
        worker = getattr(self, "_tool_thread", None)
        if worker is None or worker.abandoned:
            worker = self._tool_thread = ToolThread(f"tool:{type(self).__name__}")
        wait = min(self.tool_timeout_s, self.turn_time_left())
        try:
            return worker.call(lambda: fn(**arguments), wait)
        except CallTimeout:
            raise ToolTimeout(f"{name} timed out after {wait:g} s") from None

    def _check_call(self, call: ParsedCall) -> str | None:
        """Why ``call`` cannot run (unknown tool, missing/unexpected/mistyped argument), or None."""
        fn = self._tools.get(call.name)
        if fn is None:
            return f"unknown tool {call.name!r}; tools: {', '.join(self._tools) or 'none'}"
        try:
            inspect.signature(fn).bind(**call.arguments)
        except TypeError as err:
            return f"{call.name}: {err}"
        properties = self._properties[call.name]
        for key, value in call.arguments.items():
            spec = properties.get(key, {})
            if not _matches(value, spec):
                return f"{call.name}: argument {key!r} must be {spec.get('type')}, got {type(value).__name__}"
        return None

    def _clip(self, text: str) -> str:
        """Cuts ``text`` to ``max_output_chars`` and makes it valid UTF-8 (lone surrogates -> '?')."""
        text = text.encode("utf-8", errors="replace").decode("utf-8")
        if len(text) <= self.max_output_chars:
            return text
        cut = len(text) - self.max_output_chars
        return text[: self.max_output_chars] + f"... [{cut} characters cut]"


def _call_message(record: ToolCallInfo) -> dict[str, Any]:
    """The message that answers one call: its output, or its error."""
    if record["ok"]:
        return {"role": "tool", "name": record["name"], "content": record.get("output")}
    return {"role": "tool", "content": f"Error: {record.get('error')}"}


def _describe(err: Exception) -> str:
    """An exception's message, or its type name when the message is empty or unprintable."""
    try:
        return str(err) or type(err).__name__
    except Exception:
        return type(err).__name__


def _to_text(result: Any) -> str:
    """A tool's return value as the text shown to the model."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, default=str, ensure_ascii=False)
    except Exception:  # circular data, or a __str__ that raises
        try:
            return str(result)
        except Exception:
            return f"<unprintable {type(result).__name__}>"


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def _matches(value: Any, spec: dict[str, Any]) -> bool:
    """Whether a decoded JSON value fits a (top-level) JSON-schema type; unknown types fit."""
    if value is None:
        return bool(spec.get("nullable")) or "null" in _as_list(spec.get("type"))
    types = _as_list(spec.get("type"))
    if not types or any(t not in _JSON_TYPES and t != "null" for t in types):
        return True
    if isinstance(value, bool) and "boolean" not in types:
        return False
    ok = any(isinstance(value, _JSON_TYPES[t]) for t in types if t in _JSON_TYPES)
    return ok and ("enum" not in spec or value in spec["enum"])


def _as_list(types: str | Sequence[str] | None) -> list[str]:
    if types is None:
        return []
    return [types] if isinstance(types, str) else list(types)
