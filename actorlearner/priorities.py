"""Priority functions: a group and its prompt's history -> a non-negative float.

The buffer samples groups with probability proportional to ``priority ** alpha``
(ALGORITHMS.md section 8). Register your own with :func:`actorlearner.register_priority`.
"""

from __future__ import annotations

from actorlearner.history import PromptHistory
from actorlearner.registry import register_priority
from actorlearner.trajectory import Group


@register_priority("uniform")
def uniform(group: Group, history: PromptHistory) -> float:
    """Every group is equally likely: plain replay."""
    del group, history
    return 1.0
