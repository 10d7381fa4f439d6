"""The Calculator with tools that wait like remote ones: a long-tailed latency per step.

Real tools (a web search, a code runner, a database) answer in hundreds of milliseconds, a few in
seconds. Each step of this env first waits ``latency_median_s * exp(latency_sigma * z)`` seconds,
``z`` standard normal (a lognormal: median ``latency_median_s``, a long tail), capped at
``latency_cap_s``; then it is the Calculator. The waits come from a generator of the env instance,
not from the task's seed: the episodes of a group play one task, and real tools do not answer them
in the same times. Episodes wait in their env's step thread, not on the runner's event loop; the
rollout-scaling benchmark (``benchmarks/scaling.py``) uses it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from actorlearner.core.knobs import check_non_negative, check_positive
from envs.calculator import Calculator


class SlowToolCalculator(Calculator):
    """Calculator whose every step waits a lognormal time first.

    Args:
        latency_median_s: Median wait per step (seconds).
        latency_sigma: Log-scale spread (0: every step waits the median; 1: p99 about 10x it).
        latency_cap_s: Longest wait (keep it below ``env_runners.step_timeout_s``).
        **kwargs: The Calculator's knobs.
    """

    def __init__(
        self,
        *,
        latency_median_s: float = 0.3,
        latency_sigma: float = 1.0,
        latency_cap_s: float = 5.0,
        **kwargs: Any,
    ) -> None:
        self.latency_median_s = check_non_negative("latency_median_s", latency_median_s)
        self.latency_sigma = check_non_negative("latency_sigma", latency_sigma)
        self.latency_cap_s = check_positive("latency_cap_s", latency_cap_s)
        super().__init__(**kwargs)
        self._waits = np.random.default_rng()  # unseeded: see the module's docstring

    def latency(self) -> float:
        """The next step's wait."""
        z = float(self._waits.standard_normal())
        return min(self.latency_median_s * math.exp(self.latency_sigma * z), self.latency_cap_s)

    def step(self, action: Any) -> Any:
        """Waits :meth:`latency`, then steps the Calculator."""
        time.sleep(self.latency())
        return super().step(action)
