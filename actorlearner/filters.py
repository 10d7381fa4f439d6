"""Group filters and the chain that applies them, counting what each one drops.

A filter sees a group and returns the kept group (possibly with some trajectories' loss masks
scaled) or None to drop it (ALGORITHMS.md section 5). Register your own with
:func:`actorlearner.register_filter`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from actorlearner.interfaces import GroupFilter
from actorlearner.registry import register_filter
from actorlearner.trajectory import Group


@register_filter("zero_variance")
def zero_variance(group: Group, min_std: float = 1e-3) -> Group | None:
    """Drops a group whose rewards are all (nearly) equal: its GRPO advantages are all zero.

    Args:
        group: The group.
        min_std: Groups with reward standard deviation below this are dropped (DAPO: 1e-3).
    """
    return group if float(np.std(group.rewards)) >= min_std else None


class FilterError(RuntimeError):
    """A filter raised; the message names it."""


def _masked_tokens(group: Group) -> float:
    return float(sum(t.loss_mask.sum() for t in group.trajectories))


class FilterChain:
    """Applies filters in order and counts, per filter, dropped groups, trajectories and tokens.

    Args:
        filters: ``(name, filter)`` pairs in the order they run.
    """

    def __init__(self, filters: Sequence[tuple[str, GroupFilter]]) -> None:
        self.filters = list(filters)
        self.counts: dict[str, float] = defaultdict(float)

    def __call__(self, group: Group) -> Group | None:
        """Runs the chain on one group; returns the kept group or None."""
        current: Group | None = group
        for name, fn in self.filters:
            assert current is not None
            before = _masked_tokens(current)
            try:
                kept = fn(current)
            except Exception as err:
                raise FilterError(f"filter {name!r} raised {err!r} on group {group.group_id}") from err
            if kept is None:
                self.counts[f"{name}/groups_dropped"] += 1
                self.counts[f"{name}/trajectories_dropped"] += len(current.trajectories)
                self.counts[f"{name}/tokens_dropped"] += before
                return None
            masked = before - _masked_tokens(kept)
            if masked > 0:
                self.counts[f"{name}/tokens_masked"] += masked
            current = kept
        return current

    def pop_counts(self) -> dict[str, float]:
        """Returns the counts since the last call and resets them."""
        counts, self.counts = dict(self.counts), defaultdict(float)
        return counts
