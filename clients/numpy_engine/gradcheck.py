"""Gradient checks: analytic gradients against centred finite differences
(float64) and against PyTorch autograd, for every layer kind and built-in model.

The error measure is norm-based, |a - b| / max(|a| + |b|, 1e-12), over all
checked coordinates of a tensor; a check reports its worst tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from clients.models.arrays import FlatVector
from clients.models.spec import Architecture, LayerSpec, LossSource, ModelSpec, build_spec, init_params
from clients.models.torch_engine import TorchModel, layer_module
from clients.numpy_engine.core import Module, bind_standalone
from clients.numpy_engine.model import NumpyModel, build_module

FD_STEP = 1e-6
FD_TOLERANCE = 1e-6  # centred differences in float64 are accurate to ~1e-9 here
TORCH_TOLERANCE = 1e-9  # both engines in float64: only summation order differs
MAX_COORDS = 48  # finite differences per tensor, sampled when a tensor is larger


@dataclass(frozen=True)
class CheckResult:
    target: str
    kind: str  # "layer" | "model"
    check: str  # "finite differences" | "torch autograd"
    error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error)) and self.error <= self.tolerance


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(a) + np.linalg.norm(b)), 1e-12))


def _image(rng, n=3, c=2, h=7, w=6):
    return rng.normal(size=(n, c, h, w))


def _conv(c_in, c_out, k, stride, padding) -> LayerSpec:
    return LayerSpec(
        "conv2d",
        "",
        {"in_channels": c_in, "out_channels": c_out, "kernel": k, "stride": stride, "padding": padding},
    )


def _lin(i, o) -> LayerSpec:
    return LayerSpec("linear", "", {"in_features": i, "out_features": o})


# name -> (layer spec, input maker)
LAYER_CASES: dict[str, tuple[LayerSpec, Callable]] = {
    "linear": (_lin(5, 4), lambda r: r.normal(size=(3, 5))),
    "conv2d": (_conv(2, 3, 3, 1, 1), _image),
    "conv2d stride 2 pad 2": (_conv(2, 3, 5, 2, 2), _image),
    "maxpool2d": (LayerSpec("maxpool2d", args={"kernel": 2}), _image),
    "avgpool2d": (LayerSpec("avgpool2d", args={"kernel": 2}), _image),
    "flatten": (LayerSpec("flatten"), _image),
    "relu": (LayerSpec("relu"), lambda r: r.normal(size=(4, 6))),
    "leaky_relu": (LayerSpec("leaky_relu"), lambda r: r.normal(size=(4, 6))),
    "sigmoid": (LayerSpec("sigmoid"), lambda r: r.normal(size=(4, 6)) * 3),
    "tanh": (LayerSpec("tanh"), lambda r: r.normal(size=(4, 6))),
    "gelu": (LayerSpec("gelu"), lambda r: r.normal(size=(4, 6))),
    "dropout": (LayerSpec("dropout", args={"p": 0.3}), lambda r: r.normal(size=(4, 6))),
    "batchnorm": (LayerSpec("batchnorm", args={"num_features": 2}), _image),
    "residual": (
        LayerSpec("residual", args={"body": (_lin(5, 5), LayerSpec("tanh"), _lin(5, 5))}),
        lambda r: r.normal(size=(3, 5)),
    ),
    "embedding": (
        LayerSpec("embedding", args={"num_embeddings": 7, "embedding_dim": 3}),
        lambda r: r.integers(0, 7, size=(3, 5)),
    ),
    "lstm": (
        LayerSpec("lstm", args={"input_size": 3, "hidden_size": 4, "num_layers": 2}),
        lambda r: r.normal(size=(2, 5, 3)),
    ),
}


def _fresh_rng_for_dropout(module: Module) -> None:
    if hasattr(module, "rng"):
        module.rng = np.random.default_rng(7)  # the same mask on every forward


def _loss(module: Module, x: np.ndarray, upstream: np.ndarray) -> float:
    return float(np.sum(_forward(module, x) * upstream))


def _fd_coords(size: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(size) if size <= MAX_COORDS else rng.choice(size, MAX_COORDS, replace=False)


def numeric_gradient(
    f: Callable[[], float], values: np.ndarray, coords: np.ndarray | None = None
) -> np.ndarray:
    """Centred differences (f(v + h) - f(v - h)) / 2h of ``f()`` in the flat coordinates
    ``coords`` of ``values`` (all by default; perturbed in place and restored).
    Returns values.shape when coords is None, else (len(coords),)."""
    flat = values.reshape(-1)
    chosen = np.arange(flat.size) if coords is None else coords
    numeric = np.empty(len(chosen))
    for i, c in enumerate(chosen):
        keep = flat[c]
        flat[c] = keep + FD_STEP
        up = f()
        flat[c] = keep - FD_STEP
        down = f()
        flat[c] = keep
        numeric[i] = (up - down) / (2 * FD_STEP)
    return numeric.reshape(values.shape) if coords is None else numeric


def _fd_error(f: Callable[[], float], values: np.ndarray, analytic: np.ndarray, rng) -> float:
    """Relative error of ``analytic`` against centred differences on sampled coordinates."""
    coords = _fd_coords(values.size, rng)
    return relative_error(analytic.reshape(-1)[coords], numeric_gradient(f, values, coords))


def _layer_case(name: str, seed: int):
    """(spec, module bound to fresh float64 vectors, params, grads, input, rng) of a layer case."""
    spec, make_input = LAYER_CASES[name]
    rng = np.random.default_rng(seed)
    module = build_module(spec)
    flat_p, flat_g = bind_standalone(module, np.float64, rng)
    return spec, module, flat_p, flat_g, make_input(rng), rng


def check_layer_fd(name: str) -> CheckResult:
    """The numpy module's dx and parameter gradients against finite differences (float64)."""
    _, module, flat_p, flat_g, x, rng = _layer_case(name, 0)
    upstream = rng.normal(size=np.shape(_forward(module, x)))
    dx = module.backward(upstream)
    analytic_g = flat_g.copy()
    errors = []
    if dx is not None:
        errors.append(_fd_error(lambda: _loss(module, x, upstream), x, dx, rng))
    if flat_p.size:
        errors.append(_fd_error(lambda: _loss(module, x, upstream), flat_p, analytic_g, rng))
    return CheckResult(name, "layer", "finite differences", max(errors), FD_TOLERANCE)


