"""Local optimisers over flat vectors, kept apart from the layers.

Pure vector math on the model's flat ``params`` and ``grad``, so every engine
shares them: numpy arrays on the host, or torch tensors on a device (only
in-place operators both support, plus ``clients.models.arrays``).
"""

from __future__ import annotations

from clients.models import arrays
from clients.models.arrays import FlatVector


class SGD:
    """SGD with momentum and L2 weight decay, PyTorch's update rule:
    g <- g + wd * w;  b <- mu * b + g (b = g on the first step);  w <- w - lr * b.
    """

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self._buf: FlatVector | None = None
        self._scratch: FlatVector | None = None

    def reset(self) -> None:
        """Forget the momentum buffer (a new client's local training starts fresh)."""
        self._buf = self._scratch = None

    def step(self, params, grad) -> None:
        """Update ``params`` in place from ``grad`` (both (n,) float32)."""
        if self._scratch is None or self._scratch.shape != grad.shape:
            self._scratch = arrays.zeros_like(grad)
        direction = grad
        if self.weight_decay:
            direction = arrays.scaled_into(self._scratch, params, self.weight_decay)
            direction += grad
        if self.momentum:
            if self._buf is None:
                self._buf = arrays.copy(direction)
            else:
                self._buf *= self.momentum
                self._buf += direction
            direction = self._buf
        params -= arrays.scaled_into(self._scratch, direction, self.lr)


class Adam:
    """Adam (Kingma & Ba 2015, arXiv:1412.6980, Algorithm 1) with PyTorch's L2 weight decay:
    g <- g + wd * w;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    w <- w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    """

    def __init__(
        self,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self._m: FlatVector | None = None
        self._v: FlatVector | None = None
        self._t = 0

    def reset(self) -> None:
        self._m = self._v = None
        self._t = 0

    def step(self, params, grad) -> None:
        """Update ``params`` in place from ``grad`` (both (n,))."""
        b1, b2 = self.betas
        g = grad + self.weight_decay * params if self.weight_decay else grad
        if self._m is None or self._v is None:  # both are, until the first step
            self._m, self._v = arrays.zeros_like(params), arrays.zeros_like(params)
        self._t += 1
        self._m *= b1
        self._m += (1 - b1) * g
        self._v *= b2
        self._v += (1 - b2) * (g * g)
        m_hat_scale = self.lr / (1 - b1**self._t)
        # Times the reciprocal, not divided by the scalar: torch divides by a scalar that
        # way itself, so numpy must too for the two to give the same bits.
        denom = arrays.sqrt(self._v * (1 / (1 - b2**self._t)))
        denom += self.eps
        params -= m_hat_scale * self._m / denom


def make_optimizer(name: str, lr: float, momentum: float, weight_decay: float):
    """The local optimiser a client starts each round with (fresh state)."""
    if name == "sgd":
        return SGD(lr, momentum, weight_decay)
    if name == "adam":
        return Adam(lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: sgd, adam")
