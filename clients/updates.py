"""Arithmetic on client updates (flat float32 vectors) that workers and the server's
asynchronous buffer share: the weighted running sum and the update's L2 norm.

Importing it loads no torch: server/ stays numpy-only to import. ``add_weighted``
borrows torch's fused axpy when it first runs, because a group's sum must have the
same bits whether a worker or the asynchronous buffer adds it up.
"""

from __future__ import annotations

import math

import numpy as np


def add_weighted(total: np.ndarray, delta: np.ndarray, weight: float) -> None:
    """total += weight * delta, in float32, in one fused pass (torch's axpy on the same
    memory; numpy would need two passes and a temporary)."""
    import torch  # here, not at the top: see the module docstring

    torch.from_numpy(total).add_(torch.from_numpy(delta), alpha=float(np.float32(weight)))


def update_norm(update: np.ndarray) -> float:
    """L2 norm in one BLAS pass; NaN or Inf anywhere makes it non-finite, and so does a
    squared norm beyond float32's range (|u| > 1.8e19), which no usable update has."""
    return math.sqrt(float(np.dot(update, update)))
