import warnings

import numpy as np
import pytest

from actorlearner.replay.sumtree import (
    SumTree,
    certainty_split,
    inclusion_probabilities,
    sample_distinct,
    sample_with_inclusion,
    tree_certainty_split,
    tree_inclusion_probabilities,
)

FANOUTS = [2, 4, 16, 32]


def _reference_find(priorities: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Brute force: the leaf whose cumulative interval [cum[i-1], cum[i]) holds each query."""
    return np.searchsorted(np.cumsum(priorities), queries, side="right")


def _random_tree(rng, capacity, fanout, zero_frac=0.3):
    """A tree with integer-valued priorities (sums exact in float64), some of them 0."""
    values = rng.integers(1, 100, size=capacity).astype(np.float64)
    values[rng.random(capacity) < zero_frac] = 0.0
    tree = SumTree(capacity, fanout=fanout)
    tree.update(np.arange(capacity), values)
    return tree, values


@pytest.mark.parametrize("fanout", FANOUTS)
@pytest.mark.parametrize("capacity", [1, 2, 3, 17, 64, 1000])
def test_find_matches_brute_force_cumsum(fanout, capacity):
    rng = np.random.default_rng(capacity * 100 + fanout)
    tree, values = _random_tree(rng, capacity, fanout)
    if values.sum() == 0:
        values[0] = 1.0
        tree.update(np.array([0]), values[:1])
    total = values.sum()
    assert tree.total == total
    queries = np.concatenate([rng.random(500) * total, np.cumsum(values)[:-1], [0.0]])  # incl. boundaries
    queries = queries[queries < total]
    np.testing.assert_array_equal(tree.find(queries), _reference_find(values, queries))


@pytest.mark.parametrize("fanout", FANOUTS)
def test_random_batched_updates_with_duplicates_match_a_loop(fanout):
    rng = np.random.default_rng(fanout)
    capacity = 300
    tree = SumTree(capacity, fanout=fanout)
    reference = np.zeros(capacity)
    for step in range(200):
        size = int(rng.integers(1, 64 if step % 2 else 400))  # small batches and sorted large ones
        idx = rng.integers(0, capacity, size=size)  # duplicates are frequent
        idx[: size // 4] = idx[0]
        values = rng.integers(0, 50, size=size).astype(np.float64)
        tree.update(idx, values)
        for i, v in zip(idx, values, strict=True):
            reference[i] = v  # the last write wins
        np.testing.assert_array_equal(tree.leaves, reference)
        assert tree.total == reference.sum()
        assert tree.num_nonzero == np.count_nonzero(reference)
    queries = rng.random(1000) * reference.sum()
    np.testing.assert_array_equal(tree.find(queries), _reference_find(reference, queries))


@pytest.mark.parametrize("fanout", FANOUTS)
def test_incremental_tree_is_bit_identical_to_a_rebuild(fanout):
    rng = np.random.default_rng(1)
    tree = SumTree(1000, fanout=fanout)
    for _ in range(100):
        idx = rng.integers(0, 1000, size=32)
        tree.update(idx, rng.random(32) ** 3)
    rebuilt = SumTree(1000, fanout=fanout)
    rebuilt.set_state(tree.get_state())
    for ours, theirs in zip(tree._levels, rebuilt._levels, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    queries = rng.random(500) * tree.total
    np.testing.assert_array_equal(tree.find(queries), rebuilt.find(queries))


@pytest.mark.parametrize("fanout", FANOUTS)
def test_float_priorities_land_in_their_interval_and_never_on_zero(fanout):
    rng = np.random.default_rng(7)
    values = rng.random(5000) ** 4
    values[rng.random(5000) < 0.5] = 0.0
    tree = SumTree(5000, fanout=fanout)
    tree.update(np.arange(5000), values)
    queries = np.concatenate([rng.random(4000) * tree.total, [tree.total * (1 - 1e-16), tree.total]])
    found = tree.find(queries)
    assert (values[found] > 0).all()
    cum = np.cumsum(values)
    lo, hi = cum[found] - values[found], cum[found]
    tol = 1e-9 * tree.total
    assert ((queries >= lo - tol) & (queries < hi + tol)).all()


def test_zeros_are_skipped_and_out_of_range_queries_are_clamped():
    tree = SumTree(8, fanout=2)
    tree.update(np.array([1, 3, 4, 6]), np.array([2.0, 0.0, 3.0, 1.0]))
    # leaves: [0, 2, 0, 0, 3, 0, 1, 0]; intervals: 1 -> [0, 2), 4 -> [2, 5), 6 -> [5, 6)
    np.testing.assert_array_equal(tree.find(np.array([0.0, 1.99, 2.0, 4.99, 5.0, 5.5])), [1, 1, 4, 4, 6, 6])
    np.testing.assert_array_equal(tree.find(np.array([-3.0, 6.0, 100.0, np.inf])), [1, 6, 6, 6])
    assert tree.num_nonzero == 3
    assert tree[4] == 3.0
    np.testing.assert_array_equal(tree[np.array([6, 1])], [1.0, 2.0])


def test_capacity_that_is_not_a_power_of_two_never_returns_padding():
    tree = SumTree(5, fanout=4)
    tree.update(np.arange(5), np.ones(5))
    assert tree.find(np.array([4.5, 5.0, 1e9])).tolist() == [4, 4, 4]
    with pytest.raises(ValueError, match="indices"):
        tree.update(np.array([5]), np.array([1.0]))


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_bad_priorities_raise_and_leave_the_tree_unchanged(bad):
    tree = SumTree(4)
    tree.update(np.array([0, 1]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="finite"):
        tree.update(np.array([2, 3]), np.array([1.0, bad]))
    np.testing.assert_array_equal(tree.leaves, [1.0, 2.0, 0.0, 0.0])
    assert tree.total == 3.0


@pytest.mark.parametrize("bad", [-1, 4, 2**40])
def test_a_bad_index_anywhere_in_the_batch_leaves_the_tree_unchanged(bad):
    tree = SumTree(4, fanout=2)
    tree.update(np.array([0, 1]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="indices"):
        tree.update(np.array([2, 3, bad]), np.array([5.0, 6.0, 7.0]))
    np.testing.assert_array_equal(tree.leaves, [1.0, 2.0, 0.0, 0.0])
    assert (tree.total, tree.num_nonzero) == (3.0, 2)
    assert tree.find(np.array([2.5])).tolist() == [1]


def test_find_on_an_empty_tree_and_nan_queries_raise():
    tree = SumTree(4)
    with pytest.raises(ValueError, match="total"):
        tree.find(np.array([0.0]))
    tree.update(np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError, match="NaN"):
        tree.find(np.array([np.nan]))
    with pytest.raises(ValueError, match="NaN"):
        tree.find(np.array([0.5, np.nan, 0.2]))
    assert tree.find(np.array([])).size == 0


def test_constructor_validates():
    with pytest.raises(ValueError, match="fanout"):
        SumTree(8, fanout=3)
    with pytest.raises(ValueError, match="capacity"):
        SumTree(0)


def test_leaves_are_read_only():
    tree = SumTree(4)
    with pytest.raises(ValueError):
        tree.leaves[0] = 1.0


@pytest.mark.parametrize("fanout", [2, 16])
def test_sample_distinct_returns_distinct_nonzero_leaves_and_restores_the_tree(fanout):
    rng = np.random.default_rng(0)
    values = np.array([100.0, 0.0, 1.0, 1.0, 0.0, 5.0, 1.0, 0.5])  # leaf 0 outweighs many segments
    tree = SumTree(8, fanout=fanout)
    tree.update(np.arange(8), values)
    before = [level.copy() for level in tree._levels]
    for k in [1, 3, 6, 10]:
        drawn = sample_distinct(tree, k, rng)
        assert len(drawn) == min(k, 6) == len(set(drawn.tolist()))
        assert (values[drawn] > 0).all()
        for ours, saved in zip(tree._levels, before, strict=True):
            np.testing.assert_array_equal(ours, saved)
        assert tree.num_nonzero == 6
    assert sample_distinct(tree, 0, rng).size == 0
    assert sample_distinct(SumTree(4), 3, rng).size == 0


def test_sample_distinct_single_draws_follow_the_priorities():
    rng = np.random.default_rng(3)
    values = np.array([1.0, 2.0, 0.0, 7.0])
    tree = SumTree(4)
    tree.update(np.arange(4), values)
    counts = np.bincount(np.concatenate([sample_distinct(tree, 1, rng) for _ in range(4000)]), minlength=4)
    np.testing.assert_allclose(counts / 4000, values / values.sum(), atol=0.03)


def test_stratified_batch_covers_each_segment():
    # Ten equal priorities and a batch of five: segment i of the total is exactly leaves {2i, 2i+1},
    # so every batch holds one leaf of each pair. Plain iid draws (even de-duplicated) would often
    # take two leaves of one pair: P(one per pair) = 5!/5^5 < 4% per batch.
    tree = SumTree(10)
    tree.update(np.arange(10), np.ones(10))
    rng = np.random.default_rng(0)
    for _ in range(100):
        drawn = sample_distinct(tree, 5, rng)
        assert sorted((drawn // 2).tolist()) == list(range(5)), drawn
    assert sorted(sample_distinct(tree, 10, rng).tolist()) == list(range(10))


@pytest.mark.parametrize("fanout", FANOUTS)
def test_per_query_descent_below_the_searched_level_matches_brute_force(fanout):
    # 2^17 leaves and 100 queries: find() searches a level of <= 2048 nodes, then descends per query.
    rng = np.random.default_rng(fanout + 11)
    capacity = 100_000
    tree, values = _random_tree(rng, capacity, fanout, zero_frac=0.6)
    values[-5000:] = 0.0  # a zero tail: queries at or past the total must stop before it
    tree.update(np.arange(capacity - 5000, capacity), np.zeros(5000))
    total = values.sum()
    cum = np.cumsum(values)
    queries = np.concatenate([rng.random(60) * total, cum[rng.integers(0, capacity - 5000, 30)], [0.0]])
    queries = queries[queries < total]
    np.testing.assert_array_equal(tree.find(queries), _reference_find(values, queries))
    last = np.flatnonzero(values)[-1]
    np.testing.assert_array_equal(tree.find(np.array([total, total * 2, np.inf])), [last] * 3)


def test_certainty_split_hand_computed():
    # total 10, k 2: leaf 7 >= 10 / 2 is certain; then 1 draw over the remaining 3 (no leaf >= 3)
    certain, rest, total = certainty_split(np.array([1.0, 2.0, 7.0]), 2)
    assert certain.tolist() == [2] and rest == 1 and total == pytest.approx(3.0)
    # 100 of 122.2 is certain for k = 4; then 8 * 3 >= 22.2 and 7.2 * 2 >= 14.2 are too; one draw is left
    certain, rest, total = certainty_split(np.array([100.0, 5.0, 1.0, 1.0, 0.0, 7.2, 8.0]), 4)
    assert certain.tolist() == [0, 6, 5] and rest == 1 and total == pytest.approx(7.0)
    # a cascade: 6 >= 11 / 3 is certain, then 3 >= 5 / 2 is too, then one draw over 1 + 1
    certain, rest, total = certainty_split(np.array([6.0, 3.0, 1.0, 1.0]), 3)
    assert certain.tolist() == [0, 1] and rest == 1 and total == pytest.approx(2.0)
    assert certainty_split(np.ones(4), 4)[1] == 0  # k = N: all certain


def test_inclusion_probabilities_hand_computed():
    # the 16-group example: priorities .05/.3/1/2 (alpha 0.6), a batch of 16 takes all
    np.testing.assert_array_equal(inclusion_probabilities(_SIXTEEN, 16), np.ones(16))
    # total 10, k 2: 7 is certain, then one draw over 1 + 2: pi = 1/3, 2/3, 1
    np.testing.assert_allclose(inclusion_probabilities(np.array([1.0, 2.0, 7.0]), 2), [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(inclusion_probabilities(np.array([1.0, 1.0, 2.0]), 2), [0.5, 0.5, 1.0])


def test_inclusion_probabilities_edge_cases():
    values = np.array([0.0, 1.0, 2.0, 0.0, 7.0])
    np.testing.assert_array_equal(inclusion_probabilities(values, 0), np.zeros(5))
    np.testing.assert_array_equal(inclusion_probabilities(values, 3), [0, 1, 1, 0, 1])
    np.testing.assert_array_equal(inclusion_probabilities(values, 9), [0, 1, 1, 0, 1])
    np.testing.assert_allclose(inclusion_probabilities(values, 1), values / 10)
    np.testing.assert_allclose(inclusion_probabilities(np.ones(10), 5), np.full(10, 0.5))  # no straddling
    np.testing.assert_array_equal(inclusion_probabilities(np.zeros(4), 2), np.zeros(4))


def test_inclusion_probabilities_sum_to_k_and_stay_in_range():
    rng = np.random.default_rng(4)
    for trial in range(40):
        n = int(rng.integers(2, 60))
        values = rng.lognormal(0.0, 2.0, n) * (rng.random(n) > 0.2)
        nonzero = np.count_nonzero(values)
        for k in sorted({1, n // 3, n // 2, nonzero - 1, nonzero}):
            pi = inclusion_probabilities(values, k)
            assert ((pi >= 0) & (pi <= 1 + 1e-12)).all(), (trial, k)
            assert (pi[values == 0] == 0).all()
            assert pi.sum() == pytest.approx(min(max(k, 0), nonzero), abs=1e-9), (trial, k)


def test_prefix_sums_match_a_cumulative_sum():
    rng = np.random.default_rng(2)
    for fanout, capacity in [(2, 1), (4, 37), (32, 5000), (2, 3000)]:  # 3000 and 5000 descend per query
        tree, values = _random_tree(rng, capacity, fanout)
        np.testing.assert_array_equal(tree.prefix_sums(np.arange(capacity)), np.cumsum(values) - values)
    with pytest.raises(ValueError):
        tree.prefix_sums(np.array([capacity]))


@pytest.mark.parametrize(("capacity", "fanout"), [(16, 2), (300, 4), (5000, 32), (60000, 32)])
@pytest.mark.parametrize("kind", ["uniform", "mild", "skewed", "sparse"])
def test_tree_inclusion_probabilities_agree_with_the_full_computation(capacity, fanout, kind):
    rng = np.random.default_rng(capacity + fanout)
    values = {
        "uniform": np.ones(capacity),
        "mild": (rng.random(capacity) + 0.01) ** 0.6,
        "skewed": rng.lognormal(0.0, 2.0, capacity),
        "sparse": rng.random(capacity) * (rng.random(capacity) < 0.3),
    }[kind]
    tree = SumTree(capacity, fanout=fanout)
    tree.set_all(values)
    for k in [1, 2, 13, 32, capacity // 2, tree.num_nonzero - 1, tree.num_nonzero, capacity + 1]:
        drawn = np.concatenate([sample_distinct(tree, k, rng), [0, capacity - 1]])  # and maybe zeros
        expected = inclusion_probabilities(values, k)[drawn]
        np.testing.assert_allclose(
            tree_inclusion_probabilities(tree, drawn, k), expected, rtol=1e-9, atol=1e-12
        )


_SIXTEEN = np.repeat([0.05, 0.3, 1.0, 2.0], 4) ** 0.6  # the 16-group example, alpha = 0.6
_SKEWED = np.array([100, 0, 1, 1, 0, 5, 1, 0.5, 3, 2, 0.1, 0.1, 7, 1, 1, 1.0])
_LOGNORMAL = np.random.default_rng(5).lognormal(0.0, 1.5, 40)


@pytest.mark.parametrize(
    ("values", "k"),
    [
        (_SIXTEEN, 4),
        (_SIXTEEN, 12),
        (_SIXTEEN, 15),  # k = N - 1
        (_SKEWED, 3),  # leaf 0 is certain
        (_SKEWED, 13),  # k = nonzero - 1
        (np.ones(33), 32),  # uniform priorities, k = N - 1: exactly 32/33 each
        (_LOGNORMAL, 38),  # three decades of priorities, k = N - 2
    ],
)
def test_inclusion_probabilities_match_monte_carlo_of_sample_distinct(values, k):
    # 6000 calls: a frequency's standard error is sqrt(p (1 - p) / 6000) <= 0.0065; 4.5 of them
    # is a false alarm below 1e-5 per leaf. The probabilities are exact: no allowance.
    calls = 6000
    tree = SumTree(values.size, fanout=4)
    tree.update(np.arange(values.size), values)
    rng = np.random.default_rng(k)
    counts = np.zeros(values.size)
    for _ in range(calls):
        drawn = sample_distinct(tree, k, rng)
        assert drawn.size == min(k, np.count_nonzero(values)) == np.unique(drawn).size
        counts[drawn] += 1
    freq = counts / calls
    pi = inclusion_probabilities(values, k)
    se = np.sqrt(np.maximum(pi * (1 - pi), 1 / calls) / calls)
    np.testing.assert_array_less(np.abs(pi - freq), 4.5 * se + 1e-12)


def test_inclusion_probabilities_survive_extreme_priorities():
    wide = np.array([1e150, 1e-150, 3.0, 1e-150, 1e150, 0.5, 1e-12])  # 300 decades: no warning
    absurd = np.array([1e300, 1e-300, 3.0, 1e-300, 1e300, 0.5, 1e-12])  # ratios below 1e-308
    for values, strict in [(wide, True), (absurd, False)]:
        tree = SumTree(values.size)
        tree.set_all(values)
        with warnings.catch_warnings():
            warnings.simplefilter("error" if strict else "ignore")
            for k in range(values.size + 1):
                pi = inclusion_probabilities(values, k)
                assert np.isfinite(pi).all() and ((pi >= 0) & (pi <= 1)).all()
                assert pi.sum() == pytest.approx(k)
                drawn = sample_distinct(tree, k, np.random.default_rng(k))
                assert np.isfinite(tree_inclusion_probabilities(tree, drawn, k)).all()


@pytest.mark.parametrize(("capacity", "fanout"), [(7, 2), (300, 4), (5000, 32), (100_000, 32)])
def test_at_least_and_the_tree_certainty_split_match_brute_force(capacity, fanout):
    rng = np.random.default_rng(capacity)
    values = rng.lognormal(0.0, 2.5, capacity) * (rng.random(capacity) < 0.7)
    tree = SumTree(capacity, fanout=fanout)
    tree.set_all(values)
    for threshold in np.quantile(values[values > 0], [0.0, 0.5, 0.99, 1.0]):
        np.testing.assert_array_equal(tree.at_least(threshold), np.flatnonzero(values >= threshold))
    with pytest.raises(ValueError):
        tree.at_least(0.0)
    for k in sorted({1, 2, 8, 32, capacity // 2, tree.num_nonzero - 1, tree.num_nonzero}):
        ours, pure = tree_certainty_split(tree, k), certainty_split(values, k)
        assert sorted(ours[0].tolist()) == sorted(pure[0].tolist()) and ours[1] == pure[1], k
        assert ours[2] == pytest.approx(pure[2], rel=1e-3)  # a running total: callers re-sum it
        drawn, pi = sample_with_inclusion(tree, k, rng)
        np.testing.assert_allclose(pi, inclusion_probabilities(values, k)[drawn], rtol=1e-9)
