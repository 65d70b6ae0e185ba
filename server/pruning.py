"""Unstructured weight pruning: importance scores, exact-count masks, a sparsity schedule.

A mask is a bool vector (n,) over the model's flat parameter vector, True =
kept. Only weight tensors (ndim >= 2) are ever pruned; biases and 1-d tensors
(batch-norm scales) always stay. Every score is (n,) float64, higher = keep.

- Magnitude: s = |w| (Han, Pool, Tran, Dally 2015, "Learning both Weights and
  Connections for Efficient Neural Networks", arXiv:1506.02626, Section 3).
- Connection sensitivity: s = |w ⊙ g| with g the mean loss gradient (Lee,
  Ajanthan, Torr 2019, "SNIP: Single-shot Network Pruning based on Connection
  Sensitivity", arXiv:1810.02340, Eq. 6, s_j = |g_j(w; D)| up to the
  normalisation, which does not change the ranking; g_j = w_j ∂L/∂w_j, Eq. 5).
- Squared gradient: s = mean over clients and steps of g² (Jiang, Wang, Valls,
  Ko, Lee, Leung, Tassiulas 2022, "Model Pruning Enables Efficient Federated
  Learning on Edge Devices" (PruneFL), arXiv:1909.12326, Section IV, the
  importance Σ g_j² summed over the local iterations and averaged at the server).
- Random: uniform scores, the baseline every method must beat.

``build_mask`` prunes EXACTLY round(sparsity × m) coordinates with the lowest
scores, m the number of prunable ones (globally, or per tensor with
scope="layer"); among equal scores the lower flat index goes first.

Gradual schedule (Zhu and Gupta 2017, "To prune, or not to prune",
arXiv:1710.01878, Eq. 1):
    s_t = s_f + (s_i − s_f) (1 − (t − t0) / (n Δt))³,  t ∈ {t0, t0 + Δt, ..., t0 + nΔt},
here with rounds for steps: t0 = start_round, t0 + nΔt = end_round, Δt = every.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clients.models.layout import Layout, ParamSlot

SCOPES = ("global", "layer")
SCHEDULES = ("one_shot", "gradual")  # PruningSchedule.schedule
# What ranks weights: server.pruning.method in the round pipeline, fedsim prune --method after a run.
PRUNING_SCORES = ("magnitude", "saliency", "squared_gradient", "random")


def _is_weight(slot: ParamSlot) -> bool:
    """A weight matrix/kernel: 'fc.weight', 'conv.weight', 'lstm.weight_ih_l0', ndim >= 2."""
    return slot.name.rsplit(".", 1)[-1].startswith("weight") and len(slot.shape) >= 2


def prunable(layout: Layout) -> np.ndarray:
    """-> bool (n,): True on weight tensors (ndim >= 2), False on biases and 1-d tensors."""
    out = np.zeros(layout.size, dtype=bool)
    for slot in layout:
        out[slot.offset : slot.stop] = _is_weight(slot)
    return out


def _vector(name: str, x: np.ndarray, n: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1 or (n is not None and x.shape != (n,)):
        want = "(n,)" if n is None else f"({n},)"
        raise ValueError(f"{name} must have shape {want}, got {x.shape}")
    return x


def magnitude_scores(params: np.ndarray) -> np.ndarray:
    """params (n,) -> |w| float64 (n,)."""
    return np.abs(_vector("params", params).astype(np.float64))


def saliency_scores(params: np.ndarray, mean_gradient: np.ndarray) -> np.ndarray:
    """params (n,), mean_gradient (n,) -> SNIP connection sensitivity |w ⊙ g| float64 (n,)."""
    w = _vector("params", params).astype(np.float64)
    g = _vector("mean_gradient", mean_gradient, w.size).astype(np.float64)
    return np.abs(w * g)


def squared_gradient_scores(mean_squared_gradient: np.ndarray) -> np.ndarray:
    """mean_squared_gradient (n,), >= 0 -> PruneFL importance, a float64 copy (n,)."""
    g2 = _vector("mean_squared_gradient", mean_squared_gradient).astype(np.float64)
    if np.any(g2 < 0):
        raise ValueError("mean_squared_gradient must be >= 0 everywhere")
    return g2


def random_scores(n: int, rng: np.random.Generator) -> np.ndarray:
    """-> uniform [0, 1) float64 (n,): the random-pruning baseline."""
    if n < 0:
        raise ValueError(f"need n >= 0, got {n}")
    return rng.random(n)


def _check_sparsity(sparsity: float) -> None:
    if not 0 <= sparsity < 1:
        raise ValueError(f"need 0 <= sparsity < 1 (1 would delete every weight), got {sparsity}")


def _prune_lowest(mask: np.ndarray, scores: np.ndarray, where: np.ndarray, sparsity: float) -> None:
    """Set mask False on the round(sparsity × len(where)) lowest-scored indices ``where``."""
    k = round(sparsity * where.size)
    order = np.argsort(scores[where], kind="stable")  # ties: lower flat index first
    mask[where[order[:k]]] = False


def build_mask(
    scores: np.ndarray, prunable: np.ndarray, sparsity: float, layout: Layout, scope: str = "global"
) -> np.ndarray:
    """scores (n,), prunable bool (n,) -> mask bool (n,), True = kept.

    Prunes exactly round(sparsity × m) prunable coordinates with the lowest
    scores (Python's round, halves to even), m = all prunable coordinates
    (scope="global") or those of each tensor separately (scope="layer").
    Non-prunable coordinates are always kept.
    """
    _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    scores = _vector("scores", scores, layout.size)
    prunable = _vector("prunable", prunable, layout.size)
    if prunable.dtype != bool:
        raise ValueError(f"prunable must be bool, got {prunable.dtype}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    mask = np.ones(layout.size, dtype=bool)
    if scope == "global":
        _prune_lowest(mask, scores, np.flatnonzero(prunable), sparsity)
    else:
        for slot in layout:
            where = slot.offset + np.flatnonzero(prunable[slot.offset : slot.stop])
            _prune_lowest(mask, scores, where, sparsity)
    return mask


def density(mask: np.ndarray, prunable: np.ndarray) -> float:
    """mask (n,), prunable (n,) bool -> kept prunable / prunable, in [0, 1]."""
    mask = _vector("mask", mask)
    prunable = _vector("prunable", prunable, mask.size).astype(bool)
    total = int(prunable.sum())
    if total == 0:
        raise ValueError("density needs at least one prunable coordinate")
    return int(np.count_nonzero(mask & prunable)) / total


def layer_densities(mask: np.ndarray, layout: Layout) -> dict[str, float]:
    """mask bool (n,) -> {name: kept fraction} for each prunable tensor, in layout order."""
    mask = _vector("mask", mask, layout.size).astype(bool)
    return {
        slot.name: int(np.count_nonzero(mask[slot.offset : slot.stop])) / slot.size
        for slot in layout
        if _is_weight(slot) and slot.size > 0
    }


def _check_schedule(start_round: int, end_round: int, every: int) -> None:
    if start_round > end_round:
        raise ValueError(f"need start_round <= end_round, got {start_round} > {end_round}")
    if every < 1:
        raise ValueError(f"need every >= 1, got {every}")


def is_pruning_round(round_: int, start_round: int, end_round: int, every: int) -> bool:
    """True at start_round, start_round + every, ... up to end_round, and at end_round itself."""
    _check_schedule(start_round, end_round, every)
    if not start_round <= round_ <= end_round:
        return False
    return (round_ - start_round) % every == 0 or round_ == end_round


def polynomial_sparsity(
    round_: int, initial: float, final: float, start_round: int, end_round: int, every: int
) -> float:
    """Zhu & Gupta Eq. 1 at the last pruning step <= round_: initial before start_round, final from end_round.

    Between steps the value is held; end_round is a step even when
    end_round − start_round is not a multiple of ``every``.
    """
    _check_schedule(start_round, end_round, every)
    if not 0 <= initial <= final < 1:
        raise ValueError(f"need 0 <= initial <= final < 1, got initial={initial}, final={final}")
    if round_ < start_round:
        return float(initial)
    if round_ >= end_round:
        return float(final)
    step = start_round + (round_ - start_round) // every * every
    progress = (step - start_round) / (end_round - start_round)
    return float(final + (initial - final) * (1 - progress) ** 3)


@dataclass(frozen=True)
class PruningSchedule:
    """When the round pipeline prunes, to what sparsity, and how weights are ranked.

    method: what ranks weights (magnitude, saliency, squared_gradient, random);
    scope: "global" or "layer"; schedule: "one_shot" (prune to ``sparsity`` at
    ``start_round``) or "gradual" (Zhu & Gupta's polynomial from
    ``initial_sparsity`` at ``start_round`` to ``sparsity`` at ``end_round``,
    a step every ``every`` rounds).
    """

    method: str
    scope: str
    schedule: str
    initial_sparsity: float
    sparsity: float
    start_round: int
    end_round: int
    every: int

    @property
    def uses_gradients(self) -> bool:
        return self.method in ("saliency", "squared_gradient")

    def target(self, round_: int) -> float | None:
        """The sparsity to prune to at the end of ``round_``, or None when no step is due."""
        if self.schedule == "one_shot":
            return self.sparsity if round_ == self.start_round else None
        if not is_pruning_round(round_, self.start_round, self.end_round, self.every):
            return None
        return polynomial_sparsity(
            round_, self.initial_sparsity, self.sparsity, self.start_round, self.end_round, self.every
        )


def sparse_bytes(vector: np.ndarray, mask: np.ndarray) -> int:
    """vector (n,), mask bool (n,) -> bytes for kept float32 values + an n-bit bitmap: 4k + ceil(n / 8)."""
    vector = _vector("vector", vector)
    mask = _vector("mask", mask, vector.size)
    return 4 * int(np.count_nonzero(mask)) + math.ceil(vector.size / 8)
