"""The group-level prioritized replay buffer (ALGORITHMS.md section 8).

Groups enter through the filter chain; each kept group gets a priority from the priority function
(which also sees the prompt's history); sampling is proportional to ``priority ** alpha`` with
importance-sampling weights ``(N P(i)) ** -beta / max``. Groups leave after ``max_reuse`` samples,
when they are more than ``max_staleness`` versions behind the learner, or when capacity is reached
(oldest first).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from actorlearner.filters import FilterChain
from actorlearner.history import PromptHistory
from actorlearner.interfaces import PriorityFn
from actorlearner.metrics import group_metrics
from actorlearner.trajectory import Group


class PriorityError(ValueError):
    """A priority function raised or returned a value that is not a finite float >= 0."""


def _fn_name(fn: Any) -> str:
    inner = getattr(fn, "func", fn)
    return f"{getattr(inner, '__module__', '?')}.{getattr(inner, '__qualname__', repr(inner))}"


def compute_priority(fn: PriorityFn, group: Group, history: PromptHistory) -> float:
    """Calls a priority function and checks its result.

    Raises:
        PriorityError: Naming the function, if it raised or returned NaN, inf or a negative value.
    """
    try:
        value = float(fn(group, history))
    except Exception as err:
        raise PriorityError(f"priority function {_fn_name(fn)} raised {err!r}") from err
    if not math.isfinite(value) or value < 0:
        raise PriorityError(
            f"priority function {_fn_name(fn)} returned {value!r}; it must be a finite float >= 0"
        )
    return value


def importance_weights(probs: np.ndarray, size: int, beta: float) -> np.ndarray:
    """PER importance-sampling weights ``(N P(i))^-beta``, normalized by their maximum.

    Args:
        probs: Sampling probabilities of the drawn items.
        size: N, the number of items the draw was over.
        beta: The IS exponent (annealed to 1).
    """
    weights = (size * np.asarray(probs, dtype=np.float64)) ** (-beta)
    return weights / weights.max() if weights.size else weights


class GroupReplayBuffer:
    """Stores groups and samples them by priority.

    Args:
        priority_fn: ``fn(group, history) -> float >= 0``.
        filters: The filter chain groups pass through on insertion.
        capacity: Maximum number of groups held.
        alpha: Priority exponent.
        beta: Initial IS exponent; annealed linearly to 1 over ``beta_anneal_iters`` samples.
        beta_anneal_iters: Number of ``sample`` calls over which beta reaches 1.
        max_reuse: Times a group may be sampled before it leaves.
        max_staleness: Groups more than this many versions behind the learner leave.
        history_window: Groups of per-prompt history kept.
        seed: Seeds the sampling generator.
    """

    def __init__(
        self,
        priority_fn: PriorityFn,
        filters: FilterChain,
        capacity: int = 1024,
        alpha: float = 0.6,
        beta: float = 0.4,
        beta_anneal_iters: int = 200,
        max_reuse: int = 1,
        max_staleness: int = 4,
        history_window: int = 8,
        seed: int = 0,
    ) -> None:
        self.priority_fn = priority_fn
        self.filters = filters
        self.capacity = capacity
        self.alpha = alpha
        self.beta0 = beta
        self.beta_anneal_iters = beta_anneal_iters
        self.max_reuse = max_reuse
        self.max_staleness = max_staleness
        self.history_window = history_window
        self.rng = np.random.default_rng(seed)
        self.groups: list[Group] = []
        self.priorities: list[float] = []
        self.uses: list[int] = []
        self.histories: dict[str, PromptHistory] = {}
        self.num_samples = 0
        self.counters: dict[str, float] = defaultdict(float)
        self.arrived: list[Group] = []

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def beta(self) -> float:
        """The current IS exponent."""
        frac = min(1.0, self.num_samples / self.beta_anneal_iters)
        return self.beta0 + frac * (1.0 - self.beta0)

    def history(self, prompt_id: str) -> PromptHistory:
        """The history of one prompt (created empty on first use)."""
        if prompt_id not in self.histories:
            self.histories[prompt_id] = PromptHistory(prompt_id, window=self.history_window)
        return self.histories[prompt_id]

    def add(self, groups: Sequence[Group]) -> dict[str, float]:
        """Records each group in its prompt's history, filters it and stores what is kept.

        Returns:
            ``{"added": n, "dropped": m, "size": len(self)}``.
        """
        added = 0
        self.arrived.extend(groups)
        for group in groups:
            history = self.history(group.prompt_id)
            history.record(group.rewards)
            kept = self.filters(group)
            if kept is None:
                continue
            priority = compute_priority(self.priority_fn, kept, history)
            self.groups.append(kept)
            self.priorities.append(priority)
            self.uses.append(0)
            added += 1
        self._evict_to_capacity()
        self.counters["groups_added"] += added
        self.counters["groups_dropped"] += len(groups) - added
        return {"added": added, "dropped": len(groups) - added, "size": len(self)}

    def evict_stale(self, learner_version: int) -> int:
        """Removes groups more than ``max_staleness`` versions behind; returns how many."""
        stale = [i for i, g in enumerate(self.groups) if learner_version - g.min_version > self.max_staleness]
        self._remove(stale)
        self.counters["groups_evicted_stale"] += len(stale)
        return len(stale)

    def num_fresh(self, learner_version: int) -> int:
        """Groups held that are not too stale for a learner at ``learner_version``."""
        return sum(1 for g in self.groups if learner_version - g.min_version <= self.max_staleness)

    def sample(self, num_groups: int, learner_version: int) -> list[Group]:
        """Draws up to ``num_groups`` distinct groups with probability ``p^alpha / sum p^alpha``.

        Each returned group is a copy with ``is_weight`` set; groups reach ``max_reuse`` and leave.
        """
        self.evict_stale(learner_version)
        if not self.groups:
            return []
        scaled = np.asarray(self.priorities, dtype=np.float64) ** self.alpha
        total = scaled.sum()
        probs = scaled / total if total > 0 else np.full(len(scaled), 1.0 / len(scaled))
        k = min(num_groups, int(np.count_nonzero(probs)) or len(probs))
        idx = self.rng.choice(len(self.groups), size=k, replace=False, p=probs if total > 0 else None)
        weights = importance_weights(probs[idx], len(self.groups), self.beta)
        batch = [self.groups[i].replace(is_weight=float(w)) for i, w in zip(idx, weights, strict=True)]
        for i in idx:
            self.uses[i] += 1
        self._remove([i for i in idx if self.uses[i] >= self.max_reuse])
        self.num_samples += 1
        ages = [learner_version - g.min_version for g in batch]
        self.counters["sample_age_sum"] += float(sum(ages))
        self.counters["sample_age_max"] = max(self.counters["sample_age_max"], float(max(ages, default=0)))
        self.counters["sampled_groups"] += len(batch)
        self.counters["is_weight_min"] = float(weights.min()) if weights.size else 1.0
        return batch

    def _remove(self, indices: Sequence[int]) -> None:
        for i in sorted(set(int(i) for i in indices), reverse=True):
            del self.groups[i], self.priorities[i], self.uses[i]

    def _evict_to_capacity(self) -> None:
        excess = len(self.groups) - self.capacity
        if excess > 0:
            self._remove(range(excess))
            self.counters["groups_evicted_capacity"] += excess

    def pop_metrics(self) -> dict[str, float]:
        """Rollout metrics of the groups that arrived, buffer and filter counters since the last call."""
        counters, self.counters = dict(self.counters), defaultdict(float)
        age_sum = counters.pop("sample_age_sum", 0.0)
        if counters.get("sampled_groups"):
            counters["sample_age_mean"] = age_sum / counters["sampled_groups"]
        counters["size"] = float(len(self))
        if self.priorities:
            counters["priority_mean"] = float(np.mean(self.priorities))
        out = {f"buffer/{k}": v for k, v in counters.items()}
        out.update(group_metrics(self.arrived, prefix="rollout/"))
        out.update({f"filter/{k}": v for k, v in self.filters.pop_counts().items()})
        self.arrived = []
        return out

    def get_state(self) -> dict[str, Any]:
        """Everything needed to resume: groups, priorities, reuse counts, histories, RNG."""
        return {
            "groups": list(self.groups),
            "priorities": list(self.priorities),
            "uses": list(self.uses),
            "histories": dict(self.histories),
            "num_samples": self.num_samples,
            "rng": self.rng.bit_generator.state,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`get_state` returned."""
        self.groups = list(state["groups"])
        self.priorities = list(state["priorities"])
        self.uses = list(state["uses"])
        self.histories = dict(state["histories"])
        self.num_samples = int(state["num_samples"])
        self.rng.bit_generator.state = state["rng"]


