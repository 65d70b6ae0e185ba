"""BatchNorm, Embedding, LSTM and LastStep of the NumPy engine: finite differences and PyTorch.

Every backward is checked twice: centred finite differences in float64, and
the same layer in PyTorch (float32) with the same parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.models.norm_statistics import NO_VALUES, ChannelMoments
from clients.numpy_engine.core import bind_standalone
from clients.numpy_engine.gradcheck import numeric_gradient
from clients.numpy_engine.norm import BatchNorm, update_running_stats
from clients.numpy_engine.recurrent import LSTM, Embedding, LastStep, embedding_weight_grad, sigmoid

FD_TOL = 1e-6
# LSTM in float32 over up to 40 steps: rounding grows with the recurrence, so
# outputs / gradients agree with torch to rtol 1e-4 plus atol 1e-5.
LSTM_RTOL, LSTM_ATOL = 1e-4, 1e-5
# BatchNorm / Embedding in float32: one reduction deep, rtol 1e-5 plus atol 1e-5
# (gradients are sums over the batch, so they get rtol 1e-4).
OUT_RTOL, GRAD_RTOL, F32_ATOL = 1e-5, 1e-4, 1e-5


def max_rel_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """Error measure: max_i |a_i - n_i| / max(max_i |a_i|, max_i |n_i|).

    The largest elementwise error relative to the gradient array's scale
    (an elementwise ratio would blow up on entries that are ~0 by chance).
    """
    scale = max(np.abs(analytic).max(), np.abs(numeric).max(), 1e-300)
    return float(np.abs(analytic - numeric).max() / scale)


def fd_check(module, x: np.ndarray, train: bool, check_dx: bool = True) -> None:
    """L = sum(forward(x) * G) for a fixed random G: analytic dx and param grads vs finite differences."""
    rng = np.random.default_rng(1)
    out = module.forward(x, train=train)
    upstream = rng.standard_normal(out.shape)

    def loss() -> float:
        return float(np.sum(module.forward(x, train=train) * upstream))

    for g in module.grads.values():
        g[...] = 0.0
    module.forward(x, train=train)
    dx = module.backward(upstream)
    if check_dx:
        assert max_rel_error(dx, numeric_gradient(loss, x)) < FD_TOL
    for name, param in module.params.items():
        err = max_rel_error(module.grads[name], numeric_gradient(loss, param))
        assert err < FD_TOL, f"{name}: {err}"


def copy_params_to_torch(module, torch_module: torch.nn.Module) -> None:
    """Give the torch layer our parameters (names match PyTorch's)."""
    with torch.no_grad():
        for name, tp in torch_module.named_parameters():
            tp.copy_(torch.from_numpy(module.params[name]))


def assert_param_grads_match(module, torch_module: torch.nn.Module, rtol: float, atol: float) -> None:
    for name, tp in torch_module.named_parameters():
        np.testing.assert_allclose(module.grads[name], tp.grad.numpy(), rtol=rtol, atol=atol, err_msg=name)


# --------------------------------------------------------------------------- BatchNorm


BN_SHAPES = [(6, 3), (4, 3, 3, 2)]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=["1d", "2d"])
def test_batchnorm_finite_differences(shape, train):
    rng = np.random.default_rng(0)
    bn = BatchNorm(shape[1])
    bind_standalone(bn, np.float64, rng)
    bn.running_mean = rng.standard_normal(shape[1])
    bn.running_var = rng.uniform(0.5, 2.0, shape[1])
    x = rng.standard_normal(shape) * 2.0 + 0.5

    # In train mode every forward recomputes the batch statistics, so the
    # perturbations of x pass through the mean and variance.
    fd_check(bn, x, train=train)


@pytest.mark.parametrize("shape", BN_SHAPES, ids=["1d", "2d"])
def test_batchnorm_matches_torch(shape):
    rng = np.random.default_rng(0)
    bn = BatchNorm(shape[1], momentum=0.2)
    bind_standalone(bn, np.float32, rng)
    ref = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(shape[1], momentum=0.2)
    copy_params_to_torch(bn, ref)

    for step, train in enumerate([True, True, True, False]):
        x = (rng.standard_normal(shape) * (1 + step) + step).astype(np.float32)
        upstream = rng.standard_normal(shape).astype(np.float32)
        for g in bn.grads.values():
            g[...] = 0.0
        ref.zero_grad()
        ref.train(train)
        xt = torch.from_numpy(x).requires_grad_()

        y = bn.forward(x, train=train)
        dx = bn.backward(upstream)
        yt = ref(xt)
        yt.backward(torch.from_numpy(upstream))

        assert y.dtype == np.float32 and dx.dtype == np.float32
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=OUT_RTOL, atol=F32_ATOL)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=GRAD_RTOL, atol=F32_ATOL)
        assert_param_grads_match(bn, ref, GRAD_RTOL, F32_ATOL)
        np.testing.assert_allclose(bn.running_mean, ref.running_mean.numpy(), rtol=OUT_RTOL, atol=F32_ATOL)
        np.testing.assert_allclose(bn.running_var, ref.running_var.numpy(), rtol=OUT_RTOL, atol=F32_ATOL)
    assert bn.running_mean.dtype == np.float32


