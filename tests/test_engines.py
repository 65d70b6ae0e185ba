"""Both engines build the same models: losses, outputs and flat gradients agree;
the gradient checks can fail; gradient-flow diagnostics show vanishing gradients."""

from __future__ import annotations

import numpy as np
import pytest

from clients.models.engines import build_model
from clients.models.spec import Architecture, build_spec, init_params
from clients.numpy_engine import gradcheck
from clients.numpy_engine.gradcheck import MODEL_CASES, check_model_fd, check_model_torch

pytest.importorskip("torch")


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_model_gradients_match_finite_differences_and_torch(name):
    fd, torch_check = check_model_fd(name), check_model_torch(name)
    assert fd.error < 1e-6, fd
    assert torch_check.error < 1e-9, torch_check  # float64: only summation order differs


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_torch_engine_gradients_match_finite_differences(name):
    assert check_model_fd(name, engine="torch").error < 1e-6


@pytest.mark.parametrize("name", list(MODEL_CASES))
def test_engines_agree_in_float32(name):
    spec, make_x = MODEL_CASES[name]()
    rng = np.random.default_rng(3)
    x = make_x(rng, spec)
    if x.dtype.kind == "f":
        x = x.astype(np.float32)
    y = rng.integers(0, spec.num_classes, size=len(x))
    if spec.loss.is_regression:  # float32 targets, one per output
        y = rng.normal(size=(len(x), spec.num_classes)).astype(np.float32)
    ours, theirs = build_model(spec, "numpy"), build_model(spec, "torch")
    ours.params[:] = theirs.params[:] = init_params(spec, 0)
    loss_ours, loss_theirs = ours.loss_and_grad(x, y), theirs.loss_and_grad(x, y)
    # float32 with different summation orders: a few ulps per reduction.
    assert loss_ours == pytest.approx(loss_theirs, rel=1e-5)
    np.testing.assert_allclose(ours.grad, theirs.grad, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(ours.forward(x, train=False), _torch_logits(theirs, x), rtol=1e-4, atol=1e-5)


def _torch_logits(model, x):
    import torch

    model.net.eval()
    with torch.no_grad():
        return model.net(torch.from_numpy(x)).numpy()


def test_gradcheck_fails_on_a_wrong_gradient(monkeypatch):
    from clients.numpy_engine.dense import Linear

    original = Linear.backward

    def off_by_ten_percent(self, dy):
        dx = original(self, dy)
        self.grads["weight"] *= 1.1
        return dx

    monkeypatch.setattr(Linear, "backward", off_by_ten_percent)
    assert not gradcheck.check_model_fd("mlp").passed
    assert not gradcheck.check_model_torch("mlp").passed


def test_gradcheck_cli_reports_and_exits_non_zero_on_failure(monkeypatch, capsys):
    from clients.numpy_engine.dense import Linear
    from simulator.cli import main

    assert main(["gradcheck", "--model", "logreg"]) == 0
    assert "logreg" in capsys.readouterr().out
    monkeypatch.setattr(Linear, "backward", lambda self, dy: dy @ self.params["weight"])  # no param grads
    assert main(["gradcheck", "--model", "logreg"]) == 1
    assert "FAIL" in capsys.readouterr().out


def _flow_ratio(activation: str, residual: bool, engine: str) -> float:
    """|dL/dθ| of the first hidden layer over the output layer's, for a 10-layer MLP."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data[:64] / 16).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target[:64].astype(np.int64)
    spec = build_spec(
        "mlp", (1, 8, 8), 10, Architecture(hidden=[32] * 10, activation=activation, residual=residual)
    )
    model = build_model(spec, engine)
    model.params[:] = init_params(spec, 0)
    model.track_gradients = True
    model.loss_and_grad(x, y)
    flow = model.last_flow
    assert list(flow) == spec.tracked_layers()
    return flow["fc1"][1] / flow["fc11"][1]


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_deep_sigmoid_gradients_vanish_and_relu_residual_ones_do_not(engine):
    sigmoid = _flow_ratio("sigmoid", residual=False, engine=engine)
    relu_residual = _flow_ratio("relu", residual=True, engine=engine)
    assert sigmoid < 1e-3  # sigmoid' <= 1/4 per layer: ten layers shrink it by orders of magnitude
    assert relu_residual > 0.1
    assert relu_residual / sigmoid > 1e3


def test_both_engines_record_the_same_flow():
    spec = build_spec("mlp", (1, 8, 8), 10, Architecture(hidden=[16, 16], activation="tanh"))
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 8)
    flows = []
    for engine in ("numpy", "torch"):
        model = build_model(spec, engine)
        model.params[:] = init_params(spec, 1)
        model.track_gradients = True
        model.loss_and_grad(x, y)
        flows.append(np.array(list(model.last_flow.values())))
    np.testing.assert_allclose(flows[0], flows[1], rtol=1e-4)  # float32 norms of agreeing gradients
