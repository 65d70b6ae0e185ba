"""Client-side algorithms: what changes in the local step.

- FedProx (Li et al. 2020, arXiv:1812.06127, Eq. 2): the local objective is
  F_k(w) + mu/2 ||w - w_t||^2, so each step's gradient gains mu (w - w_t).
- SCAFFOLD (Karimireddy et al. 2020, arXiv:1910.06378, Algorithm 1, option II):
  the step uses g - c_i + c; after K local steps of size eta_l the client's
  control variate becomes c_i+ = c_i - c + (x - y_i) / (K eta_l).
- Local gradient-norm clipping: each step's gradient g <- g min(1, C / ||g||).

All are pure vector maths on flat (n,) arrays: numpy on the host, or torch
tensors on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.models import arrays


@dataclass(frozen=True)
class StepTransform:
    """How one local step's gradient is modified; every field off by default.

    prox_mu: FedProx's mu; global_params: w_t (n,) for the proximal term.
    max_grad_norm: per-step clipping of the local objective's gradient.
    correction: SCAFFOLD's (c - c_i) (n,), added after clipping.
    """

    prox_mu: float = 0.0
    global_params: Any = None
    max_grad_norm: float | None = None
    correction: Any = None

    @property
    def active(self) -> bool:
        return bool(self.prox_mu) or self.max_grad_norm is not None or self.correction is not None

    def apply(self, grad, params) -> None:
        """Modify ``grad`` (n,) in place for the step from ``params`` (n,)."""
        if self.prox_mu:
            grad += self.prox_mu * (params - self.global_params)
        if self.max_grad_norm is not None:
            norm = arrays.l2_norm(grad)
            if norm > self.max_grad_norm:
                grad *= self.max_grad_norm / norm
        if self.correction is not None:
            grad += self.correction


def scaffold_new_control(
    client_c: np.ndarray,
    server_c: np.ndarray,
    global_params: np.ndarray,
    local_params: np.ndarray,
    steps: int,
    lr: float,
) -> np.ndarray:
    """Option II: c_i+ = c_i - c + (x - y_i) / (K eta_l); all (n,) float32."""
    if steps < 1:
        return client_c.copy()
    return (client_c - server_c + (global_params - local_params) / (steps * lr)).astype(np.float32)
