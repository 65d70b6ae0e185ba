"""Normalisation layers: batch normalisation over (N, C) and (N, C, H, W).

Statistics are taken per channel C over every other axis (N, or N/H/W); M is
the number of values each statistic averages. In train mode the output is
normalised with the batch's *biased* variance and the running estimates are
updated as in ``torch.nn.BatchNorm{1,2}d`` (momentum update, *unbiased*
variance); in eval mode the running estimates are used and the layer is affine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clients.models.norm_statistics import ChannelMoments
from clients.numpy_engine.core import Module, ParamShapes


@dataclass
class BatchNormCache:
    """What ``batch_norm_backward`` needs from a forward pass."""

    xhat: np.ndarray  # (N, C) or (N, C, H, W): the normalised input
    inv_std: np.ndarray  # (C,): 1 / sqrt(var + eps), batch var in train mode, running var in eval mode
    train: bool  # True: the statistics came from the batch, so they depend on x


def _stat_axes(ndim: int) -> tuple[int, ...]:
    """The axes a per-channel statistic reduces over: (0,) for (N, C), (0, 2, 3) for (N, C, H, W)."""
    if ndim not in (2, 4):
        raise ValueError(f"BatchNorm takes (N, C) or (N, C, H, W) inputs, got {ndim} dimensions")
    return (0,) + tuple(range(2, ndim))


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """(C,) -> (1, C) or (1, C, 1, 1), to broadcast against an input of ``ndim`` dimensions."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm_train_forward(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float
) -> tuple[np.ndarray, BatchNormCache, np.ndarray, np.ndarray]:
    """Normalise with the batch's statistics.

    x: (N, C) or (N, C, H, W); weight, bias: (C,).
    Returns y (same shape as x), the cache, and the batch mean (C,) and
    *biased* variance (C,).
    """
    axes = _stat_axes(x.ndim)
    mean = x.mean(axis=axes)
    centred = x - _per_channel(mean, x.ndim)
    var = np.mean(centred * centred, axis=axes)
    inv_std = 1.0 / np.sqrt(var + eps)
    xhat = centred * _per_channel(inv_std, x.ndim)
    y = xhat * _per_channel(weight, x.ndim) + _per_channel(bias, x.ndim)
    return y, BatchNormCache(xhat=xhat, inv_std=inv_std, train=True), mean, var


