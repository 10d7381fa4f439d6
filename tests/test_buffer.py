import asyncio
import math

import numpy as np
import pytest

from actorlearner.buffer import GroupReplayBuffer, PriorityError, importance_weights
from actorlearner.filters import FilterChain, zero_variance
from actorlearner.priorities import uniform
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
    # (4*0.5)^-1 = 0.5, (4*0.25)^-1 = 1 -> normalized by max
    np.testing.assert_allclose(w, [0.5, 1.0])


def test_sampled_groups_carry_is_weights():
    buf = _buffer(priority_fn=lambda g, h: 1.0 if g.group_id == "a" else 3.0, alpha=1.0, beta=1.0)
    buf.add([make_group([0, 1], group_id="a"), make_group([0, 1], group_id="b")])
    weights = {g.group_id: g.is_weight for g in buf.sample(2, 0)}
    assert weights["a"] == pytest.approx(1.0)
    assert weights["b"] == pytest.approx(1 / 3)


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
    from actorlearner.buffer import BufferActor

    async def main():
        buf = BufferActor(uniform, FilterChain([]), max_staleness=2)
        await buf.add_groups([make_group([0, 1], version=0, group_id=str(i)) for i in range(4)])
        # The learner moves on: waiting for fresh groups evicts the stale ones at once...
        assert await buf.sample_wait(2, learner_version=5, timeout_s=0.05) == []
        # ...so the size the runners throttle on counts only fresh groups.
        result = await buf.add_groups([make_group([0, 1], version=5, group_id="new")])
        assert result["size"] == 1 and await buf.size() == 1

    asyncio.run(main())


def test_sample_wait_wakes_when_enough_groups_arrive():
    from actorlearner.buffer import BufferActor

    async def main():
        buf = BufferActor(uniform, FilterChain([]))
        waiter = asyncio.create_task(buf.sample_wait(2, learner_version=0, timeout_s=5))
        await asyncio.sleep(0.01)
        await buf.add_groups([make_group([0, 1], group_id="a")])
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await buf.add_groups([make_group([0, 1], group_id="b")])
        batch = await asyncio.wait_for(waiter, 1)
        assert sorted(g.group_id for g in batch) == ["a", "b"]

    asyncio.run(main())


def test_a_raising_filter_is_named():
    from actorlearner.filters import FilterError

    def picky(group):
        raise ValueError("nope")

    with pytest.raises(FilterError, match="filter 'picky' raised ValueError"):
        _buffer(filters=[("picky", picky)]).add([make_group([0, 1])])
