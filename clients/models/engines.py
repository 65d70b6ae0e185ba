"""Choosing an engine: both build the same ModelSpec over the same flat vector."""

from __future__ import annotations

import numpy as np

from clients.models.spec import ModelSpec

ENGINES = ("torch", "numpy")


def build_model(spec: ModelSpec, engine: str, dtype=np.float32, device=None):
    """A model with flat ``params``/``grad``, ``loss_and_grad``, ``evaluate``, ``set_rng``.

    device: None for host memory, or a torch device for the torch engine's
    device-resident vectors (the numpy engine runs on the host only)."""
    if engine == "torch":
        from clients.models.torch_engine import TorchModel

        return TorchModel(spec, dtype, device)
    if device is not None:
        raise ValueError(f"the {engine} engine runs on the host only, not on {device}")
    if engine == "numpy":
        from clients.numpy_engine.model import NumpyModel

        return NumpyModel(spec, dtype)
    raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
