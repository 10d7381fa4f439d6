"""A sum-tree over a fixed number of non-negative priorities, with batched update and search.

Leaves hold the priorities (padded to a power of two); each internal node holds the sum of its
children, and a prefix-sum query walks down to the leaf whose cumulative interval contains it
(Schaul et al., arXiv 1511.05952, appendix B.2.1). The walks are loops compiled by numba
(:mod:`actorlearner.replay.treekernels`): at the batch sizes a learner uses (~32), a numpy call per
level would cost more than the arithmetic.

Two departures from the textbook binary tree:

* The tree is ``fanout``-ary (a power of two; 32 by default), so 10^6 leaves are four levels deep
  instead of twenty. Every fanout gives the same answers.
* Its top is not a single root but the first level of at most 2048 nodes. A query is placed on
  it by a binary search of that level's running sums, and the total is that level's sum. For
  10^6 leaves two levels are left to descend per query.

Internal sums are always recomputed from their children (never updated by deltas), left to right,
by the same compiled loop, so they carry no drift and a tree rebuilt from its leaves is
bit-identical to the one maintained incrementally (a test checks this; checkpoint round trips rely
on it).

:func:`sample_distinct` draws a batch of distinct leaves by systematic sampling (one prefix sum in
each equal segment of the total, at one shared offset); :func:`inclusion_probabilities` gives the
exact probability that such a batch includes each leaf, which the buffer's importance-sampling
weights need (for one draw it is ``p_i / total``; for a batch that is a large share of the leaves
it approaches 1 for every leaf).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from actorlearner.replay import treekernels

_SEARCHED_LEVEL_SIZE = 2048
"""The top level has at most this many nodes; find() places queries on it by binary search."""
_BAD_PRIORITIES = "priorities must be finite and >= 0"  # one rule: set_leaves (compiled) and set_all


class SumTree:
    """Non-negative priorities at ``capacity`` leaves, with batched update and prefix-sum search.

    Args:
        capacity: Number of leaves that can hold a priority (indices ``0 .. capacity - 1``).
        fanout: Children per internal node; a power of two >= 2.

    Example:
        >>> tree = SumTree(4)
        >>> tree.update(np.array([0, 2]), np.array([1.0, 3.0]))
        >>> tree.total, tree.find(np.array([0.5, 1.0, 3.9])).tolist()
        (4.0, [0, 2, 2])
    """

    def __init__(self, capacity: int, fanout: int = 32) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if fanout < 2 or fanout & (fanout - 1):
            raise ValueError(f"fanout must be a power of two >= 2, got {fanout}")
        self.capacity = capacity
        self.fanout = fanout
        num_leaves = max(2, 1 << (capacity - 1).bit_length())
        sizes = [num_leaves]
        while sizes[-1] > _SEARCHED_LEVEL_SIZE:
            sizes.append(sizes[-1] // fanout)
        # One array holds the levels back to back (the compiled walks take it whole): levels[0]
        # are the leaves, levels[-1] the top (<= _SEARCHED_LEVEL_SIZE nodes).
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._shifts = np.full(len(sizes) - 1, fanout.bit_length() - 1, dtype=np.int64)
        self._flat = np.zeros(int(self._offsets[-1]), dtype=np.float64)
        self._levels = [self._flat[a:b] for a, b in zip(self._offsets[:-1], self._offsets[1:], strict=True)]
        self._total = 0.0
        self._num_nonzero = 0

    @property
    def total(self) -> float:
        """Sum of all priorities."""
        return self._total

    @property
    def num_nonzero(self) -> int:
        """Number of leaves with a priority > 0 (those :meth:`find` can return)."""
        return self._num_nonzero

    @property
    def leaves(self) -> np.ndarray:
        """A read-only view of the ``capacity`` priorities."""
        view = self._levels[0][: self.capacity]
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return self.capacity

    def __getitem__(self, indices: Any) -> Any:
        """The priority at an index, or the priorities at an array of indices."""
        return self.leaves[indices]

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Sets ``priorities[j]`` at leaf ``indices[j]`` and recomputes the sums above them.

        If an index repeats, its last priority wins (as with assignments in a loop).

        Raises:
            ValueError: If an index is outside ``[0, capacity)`` or a priority is negative, NaN or
                infinite; the tree is left unchanged.
        """
        idx = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
        values = np.ascontiguousarray(priorities, dtype=np.float64).reshape(-1)
        if idx.shape != values.shape:
            raise ValueError(f"{idx.size} indices but {values.size} priorities")
        if idx.size == 0:
            return
        status, delta, total = treekernels.set_leaves(
            self._flat, self._offsets, self._shifts, idx, values, self.capacity
        )
        if status == treekernels.BAD_INDEX:
            raise ValueError(f"indices must lie in [0, {self.capacity}), got {idx.min()}..{idx.max()}")
        if status == treekernels.BAD_PRIORITY:
            raise ValueError(_BAD_PRIORITIES)
        self._num_nonzero += int(delta)
        self._total = float(total)

    def set_all(self, priorities: np.ndarray) -> None:
        """Replaces every priority (length ``capacity``) and rebuilds the tree in O(capacity)."""
        values = np.asarray(priorities, dtype=np.float64).reshape(-1)
        if values.size != self.capacity:
            raise ValueError(f"expected {self.capacity} priorities, got {values.size}")
        if values.size and not (values.min() >= 0.0 and np.isfinite(values.max())):
            raise ValueError(_BAD_PRIORITIES)
        self._levels[0][:] = 0.0
        self._levels[0][: self.capacity] = values
        treekernels.rebuild(self._flat, self._offsets, self._shifts)
        self._total = float(treekernels.top_total(self._flat, self._offsets))
        self._num_nonzero = int(np.count_nonzero(values))

    def find(self, prefix_sums: np.ndarray) -> np.ndarray:
        """For each query ``q``, the leaf ``i`` with ``sum(p[:i]) <= q < sum(p[:i+1])``.

        Each query is placed on the top level by a binary search of its running sums, then
        descends one level per step (compiled: :func:`treekernels.find`). A leaf with priority 0
        is never returned; a query at or beyond the total (or pushed there by rounding) gets the
        last leaf with a positive priority, and a negative one counts as 0.

        Raises:
            ValueError: If the total is 0 or a query is NaN.
        """
        q = np.ascontiguousarray(prefix_sums, dtype=np.float64).reshape(-1)
        if not self._total > 0.0:
            raise ValueError("find() on a tree whose total priority is 0")
        found, numbers = treekernels.find(self._flat, self._offsets, self._shifts, q)
        if not numbers:
            raise ValueError("prefix sums must not be NaN")
        return found

    def at_least(self, threshold: float) -> np.ndarray:
        """The leaves whose priority is at least ``threshold`` (> 0), in index order.

        A node's sum bounds each of its leaves, so only nodes whose sum reaches the threshold are
        descended: at most ``total / threshold`` per level, O(that x fanout x depth) in all.
        """
        if not threshold > 0.0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        idx = np.flatnonzero(self._levels[-1] >= threshold)
        for level in range(len(self._shifts) - 1, -1, -1):
            children = ((idx[:, None] << self._shifts[level]) + np.arange(self.fanout)).reshape(-1)
            idx = children[self._levels[level][children] >= threshold]
        return idx[idx < self.capacity].astype(np.int64)

    def prefix_sums(self, indices: np.ndarray) -> np.ndarray:
        """For each index ``i``, the sum of the priorities before it, ``sum(p[:i])``.

        Adds, level by level, the siblings to the left of the path from leaf ``i`` to the top, then
        the top-level nodes before it: O(fanout) per level and query, like :meth:`find`.
        """
        idx = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and not (idx.min() >= 0 and idx.max() < self.capacity):
            raise ValueError(f"indices must lie in [0, {self.capacity}), got {idx.min()}..{idx.max()}")
        return treekernels.prefix_sums(self._flat, self._offsets, self._shifts, idx)

    def get_state(self) -> dict[str, Any]:
        """The leaves (the internal sums are rebuilt from them, bit-identically)."""
        return {"capacity": self.capacity, "fanout": self.fanout, "leaves": self.leaves.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`get_state` returned."""
        self.set_all(state["leaves"])


_CERTAIN = 1.0 - 1e-9
"""A leaf within this factor of one draw's share is certain: the running total left after taking
leaves carries rounding error, and the last leaf of ``k = N`` must come out certain, not a draw."""


def certainty_split(masses: np.ndarray, k: int) -> tuple[np.ndarray, int, float]:
    """The leaves a batch of ``k`` distinct draws takes with certainty, and what is left to draw.

    A leaf whose share of the mass is at least one draw's (``m_i >= T / k``) would be hit more than
    once by equally spaced queries. Such leaves are taken outright, largest first, and the rule is
    applied again to the rest with ``k`` and ``T`` reduced (the textbook treatment of certainty
    units in probability-proportional-to-size sampling).

    Args:
        masses: Non-negative leaf masses.
        k: Distinct draws wanted (at most the number of nonzero masses are made).

    Returns:
        (indices of the certain leaves, draws left ``k'``, mass left ``T'``).
    """
    m = np.asarray(masses, dtype=np.float64).reshape(-1)
    k = min(int(k), int(np.count_nonzero(m)))
    if k <= 0:
        return np.empty(0, dtype=np.int64), 0, float(m.sum())
    top = np.argpartition(m, m.size - k)[m.size - k :] if k < m.size else np.arange(m.size)
    top = top[np.argsort(-m[top], kind="stable")]
    total, taken = float(m.sum()), 0
    while taken < k and m[top[taken]] * (k - taken) >= total * _CERTAIN:
        total -= float(m[top[taken]])
        taken += 1
    certain = top[:taken].astype(np.int64)
    if taken:  # the running total lost precision to cancellation: sum what is left afresh
        left = m.copy()
        left[certain] = 0.0
        total = float(left.sum())
    return certain, k - taken, max(total, 0.0)


def tree_certainty_split(tree: SumTree, k: int) -> tuple[np.ndarray, int, float]:
    """:func:`certainty_split` of ``tree.leaves``, looking only at leaves heavy enough to qualify.

    Each round asks the tree for the leaves of at least ``T' / k'`` (:meth:`SumTree.at_least`),
    at most ``k'`` of them; taking one lowers the bar, so rounds repeat until none qualifies. The
    mass left is a running total, which cancellation can blur after many certain leaves: the
    callers take it exactly as ``tree.total`` with the certain leaves zeroed.
    """
    taken: list[int] = []
    total, rest = tree.total, min(int(k), tree.num_nonzero)
    while rest > 0 and total > 0.0:
        heavy = np.setdiff1d(tree.at_least(total * _CERTAIN / rest), np.asarray(taken, dtype=np.int64))
        heavy = heavy[np.argsort(-tree[heavy], kind="stable")]
        before = len(taken)
        for leaf in heavy.tolist():
            if rest == 0 or tree[leaf] * rest < total * _CERTAIN:
                break
            taken.append(leaf)
            total, rest = total - float(tree[leaf]), rest - 1
        if len(taken) == before:
            break
    return np.asarray(taken, dtype=np.int64), rest, max(total, 0.0)


def sample_distinct(tree: SumTree, k: int, rng: np.random.Generator) -> np.ndarray:
    """:func:`sample_with_inclusion` without the inclusion probabilities."""
    return sample_with_inclusion(tree, k, rng)[0]


def sample_with_inclusion(tree: SumTree, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``min(k, tree.num_nonzero)`` distinct leaves by priority (systematic PPS sampling).

    The leaves heavier than one draw's share are taken with certainty (:func:`certainty_split`).
    The other ``k'`` draws are one uniform offset ``u`` and the equally spaced prefix sums
    ``(u + j) T' / k'``, ``j = 0..k'-1``, over the remaining mass ``T'``: every segment of the total
    gets one draw, as in PER's stratified sampling, and since no remaining leaf is longer than the
    spacing, none is hit twice. So each leaf is included with probability exactly
    ``k' m_i / T'``, or 1 if certain (:func:`inclusion_probabilities`), which is what the buffer's
    importance weights need. The tree is restored before returning (also if an error interrupts).

    Returns:
        Leaf indices (int64), each distinct, none with priority 0; and the probability that a call
        includes each of them (as :func:`inclusion_probabilities` gives it).
    """
    k = min(int(k), tree.num_nonzero)
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0)
    certain, rest, _ = tree_certainty_split(tree, k)
    if rest == 0:
        return certain, np.ones(certain.size)
    saved = tree[certain]
    try:
        tree.update(certain, np.zeros(certain.size))
        found = tree.find((rng.random() + np.arange(rest)) * (tree.total / rest))
        found = _top_up(tree, np.unique(found), rest, rng)
        pi = np.minimum(1.0, tree[found] * (rest / tree.total))  # the total of what is left, exact
    finally:
        tree.update(certain, saved)
    return np.concatenate([certain, found]), np.concatenate([np.ones(certain.size), pi])


