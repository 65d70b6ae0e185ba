"""The flat parameter vector: one contiguous float32 array plus a Layout.

A model's parameters are ONE array; each layer's weight is a view into it, and
so is its gradient. Loading a global model is one copy, an update is
``local - global_``, and all server code is vector math over arrays of shape
(n,) or (k, n).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ParamSlot:
    """Where one named tensor lives inside the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def stop(self) -> int:
        return self.offset + self.size


class Layout:
    """Names, shapes and offsets of a model's tensors in its flat vector."""

    def __init__(self, named_shapes: list[tuple[str, tuple[int, ...]]]):
        slots, offset = [], 0
        for name, shape in named_shapes:
            slot = ParamSlot(name, tuple(int(s) for s in shape), offset)
            slots.append(slot)
            offset = slot.stop
        names = [s.name for s in slots]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate parameter names in layout: {names}")
        self.slots: tuple[ParamSlot, ...] = tuple(slots)
        self.size = offset
        self._by_name = {s.name: s for s in slots}

    def __getitem__(self, name: str) -> ParamSlot:
        return self._by_name[name]

    def __iter__(self):
        return iter(self.slots)

    def __len__(self) -> int:
        return len(self.slots)

    def zeros(self, dtype=np.float32) -> np.ndarray:
        return np.zeros(self.size, dtype=dtype)

    def view(self, flat: np.ndarray, name: str) -> np.ndarray:
        """The named tensor as a writable view into ``flat`` (no copy)."""
        slot = self._by_name[name]
        return flat[slot.offset : slot.stop].reshape(slot.shape)

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Every tensor as a view into ``flat``, by name, in layout order."""
        if flat.shape != (self.size,):
            raise ValueError(f"flat vector has shape {flat.shape}, layout needs ({self.size},)")
        return {s.name: self.view(flat, s.name) for s in self.slots}

    def describe(self) -> list[dict]:
        return [{"name": s.name, "shape": list(s.shape), "offset": s.offset} for s in self.slots]
