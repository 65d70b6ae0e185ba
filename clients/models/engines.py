"""Choosing an engine: both build the same ModelSpec over the same flat vector."""

from __future__ import annotations

import numpy as np

from clients.models.spec import ModelSpec

ENGINES = ("torch", "numpy")


def build_model(spec: ModelSpec, engine: str, dtype=np.float32):
    """A model with flat ``params``/``grad``, ``loss_and_grad``, ``evaluate``, ``set_rng``."""
    if engine == "torch":
        from clients.models.torch_engine import TorchModel

        return TorchModel(spec, dtype)
    if engine == "numpy":
        from clients.numpy_engine.model import NumpyModel

        return NumpyModel(spec, dtype)
    raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
