"""Server optimisers applied to the pseudo-gradient g = -(aggregated delta).

``ServerSGD`` with lr = 1 is FedAvg (McMahan et al. 2017): w <- w + mean delta.
With another lr it is the "server learning rate" of Reddi et al. 2021
(arXiv:2003.00295, Algorithm 2 with plain SGD): w <- w - eta * g.
"""

from __future__ import annotations

import numpy as np


class ServerSGD:
    def __init__(self, lr: float = 1.0):
        if lr <= 0:
            raise ValueError(f"server lr must be > 0, got {lr}")
        self.lr = lr

    def step(self, params: np.ndarray, pseudo_grad: np.ndarray) -> np.ndarray:
        """New float32 parameters; ``params`` (n,) is not modified."""
        updated = params.astype(np.float64) - self.lr * pseudo_grad
        return updated.astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to checkpoint (none for plain SGD)."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"ServerSGD has no state, got keys {sorted(state)}")