class BufferActor(GroupReplayBuffer):
    """The buffer as a Ray async actor: runners ``add``; the learner side awaits ``sample_wait``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._changed: asyncio.Condition | None = None
        self.learner_version = 0

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def add_groups(self, groups: Sequence[Group]) -> dict[str, float]:
        """Adds groups, drops what is stale for the learner, and wakes any waiting sampler.

        Returns:
            ``added``, ``dropped`` and ``size`` (groups held, none of them stale): runners pause
            on ``size``, so stale groups can never hold them back while the learner waits.
        """
        result = self.add(groups)
        self.evict_stale(self.learner_version)
        result["size"] = len(self)
        async with self._condition():
            self._condition().notify_all()
        return result

    async def sample_wait(
        self, num_groups: int, learner_version: int, timeout_s: float = 600.0
    ) -> list[Group]:
        """Waits until ``num_groups`` fresh groups are held (or the timeout), then samples."""
        self.learner_version = max(self.learner_version, learner_version)
        self.evict_stale(learner_version)
        cond = self._condition()
        async with cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    cond.wait_for(lambda: self.num_fresh(learner_version) >= num_groups), timeout_s
                )
        return self.sample(num_groups, learner_version)

    async def size(self) -> int:
        """Number of groups held that are not stale for the learner."""
        self.evict_stale(self.learner_version)
        return len(self.groups)

    async def metrics(self) -> dict[str, float]:
        """Counters since the last call."""
        return self.pop_metrics()

    async def state(self) -> dict[str, Any]:
        """The buffer's state, for checkpoints."""
        return self.get_state()

    async def load_state(self, state: dict[str, Any]) -> None:
        """Restores a checkpointed state."""
        self.set_state(state)
