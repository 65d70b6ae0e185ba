"""Federated evaluation: clients evaluate the global model on their own held-out data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clients.data.partition import holdout_split
from clients.models.engines import build_model
from simulator import Simulation
from simulator.config.build import build_dataset, build_model_spec, client_splits
from simulator.config.loading import load_config
from simulator.driver.federated_eval import FederatedEvalPlan, round_metrics
from tests.conftest import ROOT, small_overrides

DEFAULT = ROOT / "configs" / "default.yaml"
FEDERATED = {"server.federated_eval.every": 2, "server.federated_eval.fraction": 0.5}


def _client_rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "clients.jsonl").read_text().splitlines()]


def test_holdout_split_keeps_every_index_once_and_one_for_training():
    parts = [np.arange(0, 10), np.arange(10, 11), np.arange(11, 11), np.arange(11, 31)]
    train, held = holdout_split(parts, 0.25, np.random.default_rng(0))
    for part, t, h in zip(parts, train, held, strict=True):
        assert np.array_equal(np.sort(np.concatenate([t, h])), part)
        assert not np.intersect1d(t, h).size
        assert len(h) == min(int(0.25 * len(part)), max(len(part) - 1, 0))
        assert np.all(np.diff(t) > 0) and np.all(np.diff(h) > 0)
    assert [len(h) for h in held] == [2, 0, 0, 5]
    _, held = holdout_split([np.arange(100)], 0.29, np.random.default_rng(0))
    assert len(held[0]) == 29  # 0.29 * 100 is 28.999999999999996 in floating point


def test_evaluated_clients_are_a_seeded_fraction():
    cfg = load_config(DEFAULT, {**small_overrides(), **FEDERATED})
    first = FederatedEvalPlan.of(cfg).clients(2)
    assert len(first) == 6 and np.array_equal(first, np.unique(first))
    assert np.array_equal(first, FederatedEvalPlan.of(cfg).clients(2))
    assert not np.array_equal(first, FederatedEvalPlan.of(cfg).clients(4))


def test_round_metrics_weight_by_samples_and_take_the_worst_tenth():
    counts = np.array([10, 0, 30, 20])
    correct = np.array([5, 0, 30, 4])
    metrics = round_metrics(
        {"num_samples": counts, "loss": np.array([10.0, 0.0, 3.0, 40.0]), "correct": correct}
    )
    assert metrics["federated_clients"] == 3
    assert metrics["federated_accuracy"] == pytest.approx(39 / 60, abs=0)
    assert metrics["federated_loss"] == pytest.approx(53 / 60)
    assert metrics["federated_accuracy_worst10"] == pytest.approx(0.2)  # one of 3 clients
    assert metrics["federated_accuracy_std"] == pytest.approx(np.std([0.5, 1.0, 0.2]))


def test_per_client_metrics_aggregate_to_the_logged_round_value(ray_cluster, tmp_path):
    overrides = {**small_overrides(rounds=4), **FEDERATED}
    history = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "fed").run()
    rows = _client_rows(tmp_path / "fed")
    assert sorted({r["round"] for r in rows}) == [2, 4]
    for metrics in (history.rows[1], history.rows[3]):
        mine = [r for r in rows if r["round"] == metrics["round"]]
        weight = sum(r["num_samples"] for r in mine)
        # n * (c / n) is c to within one rounding per client: 1e-12 is generous.
        assert sum(r["num_samples"] * r["accuracy"] for r in mine) / weight == pytest.approx(
            metrics["federated_accuracy"], rel=1e-12
        )
        assert sum(r["num_samples"] * r["loss"] for r in mine) / weight == pytest.approx(
            metrics["federated_loss"], rel=1e-12
        )
        assert metrics["federated_clients"] == len(mine) > 0
    assert "federated_accuracy" not in history.rows[0]
    assert all(len(row["clients"]) == 6 for row in history.rows)


def test_workers_report_what_the_final_model_scores_on_each_clients_holdout(ray_cluster, tmp_path):
    """Recompute the last round's per-client results on the driver from scratch."""
    overrides = {**small_overrides(rounds=2), **FEDERATED}
    history = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "fed").run()
    cfg = load_config(DEFAULT, overrides)
    dataset = build_dataset(cfg.data, cfg.seed)
    splits = client_splits(dataset, cfg)
    train, held = splits.train, splits.held_out
    assert not splits.held_out_in_test  # digits has no natural test split: rows come from training
    model = build_model(build_model_spec(cfg.model, dataset), "torch")
    model.load_params(history.final_params)
    rows = [r for r in _client_rows(tmp_path / "fed") if r["round"] == 2]
    for row in rows:
        shard = held[row["client"]]
        _, correct, count = model.evaluate(dataset.x_train[shard], dataset.y_train[shard], 1024)
        assert (row["num_samples"], row["accuracy"]) == (count, correct / count)
    # Held-out samples never train: each round's sample count is its clients' training parts.
    for round_row in history.rows:
        assert round_row["num_samples"] == sum(len(train[c]) for c in round_row["clients"])
        assert sum(len(held[c]) for c in round_row["clients"]) > 0


