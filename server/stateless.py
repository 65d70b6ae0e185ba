"""The checkpoint side of a server part that carries nothing between rounds."""

from __future__ import annotations

import numpy as np


class Stateless:
    """``state()`` saves nothing; ``load_state`` refuses a checkpoint that holds anything,
    since it was written for a part that had state."""

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to checkpoint: none."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")
