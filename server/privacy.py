"""User-level differential privacy for federated averaging: noise, estimator, accountant.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018, "Learning Differentially
Private Recurrent Language Models", arXiv:1710.06963, Algorithm 1): each
sampled client's update is clipped to L2 norm C, the server adds
N(0, (z C)^2 I) to the SUM of clipped updates and divides by the fixed
expected number of clients q N (the estimator f~_f of Section 2).

The privacy cost of T rounds is tracked with Renyi DP (Mironov 2017,
arXiv:1702.07476) through ``dp_accounting``'s ``RdpAccountant``:

- "poisson": each client joins a round independently with probability q;
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` under add-or-remove-one
  neighbouring (one client's data present or absent), where the sum has
  sensitivity C.
- "fixed": m of N clients drawn without replacement;
  ``SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))`` under
  replace-one neighbouring (Wang, Balle, Kasiviswanathan 2019,
  arXiv:1808.00087, Theorem 27), the only relation dp_accounting accepts for it.
  Replacing one client can move the sum by 2C, so the noise is z C / (2 C) =
  z / 2 times the sensitivity. dp_accounting 0.6 feeds ``GaussianDpEvent``'s
  multiplier (defined as s / C) straight into a formula that expects s /
  sensitivity, which would understate the RDP 4x (google/differential-privacy
  issue #378), hence the z / 2.

The two relations differ, so epsilons from the two samplings are not
comparable one to one.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

SAMPLINGS = ("fixed", "poisson")  # how clients join a DP round (above)


def add_gaussian_noise(
    total: np.ndarray, clip_norm: float, noise_multiplier: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """total (n,) sum of clipped updates -> (total + N(0, std^2 I) (n,) float64 new array, std).

    std = noise_multiplier * clip_norm (DP-FedAvg, Algorithm 1).
    """
    if clip_norm <= 0 or noise_multiplier < 0:
        raise ValueError(
            f"need clip_norm > 0 and noise_multiplier >= 0, got {clip_norm} and {noise_multiplier}"
        )
    total = np.asarray(total, dtype=np.float64)
    std = float(noise_multiplier * clip_norm)
    return total + rng.normal(0.0, std, size=total.shape), std


def dp_mean(noised_sum: np.ndarray, expected_clients: float) -> np.ndarray:
    """noised_sum (n,) -> (n,) float64 fixed-denominator mean noised_sum / (q N).

    Unbiased: each of the N clients joins with probability q, so
    E[sum over sampled clients of u_i] = q * sum_i u_i, and the noise has mean 0;
    dividing by the constant q N gives the population mean in expectation.
    The constant denominator also keeps the sensitivity at C / (q N).
    Dividing instead by the realised number (or total weight) of sampled
    clients would release an un-noised, data-dependent quantity: one client's
    presence or weight changes the denominator, which the noise on the sum
    does not cover, so the output leaks participation (and the ratio is biased).
    """
    if expected_clients <= 0:
        raise ValueError(f"expected_clients (q * N) must be > 0, got {expected_clients}")
    return np.asarray(noised_sum, dtype=np.float64) / expected_clients


@contextlib.contextmanager
def _quiet_absl():
    """dp_accounting logs an absl warning for every RDP order whose series it cannot
    sum (it drops that order, which only loosens the bound); once per round that
    floods the terminal."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class PrivacyAccountant:
    """epsilon(rounds) at ``delta`` for DP-FedAvg with noise multiplier z (see the module docstring).

    sampling="poisson" needs ``sampling_rate`` q in (0, 1]; sampling="fixed" needs
    ``clients_per_round`` m in [1, population]. Each call composes afresh.
    """

    def __init__(
        self,
        noise_multiplier: float,
        population: int,
        sampling: str,
        clients_per_round: int | None = None,
        sampling_rate: float | None = None,
        delta: float = 1e-5,
    ):
        if noise_multiplier <= 0 or population < 1 or not 0 < delta < 1:
            raise ValueError(
                "need noise_multiplier > 0, population >= 1 and 0 < delta < 1, got "
                f"{noise_multiplier}, {population}, {delta}"
            )
        self.noise_multiplier, self.population, self.delta = noise_multiplier, population, delta
        self.sampling = sampling
        self._event, self._relation = self._round_event(clients_per_round, sampling_rate)

    def _round_event(self, clients_per_round: int | None, sampling_rate: float | None):
        """The DpEvent of one round and the neighbouring relation it is accounted under."""
        import dp_accounting  # 1.5 s with scipy: paid only by runs that account for privacy

        z, n = self.noise_multiplier, self.population
        if self.sampling == "poisson":
            if sampling_rate is None or clients_per_round is not None or not 0 < sampling_rate <= 1:
                raise ValueError(f"poisson sampling needs only sampling_rate in (0, 1], got {sampling_rate}")
            event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(z))
            return event, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        if self.sampling == "fixed":
            if clients_per_round is None or sampling_rate is not None or not 1 <= clients_per_round <= n:
                raise ValueError(
                    f"fixed sampling needs only clients_per_round in [1, {n}], got {clients_per_round}"
                )
            gaussian = dp_accounting.GaussianDpEvent(z / 2)  # replace-one sensitivity is 2C
            event = dp_accounting.SampledWithoutReplacementDpEvent(n, clients_per_round, gaussian)
            return event, dp_accounting.NeighboringRelation.REPLACE_ONE
        raise ValueError(f"sampling must be 'poisson' or 'fixed', got {self.sampling!r}")

    def epsilon(self, rounds: int) -> float:
        """Epsilon after ``rounds`` >= 0 rounds (0 for none)."""
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds}")
        if rounds == 0:
            return 0.0
        import dp_accounting
        from dp_accounting import rdp

        accountant = rdp.RdpAccountant(neighboring_relation=self._relation)
        with _quiet_absl():
            accountant.compose(dp_accounting.SelfComposedDpEvent(self._event, rounds))
        return float(accountant.get_epsilon(self.delta))
