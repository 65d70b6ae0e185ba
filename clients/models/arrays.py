"""Where a model's flat vectors live: host memory (numpy) or a torch device.

Host models (the numpy engine, and the torch engine on CPU) keep ``params``
and ``grad`` as numpy arrays. A device-resident torch model keeps them as
torch tensors on its device (CUDA), so a client's local steps never cross the
bus: only the global model goes in and the update comes out, once per client.
The local optimisers and step transforms use in-place operators that numpy
arrays and torch tensors share; the few operations they spell differently are
here. Elementwise float32 arithmetic is correctly rounded in both, so the same
steps give the same bits on either (reductions such as norms may not).
"""

from __future__ import annotations

import warnings
from typing import Protocol, TypeAlias

import numpy as np
import torch

# A flat vector (params, grad, optimiser state): numpy on the host, a tensor on a device.
FlatVector: TypeAlias = "np.ndarray | torch.Tensor"


def is_tensor(array) -> bool:
    return isinstance(array, torch.Tensor)


def copy(array):
    return array.clone() if is_tensor(array) else array.copy()


def zeros_like(array, dtype=None):
    """Zeros with ``array``'s shape and device; ``dtype`` a numpy dtype (default: array's)."""
    if is_tensor(array):
        return torch.zeros_like(array, dtype=_TORCH_DTYPES[np.dtype(dtype)] if dtype else None)
    return np.zeros_like(array, dtype=dtype)


def scaled_into(out, source, factor: float):
    """out = source * factor in one pass (no temporary); returns out."""
    if is_tensor(out):
        return torch.mul(source, factor, out=out)
    return np.multiply(source, factor, out=out)


def sqrt(array):
    """Correctly rounded, as numpy's is: torch's float32 sqrt on CPU is not (it differs
    from numpy in the last bit for about 1 input in 6), its float64 sqrt is, and a
    float64 root rounded to float32 is the correctly rounded float32 root."""
    if not is_tensor(array):
        return np.sqrt(array)
    if array.dtype == torch.float32 and array.device.type == "cpu":  # CUDA's sqrt is IEEE-exact
        return torch.sqrt(array.double()).to(torch.float32)
    return torch.sqrt(array)


def l2_norm(array) -> float:
    if is_tensor(array):
        return float(torch.linalg.vector_norm(array))
    return float(np.linalg.norm(array))


def to_numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if is_tensor(array) else array


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def tensor_from_numpy(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A tensor on ``device`` with ``array``'s values; ``array`` may be read-only
    (Ray's zero-copy arrays are): it is only read, so torch's warning is moot."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)


class HostShard:
    """A client's minibatches gathered straight from the (read-only) training set."""

    def __init__(self, x: np.ndarray, y: np.ndarray, shard: np.ndarray):
        self.x, self.y, self.shard = x, y, shard

    def batch(self, positions: np.ndarray):
        rows = self.shard[positions]
        return self.x[rows], self.y[rows]


class DeviceShard:
    """A client's samples copied to the device once; minibatches are gathered there."""

    def __init__(self, x: np.ndarray, y: np.ndarray, shard: np.ndarray, device: torch.device):
        self.device = device
        self.x = tensor_from_numpy(x[shard], device)
        self.y = tensor_from_numpy(y[shard], device)

    def batch(self, positions: np.ndarray):
        index = torch.from_numpy(np.ascontiguousarray(positions)).to(self.device)
        return self.x[index], self.y[index]


class _HostParams(Protocol):
    params: np.ndarray


class HostArrays:
    """The array side of a host model: vectors are numpy arrays, nothing moves."""

    device_name = "cpu"

    def to_engine(self, array):
        return array

    def load_params(self: _HostParams, values: np.ndarray) -> None:
        self.params[:] = values

    def shard_data(self, x: np.ndarray, y: np.ndarray, shard: np.ndarray) -> HostShard:
        return HostShard(x, y, shard)