def _top_up(tree: SumTree, found: np.ndarray, need: int, rng: np.random.Generator) -> np.ndarray:
    """Fills draws lost to rounding (a leaf within float error of the spacing hit twice; never seen).

    The missing draws are taken from the leaves not yet drawn, by priority.
    """
    if found.size >= need:
        return found
    saved = tree[found]
    try:
        tree.update(found, np.zeros(found.size))
        extra = tree.find(rng.random(need - found.size) * tree.total)
    finally:
        tree.update(found, saved)
    return _top_up(tree, np.unique(np.concatenate([found, extra])), need, rng)


def inclusion_probabilities(masses: np.ndarray, k: int) -> np.ndarray:
    """The probability that :func:`sample_distinct` returns each leaf of a tree with these leaves.

    Exact: 1 for the leaves taken with certainty (:func:`certainty_split`), ``k' m_i / T'`` for
    the others, 0 for a zero mass. They sum to ``min(k, number of nonzero masses)``.

    Args:
        masses: Non-negative leaf masses (``priority ** alpha``).
        k: Draws asked of :func:`sample_distinct`.
    """
    m = np.asarray(masses, dtype=np.float64).reshape(-1)
    k = min(int(k), int(np.count_nonzero(m)))
    out = np.zeros(m.size)
    if k <= 0:
        return out
    certain, rest, total = certainty_split(m, k)
    if rest:
        out = np.minimum(1.0, m * (rest / total)) if total > 0 else out
    out[certain] = 1.0
    return out


def tree_inclusion_probabilities(tree: SumTree, indices: np.ndarray, k: int) -> np.ndarray:
    """``inclusion_probabilities(tree.leaves, k)[indices]``, without a pass over the leaves.

    Args:
        tree: The tree :func:`sample_distinct` draws from.
        indices: Leaves whose inclusion probabilities are wanted (e.g. the ones it drew).
        k: Draws asked of :func:`sample_distinct`.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    k = min(int(k), tree.num_nonzero)
    if k <= 0:
        return np.zeros(idx.size)
    certain, rest, _ = tree_certainty_split(tree, k)
    saved = tree[certain]
    try:
        tree.update(certain, np.zeros(certain.size))  # the total of what is left, exact
        total = tree.total
    finally:
        tree.update(certain, saved)
    out = np.minimum(1.0, tree[idx] * (rest / total)) if rest and total > 0 else np.zeros(idx.size)
    out[np.isin(idx, certain)] = 1.0
    return out