def test_batchnorm_running_stats_by_hand():
    # Prepare: one channel, values 1 and 3: mean 2, biased var 1, unbiased var 2.
    bn = BatchNorm(1, momentum=0.1)
    bind_standalone(bn, np.float64)

    # Execute
    bn.forward(np.array([[1.0], [3.0]]), train=True)

    # Assert: 0.9 * 0 + 0.1 * 2 and 0.9 * 1 + 0.1 * 2.
    np.testing.assert_allclose(bn.running_mean, [0.2])
    np.testing.assert_allclose(bn.running_var, [1.1])
    np.testing.assert_allclose(
        update_running_stats(np.zeros(1), np.ones(1), 2.0, 1.0, 2, 0.1), [[0.2], [1.1]]
    )


def test_batchnorm_eval_leaves_running_stats_and_rejects_single_values():
    bn = BatchNorm(2)
    bind_standalone(bn, np.float64)
    bn.forward(np.ones((3, 2)), train=False)
    np.testing.assert_array_equal(bn.running_mean, [0.0, 0.0])
    np.testing.assert_array_equal(bn.running_var, [1.0, 1.0])
    with pytest.raises(ValueError, match="more than 1 value"):
        bn.forward(np.ones((1, 2)), train=True)


def test_channel_moments_of_batches_combine_to_those_of_the_whole_set():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((23, 4, 3, 3)) * 2.0 + 1e3).astype(
        np.float32
    )  # a large mean: M2 must not cancel
    gathered = NO_VALUES
    for start, stop in ((0, 1), (1, 8), (8, 23)):
        gathered = gathered.plus(ChannelMoments.of(x[start:stop]))
    mean, var = gathered.mean_var()
    assert gathered.count == 23 * 9
    # Chan et al.'s update in float64 against numpy's two-pass float64 statistics: 1e-12.
    wide = x.astype(np.float64)
    np.testing.assert_allclose(mean, wide.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(var, wide.var(axis=(0, 2, 3)), rtol=1e-12)


# --------------------------------------------------------------------------- Embedding


def test_embedding_finite_differences_weight():
    rng = np.random.default_rng(0)
    emb = Embedding(7, 4)
    bind_standalone(emb, np.float64, rng)
    ids = np.array([[0, 3, 3, 6], [1, 3, 0, 0]], dtype=np.int64)

    # The ids are integers: only the weight gradient exists.
    fd_check(emb, ids, train=True, check_dx=False)


def test_embedding_matches_torch():
    rng = np.random.default_rng(0)
    emb = Embedding(20, 5)
    bind_standalone(emb, np.float32, rng)
    ref = torch.nn.Embedding(20, 5)
    copy_params_to_torch(emb, ref)
    ids = rng.integers(0, 20, size=(4, 9))
    upstream = rng.standard_normal((4, 9, 5)).astype(np.float32)

    y = emb.forward(ids)
    dx = emb.backward(upstream)
    yt = ref(torch.from_numpy(ids))
    yt.backward(torch.from_numpy(upstream))

    assert dx is None and y.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=OUT_RTOL, atol=F32_ATOL)
    assert_param_grads_match(emb, ref, GRAD_RTOL, F32_ATOL)


def test_embedding_repeated_ids_accumulate_rows():
    # Prepare: id 1 twice, id 3 once, in a batch of one sequence.
    emb = Embedding(4, 2)
    _, flat_grad = bind_standalone(emb, np.float64)
    ids = np.array([[1, 1, 3]])
    upstream = np.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])

    # Execute
    emb.forward(ids)
    emb.backward(upstream)

    # Assert: row 1 = [1 + 3, 2 + 4], row 3 = [5, 6], rows 0 and 2 untouched.
    np.testing.assert_array_equal(emb.grads["weight"], [[0, 0], [4, 6], [0, 0], [5, 6]])
    rows, row_grads = embedding_weight_grad(ids, upstream)
    np.testing.assert_array_equal(rows, [1, 3])
    np.testing.assert_array_equal(row_grads, [[4, 6], [5, 6]])
    assert flat_grad.sum() == 21


def test_embedding_rejects_out_of_range_and_float_ids():
    emb = Embedding(4, 2)
    bind_standalone(emb, np.float64)
    with pytest.raises(ValueError, match="must lie in"):
        emb.forward(np.array([[0, 4]]))
    with pytest.raises(ValueError, match="must lie in"):
        emb.forward(np.array([[-1, 0]]))
    with pytest.raises(ValueError, match="integer ids"):
        emb.forward(np.array([[0.0, 1.0]]))


# --------------------------------------------------------------------------- LSTM


