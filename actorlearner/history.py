"""Per-prompt reward history, kept by the replay buffer and handed to priority functions."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class PromptHistory:
    """What the buffer remembers about one prompt across the groups scored for it.

    Attributes:
        prompt_id: The prompt.
        group_means: Mean group reward of the last ``window`` groups (oldest first).
        group_vars: Within-group reward variance of the same groups.
        num_groups: Groups seen for this prompt in total.
        window: How many groups the history keeps.
    """

    prompt_id: str
    window: int = 8
    group_means: deque[float] = field(default_factory=deque)
    group_vars: deque[float] = field(default_factory=deque)
    num_groups: int = 0

    def record(self, rewards: np.ndarray) -> None:
        """Adds one scored group's rewards to the history."""
        self.group_means.append(float(np.mean(rewards)))
        self.group_vars.append(float(np.var(rewards)))
        while len(self.group_means) > self.window:
            self.group_means.popleft()
            self.group_vars.popleft()
        self.num_groups += 1

    @property
    def epoch_variance(self) -> float:
        """Variance of the group means across the window (DSCL's V_epoch); 0 with < 2 groups."""
        return float(np.var(self.group_means)) if len(self.group_means) > 1 else 0.0
