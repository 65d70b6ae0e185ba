"""Users' own models for the tests, importable by factory string ("tests.module_models:NAME")."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from clients.models.spec import Architecture, build_spec, init_params


def builtin_mlp(input_shape: list[int], hidden: int, num_classes: int, seed: int) -> nn.Module:
    """The built-in ``mlp`` with one hidden layer, as a user would write it (flatten, fc1,
    relu, fc2), holding the built-in model's initial bits for ``seed``: so a run of it and a
    run of ``model.name: mlp`` start from the same vector, and any difference between them
    could only come from how a module model is trained on the flat vector."""
    flat_in = int(np.prod(input_shape))
    net = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(flat_in, hidden),
            act=nn.ReLU(),
            fc2=nn.Linear(hidden, num_classes),
        )
    )
    spec = build_spec("mlp", tuple(input_shape), num_classes, Architecture(hidden=[hidden]))
    start = torch.from_numpy(init_params(spec, seed))
    torch.nn.utils.vector_to_parameters(start, net.parameters())
    return net


def small_net(num_classes: int = 10, width: int = 16, dropout: float = 0.0) -> nn.Module:
    """A small MLP with torch's own initialisation (and optional dropout) for 8x8 digits."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, num_classes)
    )


class BatchNormNet(nn.Module):
    """conv, batch norm (running statistics), relu, pooling, a linear head: for 8x8 digits."""

    def __init__(self, channels: int = 4, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels * 16, num_classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(nn.functional.max_pool2d(h, 2).flatten(1))


def tied(num_classes: int = 10) -> nn.Module:
    """Two linear layers sharing one weight (a tied parameter is one entry of the vector)."""
    first, second = nn.Linear(64, 64), nn.Linear(64, 64)
    second.weight = first.weight
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), second, nn.ReLU(), nn.Linear(64, num_classes))


def not_a_module() -> int:
    return 3


def wrong_output() -> nn.Module:
    """Seven logits where digits need ten."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 7))


def raises(**kwargs) -> nn.Module:
    raise RuntimeError("no GPU in this factory's dreams")


NOT_CALLABLE = 5
