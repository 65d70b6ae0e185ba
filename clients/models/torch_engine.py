"""The PyTorch engine: layers built from a ModelSpec over one flat parameter tensor.

Every ``nn.Parameter`` is a view into one flat tensor and every ``.grad`` a
view into one flat gradient tensor: after ``backward`` the whole gradient is
one vector, and optimisers are vector math over it. On the host (no device
given) both flat tensors share memory with numpy arrays, which is what
``params`` and ``grad`` are. With a device (CUDA) they are tensors resident
there, and ``params``/``grad`` are those tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clients.models.arrays import DeviceShard, FlatVector, HostArrays, tensor_from_numpy, to_numpy
from clients.models.gradflow import layer_flow
from clients.models.losses import fitted, load_loss
from clients.models.module_model import bind_flat, build_module
from clients.models.norm_statistics import ChannelMoments, fix_statistics
from clients.models.spec import LayerSpec, ModelSpec

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
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
    """Batch norm over (N, C) or (N, C, H, W), like the numpy engine's. Without running
    statistics it normalises by the batch's own, in evaluation too; there a batch of one
    value per channel (which torch refuses) is its own mean, so it maps to the bias."""

    def _check_input_dim(self, x):
        if x.dim() not in (2, 4):
            raise ValueError(f"batchnorm expects (N, C) or (N, C, H, W) inputs, got {tuple(x.shape)}")

    # A whole set's (mean, biased var), set by TorchModel.calibrate, and the moments gathered
    # meanwhile (clients/models/norm_statistics.py).
    fixed: tuple[torch.Tensor, torch.Tensor] | None = None
    gathered: ChannelMoments | None = None

    def fix(self, statistics: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Evaluate with (mean, biased var) (C,) of a whole set, or (None) each batch's own."""
        if statistics is None:
            self.fixed = None
            return
        mean, var = (
            torch.as_tensor(s, dtype=self.weight.dtype, device=self.weight.device) for s in statistics
        )
        self.fixed = (mean, var)

    def forward(self, x):
        if not self.training and not self.track_running_stats:
            self._check_input_dim(x)
            if self.gathered is not None:
                # on the host, in float64 as the numpy engine gathers them: one batch's activations cross
                self.gathered = self.gathered.plus(ChannelMoments.of(to_numpy(x)))
            if self.fixed is not None:
                return F.batch_norm(x, *self.fixed, self.weight, self.bias, False, 0.0, self.eps)
            if x.numel() == x.shape[1]:
                return self.bias.view(1, -1, *([1] * (x.dim() - 2))).expand_as(x) + 0 * x
        return super().forward(x)


class _LSTM(nn.LSTM):
    """Batch-first LSTM that returns only the last layer's outputs (N, T, H)."""

    def forward(self, x):
        return super().forward(x)[0]


class _LastStep(nn.Module):
    def forward(self, x):
        return x[:, -1]


def layer_module(layer: LayerSpec) -> nn.Module:
    """The torch module of one layer spec (gradcheck builds its twin of a layer with it)."""
    a = layer.args
    builders: dict[str, Callable[[], nn.Module]] = {
        "linear": lambda: nn.Linear(a["in_features"], a["out_features"]),
        "conv2d": lambda: nn.Conv2d(
            a["in_channels"], a["out_channels"], a["kernel"], stride=a.get("stride", 1), padding=a["padding"]
        ),
        "maxpool2d": lambda: nn.MaxPool2d(a["kernel"]),
        "avgpool2d": lambda: nn.AvgPool2d(a["kernel"]),
        "flatten": nn.Flatten,
        "dropout": lambda: nn.Dropout(a["p"]),
        "batchnorm": lambda: _BatchNorm(
            a["num_features"], track_running_stats=not a.get("batch_stats", False)
        ),
        "residual": lambda: _Residual([layer_module(child) for child in layer.body]),
        "embedding": lambda: nn.Embedding(a["num_embeddings"], a["embedding_dim"]),
        "lstm": lambda: _LSTM(a["input_size"], a["hidden_size"], a["num_layers"], batch_first=True),
        "last_step": _LastStep,
        **_ACTIVATIONS,
    }
    if layer.kind not in builders:
        raise ValueError(f"torch engine has no layer kind {layer.kind!r}")
    return builders[layer.kind]()


def _record_signal(name: str, signals: dict, module: nn.Module, inputs, output) -> None:
    """Forward hook: note |dL/d output| of a top-level unit once backward reaches it."""
    if isinstance(output, torch.Tensor) and output.requires_grad:
        output.register_hook(lambda g: signals.__setitem__(name, g.norm().item()))


