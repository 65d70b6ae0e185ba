"""Centralised evaluation of the global model on the server's held-out test set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float
    num_samples: int


def evaluate(model, params: np.ndarray, x: np.ndarray, y: np.ndarray, batch_size: int) -> EvalResult:
    """Load ``params`` into ``model`` and measure mean loss and accuracy on (x, y), batched."""
    model.load_params(params)
    loss_sum, correct, count = model.evaluate(x, y, batch_size)
    if count == 0:
        raise ValueError("cannot evaluate on an empty test set")
    return EvalResult(correct / count, loss_sum / count, count)
