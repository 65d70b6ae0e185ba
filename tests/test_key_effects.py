"""Every config key does what it says, through the product's own path.

For each row of tests/key_effects.py: a tiny run (``Simulation.from_yaml`` over
configs/default.yaml) with the key at its context's value and one with the row's
value; the row's effect decides what must differ. One Ray session, warm workers
handed from run to run (``reuse_workers``), about 120 runs in well under a minute.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from simulator import Simulation
from simulator.driver.workers import reuse_workers
from tests.conftest import ROOT
from tests.key_effects import (
    ROUNDING_ATOL,
    ROWS,
    WORKER_KEYS,
    Row,
    write_data_roots,
    write_leaf_roots,
    write_trace_files,
)
from tests.test_tracking import RecordingMlflow

DEFAULT = ROOT / "configs" / "default.yaml"


class Runs:
    """Runs by their overrides, each run once."""

    def __init__(self, out: Path):
        self.out = out
        self.done: dict[str, tuple[np.ndarray, list[dict[str, Any]]]] = {}

    def __call__(self, overrides: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        key = json.dumps(overrides, sort_keys=True)
        if key not in self.done:
            run_dir = self.out / f"run{len(self.done):03d}"
            history = Simulation.from_yaml(DEFAULT, overrides, run_dir=run_dir).run()
            self.done[key] = (history.final_params, history.rows)
        return self.done[key]


def effect_of(row: Row) -> str:
    if row.key == "runtime.gpus_per_worker" and torch.cuda.is_available():
        return "rounding"  # auto then trains on the GPU: other kernels, same training
    return row.effect


def check(row: Row, before, after) -> str | None:
    """What is wrong with the pair of runs, or None."""
    (params_a, rows_a), (params_b, rows_b) = before, after
    same_model = params_a.tobytes() == params_b.tobytes()
    effect = effect_of(row)
    if effect == "trains":
        return None if not same_model else "the model did not change"
    if effect == "rounding":
        gap = float(np.abs(params_a - params_b).max())
        if same_model:
            return "the model did not change at all: the key may not reach training"
        return None if gap <= ROUNDING_ATOL else f"the models differ by {gap:.3g} > {ROUNDING_ATOL}"
    if not same_model:
        return "the model changed"
    if effect == "reports":
        seen = [[r.get(row.observe) for r in rows] for rows in (rows_a, rows_b)]
        return None if seen[0] != seen[1] else f"metric {row.observe!r} did not change"
    losses = [[r["train_loss"] for r in rows] for rows in (rows_a, rows_b)]
    if losses[0] != losses[1]:
        return "the training losses changed"
    accuracies = [[r.get("test_accuracy") for r in rows] for rows in (rows_a, rows_b)]
    return None if accuracies[0] == accuracies[1] else "the reported test accuracy changed"


@pytest.mark.slow
def test_every_key_changes_the_model_exactly_when_it_should(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", RecordingMlflow())  # runtime.mlflow needs the package
    paths = {
        **write_leaf_roots(tmp_path),
        **write_data_roots(tmp_path),
        **write_trace_files(tmp_path),
        "tmp": str(tmp_path),
        "address": ray_cluster.get_runtime_context().gcs_address,
    }
    runs, failures = Runs(tmp_path / "runs"), []
    with reuse_workers():
        for row in sorted(ROWS, key=lambda r: r.key in WORKER_KEYS):
            context, changed = row.overrides(paths)
            problem = check(row, runs(context), runs(changed))
            if problem:
                failures.append(
                    f"{row.key}={row.value!r} in {row.context}: {problem} (expected {effect_of(row)})"
                )
    assert not failures, "\n".join(failures)