def test_generated_populations_evaluate_on_each_devices_test_rows(ray_cluster, tmp_path):
    overrides = {
        "rounds": 1, "data.num_clients": 2000, "server.clients_per_round": 40,
        "server.federated_eval.every": 1, "server.federated_eval.fraction": 0.01,
        "runtime.workers": 2, "runtime.cpus_per_worker": 1.0,
    }  # fmt: skip
    history = Simulation.from_yaml(
        ROOT / "configs" / "population_100k.yaml", overrides, run_dir=tmp_path / "p"
    ).run()
    rows = _client_rows(tmp_path / "p")
    assert len(rows) == 20 and all(r["num_samples"] == 5 for r in rows)  # 25 per device, 20% test
    assert history.rows[0]["federated_clients"] == 20


def test_resume_rewrites_a_half_logged_evaluation_round(ray_cluster, tmp_path):
    overrides = {**small_overrides(rounds=4), **FEDERATED}
    Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "straight").run()
    Simulation.from_yaml(DEFAULT, {**overrides, "rounds": 2}, run_dir=tmp_path / "crashed").run()
    log = tmp_path / "crashed" / "clients.jsonl"
    straight_rows = (tmp_path / "straight" / "clients.jsonl").read_text().splitlines(keepends=True)
    round_4 = [line for line in straight_rows if json.loads(line)["round"] == 4]
    with open(log, "a") as f:  # a crash in round 4's write: two rows and a torn third
        f.write("".join(round_4[:2]) + round_4[2][:15])
    Simulation.resume_from(tmp_path / "crashed", {"rounds": 4}).run()
    assert log.read_text() == "".join(straight_rows)


def test_a_damaged_complete_line_is_an_error_not_a_truncation(tmp_path):
    from clients.errors import FedsimError
    from simulator.rundir.metrics import ClientEvalLog

    log = tmp_path / "clients.jsonl"
    log.write_text('{"round": 1, "client": 0}\n{"round": 1, oops\n{"round": 2, "client": 0}\n')
    with pytest.raises(FedsimError, match=r"clients.jsonl:2: not valid JSON"):
        ClientEvalLog(log, completed_round=2)
    assert log.read_text().count("\n") == 3


def test_batch_norm_results_do_not_depend_on_the_evaluation_batch_size(ray_cluster, tmp_path):
    """The mlp's batch norm evaluates with the statistics of the whole evaluated set (the
    test set; a client's training rows), gathered in batches of eval_batch_size in float64:
    the batch size only changes summation orders. Statistics agree to ~1e-16 relative, below
    float32's resolution; each batch's loss is a float32 sum (relative error ~6e-8), so
    summed losses agree to 1e-6 relative and accuracies exactly. Training is untouched."""
    overrides = {
        **small_overrides(rounds=2), **FEDERATED, "model.batchnorm": True, "model.hidden": [16, 8],
        "server.federated_eval.finetune_steps": 2,
    }  # fmt: skip
    runs = {
        (engine, size): Simulation.from_yaml(
            DEFAULT,
            {**overrides, "model.engine": engine, "server.eval_batch_size": size},
            run_dir=tmp_path / f"{engine}{size}",
        ).run()
        for engine in ("numpy", "torch")
        for size in (1024, 100, 7)
    }
    for (engine, size), history in runs.items():
        first = runs[engine, 1024]
        assert history.final_params.tobytes() == first.final_params.tobytes()
        row, first_row = history.rows[-1], first.rows[-1]
        for kind in ("test", "federated", "finetuned"):
            assert row[f"{kind}_accuracy"] == first_row[f"{kind}_accuracy"], (engine, size, kind)
            assert row[f"{kind}_loss"] == pytest.approx(first_row[f"{kind}_loss"], rel=1e-6)
    # The engines train alike to float32 rounding (tests/key_effects.py's ROUNDING_ATOL), so
    # they score alike to within that: losses to 1e-4 relative, accuracy to one row of the
    # 359-row digits test set.
    numpy_row, torch_row = runs["numpy", 1024].rows[-1], runs["torch", 1024].rows[-1]
    assert torch_row["test_loss"] == pytest.approx(numpy_row["test_loss"], rel=1e-4)
    assert torch_row["test_accuracy"] == pytest.approx(numpy_row["test_accuracy"], abs=1.01 / 359)
