"""Batch-statistics norm layers evaluated with the statistics of a whole set, read in batches.

The built-in mlp's batch norm keeps no running statistics (they would tie results to
which worker trained whom). Evaluating it with each batch's own statistics would make
the result depend on the evaluation batch size, so before evaluating, each such layer
is fixed to the per-channel mean and biased variance of its input over the whole
evaluated set (the server's test set; a client's training rows in federated
evaluation): the convention of training-mode normalisation, over the set instead of
one batch.

The set is read ``batch_size`` rows at a time, so memory stays that of one batch:
per-channel count, mean and M2 (the sum of squared deviations) are combined batch by
batch in float64 with Chan, Golub & LeVeque's (1979) pairwise update. Layers are fixed
one at a time in forward order, because a later layer's input depends on the earlier
layers' fixed statistics. Batches change only the float64 summation order, so the
statistics agree across batch sizes to ~1e-15 relative, far below the float32 they
are cast to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ChannelMoments:
    """Per-channel statistics of ``count`` values a channel: ``mean`` and ``m2`` (C,) float64."""

    count: int
    mean: np.ndarray
    m2: np.ndarray  # sum of squared deviations from ``mean``

    @classmethod
    def of(cls, x: np.ndarray) -> ChannelMoments:
        """x: (N, C) or (N, C, H, W), per channel over every other axis."""
        axes = (0, *range(2, x.ndim))
        wide = x.astype(np.float64)
        mean = wide.mean(axis=axes)
        centred = wide - mean.reshape((1, -1) + (1,) * (x.ndim - 2))
        return cls(x.size // x.shape[1], mean, np.sum(centred * centred, axis=axes))

    def plus(self, other: ChannelMoments) -> ChannelMoments:
        """The moments of both sets' values together (Chan et al.)."""
        if not self.count:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / count)
        return ChannelMoments(count, mean, m2)

    def mean_var(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, biased variance), each (C,) float64."""
        return self.mean, self.m2 / self.count


NO_VALUES = ChannelMoments(0, np.zeros(0), np.zeros(0))


class SetStatisticsNorm(Protocol):
    """A batch-statistics norm layer as both engines have it: while ``gathered`` is not
    None, an evaluation forward adds its input's moments to it; ``fix`` sets the
    (mean, biased variance) it evaluates with, None for each batch's own."""

    gathered: ChannelMoments | None

    def fix(self, statistics: tuple[np.ndarray, np.ndarray] | None) -> None: ...


def fix_statistics(
    norms: Sequence[tuple[SetStatisticsNorm, Callable[[np.ndarray], object]]], x: np.ndarray, batch_size: int
) -> None:
    """Fix each of ``norms`` (in forward order, each with the evaluation forward pass that
    reaches its input) to the statistics of its input over all of ``x``, read in
    batches of ``batch_size`` rows. An empty ``x`` leaves each batch its own."""
    for norm, _ in norms:
        norm.fix(None)
    if not len(x):
        return
    for norm, forward_to in norms:
        norm.gathered = NO_VALUES
        try:
            for start in range(0, len(x), batch_size):
                forward_to(x[start : start + batch_size])
            statistics = norm.gathered.mean_var()
        finally:
            norm.gathered = None
        norm.fix(statistics)


class Calibrates(Protocol):
    def calibrate(self, x: np.ndarray | None, batch_size: int) -> None: ...


@contextmanager
def calibrated(model: Calibrates, x: np.ndarray, batch_size: int) -> Iterator[None]:
    """Evaluate ``model``'s batch-statistics norm layers with the statistics of all of
    ``x`` inside the block, each batch's own again after it."""
    model.calibrate(x, batch_size)
    try:
        yield
    finally:
        model.calibrate(None, batch_size)
