"""The built-in ``mlp`` written as a user's module, for bench/overhead.py's module row.

Factory string ``bench.module_mlp:mlp``: the same layers as ``model.name: mlp`` with
``model.hidden`` (flatten, then per width linear + relu, then the linear head), the
parameters under the built-in's names, holding the built-in initial vector for
``seed``. A run of it and a run of the built-in then do the same arithmetic from the
same bits, so what differs between their times per round is the module path's cost.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from clients.models.spec import Architecture, build_spec, init_params


def mlp(input_shape: list[int], hidden: list[int], num_classes: int, seed: int) -> nn.Module:
    """Flatten, (fc{i}, relu) per hidden width, fc{len(hidden)+1}: (B, *input_shape) -> (B, num_classes)."""
    widths = [int(np.prod(input_shape)), *hidden]
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    for i in range(len(hidden)):
        layers += [(f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1])), (f"act{i + 1}", nn.ReLU())]
    layers.append((f"fc{len(hidden) + 1}", nn.Linear(widths[-1], num_classes)))
    net = nn.Sequential(OrderedDict(layers))
    spec = build_spec("mlp", tuple(input_shape), num_classes, Architecture(hidden=list(hidden)))
    torch.nn.utils.vector_to_parameters(torch.from_numpy(init_params(spec, seed)), net.parameters())
    return net
