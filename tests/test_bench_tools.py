"""The measuring tools under bench/ that the docs' figures come from."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from simulator import Simulation
from simulator.config.build import build_dataset
from simulator.config.loading import load_run_config
from tests.conftest import ROOT, small_overrides

sys.path.insert(0, str(ROOT / "bench"))
from train_objective import training_objective  # noqa: E402


def test_the_training_objective_is_the_final_models_mean_loss_over_every_training_row(ray_cluster, tmp_path):
    """Recomputed in float64 from model.safetensors for softmax regression: the mean
    cross-entropy over the rows the clients hold (an iid split holds every training row
    once); the tool evaluates in float32, hence the 1e-5."""
    overrides = small_overrides(rounds=1, **{"model.name": "logreg", "data.partition": "iid"})
    Simulation.from_yaml(ROOT / "configs" / "default.yaml", overrides, run_dir=tmp_path / "run").run()
    loss, accuracy = training_objective(tmp_path / "run")

    cfg = load_run_config(tmp_path / "run")
    data = build_dataset(cfg.data, cfg.seed)
    model = load_file(tmp_path / "run" / "model.safetensors")
    (weight,) = [v for k, v in model.items() if k.endswith("weight")]
    (bias,) = [v for k, v in model.items() if k.endswith("bias")]
    logits = data.x_train.reshape(len(data.x_train), -1).astype(np.float64) @ weight.T + bias
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-log_p[np.arange(len(data.y_train)), data.y_train].mean(), rel=1e-5)
    assert accuracy == pytest.approx((logits.argmax(axis=1) == data.y_train).mean(), abs=1e-12)
