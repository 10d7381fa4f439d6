import asyncio
import math
import pickle
import tracemalloc
from collections import deque

import numpy as np
import pytest

from actorlearner.core.history import PromptHistory
from actorlearner.replay.buffer import GroupReplayBuffer, PriorityError, importance_weights
from actorlearner.replay.filters import FilterChain, zero_variance
from actorlearner.replay.priorities import uniform
from tests.conftest import make_group


def _buffer(priority_fn=uniform, filters=(), **kwargs) -> GroupReplayBuffer:
    return GroupReplayBuffer(priority_fn, FilterChain(list(filters)), **kwargs)


def test_zero_variance_filter_drops_and_counts():
    buf = _buffer(filters=[("zero_variance", zero_variance)])
    result = buf.add([make_group([1, 1, 1, 1], group_id="a"), make_group([0, 1, 0, 1], group_id="b")])
    assert result == {"added": 1, "dropped": 1, "size": 1}
    metrics = buf.pop_metrics()
    assert metrics["filter/zero_variance/groups_dropped"] == 1
    assert metrics["filter/zero_variance/trajectories_dropped"] == 4
    assert metrics["filter/zero_variance/tokens_dropped"] == 16  # 4 sampled tokens each
    assert metrics["rollout/groups"] == 2  # rollout stats see groups before the filters


def test_dropped_groups_still_enter_prompt_history():
    buf = _buffer(filters=[("zero_variance", zero_variance)])
    buf.add([make_group([1, 1], prompt_id="q")])
    assert buf.history("q").num_groups == 1
    assert list(buf.history("q").group_means) == [1.0]


def test_max_reuse_removes_groups_after_sampling():
    buf = _buffer(max_reuse=2)
    buf.add([make_group([0, 1], group_id=str(i)) for i in range(3)])
    assert len(buf.sample(3, 0)) == 3
    assert len(buf) == 3
    buf.sample(3, 0)
    assert len(buf) == 0


def test_stale_groups_are_evicted():
    buf = _buffer(max_staleness=2)
    buf.add([make_group([0, 1], version=0, group_id="old"), make_group([0, 1], version=5, group_id="new")])
    batch = buf.sample(2, learner_version=6)
    assert [g.group_id for g in batch] == ["new"]


def test_capacity_evicts_oldest():
    buf = _buffer(capacity=2)
    buf.add([make_group([0, 1], group_id=str(i)) for i in range(3)])
    assert [g.group_id for g in buf.groups] == ["1", "2"]


def test_priorities_drive_sampling_frequency():
    def by_prompt(group, history):
        return 9.0 if group.prompt_id == "hot" else 1.0

    buf = _buffer(priority_fn=by_prompt, alpha=1.0, max_reuse=10**9)
    buf.add(
        [
            make_group([0, 1], prompt_id="hot", group_id="h"),
            make_group([0, 1], prompt_id="cold", group_id="c"),
        ]
    )
    hits = sum(buf.sample(1, 0)[0].group_id == "h" for _ in range(2000))
    assert 0.85 < hits / 2000 < 0.95


def test_importance_weights_hand_computed():
    w = importance_weights(np.array([0.5, 0.25]), size=4, beta=1.0)
    # one draw: (4*0.5)^-1 = 0.5, (4*0.25)^-1 = 1 -> normalized by max
    np.testing.assert_allclose(w, [0.5, 1.0])
    # three draws out of four: k / (N pi) = 3/4 / pi
    w = importance_weights(np.array([1.0, 0.75, 0.5]), size=4, beta=0.5, draws=3)
    np.testing.assert_allclose(w, np.sqrt([0.75 / 1.5, 1.0 / 1.5, 1.0]))
    np.testing.assert_allclose(importance_weights(np.full(5, 5 / 8), size=8, beta=1.0, draws=5), np.ones(5))
    # computed in logs: a tiny (or 0) probability gets the largest weight, the others stay finite
    w = importance_weights(np.array([0.0, 1e-300, 1.0]), size=3, beta=1.0)
    assert w[0] == 1.0 and 0 < w[2] < w[1] < 1e-7


