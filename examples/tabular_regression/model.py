"""A small MLP regressor for the tabular example: a user's own model.

(N, features) float32 rows -> (N, 1) predictions of the target, trained with
``model.loss: mse``. Named in a config as ``examples.tabular_regression.model:mlp_regressor``
(run from the repository root).
"""

from __future__ import annotations

from torch import nn


def mlp_regressor(features: int = 6, hidden: list[int] | None = None, outputs: int = 1) -> nn.Module:
    """Linear layers of widths ``hidden`` (default [64, 64]) with ReLU between, then a linear
    output of ``outputs`` values per row."""
    widths = [features, *(hidden if hidden is not None else [64, 64])]
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], outputs))
