"""The torch engine's losses: cross_entropy, mse, or a user's callable (``model.loss``).

A callable is ``loss(outputs, targets) -> scalar tensor``, the batch's mean loss, with
``outputs`` the model's output for a batch and ``targets`` its labels: (B,) int64 class
ids (classification; (B, T) class ids per position for sequence models), or float32
targets (B,) / (B, k) (regression). Under regression a model's (B, 1) outputs are viewed
as (B,) when the targets are (B,), so an output layer of width 1 fits a single target;
per-position logits (B, T, C) are handed over as (B, C, T), the layout torch's
cross-entropy takes. Importing the callable runs the user's code:
that happens when the run starts, on the driver and on every worker.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from clients.errors import ModelError
from clients.models.spec import BUILT_IN_LOSSES, LossSource
from clients.user_code import resolve

KEY = "model.loss"
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def load_loss(source: LossSource) -> LossFn:
    """The function ``source`` names; a callable's module imported (from ``search_path``
    too, when given)."""
    if source.name == "cross_entropy":
        return F.cross_entropy
    if source.name == "mse":
        return F.mse_loss
    return resolve(source.name, KEY, source.search_path)


def fitted(outputs: torch.Tensor, targets: torch.Tensor, source: LossSource) -> torch.Tensor:
    """The outputs as the loss takes them: (B, 1) viewed as (B,) for (B,) regression targets,
    (B, T, C) logits as (B, C, T) for (B, T) class ids."""
    if source.is_regression and targets.dim() == 1 and outputs.dim() == 2 and outputs.shape[1] == 1:
        return outputs.view(-1)
    if not source.is_regression and targets.dim() == 2 and outputs.dim() == 3:
        return outputs.transpose(1, 2)
    return outputs


def check_loss(loss: LossFn, outputs: torch.Tensor, targets: torch.Tensor, source: LossSource) -> None:
    """Refuse a callable loss that raises on, or does not return a finite scalar tensor
    differentiable in the outputs for, a probe batch (its model's ``outputs`` and their
    ``targets``): caught here, such a loss is one line rather than a failure in every client."""
    if source.name in BUILT_IN_LOSSES:
        return
    outputs = outputs.detach().requires_grad_(True)
    try:
        with torch.enable_grad():
            value = loss(fitted(outputs, targets, source), targets)
    except Exception as exc:
        raise ModelError(
            f"{KEY}: {source.name}(outputs {tuple(outputs.shape)}, targets {tuple(targets.shape)}) "
            f"raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(value, torch.Tensor) or value.dim() != 0 or not value.is_floating_point():
        got = (
            f"a tensor of shape {tuple(value.shape)}"
            if isinstance(value, torch.Tensor)
            else type(value).__name__
        )
        raise ModelError(
            f"{KEY}: {source.name} returned {got}; it must return the batch's mean loss as a scalar "
            "float tensor (shape ())"
        )
    if not torch.isfinite(value.detach()):
        raise ModelError(
            f"{KEY}: {source.name} returned {float(value.detach())} on a probe batch; a loss must be finite"
        )
    if value.grad_fn is None:
        raise ModelError(
            f"{KEY}: {source.name}'s value does not depend on the outputs (no gradient flows back: "
            "detached, or computed outside torch); training needs d(loss)/d(outputs)"
        )
