import numpy as np
import pytest

from actorlearner.core.registry import FILTERS, RegistryError
from actorlearner.core.trajectory import Group, ToolCallRecord, Trajectory, TurnRecord
from actorlearner.learn.losses import group_advantages
from actorlearner.replay.filters import (
    FilterChain,
    overlong,
    tool_failure_mask,
    uniform_tool_outcome,
    void_turn,
    zero_variance,
)
from tests.conftest import make_trajectory


def _call(ok: bool) -> ToolCallRecord:
    return ToolCallRecord(name="f", arguments={}, ok=ok, error=None if ok else "boom")


def _traj(
    reward: float, calls: tuple[bool, ...] = (), void: bool = False, overlong: bool = False
) -> Trajectory:
    """A trajectory whose single turn made tool calls with the given outcomes (True = ok)."""
    t = make_trajectory(reward)
    turn = TurnRecord(index=0, text="x", start=3, end=7, tool_calls=[_call(ok) for ok in calls], void=void)
    return t.replace(turns=[turn], overlong=overlong)


def _group(*trajectories: Trajectory, group_id: str = "g") -> Group:
    return Group(group_id=group_id, prompt_id="p0", trajectories=list(trajectories))


# -- tool_failure_mask -------------------------------------------------------------------------


def test_tool_failure_mask_masks_only_all_failed_trajectories_and_keeps_rewards():
    group = _group(
        _traj(-1.0, calls=(False, False)),  # every call failed -> masked
        _traj(1.0, calls=(False, True)),  # one success -> kept
        _traj(0.5),  # no call at all -> kept
        _traj(2.0, calls=(True,)),
    )
    masks_before = [t.loss_mask.copy() for t in group.trajectories]
    kept = tool_failure_mask(group)
    assert kept is not group
    assert kept.trajectories[0].loss_mask.sum() == 0.0
    for before, after in zip(masks_before[1:], kept.trajectories[1:], strict=True):
        np.testing.assert_array_equal(after.loss_mask, before)
    # inputs are never mutated
    for before, t in zip(masks_before, group.trajectories, strict=True):
        np.testing.assert_array_equal(t.loss_mask, before)
    assert kept.trajectories[0].loss_mask.dtype == np.float32
    # the masked trajectory's reward still counts in the group's statistics
    np.testing.assert_array_equal(kept.rewards, group.rewards)
    np.testing.assert_allclose(group_advantages(kept.rewards), group_advantages(group.rewards))
    assert group_advantages(kept.rewards)[0] < 0  # its low reward still pulls the mean down


def test_tool_failure_mask_strength_scales_the_mask():
    group = _group(_traj(0.0, calls=(False,)), _traj(1.0, calls=(True,)))
    kept = tool_failure_mask(group, strength=0.25)
    np.testing.assert_allclose(kept.trajectories[0].loss_mask, group.trajectories[0].loss_mask * 0.75)
    assert tool_failure_mask(group, strength=0.0).trajectories[0].loss_mask.sum() == 4.0
    with pytest.raises(ValueError, match="strength"):
        tool_failure_mask(group, strength=1.5)


def test_tool_failure_mask_without_failures_returns_the_group_unchanged():
    group = _group(_traj(0.0, calls=(True,)), _traj(1.0))
    assert tool_failure_mask(group) is group


# -- uniform_tool_outcome ----------------------------------------------------------------------


OURS = {"require_uniform_outcome": True}
"""The project's earlier rule, kept as an option: uniform tool outcomes AND no reward signal."""


