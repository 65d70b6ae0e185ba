"""Server optimisers applied to the pseudo-gradient g = -(aggregated delta).

``ServerSGD`` with lr = 1 is FedAvg (McMahan et al. 2017): w <- w + mean delta.
With another lr it is the "server learning rate" of Reddi et al. 2021
(arXiv:2003.00295, Algorithm 2 with plain SGD): w <- w - eta * g.

``ServerMomentum`` is FedAvgM (Hsu, Qi, Brown 2019, "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification",
arXiv:1909.06335, Section 3): v <- beta * v + g; w <- w - lr * v.

``ServerAdagrad``, ``ServerAdam``, ``ServerYogi`` are FedAdagrad, FedAdam and
FedYogi of Reddi et al. 2021 ("Adaptive Federated Optimization",
arXiv:2003.00295, Algorithm 2), with Delta_t = -g:

    m_t = beta1 m_{t-1} + (1 - beta1) Delta_t
    Adagrad: v_t = v_{t-1} + Delta_t^2
    Adam:    v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2
    Yogi:    v_t = v_{t-1} - (1 - beta2) Delta_t^2 sign(v_{t-1} - Delta_t^2)
    x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

with m_{-1} = 0 and v_{-1} = tau^2 (the paper asks v_{-1} >= tau^2; we take
the smallest value it allows). Optional bias correction (Adam/Yogi only, not
in the paper's Algorithm 2) divides m_t by 1 - beta1^t and v_t by
1 - beta2^t, t = 1, 2, ... counting steps.

Every optimiser computes in float64 and returns new float32 parameters;
``state()`` / ``load_state()`` round-trip exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from server.stateless import Stateless


class ServerSGD(Stateless):
    def __init__(self, lr: float = 1.0):
        if lr <= 0:
            raise ValueError(f"server lr must be > 0, got {lr}")
        self.lr = lr

    def step(self, params: np.ndarray, pseudo_grad: np.ndarray) -> np.ndarray:
        """New float32 parameters; ``params`` (n,) is not modified."""
        updated = params.astype(np.float64) - self.lr * pseudo_grad
        return updated.astype(np.float32)


class ServerMomentum:
    """FedAvgM: v <- momentum * v + g; w <- w - lr * v, with v_0 = 0 (Hsu et al. 2019).

    With momentum = 0 it is ``ServerSGD`` bit for bit (for float64 pseudo-gradients,
    which is what the aggregators return).
    """

    def __init__(self, lr: float, momentum: float = 0.9):
        if lr <= 0:
            raise ValueError(f"server lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"server momentum must be in [0, 1), got {momentum}")
        self.lr = lr
        self.momentum = momentum
        self.velocity: np.ndarray | None = None

    def step(self, params: np.ndarray, pseudo_grad: np.ndarray) -> np.ndarray:
        """params (n,), pseudo_grad (n,) -> new float32 params (n,); ``params`` is not modified."""
        grad = np.asarray(pseudo_grad, dtype=np.float64)
        velocity = np.zeros_like(grad) if self.velocity is None else self.velocity
        self.velocity = self.momentum * velocity + grad
        return (params.astype(np.float64) - self.lr * self.velocity).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        """{"velocity": (n,) float64}, or {} before the first step."""
        return {} if self.velocity is None else {"velocity": self.velocity.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if set(state) - {"velocity"}:
            raise ValueError(f"ServerMomentum state has only 'velocity', got keys {sorted(state)}")
        velocity = state.get("velocity")
        self.velocity = None if velocity is None else np.array(velocity, dtype=np.float64)


def adagrad_second_moment(v: np.ndarray, delta_sq: np.ndarray, beta2: float) -> np.ndarray:
    """Reddi et al. 2021, Algorithm 2, FedAdagrad: v_t = v_{t-1} + Delta_t^2 (beta2 unused)."""
    return v + delta_sq


def adam_second_moment(v: np.ndarray, delta_sq: np.ndarray, beta2: float) -> np.ndarray:
    """Reddi et al. 2021, Algorithm 2, FedAdam: v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2."""
    return beta2 * v + (1.0 - beta2) * delta_sq


def yogi_second_moment(v: np.ndarray, delta_sq: np.ndarray, beta2: float) -> np.ndarray:
    """Reddi et al. 2021, Algorithm 2, FedYogi.

    v_t = v_{t-1} - (1 - beta2) Delta_t^2 sign(v_{t-1} - Delta_t^2).
    """
    return v - (1.0 - beta2) * delta_sq * np.sign(v - delta_sq)


class _AdaptiveServerOptimizer:
    """Shared bookkeeping of Reddi et al.'s Algorithm 2; subclasses pick the second moment.

    State: m (n,) float64, v (n,) float64, step () int64 (steps taken so far).
    """

    second_moment: Callable[[np.ndarray, np.ndarray, float], np.ndarray]
    supports_bias_correction = True

    def __init__(
        self,
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        bias_correction: bool = False,
    ):
        if lr <= 0 or tau <= 0:
            raise ValueError(f"server lr and tau must be > 0, got lr={lr}, tau={tau}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"server betas must be in [0, 1), got beta1={beta1}, beta2={beta2}")
        if bias_correction and not self.supports_bias_correction:
            raise ValueError(f"bias_correction applies to Adam and Yogi only, not {type(self).__name__}")
        self.lr, self.beta1, self.beta2, self.tau = lr, beta1, beta2, tau
        self.bias_correction = bias_correction
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None
        self.steps = 0

    def step(self, params: np.ndarray, pseudo_grad: np.ndarray) -> np.ndarray:
        """params (n,), pseudo_grad (n,) -> new float32 params (n,); ``params`` is not modified."""
        delta = -np.asarray(pseudo_grad, dtype=np.float64)
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros_like(delta), np.full_like(delta, self.tau**2)
        self.steps += 1
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * delta
        self.v = self.second_moment(self.v, delta * delta, self.beta2)
        m_hat, v_hat = self.m, self.v
        if self.bias_correction:
            m_hat = m_hat / (1.0 - self.beta1**self.steps)
            v_hat = v_hat / (1.0 - self.beta2**self.steps)
        updated = params.astype(np.float64) + self.lr * m_hat / (np.sqrt(v_hat) + self.tau)
        return updated.astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        """{"step": () int64} and, after the first step, {"m": (n,), "v": (n,)} float64 copies."""
        state = {"step": np.array(self.steps, dtype=np.int64)}
        if self.m is not None and self.v is not None:
            state |= {"m": self.m.copy(), "v": self.v.copy()}
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if set(state) not in ({"step"}, {"step", "m", "v"}):
            raise ValueError(f"{type(self).__name__} state needs 'step' (and 'm', 'v'), got {sorted(state)}")
        self.steps = int(state["step"])
        self.m = np.array(state["m"], dtype=np.float64) if "m" in state else None
        self.v = np.array(state["v"], dtype=np.float64) if "v" in state else None


class ServerAdagrad(_AdaptiveServerOptimizer):
    """FedAdagrad (Reddi et al. 2021, Algorithm 2); bias correction does not apply."""

    second_moment = staticmethod(adagrad_second_moment)
    supports_bias_correction = False


class ServerAdam(_AdaptiveServerOptimizer):
    """FedAdam (Reddi et al. 2021, Algorithm 2)."""

    second_moment = staticmethod(adam_second_moment)


class ServerYogi(_AdaptiveServerOptimizer):
    """FedYogi (Reddi et al. 2021, Algorithm 2)."""

    second_moment = staticmethod(yogi_second_moment)


SERVER_OPTIMIZERS: dict[str, type] = {
    "sgd": ServerSGD,
    "momentum": ServerMomentum,
    "adam": ServerAdam,
    "yogi": ServerYogi,
    "adagrad": ServerAdagrad,
}
