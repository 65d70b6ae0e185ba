"""Aggregators: pure functions over arrays.

FedAvg's weighted mean (McMahan et al. 2017, arXiv:1602.05629, Algorithm 1:
w_{t+1} = sum_k (n_k / n) w^k_{t+1}), written over deltas: the aggregate is
sum_k n_k * delta_k / sum_k n_k. It is linear, so workers pre-sum their
groups and the server only adds the partial sums, in group order.
"""

from __future__ import annotations

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
