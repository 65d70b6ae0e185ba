"""Update compression for the uplink: top-k sparsification, 8-bit stochastic quantisation, error feedback.

- Top-k: keep the k largest-magnitude coordinates, send (value, index) pairs
  as float32 + int32, 8 bytes each (Aji and Heafield 2017, arXiv:1704.05021;
  Stich, Cordonnier, Jaggi 2018, arXiv:1809.07599, Definition 2.1 top_k).
- 8-bit: stochastic k-level quantisation between the vector's min and max with
  k = 256 levels (Suresh, Yu, Kumar, McMahan 2017, "Distributed Mean Estimation
  with Limited Communication", arXiv:1611.00429, Section 3, pi_sk): a
  coordinate between levels B(r) <= x < B(r+1) goes up with probability
  (x - B(r)) / (B(r+1) - B(r)), so E[decode(encode(x))] = x. It sends n code
  bytes plus low and step (two float32, 8 bytes). Named "qsgd8" in configs,
  though QSGD (Alistarh et al. 2017) scales by the norm, not the range.
- Error feedback: compress u + e, keep e' = (u + e) - sent for the next
  round (Seide et al. 2014, "1-bit SGD"; Karimireddy, Rebjock, Stich, Jaggi
  2019, arXiv:1901.09847, Algorithm 2: p_t = g_t + e_t, e_{t+1} = p_t - C(p_t)).
  Over T rounds sum(sent) = sum(u) + e_0 - e_T, so the error stays that of one residual.
"""

from __future__ import annotations

import math

import numpy as np

COMPRESSION_METHODS = ("none", "topk", "qsgd8")  # what compress() sends
LEVELS = 256


def top_k_count(n: int, fraction: float) -> int:
    """Entries top-k keeps of ``n``: max(1, ceil(fraction * n)), at most n."""
    return min(n, max(1, math.ceil(fraction * n - 1e-9)))


def sent_bytes(method: str, n: int, fraction: float) -> int:
    """Bytes ``compress`` reports for an update of ``n`` entries sent by ``method``."""
    if method == "topk":
        return 8 * top_k_count(n, fraction)
    return n + 8 if method == "qsgd8" else 4 * n


def top_k(update: np.ndarray, fraction: float) -> tuple[np.ndarray, int, int]:
    """update (n,) -> (float32 (n,) with only the k largest-|x| entries kept, k, bytes = 8k).

    k = max(1, ceil(fraction * n)) (1e-9 slack so 0.1 * 30 gives 3, not 4); ties
    go to the lowest index.
    """
    update = np.asarray(update)
    if update.ndim != 1 or update.size == 0 or not 0 < fraction <= 1:
        raise ValueError(f"need update (n,), n >= 1 and 0 < fraction <= 1, got {update.shape}, {fraction}")
    n = update.size
    k = top_k_count(n, fraction)
    keep = np.argsort(-np.abs(update), kind="stable")[:k]
    sparse = np.zeros(n, dtype=np.float32)
    sparse[keep] = update[keep]
    return sparse, k, 8 * k


def quantize_8bit(update: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """update (n,) -> (codes uint8 (n,), low, step): unbiased stochastic rounding onto 256 levels.

    Level j is low + j * step with low = min(update), step = (max - min) / 255
    (step = 0 for a constant vector). Sent size is n + 8 bytes.
    """
    update = np.asarray(update, dtype=np.float64)
    if update.ndim != 1 or update.size == 0:
        raise ValueError(f"need update (n,) with n >= 1, got {update.shape}")
    low, high = float(update.min()), float(update.max())
    step = (high - low) / (LEVELS - 1)
    if step == 0:
        return np.zeros(update.size, dtype=np.uint8), low, 0.0
    scaled = (update - low) / step
    floor = np.floor(scaled)
    codes = floor + (rng.random(update.size) < scaled - floor)
    return np.clip(codes, 0, LEVELS - 1).astype(np.uint8), low, step


def dequantize_8bit(codes: np.ndarray, low: float, step: float) -> np.ndarray:
    """codes uint8 (n,) -> float32 (n,) values low + code * step."""
    return (low + codes.astype(np.float64) * step).astype(np.float32)


def compress(
    update: np.ndarray,
    method: str,
    fraction: float,
    rng: np.random.Generator,
    residual: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """update (n,) -> (sent float32 (n,), new residual float32 (n,), bytes sent).

    With error feedback (``residual`` (n,) given) compresses update + residual;
    the new residual is what was meant minus what was sent (residual=None acts
    as zeros). ``method``: "none" (4n bytes), "topk" (uses ``fraction``) or
    "qsgd8" (uses ``rng``). Inputs are not modified.
    """
    meant = np.asarray(update, dtype=np.float64)
    if residual is not None:
        meant = meant + residual
    if method == "none":
        sent, size = meant.astype(np.float32), 4 * meant.size
    elif method == "topk":
        sent, _, size = top_k(meant, fraction)
    elif method == "qsgd8":
        sent, size = dequantize_8bit(*quantize_8bit(meant, rng)), meant.size + 8
    else:
        raise ValueError(f"compression method must be 'none', 'topk' or 'qsgd8', got {method!r}")
    return sent, (meant - sent).astype(np.float32), size
