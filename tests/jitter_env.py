"""A Calculator whose resets and steps take a random 0-20 ms, drawn from OS entropy (not the seed).

Episodes then come back from their env steps in a different order in every run: what a
reproducible schedule must not depend on (tests/test_deterministic.py).
"""

from __future__ import annotations

import random
import time
from typing import Any

from envs.calculator import Calculator

_JITTER = random.SystemRandom()


class JitterCalculator(Calculator):
    """Calculator with random delays before each reset and step."""

    def reset(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(_JITTER.uniform(0.0, 0.02))
        return super().reset(*args, **kwargs)

    def step(self, action: Any) -> Any:
        time.sleep(_JITTER.uniform(0.0, 0.02))
        return super().step(action)
