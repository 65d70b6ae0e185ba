"""Server maths on hand-computed arrays: FedAvg, partial sums, sampling, groups, server SGD."""

from __future__ import annotations

import numpy as np
import pytest

from server.aggregation import combine_partial_sums, weighted_mean
from server.optimizers import ServerSGD
from server.sampling import reduction_groups, sample_clients


def test_weighted_mean_by_hand():
    updates = np.array([[1.0, 0.0], [3.0, 4.0]])
    weights = np.array([1.0, 3.0])
    # (1*[1,0] + 3*[3,4]) / 4 = [10/4, 12/4]
    np.testing.assert_array_equal(weighted_mean(updates, weights), [2.5, 3.0])


def test_weighted_mean_preconditions():
    with pytest.raises(ValueError, match="weights"):
        weighted_mean(np.ones((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"\(k, n\)"):
        weighted_mean(np.ones(3), np.ones(3))


def test_partial_sums_equal_weighted_mean():
    rng = np.random.default_rng(0)
    updates, weights = rng.normal(size=(7, 5)), rng.integers(1, 20, size=7).astype(float)
    groups = [slice(0, 3), slice(3, 4), slice(4, 7)]
    sums = [weights[g] @ updates[g] for g in groups]
    totals = [weights[g].sum() for g in groups]
    # Same maths, different summation order: equal to float64 rounding (1e-12 relative).
    np.testing.assert_allclose(
        combine_partial_sums(sums, totals), weighted_mean(updates, weights), rtol=1e-12
    )


def test_partial_sums_with_no_weight_is_none():
    assert combine_partial_sums([np.zeros(3)], [0.0]) is None


def test_fedavg_server_step_by_hand():
    params = np.array([1.0, 2.0], dtype=np.float32)
    mean_delta = np.array([0.5, -1.0])
    new = ServerSGD(lr=1.0).step(params, -mean_delta)
    np.testing.assert_array_equal(new, np.array([1.5, 1.0], dtype=np.float32))
    assert new.dtype == np.float32
    np.testing.assert_array_equal(params, [1.0, 2.0])  # input untouched
    np.testing.assert_array_equal(ServerSGD(lr=0.5).step(params, -mean_delta), [1.25, 1.5])


def test_sampling_is_seeded_sorted_and_without_replacement():
    a = sample_clients(seed=3, round_=5, num_clients=100, per_round=10)
    assert np.array_equal(a, sample_clients(3, 5, 100, 10))
    assert not np.array_equal(a, sample_clients(3, 6, 100, 10))
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 100


def test_sampling_is_uniform_over_many_rounds():
    counts = np.zeros(20)
    for r in range(2000):
        counts[sample_clients(0, r, 20, 5)] += 1
    # Each client is picked with probability 1/4: expected 500, binomial std ~19.
    assert np.all(np.abs(counts - 500) < 100)


def test_reduction_groups_cut_by_position():
    ids = np.array([2, 5, 7, 9, 11])
    groups = reduction_groups(ids, 2)
    assert [g.tolist() for g in groups] == [[2, 5, 7], [9, 11]]
    assert len(reduction_groups(ids, 16)) == 5  # empty groups are dropped