def test_sampled_groups_carry_is_weights():
    # Priorities 1, 1, 2 and two draws: the strata are [0, 2) and [2, 4), so c is always in and a, b
    # each with probability 1/2; k / (N pi) = 4/3, 4/3, 2/3, normalized by the batch max.
    buf = _buffer(
        priority_fn=lambda g, h: 2.0 if g.group_id == "c" else 1.0, alpha=1.0, beta=1.0, max_reuse=99
    )
    buf.add([make_group([0, 1], group_id=i) for i in "abc"])
    weights = {g.group_id: g.is_weight for g in buf.sample(2, 0)}
    assert len(weights) == 2 and weights.pop("c") == pytest.approx(0.5)
    assert list(weights.values()) == [pytest.approx(1.0)]
    # A batch of every group includes each for sure: nothing to correct (one-draw weights gave 1/2).
    assert [g.is_weight for g in buf.sample(3, 0)] == [pytest.approx(1.0)] * 3


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_priority_values_raise_naming_the_function(bad):
    def my_priority(group, history):
        return bad

    buf = _buffer(priority_fn=my_priority)
    with pytest.raises(PriorityError, match="my_priority"):
        buf.add([make_group([0, 1])])
    assert len(buf) == 0


def test_raising_priority_function_is_named():
    def broken(group, history):
        raise KeyError("x")

    with pytest.raises(PriorityError, match="broken raised KeyError"):
        _buffer(priority_fn=broken).add([make_group([0, 1])])


def test_state_round_trip_restores_sampling():
    a = _buffer(max_reuse=5, seed=3)
    a.add([make_group([0, 1], group_id=str(i), prompt_id=str(i % 2)) for i in range(6)])
    a.sample(2, 0)
    b = _buffer(max_reuse=5, seed=99)
    b.set_state(a.get_state())
    assert [g.group_id for g in a.sample(3, 0)] == [g.group_id for g in b.sample(3, 0)]
    assert b.history("1").num_groups == 3


def test_buffer_actor_evicts_stale_groups_so_runners_are_not_held_back():
    from actorlearner.replay.buffer import BufferActor

    async def main():
        buf = BufferActor(uniform, FilterChain([]), max_staleness=2)
        await buf.push([make_group([0, 1], version=0, group_id=str(i)) for i in range(4)])
        # The learner moves on: waiting for fresh groups evicts the stale ones at once...
        assert await buf.sample_wait(2, learner_version=5, timeout_s=0.05) == []
        # ...so the size the runners throttle on counts only fresh groups.
        reply = await buf.push([make_group([0, 1], version=5, group_id="new")])
        assert reply.size == 1 and len(buf) == 1

    asyncio.run(main())


def test_sample_wait_wakes_when_enough_groups_arrive():
    from actorlearner.replay.buffer import BufferActor

    async def main():
        buf = BufferActor(uniform, FilterChain([]))
        waiter = asyncio.create_task(buf.sample_wait(2, learner_version=0, timeout_s=5))
        await asyncio.sleep(0.01)
        await buf.push([make_group([0, 1], group_id="a")])
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await buf.push([make_group([0, 1], group_id="b")])
        batch = await asyncio.wait_for(waiter, 1)
        assert sorted(g.group_id for g in batch) == ["a", "b"]

    asyncio.run(main())


def test_a_raising_filter_is_named():
    from actorlearner.replay.filters import FilterError

    def picky(group):
        raise ValueError("nope")

    with pytest.raises(FilterError, match="filter 'picky' raised ValueError"):
        _buffer(filters=[("picky", picky)]).add([make_group([0, 1])])


def _ids(batch):
    return [g.group_id for g in batch]


def test_batches_hold_distinct_groups_even_when_one_priority_dominates():
    buf = _buffer(priority_fn=lambda g, h: 1000.0 if g.group_id == "0" else 1.0, alpha=1.0, max_reuse=10**9)
    buf.add([make_group([0, 1], group_id=str(i)) for i in range(8)])
    for _ in range(50):
        ids = _ids(buf.sample(5, 0))
        assert len(ids) == len(set(ids)) == 5
        assert "0" in ids
    assert len(buf._tree.leaves) == 1024 and buf._tree.total == pytest.approx(1007.0)  # tree restored


