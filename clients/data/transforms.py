"""What is done to inputs beyond reading them: normalisation (statistics of the training
split only, applied to both splits once, when the run starts) and image augmentation
(random crop and horizontal flip of each training batch, drawn where local training draws
its batches, from the client's (seed, round, client) generator)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from clients.data.datasets import Dataset
from clients.errors import DataError

NORMALIZATIONS = ("none", "standard", "minmax")
AUGMENTATIONS = ("none", "crop", "flip", "crop_flip")


def normalized(dataset: Dataset, kind: str) -> Dataset:
    """``dataset`` with inputs normalised per feature ((N, d) data) or per channel
    ((N, C, ...) images) by statistics of x_train, computed in float64:
    ``standard``: (x - mean) / std; ``minmax``: (x - min) / (max - min); a constant
    feature is only shifted. The arrays are rewritten in place when they can be."""
    if kind == "none":
        return dataset
    if dataset.is_text:
        raise DataError(f"data.normalize: {kind!r}: {dataset.name} holds token ids, which are not normalised")
    if not len(dataset.x_train):
        return dataset
    axes = (0,) if dataset.x_train.ndim == 2 else (0, *range(2, dataset.x_train.ndim))
    x = dataset.x_train
    if kind == "standard":
        shift, scale = _mean_std(x, axes)
    else:
        shift = x.min(axis=axes, keepdims=True).astype(np.float64)
        scale = x.max(axis=axes, keepdims=True).astype(np.float64) - shift
    scale[scale == 0] = 1.0
    shift32, scale32 = shift.astype(np.float32), scale.astype(np.float32)
    return dataclasses.replace(
        dataset,
        x_train=_rescaled(dataset.x_train, shift32, scale32),
        x_test=_rescaled(dataset.x_test, shift32, scale32),
    )


def _mean_std(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation over ``axes``, float64, kept dims; two
    passes over chunks of rows (about 1 MiB of float64 each), so no temporary is the size of x."""
    rows = max(1, (1 << 17) // max(1, x[:1].size))
    count = x.size // math.prod(x.shape[a] for a in range(x.ndim) if a not in axes)
    total = sum(
        x[i : i + rows].sum(axis=axes, dtype=np.float64, keepdims=True) for i in range(0, len(x), rows)
    )
    mean = total / count
    squares = sum(
        np.square(x[i : i + rows] - mean).sum(axis=axes, keepdims=True) for i in range(0, len(x), rows)
    )
    return mean, np.sqrt(squares / count)


def _rescaled(x: np.ndarray, shift: np.ndarray, scale: np.ndarray) -> np.ndarray:
    out = x if x.flags.writeable else x.copy()
    out -= shift
    out /= scale
    return out


@dataclass(frozen=True)
class Augmentation:
    """Random crop (zero-pad by ``crop_padding`` pixels on each side, cut back to H x W at a
    random offset; 0 = no crop) and horizontal flip (each image with probability 1/2) of
    (B, C, H, W) training batches."""

    crop_padding: int
    flip: bool

    @classmethod
    def of(cls, kind: str, crop_padding: int) -> Augmentation | None:
        """The augmentation ``data.augment`` names, or None for ``none``."""
        if kind == "none":
            return None
        return cls(crop_padding if "crop" in kind else 0, "flip" in kind)

    def apply(self, x, rng: np.random.Generator):
        """x: (B, C, H, W) numpy array or torch tensor; a new one of the same kind. The draws
        (B crop offsets per axis, then B flips) do not depend on the kind."""
        b, _, h, w = x.shape
        span = 2 * self.crop_padding + 1
        dy, dx = rng.integers(0, span, b), rng.integers(0, span, b)
        flips = rng.random(b) < 0.5 if self.flip else np.zeros(b, bool)
        is_tensor = not isinstance(x, np.ndarray)  # a torch tensor (DeviceShard's batches)
        if is_tensor:
            import torch  # here: validate and the driver never need torch for this module
        lib = torch if is_tensor else np

        def index(a: np.ndarray):
            return torch.from_numpy(a).to(x.device) if is_tensor else a

        if self.crop_padding:
            p = self.crop_padding
            padded = lib.zeros(
                (b, x.shape[1], h + 2 * p, w + 2 * p),
                dtype=x.dtype,
                **({"device": x.device} if is_tensor else {}),
            )
            padded[:, :, p : p + h, p : p + w] = x
            rows = dy[:, None] + np.arange(h)  # (B, H)
            cols = dx[:, None] + np.arange(w)  # (B, W)
            x = padded[
                index(np.arange(b)[:, None, None, None]),
                index(np.arange(x.shape[1])[None, :, None, None]),
                index(rows[:, None, :, None]),
                index(cols[:, None, None, :]),
            ]
        if flips.any():
            chosen = index(np.flatnonzero(flips))
            x = x.clone() if is_tensor else x.copy()
            x[chosen] = lib.flip(x[chosen], (3,)) if is_tensor else x[chosen][..., ::-1]
        return x


@dataclass(frozen=True)
class Augmenter:
    """One client's augmentation in one round: ``wrap(model.shard_data(...))`` gives shard
    data whose training batches are augmented with draws from ``rng``."""

    augmentation: Augmentation
    rng: np.random.Generator

    def wrap(self, data) -> AugmentedShard:
        return AugmentedShard(data, self)


class AugmentedShard:
    """Shard data (HostShard or DeviceShard) whose batches pass through an Augmenter."""

    def __init__(self, data, augmenter: Augmenter):
        self.data, self.augmenter = data, augmenter

    def batch(self, positions: np.ndarray):
        x, y = self.data.batch(positions)
        return self.augmenter.augmentation.apply(x, self.augmenter.rng), y
