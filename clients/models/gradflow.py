"""Gradient-flow diagnostics shared by both engines: per-layer norms of the
back-propagated signal dL/dh (at each parametrised layer's output) and of the
layer's parameter gradient."""

from __future__ import annotations

import numpy as np

from clients.models.layout import Layout
from clients.models.spec import ModelSpec


def layer_flow(
    spec: ModelSpec, layout: Layout, grad: np.ndarray, signals: dict[str, float]
) -> dict[str, tuple[float, float]]:
    """{layer name: (|dL/dh|, |dL/dθ|)} for every parametrised layer, in model order."""
    flow = {}
    for layer in spec.layers:
        specs = layer.param_specs()
        if specs:
            squares = sum(float(np.vdot(v, v)) for v in (layout.view(grad, p.name) for p in specs))
            flow[layer.name] = (signals.get(layer.name, 0.0), float(np.sqrt(squares)))
    return flow
