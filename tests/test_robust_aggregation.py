"""Robust aggregators on hand-computed arrays: median, trimmed mean, Krum, multi-Krum."""

from __future__ import annotations

import numpy as np
import pytest

from server.aggregation import (
    AGGREGATORS,
    coordinate_median,
    krum,
    krum_scores,
    multi_krum,
    pairwise_sq_distances,
    trimmed_mean,
    weighted_mean,
)

# Four honest clients on the corners of the unit square, one attacker far away.
SQUARE_AND_OUTLIER = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, 100.0]])


def test_median_by_hand():
    updates = np.array([[1.0, 5.0], [2.0, 6.0], [100.0, -100.0]])
    np.testing.assert_array_equal(coordinate_median(updates, np.ones(3)), [2.0, 5.0])


def test_median_of_even_count_averages_middle_pair_and_ignores_weights():
    updates = np.array([[1.0], [3.0], [10.0], [20.0]])
    # sorted 1, 3, 10, 20 -> (3 + 10) / 2
    np.testing.assert_array_equal(coordinate_median(updates, np.array([9.0, 1.0, 1.0, 1.0])), [6.5])


def test_trimmed_mean_by_hand():
    updates = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [100.0, -100.0]])
    # beta = 0.2, k = 5 -> drop floor(1.0) = 1 from each end per coordinate:
    # x: 1 2 3 4 100 -> mean(2, 3, 4) = 3;  y: -100 10 20 30 40 -> mean(10, 20, 30) = 20
    np.testing.assert_array_equal(trimmed_mean(updates, np.ones(5), beta=0.2), [3.0, 20.0])


def test_trimmed_mean_with_beta_zero_is_plain_mean():
    updates = np.array([[1.0, 2.0], [3.0, 8.0]])
    np.testing.assert_array_equal(trimmed_mean(updates, np.array([1.0, 3.0]), beta=0.0), [2.0, 5.0])


def test_trimmed_mean_preconditions():
    with pytest.raises(ValueError, match=r"0 <= beta < 0.5"):
        trimmed_mean(np.ones((4, 2)), np.ones(4), beta=0.5)
    with pytest.raises(ValueError, match=r"0 <= beta < 0.5"):
        trimmed_mean(np.ones((4, 2)), np.ones(4), beta=-0.1)


def test_pairwise_distances_match_direct_differences():
    rng = np.random.default_rng(0)
    updates = rng.normal(size=(6, 4))
    direct = ((updates[:, None, :] - updates[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(pairwise_sq_distances(updates), direct, atol=1e-12)


def test_krum_scores_by_hand():
    # k = 5, f = 1 -> each score sums the k - f - 2 = 2 nearest squared distances.
    # Each corner has two neighbours at squared distance 1 -> 2.
    # The outlier: to (1,1) 99^2 + 99^2 = 19602, to (1,0) and (0,1) 99^2 + 100^2 = 19801.
    scores = krum_scores(SQUARE_AND_OUTLIER, f=1)
    np.testing.assert_allclose(scores, [2.0, 2.0, 2.0, 2.0, 19602.0 + 19801.0])


def test_krum_picks_an_honest_update_lowest_index_on_ties():
    chosen = krum(SQUARE_AND_OUTLIER, np.ones(5), f=1)
    np.testing.assert_array_equal(chosen, [0.0, 0.0])  # all corners tie at 2: index 0 wins


def test_krum_picks_the_honest_cluster_member():
    updates = np.array([[10.0, 0.0], [0.0, 0.0], [0.1, 0.0], [0.3, 0.0], [0.1, 0.1]])
    # Two nearest squared distances: (0,0) 0.01 + 0.02 = 0.03, (0.1,0) 0.01 + 0.01 = 0.02,
    # (0.3,0) 0.04 + 0.05 = 0.09, (0.1,0.1) 0.01 + 0.02 = 0.03 -> (0.1, 0) wins.
    np.testing.assert_array_equal(krum(updates, np.ones(5), f=1), [0.1, 0.0])


def test_multi_krum_averages_the_lowest_scores_with_sample_weights():
    # m = 3: the three lowest scores tie at 2, so indices 0, 1, 2 (lowest index first).
    # (1*(0,0) + 1*(1,0) + 2*(0,1)) / 4 = (0.25, 0.5)
    weights = np.array([1.0, 1.0, 2.0, 1.0, 1.0])
    np.testing.assert_array_equal(multi_krum(SQUARE_AND_OUTLIER, weights, f=1, m=3), [0.25, 0.5])


def test_multi_krum_excludes_a_heavy_outlier():
    weights = np.array([1.0, 1.0, 1.0, 1.0, 100.0])
    np.testing.assert_array_equal(multi_krum(SQUARE_AND_OUTLIER, weights, f=1, m=4), [0.5, 0.5])


def test_krum_preconditions_name_the_condition():
    with pytest.raises(ValueError, match=r"Krum needs k > 2f \+ 2 clients, got k=4, f=1"):
        krum(np.ones((4, 2)), np.ones(4), f=1)
    with pytest.raises(ValueError, match=r"Krum needs k > 2f \+ 2 clients, got k=5, f=-1"):
        krum(np.ones((5, 2)), np.ones(5), f=-1)
    with pytest.raises(ValueError, match=r"1 <= m <= k, got m=0"):
        multi_krum(SQUARE_AND_OUTLIER, np.ones(5), f=1, m=0)
    with pytest.raises(ValueError, match=r"1 <= m <= k, got m=6"):
        multi_krum(SQUARE_AND_OUTLIER, np.ones(5), f=1, m=6)


def test_aggregators_check_shapes_and_leave_input_untouched():
    updates = SQUARE_AND_OUTLIER.copy()
    for name in ("median", "trimmed_mean", "krum", "multi_krum"):
        with pytest.raises(ValueError, match=r"\(k, n\)"):
            AGGREGATORS[name](updates, np.ones(4), **_hyper(name))
        result = AGGREGATORS[name](updates, np.ones(5), **_hyper(name))
        assert result.shape == (2,) and result.dtype == np.float64
    np.testing.assert_array_equal(updates, SQUARE_AND_OUTLIER)
    assert not np.shares_memory(krum(updates, np.ones(5), f=1), updates)


def test_aggregator_registry():
    assert set(AGGREGATORS) == {"mean", "median", "trimmed_mean", "krum", "multi_krum"}
    assert AGGREGATORS["mean"] is weighted_mean


def _hyper(name: str) -> dict:
    return {"trimmed_mean": {"beta": 0.2}, "krum": {"f": 1}, "multi_krum": {"f": 1, "m": 2}}.get(name, {})
