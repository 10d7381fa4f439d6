"""Tool-use rewards as pure functions: ToolRL's fine-grained call matching and OTC's efficiency term.

Definitions: docs/algorithms.md §2 (ToolRL, arXiv 2504.13958; OTC, arXiv 2504.14870).

A call is a mapping ``{"name": str, "arguments": {key: value}}`` (``"parameters"`` is accepted in
place of ``"arguments"``, as in ToolRL's data). ToolRL compares the predicted calls with the
ground-truth calls::

    match(A, B) = |A ∩ B| / (|A| + |B| - |A ∩ B|)             (multiset Jaccard; 1 when both empty)
    score = match(names_pred, names_gt)
            + sum over gt calls g of [ match(keys(f(g)), keys(g)) + #{k : f(g)[k] == g[k]} ]
    S_max = 1 + sum_g (1 + |args(g)|)
    R_correct = 6 * score / S_max - 3                          (exact match 3, unparsable -3)
    r = R_format + R_correct                                   (in [-3, 4])

where ``f(g)`` is the best not-yet-used predicted call with the same name as ``g`` (the highest key
match plus value count, the first one on ties; a candidate scoring 0 is left unused). That two
empty multisets match fully is ToolRL's reference convention: with no ground-truth call (an
irrelevant request), making no call is an exact match and any call scores -3.

:func:`toolrl_reward` splits ``R_correct`` into one signed part per term so that the parts add up:
a term whose raw value is ``x`` out of a maximum ``M`` contributes ``(6 x - 3 M) / S_max``, so
``name + keys + values == correct`` and ``format + correct == total``. A part is positive when the
term earned more than half its maximum; DSCL's curriculum reads the parts from the trajectory.
Configure DSCL for this reward with :data:`TOOLRL_REWARD_RANGE` and :data:`TOOLRL_COMPONENT_RANGES`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Call = Mapping[str, Any]
"""A tool call: ``{"name": str, "arguments": {key: value}}``."""

ValuesEqual = Callable[[Any, Any], bool]
"""``(predicted_value, ground_truth_value) -> bool``: whether a predicted argument value is right."""

TOOLRL_MAX = 4.0
"""Largest ToolRL reward (format 1 plus an exact match 3)."""
TOOLRL_MIN = -3.0
"""Smallest ToolRL reward (no format, unparsable or nothing right)."""
TOOLRL_REWARD_RANGE = (TOOLRL_MIN, TOOLRL_MAX)
"""ToolRL's reward range ``[-3, 4]`` (``R_format + R_correct``): DSCL's ``reward_range`` for envs
rewarded with ToolRL (configs/function_calling.yaml)."""
TOOLRL_COMPONENT_RANGES: dict[str, tuple[float, float]] = {
    "format": (0.0, 1.0),
    "name": (0.0, 1.0),
    "keys": (0.0, 1.0),
    "values": (0.0, 1.0),
}
"""ToolRL's reward components as curriculum sub-tasks, each with the range normalizing it: DSCL's
``component_ranges`` for envs rewarded with ToolRL (used for trajectories without
``sub_task_scores``)."""


def multiset_match(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Multiset Jaccard similarity ``|A ∩ B| / (|A| + |B| - |A ∩ B|)``.

    Args:
        a: First multiset (order ignored, repeats counted).
        b: Second multiset.

    Returns:
        A value in [0, 1]: 1 when the multisets are equal (two empty ones included), 0 when they
        share nothing or exactly one of them is empty.
    """
    ca, cb = Counter(a), Counter(b)
    if ca == cb:
        return 1.0
    common = sum((ca & cb).values())
    union = len(a) + len(b) - common
    return common / union if union > 0 else 0.0


@dataclass(frozen=True)
class ToolRLMatch:
    """The raw terms of ToolRL's score.

    Attributes:
        name: ``match(names_pred, names_gt)``, in [0, 1].
        keys: Sum over ground-truth calls of the key match of their matched prediction, in [0, #gt].
        values: Number of ground-truth arguments whose matched prediction has the right value.
        max_keys: Largest possible ``keys`` (the number of ground-truth calls).
        max_values: Largest possible ``values`` (the ground truth's total number of arguments).
    """

    name: float
    keys: float
    values: float
    max_keys: float
    max_values: float

    @property
    def score(self) -> float:
        """``name + keys + values``."""
        return self.name + self.keys + self.values

    @property
    def s_max(self) -> float:
        """``S_max = 1 + sum_g (1 + |args(g)|)``."""
        return 1.0 + self.max_keys + self.max_values


def _arguments(call: Call) -> Mapping[str, Any]:
    args = call.get("arguments", call.get("parameters", {}))
    return args if isinstance(args, Mapping) else {}