@pytest.mark.parametrize(
    ("calls", "rewards", "kwargs", "dropped"),
    [
        # default: the reference code's rejection_sample, reward std < 1e-3, whatever the outcomes
        ([(True,), (False,)], [1.0, 1.0], {}, True),  # mixed outcomes, no signal
        ([(), ()], [1.0, 1.0], {}, True),  # no tool call at all, no signal
        ([(False,), (False, False)], [1.0, 1.0], {}, True),
        ([(False,), (False,)], [0.0, 1.0], {}, False),  # signal
        ([(False,), (False,)], [0.0, 0.0021], {}, False),  # std 1.05e-3 >= 1e-3
        ([(False,), (False,)], [0.0, 0.0019], {}, True),  # std 0.95e-3 < 1e-3
        # the option: uniform outcome AND no signal
        ([(False,), (False, False)], [1.0, 1.0], OURS, True),  # all failed, no signal
        ([(True,), (True, True)], [1.0, 1.0], OURS, True),  # all succeeded, no signal
        ([(True,), (False,)], [1.0, 1.0], OURS, False),  # mixed outcomes
        ([(False,), (False,)], [0.0, 1.0], OURS, False),  # uniform but rewards carry signal
        ([(False,), ()], [1.0, 1.0], OURS, True),  # members without calls contribute no outcome
        ([(), ()], [1.0, 1.0], OURS, False),  # no tool calls at all: not uniform by default
        ([(), ()], [1.0, 1.0], {**OURS, "no_calls_uniform": True}, True),
        # each condition on its own
        ([(False,), (False,)], [0.0, 1.0], {**OURS, "require_no_signal": False}, True),
        ([(True,), (False,)], [0.0, 1.0], {}, False),
        (
            [(False,), (False,)],
            [1.0, 1.0],
            {"require_uniform_outcome": False, "require_no_signal": False},
            False,
        ),
        # min_std is the signal threshold
        ([(False,), (False,)], [0.0, 0.01], OURS, False),
        ([(False,), (False,)], [0.0, 0.01], {**OURS, "min_std": 0.1}, True),
        ([(True,), (False,)], [0.0, 0.01], {"min_std": 0.1}, True),
    ],
)
def test_uniform_tool_outcome(calls, rewards, kwargs, dropped):
    group = _group(*[_traj(r, calls=c) for c, r in zip(calls, rewards, strict=True)])
    out = uniform_tool_outcome(group, **kwargs)
    assert (out is None) == dropped
    if not dropped:
        assert out is group


def test_uniform_tool_outcome_defaults_to_the_reference_rule_which_is_zero_variance():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 5))
        rewards = rng.choice([0.0, 1e-4, 1e-3, 0.5, 1.0], size=n)
        calls = [tuple(bool(b) for b in rng.integers(0, 2, size=int(rng.integers(0, 3)))) for _ in range(n)]
        group = _group(*[_traj(float(r), calls=c) for c, r in zip(calls, rewards, strict=True)])
        assert (uniform_tool_outcome(group) is None) == (zero_variance(group) is None)
        if uniform_tool_outcome(group, **OURS) is None:  # the option drops a subset of it
            assert zero_variance(group) is None


# -- void_turn ---------------------------------------------------------------------------------


def test_void_turn_masks_the_whole_trajectory_and_keeps_its_reward():
    group = _group(_traj(0.0, void=True), _traj(1.0, calls=(True,)), _traj(0.5))
    kept = void_turn(group)
    assert kept is not None
    assert [float(t.loss_mask.sum()) for t in kept.trajectories] == [0.0, 4.0, 4.0]
    assert group.trajectories[0].loss_mask.sum() == 4.0  # input untouched
    np.testing.assert_array_equal(kept.rewards, group.rewards)
    clean = _group(_traj(0.0), _traj(1.0))
    assert void_turn(clean) is clean  # no void turn: the very group, every mask untouched
    assert [float(t.loss_mask.sum()) for t in clean.trajectories] == [4.0, 4.0]


def test_void_turn_checks_every_turn():
    t = make_trajectory(0.0)
    t = t.replace(
        turns=[
            TurnRecord(index=0, text="a", start=3, end=5, tool_calls=[_call(True)]),
            TurnRecord(index=1, text="b", start=5, end=7, void=True),
        ]
    )
    assert void_turn(_group(t, _traj(1.0))).trajectories[0].loss_mask.sum() == 0.0


