"""Element-wise activations and dropout, as their ``torch.nn`` namesakes.

Every function maps an array x of any shape (...) to one of the same shape and
dtype; the backward functions take the upstream gradient dy (...) and return
dx (...).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clients.numpy_engine.core import Module


def relu_forward(x: np.ndarray) -> np.ndarray:
    """max(x, 0). x: (...) -> (...)."""
    return np.maximum(x, 0)


def relu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dy where x > 0, else 0 (the subgradient 0 at x = 0, as torch). dy, x: (...) -> (...).

    (A product with the mask: ``np.where`` is ~10x slower here.)
    """
    return dy * (x > 0)


def leaky_relu_forward(x: np.ndarray, negative_slope: float) -> np.ndarray:
    """x where x > 0, else negative_slope * x. x: (...) -> (...).

    That is max(x, slope x) for slope <= 1 and min(x, slope x) above.
    """
    scaled = x * negative_slope
    return np.maximum(x, scaled) if negative_slope <= 1 else np.minimum(x, scaled)


def leaky_relu_backward(dy: np.ndarray, x: np.ndarray, negative_slope: float) -> np.ndarray:
    """dy where x > 0, else negative_slope * dy. dy, x: (...) -> (...)."""
    positive = x > 0
    return dy * positive + (dy * negative_slope) * ~positive


def sigmoid_forward(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow, as exp(min(x, 0)) / (1 + exp(-|x|)): that is
    1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) for x < 0, no exponent positive. x: (...) -> (...)."""
    return np.exp(np.minimum(x, 0)) / (1 + np.exp(-np.abs(x)))


def sigmoid_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dy * y * (1 - y), from the output y = sigmoid(x). dy, y: (...) -> (...)."""
    return dy * y * (1 - y)


def tanh_forward(x: np.ndarray) -> np.ndarray:
    """tanh(x). x: (...) -> (...)."""
    return np.tanh(x)


def tanh_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dy * (1 - y^2), from the output y = tanh(x). dy, y: (...) -> (...)."""
    return dy * (1 - y * y)


_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def gelu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The tanh approximation of GELU, ``torch.nn.GELU(approximate="tanh")`` (not the exact erf form):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    x: (...). Returns y (...) and t = tanh(...) (...), which the backward reuses.
    """
    t = np.tanh(_GELU_C * (x + _GELU_A * x * x * x))
    return 0.5 * x * (1 + t), t


def gelu_backward(dy: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """d/dx of ``gelu_forward``: 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2).

    dy, x, t: (...) -> (...).
    """
    return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_A * x * x))


def dropout_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator, dtype) -> np.ndarray:
    """Inverted-dropout multipliers: 0 with probability p, else 1 / (1 - p). Returns (shape), ``dtype``."""
    if p >= 1:
        return np.zeros(shape, dtype=dtype)
    keep = rng.random(shape) >= p
    return keep.astype(dtype) * np.asarray(1 / (1 - p), dtype=dtype)


@dataclass
class InputCache:
    x: np.ndarray  # (...): the input


@dataclass
class OutputCache:
    y: np.ndarray  # (...): the output, from which the derivative follows


@dataclass
class GELUCache:
    x: np.ndarray  # (...): the input
    t: np.ndarray  # (...): tanh(sqrt(2/pi) (x + 0.044715 x^3))


@dataclass
class DropoutCache:
    mask: np.ndarray | None  # (...): the multipliers of the last forward; None in eval mode


class ReLU(Module):
    """``torch.nn.ReLU``. (...) -> (...)."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: InputCache | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        self.cache = InputCache(x=x)
        return relu_forward(x)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self.cache is not None, "backward before forward"
        return relu_backward(dy, self.cache.x)


class LeakyReLU(Module):
    """``torch.nn.LeakyReLU(negative_slope)``. (...) -> (...)."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = negative_slope
        self.cache: InputCache | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        self.cache = InputCache(x=x)
        return leaky_relu_forward(x, self.negative_slope)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self.cache is not None, "backward before forward"
        return leaky_relu_backward(dy, self.cache.x, self.negative_slope)


class OutputActivation(Module):
    """An activation whose derivative follows from its output, which it keeps. (...) -> (...)."""

    def __init__(
        self,
        activate: Callable[[np.ndarray], np.ndarray],
        derivative: Callable[[np.ndarray, np.ndarray], np.ndarray],  # (dy, y) -> dx
    ) -> None:
        super().__init__()
        self.activate, self.derivative = activate, derivative
        self.cache: OutputCache | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        y = self.activate(x)
        self.cache = OutputCache(y=y)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self.cache is not None, "backward before forward"
        return self.derivative(dy, self.cache.y)


class Sigmoid(OutputActivation):
    """``torch.nn.Sigmoid``, stable for large |x|. (...) -> (...)."""

    def __init__(self) -> None:
        super().__init__(sigmoid_forward, sigmoid_backward)


class Tanh(OutputActivation):
    """``torch.nn.Tanh``. (...) -> (...)."""

    def __init__(self) -> None:
        super().__init__(tanh_forward, tanh_backward)


class GELU(Module):
    """GELU in its tanh approximation: ``torch.nn.GELU(approximate="tanh")``, not torch's default
    exact (erf) GELU. (...) -> (...)."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: GELUCache | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        y, t = gelu_forward(x)
        self.cache = GELUCache(x=x, t=t)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self.cache is not None, "backward before forward"
        return gelu_backward(dy, self.cache.x, self.cache.t)


class Dropout(Module):
    """``torch.nn.Dropout(p)``, inverted: in train mode each unit is zeroed with probability p and
    the survivors are scaled by 1 / (1 - p); in eval mode it is the identity. (...) -> (...).

    The mask is drawn from ``rng``, which the owning model sets (seeded per client and round)
    before each step; a train-mode forward with p > 0 and no ``rng`` raises ``ValueError``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p
        self.rng: np.random.Generator | None = None
        self.cache: DropoutCache | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        if not train or self.p == 0:
            self.cache = DropoutCache(mask=None)
            return x
        if self.rng is None:
            raise ValueError("Dropout in train mode needs a random generator: set module.rng before forward")
        mask = dropout_mask(x.shape, self.p, self.rng, x.dtype)
        self.cache = DropoutCache(mask=mask)
        return x * mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        assert self.cache is not None, "backward before forward"
        return dy if self.cache.mask is None else dy * self.cache.mask
