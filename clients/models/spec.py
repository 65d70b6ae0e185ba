"""Engine-agnostic model specifications and their seeded initialisation.

A model is a list of layer specs. Every engine builds the same layers from the
same spec, and the initial flat parameter vector is drawn here, in numpy, from
the run's seed, so all engines start from the same bits.

Parameter shapes and names follow PyTorch's conventions (a linear weight is
(out_features, in_features), a convolution weight (F, C, KH, KW), an LSTM's
``weight_ih_l0`` (4H, I) with gates i, f, g, o), and their order in the flat
vector is PyTorch's registration order, so engines can bind by position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from clients.models.layout import Layout
from clients.streams import Stream

ACTIVATION_KINDS = ("relu", "tanh", "sigmoid", "gelu", "leaky_relu")
MODEL_NAMES = ("logreg", "mlp", "cnn", "resnet", "charlstm")  # built from a spec by every engine
MODULE_MODEL = "module"  # a user's nn.Module from a factory (torch engine only)
# What a client of a module model starts its buffers from (clients/protocol.py, ClientPlan.buffers).
BUFFER_POLICIES = ("average", "local", "reset")


@dataclass(frozen=True)
class ParamSpec:
    """One named tensor and how it is initialised: ("uniform", bound),
    ("normal", std) or ("const", value)."""

    name: str
    shape: tuple[int, ...]
    init: tuple[str, float]


@dataclass(frozen=True)
class LayerSpec:
    """One layer: ``kind`` plus its hyper-parameters.

    kinds: linear(in_features, out_features); conv2d(in_channels, out_channels,
    kernel, stride, padding); maxpool2d(kernel); avgpool2d(kernel); flatten;
    dropout(p); batchnorm(num_features); residual(body: tuple[LayerSpec]);
    embedding(num_embeddings, embedding_dim); lstm(input_size, hidden_size,
    num_layers); last_step; and the activations in ACTIVATION_KINDS.

    A user's module model has one ``module`` layer per top-level submodule (or
    parameter registered on the root), named as in torch, with ``params`` and
    ``buffers``: tuples of (full torch name, shape); ``batchnorm``: whether it
    holds a batch-norm layer; ``norm_params``: the full names of its batch-norm
    layers' parameters.
    """

    kind: str
    name: str = ""
    args: dict = field(default_factory=dict)

    @property
    def body(self) -> tuple[LayerSpec, ...]:
        return tuple(self.args.get("body", ()))

    def param_specs(self) -> list[ParamSpec]:
        """This layer's tensors with full names (``{layer}.{torch local name}``)."""
        if self.kind == MODULE_MODEL:  # initialised by the user's module, not drawn here
            return [ParamSpec(name, tuple(shape), ("module", 0.0)) for name, shape in self.args["params"]]
        return [ParamSpec(f"{self.name}.{local}", shape, init) for local, shape, init in self._local_params()]

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(p.name, p.shape) for p in self.param_specs()]

    def _local_params(self) -> list[tuple[str, tuple[int, ...], tuple[str, float]]]:
        a = self.args
        if self.kind == "linear":
            bound = ("uniform", 1 / math.sqrt(a["in_features"]))
            return [
                ("weight", (a["out_features"], a["in_features"]), bound),
                ("bias", (a["out_features"],), bound),
            ]
        if self.kind == "conv2d":
            k = a["kernel"]
            bound = ("uniform", 1 / math.sqrt(a["in_channels"] * k * k))
            shape = (a["out_channels"], a["in_channels"], k, k)
            return [("weight", shape, bound), ("bias", (a["out_channels"],), bound)]
        if self.kind == "batchnorm":
            c = (a["num_features"],)
            return [("weight", c, ("const", 1.0)), ("bias", c, ("const", 0.0))]
        if self.kind == "embedding":
            return [("weight", (a["num_embeddings"], a["embedding_dim"]), ("normal", 1.0))]
        if self.kind == "lstm":
            return _lstm_params(a["input_size"], a["hidden_size"], a["num_layers"])
        if self.kind == "residual":
            return [
                (f"{i}.{local}", shape, init)
                for i, child in enumerate(self.body)
                for local, shape, init in child._local_params()
            ]
        return []


def _lstm_params(input_size: int, hidden: int, layers: int):
    bound = ("uniform", 1 / math.sqrt(hidden))  # PyTorch's nn.LSTM initialisation
    params = []
    for k in range(layers):
        width = input_size if k == 0 else hidden
        params += [
            (f"weight_ih_l{k}", (4 * hidden, width), bound),
            (f"weight_hh_l{k}", (4 * hidden, hidden), bound),
            (f"bias_ih_l{k}", (4 * hidden,), bound),
            (f"bias_hh_l{k}", (4 * hidden,), bound),
        ]
    return params


@dataclass(frozen=True)
class ModuleSource:
    """Where a user's module model comes from: ``factory`` ("package.module:callable")
    called with ``kwargs`` under a torch generator seeded from (``seed``, Stream.INIT);
    ``search_path``: a folder put on sys.path before importing it (the driver's: the folder
    fedsim runs in); workers have none and find it where runtime.py_modules ships it."""

    factory: str
    kwargs: dict
    seed: int
    search_path: str | None = None


