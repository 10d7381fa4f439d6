"""Exact boundaries of the replay path: zero_variance, DSCL's categories and gate, PER stratification.

Each threshold is probed AT its value and one float step to the other side, so that ``>=`` turned
into ``>`` (or ``<`` into ``<=``) fails a test. Values are powers of two, so the arithmetic is exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from actorlearner.core.history import PromptHistory
from actorlearner.core.trajectory import Group
from actorlearner.replay import dscl
from actorlearner.replay.dscl import DSCLPriority, WarmupGate
from actorlearner.replay.filters import zero_variance
from actorlearner.replay.sumtree import SumTree, sample_distinct
from tests.conftest import make_group


def _below(x: float) -> float:
    return float(np.nextafter(x, -np.inf))


def _above(x: float) -> float:
    return float(np.nextafter(x, np.inf))


# -- zero_variance -----------------------------------------------------------------------------


def test_zero_variance_keeps_a_group_whose_std_equals_min_std() -> None:
    group = make_group([0.0, 0.5])  # std exactly 0.25
    assert float(np.std(group.rewards)) == 0.25
    assert zero_variance(group, min_std=0.25) is group
    assert zero_variance(group, min_std=_above(0.25)) is None


def test_zero_variance_default_threshold_is_1e_3() -> None:
    assert zero_variance(make_group([0.0, 0.0021])) is not None  # std 1.05e-3
    assert zero_variance(make_group([0.0, 0.0019])) is None  # std 0.95e-3
    assert zero_variance(make_group([1.0, 1.0, 1.0])) is None


# -- DSCL categories ---------------------------------------------------------------------------

REWARD_MAX, ATOL, T_MEAN = 4.0, 0.5, 1.0


def _category(mean: float, var: float = 0.0, t_mean: float = T_MEAN) -> str:
    return dscl.categorize(mean, var, reward_max=REWARD_MAX, t_mean=t_mean, atol=ATOL)


def test_mastered_starts_exactly_atol_below_the_maximum() -> None:
    assert _category(REWARD_MAX - ATOL) == "mastered"
    assert _category(_below(REWARD_MAX - ATOL)) == "informative"
    assert _category(REWARD_MAX) == "mastered"


def test_no_variance_means_std_strictly_below_atol() -> None:
    assert _category(REWARD_MAX, var=ATOL**2) == "informative"  # std == atol: there is variance
    assert _category(REWARD_MAX, var=_below(ATOL**2)) == "mastered"
    assert _category(0.0, var=ATOL**2) == "informative"
    assert _category(0.0, var=_below(ATOL**2)) == "hard"


def test_hard_is_strictly_below_t_mean() -> None:
    assert _category(T_MEAN) == "informative"
    assert _category(_below(T_MEAN)) == "hard"
    assert _category(-3.0, t_mean=-3.0) == "informative"
    assert _category(_below(-3.0), t_mean=-3.0) == "hard"


def _flat_group(reward: float, n: int = 4) -> Group:
    return make_group([reward] * n)


def _history(group: Group) -> PromptHistory:
    history = PromptHistory(group.prompt_id)
    history.record(group.rewards)
    return history


def _dscl(**knobs: object) -> DSCLPriority:
    base = {"reward_range": (0.0, 4.0), "warmup_batches": 0, "curriculum": False, "p_revisit": 0.0}
    return DSCLPriority(**{**base, **knobs})


@pytest.mark.parametrize(
    ("reward", "t_mean", "expected"),
    [(1.5, 1.5, "informative"), (_below(1.5), 1.5, "hard"), (0.0, 0.0, "informative"), (-0.25, 0.0, "hard")],
)
def test_dscl_priority_passes_t_mean_through(reward: float, t_mean: float, expected: str) -> None:
    group = _flat_group(reward)
    _, category = _dscl(t_mean=t_mean).priority(group, _history(group))
    assert category == expected


def test_dscl_default_t_mean_is_zero_on_toolrl_scale_and_three_sevenths_up_any_range() -> None:
    fn = _dscl(reward_range=(-3.0, 4.0))
    assert fn.t_mean == 0.0 and fn.gate.threshold == pytest.approx(1.0)  # the paper's t_warm
    assert fn.priority(_flat_group(0.0), _history(_flat_group(0.0)))[1] == "informative"
    assert fn.priority(_flat_group(-0.25), _history(_flat_group(-0.25)))[1] == "hard"
    unit = _dscl(reward_range=(0.0, 1.0))
    assert unit.t_mean == pytest.approx(3 / 7) and unit.gate.threshold == pytest.approx(4 / 7)
    assert unit.priority(_flat_group(0.0), _history(_flat_group(0.0)))[1] == "hard"


def test_dscl_hard_weight_applies_exactly_below_t_mean() -> None:
    fn = _dscl(t_mean=2.0, hard_weight=0.5, atol=1e-6)
    at, below = _flat_group(2.0), _flat_group(_below(2.0))
    p_at, p_below = fn.priority(at, _history(at))[0], fn.priority(below, _history(below))[0]
    # both are eps + (1 - 0.5) with no variance; only the hard one is halved
    assert p_at == pytest.approx(0.01 + 0.5)
    assert p_below == pytest.approx((0.01 + 0.5) * 0.5)


def test_dscl_mastered_boundary_through_the_priority() -> None:
    fn = _dscl(atol=0.5)
    at, below = _flat_group(3.5), _flat_group(_below(3.5))
    assert fn.priority(at, _history(at)) == (0.0, "mastered")
    assert fn.priority(below, _history(below))[1] == "informative"


# -- the warm-up gate --------------------------------------------------------------------------


def test_warmup_gate_needs_batch_means_strictly_above_the_threshold() -> None:
    gate = WarmupGate(threshold=1.0, patience=2)
    assert not gate.update(_above(1.0))
    assert gate.streak == 1
    assert not gate.update(1.0)  # at the threshold: the streak resets
    assert gate.streak == 0
    assert not gate.update(_above(1.0))
    assert gate.update(_above(1.0))  # the second consecutive batch opens it
    assert gate.update(-5.0) and gate.is_open  # and it stays open


# -- stratified sampling -----------------------------------------------------------------------


def _tree(values: list[float]) -> SumTree:
    tree = SumTree(len(values), fanout=2)
    tree.update(np.arange(len(values)), np.asarray(values))
    return tree


def test_sample_distinct_puts_each_draw_in_its_own_equal_segment() -> None:
    # 8 unit leaves, 4 draws: segment i of the total is exactly leaves {2i, 2i+1}. Systematic, every
    # batch has one leaf per pair; iid draws (then de-duplicated) would often take two of a pair.
    tree, rng = _tree([1.0] * 8), np.random.default_rng(0)
    parities = set()
    for _ in range(200):
        drawn = sample_distinct(tree, 4, rng)
        assert sorted(int(i) // 2 for i in drawn) == [0, 1, 2, 3], drawn
        parities.add(tuple(sorted(int(i) % 2 for i in drawn)))
    # one shared offset (systematic sampling): the same position in every segment, both positions seen
    assert parities == {(0, 0, 0, 0), (1, 1, 1, 1)}


def test_sample_distinct_segments_follow_the_cumulative_priority() -> None:
    # total 16, two draws: [0, 8) holds leaves 0..3 and [8, 16) leaves 4..7, with unequal weights.
    values = [3.0, 1.0, 2.0, 2.0, 1.0, 1.0, 4.0, 2.0]
    tree, rng = _tree(values), np.random.default_rng(1)
    firsts, seconds = [], []
    for _ in range(2000):
        low, high = sorted(int(i) for i in sample_distinct(tree, 2, rng))
        assert low < 4 <= high
        firsts.append(low)
        seconds.append(high)
    np.testing.assert_allclose(np.bincount(firsts, minlength=4) / 2000, np.array(values[:4]) / 8, atol=0.04)
    np.testing.assert_allclose(
        np.bincount(seconds, minlength=8)[4:] / 2000, np.array(values[4:]) / 8, atol=0.04
    )