# -- overlong ----------------------------------------------------------------------------------


def test_overlong_drops_all_overlong_groups_and_honours_min_n():
    all_long = _group(_traj(0.0, overlong=True), _traj(1.0, overlong=True))
    one_short = _group(_traj(0.0, overlong=True), _traj(1.0), _traj(0.5, overlong=True))
    assert overlong(all_long) is None
    assert overlong(all_long, min_n=0) is None
    assert overlong(one_short) is one_short
    assert overlong(one_short, min_n=2) is None
    short = _group(_traj(0.0), _traj(1.0))
    assert overlong(short, min_n=2) is short
    assert overlong(short, min_n=3) is None  # fewer than min_n members ended under the cap


def test_overlong_mask_option_masks_overlong_members():
    group = _group(_traj(0.0, overlong=True), _traj(1.0), _traj(0.5))
    kept = overlong(group, mask=True)
    assert kept is not None
    assert [float(t.loss_mask.sum()) for t in kept.trajectories] == [0.0, 4.0, 4.0]
    np.testing.assert_array_equal(kept.rewards, group.rewards)


# -- the chain and the registry ----------------------------------------------------------------


def test_chain_counts_drops_and_masks_per_filter():
    chain = FilterChain(
        [
            ("void_turn", void_turn),
            ("uniform_tool_outcome", FILTERS.resolve({"name": "uniform_tool_outcome", **OURS})),
            ("tool_failure_mask", tool_failure_mask),
            ("overlong", overlong),
            ("zero_variance", zero_variance),
        ]
    )
    groups = [
        # kept, one trajectory masked by tool_failure_mask (4 tokens), one by void_turn (4 tokens)
        _group(_traj(0.0, calls=(False,)), _traj(1.0, calls=(True,)), _traj(0.5, void=True), group_id="a"),
        # all calls failed, equal rewards -> uniform_tool_outcome drops 2 trajectories
        _group(_traj(0.0, calls=(False,)), _traj(0.0, calls=(False,)), group_id="b"),
        # every member overlong -> overlong drops it
        _group(_traj(0.0, overlong=True), _traj(1.0, overlong=True), group_id="c"),
        # no calls, equal rewards -> passes uniform_tool_outcome (the option), zero_variance drops it
        _group(_traj(1.0), _traj(1.0), _traj(1.0), group_id="d"),
    ]
    kept = [g.group_id for g in groups if chain(g) is not None]
    assert kept == ["a"]
    counts = chain.pop_counts()
    assert counts["void_turn/tokens_masked"] == 4
    assert counts["tool_failure_mask/tokens_masked"] == 4  # group b never reached it
    assert counts["uniform_tool_outcome/groups_dropped"] == 1
    assert counts["uniform_tool_outcome/trajectories_dropped"] == 2
    assert counts["uniform_tool_outcome/tokens_dropped"] == 8
    assert counts["overlong/groups_dropped"] == 1
    assert counts["zero_variance/groups_dropped"] == 1
    assert counts["zero_variance/trajectories_dropped"] == 3
    assert counts["zero_variance/tokens_dropped"] == 12
    assert chain.pop_counts() == {}


def test_registered_filters_resolve_with_options():
    for name in ["tool_failure_mask", "uniform_tool_outcome", "void_turn", "overlong", "zero_variance"]:
        assert name in FILTERS
    fn = FILTERS.resolve({"name": "overlong", "min_n": 2})
    assert fn(_group(_traj(0.0), _traj(1.0, overlong=True))) is None
    half = FILTERS.resolve({"name": "tool_failure_mask", "strength": 0.5})
    assert half(_group(_traj(0.0, calls=(False,)), _traj(1.0))).trajectories[0].loss_mask.sum() == 2.0
    with pytest.raises(RegistryError, match=r"overlong.*min_m"):
        FILTERS.resolve({"name": "overlong", "min_m": 2})