@dataclass(frozen=True)
class LossSource:
    """What a model is trained on: ``name`` cross_entropy, mse, or a user's callable
    ("package.module:callable"; ``search_path`` as ModuleSource's); ``task``
    classification (class-id labels, accuracy measured) or regression (float targets,
    loss only)."""

    name: str = "cross_entropy"
    task: str = "classification"
    search_path: str | None = None

    @property
    def is_regression(self) -> bool:
        return self.task == "regression"


CROSS_ENTROPY = LossSource()
BUILT_IN_LOSSES = ("cross_entropy", "mse")  # model.loss names that are no user code


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    layers: tuple[LayerSpec, ...]
    input_dtype: str = "float32"  # "int64" for token models
    source: ModuleSource | None = None  # set for a user's module model (name "module")
    loss: LossSource = CROSS_ENTROPY  # what training minimises; num_classes is the output width

    def layout(self) -> Layout:
        return Layout([p for layer in self.layers for p in layer.param_shapes()])

    def buffer_layout(self) -> Layout:
        """Names and shapes of the floating-point buffers (batch-norm running statistics) of
        a module model, in torch's order: one flat vector of their own; empty otherwise."""
        return Layout([(n, tuple(s)) for layer in self.layers for n, s in layer.args.get("buffers", ())])

    def has_batchnorm(self) -> bool:
        """Whether a batch-norm layer normalises training batches by their own statistics
        (so a batch of one row cannot be trained on)."""
        return any(layer.kind == "batchnorm" or layer.args.get("batchnorm") for layer in self.layers)

    def param_specs(self) -> list[ParamSpec]:
        return [p for layer in self.layers for p in layer.param_specs()]

    def tracked_layers(self) -> list[str]:
        """Names of the layers with parameters: the rows of gradient-flow diagnostics."""
        return [layer.name for layer in self.layers if layer.param_specs()]


def _linear(name: str, n_in: int, n_out: int) -> LayerSpec:
    return LayerSpec("linear", name, {"in_features": n_in, "out_features": n_out})


def _conv(name: str, c_in: int, c_out: int, kernel: int, padding: int) -> LayerSpec:
    args = {"in_channels": c_in, "out_channels": c_out, "kernel": kernel, "stride": 1, "padding": padding}
    return LayerSpec("conv2d", name, args)


@dataclass(frozen=True)
class Architecture:
    """A built-in model's choices (the ``model`` section's keys of the same names); each
    applies to the models named beside it and is ignored by the others."""

    hidden: list[int] | tuple[int, ...] = (200, 200)  # mlp: the hidden layers' widths
    activation: str = "relu"  # mlp
    conv_channels: list[int] | tuple[int, ...] = (32, 64)  # cnn: both convs; resnet: the first
    fc_width: int = 512  # cnn
    residual: bool = False  # mlp
    dropout: float = 0.0  # mlp
    batchnorm: bool = False  # mlp
    embedding_dim: int = 8  # charlstm
    lstm_hidden: int = 256  # charlstm
    lstm_layers: int = 2  # charlstm

    @classmethod
    def of(cls, section: Any) -> Architecture:
        """The choices ``section`` (a model config) holds under these names."""
        return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})


def build_spec(
    name: str, input_shape: tuple[int, ...], num_classes: int, arch: Architecture = Architecture()
) -> ModelSpec:
    """The named architecture for inputs of ``input_shape`` and ``num_classes`` outputs, as
    ``arch`` chooses."""
    flat_in = int(np.prod(input_shape))
    if name == "logreg":
        layers = [LayerSpec("flatten"), _linear("fc", flat_in, num_classes)]
    elif name == "mlp":
        layers = _mlp_layers(flat_in, num_classes, arch)
    elif name == "cnn":
        layers = _cnn_layers(input_shape, list(arch.conv_channels), arch.fc_width, num_classes)
    elif name == "resnet":
        layers = _resnet_layers(input_shape, arch.conv_channels[0], num_classes)
    elif name == "charlstm":
        layers = _charlstm_layers(num_classes, arch.embedding_dim, arch.lstm_hidden, arch.lstm_layers)
        return ModelSpec(name, tuple(input_shape), num_classes, tuple(layers), input_dtype="int64")
    else:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return ModelSpec(name, tuple(input_shape), num_classes, tuple(layers))


