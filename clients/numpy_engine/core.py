"""The module contract of the chain-rule engine.

Backpropagation is the chain rule applied module by module: a module with
output o = f(i) receives dL/do and returns dL/di = dL/do . do/di, adding its
parameter gradients on the way.

- ``forward(x, train)`` returns the output and keeps a *named* cache (a small
  dataclass) of what backward needs.
- ``backward(dy)`` returns dx and ADDS (``+=``, never ``=``) into its parameter
  gradients, which are views into the model's flat gradient vector.
- Parameters are views into the model's flat parameter vector, bound once with
  ``bind``; a module never owns an optimiser.
- Modules compute in the dtype of their parameters / inputs: float32 for
  training, float64 for gradient checks.
"""

from __future__ import annotations

import numpy as np

ParamShapes = list[tuple[str, tuple[int, ...]]]


class Module:
    """Base class: parameter bookkeeping; subclasses implement forward/backward."""

    def __init__(self) -> None:
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def param_shapes(self) -> ParamShapes:
        """(local name, shape) of each parameter, in flat-vector order (PyTorch's names)."""
        return []

    def bind(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Attach views into the flat parameter and gradient vectors, by local name."""
        expected = {name for name, _ in self.param_shapes()}
        if set(params) != expected or set(grads) != expected:
            raise ValueError(
                f"{type(self).__name__} needs parameters {sorted(expected)}, got {sorted(params)}"
            )
        self.params, self.grads = params, grads

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError


def bind_standalone(module: Module, dtype=np.float64, rng: np.random.Generator | None = None):
    """Give ``module`` its own flat (params, grads) vectors, params drawn U(-0.5, 0.5).

    For tests and gradient checks of one module outside a model. Returns the
    flat (params, grads) arrays whose views the module now uses.
    """
    rng = rng or np.random.default_rng(0)
    shapes = module.param_shapes()
    size = sum(int(np.prod(s)) for _, s in shapes)
    flat_p = rng.uniform(-0.5, 0.5, size).astype(dtype)
    flat_g = np.zeros(size, dtype=dtype)
    params, grads, offset = {}, {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        params[name] = flat_p[offset : offset + n].reshape(shape)
        grads[name] = flat_g[offset : offset + n].reshape(shape)
        offset += n
    module.bind(params, grads)
    return flat_p, flat_g
