"""PythonTIR: math word problems solved by running code with a sandboxed ``python`` tool.

Tool-integrated reasoning in its smallest form: each task (a shopping bill, a tank that fills and
leaks, a sum over a range, a count of multiples, a binomial coefficient, a digit sum of a power, a
modular power) has an integer answer that is easy to compute with one line of Python and hard to
compute in the head. The ``python`` tool runs the model's program in
:func:`envs.sandbox.run_python` and returns what it printed; a program that fails or hits a
limit becomes an error observation and the episode goes on. The tool has no outer
``tool_timeout_s`` (it is ``math.inf``, so calls run inline in the env's thread): the sandbox
enforces its own hard wall-time limit, and a per-call timeout would also count the wait for one of
the sandbox's :data:`~envs.sandbox.MAX_CONCURRENT_RUNS` slots, failing correct programs
under load. A turn can then take up to ``MAX_CALLS`` times (the slot wait plus ``wall_time_s``): keep
the runner's ``step_timeout_s`` above what you expect.

The scripted demonstration (cold-start SFT data) writes the one-line program with probability
``demo_tool_prob`` and otherwise guesses a wrong number, so RL has to discover that running code
earns the reward. Its programs use a small vocabulary (``print sum for in range if or import math
comb int str``) because the embedded tiny model's word-level tokenizer is built from them.

Tasks are split by a fixed hash of their JSON: a ``test_fraction`` of all tasks is held out,
``split="train"`` never draws them and ``split="test"`` draws only them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from actorlearner.core.knobs import (
    check_choice,
    check_fraction,
    check_int,
    check_names,
    check_positive,
    check_probability,
)
from actorlearner.env.toolenv import Messages, tool
from envs import SPLITS, isolation
from envs.demo import ToolOrGuessEnv
from envs.sandbox import SandboxResult, run_python

Task = dict[str, Any]

_NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay")
_ITEMS = ("pens", "books", "cups", "lamps", "shirts", "plates", "chairs", "boxes")


@dataclass(frozen=True)
class Template:
    """One kind of word problem.

    Attributes:
        sample: Draws the problem's numbers (and words) from a generator.
        question: The problem's text.
        program: A one-line Python program that prints the answer (the demonstration's call).
        answer: The answer, computed here without the sandbox.
    """

    sample: Callable[[np.random.Generator], Task]
    question: Callable[[Task], str]
    program: Callable[[Task], str]
    answer: Callable[[Task], int]


def _ints(rng: np.random.Generator, **ranges: tuple[int, int]) -> Task:
    """One integer per keyword, uniform in its inclusive range."""
    return {key: int(rng.integers(low, high + 1)) for key, (low, high) in ranges.items()}


def _pick(rng: np.random.Generator, options: Sequence[str], k: int = 1) -> list[str]:
    return [str(x) for x in rng.choice(list(options), size=k, replace=False)]


def _sample_shopping(rng: np.random.Generator) -> Task:
    name, (item1, item2) = _pick(rng, _NAMES)[0], _pick(rng, _ITEMS, 2)
    return {
        "name": name,
        "item1": item1,
        "item2": item2,
        **_ints(rng, q1=(12, 99), p1=(13, 99), q2=(12, 99), p2=(13, 99)),
    }


def _sample_range_sum(rng: np.random.Generator) -> Task:
    return _ints(rng, k=(3, 19), low=(10, 99), high=(300, 999))


def _sample_count(rng: np.random.Generator) -> Task:
    a, b = (int(x) for x in rng.choice(np.arange(3, 21), size=2, replace=False))
    return {"a": min(a, b), "b": max(a, b), **_ints(rng, n=(300, 3000))}


TEMPLATES: dict[str, Template] = {
    "shopping": Template(
        sample=_sample_shopping,
        question=lambda t: (
            f"{t['name']} buys {t['q1']} {t['item1']} at {t['p1']} dollars each and {t['q2']} {t['item2']} "
            f"at {t['p2']} dollars each. How many dollars does {t['name']} pay in total?"
        ),
        program=lambda t: f"print({t['q1']} * {t['p1']} + {t['q2']} * {t['p2']})",
        answer=lambda t: t["q1"] * t["p1"] + t["q2"] * t["p2"],
    ),
    "tank": Template(
        sample=lambda rng: _ints(rng, start=(100, 999), fill=(21, 99), leak=(3, 19), minutes=(13, 99)),
        question=lambda t: (
            f"A tank holds {t['start']} liters. Water flows in at {t['fill']} liters per minute and "
            f"leaks out at {t['leak']} liters per minute. How many liters does it hold after "
            f"{t['minutes']} minutes?"
        ),
        program=lambda t: f"print({t['start']} + ({t['fill']} - {t['leak']}) * {t['minutes']})",
        answer=lambda t: t["start"] + (t["fill"] - t["leak"]) * t["minutes"],
    ),
    "range_sum": Template(
        sample=_sample_range_sum,
        question=lambda t: f"What is the sum of all multiples of {t['k']} from {t['low']} to {t['high']}?",
        program=lambda t: f"print(sum(x for x in range({t['low']}, {t['high'] + 1}) if x % {t['k']} == 0))",
        answer=lambda t: sum(x for x in range(t["low"], t["high"] + 1) if x % t["k"] == 0),
    ),
    "count_multiples": Template(
        sample=_sample_count,
        question=lambda t: f"How many integers from 1 to {t['n']} are divisible by {t['a']} or by {t['b']}?",
        program=lambda t: (
            f"print(sum(1 for x in range(1, {t['n'] + 1}) if x % {t['a']} == 0 or x % {t['b']} == 0))"
        ),
        answer=lambda t: sum(1 for x in range(1, t["n"] + 1) if x % t["a"] == 0 or x % t["b"] == 0),
    ),
    "combinations": Template(
        sample=lambda rng: _ints(rng, n=(12, 40), k=(3, 7)),
        question=lambda t: f"In how many ways can a team of {t['k']} be chosen from {t['n']} people?",
        program=lambda t: f"import math; print(math.comb({t['n']}, {t['k']}))",
        answer=lambda t: math.comb(t["n"], t["k"]),
    ),
    "digit_sum": Template(
        sample=lambda rng: _ints(rng, base=(2, 99), power=(10, 40)),
        question=lambda t: f"What is the sum of the digits of {t['base']} to the power {t['power']}?",
        program=lambda t: f"print(sum(int(d) for d in str({t['base']} ** {t['power']})))",
        answer=lambda t: sum(int(d) for d in str(t["base"] ** t["power"])),
    ),
    "power_mod": Template(
        sample=lambda rng: _ints(rng, base=(2, 99), power=(5, 40), modulus=(11, 999)),
        question=lambda t: (
            f"What is the remainder when {t['base']} to the power {t['power']} is divided by {t['modulus']}?"
        ),
        program=lambda t: f"print({t['base']} ** {t['power']} % {t['modulus']})",
        answer=lambda t: t["base"] ** t["power"] % t["modulus"],
    ),
}
"""The word-problem templates by name (the sub-task labels)."""


def is_held_out(task: Task, test_fraction: float) -> bool:
    """Whether ``task`` belongs to the test split (a fixed SHA-256 hash of its JSON, not ``hash()``)."""
    digest = hashlib.sha256(json.dumps(task, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


_INT_RE = re.compile(r"[+-]?\d{1,60}")


class SandboxedPython:
    """The sandboxed ``python`` tool of the envs that offer one (PythonTIR, ReasoningGym-Python).

    Mixed into a :class:`~actorlearner.env.toolenv.ToolEnv` after it in the bases; the host sets
    the sandbox's limits as attributes. The class defaults are :func:`run_python`'s, except the
    wall time (5 s, where ``run_python`` allows 10).
    """

    cpu_time_s: float = 5.0
    wall_time_s: float = 5.0
    memory_mb: int = 512
    max_file_mb: int = 16
    allow_weak_sandbox: bool = False
    max_output_chars: int
    turn_time_left: Callable[[], float]

    @tool
    def python(self, code: str) -> str:
        """Runs a Python program and returns what it prints.

        Args:
            code: The program, e.g. print(37 * 52). Only the standard library is available.
        """
        return program_output(
            code,
            cpu_time_s=self.cpu_time_s,
            wall_time_s=min(self.wall_time_s, self.turn_time_left()),
            memory_mb=self.memory_mb,
            max_file_mb=self.max_file_mb,
            max_output_chars=self.max_output_chars,
            allow_weak_sandbox=self.allow_weak_sandbox,
        )


class PythonTIR(ToolOrGuessEnv, SandboxedPython):
    """Math word problems with a sandboxed ``python`` tool; reward ``"answer"`` 1.0 for the right integer.

    Args:
        templates: Names of the templates to draw from (keys of :data:`TEMPLATES`); None for all.
        split: ``"train"`` draws only tasks outside the held-out set, ``"test"`` only inside.
        test_fraction: Fraction of tasks held out, in (0, 1).
        demo_tool_prob: Probability that the demonstration of an episode runs a program; otherwise
            it answers a wrong guess. Decided at reset from the seed.
        cpu_time_s: CPU seconds a program may use.
        wall_time_s: Seconds a program may run.
        memory_mb: Address space of a program, in MB.
        max_file_mb: Largest file a program may write, in MB.
        allow_weak_sandbox: Where the isolator (bubblewrap + seccomp, docs/sandbox.md) cannot run,
            run programs under the weak built-in layers with a loud warning. False (the default)
            fails closed: the env refuses to start.
        **kwargs: :class:`~actorlearner.env.toolenv.ToolEnv` knobs (``max_turns``, ``max_output_chars``,
            which also caps the bytes a program may print...). ``tool_timeout_s`` defaults to
            ``math.inf`` here: ``wall_time_s`` is the hard limit of a call, and ``turn_time_s``
            (10 s here) of all calls of a turn.

    Raises:
        ValueError: If an argument is invalid (the message names the key and its allowed values).
    """

    tool_timeout_s: float = math.inf
    """No outer timeout: the sandbox kills a program at ``wall_time_s`` (the wait for a slot is free)."""
    turn_time_s: float = 10.0
    """Programs of one turn run at most this long in all: each gets ``min(wall_time_s, time left)``."""

    def __init__(
        self,
        *,
        templates: Sequence[str] | None = None,
        split: str = "train",
        test_fraction: float = 0.1,
        demo_tool_prob: float = 0.5,
        cpu_time_s: float = 2.0,
        wall_time_s: float = 5.0,
        memory_mb: int = 256,
        max_file_mb: int = 4,
        allow_weak_sandbox: bool = False,
        **kwargs: Any,
    ) -> None:
        names = (
            list(TEMPLATES)
            if templates is None
            else check_names("templates", templates, TEMPLATES, comma_separated=False)
        )
        check_choice("split", split, SPLITS)
        check_fraction("test_fraction", test_fraction, open_interval=True)
        check_probability("demo_tool_prob", demo_tool_prob)
        check_positive("cpu_time_s", cpu_time_s)
        check_positive("wall_time_s", wall_time_s)
        check_int("memory_mb", memory_mb, 1)
        check_int("max_file_mb", max_file_mb, 1)
        check_isolator(allow_weak_sandbox)
        super().__init__(**kwargs)
        self.templates, self.split = list(names), split
        self.test_fraction, self.demo_tool_prob = test_fraction, demo_tool_prob
        self.cpu_time_s, self.wall_time_s = cpu_time_s, wall_time_s
        self.memory_mb, self.max_file_mb = memory_mb, max_file_mb
        self.allow_weak_sandbox = allow_weak_sandbox

    def sample_task(self, rng: np.random.Generator) -> Task:
        """Draws a template and its numbers until the task is in this env's split (at most 10,000 draws)."""
        for _ in range(10_000):
            name = self.templates[int(rng.integers(len(self.templates)))]
            task = {"template": name, **TEMPLATES[name].sample(rng)}
            if is_held_out(task, self.test_fraction) == (self.split == "test"):
                return task
        raise ValueError(f"split={self.split!r} drew no task in 10,000 tries; check test_fraction")

    def prompt_messages(self, task: Task) -> Messages:
        """The one user message: the word problem."""
        return [{"role": "user", "content": TEMPLATES[task["template"]].question(task)}]

    def task_labels(self, task: Task) -> list[str]:
        """The template's name, e.g. ``["range_sum"]``."""
        return [task["template"]]

    def score_answer(self, task: Task, answer: str) -> tuple[dict[str, float], bool]:
        """``{"answer": 1.0}`` and success when the answer is the right integer, else 0.0."""
        text = answer.strip()
        correct = _INT_RE.fullmatch(text) is not None and int(text) == answer_of(task)
        return {"answer": 1.0 if correct else 0.0}, correct

    def answer_value(self, task: dict[str, Any]) -> int:
        """The task's integer answer."""
        return answer_of(task)

    def demo_call(self, task: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The tool call the demonstration makes."""
        return "python", {"code": program_of(task)}


def answer_of(task: Task) -> int:
    """The task's answer."""
    return TEMPLATES[task["template"]].answer(task)


def program_of(task: Task) -> str:
    """The demonstration's program for the task: one line that prints the answer."""
    return TEMPLATES[task["template"]].program(task)


_ERROR_TAIL_CHARS = 600


def program_output(code: str, **sandbox: Any) -> str:
    """A ``python`` tool call: what the program printed, run by :func:`run_python` with ``sandbox``.

    Raises:
        RuntimeError: What the model sees of a failed run (the limit hit, or the traceback's end).
    """
    result = run_python(code, **sandbox)
    if not result.ok:
        raise RuntimeError(_failure(result))
    return result.stdout.rstrip() or "(no output: print the result)"


def check_isolator(allow_weak_sandbox: bool) -> None:
    """Fails closed: raises unless the isolator runs here or ``allow_weak_sandbox`` is set.

    Raises:
        ValueError: One line naming ``allow_weak_sandbox`` and why the isolator cannot run.
    """
    if not isinstance(allow_weak_sandbox, bool):
        raise ValueError(f"allow_weak_sandbox must be true or false, got {allow_weak_sandbox!r}")
    problem = None if allow_weak_sandbox else isolation.isolator_problem()
    if problem is not None:
        raise ValueError(
            f"allow_weak_sandbox: the sandbox's isolator cannot run on this machine ({problem}); "
            "set allow_weak_sandbox: true to run model code under the weak built-in layers (docs/sandbox.md)"
        )


def _failure(result: SandboxResult) -> str:
    """What the model sees of a failed run: the limit hit, or the end of the traceback."""
    if result.error is not None and not result.error.startswith("exit code"):
        return result.error
    text = result.stderr.strip()
    if len(text) > _ERROR_TAIL_CHARS:
        text = text[-_ERROR_TAIL_CHARS:].split("\n", 1)[-1]  # start at a line boundary
    return text or str(result.error)
