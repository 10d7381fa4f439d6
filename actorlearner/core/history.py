"""Per-prompt reward history, kept by the replay buffer and handed to priority functions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class PromptHistory:
    """What the buffer remembers about one prompt across the groups scored for it.

    The buffer records every arriving group here *before* its filters run and before the priority
    function is called, so a priority function sees the current group as the newest entry. In
    DSCL's notation (docs/algorithms.md §7a) for prompt i after its j-th group: ``last_mean`` is
    ``M_ij``, ``last_var`` is ``V_sample,ij`` and ``epoch_variance`` is ``V_epoch,i`` over the window.

    Attributes:
        prompt_id: The prompt.
        group_means: Mean group reward of the last ``window`` groups (oldest first).
        group_vars: Within-group reward variance of the same groups.
        num_groups: Groups seen for this prompt in total.
        window: How many groups the history keeps (DSCL's W, 8 by default: our choice).

    Compact on purpose (slots, two short lists): the buffer keeps up to ``replay.max_histories``
    of them, one per prompt seen, about 0.5 KB each (a deque-based version took 1.8 KB and was
    most of the buffer's memory growth in a long run).
    """

    prompt_id: str
    window: int = 8
    group_means: list[float] = field(default_factory=list)
    group_vars: list[float] = field(default_factory=list)
    num_groups: int = 0

    def __setstate__(self, state: Any) -> None:
        """Unpickles this layout or the older one (a ``__dict__`` holding deques)."""
        if isinstance(state, tuple):  # (dict state, slot state) as pickle gives it for slots
            state = {**(state[0] or {}), **(state[1] or {})}
        for name in ("prompt_id", "window", "group_means", "group_vars", "num_groups"):
            value = state[name]
            setattr(self, name, list(value) if name.startswith("group_") else value)

    def record(self, rewards: np.ndarray) -> None:
        """Adds one scored group's rewards to the history."""
        self.group_means.append(float(np.mean(rewards)))
        self.group_vars.append(float(np.var(rewards)))
        if len(self.group_means) > self.window:
            del self.group_means[: -self.window], self.group_vars[: -self.window]
        self.num_groups += 1

    @property
    def last_mean(self) -> float | None:
        """Mean reward of the newest group (``M_ij``), or None before any group."""
        return self.group_means[-1] if self.group_means else None

    @property
    def last_var(self) -> float | None:
        """Within-group reward variance of the newest group (``V_sample,ij``), or None."""
        return self.group_vars[-1] if self.group_vars else None

    @property
    def epoch_variance(self) -> float:
        """Variance of the group means across the window (DSCL's V_epoch); 0 with < 2 groups."""
        return self.epoch_variance_over(None)

    def epoch_variance_over(self, window: int | None) -> float:
        """Variance of the newest ``window`` group means (all kept ones when None); 0 with < 2.

        Args:
            window: How many of the newest group means to use; at most ``self.window`` are kept.
        """
        means = list(self.group_means)
        if window is not None:
            means = means[-window:] if window > 0 else []
        return float(np.var(means)) if len(means) > 1 else 0.0
