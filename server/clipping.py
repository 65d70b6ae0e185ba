"""L2 clipping of client updates, fixed and adaptive.

Fixed clipping is the per-client step of DP-FedAvg (McMahan, Ramage, Talwar,
Zhang 2018, arXiv:1710.06963, Algorithm 1, flat clipping):
pi(u, C) = u * min(1, C / ||u||_2).

``AdaptiveClipNorm`` is the geometric update of Andrew, Thakkar, McMahan,
Ramaswamy 2021, "Differentially Private Learning with Adaptive Clipping",
arXiv:1905.03871, Section 2 and Algorithm 1: C <- C * exp(-eta (b_bar - gamma)),
where b_bar is the (optionally noised) fraction of clients whose update norm
is <= C and gamma the target quantile. Defaults are the paper's: C_0 = 0.1,
gamma = 0.5, eta = 0.2.
"""

from __future__ import annotations

import numpy as np

from server.stateless import Stateless

CLIPPING_KINDS = ("none", "fixed", "adaptive")  # server.clipping.kind: off, FixedClipNorm, AdaptiveClipNorm


def clip_update(update: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """update (n,) -> (clipped (n,) float64 new array, L2 norm before clipping).

    Scales by min(1, max_norm / ||u||); a zero vector stays zero.
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    update = np.asarray(update, dtype=np.float64)
    norm = float(np.linalg.norm(update))
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return update * factor, norm


def clip_updates(updates: np.ndarray, max_norm: float) -> tuple[np.ndarray, np.ndarray, float]:
    """updates (k, n) -> (clipped (k, n) float64, norms before (k,), fraction of rows clipped).

    A row counts as clipped when its norm exceeds ``max_norm``.
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    updates = np.asarray(updates, dtype=np.float64)
    if updates.ndim != 2:
        raise ValueError(f"need updates (k, n), got {updates.shape}")
    norms = np.linalg.norm(updates, axis=1)
    factors = np.minimum(1.0, max_norm / np.where(norms > 0, norms, 1.0))
    fraction = float(np.mean(norms > max_norm)) if len(norms) else 0.0
    return updates * factors[:, None], norms, fraction


class FixedClipNorm(Stateless):
    """A clipping norm C that never changes (the same interface as AdaptiveClipNorm)."""

    def __init__(self, norm: float):
        if not norm > 0:
            raise ValueError(f"the clip norm must be > 0, got {norm}")
        self.norm = float(norm)

    def update(self, norms: np.ndarray, rng: np.random.Generator | None = None) -> float:
        return self.norm


class AdaptiveClipNorm:
    """Tracks a clipping norm C that converges to the target quantile of update norms.

    After each round: b_bar = mean(norms <= C) (+ N(0, (count_noise_std / k)^2)
    when count_noise_std > 0), then C <- C * exp(-learning_rate * (b_bar - target_quantile)).
    In the paper the noised count uses sigma_b on the sum of indicators, so the
    noise on the fraction is sigma_b / k.
    """

    def __init__(
        self,
        initial_norm: float = 0.1,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
        count_noise_std: float = 0.0,
    ):
        if initial_norm <= 0 or learning_rate <= 0 or count_noise_std < 0:
            raise ValueError(
                "need initial_norm > 0, learning_rate > 0, count_noise_std >= 0, got "
                f"{initial_norm}, {learning_rate}, {count_noise_std}"
            )
        if not 0 <= target_quantile <= 1:
            raise ValueError(f"target_quantile must be in [0, 1], got {target_quantile}")
        self.target_quantile = target_quantile
        self.learning_rate = learning_rate
        self.count_noise_std = count_noise_std
        self._norm = float(initial_norm)

    @property
    def norm(self) -> float:
        """The current clipping norm C."""
        return self._norm

    def update(self, norms: np.ndarray, rng: np.random.Generator | None = None) -> float:
        """norms (k,) of this round's unclipped updates -> the new clipping norm.

        ``rng`` is required when count_noise_std > 0 and unused otherwise.
        """
        norms = np.asarray(norms, dtype=np.float64)
        if norms.ndim != 1 or len(norms) == 0:
            raise ValueError(f"need norms (k,) with k >= 1, got {norms.shape}")
        below = float(np.mean(norms <= self._norm))
        if self.count_noise_std > 0:
            if rng is None:
                raise ValueError("count_noise_std > 0 needs an rng")
            below += rng.normal(0.0, self.count_noise_std / len(norms))
        self._norm *= float(np.exp(-self.learning_rate * (below - self.target_quantile)))
        return self._norm

    def state(self) -> dict[str, np.ndarray]:
        """{"norm": () float64}."""
        return {"norm": np.array(self._norm, dtype=np.float64)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if set(state) != {"norm"}:
            raise ValueError(f"AdaptiveClipNorm state has only 'norm', got keys {sorted(state)}")
        self._norm = float(state["norm"])
