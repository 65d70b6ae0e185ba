"""Flat parameter vector, model specs, the torch engine and local SGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.models.layout import Layout
from clients.models.spec import Architecture, build_spec, init_params
from clients.models.torch_engine import TorchModel
from clients.optim import SGD
from clients.training import ClientTask, LocalTrainingConfig, client_rng, train_client


def test_layout_views_write_through():
    layout = Layout([("a", (2, 3)), ("b", (4,))])
    flat = layout.zeros()
    views = layout.views(flat)
    views["a"][1, 2] = 7.0
    views["b"][:] = 1.0
    assert flat[5] == 7.0 and flat[6:].tolist() == [1.0] * 4
    assert layout.size == 10 and layout["b"].offset == 6


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_torch_parameters_are_views_of_the_flat_vector(name):
    spec = build_spec(name, (1, 8, 8), 10, Architecture(hidden=[16], conv_channels=[4, 8], fc_width=16))
    model = TorchModel(spec)
    model.params[:] = init_params(spec, seed=1)
    for param, slot in zip(model.net.parameters(), spec.layout(), strict=True):
        np.testing.assert_array_equal(param.detach().numpy().ravel(), model.params[slot.offset : slot.stop])
        assert param.grad.data_ptr() == torch.from_numpy(model.grad[slot.offset :]).data_ptr()
    model.params[0] = 123.0  # a write to the numpy vector is seen by torch
    assert next(model.net.parameters()).detach().numpy().ravel()[0] == 123.0


def test_flat_gradient_equals_autograd_on_a_plain_copy():
    spec = build_spec("mlp", (1, 8, 8), 10, Architecture(hidden=[16]))
    model = TorchModel(spec)
    model.params[:] = init_params(spec, seed=2)
    rng = np.random.default_rng(0)
    x = rng.random((5, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 5)
    loss = model.loss_and_grad(x, y)
    reference = torch.tensor(model.params.copy(), requires_grad=True)
    views, offset = [], 0
    for slot in spec.layout():
        views.append(reference[offset : offset + slot.size].view(slot.shape))
        offset += slot.size
    h = torch.relu(torch.from_numpy(x).flatten(1) @ views[0].T + views[1])
    ref_loss = torch.nn.functional.cross_entropy(h @ views[2].T + views[3], torch.from_numpy(y))
    ref_loss.backward()
    # Same float32 kernels on the same inputs: agreement to float32 rounding.
    assert loss == pytest.approx(float(ref_loss.detach()), rel=1e-6)
    np.testing.assert_allclose(model.grad, reference.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_init_is_seeded_and_bounded():
    spec = build_spec("mlp", (64,), 10, Architecture(hidden=[100]))
    a, b = init_params(spec, 0), init_params(spec, 0)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != init_params(spec, 1).tobytes()
    w = spec.layout().view(a, "fc1.weight")
    assert np.abs(w).max() <= 1 / 8  # U(-1/sqrt(64), 1/sqrt(64))


def test_cnn_adapts_to_input_size():
    spec = build_spec("cnn", (1, 28, 28), 10)
    assert spec.layout()["fc1.weight"].shape == (512, 64 * 7 * 7)
    with pytest.raises(ValueError, match="image inputs"):
        build_spec("cnn", (64,), 10)


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.9, 0.01)])
def test_flat_sgd_matches_torch_sgd(momentum, weight_decay):
    rng = np.random.default_rng(0)
    params = rng.normal(size=6).astype(np.float32)
    grads = [rng.normal(size=6).astype(np.float32) for _ in range(3)]
    ours = params.copy()
    opt = SGD(0.1, momentum, weight_decay)
    theirs = torch.tensor(params.copy(), requires_grad=True)
    topt = torch.optim.SGD([theirs], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for g in grads:
        opt.step(ours, g)
        theirs.grad = torch.from_numpy(g.copy())
        topt.step()
    # float32 arithmetic in a possibly different order: a few ulps.
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-6, atol=1e-7)


def test_local_training_moves_the_model_and_is_seeded():
    spec = build_spec("logreg", (1, 8, 8), 10)
    model = TorchModel(spec)
    start = init_params(spec, 0)
    rng = np.random.default_rng(1)
    x = rng.random((30, 1, 8, 8), dtype=np.float32)
    y = rng.integers(0, 10, 30)
    cfg = LocalTrainingConfig(lr=0.1, momentum=0.0, weight_decay=0.0, epochs=2, batch_size=4)
    shard = np.arange(5, 25)
    r1 = train_client(
        ClientTask(
            model=model, start=start, x=x, y=y, shard=shard, cfg=cfg, rng=client_rng(0, 1, 7, 1), client_id=7
        )
    )
    r2 = train_client(
        ClientTask(
            model=model, start=start, x=x, y=y, shard=shard, cfg=cfg, rng=client_rng(0, 1, 7, 1), client_id=7
        )
    )
    r3 = train_client(
        ClientTask(
            model=model, start=start, x=x, y=y, shard=shard, cfg=cfg, rng=client_rng(0, 2, 7, 1), client_id=7
        )
    )
    assert r1.num_samples == 20 and np.abs(r1.update).max() > 0
    assert r1.update.tobytes() == r2.update.tobytes()
    assert r1.update.tobytes() != r3.update.tobytes()  # another round, another data order


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_flat_adam_matches_torch_adam(weight_decay):
    from clients.optim import Adam

    rng = np.random.default_rng(1)
    params = rng.normal(size=6).astype(np.float32)
    grads = [rng.normal(size=6).astype(np.float32) for _ in range(5)]
    ours = params.copy()
    opt = Adam(0.01, weight_decay=weight_decay)
    theirs = torch.tensor(params.copy(), requires_grad=True)
    topt = torch.optim.Adam([theirs], lr=0.01, weight_decay=weight_decay)
    for g in grads:
        opt.step(ours, g)
        theirs.grad = torch.from_numpy(g.copy())
        topt.step()
    # float32 arithmetic in a different order: a few ulps.
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-5, atol=1e-7)
