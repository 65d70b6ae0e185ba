"""A model of the chain-rule engine: modules built from a ModelSpec, chained end to end.

Parameters and gradients are two flat arrays; every module's tensors are views
into them, bound by the spec's names. ``loss_and_grad`` runs forward through
the chain, the fused softmax cross-entropy, and backward through the chain in
reverse, each module adding its parameter gradients into the flat gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np

from clients.models.arrays import HostArrays
from clients.models.gradflow import layer_flow
from clients.models.norm_statistics import fix_statistics
from clients.models.spec import LayerSpec, ModelSpec
from clients.numpy_engine.activations import GELU, Dropout, LeakyReLU, ReLU, Sigmoid, Tanh
from clients.numpy_engine.conv import AvgPool2d, Conv2d, MaxPool2d
from clients.numpy_engine.core import Module
from clients.numpy_engine.dense import Flatten, Linear
from clients.numpy_engine.losses import mse, softmax_cross_entropy
from clients.numpy_engine.norm import BatchNorm
from clients.numpy_engine.recurrent import LSTM, Embedding, LastStep
from clients.numpy_engine.residual import ResidualBlock

_ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid, "gelu": GELU, "leaky_relu": LeakyReLU}


def build_module(layer: LayerSpec) -> Module:
    """The numpy module for one layer spec (unbound)."""
    a = layer.args
    builders = {
        "linear": lambda: Linear(a["in_features"], a["out_features"]),
        "conv2d": lambda: Conv2d(
            a["in_channels"], a["out_channels"], a["kernel"], stride=a.get("stride", 1), padding=a["padding"]
        ),
        "maxpool2d": lambda: MaxPool2d(a["kernel"]),
        "avgpool2d": lambda: AvgPool2d(a["kernel"]),
        "flatten": Flatten,
        "dropout": lambda: Dropout(a["p"]),
        "batchnorm": lambda: BatchNorm(a["num_features"], batch_stats=a.get("batch_stats", False)),
        "residual": lambda: ResidualBlock([build_module(child) for child in layer.body]),
        "embedding": lambda: Embedding(a["num_embeddings"], a["embedding_dim"]),
        "lstm": lambda: LSTM(a["input_size"], a["hidden_size"], a["num_layers"]),
        "last_step": LastStep,
        **_ACTIVATIONS,
    }
    if layer.kind not in builders:
        raise ValueError(f"numpy engine has no layer kind {layer.kind!r}")
    return builders[layer.kind]()


def _walk(module: Module) -> Iterator[Module]:
    """``module`` and the modules of its body, depth first, in forward order."""
    yield module
    for child in getattr(module, "body", []):
        yield from _walk(child)


class NumpyModel(HostArrays):
    """The chain-rule engine's model with flat ``params`` and ``grad`` (n,) arrays.

    ``dtype``: float32 for training, float64 for gradient checks.
    """

    engine = "numpy"

    def __init__(self, spec: ModelSpec, dtype=np.float32):
        self.spec = spec
        self.layout = spec.layout()
        self.params = self.layout.zeros(dtype)
        self.grad = self.layout.zeros(dtype)
        self.modules = [build_module(layer) for layer in spec.layers]
        for layer, module in zip(spec.layers, self.modules, strict=True):
            self._bind(layer, module)
        self.track_gradients = False
        self.last_flow: dict[str, tuple[float, float]] = {}

    def _bind(self, layer: LayerSpec, module: Module) -> None:
        specs = layer.param_specs()
        if not specs:
            return
        prefix = f"{layer.name}."
        params = {p.name.removeprefix(prefix): self.layout.view(self.params, p.name) for p in specs}
        grads = {p.name.removeprefix(prefix): self.layout.view(self.grad, p.name) for p in specs}
        module.bind(params, grads)

    def set_rng(self, rng: np.random.Generator) -> None:
        """Dropout masks of the next steps come from ``rng`` (seeded per client and round)."""
        for module in self._all_modules():
            if isinstance(module, Dropout):
                module.rng = rng

    def _all_modules(self) -> Iterator[Module]:
        """Every module, nested ones after their block, in forward order."""
        for top in self.modules:
            yield from _walk(top)

    def calibrate(self, x: np.ndarray | None, batch_size: int) -> None:
        """Make batch-statistics norm layers evaluate with the statistics of all of ``x``
        (the evaluated set), read ``batch_size`` rows at a time; ``None`` goes back to each
        batch's own (clients/models/norm_statistics.py)."""
        norms = [
            (module, partial(self._forward_through, i))
            for i, top in enumerate(self.modules)
            for module in _walk(top)
            if isinstance(module, BatchNorm) and module.batch_stats
        ]
        fix_statistics(norms, np.zeros(0) if x is None else x, batch_size)

    def _forward_through(self, last: int, x: np.ndarray) -> np.ndarray:
        """An evaluation forward pass of ``x`` through the top-level modules up to ``last``."""
        return self.forward(x, False, self.modules[: last + 1])

    def forward(self, x: np.ndarray, train: bool, modules: list[Module] | None = None) -> np.ndarray:
        """Logits (B, num_classes) for inputs (B, *input_shape); with ``modules``, the output
        of those first modules instead."""
        h = x if self.spec.input_dtype == "int64" else x.astype(self.params.dtype, copy=False)
        for module in self.modules if modules is None else modules:
            h = module.forward(h, train)
        return h

    def backward(self, dlogits: np.ndarray) -> dict[str, float]:
        """Chain rule from the logits back to the input; returns |dL/dh| per tracked layer,
        the signal arriving at each parametrised layer's output."""
        signals = {}
        grad = dlogits
        for layer, module in zip(reversed(self.spec.layers), reversed(self.modules), strict=True):
            if self.track_gradients and layer.param_specs():
                signals[layer.name] = float(np.linalg.norm(grad))
            below = module.backward(grad)
            if below is None:  # an embedding: no gradient for integer inputs
                break
            grad = below
        return signals

    def _loss(self, outputs: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """(mean loss, d loss / d outputs): cross-entropy against class ids y (B,), or mean
        squared error against float targets y (B,) / (B, k) (outputs (B, 1) for (B,))."""
        if self.spec.loss.name == "cross_entropy":
            return softmax_cross_entropy(outputs, y)
        if self.spec.loss.name != "mse":
            raise ValueError(
                f"the numpy engine has no loss {self.spec.loss.name!r}; it has cross_entropy, mse"
            )
        loss, dout = mse(outputs.reshape(y.shape), y.astype(outputs.dtype, copy=False))
        return loss, dout.reshape(outputs.shape)

    def loss_and_grad(self, x: np.ndarray, y: np.ndarray) -> float:
        """Mean loss (cross-entropy, or mse) on (x (B, ...), y (B,) or (B, k)); writes the
        flat gradient into ``self.grad``."""
        self.grad.fill(0.0)
        logits = self.forward(x, train=True)
        loss, dlogits = self._loss(logits, y)
        signals = self.backward(dlogits)
        if self.track_gradients:
            self.last_flow = layer_flow(self.spec, self.layout, self.grad, signals)
        return float(loss)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, int | None, int]:
        """Summed loss, correct count (None under regression) and sample count over (x, y)
        in batches."""
        regression = self.spec.loss.is_regression
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            logits = self.forward(xb, train=False)
            loss, _ = self._loss(logits, yb)
            loss_sum += float(loss) * len(yb)
            if not regression:
                correct += int((logits.argmax(axis=1) == yb).sum())
        return loss_sum, None if regression else correct, len(x)
