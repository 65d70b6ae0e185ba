"""The chain-rule engine's layers, each backward checked twice: centred finite differences in
float64 and the same layer in PyTorch (float32) on seeded random inputs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from clients.numpy_engine.activations import GELU, Dropout, LeakyReLU, ReLU, Sigmoid, Tanh
from clients.numpy_engine.conv import (
    AvgPool2d,
    Conv2d,
    MaxPool2d,
    col2im,
    im2col,
    max_pool_backward,
    max_pool_forward,
)
from clients.numpy_engine.core import Module, bind_standalone
from clients.numpy_engine.dense import Flatten, Linear, linear_backward, linear_forward
from clients.numpy_engine.gradcheck import numeric_gradient
from clients.numpy_engine.losses import mse, softmax_cross_entropy
from clients.numpy_engine.residual import ResidualBlock

# Error measure of a finite-difference check, per tensor: norm-based,
# ||analytic - numeric|| / max(||analytic|| + ||numeric||, 1e-12). Elementwise ratios blow up
# on entries whose true gradient is ~0; the norm ratio does not, and centred differences in
# float64 with h = 1e-6 are accurate to ~1e-9 relative here.
FD_TOLERANCE = 1e-6
# float32 agreement with torch: rtol 1e-4 and atol 1e-5 * max(1, max|torch value|); float32 sums
# of up to a few hundred products carry relative errors ~1e-6, the summation orders differ.
RTOL, ATOL = 1e-4, 1e-5


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-12))


def _loss(module: Module, x: np.ndarray, upstream: np.ndarray, before_forward: Callable | None) -> float:
    """L = sum(forward(x) * upstream), whose gradient backward(upstream) claims to be."""
    if before_forward is not None:
        before_forward(module)
    return float(np.sum(module.forward(x, True) * upstream))


def check_finite_differences(
    module: Module, x: np.ndarray, before_forward: Callable[[Module], None] | None = None, seed: int = 0
) -> None:
    """Asserts backward's dx and every parameter gradient match centred differences (float64).

    ``before_forward`` runs before every forward (e.g. to fix a dropout mask).
    """
    rng = np.random.default_rng(seed)
    bind_standalone(module, np.float64, rng)
    x = x.astype(np.float64)
    if before_forward is not None:
        before_forward(module)
    upstream = rng.normal(size=module.forward(x, True).shape)
    dx = module.backward(upstream)
    analytic = {name: g.copy() for name, g in module.grads.items()}

    def loss() -> float:
        return _loss(module, x, upstream, before_forward)

    errors = {"dx": relative_error(dx, numeric_gradient(loss, x))}
    for name, p in module.params.items():
        errors[name] = relative_error(analytic[name], numeric_gradient(loss, p))
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] < FD_TOLERANCE, (
        f"{type(module).__name__} {worst}: relative error {errors[worst]:.2e}"
    )


def assert_close(ours: np.ndarray, ref: torch.Tensor | np.ndarray, what: str) -> None:
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    assert ours.shape == ref.shape, what
    atol = ATOL * max(1.0, float(np.abs(ref).max(initial=0.0)))
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=atol, err_msg=what)


def check_against_torch(module: Module, twin: nn.Module, x: np.ndarray, train: bool = True, seed: int = 1):
    """Asserts output, dx and every parameter gradient match the torch twin (float32),
    with the same parameters, input and upstream gradient."""
    rng = np.random.default_rng(seed)
    bind_standalone(module, np.float32, rng)
    twin.train(train)
    torch_params = dict(twin.named_parameters())
    assert sorted(torch_params) == sorted(module.params), "parameter names differ from torch's"
    with torch.no_grad():
        for name, p in torch_params.items():
            p.copy_(torch.from_numpy(module.params[name]))
    x = x.astype(np.float32)
    y = module.forward(x, train)
    upstream = rng.normal(size=y.shape).astype(np.float32)
    dx = module.backward(upstream)

    tx = torch.tensor(x, requires_grad=True)
    ty = twin(tx)
    ty.backward(torch.from_numpy(upstream))
    assert y.dtype == np.float32 and dx.dtype == np.float32
    assert_close(y, ty, "output")
    assert_close(dx, tx.grad, "dx")
    for name, p in torch_params.items():
        assert module.grads[name].dtype == np.float32
        assert_close(module.grads[name], p.grad, f"grad {name}")


# --- the layer cases: (numpy module, torch twin, input shape) ------------------

CONV_CASES = {
    "3x3 pad 1": (dict(in_channels=3, out_channels=4, kernel=3, padding=1), (2, 3, 7, 6)),
    "5x5 stride 2 pad 2": (dict(in_channels=2, out_channels=3, kernel=5, stride=2, padding=2), (2, 2, 9, 7)),
    "1x1": (dict(in_channels=3, out_channels=2, kernel=1), (2, 3, 5, 4)),
    "3x3 stride 2, 7x7 not divisible": (
        dict(in_channels=2, out_channels=3, kernel=3, stride=2),
        (2, 2, 7, 7),
    ),
    "2x3 kernel stride (2,1) pad (1,0)": (
        dict(in_channels=2, out_channels=3, kernel=(2, 3), stride=(2, 1), padding=(1, 0)),
        (1, 2, 6, 8),
    ),
    "2x2 stride 3 pad 1": (dict(in_channels=1, out_channels=2, kernel=2, stride=3, padding=1), (3, 1, 8, 5)),
}

POOL_CASES = {
    "2x2 on 7x6": (dict(kernel=2), (2, 3, 7, 6)),
    "3x3 stride 2 overlapping": (dict(kernel=3, stride=2), (2, 2, 9, 8)),
    "3x3 on 8x7 (floor)": (dict(kernel=3), (1, 2, 8, 7)),
    "(2,3) stride (1,2)": (dict(kernel=(2, 3), stride=(1, 2)), (2, 1, 5, 9)),
}


def _away_from_zero(shape, rng) -> np.ndarray:
    """Normal values pushed at least 0.1 away from 0, the kink of (leaky) ReLU."""
    z = rng.normal(size=shape)
    return z + 0.1 * np.sign(z)


ACTIVATION_CASES = {
    "relu": (ReLU, nn.ReLU, _away_from_zero),
    "leaky_relu": (LeakyReLU, nn.LeakyReLU, _away_from_zero),
    "leaky_relu 0.2": (lambda: LeakyReLU(0.2), lambda: nn.LeakyReLU(0.2), _away_from_zero),
    "leaky_relu 1.5": (lambda: LeakyReLU(1.5), lambda: nn.LeakyReLU(1.5), _away_from_zero),
    "sigmoid": (Sigmoid, nn.Sigmoid, lambda s, r: 3 * r.normal(size=s)),
    "tanh": (Tanh, nn.Tanh, lambda s, r: 2 * r.normal(size=s)),
    "gelu (tanh)": (GELU, lambda: nn.GELU(approximate="tanh"), lambda s, r: 2 * r.normal(size=s)),
}


class TorchResidual(nn.Sequential):
    """x + body(x), the body's modules held as an nn.Sequential's: names "0.weight", "2.bias"."""

    def forward(self, x):
        return x + super().forward(x)


def _numpy_residual() -> ResidualBlock:
    return ResidualBlock([Linear(5, 6), ReLU(), Linear(6, 5)])


# --- finite differences ----------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_finite_differences(case):
    args, shape = CONV_CASES[case]
    check_finite_differences(Conv2d(**args), np.random.default_rng(3).normal(size=shape))


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("pool", [MaxPool2d, AvgPool2d])
def test_pool_finite_differences(pool, case):
    args, shape = POOL_CASES[case]
    # Continuous random values: no two entries of a window lie within 2h of each other (no ties).
    check_finite_differences(pool(**args), np.random.default_rng(4).normal(size=shape))


@pytest.mark.parametrize("case", ACTIVATION_CASES)
def test_activation_finite_differences(case):
    make, _, make_x = ACTIVATION_CASES[case]
    check_finite_differences(make(), make_x((4, 7), np.random.default_rng(5)))


def test_dense_finite_differences():
    rng = np.random.default_rng(6)
    check_finite_differences(Linear(5, 4), rng.normal(size=(3, 5)))
    check_finite_differences(Linear(4, 3), rng.normal(size=(2, 3, 4)))  # leading axes (N, T, I)
    check_finite_differences(Flatten(), rng.normal(size=(2, 3, 2, 2)))


def test_residual_finite_differences():
    check_finite_differences(_numpy_residual(), _away_from_zero((3, 5), np.random.default_rng(7)))


# --- torch agreement (float32) ------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(case):
    args, shape = CONV_CASES[case]
    twin = nn.Conv2d(
        args["in_channels"],
        args["out_channels"],
        args["kernel"],
        stride=args.get("stride", 1),
        padding=args.get("padding", 0),
    )
    check_against_torch(Conv2d(**args), twin, np.random.default_rng(8).normal(size=shape))


def test_conv2d_matches_torch_at_benchmark_size():
    x = np.random.default_rng(9).normal(size=(10, 32, 14, 14))
    check_against_torch(Conv2d(32, 64, 5, padding=2), nn.Conv2d(32, 64, 5, padding=2), x)


@pytest.mark.parametrize("case", POOL_CASES)
def test_pools_match_torch(case):
    args, shape = POOL_CASES[case]
    x = np.random.default_rng(10).normal(size=shape)
    check_against_torch(MaxPool2d(**args), nn.MaxPool2d(args["kernel"], args.get("stride")), x)
    check_against_torch(AvgPool2d(**args), nn.AvgPool2d(args["kernel"], args.get("stride")), x)


@pytest.mark.parametrize("args", [dict(kernel=2), dict(kernel=3, stride=2), dict(kernel=3, stride=1)])
def test_max_pool_ties_go_to_the_first_maximum_as_in_torch(args):
    x = np.random.default_rng(11).integers(0, 3, size=(2, 2, 7, 8)).astype(np.float32)  # many ties
    check_against_torch(MaxPool2d(**args), nn.MaxPool2d(args["kernel"], args.get("stride")), x)


def test_max_pool_by_hand():
    x = np.array([[1.0, 3.0, 0.0, 5.0], [3.0, 2.0, 5.0, 4.0], [9.0, 9.0, 9.0, 9.0]]).reshape(1, 1, 3, 4)

    y = max_pool_forward(x, (2, 2), (2, 2))
    dx = max_pool_backward(np.array([[[[10.0, 20.0]]]]), x, y, (2, 2), (2, 2))

    np.testing.assert_array_equal(y, [[[[3.0, 5.0]]]])  # the last row no window covers is dropped
    np.testing.assert_array_equal(dx[0, 0], [[0, 10, 0, 20], [0, 0, 0, 0], [0, 0, 0, 0]])  # first max wins


@pytest.mark.parametrize("case", ACTIVATION_CASES)
def test_activations_match_torch(case):
    make, make_twin, make_x = ACTIVATION_CASES[case]
    check_against_torch(make(), make_twin(), make_x((4, 7), np.random.default_rng(12)))


def test_sigmoid_is_stable_for_large_inputs():
    x = np.array([[-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4]], dtype=np.float32)
    check_against_torch(Sigmoid(), nn.Sigmoid(), x)
    with np.errstate(over="raise", invalid="raise"):
        y = Sigmoid().forward(x)
    np.testing.assert_array_equal(y[0, [0, -1]], [0.0, 1.0])


def test_dense_match_torch():
    rng = np.random.default_rng(13)
    check_against_torch(Linear(6, 4), nn.Linear(6, 4), rng.normal(size=(5, 6)))
    check_against_torch(Linear(6, 4), nn.Linear(6, 4), rng.normal(size=(2, 3, 6)))
    check_against_torch(Flatten(), nn.Flatten(), rng.normal(size=(3, 2, 4, 5)))


def test_residual_block_matches_torch_skip_plus_body():
    block = _numpy_residual()
    assert [name for name, _ in block.param_shapes()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    twin = TorchResidual(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 5))
    check_against_torch(block, twin, _away_from_zero((4, 5), np.random.default_rng(14)))


# --- pure functions ------------------------------------------------------------------------


def test_col2im_is_the_adjoint_of_im2col():
    rng = np.random.default_rng(15)
    xp = rng.normal(size=(3, 2, 9, 8))  # (C, N, Hp, Wp)
    for kernel, stride in [((3, 3), (1, 1)), ((2, 3), (2, 3)), ((4, 1), (3, 2))]:
        cols = im2col(xp, kernel, stride)
        d = rng.normal(size=cols.shape)
        # <im2col(x), d> == <x, col2im(d)>
        np.testing.assert_allclose(np.sum(cols * d), np.sum(xp * col2im(d, xp.shape, kernel, stride)))


def test_linear_by_hand():
    x, w, b = np.array([[1.0, 2.0]]), np.array([[1.0, 0.0], [2.0, -1.0], [0.0, 3.0]]), np.array([0.5, 0, -1])

    y = linear_forward(x, w, b)
    dx, dw, db = linear_backward(np.array([[1.0, 1.0, 1.0]]), x, w)

    np.testing.assert_array_equal(y, [[1.5, 0.0, 5.0]])
    np.testing.assert_array_equal(dx, [[3.0, 2.0]])
    np.testing.assert_array_equal(dw, [[1.0, 2.0]] * 3)
    np.testing.assert_array_equal(db, [1.0, 1.0, 1.0])


# --- accumulate, never assign ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: Linear(4, 3), (5, 4)),
        (lambda: Conv2d(2, 3, 3, stride=2, padding=1), (2, 2, 6, 5)),
        (_numpy_residual, (3, 5)),
    ],
)
def test_backward_twice_doubles_the_parameter_gradients(make, shape):
    rng = np.random.default_rng(16)
    module = make()
    _, flat_g = bind_standalone(module, np.float64, rng)
    x = rng.normal(size=shape)
    upstream = rng.normal(size=module.forward(x).shape)

    dx_once = module.backward(upstream)
    once = flat_g.copy()
    dx_twice = module.backward(upstream)  # the input reused: its gradients add

    assert np.abs(once).max() > 0
    np.testing.assert_allclose(flat_g, 2 * once, rtol=1e-12)
    np.testing.assert_allclose(dx_twice, dx_once, rtol=1e-12)  # dx is returned, not accumulated


def test_dtype_follows_the_inputs():
    for dtype in (np.float32, np.float64):
        module = Conv2d(2, 3, 3, padding=1)
        bind_standalone(module, dtype)
        y = module.forward(np.ones((1, 2, 4, 4), dtype=dtype))
        assert y.dtype == dtype and module.backward(np.ones_like(y)).dtype == dtype
        assert module.grads["weight"].dtype == dtype


# --- losses -----------------------------------------------------------------------------------


def test_softmax_cross_entropy_matches_torch():
    rng = np.random.default_rng(17)
    logits = (3 * rng.normal(size=(8, 5))).astype(np.float32)
    labels = rng.integers(0, 5, size=8)

    loss, dlogits = softmax_cross_entropy(logits, labels)
    t_logits = torch.tensor(logits, requires_grad=True)
    t_loss = nn.functional.cross_entropy(t_logits, torch.from_numpy(labels))
    t_loss.backward()

    assert dlogits.dtype == np.float32
    np.testing.assert_allclose(loss, t_loss.item(), rtol=RTOL)
    assert_close(dlogits, t_logits.grad, "dlogits")


def test_softmax_cross_entropy_finite_differences():
    rng = np.random.default_rng(18)
    logits, labels = rng.normal(size=(4, 6)), rng.integers(0, 6, size=4)
    _, dlogits = softmax_cross_entropy(logits, labels)
    numeric = numeric_gradient(lambda: softmax_cross_entropy(logits, labels)[0], logits)
    assert relative_error(dlogits, numeric) < FD_TOLERANCE


def test_softmax_cross_entropy_is_stable_at_large_logits():
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]], dtype=np.float32)
    labels = np.array([1, 2, 0])

    with np.errstate(over="raise", invalid="raise", divide="raise"):  # exp(-2e4) may underflow to 0
        loss, dlogits = softmax_cross_entropy(logits, labels)
    t_loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))

    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    np.testing.assert_allclose(loss, t_loss.item(), rtol=RTOL)  # (2e4 + log 2 + log 3) / 3
    np.testing.assert_allclose(dlogits[0], [1 / 3, -1 / 3, 0], atol=1e-7)


def test_softmax_cross_entropy_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0]))


def test_mse_matches_torch_and_finite_differences():
    rng = np.random.default_rng(19)
    pred, target = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)

    loss, dpred = mse(pred, target)
    t_pred = torch.tensor(pred, requires_grad=True)
    t_loss = nn.functional.mse_loss(t_pred, torch.from_numpy(target))
    t_loss.backward()

    np.testing.assert_allclose(loss, t_loss.item(), rtol=RTOL)
    assert_close(dpred, t_pred.grad, "dpred")
    p64, t64 = pred.astype(np.float64), target.astype(np.float64)
    numeric = numeric_gradient(lambda: mse(p64, t64)[0], p64)
    assert relative_error(mse(p64, t64)[1], numeric) < FD_TOLERANCE


# --- dropout ----------------------------------------------------------------------------------


def test_dropout_eval_is_identity():
    x = np.random.default_rng(20).normal(size=(3, 4)).astype(np.float32)
    module = Dropout(0.5)  # no rng needed in eval mode
    assert module.forward(x, train=False) is x
    assert module.backward(x) is x
    check_against_torch(Dropout(0.5), nn.Dropout(0.5), x, train=False)


def test_dropout_train_keeps_one_minus_p_scaled():
    p, x = 0.3, np.ones((200, 500), dtype=np.float32)
    module = Dropout(p)
    module.rng = np.random.default_rng(21)

    y = module.forward(x, train=True)

    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.005  # 1e5 Bernoulli draws: std 0.0014
    np.testing.assert_allclose(y[kept], 1 / (1 - p), rtol=1e-6)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(module.backward(2 * x), 2 * y)  # the same mask


def test_dropout_same_seed_same_mask():
    x = np.ones((10, 10))

    def run(seed):
        module = Dropout(0.5)
        module.rng = np.random.default_rng(seed)
        return module.forward(x, train=True)

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))


def test_dropout_without_rng_raises_in_train_mode():
    with pytest.raises(ValueError, match="rng"):
        Dropout(0.2).forward(np.ones(3), train=True)
    np.testing.assert_array_equal(Dropout(0.0).forward(np.ones(3), train=True), np.ones(3))


def test_dropout_finite_differences_with_a_fixed_mask():
    def fixed_mask(module):
        module.rng = np.random.default_rng(22)  # the same mask on every forward

    check_finite_differences(Dropout(0.4), np.random.default_rng(23).normal(size=(5, 6)), fixed_mask)
