"""The residual block y = x + body(x) (He et al., 2015, arXiv:1512.03385, eq. 1)."""

from __future__ import annotations

import numpy as np

from clients.numpy_engine.core import Module, ParamShapes


class ResidualBlock(Module):
    """y = x + body(x), the body a chain of modules whose output has x's shape. (...) -> (...).

    Parameters are the body's, each local name prefixed by its module's index in
    the body ("0.weight", "2.bias"), as the state-dict names of a torch
    ``nn.Sequential`` body. The block keeps no cache of its own: the body's
    modules keep theirs, and the skip path needs none.
    """

    def __init__(self, body: list[Module]) -> None:
        super().__init__()
        self.body = list(body)

    def param_shapes(self) -> ParamShapes:
        return [(f"{i}.{name}", shape) for i, m in enumerate(self.body) for name, shape in m.param_shapes()]

    def bind(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Checks the names, then hands each child its views under its own local names."""
        super().bind(params, grads)
        for i, m in enumerate(self.body):
            names = [name for name, _ in m.param_shapes()]
            if names:
                m.bind({n: params[f"{i}.{n}"] for n in names}, {n: grads[f"{i}.{n}"] for n in names})

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """x: (...) -> x + body(x): (...)."""
        h = x
        for m in self.body:
            h = m.forward(h, train)
        if h.shape != x.shape:
            raise ValueError(f"residual body maps {x.shape} to {h.shape}; the skip needs equal shapes")
        return x + h

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: (...) -> dx = dy (skip) + the body's backward of dy: (...)."""
        g = dy
        for m in reversed(self.body):
            below = m.backward(g)
            assert below is not None, "a residual body has no embedding"
            g = below
        return dy + g
