"""Users' own models and losses for the loss and task tests, importable by import path
("tests.regression_models:NAME")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def regressor(num_features: int, width: int = 8, outputs: int = 1) -> nn.Module:
    """A small MLP mapping (B, num_features) to (B, outputs)."""
    return nn.Sequential(nn.Linear(num_features, width), nn.Tanh(), nn.Linear(width, outputs))


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """torch's own cross-entropy, named as a user's callable loss."""
    return F.cross_entropy(outputs, targets)


def smoothed_cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with label smoothing 0.1: another loss on the same labels."""
    return F.cross_entropy(outputs, targets, label_smoothing=0.1)


def either(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error against float targets, cross-entropy against class ids: a loss
    for either task, so that model.task alone decides which the run is."""
    if targets.is_floating_point():
        return F.mse_loss(outputs, targets)
    return F.cross_entropy(outputs, targets)


def per_sample_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Wrong on purpose: (B,) per-sample losses, not the batch mean."""
    return (outputs - targets) ** 2


class NextChar(nn.Module):
    """Next-character model for Shakespeare-format tokens (B, T): an embedding, and a linear
    layer on the last position's embedding, giving (B, vocab) logits."""

    def __init__(self, vocab: int = 80, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens)[:, -1])


class PerPosition(nn.Module):
    """Next-token logits at every position: tokens (B, T) to (B, T, vocab)."""

    def __init__(self, vocab: int = 6, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(tokens)))


def detached_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Wrong on purpose: the right value, but no gradient flows back to the outputs."""
    return F.mse_loss(outputs, targets).detach()


def nan_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Wrong on purpose: NaN whatever the batch."""
    return F.mse_loss(outputs, targets) * float("nan")


def mse_for_probes_only(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Wrong on purpose, and only past the run's two-row probe: raises on a training batch."""
    if len(targets) > 2:
        raise ValueError("a loss that fails on training batches")
    return F.mse_loss(outputs, targets)