def toolrl_match(
    predicted_calls: Sequence[Call],
    ground_truth_calls: Sequence[Call],
    values_equal: ValuesEqual | None = None,
) -> ToolRLMatch:
    """Computes ToolRL's raw terms (see the module docstring).

    Args:
        predicted_calls: The calls the model made.
        ground_truth_calls: The expected calls.
        values_equal: Compares a predicted value with a ground-truth value; ``==`` by default
            (the BFCL env passes its acceptable-values check).

    Returns:
        The name, key and value terms and their maxima.
    """
    same = values_equal or (lambda p, g: bool(p == g))
    name = multiset_match(
        [str(c.get("name", "")) for c in predicted_calls], [str(g["name"]) for g in ground_truth_calls]
    )
    used: set[int] = set()
    keys = values = max_values = 0.0
    for g in ground_truth_calls:
        g_args = _arguments(g)
        max_values += len(g_args)
        best: tuple[float, float, int] | None = None  # (key match, value count, index)
        for i, p in enumerate(predicted_calls):
            if i in used or p.get("name") != g["name"]:
                continue
            p_args = _arguments(p)
            key_match = multiset_match(list(p_args), list(g_args))
            value_count = float(sum(1 for k, v in g_args.items() if k in p_args and same(p_args[k], v)))
            if key_match + value_count > (0.0 if best is None else best[0] + best[1]):
                best = (key_match, value_count, i)
        if best is not None:
            used.add(best[2])
            keys += best[0]
            values += best[1]
    return ToolRLMatch(name, keys, values, float(len(ground_truth_calls)), max_values)


def toolrl_reward(
    predicted_calls: Sequence[Call] | None,
    ground_truth_calls: Sequence[Call],
    format_ok: bool,
    values_equal: ValuesEqual | None = None,
) -> dict[str, float]:
    """ToolRL's reward ``R_format + R_correct`` and its parts.

    Args:
        predicted_calls: The calls the model made, or None when its output could not be parsed
            (then ``R_correct = -3``).
        ground_truth_calls: The expected calls (empty: the right behaviour is not to call).
        format_ok: Whether the output matched the expected tag layout (``R_format`` 1, else 0).
        values_equal: Compares a predicted value with a ground-truth value; ``==`` by default.

    Returns:
        ``format`` (R_format), ``name``, ``keys``, ``values`` (the signed parts of R_correct,
        summing to it), ``correct`` (R_correct, in [-3, 3]) and ``total`` (``format + correct``).
    """
    fmt = 1.0 if format_ok else 0.0
    if predicted_calls is None:
        m = toolrl_match([], ground_truth_calls)
        m = ToolRLMatch(0.0, 0.0, 0.0, m.max_keys, m.max_values)
    else:
        m = toolrl_match(predicted_calls, ground_truth_calls, values_equal)
    s_max = m.s_max
    name = (6.0 * m.name - 3.0) / s_max
    keys = (6.0 * m.keys - 3.0 * m.max_keys) / s_max
    values = (6.0 * m.values - 3.0 * m.max_values) / s_max
    correct = 6.0 * m.score / s_max - 3.0
    return {
        "format": fmt,
        "name": name,
        "keys": keys,
        "values": values,
        "correct": correct,
        "total": fmt + correct,
    }


def otc_tool_reward(m: int, n: int, c: float = 1.0) -> float:
    """OTC's tool-efficiency factor ``r_tool`` (arXiv 2504.14870).

    With ``f = 2nm / (m + n)`` (0 if ``m = n = 0``, ``m`` if ``n = 0``): ``sin(f pi / (2n))`` if
    ``n > 0``, else ``cos(m pi / (2m + c))``. It is 1 when ``m == n`` and falls as the rollout uses
    more or fewer calls than needed.

    Args:
        m: Tool calls of this rollout.
        n: Fewest tool calls among the group's correct rollouts (or the task's known optimum).
        c: Smoothing constant of the ``n = 0`` branch (> 0).

    Returns:
        ``r_tool`` in [0, 1].

    Raises:
        ValueError: If ``m`` or ``n`` is negative or ``c`` is not positive.
    """
    if m < 0 or n < 0:
        raise ValueError(f"m and n must be >= 0, got m={m!r}, n={n!r}")
    if not c > 0:
        raise ValueError(f"c must be > 0, got {c!r}")
    if n == 0:
        return math.cos(m * math.pi / (2 * m + c))
    f = 2.0 * n * m / (m + n)
    return math.sin(f * math.pi / (2 * n))


def otc_reward(m: int, n: int, c: float = 1.0, alpha: float = 1.0, r_correct: float = 1.0) -> float:
    """OTC's term ``alpha * r_tool * r_correct`` (see :func:`otc_tool_reward`).

    Args:
        m: Tool calls of this rollout.
        n: Fewest tool calls among the group's correct rollouts (or the task's known optimum).
        c: Smoothing constant of the ``n = 0`` branch.
        alpha: Weight of the term.
        r_correct: The rollout's correctness reward the efficiency factor multiplies.

    Returns:
        The OTC reward term.
    """
    return alpha * otc_tool_reward(m, n, c) * r_correct
