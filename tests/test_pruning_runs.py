"""Pruning in the round pipeline and `fedsim prune` on a session-wide Ray."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clients.models.engines import build_model
from clients.models.spec import init_params
from clients.training import ClientTask, LocalTrainingConfig, client_rng, train_client
from server.pruning import build_mask, magnitude_scores, prunable
from server.sampling import sample_clients
from simulator import Simulation
from simulator.config.build import build_dataset, build_model_spec, build_partition
from simulator.config.loading import apply_overrides, from_dict
from simulator.driver.prune import PruneRequest, prune_run
from simulator.report.page import write_report
from tests.conftest import ROOT, small_overrides

DEFAULT = ROOT / "configs" / "default.yaml"


def test_local_training_keeps_pruned_weights_at_exactly_zero():
    cfg = from_dict(apply_overrides({}, small_overrides()))
    dataset = build_dataset(cfg.data, cfg.seed)
    model = build_model(build_model_spec(cfg.model, dataset), "torch")
    start = init_params(model.spec, 0)
    mask = build_mask(magnitude_scores(start), prunable(model.layout), 0.8, model.layout)
    start = start * mask
    training = LocalTrainingConfig(0.1, momentum=0.9, weight_decay=0.01, epochs=2, batch_size=5)
    result = train_client(
        ClientTask(
            model=model,
            start=start,
            x=dataset.x_train,
            y=dataset.y_train,
            shard=np.arange(30),
            cfg=training,
            rng=client_rng(0, 1, 0, 1),
            client_id=0,
            mask=mask,
        )
    )
    local = start + result.update
    assert np.all(local[~mask] == 0.0) and np.all(result.update[~mask] == 0.0)
    assert np.abs(result.update[mask]).max() > 0


def test_gradual_pruning_in_the_pipeline(ray_cluster, tmp_path):
    overrides = small_overrides(rounds=8, **{
        "server.optimizer": "momentum", "client.momentum": 0.9, "client.weight_decay": 0.001,
        "server.pruning.method": "magnitude", "server.pruning.sparsity": 0.9,
        "server.pruning.start_round": 2, "server.pruning.end_round": 6, "server.pruning.every": 2,
        "runtime.workers": 2,
    })  # fmt: skip
    history = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "pruned").run()
    densities = [row.get("density") for row in history.rows]
    assert densities[0] is None and densities[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(densities[1:-1], densities[2:], strict=False))  # monotone
    params = history.final_params
    layout = build_model_spec(from_dict(apply_overrides({}, overrides)).model, _digits()).layout()
    weights = prunable(layout)
    kept = (params != 0) & weights
    assert kept.sum() == round(0.1 * weights.sum())  # the exact count survives training and aggregation
    last = history.rows[-1]
    mask = (params != 0) | ~weights
    expected = min(params.nbytes, 4 * int(mask.sum()) + math.ceil(params.size / 8))
    assert last["bytes_down"] == last["num_clients"] * expected
    assert last["bytes_up"] == last["num_clients"] * expected


def _digits():
    from clients.data.datasets import load_digits

    return load_digits(0, 0.2)


def test_federated_saliency_is_the_weighted_mean_of_client_scores(ray_cluster, tmp_path):
    from simulator.driver.cluster import ray_session
    from simulator.driver.run_state import RunState as _RunState
    from simulator.driver.simulation import federated_scores
    from simulator.report.progress import RoundProgress

    cfg = from_dict(apply_overrides({}, small_overrides()))
    state = _RunState(cfg, tmp_path / "unused")
    sim = Simulation(cfg, tmp_path / "unused")
    with ray_session(None) as session:
        pool = sim._start_workers(state, session, RoundProgress(1, 1, "x", quiet=True))
        try:
            clients = sample_clients(cfg.seed, 1, cfg.data.num_clients, cfg.sampled_per_round())
            federated = federated_scores(
                pool, state.params, clients, "saliency", cfg.runtime.reduction_groups
            )
        finally:
            pool.shutdown()
    dataset = build_dataset(cfg.data, cfg.seed)
    parts = build_partition(dataset, cfg.data, cfg.seed)
    model = build_model(state.spec, "torch")
    total, weight = np.zeros(state.params.size), 0
    for cid in clients:  # directly with the engine: mean gradient over the shard, then |w * g|
        model.params[:] = state.params
        grad_sum = np.zeros(state.params.size)
        for start in range(0, len(parts[cid]), cfg.client.batch_size):
            batch = parts[cid][start : start + cfg.client.batch_size]
            model.loss_and_grad(dataset.x_train[batch], dataset.y_train[batch])
            grad_sum += len(batch) * model.grad
        total += len(parts[cid]) * np.abs(state.params * grad_sum / len(parts[cid]))
        weight += len(parts[cid])
    # The workers compute float32 gradients on 1 torch thread, this process on its default
    # count: kernels may round differently at float32 precision (~1e-7 relative).
    np.testing.assert_allclose(federated, total / weight, rtol=1e-5, atol=1e-12)


def test_prune_keeps_more_accuracy_than_random_and_reports(ray_cluster, tmp_path):
    run = Simulation.from_yaml(
        DEFAULT, {"rounds": 40, "runtime.workers": 2}, run_dir=tmp_path / "trained"
    ).run()
    path = prune_run(
        PruneRequest(run_dir=run.run_dir, methods=["magnitude", "saliency", "random"], sparsities=[0.5, 0.9])
    )
    prune = json.loads(path.read_text())
    accuracy = {(r["method"], r["sparsity"]): r["test_accuracy"] for r in prune["results"]}
    for method in ("magnitude", "saliency"):
        assert accuracy[(method, 0.9)] >= accuracy[("random", 0.9)] + 0.10, accuracy
    assert all(r["density"] == pytest.approx(1 - r["sparsity"], abs=1e-4) for r in prune["results"])
    html = write_report([run.run_dir], tmp_path / "report").read_text()
    assert 'id="panel-prune-accuracy"' in html and 'id="panel-prune-layers"' in html
    assert (run.run_dir / "prune_accuracy.png").stat().st_size > 5000


def test_fedsim_prune_shows_each_mask_and_fine_tuning_round(ray_cluster, tmp_path, capsys):
    from simulator.cli import main

    run = Simulation.from_yaml(DEFAULT, small_overrides(rounds=1), run_dir=tmp_path / "trained").run()
    argv = ["prune", str(run.run_dir), "--method", "magnitude", "--sparsity", "0.5,0.9"]
    assert main([*argv, "--finetune-rounds", "2", "--out", str(tmp_path / "pruned")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("prune 1/6  magnitude sparsity 0.5: accuracy ") for line in lines), lines
    assert "prune 3/6  magnitude sparsity 0.5: fine-tune round 2/2" in lines
    assert "prune 6/6  magnitude sparsity 0.9: fine-tune round 2/2" in lines
