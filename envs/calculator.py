"""Calculator: answer ``a op b`` with the help of a safe ``calculator`` tool.

The smallest env where a tool pays off: the scripted demonstration (cold-start SFT data) calls the
tool only with probability ``demo_tool_prob`` and otherwise guesses a wrong number, so RL has to
discover that calling the tool earns the reward.

Problems are split by a fixed hash of ``(a, op, b)``: a ``test_fraction`` of all problems is held
out, ``split="train"`` never draws them and ``split="test"`` draws only them.
"""

from __future__ import annotations

import ast
import hashlib
import math
import operator
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from actorlearner.core.errors import ConfigError
from actorlearner.core.knobs import check_choice, check_fraction, check_int, check_probability
from actorlearner.env.parsing import parse_model_text
from actorlearner.env.toolenv import Messages, tool
from envs import SPLITS
from envs.demo import ToolOrGuessEnv

OP_NAMES = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
"""Operators a task may use and their sub-task labels."""

MAX_EXPRESSION_CHARS = 200
"""Longest expression the calculator reads."""
MAX_ABS = 10**18
"""Largest magnitude of a number or intermediate result the calculator accepts."""
MAX_EXPONENT = 64
"""Largest magnitude of an exponent of ``**``."""

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def safe_eval(expression: str) -> int | float:
    """Evaluates arithmetic without ``eval``: numbers, ``+ - * / // % **``, unary signs, parentheses.

    Args:
        expression: The expression, e.g. ``"37 * 52"``.

    Returns:
        The value: an int when every step stayed in integers, else a float.

    Raises:
        ValueError: On anything else (names, calls, attributes, strings...), an expression longer
            than :data:`MAX_EXPRESSION_CHARS`, an exponent beyond :data:`MAX_EXPONENT`, a number
            beyond :data:`MAX_ABS`, or a division by zero.
    """
    if not isinstance(expression, str):
        raise ValueError("expression must be a string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = parse_model_text(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise ValueError("invalid expression") from err
    try:
        return _eval(tree.body)
    except ZeroDivisionError as err:
        raise ValueError("division by zero") from err
    except (OverflowError, RecursionError) as err:
        raise ValueError("result too large") from err


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"unsupported constant {value!r}"[:80])
        return _bounded(value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        result = _BINARY[type(node.op)](left, right)
        if isinstance(result, complex):
            raise ValueError("complex result")
        return _bounded(result)
    raise ValueError(f"unsupported syntax: {type(node).__name__}")


def _check_power(base: float, exponent: float) -> None:
    """Rejects a power whose exponent or result would be too large, before computing it."""
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"exponent larger than {MAX_EXPONENT}")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > math.log10(MAX_ABS):
        raise ValueError("result too large")


def _bounded(value: int | float) -> int | float:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("result is not a finite number")
    if abs(value) > MAX_ABS:
        raise ValueError("result too large")
    return value


def format_number(value: int | float) -> str:
    """Formats a result: integers (and integral floats) without ``.0``, other floats to 12 digits."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return str(value) if isinstance(value, int) else f"{value:.12g}"


def is_held_out(a: int, op: str, b: int, test_fraction: float) -> bool:
    """Whether problem ``a op b`` belongs to the test split (a fixed SHA-256 hash, not ``hash()``)."""
    digest = hashlib.sha256(f"{a}{op}{b}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


_INT_RE = re.compile(r"[+-]?\d{1,30}")


class Calculator(ToolOrGuessEnv):
    """``What is 37 * 52?`` with a ``calculator`` tool; reward ``"answer"`` 1.0 for the right integer.

    Args:
        max_operand: Operands are drawn from 1..max_operand.
        ops: Operators to draw from, a string of distinct characters among ``+-*/`` (``/`` tasks
            always divide exactly).
        split: ``"train"`` draws only problems outside the held-out set, ``"test"`` only inside.
        test_fraction: Fraction of problems held out, in (0, 1).
        demo_tool_prob: Probability that the demonstration of an episode uses the tool; otherwise
            it answers a wrong guess. Decided at reset from the seed.
        **kwargs: :class:`~actorlearner.env.toolenv.ToolEnv` knobs (``max_turns``, ``format_penalty``...).

    Raises:
        ValueError: If an argument is invalid (the message names the key and its allowed values).
    """

    def __init__(
        self,
        *,
        max_operand: int = 99,
        ops: str = "+-*",
        split: str = "train",
        test_fraction: float = 0.1,
        demo_tool_prob: float = 0.4,
        **kwargs: Any,
    ) -> None:
        check_int("max_operand", max_operand, 1)
        if not ops or not isinstance(ops, str) or set(ops) - set(OP_NAMES) or len(set(ops)) != len(ops):
            raise ConfigError(f"ops must be distinct characters among {''.join(OP_NAMES)!r}, got {ops!r}")
        check_choice("split", split, SPLITS)
        check_fraction("test_fraction", test_fraction, open_interval=True)
        check_probability("demo_tool_prob", demo_tool_prob)
        super().__init__(**kwargs)
        self.max_operand, self.ops, self.split = max_operand, ops, split
        self.test_fraction, self.demo_tool_prob = test_fraction, demo_tool_prob
        self.sample_task(np.random.default_rng(0))  # fails now, not at reset, if the split is empty

    @tool
    def calculator(self, expression: str) -> str:
        """Evaluates arithmetic.

        Args:
            expression: The expression, e.g. 37 * 52.
        """
        return format_number(safe_eval(expression))

    def sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draws ``a op b`` until the problem is in this env's split (at most 10,000 draws)."""
        for _ in range(10_000):
            op = self.ops[int(rng.integers(len(self.ops)))]
            if op == "/":
                b = int(rng.integers(1, self.max_operand + 1))
                a = b * int(rng.integers(1, self.max_operand // b + 1))
            else:
                a, b = (int(x) for x in rng.integers(1, self.max_operand + 1, size=2))
            if is_held_out(a, op, b, self.test_fraction) == (self.split == "test"):
                return {"a": a, "op": op, "b": b}
        raise ValueError(
            f"split={self.split!r} has (almost) no problems with max_operand={self.max_operand}, "
            f"ops={self.ops!r}, test_fraction={self.test_fraction}; raise max_operand or test_fraction"
        )

    def prompt_messages(self, task: dict[str, Any]) -> Messages:
        """The one user message, e.g. ``What is 37 * 52?``."""
        return [{"role": "user", "content": f"What is {_expression(task)}?"}]

    def task_labels(self, task: dict[str, Any]) -> list[str]:
        """The operator's name: ``["add"]``, ``["sub"]``, ``["mul"]`` or ``["div"]``."""
        return [OP_NAMES[task["op"]]]

    def score_answer(self, task: dict[str, Any], answer: str) -> tuple[dict[str, float], bool]:
        """``{"answer": 1.0}`` and success when the answer is the right integer, else 0.0."""
        correct = _INT_RE.fullmatch(answer.strip()) is not None and int(answer.strip()) == _value(task)
        return {"answer": 1.0 if correct else 0.0}, correct

    def answer_value(self, task: dict[str, Any]) -> int:
        """The task's integer answer."""
        return _value(task)

    def demo_call(self, task: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The tool call the demonstration makes."""
        return "calculator", {"expression": _expression(task)}


def _expression(task: dict[str, Any]) -> str:
    return f"{task['a']} {task['op']} {task['b']}"


def _value(task: dict[str, Any]) -> int:
    a, op, b = task["a"], task["op"], task["b"]
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