def _forward(module: Module, x: np.ndarray) -> np.ndarray:
    _fresh_rng_for_dropout(module)
    return module.forward(x, True)


def check_layer_torch(name: str) -> CheckResult:
    """The numpy module against the same layer in PyTorch (float64): output, dx, every grad."""
    spec, module, flat_p, flat_g, x, rng = _layer_case(name, 1)
    train = spec.kind != "dropout"  # torch draws its own masks; compare dropout in eval mode
    y = module.forward(x, train)
    upstream = rng.normal(size=y.shape)
    dx = module.backward(upstream)
    t_module, t_params = _torch_twin(spec, flat_p, train)
    tx = torch.tensor(x, requires_grad=x.dtype.kind == "f")
    ty = t_module(tx)
    ty.backward(torch.from_numpy(upstream))
    errors = [relative_error(y, ty.detach().numpy())]
    if dx is not None:
        assert tx.grad is not None  # a layer that returns dx takes float inputs
        errors.append(relative_error(dx, tx.grad.numpy()))
    if t_params:
        errors.append(relative_error(flat_g, torch.cat([p.grad.reshape(-1) for p in t_params]).numpy()))
    return CheckResult(name, "layer", "torch autograd", max(errors), TORCH_TOLERANCE)


def _torch_twin(spec: LayerSpec, flat_p: np.ndarray, train: bool):
    module = layer_module(spec).double()
    module.train(train)
    params = list(module.parameters())
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(torch.from_numpy(flat_p[offset : offset + p.numel()].reshape(p.shape)))
            offset += p.numel()
    return module, params


# --- whole models -------------------------------------------------------------

