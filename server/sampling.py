"""Seeded client sampling and the fixed reduction groups of a round.

The sample of round r depends only on (seed, r): uniformly without
replacement, as in FedAvg (McMahan et al. 2017, arXiv:1602.05629, Algorithm 1,
"S_t <- random set of m clients"). Groups are cut by position in the sorted
sample, never by worker, so partial sums add up the same whatever the pool.
"""

from __future__ import annotations

import numpy as np

PURPOSE_SAMPLING = 2


def sample_clients(seed: int, round_: int, num_clients: int, per_round: int) -> np.ndarray:
    """Sorted ids of the ``per_round`` clients sampled in ``round_``: (per_round,) int64."""
    if not 1 <= per_round <= num_clients:
        raise ValueError(f"per_round must be in [1, {num_clients}], got {per_round}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, round_, PURPOSE_SAMPLING]))
    chosen = rng.choice(num_clients, size=per_round, replace=False)
    return np.sort(chosen).astype(np.int64)


def reduction_groups(sorted_ids: np.ndarray, num_groups: int) -> list[np.ndarray]:
    """Cut the sorted sample into at most ``num_groups`` contiguous, non-empty groups."""
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    return [g for g in np.array_split(sorted_ids, num_groups) if len(g)]


def poisson_sample(seed: int, round_: int, num_clients: int, rate: float) -> np.ndarray:
    """Sorted ids of the clients included in ``round_``, each independently with
    probability ``rate`` (the sampling DP-SGD style accounting assumes; the count varies)."""
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, round_, PURPOSE_SAMPLING]))
    return np.flatnonzero(rng.random(num_clients) < rate).astype(np.int64)
