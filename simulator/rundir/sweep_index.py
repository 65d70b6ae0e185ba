"""What a sweep's index file, ``sweep.json``, holds: its name and format tag, a run's
statuses, the grid's axes (:class:`GridAxis`) and one record per run (:class:`SweepRun`).

Torch- and Ray-free, so the sweep's comparison (``simulator.report.sweep_page``) reads
these records without loading the driver that runs the sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INDEX_NAME = "sweep.json"
INDEX_FORMAT = "fedsim-sweep-1"
NOT_RUN, COMPLETED, FAILED, INTERRUPTED = "not run", "completed", "failed", "interrupted"
DIVERGED = "diverged"  # stopped by a server.stop_after_* rule: a result, not a failure


@dataclass(frozen=True)
class GridAxis:
    """One ``--grid`` flag: a dotted config key and the values it takes."""

    key: str
    values: tuple[Any, ...]


@dataclass
class SweepRun:
    """One (grid point, seed) run, as listed in sweep.json."""

    directory: str  # relative to the sweep directory
    point: int  # index of its grid point
    overrides: dict[str, Any]  # the point's grid values and the seed
    seed: int
    status: str = NOT_RUN
    final_test_accuracy: float | None = None
    best_test_accuracy: float | None = None
    final_test_loss: float | None = None  # what a regression run (no accuracy) is compared by
    error: str | None = None
