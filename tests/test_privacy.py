"""DP-FedAvg noise, the fixed-denominator estimator and the RDP accountant."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from dp_accounting.rdp import rdp_privacy_accountant

from server.privacy import PrivacyAccountant, add_gaussian_noise, dp_mean


def test_noise_std_is_z_times_c():
    total = np.full(200_000, 3.0)
    noised, std = add_gaussian_noise(total, clip_norm=0.5, noise_multiplier=1.3, rng=np.random.default_rng(0))
    assert std == pytest.approx(0.65)
    noise = noised - total
    assert np.std(noise) == pytest.approx(0.65, rel=0.01)  # relative s.e. ~ 1/sqrt(400k) = 0.16%
    assert abs(np.mean(noise)) < 0.01
    np.testing.assert_array_equal(total, 3.0)  # input untouched
    assert noised.dtype == np.float64


def test_noise_is_seeded_and_checks_its_arguments():
    a, _ = add_gaussian_noise(np.zeros(4), 1.0, 1.0, np.random.default_rng(3))
    b, _ = add_gaussian_noise(np.zeros(4), 1.0, 1.0, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="clip_norm > 0"):
        add_gaussian_noise(np.zeros(4), 0.0, 1.0, np.random.default_rng(3))


def test_dp_mean_divides_by_expected_clients():
    np.testing.assert_array_equal(dp_mean(np.array([2.0, 4.0]), expected_clients=4.0), [0.5, 1.0])
    with pytest.raises(ValueError, match="expected_clients"):
        dp_mean(np.zeros(2), 0.0)


def test_dp_mean_is_unbiased_under_poisson_sampling():
    rng = np.random.default_rng(1)
    population, q, trials = 20, 0.25, 20_000
    updates = rng.normal(1.0, 1.0, size=(population, 3))
    joined = rng.random((trials, population)) < q
    sums = joined @ updates  # (trials, 3): sum of the sampled clients' updates
    estimate = dp_mean(sums.mean(axis=0), expected_clients=q * population)
    np.testing.assert_allclose(estimate, updates.mean(axis=0), atol=0.03)


def _independent_epsilon(event, relation, rounds, delta):
    accountant = rdp.RdpAccountant(neighboring_relation=relation)
    accountant.compose(event, rounds)
    return accountant.get_epsilon(delta)


def test_poisson_epsilon_matches_dp_accounting():
    z, q, rounds, delta = 1.1, 0.01, 1000, 1e-5
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    want = _independent_epsilon(event, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, rounds, delta)
    got = PrivacyAccountant(z, population=10_000, sampling="poisson", sampling_rate=q).epsilon(rounds)
    assert got == pytest.approx(want, rel=1e-12)


def test_fixed_epsilon_matches_dp_accounting_with_replace_one_sensitivity():
    # Replace-one moves the sum of clipped updates by up to 2C, so the multiplier
    # dp_accounting's without-replacement formula needs is z C / (2 C) = z / 2.
    z, population, m, rounds, delta = 1.1, 1000, 10, 1000, 1e-5
    gaussian = dp_accounting.GaussianDpEvent(z / 2)
    event = dp_accounting.SampledWithoutReplacementDpEvent(population, m, gaussian)
    want = _independent_epsilon(event, dp_accounting.NeighboringRelation.REPLACE_ONE, rounds, delta)
    got = PrivacyAccountant(z, population, sampling="fixed", clients_per_round=m).epsilon(rounds)
    assert got == pytest.approx(want, rel=1e-12)


def test_fixed_full_participation_is_the_gaussian_mechanism_with_sensitivity_2c():
    # All N clients every round: RDP of N(0, (zC)^2) on a sum of sensitivity 2C is
    # alpha (2C)^2 / (2 (zC)^2) = 2 alpha / z^2 per round. Fails if dp_accounting
    # starts scaling replace-one sensitivity itself (then drop our z / 2).
    z, rounds, delta = 4.0, 50, 1e-5
    orders = np.array(rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
    want, _ = rdp_privacy_accountant.compute_epsilon(orders, rounds * 2 * orders / z**2, delta)
    got = PrivacyAccountant(z, population=10, sampling="fixed", clients_per_round=10).epsilon(rounds)
    assert got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize(
    "kwargs", [{"sampling": "poisson", "sampling_rate": 0.02}, {"sampling": "fixed", "clients_per_round": 20}]
)
def test_epsilon_grows_with_rounds_and_shrinks_with_noise(kwargs):
    accountant = PrivacyAccountant(1.0, population=1000, **kwargs)
    eps = [accountant.epsilon(r) for r in (0, 10, 100, 1000)]
    assert eps[0] == 0.0 and eps[1] < eps[2] < eps[3]
    assert PrivacyAccountant(2.0, population=1000, **kwargs).epsilon(100) < eps[2]


def test_accountant_preconditions():
    with pytest.raises(ValueError, match="'poisson' or 'fixed'"):
        PrivacyAccountant(1.0, 100, sampling="uniform", clients_per_round=10)
    with pytest.raises(ValueError, match="sampling_rate"):
        PrivacyAccountant(1.0, 100, sampling="poisson", clients_per_round=10)
    with pytest.raises(ValueError, match="clients_per_round in"):
        PrivacyAccountant(1.0, 100, sampling="fixed", clients_per_round=101)
    with pytest.raises(ValueError, match="rounds must be >= 0"):
        PrivacyAccountant(1.0, 100, sampling="fixed", clients_per_round=10).epsilon(-1)
