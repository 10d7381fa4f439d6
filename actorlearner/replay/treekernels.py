"""The sum-tree's inner loops, compiled by numba.

At the batch sizes a learner uses (~32), a numpy call per tree level costs more than the arithmetic
it does, so the walks are written as plain loops and compiled (``cache=True`` keeps the machine code
on disk beside this file: only the first process of a machine pays the compile, about 3 s; later
ones load it in about 0.4 s).

The tree is one float64 array ``flat`` holding its levels back to back: the leaves at
``offsets[0]``, their parents at ``offsets[1]``, ..., the top level last. ``shifts[l]`` is
log2 of the fanout between level ``l`` and ``l + 1``. Every internal sum is computed by
:func:`_row_sum`, left to right over the children, both when a leaf changes and when the tree is
rebuilt, so a tree maintained by updates is bit-identical to one rebuilt from its leaves. The
arithmetic of :func:`find` and :func:`prefix_sums` is the sequential cumulative sum of the
children, so answers agree with ``np.searchsorted(np.cumsum(leaves), q, side="right")``.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)


@_jit
def _row_sum(flat: np.ndarray, start: int, count: int) -> float:
    """``flat[start : start + count]`` summed left to right."""
    total = 0.0
    for c in range(count):
        total += flat[start + c]
    return total


@_jit
def top_total(flat: np.ndarray, offsets: np.ndarray) -> float:
    """The sum of the top level (the total priority)."""
    top = offsets.size - 2
    return _row_sum(flat, offsets[top], offsets[top + 1] - offsets[top])


BAD_INDEX, BAD_PRIORITY = -1, -2
"""What :func:`set_leaves` returns, instead of a change of count, for input it refused."""


@_jit
def set_leaves(
    flat: np.ndarray,
    offsets: np.ndarray,
    shifts: np.ndarray,
    idx: np.ndarray,
    values: np.ndarray,
    capacity: int,
) -> tuple[int, int, float]:
    """Writes ``values[j]`` at leaf ``idx[j]`` in order and recomputes every sum above them.

    A repeated index keeps its last value. Nothing is written unless every index lies in
    ``[0, capacity)`` and every value is finite and >= 0.

    Returns:
        (0, the change in the number of nonzero leaves, the new total), or
        (``BAD_INDEX`` or ``BAD_PRIORITY``, 0, 0.0) for refused input.
    """
    for j in range(idx.size):
        if idx[j] < 0 or idx[j] >= capacity:
            return BAD_INDEX, 0, 0.0
        if not (values[j] >= 0.0 and values[j] < np.inf):  # also refuses NaN
            return BAD_PRIORITY, 0, 0.0
    delta = 0
    for j in range(idx.size):
        leaf = offsets[0] + idx[j]
        delta += int(values[j] != 0.0) - int(flat[leaf] != 0.0)
        flat[leaf] = values[j]
    depth = 0
    for level in range(shifts.size):
        shift = shifts[level]
        depth += shift
        previous = -1
        for j in range(idx.size):
            parent = idx[j] >> depth
            if parent == previous:  # neighbours in a sorted batch share parents: sum each once
                continue
            previous = parent
            first_child = offsets[level] + (parent << shift)
            flat[offsets[level + 1] + parent] = _row_sum(flat, first_child, 1 << shift)
    return 0, delta, top_total(flat, offsets)


@_jit
def rebuild(flat: np.ndarray, offsets: np.ndarray, shifts: np.ndarray) -> None:
    """Recomputes every internal sum from the leaves (the same sums :func:`set_leaves` writes)."""
    for level in range(shifts.size):
        fanout = 1 << shifts[level]
        for parent in range(offsets[level + 2] - offsets[level + 1]):
            first_child = offsets[level] + parent * fanout
            flat[offsets[level + 1] + parent] = _row_sum(flat, first_child, fanout)


@_jit
def _top_cumsum(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Running sums of the top level, left to right (``np.cumsum`` order)."""
    top = offsets.size - 2
    size = offsets[top + 1] - offsets[top]
    cums = np.empty(size)
    running = 0.0
    for node in range(size):
        running += flat[offsets[top] + node]
        cums[node] = running
    return cums


@_jit
def _last_with_mass(flat: np.ndarray, start: int, count: int) -> int:
    """The last of ``count`` nodes from ``start`` with a positive sum (the last one if none)."""
    for c in range(count - 1, -1, -1):
        if flat[start + c] > 0.0:
            return c
    return count - 1


@_jit
def find(
    flat: np.ndarray, offsets: np.ndarray, shifts: np.ndarray, queries: np.ndarray
) -> tuple[np.ndarray, bool]:
    """For each query ``q``, the leaf ``i`` with ``sum(p[:i]) <= q < sum(p[:i+1])``.

    A negative query counts as 0; one at or past the total gets the last leaf with a positive
    priority. The total must be positive (the caller checks).

    Returns:
        The leaves, and whether every query was a number (a NaN one is answered with -1).
    """
    top = offsets.size - 2
    cums = _top_cumsum(flat, offsets)
    out = np.empty(queries.size, dtype=np.int64)
    numbers = True
    for j in range(queries.size):
        if np.isnan(queries[j]):
            out[j], numbers = -1, False
            continue
        q = max(queries[j], 0.0)
        node = np.searchsorted(cums, q, side="right")  # cums strictly rise over nodes with mass
        if node >= cums.size:
            node = _last_with_mass(flat, offsets[top], cums.size)
            q = np.inf
        q = max(q - (cums[node] - flat[offsets[top] + node]), 0.0)
        for level in range(top - 1, -1, -1):
            fanout = 1 << shifts[level]
            first = offsets[level] + (node << shifts[level])
            running = 0.0
            child = fanout
            for c in range(fanout):
                running += flat[first + c]
                if running > q:
                    child = c
                    break
            if child == fanout:  # q >= the node's sum, or rounding: the last child with mass
                child = _last_with_mass(flat, first, fanout)
                q = np.inf
            else:  # q minus the mass before the child (clipped: rounding must not make it negative)
                q = max(q - (running - flat[first + child]), 0.0)
            node = (node << shifts[level]) + child
        out[j] = node
    return out, numbers


@_jit
def prefix_sums(flat: np.ndarray, offsets: np.ndarray, shifts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """For each leaf index ``i``, the sum of the priorities before it.

    The left siblings of its path, level by level, then the top-level nodes before it.
    """
    top = offsets.size - 2
    cums = _top_cumsum(flat, offsets)
    out = np.empty(idx.size)
    for j in range(idx.size):
        node = idx[j]
        before = 0.0
        for level in range(top):
            parent = node >> shifts[level]
            first = offsets[level] + (parent << shifts[level])
            child = node - (parent << shifts[level])
            running = 0.0
            for c in range(child + 1):
                running += flat[first + c]
            before += running - flat[first + child]
            node = parent
        out[j] = before + (cums[node] - flat[offsets[top] + node])
    return out
