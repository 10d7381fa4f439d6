"""Priority functions: a group and its prompt's history -> a non-negative float.

The buffer samples groups with probability proportional to ``priority ** alpha``
(docs/algorithms.md §8). Built in: ``uniform`` and ``dscl`` (:class:`~actorlearner.replay.dscl.DSCLPriority`,
stateful: each resolve from config builds a fresh instance). Register your own with
:func:`actorlearner.register_priority`.
"""

from __future__ import annotations

from actorlearner.core.history import PromptHistory
from actorlearner.core.registry import register_priority
from actorlearner.core.trajectory import Group
from actorlearner.replay.dscl import DSCLPriority


@register_priority("uniform")
def uniform(group: Group, history: PromptHistory) -> float:
    """Every group is equally likely: plain replay."""
    del group, history
    return 1.0


__all__ = ["DSCLPriority", "uniform"]