def run_torch_lstm(lstm: LSTM, x: np.ndarray, upstream: np.ndarray):
    """torch's nn.LSTM with our parameters: (output, dx, module holding the parameter grads)."""
    ref = torch.nn.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers, batch_first=True)
    copy_params_to_torch(lstm, ref)
    xt = torch.from_numpy(x).requires_grad_()
    yt, _ = ref(xt)
    yt.backward(torch.from_numpy(upstream))
    return yt.detach().numpy(), xt.grad.numpy(), ref


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_finite_differences(num_layers):
    rng = np.random.default_rng(0)
    lstm = LSTM(3, 4, num_layers)
    bind_standalone(lstm, np.float64, rng)
    x = rng.standard_normal((2, 5, 3))

    fd_check(lstm, x, train=True)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_matches_torch(num_layers):
    rng = np.random.default_rng(0)
    lstm = LSTM(6, 8, num_layers)
    bind_standalone(lstm, np.float32, rng)
    x = rng.standard_normal((5, 12, 6)).astype(np.float32)
    upstream = rng.standard_normal((5, 12, 8)).astype(np.float32)

    y = lstm.forward(x)
    dx = lstm.backward(upstream)
    yt, dxt, ref = run_torch_lstm(lstm, x, upstream)

    assert y.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_allclose(y, yt, rtol=LSTM_RTOL, atol=LSTM_ATOL)
    np.testing.assert_allclose(dx, dxt, rtol=LSTM_RTOL, atol=LSTM_ATOL)
    assert_param_grads_match(lstm, ref, LSTM_RTOL, LSTM_ATOL)


def test_lstm_long_sequence_stays_finite_and_matches_torch():
    rng = np.random.default_rng(3)
    lstm = LSTM(4, 16, num_layers=2)
    bind_standalone(lstm, np.float32, rng)
    x = (3.0 * rng.standard_normal((3, 40, 4))).astype(np.float32)  # large inputs saturate the gates
    upstream = rng.standard_normal((3, 40, 16)).astype(np.float32)

    y = lstm.forward(x)
    dx = lstm.backward(upstream)
    yt, dxt, ref = run_torch_lstm(lstm, x, upstream)

    assert np.isfinite(y).all() and np.isfinite(dx).all()
    assert all(np.isfinite(g).all() for g in lstm.grads.values())
    np.testing.assert_allclose(y, yt, rtol=LSTM_RTOL, atol=LSTM_ATOL)
    np.testing.assert_allclose(dx, dxt, rtol=LSTM_RTOL, atol=LSTM_ATOL)
    assert_param_grads_match(lstm, ref, LSTM_RTOL, LSTM_ATOL)


def test_lstm_parameter_layout_is_torch_order():
    names = [name for name, _ in LSTM(3, 5, num_layers=2).param_shapes()]
    ref = torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)
    assert names == [name for name, _ in ref.named_parameters()]
    assert dict(LSTM(3, 5, 2).param_shapes()) == {n: tuple(p.shape) for n, p in ref.named_parameters()}


def test_sigmoid_is_stable_at_extremes():
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    with np.errstate(all="raise"):
        s = sigmoid(x)
    np.testing.assert_allclose(s, [0.0, 1 / (1 + np.exp(30.0)), 0.5, 1.0, 1.0], rtol=1e-6, atol=1e-15)


# --------------------------------------------------------------------------- LastStep


def test_last_step_by_hand_and_finite_differences():
    # Prepare: N=1, T=3, H=2.
    x = np.arange(6.0).reshape(1, 3, 2)
    last = LastStep()

    # Execute
    y = last.forward(x)
    dx = last.backward(np.array([[10.0, 20.0]]))

    # Assert
    np.testing.assert_array_equal(y, [[4.0, 5.0]])
    np.testing.assert_array_equal(dx, [[[0, 0], [0, 0], [10, 20]]])
    fd_check(last, np.random.default_rng(0).standard_normal((2, 4, 3)), train=True)


# --------------------------------------------------------------------------- accumulate, never assign


@pytest.mark.parametrize(
    ("make", "x"),
    [
        (lambda: BatchNorm(3), np.random.default_rng(0).standard_normal((5, 3, 2, 2))),
        (lambda: Embedding(6, 3), np.array([[0, 2, 2], [5, 1, 2]])),
        (lambda: LSTM(3, 4, num_layers=2), np.random.default_rng(0).standard_normal((2, 6, 3))),
    ],
    ids=["batchnorm", "embedding", "lstm"],
)
def test_backward_twice_doubles_param_grads(make, x):
    module = make()
    bind_standalone(module, np.float64)
    upstream = np.random.default_rng(1).standard_normal(module.forward(x).shape)

    module.backward(upstream)
    once = {name: g.copy() for name, g in module.grads.items()}
    module.backward(upstream)

    for name, g in module.grads.items():
        assert np.abs(once[name]).max() > 0, name
        np.testing.assert_allclose(g, 2 * once[name], rtol=1e-12, err_msg=name)
