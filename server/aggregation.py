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


def combine_partial_sums(sums: list[np.ndarray], totals: list[float]) -> np.ndarray | None:
    """Weighted mean from per-group (sum of w_i * u_i, sum of w_i), added in list order.

    Returns None when no weight arrived (every update rejected or empty).
    """
    if len(sums) != len(totals):
        raise ValueError(f"{len(sums)} partial sums but {len(totals)} weight totals")
    weight = float(sum(totals))
    if weight <= 0:
        return None
    acc = np.zeros_like(sums[0], dtype=np.float64)
    for partial in sums:
        acc += partial
    return acc / weight