def test_zero_priority_groups_are_never_drawn_unless_all_are_zero():
    buf = _buffer(priority_fn=lambda g, h: 0.0 if g.group_id.startswith("z") else 1.0, max_reuse=10**9)
    buf.add([make_group([0, 1], group_id=i) for i in ["z1", "z2", "a", "b"]])
    for _ in range(20):
        assert sorted(_ids(buf.sample(4, 0))) == ["a", "b"]
    zeros = _buffer(priority_fn=lambda g, h: 0.0, max_reuse=10**9)
    zeros.add([make_group([0, 1], group_id=str(i)) for i in range(3)])
    batch = zeros.sample(2, 0)
    assert len(set(_ids(batch))) == 2 and all(g.is_weight == 1.0 for g in batch)


def test_update_priorities_steers_sampling_and_ignores_unknown_ids():
    buf = _buffer(alpha=1.0, max_reuse=10**9)
    buf.add([make_group([0, 1], group_id=i) for i in ["a", "b", "c"]])
    assert buf.update_priorities(["a", "b", "gone"], [0.0, 0.0, 5.0]) == 2
    assert all(_ids(buf.sample(1, 0)) == ["c"] for _ in range(20))
    with pytest.raises(PriorityError, match="finite"):
        buf.update_priorities(["a", "c"], [1.0, math.nan])
    assert _ids(buf.sample(3, 0)) == ["c"]  # the bad call changed nothing
    with pytest.raises(ValueError):
        buf.update_priorities(["a"], [1.0, 2.0])


def test_is_weights_use_inclusion_probabilities_and_beta_anneals_to_one():
    buf = _buffer(
        priority_fn=lambda g, h: float(g.prompt_id), alpha=1.0, beta=0.5, beta_anneal_iters=4, max_reuse=99
    )
    buf.add([make_group([0, 1], prompt_id=str(p), group_id=i) for p, i in [(1, "a"), (1, "b"), (2, "c")]])
    weights = {g.group_id: g.is_weight for g in buf.sample(2, 0)}
    # pi = 1/2, 1/2, 1; k = 2, N = 3; beta = 0.5 -> (4/3)^0.5 is the max, (2/3)^0.5 / (4/3)^0.5 = 2^-0.5
    assert len(weights) == 2 and weights.pop("c") == pytest.approx(2**-0.5)
    assert list(weights.values()) == [pytest.approx(1.0)]
    for _ in range(5):
        buf.sample(1, 0)
    assert buf.beta == 1.0


def test_capacity_eviction_is_oldest_first_after_holes_and_counts():
    buf = _buffer(capacity=4, max_reuse=1, priority_fn=lambda g, h: 1.0 if g.group_id in "ab" else 0.0)
    buf.add([make_group([0, 1], group_id=i) for i in "abcd"])
    assert sorted(_ids(buf.sample(2, 0))) == ["a", "b"]  # consumed: two free slots
    buf.add([make_group([0, 1], group_id=i) for i in "efg"])  # fills the holes, then evicts "c"
    assert _ids(buf.groups) == ["d", "e", "f", "g"]
    metrics = buf.pop_metrics()
    assert metrics["buffer/groups_evicted_capacity"] == 1
    assert metrics["buffer/groups_added"] == 7 and metrics["buffer/size"] == 4
    buf.add([make_group([0, 1], group_id=str(i)) for i in range(9)])  # more than capacity at once
    assert _ids(buf.groups) == ["5", "6", "7", "8"]
    assert len(buf) == 4 and buf._tree.num_nonzero == 0


