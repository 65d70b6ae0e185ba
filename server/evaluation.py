"""Centralised evaluation of the global model on the server's held-out test set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clients.models.norm_statistics import calibrated


@dataclass(frozen=True)
class EvalResult:
    accuracy: float | None  # None under regression, which has no accuracy
    loss: float
    num_samples: int


def evaluate(model, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch_size: int) -> EvalResult:
    """Load ``params`` into ``model`` and measure mean loss and accuracy (None for a
    regression model) on (x, y), batched. Batch-statistics norm layers normalise by the
    statistics of the whole test set, so the batch size changes no result."""
    model.load_params(params)
    with calibrated(model, x, batch_size):
        loss_sum, correct, count = model.evaluate(x, y, batch_size)
    if count == 0:
        raise ValueError("cannot evaluate on an empty test set")
    return EvalResult(None if correct is None else correct / count, loss_sum / count, count)
