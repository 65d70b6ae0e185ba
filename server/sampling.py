"""Seeded client sampling and the fixed reduction groups of a round.

The sample of round r depends only on (seed, r): uniformly without
replacement, as in FedAvg (McMahan et al. 2017, arXiv:1602.05629, Algorithm 1,
"S_t <- random set of m clients"). Groups are cut by position in the sorted
sample, never by worker, so partial sums add up the same whatever the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clients.streams import Stream
from server.system import LocalWork, RoundPlan, SystemModel, plan_round, uniform_sample


def sample_clients(seed: int, round_: int, num_clients: int, per_round: int) -> np.ndarray:
    """Sorted ids of the ``per_round`` clients sampled in ``round_``: (per_round,) int64."""
    if not 1 <= per_round <= num_clients:
        raise ValueError(f"per_round must be in [1, {num_clients}], got {per_round}")
    return uniform_sample(seed, round_, np.arange(num_clients, dtype=np.int64), per_round)


def reduction_groups(sorted_ids: np.ndarray, num_groups: int) -> list[np.ndarray]:
    """Cut the sorted sample into at most ``num_groups`` contiguous, non-empty groups."""
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    # More groups than clients would only add empty ones (dropped here): never build them.
    return [g for g in np.array_split(sorted_ids, min(num_groups, max(len(sorted_ids), 1))) if len(g)]


def poisson_sample(seed: int, round_: int, num_clients: int, rate: float) -> np.ndarray:
    """Sorted ids of the clients included in ``round_``, each independently with
    probability ``rate`` (the sampling DP-SGD style accounting assumes; the count varies)."""
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, round_, Stream.SAMPLING]))
    return np.flatnonzero(rng.random(num_clients) < rate).astype(np.int64)


@dataclass(frozen=True)
class ClientSampler:
    """Who takes part in each round: ``per_round`` of ``num_clients`` uniformly (FedAvg),
    each with probability per_round / num_clients (``poisson``, for DP accounting), or
    as the ``system`` model plans it from each client's ``work`` in a round."""

    seed: int
    num_clients: int
    per_round: int
    poisson: bool = False
    system: SystemModel | None = None
    work: LocalWork | None = None

    def sample(self, round_: int) -> tuple[np.ndarray, RoundPlan | None]:
        """Sorted participant ids, and the system model's plan when it decided them."""
        if self.poisson:
            return poisson_sample(
                self.seed, round_, self.num_clients, self.per_round / self.num_clients
            ), None
        if self.system is None or not self.system.active:
            return sample_clients(self.seed, round_, self.num_clients, self.per_round), None
        if self.work is None:
            raise ValueError("the system model needs each client's work per round")
        plan = plan_round(self.seed, round_, self.num_clients, self.per_round, self.work, self.system)
        return plan.participants, plan

    def simulated_seconds(self, participants: np.ndarray) -> float:
        """A round without a heterogeneity model on the simulated clock: its slowest
        participant's work at the median speed (0 when there is no work to time)."""
        if self.work is None or not len(participants):
            return 0.0
        speed = self.system.speed if self.system is not None else SystemModel().speed
        return float(self.work.samples[participants].max() / speed)
