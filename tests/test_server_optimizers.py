"""Server optimisers step by step on 2-element arrays: FedAvgM, FedAdagrad, FedAdam, FedYogi."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.optimizers import (
    SERVER_OPTIMIZERS,
    ServerAdagrad,
    ServerAdam,
    ServerMomentum,
    ServerSGD,
    ServerYogi,
    yogi_second_moment,
)

X0 = np.array([1.0, -1.0], dtype=np.float32)
G1 = np.array([-0.2, 0.1])  # Delta_1 = -g = (0.2, -0.1)
G2 = np.array([-0.2, -0.3])  # Delta_2 = (0.2, 0.3)
LR, B1, B2, TAU = 0.1, 0.9, 0.99, 1e-3


def _two_steps(opt) -> tuple[np.ndarray, np.ndarray]:
    x1 = opt.step(X0, G1)
    return x1, opt.step(x1, G2)


def _reddi_by_hand(second_moment) -> tuple[list[float], list[float]]:
    """Algorithm 2 written out per coordinate with Python floats."""
    x1, x2 = [], []
    for i in range(2):
        d1, d2 = -G1[i], -G2[i]
        m1 = (1 - B1) * d1  # m_0 = 0
        m2 = B1 * m1 + (1 - B1) * d2
        v1 = second_moment(TAU**2, d1 * d1)  # v_0 = tau^2
        v2 = second_moment(v1, d2 * d2)
        x1.append(float(X0[i]) + LR * m1 / (math.sqrt(v1) + TAU))
        x2.append(float(np.float32(x1[i])) + LR * m2 / (math.sqrt(v2) + TAU))
    return x1, x2


def test_momentum_two_steps_by_hand():
    opt = ServerMomentum(lr=0.5, momentum=0.9)
    x1 = opt.step(np.array([1.0, 2.0], dtype=np.float32), np.array([1.0, -2.0]))
    # v1 = (1, -2); x1 = (1, 2) - 0.5 * (1, -2) = (0.5, 3)
    np.testing.assert_array_equal(x1, [0.5, 3.0])
    x2 = opt.step(x1, np.array([1.0, 0.0]))
    # v2 = 0.9 * (1, -2) + (1, 0) = (1.9, -1.8); x2 = (0.5 - 0.95, 3 + 0.9)
    np.testing.assert_allclose(x2, [-0.45, 3.9], rtol=1e-6)
    assert x2.dtype == np.float32


def test_momentum_zero_is_sgd_bit_for_bit():
    rng = np.random.default_rng(0)
    sgd, momentum = ServerSGD(lr=0.3), ServerMomentum(lr=0.3, momentum=0.0)
    a = b = rng.normal(size=50).astype(np.float32)
    for _ in range(5):
        grad = rng.normal(size=50)
        a, b = sgd.step(a, grad), momentum.step(b, grad)
        np.testing.assert_array_equal(a, b)


def test_adagrad_two_steps_by_hand():
    # v1 = 1e-6 + (0.04, 0.01); v2 = v1 + (0.04, 0.09); m1 = (0.02, -0.01); m2 = (0.038, 0.021)
    x1, x2 = _two_steps(ServerAdagrad(lr=LR, beta1=B1, beta2=B2, tau=TAU))
    want1, want2 = _reddi_by_hand(lambda v, d2: v + d2)
    np.testing.assert_allclose(x1, want1, rtol=1e-6)
    np.testing.assert_allclose(x2, want2, rtol=1e-6)
    # coordinate 0, step 1: 1 + 0.1 * 0.02 / (sqrt(0.040001) + 0.001) = 1.0099504...
    assert x1[0] == pytest.approx(1 + 0.1 * 0.02 / (math.sqrt(0.040001) + 0.001), rel=1e-7)


def test_adam_two_steps_by_hand():
    # v1 = 0.99e-6 + 0.01 * (0.04, 0.01) = (0.00040099, 0.00010099)
    x1, x2 = _two_steps(ServerAdam(lr=LR, beta1=B1, beta2=B2, tau=TAU))
    want1, want2 = _reddi_by_hand(lambda v, d2: B2 * v + (1 - B2) * d2)
    np.testing.assert_allclose(x1, want1, rtol=1e-6)
    np.testing.assert_allclose(x2, want2, rtol=1e-6)
    assert x1[1] == pytest.approx(-1 + 0.1 * -0.01 / (math.sqrt(0.00010099) + 0.001), rel=1e-7)


def test_yogi_two_steps_by_hand():
    # v_{t-1} < Delta^2 on both steps, so sign = -1 and v grows by 0.01 Delta^2:
    # v1 = (0.000401, 0.000101), v2 = (0.000801, 0.001001)
    x1, x2 = _two_steps(ServerYogi(lr=LR, beta1=B1, beta2=B2, tau=TAU))
    want1, want2 = _reddi_by_hand(lambda v, d2: v - (1 - B2) * d2 * np.sign(v - d2))
    np.testing.assert_allclose(x1, want1, rtol=1e-6)
    np.testing.assert_allclose(x2, want2, rtol=1e-6)
    assert x2[0] == pytest.approx(float(x1[0]) + 0.1 * 0.038 / (math.sqrt(0.000801) + 0.001), rel=1e-7)


def test_yogi_second_moment_shrinks_when_v_exceeds_delta_squared():
    # v = 1 > 0.25: 1 - 0.1 * 0.25 = 0.975;  v = 0.01 < 0.25: 0.01 + 0.1 * 0.25 = 0.035
    v = yogi_second_moment(np.array([1.0, 0.01]), np.array([0.25, 0.25]), beta2=0.9)
    np.testing.assert_allclose(v, [0.975, 0.035], rtol=1e-15)


def test_adam_bias_correction_first_step_by_hand():
    opt = ServerAdam(lr=LR, beta1=B1, beta2=B2, tau=TAU, bias_correction=True)
    x1 = opt.step(X0, G1)
    # m_hat = m1 / 0.1 = Delta_1; v_hat = v1 / 0.01 = 0.99e-6 / 0.01 + Delta_1^2 = 9.9e-5 + Delta_1^2
    want = [float(X0[i]) + LR * -G1[i] / (math.sqrt(9.9e-5 + G1[i] ** 2) + TAU) for i in range(2)]
    np.testing.assert_allclose(x1, want, rtol=1e-6)


@pytest.mark.parametrize("name", ["momentum", "adagrad", "adam", "yogi"])
def test_state_round_trip_gives_identical_next_step(name):
    original = SERVER_OPTIMIZERS[name](lr=LR)
    x1, x2 = _two_steps(original)
    restored = SERVER_OPTIMIZERS[name](lr=LR)
    restored.load_state(original.state())
    g3 = np.array([0.05, -0.4])
    np.testing.assert_array_equal(restored.step(x2, g3), original.step(x2, g3))
    assert sorted(restored.state()) == sorted(original.state())


def test_adaptive_state_has_step_counter_array_and_is_a_copy():
    opt = ServerAdam(lr=LR)
    assert list(opt.state()) == ["step"] and int(opt.state()["step"]) == 0  # before the first step
    _two_steps(opt)
    state = opt.state()
    assert state["step"].shape == () and int(state["step"]) == 2
    state["m"][:] = 99.0
    assert not np.any(opt.state()["m"] == 99.0)
    with pytest.raises(ValueError, match="'step'"):
        opt.load_state({"m": state["m"]})


def test_step_leaves_params_untouched():
    for name, cls in SERVER_OPTIMIZERS.items():
        params = X0.copy()
        new = cls(lr=LR).step(params, G1)
        np.testing.assert_array_equal(params, X0, err_msg=name)
        assert new.dtype == np.float32 and not np.shares_memory(new, params)


def test_preconditions():
    with pytest.raises(ValueError, match="Adam and Yogi only"):
        ServerAdagrad(lr=LR, bias_correction=True)
    with pytest.raises(ValueError, match="lr"):
        ServerYogi(lr=0.0)
    with pytest.raises(ValueError, match="momentum"):
        ServerMomentum(lr=LR, momentum=1.0)
    assert set(SERVER_OPTIMIZERS) == {"sgd", "momentum", "adagrad", "adam", "yogi"}