def test_staleness_eviction_and_num_fresh():
    buf = _buffer(max_staleness=2, max_reuse=10**9)
    buf.add([make_group([0, 1], version=v, group_id=str(v)) for v in [0, 3, 5, 1]])
    assert buf.num_fresh(3) == 3 and buf.num_fresh(5) == 2 and len(buf) == 4
    assert buf.evict_stale(2) == 0
    assert buf.evict_stale(5) == 2
    assert sorted(_ids(buf.groups)) == ["3", "5"]
    assert buf.num_fresh(5) == 2 and buf.num_fresh(7) == 1
    assert sorted(_ids(buf.sample(5, 7))) == ["5"]


def test_metrics_keys_are_the_documented_ones():
    buf = _buffer(filters=[("zero_variance", zero_variance)], capacity=1, max_staleness=0)
    buf.add([make_group([0, 1], group_id=str(i)) for i in range(2)] + [make_group([1, 1])])
    buf.sample(1, 0)
    buf.add([make_group([0, 1], group_id="x", version=0)])
    buf.evict_stale(3)
    buf.add([make_group([0, 1], group_id="y", version=3)])
    keys = {k for k in buf.pop_metrics() if k.startswith("buffer/")}
    assert keys == {
        f"buffer/{k}"
        for k in [
            "groups_added",
            "groups_dropped",
            "groups_evicted_stale",
            "groups_evicted_capacity",
            "sampled_groups",
            "sample_age_mean",
            "sample_age_max",
            "is_weight_min",
            "size",
            "priority_mean",
            "priority_hist",
            "priority_bins",
        ]
    }


def test_state_round_trip_after_evictions_reproduces_every_later_sample():
    def prio(group, history):
        return 1.0 + int(group.group_id) % 5

    def run(buf, start):
        out = []
        for step in range(start, start + 6):
            buf.add([make_group([0, 1], group_id=str(10 * step + j), version=step) for j in range(5)])
            out.append(_ids(buf.sample(4, step)))
            buf.update_priorities(out[-1][:2], [0.5, 3.0])
        return out

    kwargs = dict(priority_fn=prio, capacity=16, max_reuse=2, max_staleness=3, seed=5)
    a = _buffer(**kwargs)
    run(a, 0)
    b = _buffer(**{**kwargs, "seed": 77})
    b.set_state(a.get_state())
    assert _ids(b.groups) == _ids(a.groups)
    assert run(a, 6) == run(b, 6)


def test_state_into_a_smaller_buffer_keeps_the_newest_groups():
    a = _buffer(capacity=8)
    a.add([make_group([0, 1], group_id=str(i)) for i in range(6)])
    b = _buffer(capacity=4)
    b.set_state(a.get_state())
    assert _ids(b.groups) == ["2", "3", "4", "5"]
    assert len(b.sample(4, 0)) == 4 and len(b) == 0


def test_sampling_does_not_depend_on_the_tree_fanout():
    batches = []
    for fanout in [2, 16]:
        buf = _buffer(max_reuse=3, seed=1, fanout=fanout)
        buf.add([make_group([0, 1], group_id=str(i)) for i in range(40)])
        batches.append([_ids(buf.sample(7, 0)) for _ in range(10)])
    assert batches[0] == batches[1]


def test_dscl_sees_groups_the_filters_drop_and_its_metrics_and_state_travel_with_the_buffer():
    from actorlearner.core.registry import PRIORITIES
    from actorlearner.replay.dscl import DSCLPriority

    dscl = PRIORITIES.resolve({"name": "dscl", "reward_range": [0, 1], "warmup_batches": 0})
    assert isinstance(dscl, DSCLPriority)
    buf = _buffer(priority_fn=dscl, filters=[("zero_variance", zero_variance)])
    assert dscl.auto_observe is False  # the buffer feeds it every arriving group itself
    buf.add(
        [make_group([1, 1, 1, 1], prompt_id="easy", group_id="m"), make_group([0, 1, 0, 1], group_id="i")]
    )
    metrics = buf.pop_metrics()
    assert metrics["filter/zero_variance/groups_dropped"] == 1
    assert metrics["dscl/category/mastered"] == 1  # seen although the filter dropped it
    state = buf.get_state()
    other = _buffer(priority_fn=PRIORITIES.resolve({"name": "dscl", "reward_range": [0, 1]}))
    other.set_state(state)
    assert other.priority_fn.get_state() == dscl.get_state()


