"""Dense layers: ``Linear`` (an affine map of the last axis) and ``Flatten``.

Shapes: N samples (any leading axes for ``Linear``), I input features, O
output features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clients.numpy_engine.core import Module, ParamShapes


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y = x w^T + b.

    x: (..., I); w: (O, I); b: (O,). Returns y: (..., O).
    """
    return x @ w.T + b


def linear_backward(
    dy: np.ndarray, x: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of ``linear_forward``.

    dy: (..., O); x: (..., I); w: (O, I).
    Returns dx: (..., I), dw: (O, I), db: (O,), the latter two summed over the leading axes.
    """
    dy2 = dy.reshape(-1, dy.shape[-1])
    x2 = x.reshape(-1, x.shape[-1])
    return dy @ w, dy2.T @ x2, dy2.sum(axis=0)


@dataclass
class LinearCache:
    x: np.ndarray  # (..., I): the input, for dw


class Linear(Module):
    """``torch.nn.Linear``: parameters "weight" (O, I) and "bias" (O,)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.cache: LinearCache | None = None

    def param_shapes(self) -> ParamShapes:
        return [("weight", (self.out_features, self.in_features)), ("bias", (self.out_features,))]

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """x: (..., I) -> (..., O)."""
        self.cache = LinearCache(x=x)
        return linear_forward(x, self.params["weight"], self.params["bias"])

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: (..., O) -> dx: (..., I); adds into grads "weight" and "bias"."""
        assert self.cache is not None, "backward before forward"
        dx, dw, db = linear_backward(dy, self.cache.x, self.params["weight"])
        self.grads["weight"] += dw
        self.grads["bias"] += db
        return dx


@dataclass
class FlattenCache:
    input_shape: tuple[int, ...]  # (N, ...): the shape to restore in backward


class Flatten(Module):
    """``torch.nn.Flatten``: (N, d1, d2, ...) -> (N, d1 * d2 * ...), C order."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: FlattenCache | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """x: (N, ...) -> (N, prod(...))."""
        self.cache = FlattenCache(input_shape=x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: (N, prod(...)) -> dx: (N, ...)."""
        assert self.cache is not None, "backward before forward"
        return dy.reshape(self.cache.input_shape)
