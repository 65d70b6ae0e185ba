"""Warm workers: a run hands its worker actors to the next run of the same shape,
and a reused worker computes exactly what a new one would."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import ray

from clients.errors import ClusterError, RunDiverged
from clients.models.spec import build_spec
from clients.protocol import ClientPlan, WorkerRun
from clients.training import LocalTrainingConfig
from simulator import Simulation
from simulator.driver.simulation import _loaded
from simulator.driver.workers import WorkerShape, acquire, release, reuse_workers, stop_idle_workers
from tests.conftest import ROOT, client_worker_pids, small_overrides

DEFAULT = ROOT / "configs" / "default.yaml"


def no_idle_workers() -> None:
    """Stop the idle workers and wait for their processes to be gone."""
    stop_idle_workers()
    deadline = time.monotonic() + 30
    while client_worker_pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client_worker_pids() == []


def run(tmp_path, name: str, overrides: dict):
    return Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / name).run()


def metrics(history) -> list[dict]:
    rows = (history.run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in rows]


def test_a_reused_worker_computes_the_bits_of_a_fresh_one(ray_cluster, tmp_path):
    # Dropout and SCAFFOLD give a worker the most per-run state: a generator, client states.
    overrides = small_overrides(rounds=3, **{"model.dropout": 0.3, "client.algorithm": "scaffold"})
    no_idle_workers()
    fresh = run(tmp_path, "fresh", overrides)
    processes = client_worker_pids()
    # The same workers serve a run of another model, engine, data and attack in between.
    run(tmp_path, "between", small_overrides(rounds=2, **{
        "model.name": "cnn", "model.conv_channels": [2, 2], "model.fc_width": 8, "model.engine": "numpy",
        "server.attack.kind": "label_flip", "data.partition": "iid", "server.aggregator": "median",
    }))  # fmt: skip
    reused = run(tmp_path, "reused", overrides)
    assert client_worker_pids() == processes  # no worker was started: the runs were served warm
    assert len(processes) == 2
    assert reused.final_params.tobytes() == fresh.final_params.tobytes()
    assert metrics(reused) == metrics(fresh)


def test_a_diverged_run_hands_its_workers_on(ray_cluster, tmp_path):
    """Divergence is found between rounds, with every worker idle: the next run (a sweep's
    next grid point, the next test) is served by the same warm workers."""
    overrides = small_overrides(rounds=1)
    run(tmp_path, "before", overrides)
    processes = client_worker_pids()
    exploding = small_overrides(rounds=3, **{"client.lr": 1e4, "server.stop_after_loss_growth_evals": 1})
    with pytest.raises(RunDiverged):
        run(tmp_path, "diverged", exploding)
    run(tmp_path, "after", overrides)
    assert client_worker_pids() == processes and len(processes) == 2


def test_a_run_of_another_shape_stops_the_idle_workers_it_cannot_use(ray_cluster, tmp_path):
    run(tmp_path, "half", small_overrides(rounds=1, **{"runtime.cpus_per_worker": 0.5}))
    half_cpu = client_worker_pids()
    # Two 1-CPU workers need the whole cluster: the idle half-CPU ones must go first.
    run(tmp_path, "whole", small_overrides(rounds=1, **{"runtime.cpus_per_worker": 1.0}))
    assert not set(half_cpu) & set(client_worker_pids())
    assert len(client_worker_pids()) == 2


def test_outside_reuse_a_run_stops_its_workers(ray_cluster):
    shape = WorkerShape(cpus=0.5, gpus=0.0, device="auto")
    no_idle_workers()
    actors = acquire(shape, 1)
    ray.get(actors[0].ping.remote(), timeout=60)
    release(shape, actors, keep=False)  # a run whose Ray stops with it, or that failed
    no_idle_workers()  # waits for the process to go: nothing kept it
    with reuse_workers():  # nested in the session's block: leaving it keeps the idle ones
        kept = acquire(shape, 1)
        ray.get(kept[0].ping.remote(), timeout=60)
        release(shape, kept, keep=True)
    process = client_worker_pids()
    assert len(process) == 1
    again = acquire(shape, 1)  # handed out again: no new process
    ray.get(again[0].ping.remote(), timeout=60)
    assert client_worker_pids() == process
    release(shape, again, keep=True)


def _run_on_engine(engine: str) -> WorkerRun:
    """A tiny logistic-regression run for the named engine."""
    return WorkerRun(
        spec=build_spec("logreg", (4,), 2),
        engine=engine,
        x_train=np.zeros((0, 4), np.float32),
        y_train=np.zeros(0, np.int64),
        shard_indices=np.zeros(0, np.int64),
        shard_offsets=np.zeros(1, np.int64),
        plan=ClientPlan(training=LocalTrainingConfig(0.1, 0.0, 0.0, 1, 10)),
        seed=0,
    )


def test_a_worker_that_cannot_load_the_run_is_one_clear_error(ray_cluster):
    shape = WorkerShape(cpus=0.5, gpus=0.0, device="auto")
    actors = acquire(shape, 1)
    run = _run_on_engine("jax")
    with pytest.raises(ClusterError, match="could not load the run: ValueError.*unknown engine 'jax'"):
        _loaded(actors, run)
    release(shape, actors, keep=False)


def test_when_every_worker_fails_to_load_each_error_is_collected(ray_cluster, monkeypatch):
    """Raising at the first worker's error left the second's unread, and Ray printed it
    as an 'Unhandled error' traceback under fedsim's one-line error (CI, two nodes)."""
    shape = WorkerShape(cpus=0.5, gpus=0.0, device="auto")
    actors = acquire(shape, 2)
    fetched, real_get = [], ray.get
    monkeypatch.setattr(ray, "get", lambda ref, **kw: (fetched.append(ref), real_get(ref, **kw))[1])
    with pytest.raises(ClusterError, match="unknown engine 'jax'"):
        _loaded(actors, _run_on_engine("jax"))
    monkeypatch.undo()
    release(shape, actors, keep=False)
    assert len(fetched) == 2 and len(set(fetched)) == 2


RESTART_SCRIPT = """
import logging, sys
sys.path.insert(0, {root!r})
import ray
from simulator import Simulation
from simulator.driver.simulation import _loaded
from simulator.driver.workers import reuse_workers
from tests.conftest import small_overrides

overrides = small_overrides(rounds=1, **{{"runtime.workers": 1}})
bits = []
with reuse_workers():
    for session in range(2):  # a sweep or notebook that starts and stops Ray twice
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
        history = Simulation.from_yaml({config!r}, overrides, run_dir={out!r} + f"/s{{session}}").run()
        bits.append(history.final_params.tobytes())
        ray.shutdown()
print("SAME" if bits[0] == bits[1] else "DIFFERENT")
"""


@pytest.mark.slow
def test_idle_workers_of_a_stopped_ray_are_not_handed_to_the_next_one(tmp_path):
    script = RESTART_SCRIPT.format(root=str(ROOT), config=str(DEFAULT), out=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "SAME"