def _with_components(group, comps):
    for t, c in zip(group.trajectories, comps, strict=True):
        t.reward_components = dict(c)
        t.reward = sum(c.values())
    return group


def test_dscl_reweight_rewards_shifts_learner_rewards_toward_the_lagging_component_only_when_on():
    from actorlearner.core.registry import PRIORITIES

    comps = [{"format": 1.0, "name": 1.0, "keys": 1.0, "values": v} for v in (0.0, 1.0)]
    kept_rewards = {}
    for on in (False, True):
        dscl = PRIORITIES.resolve({"name": "dscl", "reweight_rewards": on, "batch_groups": 1})
        buf = _buffer(priority_fn=dscl)
        buf.add([_with_components(make_group([0, 0], group_id="warm"), comps)])  # one batch: mastery
        assert dscl.mastery["values"] < dscl.mastery["name"]  # values lag, so they get the focus
        group = _with_components(make_group([0, 0], group_id="x"), comps)
        buf.add([group])
        kept_rewards[on] = list(buf.groups[-1].rewards)  # the stored group: the learner's rewards
        assert list(group.rewards) == [3.0, 4.0]  # the arriving group is never mutated
        assert ("dscl/reweight_abs_delta" in buf.pop_metrics()) == on
    assert kept_rewards[False] == [3.0, 4.0]  # the env's rewards, untouched when off
    assert kept_rewards[True][0] < 3.0  # values missed: the focused component costs more
    assert kept_rewards[True][1] == pytest.approx(4.0)  # all correct: reweighting keeps the sum
    assert kept_rewards[True][1] - kept_rewards[True][0] > 1.0  # the lagging component counts for more


def _sixteen_groups(**kwargs) -> GroupReplayBuffer:
    """16 groups with priorities 0.05, 0.3, 1 and 2 (four each), default alpha and beta."""
    priorities = {str(i): p for i, p in enumerate(np.repeat([0.05, 0.3, 1.0, 2.0], 4))}
    buf = _buffer(priority_fn=lambda g, h: float(priorities[g.group_id]), max_reuse=10**9, **kwargs)
    buf.add([make_group([0, 1], group_id=str(i)) for i in range(16)])
    return buf


def test_is_weights_are_one_when_the_batch_takes_every_group():
    # Every group is in a batch of 16 out of 16, whatever its priority: nothing to correct. The
    # one-draw weights (N P(i))^-beta gave 1.0 / 0.65 / 0.49 / 0.41 here.
    batch = _sixteen_groups().sample(16, 0)
    assert len(batch) == 16
    np.testing.assert_allclose([g.is_weight for g in batch], np.ones(16))


def test_is_weights_are_horvitz_thompson_weights_of_the_inclusion_probabilities():
    from actorlearner.replay.sumtree import inclusion_probabilities

    buf = _sixteen_groups(beta=0.7)
    pi = inclusion_probabilities(buf._tree.leaves, 12)
    batch = buf.sample(12, 0)
    slots = np.array([buf._slot_of[g.group_id] for g in batch])
    expected = (12 / (16 * pi[slots])) ** 0.7
    np.testing.assert_allclose([g.is_weight for g in batch], expected / expected.max())
    assert buf.pop_metrics()["buffer/is_weight_min"] == pytest.approx(min(expected / expected.max()))


def test_is_weights_are_exactly_one_under_equal_priorities():
    # Equal priorities are a uniform draw: pi = k / N exactly, so no weight departs from 1 (the
    # earlier redraw-approximated probabilities gave 0.94-1.0 here).
    buf = _buffer(priority_fn=lambda g, h: 1.0, max_reuse=10**9)
    buf.add([make_group([0, 1], group_id=str(i)) for i in range(37)])
    for k in (1, 5, 16, 36):
        assert [g.is_weight for g in buf.sample(k, 0)] == [1.0] * k