# -- groups are values -------------------------------------------------------------------------


def _snapshot(group: Group) -> list[tuple]:
    """Everything a filter could mutate, as plain values."""
    return [
        (
            t.reward,
            dict(t.reward_components),
            t.loss_mask.tolist(),
            t.logprobs.tolist(),
            t.overlong,
            repr(t.turns),
        )
        for t in group.trajectories
    ]


@pytest.mark.parametrize(
    "spec",
    [
        "tool_failure_mask",
        {"name": "tool_failure_mask", "strength": 0.5},
        "uniform_tool_outcome",
        {"name": "uniform_tool_outcome", "require_uniform_outcome": True},
        "void_turn",
        "overlong",
        {"name": "overlong", "mask": True},
        "zero_variance",
    ],
)
def test_filters_never_mutate_their_input(spec):
    fn = FILTERS.resolve(spec)
    groups = [
        _group(_traj(0.0, calls=(False,)), _traj(1.0, calls=(True,)), _traj(0.5, void=True, overlong=True)),
        _group(_traj(1.0, calls=(False, False)), _traj(1.0, calls=(False,))),
    ]
    for group in groups:
        before, trajectories = _snapshot(group), list(group.trajectories)
        out = fn(group)
        assert _snapshot(group) == before
        assert len(group.trajectories) == len(trajectories)
        assert all(a is b for a, b in zip(group.trajectories, trajectories, strict=True))
        if out is not None and out is not group:
            for t_in, t_out in zip(group.trajectories, out.trajectories, strict=True):
                assert t_out is t_in or t_out.loss_mask is not t_in.loss_mask  # no shared mask to scale


# -- fully masked groups -----------------------------------------------------------------------

SHIPPED_CHAIN = ["tool_failure_mask", "uniform_tool_outcome", "void_turn", "overlong", "zero_variance"]
"""The chain of configs/function_calling.yaml."""


def _chain(specs) -> FilterChain:
    return FilterChain(
        [(spec if isinstance(spec, str) else spec["name"], FILTERS.resolve(spec)) for spec in specs]
    )


def test_chain_drops_a_group_with_no_loss_token_left_and_counts_it():
    chain = _chain(SHIPPED_CHAIN)
    every_call_failed = _group(_traj(0.0, calls=(False,)), _traj(1.0, calls=(False, False)), group_id="f")
    assert chain(every_call_failed) is None  # rewards differ, but nothing is left to train on
    partly = _group(_traj(0.0, calls=(False,)), _traj(1.0, calls=(True,)), group_id="p")
    kept = chain(partly)
    assert kept is not None and [float(t.loss_mask.sum()) for t in kept.trajectories] == [0.0, 4.0]
    counts = chain.pop_counts()
    assert counts["fully_masked/groups_dropped"] == 1
    assert counts["fully_masked/trajectories_dropped"] == 2
    assert counts["tool_failure_mask/tokens_masked"] == 8 + 4
    assert "zero_variance/groups_dropped" not in counts


def test_fully_masked_groups_never_reach_the_buffer():
    from actorlearner.replay.buffer import GroupReplayBuffer
    from actorlearner.replay.priorities import uniform

    buf = GroupReplayBuffer(uniform, _chain(["void_turn"]))
    void = _group(_traj(0.0, void=True), _traj(1.0, void=True), group_id="v")
    assert buf.add([void]) == {"added": 0, "dropped": 1, "size": 0}
    metrics = buf.pop_metrics()
    assert metrics["filter/fully_masked/groups_dropped"] == 1
    assert metrics["rollout/groups"] == 1
    half = _chain([{"name": "tool_failure_mask", "strength": 0.5}])
    assert half(_group(_traj(0.0, calls=(False,)), _traj(1.0, calls=(False,)))) is not None  # weight left