def batch_norm_eval_forward(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    eps: float,
) -> tuple[np.ndarray, BatchNormCache]:
    """Normalise with fixed running statistics (an affine map of x).

    x: (N, C) or (N, C, H, W); weight, bias, running_mean, running_var: (C,).
    Returns y (same shape as x) and the cache.
    """
    _stat_axes(x.ndim)
    inv_std = 1.0 / np.sqrt(running_var + eps)
    xhat = (x - _per_channel(running_mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    y = xhat * _per_channel(weight, x.ndim) + _per_channel(bias, x.ndim)
    return y, BatchNormCache(xhat=xhat, inv_std=inv_std, train=False)


def batch_norm_backward(
    dy: np.ndarray, cache: BatchNormCache, weight: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of batch normalisation.

    dy: (N, C) or (N, C, H, W), like x; weight: (C,).
    Returns dx (like x), dweight (C,), dbias (C,).

    Train mode, with M values per channel, the compact closed form
    ``dx = weight * inv_std / M * (M dy - sum(dy) - xhat * sum(dy * xhat))``
    (sums per channel), which includes the paths through the batch mean and
    variance. Eval mode: ``dx = dy * weight * inv_std``.
    """
    ndim = dy.ndim
    axes = _stat_axes(ndim)
    dbias = dy.sum(axis=axes)
    dweight = np.sum(dy * cache.xhat, axis=axes)
    scale = _per_channel(weight * cache.inv_std, ndim)
    if not cache.train:
        return dy * scale, dweight, dbias
    m = dy.size // dy.shape[1]
    dx = (scale / m) * (m * dy - _per_channel(dbias, ndim) - cache.xhat * _per_channel(dweight, ndim))
    return dx, dweight, dbias


def update_running_stats(
    running_mean: np.ndarray,
    running_var: np.ndarray,
    batch_mean: np.ndarray,
    batch_var: np.ndarray,
    count: int,
    momentum: float,
) -> tuple[np.ndarray, np.ndarray]:
    """torch's running-statistics update; every array is (C,).

    ``batch_var`` is the biased batch variance over ``count`` values; the
    running variance moves towards the unbiased one, ``batch_var * count / (count - 1)``.
    Returns the new (running_mean, running_var), in the running arrays' dtype.
    """
    unbiased = batch_var * (count / (count - 1))
    new_mean = (1.0 - momentum) * running_mean + momentum * batch_mean
    new_var = (1.0 - momentum) * running_var + momentum * unbiased
    return new_mean.astype(running_mean.dtype, copy=False), new_var.astype(running_var.dtype, copy=False)


class BatchNorm(Module):
    """Batch normalisation, ``torch.nn.BatchNorm1d`` (x: (N, C)) or ``BatchNorm2d`` (x: (N, C, H, W)).

    Parameters "weight" (C,) and "bias" (C,). With ``batch_stats`` every batch is
    normalised by its own statistics, in eval mode too, and nothing is kept. Otherwise the running statistics
    ``running_mean`` (C,) and ``running_var`` (C,) are buffers owned by the
    module, not part of the flat parameter vector; ``bind`` casts them to the
    parameters' dtype.
    """

    def __init__(
        self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, batch_stats: bool = False
    ) -> None:
        super().__init__()
        self.batch_stats = batch_stats  # normalise by the batch's statistics in eval mode too
        # A batch_stats layer's (mean, biased var) of a whole set, which it evaluates with
        # once calibrated, and the moments it gathers meanwhile (clients/models/norm_statistics.py).
        self.fixed: tuple[np.ndarray, np.ndarray] | None = None
        self.gathered: ChannelMoments | None = None
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.running_mean = np.zeros(num_features)
        self.running_var = np.ones(num_features)
        self.cache: BatchNormCache | None = None

    def param_shapes(self) -> ParamShapes:
        return [("weight", (self.num_features,)), ("bias", (self.num_features,))]

    def bind(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        super().bind(params, grads)
        dtype = params["weight"].dtype
        self.running_mean = self.running_mean.astype(dtype, copy=False)
        self.running_var = self.running_var.astype(dtype, copy=False)

    def buffers(self) -> dict[str, np.ndarray]:
        """The running statistics by PyTorch's buffer names, each (C,)."""
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def fix(self, statistics: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Evaluate with (mean, biased var) (C,) of a whole set, or (None) each batch's own."""
        if statistics is None:
            self.fixed = None
            return
        dtype = self.params["weight"].dtype
        self.fixed = (statistics[0].astype(dtype), statistics[1].astype(dtype))

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """x: (N, C) or (N, C, H, W) -> y, same shape."""
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm({self.num_features}) got input of shape {x.shape}")
        w, b = self.params["weight"], self.params["bias"]
        if not train and self.batch_stats and self.gathered is not None:
            self.gathered = self.gathered.plus(ChannelMoments.of(x))
        if not train and self.batch_stats and self.fixed is not None:
            y, self.cache = batch_norm_eval_forward(x, w, b, *self.fixed, self.eps)
            return y
        if not train and self.batch_stats:  # one value per channel is its own mean: y = bias
            y, self.cache, _, _ = batch_norm_train_forward(x, w, b, self.eps)
            return y
        if not train:
            y, self.cache = batch_norm_eval_forward(x, w, b, self.running_mean, self.running_var, self.eps)
            return y
        count = x.size // self.num_features
        if count < 2:
            raise ValueError(f"BatchNorm needs more than 1 value per channel in train mode, got {x.shape}")
        y, self.cache, mean, var = batch_norm_train_forward(x, w, b, self.eps)
        self.running_mean, self.running_var = update_running_stats(
            self.running_mean, self.running_var, mean, var, count, self.momentum
        )
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """dy: like x -> dx: like x; adds into grads "weight" (C,) and "bias" (C,)."""
        if self.cache is None:
            raise RuntimeError("BatchNorm.backward called before forward")
        dx, dweight, dbias = batch_norm_backward(dy, self.cache, self.params["weight"])
        self.grads["weight"] += dweight
        self.grads["bias"] += dbias
        return dx
