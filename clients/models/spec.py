"""Engine-agnostic model specifications and their seeded initialisation.

A model is a list of layer specs. Every engine builds the same layers from the
same spec, and the initial flat parameter vector is drawn here, in numpy, from
the run's seed, so all engines start from the same bits.

Parameter shapes follow PyTorch's conventions: a linear weight is
(out_features, in_features); a convolution weight is (F, C, KH, KW).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from clients.models.layout import Layout


@dataclass(frozen=True)
class LayerSpec:
    """One layer: ``kind`` plus its integer/string hyper-parameters.

    kinds: linear(in_features, out_features), conv2d(in_channels,
    out_channels, kernel, padding), maxpool2d(kernel), flatten, and the
    activations relu, tanh, sigmoid, gelu, leaky_relu.
    """

    kind: str
    name: str = ""
    args: dict = field(default_factory=dict)

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        a = self.args
        if self.kind == "linear":
            return [
                (f"{self.name}.weight", (a["out_features"], a["in_features"])),
                (f"{self.name}.bias", (a["out_features"],)),
            ]
        if self.kind == "conv2d":
            k = a["kernel"]
            return [
                (f"{self.name}.weight", (a["out_channels"], a["in_channels"], k, k)),
                (f"{self.name}.bias", (a["out_channels"],)),
            ]
        return []

    def fan_in(self) -> int:
        a = self.args
        if self.kind == "linear":
            return a["in_features"]
        if self.kind == "conv2d":
            return a["in_channels"] * a["kernel"] ** 2
        return 0


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    layers: tuple[LayerSpec, ...]

    def layout(self) -> Layout:
        return Layout([ps for layer in self.layers for ps in layer.param_shapes()])


def _linear(name: str, n_in: int, n_out: int) -> LayerSpec:
    return LayerSpec("linear", name, {"in_features": n_in, "out_features": n_out})


def build_spec(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: list[int] | tuple[int, ...] = (200, 200),
    activation: str = "relu",
    conv_channels: list[int] | tuple[int, ...] = (32, 64),
    fc_width: int = 512,
) -> ModelSpec:
    """The named architecture for inputs of ``input_shape`` and ``num_classes`` outputs."""
    flat_in = int(np.prod(input_shape))
    if name == "logreg":
        layers = [LayerSpec("flatten"), _linear("fc", flat_in, num_classes)]
    elif name == "mlp":
        layers = _mlp_layers(flat_in, list(hidden), activation, num_classes)
    elif name == "cnn":
        layers = _cnn_layers(input_shape, list(conv_channels), fc_width, num_classes)
    else:
        raise ValueError(f"unknown model {name!r}; known: logreg, mlp, cnn")
    return ModelSpec(name, tuple(input_shape), num_classes, tuple(layers))


def _mlp_layers(flat_in: int, hidden: list[int], activation: str, num_classes: int) -> list[LayerSpec]:
    layers = [LayerSpec("flatten")]
    widths = [flat_in, *hidden]
    for i in range(len(hidden)):
        layers += [_linear(f"fc{i + 1}", widths[i], widths[i + 1]), LayerSpec(activation)]
    layers.append(_linear(f"fc{len(hidden) + 1}", widths[-1], num_classes))
    return layers


def _cnn_layers(
    input_shape: tuple[int, ...], channels: list[int], fc_width: int, num_classes: int
) -> list[LayerSpec]:
    """McMahan et al. 2017 (arXiv:1602.05629) CNN: two 5x5 convs (32, 64 channels),
    each followed by ReLU and 2x2 max pooling, a 512-unit ReLU layer, softmax output.
    'Same' padding keeps it valid for small inputs such as 8x8 digits."""
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs image inputs (C, H, W), got shape {input_shape}")
    c, h, w = input_shape
    if h < 4 or w < 4:
        raise ValueError(f"cnn needs images of at least 4x4 pixels, got {h}x{w}")
    c1, c2 = channels
    layers = [
        LayerSpec("conv2d", "conv1", {"in_channels": c, "out_channels": c1, "kernel": 5, "padding": 2}),
        LayerSpec("relu"),
        LayerSpec("maxpool2d", args={"kernel": 2}),
        LayerSpec("conv2d", "conv2", {"in_channels": c1, "out_channels": c2, "kernel": 5, "padding": 2}),
        LayerSpec("relu"),
        LayerSpec("maxpool2d", args={"kernel": 2}),
        LayerSpec("flatten"),
    ]
    flat = c2 * (h // 4) * (w // 4)
    layers += [_linear("fc1", flat, fc_width), LayerSpec("relu"), _linear("fc2", fc_width, num_classes)]
    return layers


def init_params(spec: ModelSpec, seed: int) -> np.ndarray:
    """Seeded initial flat vector (float32).

    Weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the distribution of
    PyTorch's default Linear/Conv2d initialisation, drawn from numpy so every
    engine starts from identical bits.
    """
    layout = spec.layout()
    flat = layout.zeros()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1A17]))
    for layer in spec.layers:
        bound = 1.0 / math.sqrt(layer.fan_in()) if layer.fan_in() else 0.0
        for pname, _shape in layer.param_shapes():
            view = layout.view(flat, pname)
            view[...] = rng.uniform(-bound, bound, size=view.shape)
    return flat