MSE = LossSource("mse", "regression")
MODEL_CASES: dict[str, Callable[[], tuple[ModelSpec, Callable]]] = {
    "logreg": lambda: (build_spec("logreg", (1, 8, 8), 10), _images),
    "mlp": lambda: (
        build_spec("mlp", (1, 8, 8), 10, Architecture(hidden=[16, 16], activation="tanh")),
        _images,
    ),
    "mlp-residual": lambda: (
        build_spec("mlp", (1, 8, 8), 10, Architecture(hidden=[12, 12, 12], residual=True)),
        _images,
    ),
    "cnn": lambda: (
        build_spec("cnn", (1, 8, 8), 10, Architecture(conv_channels=[3, 4], fc_width=16)),
        _images,
    ),
    "resnet": lambda: (build_spec("resnet", (1, 8, 8), 10, Architecture(conv_channels=[4])), _images),
    "charlstm": lambda: (
        build_spec("charlstm", (6,), 12, Architecture(embedding_dim=4, lstm_hidden=6, lstm_layers=2)),
        _tokens,
    ),
    "mlp-mse": lambda: (  # a regressor: 3 float targets per row, mean squared error
        dataclasses.replace(
            build_spec("mlp", (5,), 3, Architecture(hidden=[8], activation="tanh")), loss=MSE
        ),
        _images,
    ),
}


def _images(rng, spec: ModelSpec):
    return rng.normal(size=(4, *spec.input_shape))


def _tokens(rng, spec: ModelSpec):
    return rng.integers(0, spec.num_classes, size=(4, *spec.input_shape))


def _model_inputs(name: str):
    spec, make_x = MODEL_CASES[name]()
    rng = np.random.default_rng(2)
    x = make_x(rng, spec)
    if spec.loss.is_regression:
        return spec, x, rng.normal(size=(len(x), spec.num_classes)), rng
    y = rng.integers(0, spec.num_classes, size=len(x))
    return spec, x, y, rng


def _host(vector: FlatVector) -> np.ndarray:
    """A model's flat vector as the numpy array it is without a device (as here)."""
    assert isinstance(vector, np.ndarray)
    return vector


def check_model_fd(name: str, engine: str = "numpy") -> CheckResult:
    """The whole flat gradient of the loss against finite differences (float64)."""
    spec, x, y, rng = _model_inputs(name)
    model = NumpyModel(spec, np.float64) if engine == "numpy" else TorchModel(spec, np.float64)
    params, grad = _host(model.params), _host(model.grad)
    params[:] = init_params(spec, 0)
    model.loss_and_grad(x, y)
    analytic = grad.copy()
    error = _fd_error(lambda: model.loss_and_grad(x, y), params, analytic, rng)
    return CheckResult(name, "model", "finite differences", error, FD_TOLERANCE)


def check_model_torch(name: str) -> CheckResult:
    """The numpy engine's loss and flat gradient against the torch engine's (float64)."""
    spec, x, y, _ = _model_inputs(name)
    ours, theirs = NumpyModel(spec, np.float64), TorchModel(spec, np.float64)
    ours.params[:] = _host(theirs.params)[:] = init_params(spec, 0)
    loss_ours, loss_theirs = ours.loss_and_grad(x, y), theirs.loss_and_grad(x, y)
    error = max(
        relative_error(np.array([loss_ours]), np.array([loss_theirs])),
        relative_error(ours.grad, _host(theirs.grad)),
    )
    return CheckResult(name, "model", "torch autograd", error, TORCH_TOLERANCE)


def run_checks(engine: str = "numpy", model: str | None = None) -> list[CheckResult]:
    """Every layer (numpy engine) and model check; ``model`` limits to one model."""
    results = []
    if engine == "numpy" and model is None:
        for name in LAYER_CASES:
            results += [check_layer_fd(name), check_layer_torch(name)]
    for name in [model] if model else MODEL_CASES:
        results.append(check_model_fd(name, engine))
        if engine == "numpy":
            results.append(check_model_torch(name))
    return results
