"""Choosing an engine: both build the same ModelSpec over the same flat vector."""

from __future__ import annotations

import numpy as np

from clients.models.spec import ModelSpec, init_params

ENGINES = ("torch", "numpy")


def build_model(spec: ModelSpec, engine: str, dtype=np.float32, device=None):
    """A model with flat ``params``/``grad``, ``loss_and_grad``, ``evaluate``, ``set_rng``.

    device: None for host memory, or a torch device for the torch engine's
    device-resident vectors (the numpy engine runs on the host only)."""
    if engine == "torch":
        from clients.models.torch_engine import TorchModel

        return TorchModel(spec, dtype, device)
    if spec.source is not None:
        raise ValueError(f"a module model runs on the torch engine only, not the {engine} engine")
    if device is not None:
        raise ValueError(f"the {engine} engine runs on the host only, not on {device}")
    if engine == "numpy":
        from clients.numpy_engine.model import NumpyModel

        return NumpyModel(spec, dtype)
    raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")


def initial_state(spec: ModelSpec, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's initial flat parameters (n,) and float buffers (m,), both float32: the
    built-in models' drawn in numpy from ``seed`` (no buffers); a module model's as its
    factory builds them under torch seeded from ``seed`` (the spec's source holds it)."""
    if spec.source is None:
        return init_params(spec, seed), np.zeros(0, np.float32)
    model = build_model(spec, "torch")
    return model.params.copy(), model.initial_buffers.copy()
