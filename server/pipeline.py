"""The server pipeline, composed from its units: per-client postprocessing
(clip, compress), aggregation (linear sum, DP noise, or a robust aggregator),
and the server optimiser. Nothing here knows about Ray.

Per-client postprocessing runs on the workers, on the server's behalf: the
simulator hands an ``UpdatePostprocessor`` to each worker, so an update is
clipped where it is produced and only sums travel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from server.aggregation import AGGREGATORS, PartialSums
from server.clipping import clip_update
from server.compression import compress, sent_bytes
from server.privacy import add_gaussian_noise, dp_mean
from server.pruning import sparse_bytes


@dataclass(frozen=True)
class ProcessedUpdate:
    update: np.ndarray  # (n,) float32: what the client sends
    norm: float  # L2 norm before clipping
    bytes: int  # bytes that would travel
    residual: np.ndarray | None  # error-feedback state for the client's next round


@dataclass(frozen=True)
class UpdatePostprocessor:
    """Clip to this round's norm (when clipping), then compress (with error feedback)."""

    clip: bool
    method: str = "none"  # compression: none, topk or qsgd8
    fraction: float = 0.01
    error_feedback: bool = True

    def sent_bytes(self, size: int, mask: np.ndarray | None = None) -> int:
        """Bytes ``process`` reports for any update of ``size`` entries under ``mask``: they
        depend on its length and the mask, never on its values (a trip's time is planned
        from them before anyone trains)."""
        if self.method == "none" and mask is not None:
            return min(4 * size, sparse_bytes(mask, mask))  # its size is the mask's alone
        return sent_bytes(self.method, size, self.fraction)

    def process(
        self, update: np.ndarray, clip_norm: float | None, rng, residual, mask=None
    ) -> ProcessedUpdate:
        """``mask``: the round's pruning mask; a masked update travels as its kept entries."""
        norm = float(np.linalg.norm(update))
        if self.clip:
            assert clip_norm is not None, "a run that clips gives every round its clip norm"
            update, norm = clip_update(update, clip_norm)
        if self.method == "none":
            size = update.size * 4
            if mask is not None:  # a sender picks the cheaper encoding
                size = min(size, sparse_bytes(update, mask))
            return ProcessedUpdate(update.astype(np.float32, copy=False), norm, size, None)
        carried = residual if self.error_feedback else None
        sent, new_residual, size = compress(update, self.method, self.fraction, rng, carried)
        return ProcessedUpdate(sent, norm, size, new_residual if self.error_feedback else None)


@dataclass(frozen=True)
class Aggregation:
    """Combines a round's group results into one (n,) float64 update.

    ``aggregator``: a name in AGGREGATORS; non-mean ones need per-client updates.
    ``weighting``: each update's weight in the mean and multi-Krum, "samples"
    (n_i: FedAvg, McMahan et al. 2017) or "uniform" (1: SCAFFOLD's and DP-FedAvg's
    plain average over the round's clients).
    DP (noise_multiplier > 0): Gaussian noise on the sum of clipped updates, then
    the fixed denominator ``expected_clients`` (McMahan et al. 2018).
    """

    aggregator: str = "mean"
    weighting: str = "samples"
    hyper: tuple[tuple[str, Any], ...] = ()
    noise_multiplier: float = 0.0
    expected_clients: float = 1.0

    @property
    def reduction(self) -> str:
        return "sum" if self.aggregator == "mean" else "stack"

    def combine(
        self, results: list, size: int, clip_norm: float | None, rng
    ) -> tuple[np.ndarray | None, dict]:
        if self.reduction == "stack":
            return self._robust(results)
        sums = PartialSums(size)
        for r in results:
            sums.add(r.weighted_sum, r.weight_total)
        if self.noise_multiplier == 0:
            return sums.mean(), {}
        assert clip_norm is not None, "DP noise is scaled by the clip norm: validation requires clipping"
        noised, std = add_gaussian_noise(sums.total, clip_norm, self.noise_multiplier, rng)
        return dp_mean(noised, self.expected_clients), {"noise_std": std}

    def _robust(self, results: list) -> tuple[np.ndarray | None, dict]:
        stacks = [r.stacked for r in results if r.stacked is not None]
        if not stacks:
            return None, {}
        updates = np.concatenate(stacks)
        weights = np.concatenate([r.stacked_weights for r in results if r.stacked is not None])
        return AGGREGATORS[self.aggregator](updates, weights, **dict(self.hyper)), {}
