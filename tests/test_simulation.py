"""The round loop on a session-wide Ray: determinism, resume, rejected updates, worker sums."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from clients.errors import ConfigError
from clients.models.engines import build_model
from clients.models.spec import init_params
from clients.protocol import ClientPlan, ClientShards, RoundInput, WorkerRun
from clients.streams import Stream
from clients.training import ClientTask, client_rng, train_client
from clients.updates import add_weighted
from clients.worker import ClientWorker
from simulator import Simulation
from simulator.config.build import build_dataset, build_model_spec, build_partition, local_training
from tests.conftest import ROOT, small_config, small_overrides

TIMING_KEYS = {"seconds"}


def run_small(tmp_path, name: str, **extra):
    sim = Simulation.from_yaml(
        ROOT / "configs" / "default.yaml", small_overrides(**extra), run_dir=tmp_path / name
    )
    return sim.run()


def metrics_without_timing(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def test_same_bits_with_1_2_and_3_workers(ray_cluster, tmp_path):
    runs = [run_small(tmp_path, f"w{n}", **{"runtime.workers": n}) for n in (1, 2, 3)]
    reference_rows = metrics_without_timing(runs[0].run_dir)
    reference_model = (runs[0].run_dir / "model.safetensors").read_bytes()
    assert len(reference_rows) == 4 and reference_rows[-1]["test_accuracy"] is not None
    for history in runs[1:]:
        assert metrics_without_timing(history.run_dir) == reference_rows
        assert (history.run_dir / "model.safetensors").read_bytes() == reference_model


def test_run_directory_contract(ray_cluster, tmp_path):
    history = run_small(tmp_path, "contract")
    run_dir = history.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "model.safetensors", "checkpoints"):
        assert (run_dir / name).exists(), name
    row = history.rows[-1]
    for key in (
        "round",
        "test_accuracy",
        "test_loss",
        "train_loss",
        "num_clients",
        "seconds",
        "bytes_up",
        "bytes_down",
    ):
        assert key in row
    assert row["num_clients"] == 6
    assert row["bytes_up"] == 6 * history.final_params.nbytes
    tensors = load_file(str(run_dir / "model.safetensors"))
    assert set(tensors) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert tensors["fc1.weight"].shape == (32, 64)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 4
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "round_000000.safetensors",
        "round_000002.safetensors",
        "round_000004.safetensors",
    ]


class StopAfter:
    """A round callback that presses Ctrl-C after ``rounds`` rounds."""

    def __init__(self, rounds: int):
        self.rounds = rounds

    def __call__(self, row):
        if row["round"] == self.rounds:
            raise KeyboardInterrupt


def test_resume_after_interrupt_is_bit_identical(ray_cluster, tmp_path):
    overrides = small_overrides(rounds=6, **{"runtime.checkpoint_every": 4})
    config = ROOT / "configs" / "default.yaml"
    straight = Simulation.from_yaml(config, overrides, run_dir=tmp_path / "straight").run()

    interrupted = Simulation.from_yaml(
        config, overrides, run_dir=tmp_path / "resumed", on_round_end=StopAfter(3)
    )
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    written_before = (tmp_path / "resumed" / "metrics.jsonl").read_text()
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["status"] == "interrupted"
    resumed = Simulation.resume_from(tmp_path / "resumed").run()

    after = (tmp_path / "resumed" / "metrics.jsonl").read_text()
    assert after.startswith(written_before)  # nothing already written was rewritten
    assert metrics_without_timing(resumed.run_dir) == metrics_without_timing(straight.run_dir)
    assert (resumed.run_dir / "model.safetensors").read_bytes() == (
        straight.run_dir / "model.safetensors"
    ).read_bytes()


def test_resume_refuses_a_changed_experiment(ray_cluster, tmp_path):
    run_small(tmp_path, "base")
    with pytest.raises(ConfigError, match="'client' differs"):
        Simulation.resume_from(tmp_path / "base", {"client.lr": 0.5})


def test_non_finite_updates_are_rejected_and_leave_the_model(ray_cluster, tmp_path):
    history = run_small(tmp_path, "nan", rounds=2, **{"client.lr": 1e38})
    assert all(row["rejected_updates"] == 6 for row in history.rows)
    cfg = small_config()
    spec = build_model_spec(cfg.model, build_dataset(cfg.data, cfg.seed))
    assert history.final_params.tobytes() == init_params(spec, cfg.seed).tobytes()


def _small_worker():
    """A plain (not Ray) ClientWorker over the small run's data: (cfg, dataset, shards, spec, worker)."""
    cfg = small_config()
    dataset = build_dataset(cfg.data, cfg.seed)
    shards = ClientShards.pack(build_partition(dataset, cfg.data, cfg.seed))
    spec = build_model_spec(cfg.model, dataset)
    worker = ClientWorker(threads=1)
    worker.load(
        WorkerRun(
            spec=spec,
            engine="torch",
            x_train=dataset.x_train,
            y_train=dataset.y_train,
            shard_indices=shards.indices,
            shard_offsets=shards.offsets,
            plan=ClientPlan(training=local_training(cfg)),
            seed=cfg.seed,
        )
    )
    return cfg, dataset, shards, spec, worker


