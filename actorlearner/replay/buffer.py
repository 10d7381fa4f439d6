"""The group-level prioritized replay buffer (docs/algorithms.md §8).

Groups enter through the filter chain; each kept group gets a priority from the priority function
(which also sees the prompt's history); a batch of distinct groups is drawn by systematic sampling
proportional to ``priority ** alpha``, and each gets the Horvitz-Thompson importance-sampling weight
``(k / (N pi_i)) ** beta / max`` of its inclusion probability ``pi_i``. Groups leave after
``max_reuse`` samples, when they are more than ``max_staleness`` versions behind the learner, or
when capacity is reached (oldest first).

Groups live in ``capacity`` fixed slots (per-slot numpy arrays, a free list, an insertion-order
queue); each slot is a leaf of a :class:`~actorlearner.replay.sumtree.SumTree`, so a batch is drawn, and
priorities are written, in a few numpy calls whatever the capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from actorlearner.core.history import PromptHistory
from actorlearner.core.metrics import RolloutTally
from actorlearner.core.protocols import PriorityFn, PushReply
from actorlearner.core.trajectory import Group
from actorlearner.replay.filters import FilterChain
from actorlearner.replay.samplelog import SampleLog
from actorlearner.replay.sumtree import SumTree, sample_with_inclusion

_NO_VERSION = sys.maxsize
"""The version lower bound of an empty buffer: nothing in it can be stale."""


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


def importance_weights(inclusion: np.ndarray, size: int, beta: float, draws: int = 1) -> np.ndarray:
    """Horvitz-Thompson importance-sampling weights ``(k / (N pi_i))^beta``, normalized by their maximum.

    A uniform batch of ``k`` out of ``N`` includes each item with probability ``k / N``, so
    ``k / (N pi_i)`` is how much item ``i`` is under-represented; with ``beta = 1`` and before the
    normalization, the weighted batch mean estimates the mean over all ``N`` items without bias.
    With one draw (``k = 1``) ``pi_i`` is the draw probability ``P(i)`` and this is PER's
    ``(N P(i))^-beta``.

    Args:
        inclusion: ``pi_i``, the probability that the batch includes each drawn item (> 0).
        size: N, the number of items the batch was drawn from.
        beta: The IS exponent (annealed to 1).
        draws: k, the number of distinct items drawn.
    """
    # In logs, so that no probability, however small, overflows a weight (one of 0 counts as tiny).
    pi = np.maximum(np.asarray(inclusion, dtype=np.float64), np.finfo(np.float64).tiny)
    if pi.size == 0:
        return pi
    log_w = beta * (math.log(draws / size) - np.log(pi))
    return np.exp(log_w - log_w.max())


class GroupReplayBuffer:
    """Stores groups in ``capacity`` slots and samples them by priority through a :class:`SumTree`.

    Each slot's leaf holds ``priority ** alpha``. A batch is drawn by systematic sampling (groups
    heavier than a draw's share for sure, then one prefix sum per equal segment of the rest, at one
    uniform offset), with no group twice (see
    :func:`~actorlearner.replay.sumtree.sample_with_inclusion`). A group with priority 0 is never
    drawn unless every priority is 0, when the draw is uniform. Each drawn group is weighted by
    :func:`importance_weights` of its exact inclusion probability in such a batch, so a batch that
    holds most of the buffer gets weights near 1. Freed slots go to a free list; when none is free
    the oldest group is evicted.

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
        max_histories: Prompt histories kept; beyond it the least recently recorded prompt's
            history is forgotten (bounds memory and the per-iteration skip-list scan).
        seed: Seeds the sampling generator.
        fanout: Children per node of the sum-tree (a power of two; only speed depends on it).
        sample_log: Where to log some sampled and dropped groups for ``actorlearner view``.
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
        max_histories: int = 100_000,
        seed: int = 0,
        fanout: int = 32,
        sample_log: SampleLog | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.priority_fn = priority_fn
        self.filters = filters
        self.sample_log = sample_log
        # A stateful priority with observe() (DSCL) sees every arriving group, before the filters
        # drop any: mastered and hard groups are exactly what zero_variance drops.
        self._observe = getattr(priority_fn, "observe", None)
        if self._observe is not None and hasattr(priority_fn, "auto_observe"):
            priority_fn.auto_observe = False
        # ... and may reweight a kept group's rewards after its priority (DSCL's reweight_rewards).
        self._reweight = getattr(priority_fn, "reweight_group", None)
        self.capacity = capacity
        self.alpha = alpha
        self.beta0 = beta
        self.beta_anneal_iters = beta_anneal_iters
        self.max_reuse = max_reuse
        self.max_staleness = max_staleness
        self.history_window = history_window
        self.max_histories = max_histories
        self.rng = np.random.default_rng(seed)
        self.histories: OrderedDict[str, PromptHistory] = OrderedDict()  # least recently recorded first
        self.num_samples = 0
        self.counters: dict[str, float] = defaultdict(float)
        self.arrived = RolloutTally()  # rollout metrics of the groups since the last pop_metrics
        self._tree = SumTree(capacity, fanout=fanout)
        self._clear_slots()

    def _clear_slots(self) -> None:
        """Empties every slot: the per-slot arrays, the free list and the insertion order."""
        cap = self.capacity
        self._slots: list[Group | None] = [None] * cap
        self._priority = np.zeros(cap, dtype=np.float64)  # as the priority function returned it
        self._uses = np.zeros(cap, dtype=np.int64)
        self._version = np.zeros(cap, dtype=np.int64)  # the group's min_version
        self._seq = np.full(cap, -1, dtype=np.int64)  # insertion number; -1 marks a free slot
        self._free = list(range(cap - 1, -1, -1))  # a stack: slot 0 is used first
        self._order: deque[tuple[int, int]] = deque()  # (seq, slot), oldest first; may hold freed slots
        self._slot_of: dict[str, int] = {}
        self._next_seq = 0
        self._size = 0
        self._min_version = _NO_VERSION  # a lower bound on the versions held
        self._tree.set_all(np.zeros(cap))

    def __len__(self) -> int:
        return self._size

    @property
    def groups(self) -> list[Group]:
        """The groups held, oldest first."""
        return [self._slots[s] for s in self._live_slots()]  # type: ignore[misc]

    @property
    def beta(self) -> float:
        """The current IS exponent."""
        frac = min(1.0, self.num_samples / self.beta_anneal_iters) if self.beta_anneal_iters > 0 else 1.0
        return self.beta0 + frac * (1.0 - self.beta0)

    def history(self, prompt_id: str) -> PromptHistory:
        """The history of one prompt (created empty on first use), now the most recently used.

        Beyond ``max_histories`` prompts, the least recently used history is forgotten.
        """
        history = self.histories.pop(prompt_id, None)  # re-inserted last: now the most recent
        if history is None:
            history = PromptHistory(prompt_id, window=self.history_window)
        self.histories[prompt_id] = history
        while len(self.histories) > self.max_histories:
            self.histories.popitem(last=False)
        return history

    def add(self, groups: Sequence[Group]) -> dict[str, float]:
        """Records each group in its prompt's history, filters it and stores what is kept.

        Nothing is stored if a priority function fails on any group of the call. Groups are values:
        the filters and the priority function's ``reweight_group`` hook return new groups, and the
        buffer stores what the hook returns, so the rollout metrics (``rollout/*``) count the env's data.

        Returns:
            ``{"added": n, "dropped": m, "size": len(self)}``.

        Raises:
            TypeError: If ``reweight_group`` returned anything but a :class:`Group`.
        """
        self.arrived.add(groups)
        kept: list[Group] = []
        priorities: list[float] = []
        for group in groups:
            history = self.history(group.prompt_id)
            history.record(group.rewards)
            if self._observe is not None:
                self._observe(group)
            group_kept = self.filters(group)
            if group_kept is None and self.sample_log is not None:
                self.sample_log.dropped(self.num_samples, group, self.filters.last_note)
            if group_kept is not None:
                group_kept = group_kept.replace(filter_note=self.filters.last_note)
                priorities.append(compute_priority(self.priority_fn, group_kept, history))
                if self._reweight is not None:  # a new group: the arrivals keep the env's rewards
                    group_kept = self._reweight(group_kept)
                    if not isinstance(group_kept, Group):
                        raise TypeError(f"reweight_group returned {type(group_kept).__name__}, not a Group")
                kept.append(group_kept)
        if kept:
            raw = np.asarray(priorities, dtype=np.float64)
            scaled = self._scale(raw, "a priority function")
            slots = np.array([self._insert(g, p) for g, p in zip(kept, raw.tolist(), strict=True)])
            self._tree.update(slots, scaled)  # a slot reused within this call: its last value wins
        self.counters["groups_added"] += len(kept)
        self.counters["groups_dropped"] += len(groups) - len(kept)
        return {"added": len(kept), "dropped": len(groups) - len(kept), "size": len(self)}

    def prompts_to_skip(self) -> tuple[list[str], float]:
        """Prompts the priority function asks runners to rarely re-issue (DSCL: mastered ones).

        Returns:
            ``(prompt_ids, p_revisit)``: the ids, and the probability of issuing one anyway.
        """
        skip = getattr(self.priority_fn, "skip_prompt", None)
        if skip is None:
            return [], 1.0
        ids = [pid for pid, history in self.histories.items() if skip(history)]
        return ids, float(getattr(self.priority_fn, "p_revisit", 0.0))

    def update_priorities(self, group_ids: Sequence[str], priorities: Sequence[float]) -> int:
        """Re-prioritizes held groups (e.g. from the learner); ids no longer held are ignored.

        Group ids are taken to be unique; if two held groups share one, the newer is updated.

        Returns:
            How many groups were updated.

        Raises:
            PriorityError: If a priority is not a finite float >= 0 (nothing is updated then).
        """
        if len(group_ids) != len(priorities):
            raise ValueError(f"{len(group_ids)} group ids but {len(priorities)} priorities")
        raw = np.asarray(priorities, dtype=np.float64).reshape(-1)
        if raw.size and not (raw.min() >= 0 and np.isfinite(raw.max())):
            raise PriorityError(f"update_priorities got {raw.tolist()!r}; each must be a finite float >= 0")
        last = {gid: j for j, gid in enumerate(group_ids)}  # a repeated id: its last priority wins
        found = [(j, self._slot_of[gid]) for gid, j in last.items() if gid in self._slot_of]
        if not found:
            return 0
        rows, slots = (np.array(x, dtype=np.int64) for x in zip(*found, strict=True))
        scaled = self._scale(raw[rows], "update_priorities")
        self._priority[slots] = raw[rows]
        self._tree.update(slots, scaled)
        return len(found)

    def evict_stale(self, learner_version: int) -> int:
        """Removes groups more than ``max_staleness`` versions behind; returns how many."""
        stale = np.empty(0, dtype=np.int64)
        if learner_version - self._min_version > self.max_staleness:
            live = self._seq >= 0
            stale = np.flatnonzero(live & (learner_version - self._version > self.max_staleness))
            self._remove(stale)
            held = self._version[self._seq >= 0]
            self._min_version = int(held.min()) if held.size else _NO_VERSION
        self.counters["groups_evicted_stale"] += len(stale)
        return len(stale)

    def num_fresh(self, learner_version: int) -> int:
        """How many groups :meth:`sample` at ``learner_version`` could draw.

        Those held that are not too stale, and of those only the ones with a priority above 0,
        unless all of them have priority 0 (then the draw is uniform over them, see :meth:`_draw`).
        """
        if learner_version - self._min_version <= self.max_staleness:
            return self._tree.num_nonzero or self._size  # leaves of free slots are 0
        fresh = (self._seq >= 0) & (learner_version - self._version <= self.max_staleness)
        drawable = int(np.count_nonzero(fresh & (self._tree.leaves > 0.0)))
        return drawable or int(np.count_nonzero(fresh))

    def sample(self, num_groups: int, learner_version: int) -> list[Group]:
        """Draws up to ``num_groups`` distinct groups with probability proportional to ``p^alpha``.

        The draw is :func:`~actorlearner.replay.sumtree.sample_with_inclusion`.

        Each returned group is a copy with ``is_weight`` set to its Horvitz-Thompson weight
        (:func:`importance_weights` of its inclusion probability); groups reach ``max_reuse`` and leave.
        """
        self.evict_stale(learner_version)
        if not self._size or num_groups <= 0:
            return []
        slots, inclusion, population = self._draw(num_groups)
        weights = importance_weights(inclusion, population, self.beta, draws=slots.size)
        batch = [
            self._slots[s].replace(is_weight=w)  # type: ignore[union-attr]
            for s, w in zip(slots.tolist(), weights.tolist(), strict=True)
        ]
        ages = learner_version - self._version[slots]
        if self.sample_log is not None:
            priorities = self._priority[slots]
            self.sample_log.sampled(self.num_samples, learner_version, batch, priorities, inclusion, ages)
        self._uses[slots] += 1
        self._remove(slots[self._uses[slots] >= self.max_reuse])
        self.num_samples += 1
        self.counters["sample_age_sum"] += float(ages.sum())
        self.counters["sample_age_max"] = max(self.counters["sample_age_max"], float(ages.max()))
        self.counters["sampled_groups"] += len(batch)
        self.counters["is_weight_min"] = float(weights.min())
        return batch

    def _draw(self, num_groups: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Distinct slots to sample, the probability that such a batch includes each, and N.

        N is the number of groups the batch was drawn from: those with priority > 0, or every group
        held when all priorities are 0 (a uniform draw, which includes each with probability k / N).
        """
        if self._tree.total > 0:
            slots, inclusion = sample_with_inclusion(self._tree, num_groups, self.rng)
            return slots, inclusion, self._tree.num_nonzero
        live = np.flatnonzero(self._seq >= 0)  # every priority is 0: uniform
        slots = self.rng.choice(live, size=min(num_groups, live.size), replace=False)
        return slots, np.full(slots.size, slots.size / live.size), live.size

    def _scale(self, raw: np.ndarray, source: str) -> np.ndarray:
        """``raw ** alpha``, checked finite so that a bad value never reaches the tree."""
        scaled = raw**self.alpha
        if not np.isfinite(scaled).all():
            raise PriorityError(f"{source} gave priorities whose power alpha={self.alpha} overflows")
        return scaled

    def _insert(self, group: Group, priority: float) -> int:
        """Puts a group in a free slot (evicting the oldest if none is free); returns the slot.

        The caller writes the slot's sum-tree leaf.
        """
        if not self._free:
            self._release([self._oldest_slot()])
            self.counters["groups_evicted_capacity"] += 1
        slot = self._free.pop()
        version = group.min_version
        self._slots[slot] = group
        self._priority[slot] = priority
        self._uses[slot] = 0
        self._version[slot] = version
        self._seq[slot] = self._next_seq
        self._order.append((self._next_seq, slot))
        self._next_seq += 1
        self._slot_of[group.group_id] = slot
        self._size += 1
        self._min_version = min(self._min_version, version)
        if len(self._order) > 2 * self.capacity:
            self._order = deque((int(self._seq[s]), int(s)) for s in self._live_slots())
        return slot

    def _oldest_slot(self) -> int:
        while True:
            seq, slot = self._order.popleft()
            if self._seq[slot] == seq:
                return slot

    def _live_slots(self) -> np.ndarray:
        """Occupied slots, oldest first."""
        live = np.flatnonzero(self._seq >= 0)
        return live[np.argsort(self._seq[live])]

    def _release(self, slots: Sequence[int] | np.ndarray) -> None:
        """Frees slots (not their sum-tree leaves)."""
        for slot in [int(s) for s in slots]:
            group = self._slots[slot]
            assert group is not None
            if self._slot_of.get(group.group_id) == slot:
                del self._slot_of[group.group_id]
            self._slots[slot] = None
            self._free.append(slot)
        self._seq[slots] = -1
        self._priority[slots] = 0.0
        self._size -= len(slots)

    def _remove(self, slots: np.ndarray) -> None:
        """Frees slots and zeroes their sum-tree leaves."""
        if len(slots):
            self._release(slots)
            self._tree.update(slots, np.zeros(len(slots)))

    def pop_metrics(self) -> dict[str, Any]:
        """Rollout metrics of the groups that arrived, buffer and filter counters since the last call."""
        counters, self.counters = dict(self.counters), defaultdict(float)
        age_sum = counters.pop("sample_age_sum", 0.0)
        if counters.get("sampled_groups"):
            counters["sample_age_mean"] = age_sum / counters["sampled_groups"]
        counters["size"] = float(len(self))
        out: dict[str, Any] = {}
        if self._size:
            counters["priority_mean"] = float(self._priority.sum() / self._size)
            live = self._priority[self._live_slots()]
            hist, edges = np.histogram(live, bins=10)
            out["buffer/priority_hist"] = hist.tolist()
            out["buffer/priority_bins"] = edges.tolist()
        out.update({f"buffer/{k}": v for k, v in counters.items()})
        out.update(self.arrived.metrics(prefix="rollout/"))
        out.update({f"filter/{k}": v for k, v in self.filters.pop_counts().items()})
        priority_metrics = getattr(self.priority_fn, "metrics", None)
        if callable(priority_metrics):
            out.update(priority_metrics())
        self.arrived = RolloutTally()
        return out

    def get_state(self) -> dict[str, Any]:
        """Everything needed to resume: the groups and their slots, the free list, histories, RNG.

        Groups are listed oldest first, with their priorities, reuse counts and slots.
        """
        live = self._live_slots()
        return {
            "capacity": self.capacity,
            "alpha": self.alpha,
            "groups": [self._slots[s] for s in live],
            "priorities": self._priority[live].tolist(),
            "scaled": self._tree[live].tolist(),
            "uses": self._uses[live].tolist(),
            "slots": live.tolist(),
            "free": list(self._free),
            "histories": OrderedDict(self.histories),
            "num_samples": self.num_samples,
            "rng": self.rng.bit_generator.state,
            "priority_fn": self.priority_fn.get_state() if hasattr(self.priority_fn, "get_state") else None,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`get_state` returned.

        With the same capacity the slot layout is restored too, so the samples that follow are the
        ones the saved buffer would have drawn. With another capacity (or a state without slots) the
        newest groups that fit are laid out afresh.
        """
        if state.get("priority_fn") is not None and hasattr(self.priority_fn, "set_state"):
            self.priority_fn.set_state(state["priority_fn"])
        groups, raw, uses = list(state["groups"]), list(state["priorities"]), list(state["uses"])
        n = min(len(groups), self.capacity)
        same_layout = state.get("capacity") == self.capacity and "slots" in state
        if same_layout:
            slots, free = list(state["slots"]), list(state["free"])
        else:
            groups, raw, uses = groups[len(groups) - n :], raw[len(raw) - n :], uses[len(uses) - n :]
            slots, free = list(range(n)), list(range(self.capacity - 1, n - 1, -1))
        self._clear_slots()
        for slot, group in zip(slots, groups, strict=True):
            self._slots[slot] = group
            self._slot_of[group.group_id] = slot
        idx = np.asarray(slots, dtype=np.int64)
        versions = np.array([g.min_version for g in groups], dtype=np.int64)
        self._priority[idx] = raw
        self._uses[idx] = uses
        self._version[idx] = versions
        self._seq[idx] = np.arange(n)
        self._free = free
        self._order = deque(enumerate(slots))
        self._next_seq = self._size = n
        self._min_version = int(versions.min()) if n else _NO_VERSION
        reuse_scaled = same_layout and state.get("alpha") == self.alpha and "scaled" in state
        leaves = np.zeros(self.capacity)
        leaves[idx] = state["scaled"] if reuse_scaled else np.asarray(raw, dtype=np.float64) ** self.alpha
        self._tree.set_all(leaves)
        self.histories = OrderedDict(state["histories"])
        self.num_samples = int(state["num_samples"])
        self.rng.bit_generator.state = state["rng"]


class BufferActor(GroupReplayBuffer):
    """The buffer as an async actor: runners :meth:`push`, the learner side awaits :meth:`sample_wait`.

    It is also where control meets data: the learner's newest weights (published once per version)
    and the priority function's skip list go to each runner in the reply to its push, and a push
    while ``max_ready`` fresh groups are held is answered only when there is room (or after
    ``hold_s``): back-pressure without polling.

    Args:
        *args: As :class:`GroupReplayBuffer`.
        hold_s: Longest a push waits for room before replying ``room=False``.
        **kwargs: As :class:`GroupReplayBuffer`.
    """

    def __init__(self, *args: Any, hold_s: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hold_s = hold_s
        self._changed: asyncio.Condition | None = None
        self.learner_version = 0
        self._weights: tuple[int, list[Any]] | None = None
        self._skip: tuple[list[str], float] = ([], 1.0)
        self._skip_version = 0
        self._runner_stats: dict[str, float] = defaultdict(float)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        async with self._condition():
            self._condition().notify_all()

    async def push(
        self,
        groups: Sequence[Group],
        stats: Mapping[str, float] | None = None,
        max_ready: int | None = None,
        weights_version: int = -1,
        skip_version: int = -1,
    ) -> PushReply:
        """Adds a runner's groups and counters; replies with room, newest weights and skip list.

        Args:
            groups: Finished groups (may be empty: a push that only asks for room and news).
            stats: The runner's counters since its last push (summed into ``rollout/*``).
            max_ready: The runner's cap on fresh groups held; the reply waits up to ``hold_s``
                for room while it is reached.
            weights_version: The newest version the runner has; newer weights come in the reply.
            skip_version: The version of the skip list the runner has.
        """
        added = int(self.add(groups)["added"]) if groups else 0
        for key, value in (stats or {}).items():
            self._runner_stats[key] += value
        self.evict_stale(self.learner_version)
        if groups:
            await self._notify()
        room = await self._wait_for_room(max_ready)
        reply = self._reply(room, weights_version, skip_version)
        reply.added = added
        return reply

    async def _wait_for_room(self, max_ready: int | None) -> bool:
        if max_ready is None or len(self) < max_ready:
            return True
        cond = self._condition()
        async with cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cond.wait_for(lambda: len(self) < max_ready), self.hold_s)
        return len(self) < max_ready

    def _reply(self, room: bool, weights_version: int, skip_version: int) -> PushReply:
        reply = PushReply(size=len(self), room=room, skip_version=self._skip_version)
        if self._weights is not None:
            reply.weights_version = self._weights[0]
            if self._weights[0] > weights_version:
                reply.weights = self._weights[1]
        if skip_version != self._skip_version:
            reply.skip, reply.p_revisit = list(self._skip[0]), self._skip[1]
        return reply

    async def sample_wait(
        self, num_groups: int, learner_version: int, timeout_s: float = 600.0
    ) -> list[Group]:
        """Waits until ``num_groups`` groups that can be drawn are held (or the timeout), then samples.

        Only fresh groups count, and of those only the ones with a priority above 0 unless all are 0
        (:meth:`num_fresh`): priority-0 groups are never drawn, so they must not end the wait.
        """
        self.learner_version = max(self.learner_version, learner_version)
        self.evict_stale(learner_version)
        start = time.perf_counter()
        cond = self._condition()
        async with cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    cond.wait_for(lambda: self.num_fresh(learner_version) >= num_groups), timeout_s
                )
        self.counters["wait_s"] += time.perf_counter() - start
        batch = self.sample(num_groups, learner_version)
        await self._notify()  # room for the runners waiting in push
        return batch

    async def publish_weights(self, version: int, weights: list[Any], metrics: bool = True) -> dict[str, Any]:
        """Records the learner's newest weights (``[ref]``) and refreshes the skip list.

        Returns:
            The metrics since the last call (:meth:`pop_metrics`), so that one call per iteration
            carries both; ``{}`` (nothing popped) with ``metrics=False``.
        """
        self.learner_version = max(self.learner_version, version)
        self._weights = (version, weights)
        skip = self.prompts_to_skip()
        if skip != self._skip:
            self._skip, self._skip_version = skip, self._skip_version + 1
        self.evict_stale(self.learner_version)
        await self._notify()
        return self.pop_metrics() if metrics else {}

    def get_state(self) -> dict[str, Any]:
        """As :meth:`GroupReplayBuffer.get_state`, plus the learner version the buffer last saw."""
        return {**super().get_state(), "learner_version": self.learner_version}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`get_state`; the learner version is set outright (a restore may go back)."""
        super().set_state(state)
        self.learner_version = int(state.get("learner_version", 0))
        self._weights = None

    def pop_metrics(self) -> dict[str, Any]:
        """As :meth:`GroupReplayBuffer.pop_metrics`, plus the runners' summed counters."""
        out = super().pop_metrics()
        stats, self._runner_stats = dict(self._runner_stats), defaultdict(float)
        out.update(rollout_counters(stats))
        return out


def rollout_counters(stats: Mapping[str, float]) -> dict[str, float]:
    """The runners' summed engine counters as ``rollout/*`` metrics, with the derived rates.

    Args:
        stats: Sums of ``tokens``, ``seconds`` (in ``generate``), ``batches``, ``requests``,
            ``prefill_tokens``, ``reused_tokens``, ``group_errors`` and ``prompts_skipped`` over
            every push since the last call.
    """
    keys: tuple[str, ...] = ("tokens", "seconds", "batches", "requests", "prefill_tokens", "reused_tokens")
    keys += ("group_errors", "prompts_skipped")
    sums = {**dict.fromkeys(keys, 0.0), **stats}
    out = {f"rollout/{k}": float(v) for k, v in sums.items()}
    batches, seconds = sums["batches"], sums["seconds"]
    out["rollout/mean_batch_size"] = sums["requests"] / batches if batches else 0.0
    out["rollout/tokens_per_s"] = sums["tokens"] / seconds if seconds > 0 else 0.0
    return out