def _mlp_layers(flat_in: int, num_classes: int, arch: Architecture) -> list[LayerSpec]:
    """Flatten, then per hidden width: linear (+ batch norm ``bn{i}``, which normalises by
    each batch's own statistics) + activation (+ dropout). With ``residual`` every hidden
    layer after the first is a block x + act(W x + b), so the depth is the same as the
    plain MLP's."""
    hidden = list(arch.hidden)
    if arch.residual and len(set(hidden)) > 1:
        raise ValueError(f"a residual mlp needs equal hidden widths, got {hidden}")
    if arch.residual and arch.batchnorm:
        raise ValueError("a residual mlp has no batch-norm variant")
    layers = [LayerSpec("flatten")]
    widths = [flat_in, *hidden]
    for i in range(len(hidden)):
        linear = _linear(f"fc{i + 1}", widths[i], widths[i + 1])
        if arch.residual and i > 0:
            body = (LayerSpec("linear", "", dict(linear.args)), LayerSpec(arch.activation))
            layers.append(LayerSpec("residual", f"fc{i + 1}", {"body": body}))
        else:
            norm = [
                LayerSpec("batchnorm", f"bn{i + 1}", {"num_features": widths[i + 1], "batch_stats": True})
            ]
            layers += [linear, *(norm if arch.batchnorm else []), LayerSpec(arch.activation)]
        if arch.dropout > 0:
            layers.append(LayerSpec("dropout", args={"p": arch.dropout}))
    layers.append(_linear(f"fc{len(hidden) + 1}", widths[-1], num_classes))
    return layers


def _check_image(input_shape: tuple[int, ...], model: str, minimum: int) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ValueError(f"{model} needs image inputs (C, H, W), got shape {input_shape}")
    c, h, w = input_shape
    if h < minimum or w < minimum:
        raise ValueError(f"{model} needs images of at least {minimum}x{minimum} pixels, got {h}x{w}")
    return c, h, w


def _cnn_layers(
    input_shape: tuple[int, ...], channels: list[int], fc_width: int, num_classes: int
) -> list[LayerSpec]:
    """McMahan et al. 2017 (arXiv:1602.05629) CNN: two 5x5 convs (32, 64 channels),
    each followed by ReLU and 2x2 max pooling, a 512-unit ReLU layer, softmax output.
    'Same' padding keeps it valid for small inputs such as 8x8 digits."""
    c, h, w = _check_image(input_shape, "cnn", 4)
    c1, c2 = channels
    layers = [
        _conv("conv1", c, c1, 5, 2),
        LayerSpec("relu"),
        LayerSpec("maxpool2d", args={"kernel": 2}),
        _conv("conv2", c1, c2, 5, 2),
        LayerSpec("relu"),
        LayerSpec("maxpool2d", args={"kernel": 2}),
        LayerSpec("flatten"),
    ]
    flat = c2 * (h // 4) * (w // 4)
    layers += [_linear("fc1", flat, fc_width), LayerSpec("relu"), _linear("fc2", fc_width, num_classes)]
    return layers


def _resnet_layers(input_shape: tuple[int, ...], width: int, num_classes: int) -> list[LayerSpec]:
    """A small residual CNN (He et al. 2016, arXiv:1512.03385, without batch norm):
    3x3 conv stem, two blocks x + conv(relu(conv(x))) each followed by ReLU,
    global average pooling, a linear classifier."""
    c, h, w = _check_image(input_shape, "resnet", 2)
    if h != w:
        raise ValueError(f"resnet's global average pooling needs square images, got {h}x{w}")
    layers = [_conv("stem", c, width, 3, 1), LayerSpec("relu")]
    for b in (1, 2):
        body = (_conv("", width, width, 3, 1), LayerSpec("relu"), _conv("", width, width, 3, 1))
        layers += [LayerSpec("residual", f"block{b}", {"body": body}), LayerSpec("relu")]
    layers += [
        LayerSpec("avgpool2d", args={"kernel": h}),
        LayerSpec("flatten"),
        _linear("fc", width, num_classes),
    ]
    return layers


def _charlstm_layers(vocab: int, embedding_dim: int, hidden: int, num_layers: int) -> list[LayerSpec]:
    """The character LSTM of the LEAF Shakespeare benchmark (Caldas et al. 2018,
    arXiv:1812.01097; McMahan et al. 2017): embedding 8, 2 x 256 LSTM, a linear
    layer on the last step's output predicting the next character."""
    return [
        LayerSpec("embedding", "embed", {"num_embeddings": vocab, "embedding_dim": embedding_dim}),
        LayerSpec(
            "lstm", "lstm", {"input_size": embedding_dim, "hidden_size": hidden, "num_layers": num_layers}
        ),
        LayerSpec("last_step"),
        _linear("fc", hidden, vocab),
    ]


def init_params(spec: ModelSpec, seed: int) -> np.ndarray:
    """Seeded initial flat vector (float32), PyTorch's default initialisation
    distributions (linear/conv/LSTM: U(-1/sqrt(fan), 1/sqrt(fan)); embedding: N(0, 1);
    batch norm: weight 1, bias 0), drawn from numpy so every engine starts from
    identical bits."""
    if spec.source is not None:
        raise ValueError(f"{spec.name}: a module model's initial vector is its module's (module_params)")
    layout = spec.layout()
    flat = layout.zeros()
    rng = np.random.default_rng(np.random.SeedSequence([seed, Stream.INIT]))
    for param in spec.param_specs():
        view = layout.view(flat, param.name)
        kind, value = param.init
        if kind == "uniform":
            view[...] = rng.uniform(-value, value, size=view.shape)
        elif kind == "normal":
            view[...] = rng.normal(0.0, value, size=view.shape)
        else:
            view[...] = value
    return flat