def test_worker_group_sum_is_the_weighted_sum_of_client_deltas():
    cfg, dataset, shards, spec, worker = _small_worker()
    start = init_params(spec, cfg.seed)
    group = worker.train_group(start, RoundInput(round=1), 0, np.array([1, 4, 9]))
    # Expected, independently: each client's own local training, weighted by its shard size.
    model, expected = build_model(spec, "torch"), np.zeros(start.shape, dtype=np.float32)
    for cid in (1, 4, 9):
        rng = client_rng(cfg.seed, 1, cid, Stream.DATA_ORDER)
        result = train_client(
            ClientTask(
                model=model,
                start=start,
                x=dataset.x_train,
                y=dataset.y_train,
                shard=shards.shard(cid),
                cfg=local_training(cfg),
                rng=rng,
                client_id=cid,
            )
        )
        assert result.num_samples == shards.sizes()[cid]
        add_weighted(expected, result.update, result.num_samples)
    assert group.weight_total == sum(shards.sizes()[[1, 4, 9]])
    # Same float32 additions in the same client order: equal bits.
    assert group.weighted_sum.tobytes() == expected.tobytes()


def test_resume_refuses_changes_that_alter_the_bits(ray_cluster, tmp_path):
    run_small(tmp_path, "fixed", rounds=2)
    with pytest.raises(ConfigError, match="reduction_groups"):
        Simulation.resume_from(tmp_path / "fixed", {"runtime.reduction_groups": 2})
    with pytest.raises(ConfigError, match="below the 2 rounds"):
        Simulation.resume_from(tmp_path / "fixed", {"rounds": 1}).run()


def test_a_torn_metrics_line_is_dropped_and_resume_appends_cleanly(ray_cluster, tmp_path):
    overrides = small_overrides(rounds=4, **{"runtime.checkpoint_every": 1})
    straight = Simulation.from_yaml(
        ROOT / "configs" / "default.yaml", overrides, run_dir=tmp_path / "s"
    ).run()
    stopped = Simulation.from_yaml(
        ROOT / "configs" / "default.yaml", overrides, run_dir=tmp_path / "t", on_round_end=StopAfter(2)
    )
    with pytest.raises(KeyboardInterrupt):
        stopped.run()
    metrics = tmp_path / "t" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"round": 3, "test_acc')  # a crash in the middle of writing round 3
    Simulation.resume_from(tmp_path / "t").run()
    assert metrics_without_timing(tmp_path / "t") == metrics_without_timing(straight.run_dir)


def test_a_run_stopped_in_its_first_round_is_resumable(ray_cluster, tmp_path):
    def stop_now(row):
        raise KeyboardInterrupt

    overrides = small_overrides(rounds=2)
    with pytest.raises(KeyboardInterrupt):
        Simulation.from_yaml(
            ROOT / "configs" / "default.yaml", overrides, run_dir=tmp_path / "r", on_round_end=stop_now
        ).run()
    resumed = Simulation.resume_from(tmp_path / "r").run()
    assert [row["round"] for row in resumed.rows] == [1, 2]


def test_a_warning_raised_by_every_client_reaches_the_driver_once(monkeypatch, caplog):
    import warnings

    import clients.worker as worker_module

    def warning_train_client(*args, **kwargs):
        warnings.warn("lr looks large", UserWarning, stacklevel=1)
        return train_client(*args, **kwargs)

    monkeypatch.setattr(worker_module, "train_client", warning_train_client)
    cfg, dataset, shards, spec, worker = _small_worker()
    groups = [(0, np.array([1, 4, 9])), (1, np.array([2, 3]))]
    results = worker.train_groups(init_params(spec, cfg.seed), RoundInput(round=1), groups)
    assert [r.warnings for r in results] == [("UserWarning: lr looks large",)] * 2
    sim = Simulation(cfg)
    with caplog.at_level("WARNING", logger="fedsim"):
        for result in results:
            sim._warn_once(result.warnings)
    assert [r.getMessage() for r in caplog.records] == [
        "a client warned (shown once per run): UserWarning: lr looks large"
    ]


def test_the_python_api_returns_the_metrics_the_cli_writes(ray_cluster, tmp_path):
    from simulator.cli import main

    overrides = small_overrides(rounds=3)
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    assert (
        main(
            ["run", str(ROOT / "configs" / "default.yaml"), *sets, "--out", str(tmp_path / "cli"), "--quiet"]
        )
        == 0
    )
    history = Simulation.from_yaml(
        ROOT / "configs" / "default.yaml", overrides, run_dir=tmp_path / "api"
    ).run()
    written = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]

    def timeless(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert timeless(history.rows) == timeless(written)
    assert len(written) == 3 and history.run_dir == tmp_path / "api"


def test_a_run_directory_from_before_the_fix_resumes_as_it_was_trained(ray_cluster, tmp_path, caplog):
    """Runs written before server.weighting existed never applied client.prox_mu (nor
    max_grad_norm, local_steps): resumed, they go on without it, and say so."""
    straight = run_small(tmp_path, "straight", rounds=4)  # prox_mu 0: what the old run trained with
    run_small(tmp_path, "old", rounds=2)
    config = tmp_path / "old" / "config.yaml"
    text = config.read_text()
    assert "  weighting: samples\n" in text and "  prox_mu: 0.0\n" in text
    config.write_text(
        text.replace("  weighting: samples\n", "").replace("  prox_mu: 0.0\n", "  prox_mu: 1.0\n")
    )
    with caplog.at_level("WARNING", logger="fedsim"):
        resumed = Simulation.resume_from(tmp_path / "old", {"rounds": 4}).run()
    assert "client.prox_mu: 0.0 (the run's 1.0 never reached its training)" in caplog.text
    assert resumed.final_params.tobytes() == straight.final_params.tobytes()
    assert "  weighting: samples\n" in config.read_text()  # rewritten in today's format
