"""The worst 10% of clients: how federated evaluation logs it (federated_accuracy_worst10,
federated_loss_worst10) and how a report recomputes it from clients.jsonl.

Kept free of torch and Ray: ``fedsim report`` imports it, and must stay light.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

WORST_SHARE = 0.1


def worst_share_mean(values: np.ndarray | Sequence[float], highest: bool = False) -> float:
    """The mean of the worst 10% of ``values`` (at least one): the lowest, or with
    ``highest`` the highest (losses). Sorted first, so the mean adds them in one order
    wherever it is computed."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    if highest:
        ordered = ordered[::-1]
    return float(ordered[: max(1, math.ceil(WORST_SHARE * len(ordered)))].mean())
