"""Losses as pure functions returning (mean loss, gradient with respect to the prediction).

They start the chain rule: the gradient they return is the ``dy`` of the last
module's backward. They compute in the dtype of their input.
"""

from __future__ import annotations

import numpy as np


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer labels, fused with its gradient,
    as ``torch.nn.functional.cross_entropy`` (reduction "mean").

    logits: (N, C); labels: (N,) ints in [0, C). Returns the loss and dlogits: (N, C),
    (softmax(logits) - onehot(labels)) / N.
    The log-sum-exp subtracts each row's maximum first, so logits of any size
    (1e4, -1e4) give a finite loss and gradient.
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"need logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    n, c = logits.shape
    if n and (labels.min() < 0 or labels.max() >= c):
        raise ValueError(f"labels must lie in [0, {c}), got [{labels.min()}, {labels.max()}]")
    rows = np.arange(n)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    log_prob_label = shifted[rows, labels] - np.log(total[:, 0])
    dlogits = exp / total
    dlogits[rows, labels] -= 1
    dlogits /= n
    return float(-log_prob_label.mean()), dlogits


def mse(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean squared error over all elements, as ``torch.nn.functional.mse_loss`` (reduction "mean").

    pred, target: (...) of the same shape. Returns the loss and dpred: (...), 2 (pred - target) / size.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    diff = pred - target
    return float(np.mean(diff * diff)), diff * (2 / diff.size)
