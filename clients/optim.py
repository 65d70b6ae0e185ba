"""Local optimisers over flat vectors, kept apart from the layers.

Pure vector math on the model's flat ``params`` and ``grad`` arrays, so every
engine shares them.
"""

from __future__ import annotations

import numpy as np


class SGD:
    """SGD with momentum and L2 weight decay, PyTorch's update rule:
    g <- g + wd * w;  b <- mu * b + g (b = g on the first step);  w <- w - lr * b.
    """

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self._buf: np.ndarray | None = None
        self._scratch: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the momentum buffer (a new client's local training starts fresh)."""
        self._buf = None

    def step(self, params: np.ndarray, grad: np.ndarray) -> None:
        """Update ``params`` in place from ``grad`` (both (n,) float32)."""
        if self._scratch is None or self._scratch.shape != grad.shape:
            self._scratch = np.empty_like(grad)
        direction = grad
        if self.weight_decay:
            direction = np.multiply(params, self.weight_decay, out=self._scratch)
            direction += grad
        if self.momentum:
            if self._buf is None:
                self._buf = direction.copy()
            else:
                self._buf *= self.momentum
                self._buf += direction
            direction = self._buf
        scaled = np.multiply(direction, self.lr, out=self._scratch)
        params -= scaled
