"""Aggregators: pure functions over arrays.

FedAvg's weighted mean (McMahan et al. 2017, arXiv:1602.05629, Algorithm 1:
w_{t+1} = sum_k (n_k / n) w^k_{t+1}), written over deltas: the aggregate is
sum_k n_k * delta_k / sum_k n_k. It is linear, so workers pre-sum their
groups and the server only adds the partial sums, in group order.

Robust aggregators, all ``(updates (k, n), weights (k,), **hyper) -> (n,) float64``;
each docstring says whether it uses ``weights``:

- coordinate-wise median and beta-trimmed mean: Yin, Chen, Ramchandran,
  Bartlett 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
  Statistical Rates", arXiv:1803.01498, Definitions 1 and 2 (med{x^i}_j and
  trmean_beta{x^i}_j).
- Krum and multi-Krum: Blanchard, El Mhamdi, Guerraoui, Stainer 2017,
  "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
  NeurIPS 2017 (no arXiv id), Section 4: score(i) = sum_{i -> j} ||V_i - V_j||^2
  over the k - f - 2 nearest neighbours j of i; Krum picks the lowest score,
  and the paper's multi-Krum variant averages the m lowest.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def weighted_mean(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(k, n) updates, (k,) non-negative weights -> (n,) float64 weighted mean."""
    updates = np.asarray(updates, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if updates.ndim != 2 or weights.shape != (updates.shape[0],):
        raise ValueError(f"need updates (k, n) and weights (k,), got {updates.shape} and {weights.shape}")
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    return weights @ updates / weights.sum()


class PartialSums:
    """Adds per-group (sum of w_i * u_i, sum of w_i) in the order given, in float64.

    The caller adds groups in group order, so the result does not depend on
    which worker computed which group or when it arrived.
    """

    def __init__(self, size: int):
        self.total = np.zeros(size, dtype=np.float64)
        self.weight = 0.0

    def add(self, weighted_sum: np.ndarray, weight: float) -> None:
        self.total += weighted_sum
        self.weight += weight

    def mean(self) -> np.ndarray | None:
        """The weighted mean, or None when no weight arrived (all rejected or empty)."""
        return self.total / self.weight if self.weight > 0 else None


def combine_partial_sums(sums: list[np.ndarray], totals: list[float]) -> np.ndarray | None:
    """Weighted mean from per-group partial sums, added in list order (see PartialSums)."""
    if len(sums) != len(totals):
        raise ValueError(f"{len(sums)} partial sums but {len(totals)} weight totals")
    if not sums:
        return None
    acc = PartialSums(len(sums[0]))
    for partial, weight in zip(sums, totals, strict=True):
        acc.add(partial, weight)
    return acc.mean()


def _robust_inputs(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Checks (k, n) updates against (k,) weights; returns the updates as float64."""
    updates = np.asarray(updates, dtype=np.float64)
    weights = np.asarray(weights)
    if updates.ndim != 2 or updates.shape[0] == 0 or weights.shape != (updates.shape[0],):
        raise ValueError(
            f"need updates (k, n) with k >= 1 and weights (k,), got {updates.shape} and {weights.shape}"
        )
    return updates


def coordinate_median(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(k, n) updates -> (n,) coordinate-wise median (Yin et al. 2018, Definition 1).

    Unweighted: ``weights`` (k,) is only checked for shape. For even k the median
    of a coordinate is the mean of its two middle values.
    """
    return np.median(_robust_inputs(updates, weights), axis=0)


def trimmed_mean(updates: np.ndarray, weights: np.ndarray, beta: float) -> np.ndarray:
    """(k, n) updates -> (n,) coordinate-wise beta-trimmed mean (Yin et al. 2018, Definition 2).

    Per coordinate, drops the b = floor(beta * k) largest and b smallest values and
    averages the k - 2b left. Unweighted: ``weights`` (k,) is only checked for shape.
    Needs 0 <= beta < 0.5 and k - 2b >= 1.
    """
    updates = _robust_inputs(updates, weights)
    if not 0 <= beta < 0.5:
        raise ValueError(f"trimmed mean needs 0 <= beta < 0.5, got beta={beta}")
    k = updates.shape[0]
    b = int(np.floor(beta * k))
    if k - 2 * b < 1:
        raise ValueError(f"trimmed mean needs k - 2*floor(beta*k) >= 1, got k={k}, beta={beta}")
    return np.sort(updates, axis=0)[b : k - b].mean(axis=0)


def pairwise_sq_distances(updates: np.ndarray) -> np.ndarray:
    """(k, n) float64 -> (k, k) squared L2 distances |a|^2 + |b|^2 - 2ab, clipped at 0.

    One matrix product; the diagonal is set to exactly 0.
    """
    sq = np.einsum("ij,ij->i", updates, updates)
    dist = sq[:, None] + sq[None, :] - 2.0 * (updates @ updates.T)
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def krum_scores(updates: np.ndarray, f: int) -> np.ndarray:
    """(k, n) updates -> (k,) Krum scores: sum of squared distances to the k - f - 2 nearest others.

    Needs k > 2f + 2 and f >= 0 (Blanchard et al. 2017, Section 4).
    """
    k = updates.shape[0]
    if f < 0 or k <= 2 * f + 2:
        raise ValueError(f"Krum needs k > 2f + 2 clients, got k={k}, f={f}")
    dist = pairwise_sq_distances(updates)
    np.fill_diagonal(dist, np.inf)  # a client is not its own neighbour
    nearest = np.sort(dist, axis=1)[:, : k - f - 2]
    return nearest.sum(axis=1)


def krum(updates: np.ndarray, weights: np.ndarray, f: int) -> np.ndarray:
    """(k, n) updates -> (n,) the single update with the lowest Krum score.

    Tolerates f Byzantine clients; needs k > 2f + 2. Ties go to the lowest index.
    Unweighted: ``weights`` (k,) is only checked for shape.
    """
    updates = _robust_inputs(updates, weights)
    return updates[int(np.argmin(krum_scores(updates, f)))].copy()


def multi_krum(updates: np.ndarray, weights: np.ndarray, f: int, m: int) -> np.ndarray:
    """(k, n) updates, (k,) weights -> (n,) weighted mean of the m lowest-scoring updates.

    Sample-weighted: the m selected updates are averaged with their ``weights``
    (as FedAvg's ``weighted_mean``). Needs k > 2f + 2 and 1 <= m <= k; ties in
    score go to the lowest index. m = 1 is Krum.
    """
    updates = _robust_inputs(updates, weights)
    k = updates.shape[0]
    if not 1 <= m <= k:
        raise ValueError(f"multi-Krum needs 1 <= m <= k, got m={m}, k={k}")
    chosen = np.argsort(krum_scores(updates, f), kind="stable")[:m]
    return weighted_mean(updates[chosen], np.asarray(weights)[chosen])


AGGREGATORS: dict[str, Callable[..., np.ndarray]] = {
    "mean": weighted_mean,
    "median": coordinate_median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multi_krum": multi_krum,
}
# Robust aggregators that rank or trim coordinates and ignore the weights (multi_krum averages with them).
UNWEIGHTED_AGGREGATORS = ("median", "trimmed_mean", "krum")