def _zeros_and_ones(zeros: int, ones: int, **kwargs) -> GroupReplayBuffer:
    buf = _buffer(priority_fn=lambda g, h: 0.0 if g.group_id.startswith("z") else 1.0, **kwargs)
    buf.add([make_group([0, 1], group_id=f"z{i}") for i in range(zeros)])
    buf.add([make_group([0, 1], group_id=f"a{i}") for i in range(ones)])
    return buf


def test_num_fresh_counts_only_groups_a_sample_can_draw():
    buf = _zeros_and_ones(30, 2)
    assert len(buf) == 32 and buf.num_fresh(0) == 2  # priority-0 groups are never drawn...
    assert len(buf.sample(16, 0)) == 2
    assert _zeros_and_ones(30, 0).num_fresh(0) == 30  # ...unless every priority is 0 (uniform draw)
    # Staleness first: a fresh priority-0 group is drawable once the only positive one is stale.
    buf = _buffer(priority_fn=lambda g, h: 0.0 if g.group_id.startswith("z") else 1.0, max_staleness=1)
    buf.add([make_group([0, 1], version=0, group_id="a"), make_group([0, 1], version=3, group_id="z")])
    assert buf.num_fresh(0) == 1 and buf.num_fresh(3) == 1
    assert _ids(buf.sample(2, 3)) == ["z"]


def test_sample_wait_waits_for_drawable_groups_not_for_priority_zero_ones():
    from actorlearner.replay.buffer import BufferActor

    async def main():
        buf = BufferActor(lambda g, h: 0.0 if g.group_id.startswith("z") else 1.0, FilterChain([]))
        await buf.push([make_group([0, 1], group_id=f"z{i}") for i in range(30)])
        await buf.push([make_group([0, 1], group_id=f"a{i}") for i in range(2)])
        waiter = asyncio.create_task(buf.sample_wait(16, learner_version=0, timeout_s=5))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # 32 fresh groups, but only 2 can be drawn
        await buf.push([make_group([0, 1], group_id=f"b{i}") for i in range(14)])
        batch = await asyncio.wait_for(waiter, 1)
        assert len(batch) == 16 and not any(g.group_id.startswith("z") for g in batch)

    asyncio.run(main())


def test_prompt_histories_are_bounded_least_recently_seen_first():
    buf = _buffer(max_histories=2)
    for pid in ("p0", "p1", "p2"):
        buf.add([make_group([0.0, 1.0], prompt_id=pid, group_id=pid)])
    assert list(buf.histories) == ["p1", "p2"]  # p0, seen least recently, is forgotten
    buf.add([make_group([1.0, 0.0], prompt_id="p1", group_id="p1b")])
    buf.add([make_group([1.0, 0.0], prompt_id="p3", group_id="p3")])
    assert list(buf.histories) == ["p1", "p3"] and buf.histories["p1"].num_groups == 2
    restored = _buffer(max_histories=2)
    restored.set_state(buf.get_state())
    assert list(restored.histories) == ["p1", "p3"]


def test_prompt_history_is_compact_and_keeps_its_window():
    """A long run keeps up to max_histories of them: each must stay small (the deque layout took 1.8 KB)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        histories = {}
        for i in range(2000):
            history = PromptHistory(f"Calculator:{i:016x}")
            history.record(np.arange(8.0))
            histories[history.prompt_id] = history
        per_history = (tracemalloc.get_traced_memory()[0] - before) / len(histories)
    finally:
        tracemalloc.stop()
    assert per_history < 700, per_history
    for k in range(10):
        history.record(np.full(8, float(k)))
    assert history.group_means == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0] and history.num_groups == 11
    assert pickle.loads(pickle.dumps(history)) == history


def test_prompt_history_unpickles_the_older_deque_layout():
    old = {"prompt_id": "p", "window": 2, "group_means": deque([1.0, 2.0]), "group_vars": deque([0.5, 0.0])}
    history = PromptHistory.__new__(PromptHistory)
    history.__setstate__({**old, "num_groups": 5})
    assert history == PromptHistory("p", 2, [1.0, 2.0], [0.5, 0.0], 5)
    history.record(np.array([3.0, 3.0]))
    assert history.group_means == [2.0, 3.0] and history.group_vars == [0.0, 0.0]
