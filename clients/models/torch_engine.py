"""The PyTorch engine: layers built from a ModelSpec over one flat parameter tensor.

Every ``nn.Parameter`` is a view into one flat tensor that shares memory with
a numpy array, and every ``.grad`` is a view into one flat gradient array:
after ``backward`` the whole gradient is one numpy vector, and optimisers are
vector math over it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clients.models.gradflow import layer_flow
from clients.models.spec import LayerSpec, ModelSpec

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": lambda: nn.GELU(approximate="tanh"),  # the numpy engine's GELU
    "leaky_relu": nn.LeakyReLU,
}
_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


class _Residual(nn.Module):
    """y = x + body(x)."""

    def __init__(self, body: list[nn.Module]):
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return x + self.body(x)


class _BatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over (N, C) or (N, C, H, W), like the numpy engine's."""

    def _check_input_dim(self, x):
        if x.dim() not in (2, 4):
            raise ValueError(f"batchnorm expects (N, C) or (N, C, H, W) inputs, got {tuple(x.shape)}")


class _LSTM(nn.LSTM):
    """Batch-first LSTM that returns only the last layer's outputs (N, T, H)."""

    def forward(self, x):
        return super().forward(x)[0]


class _LastStep(nn.Module):
    def forward(self, x):
        return x[:, -1]


def _module(layer: LayerSpec) -> nn.Module:
    a = layer.args
    builders = {
        "linear": lambda: nn.Linear(a["in_features"], a["out_features"]),
        "conv2d": lambda: nn.Conv2d(
            a["in_channels"], a["out_channels"], a["kernel"], stride=a.get("stride", 1), padding=a["padding"]
        ),
        "maxpool2d": lambda: nn.MaxPool2d(a["kernel"]),
        "avgpool2d": lambda: nn.AvgPool2d(a["kernel"]),
        "flatten": nn.Flatten,
        "dropout": lambda: nn.Dropout(a["p"]),
        "batchnorm": lambda: _BatchNorm(a["num_features"]),
        "residual": lambda: _Residual([_module(child) for child in layer.body]),
        "embedding": lambda: nn.Embedding(a["num_embeddings"], a["embedding_dim"]),
        "lstm": lambda: _LSTM(a["input_size"], a["hidden_size"], a["num_layers"], batch_first=True),
        "last_step": _LastStep,
        **_ACTIVATIONS,
    }
    if layer.kind not in builders:
        raise ValueError(f"torch engine has no layer kind {layer.kind!r}")
    return builders[layer.kind]()


class TorchModel:
    """A model whose parameters and gradients are flat numpy arrays.

    ``params``: (n,) writable, shared with the torch parameters.
    ``grad``:   (n,) shared with every parameter's ``.grad``.
    ``dtype``: float32 for training, float64 for gradient checks.
    """

    engine = "torch"

    def __init__(self, spec: ModelSpec, dtype=np.float32):
        self.spec = spec
        self.layout = spec.layout()
        self.params = self.layout.zeros(dtype)
        self.grad = self.layout.zeros(dtype)
        self.net = nn.Sequential(*[_module(layer) for layer in spec.layers]).to(_DTYPES[np.dtype(dtype)])
        self._bind_flat_views()
        self.track_gradients = False
        self.last_flow: dict[str, tuple[float, float]] = {}

    def _bind_flat_views(self) -> None:
        flat_p, flat_g = torch.from_numpy(self.params), torch.from_numpy(self.grad)
        for layer_spec, module in zip(self.spec.layers, self.net, strict=True):
            named = list(module.named_parameters())
            specs = layer_spec.param_specs()
            if len(named) != len(specs):
                raise AssertionError(f"{layer_spec.kind}: torch has {len(named)} tensors, spec {len(specs)}")
            for (torch_name, _), pspec in zip(named, specs, strict=True):
                slot = self.layout[pspec.name]
                param = nn.Parameter(flat_p[slot.offset : slot.stop].view(slot.shape))
                param.grad = flat_g[slot.offset : slot.stop].view(slot.shape)
                owner_name, _, attr = torch_name.rpartition(".")
                setattr(module.get_submodule(owner_name) if owner_name else module, attr, param)

    def set_rng(self, rng: np.random.Generator) -> None:
        """Seed dropout from the client's generator (torch's RNG is per worker process)."""
        torch.manual_seed(int(rng.integers(2**63 - 1)))

    def loss_and_grad(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean cross-entropy on the batch; writes d(loss)/d(params) into ``self.grad``.

        x: (B, *input_shape) float or int64 tokens; y: (B,) int64.
        With ``track_gradients``, ``last_flow[layer] = (|dL/dh|, |dL/dθ|)``.
        """
        self.grad.fill(0.0)
        self.net.train()
        signals: dict[str, torch.Tensor] = {}
        logits = self._forward(torch.from_numpy(x), signals if self.track_gradients else None)
        loss = F.cross_entropy(logits, torch.from_numpy(y))
        loss.backward()
        if self.track_gradients:
            self.last_flow = layer_flow(self.spec, self.layout, self.grad, signals)
        return float(loss.detach())

    def _forward(self, h: torch.Tensor, signals: dict | None) -> torch.Tensor:
        for layer_spec, module in zip(self.spec.layers, self.net, strict=True):
            h = module(h)
            if signals is not None and layer_spec.param_specs():
                h.register_hook(lambda g, name=layer_spec.name: signals.__setitem__(name, g.norm().item()))
        return h

    @torch.no_grad()
    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float, int]:
        """Summed cross-entropy, correct count and sample count over (x, y) in batches."""
        self.net.eval()
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
            yb = torch.from_numpy(np.ascontiguousarray(y[start : start + batch_size]))
            logits = self.net(xb)
            loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(dim=1) == yb).sum())
        return loss_sum, correct, len(x)
