"""The PyTorch engine: layers built from a ModelSpec over one flat parameter tensor.

Every ``nn.Parameter`` is a view into one flat float32 tensor that shares
memory with a numpy array, and every ``.grad`` is a view into one flat
gradient array: after ``backward`` the whole gradient is one numpy vector,
and optimisers are vector math over it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clients.models.spec import LayerSpec, ModelSpec

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def _module(layer: LayerSpec) -> nn.Module:
    a = layer.args
    if layer.kind == "linear":
        return nn.Linear(a["in_features"], a["out_features"])
    if layer.kind == "conv2d":
        return nn.Conv2d(a["in_channels"], a["out_channels"], a["kernel"], padding=a["padding"])
    if layer.kind == "maxpool2d":
        return nn.MaxPool2d(a["kernel"])
    if layer.kind == "flatten":
        return nn.Flatten()
    if layer.kind in _ACTIVATIONS:
        return _ACTIVATIONS[layer.kind]()
    raise ValueError(f"torch engine has no layer kind {layer.kind!r}")


class TorchModel:
    """A model whose parameters and gradients are flat numpy arrays.

    ``params``: (n,) float32, writable, shared with the torch parameters.
    ``grad``:   (n,) float32, shared with every parameter's ``.grad``.
    """

    def __init__(self, spec: ModelSpec, device: str = "cpu"):
        if device != "cpu":
            raise ValueError("the flat-vector torch engine currently runs on cpu only")
        self.spec = spec
        self.layout = spec.layout()
        self.params = self.layout.zeros()
        self.grad = self.layout.zeros()
        self.net = nn.Sequential(*[_module(layer) for layer in spec.layers])
        self._bind_flat_views()

    def _bind_flat_views(self) -> None:
        flat_p = torch.from_numpy(self.params)
        flat_g = torch.from_numpy(self.grad)
        for layer_spec, module in zip(self.spec.layers, self.net, strict=True):
            for pname, shape in layer_spec.param_shapes():
                attr = pname.rsplit(".", 1)[1]
                slot = self.layout[pname]
                param = nn.Parameter(flat_p[slot.offset : slot.stop].view(shape))
                param.grad = flat_g[slot.offset : slot.stop].view(shape)
                setattr(module, attr, param)

    def loss_and_grad(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy on the batch; writes d(loss)/d(params) into ``self.grad``.

        x: (B, *input_shape) float32; y: (B,) int64.
        """
        self.grad.fill(0.0)
        logits = self.net(torch.from_numpy(x))
        loss = F.cross_entropy(logits, torch.from_numpy(y))
        loss.backward()
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float, int]:
        """Summed cross-entropy, correct count and sample count over (x, y) in batches."""
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[start : start + batch_size])
            yb = torch.from_numpy(y[start : start + batch_size])
            logits = self.net(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
        return loss_sum, correct, len(x)