class TorchModel(HostArrays):
    """A model whose parameters and gradients are flat vectors: a built-in spec's layers, or
    a user's module (``spec.source``) with every parameter rebound as a view.

    ``params``: (n,) writable, shared with the torch parameters.
    ``grad``:   (n,) shared with every parameter's ``.grad``.
    ``buffers``: (m,) a module model's float buffers (running statistics), shared with
    them; ``initial_buffers`` (m,) their values as built. m = 0 for the built-in models.
    ``dtype``: float32 for training, float64 for gradient checks.
    ``device``: None keeps both as numpy arrays in host memory; a torch device
    (``cuda:0``, or ``cpu`` to run the device code path on the host) makes them
    tensors resident there.
    """

    engine = "torch"

    def __init__(self, spec: ModelSpec, dtype=np.float32, device: torch.device | str | None = None):
        self.spec = spec
        self.layout = spec.layout()
        self.device = None if device is None else torch.device(device)
        self.device_name = "cpu" if device is None else str(self.device)
        host_params, host_grad = self.layout.zeros(dtype), self.layout.zeros(dtype)
        flat_p, flat_g = torch.from_numpy(host_params), torch.from_numpy(host_grad)
        self.params: FlatVector
        self.grad: FlatVector
        if self.device is None:
            self.params, self.grad = host_params, host_grad
        else:
            flat_p, flat_g = flat_p.to(self.device), flat_g.to(self.device)
            self.params, self.grad = flat_p, flat_g
        if spec.source is None:
            layers = nn.Sequential(*[layer_module(layer) for layer in spec.layers]).to(
                _DTYPES[np.dtype(dtype)]
            )
            layers.to(flat_p.device)
            self.net: nn.Module = layers
            self._bind_flat_views(layers, flat_p, flat_g)
        else:
            self.net = build_module(spec.source).to(_DTYPES[np.dtype(dtype)]).to(flat_p.device)
            bind_flat(self.net, self.layout, flat_p, flat_g, buffers=False)
        self._bind_buffers(dtype)
        self.loss_fn = load_loss(spec.loss)
        self.track_gradients = False
        self.last_flow: dict[str, tuple[float, float]] = {}

    def _bind_flat_views(self, layers: nn.Sequential, flat_p: torch.Tensor, flat_g: torch.Tensor) -> None:
        for layer_spec, module in zip(self.spec.layers, layers, strict=True):
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

    def _bind_buffers(self, dtype) -> None:
        """``buffers`` (m,): a module model's float buffers (batch-norm running statistics) as
        one flat vector, host numpy or device tensor like ``params``; ``initial_buffers`` their
        values as built (empty for the built-in models, which keep none)."""
        buffer_layout = self.spec.buffer_layout()
        host = buffer_layout.zeros(dtype)
        flat = torch.from_numpy(host) if self.device is None else torch.from_numpy(host).to(self.device)
        if buffer_layout.size:
            bind_flat(self.net, buffer_layout, flat, None, buffers=True)
        self.buffers: FlatVector = host if self.device is None else flat
        self.initial_buffers = to_numpy(flat).copy()

    def load_buffers(self, values: np.ndarray) -> None:
        """Set the float buffers (m,) from host values."""
        if isinstance(self.buffers, np.ndarray):  # no device
            self.buffers[:] = values
        else:
            self.buffers.copy_(tensor_from_numpy(values, torch.device("cpu")))

    # Array side: host models inherit HostArrays' numpy behaviour; a device model moves data.

    def to_engine(self, array):
        if self.device is None or array is None:
            return array
        return tensor_from_numpy(array, self.device)

    def load_params(self, values: np.ndarray) -> None:
        if isinstance(self.params, np.ndarray):  # no device
            self.params[:] = values
        else:
            # Straight from host memory into the resident vector: no device temporary.
            self.params.copy_(tensor_from_numpy(values, torch.device("cpu")))

    def shard_data(self, x: np.ndarray, y: np.ndarray, shard: np.ndarray):
        if self.device is None:
            return super().shard_data(x, y, shard)
        return DeviceShard(x, y, shard, self.device)

    def _tensor(self, array) -> torch.Tensor:
        if not isinstance(array, torch.Tensor):
            array = torch.from_numpy(array) if self.device is None else tensor_from_numpy(array, self.device)
        return array.long() if array.dtype == torch.uint8 else array  # compact token ids -> embedding's int64

    def set_rng(self, rng: np.random.Generator) -> None:
        """Seed dropout from the client's generator (torch's RNG is per worker process)."""
        seed = int(rng.integers(2**63 - 1))
        if self.device is None or self.device.type == "cpu":
            # The same draws as torch.manual_seed, without its per-call queueing of every
            # accelerator's seeding: ~0.2 ms a client, 10% of a small module model's round.
            torch.default_generator.manual_seed(seed)
        else:
            torch.manual_seed(seed)

    def loss_and_grad(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean loss (``spec.loss``: cross-entropy by default) on the batch; writes
        d(loss)/d(params) into ``self.grad``.

        x: (B, *input_shape) float or int64 tokens; y: (B,) int64 class ids, or float32
        targets (B,) / (B, k) (numpy arrays, or tensors already on the model's device).
        With ``track_gradients``, ``last_flow[layer] = (|dL/dh|, |dL/dθ|)``.
        """
        self.grad[...] = 0
        self.net.train()
        signals: dict[str, float] = {}
        logits = self._forward(self._tensor(x), signals if self.track_gradients else None)
        targets = self._tensor(y)
        loss = self.loss_fn(fitted(logits, targets, self.spec.loss), targets)
        loss.backward()
        if self.track_gradients:
            self.last_flow = layer_flow(self.spec, self.layout, to_numpy(self.grad), signals)
        return float(loss.detach())

    def _forward(self, h: torch.Tensor, signals: dict | None) -> torch.Tensor:
        if self.spec.source is not None:
            return self._module_forward(h, signals)
        layers = cast(nn.Sequential, self.net)  # what a built-in spec builds
        for layer_spec, module in zip(self.spec.layers, layers, strict=True):
            h = module(h)
            if signals is not None and layer_spec.param_specs():
                h.register_hook(lambda g, name=layer_spec.name: signals.__setitem__(name, g.norm().item()))
        return h

    def _module_forward(self, x: torch.Tensor, signals: dict | None) -> torch.Tensor:
        """A module model's logits; with ``signals``, |dL/dh| at each top-level unit's output."""
        if signals is None:
            return self.net(x)
        units = set(self.spec.tracked_layers())
        handles = [
            child.register_forward_hook(partial(_record_signal, name, signals))
            for name, child in self.net.named_children()
            if name in units
        ]
        try:
            return self.net(x)
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def calibrate(self, x: np.ndarray | None, batch_size: int) -> None:
        """Make batch-statistics norm layers evaluate with the statistics of all of ``x``
        (the evaluated set), read ``batch_size`` rows at a time; ``None`` goes back to each
        batch's own (clients/models/norm_statistics.py). A module model has none."""
        if self.spec.source is not None:
            return
        self.net.eval()
        layers = cast(nn.Sequential, self.net)
        norms = [
            (module, partial(self._forward_through, layers[: i + 1]))
            for i, top in enumerate(layers)
            for module in top.modules()
            if isinstance(module, _BatchNorm) and not module.track_running_stats
        ]
        fix_statistics(norms, np.zeros(0) if x is None else x, batch_size)

    def _forward_through(self, layers: nn.Module, x: np.ndarray) -> torch.Tensor:
        return layers(self._tensor(np.ascontiguousarray(x)))

    @torch.no_grad()
    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, int | None, int]:
        """Summed loss (each sample's mean over its outputs), correct count (None under
        regression, which has no accuracy) and sample count over (x, y) in batches. With
        class ids per position y (N, T) the samples are the N * T positions (tokens)."""
        self.net.eval()
        source = self.spec.loss
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            xb = self._tensor(np.ascontiguousarray(x[start : start + batch_size]))
            yb = self._tensor(np.ascontiguousarray(y[start : start + batch_size]))
            logits = fitted(self.net(xb), yb, source)
            if source.name == "cross_entropy":
                loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
            elif source.name == "mse":
                loss_sum += float(F.mse_loss(logits, yb, reduction="sum")) * len(yb) / max(1, yb.numel())
            else:  # the batch's mean, over rows (regression) or over class ids
                weight = len(yb) if source.is_regression else yb.numel()
                loss_sum += float(self.loss_fn(logits, yb)) * weight
            if not source.is_regression:
                correct += int((logits.argmax(dim=1) == yb).sum())
        count = len(x) if source.is_regression else int(np.prod(y.shape))
        return loss_sum, None if source.is_regression else correct, count
