"""Asynchronous aggregation (server.mode: async, FedBuff on the simulated clock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from clients.errors import ConfigError
from server.asynchronous import AsyncSchedule, StalenessWeight
from server.sampling import sample_clients
from server.system import SystemModel
from simulator import Simulation
from simulator.config.loading import load_config
from simulator.driver.workers import stop_idle_workers
from simulator.report.page import write_report
from tests.conftest import ROOT, client_worker_pids, interrupted_and_resumed

ASYNC_CONFIG = ROOT / "configs" / "fedbuff.yaml"
# Equal shards (50 samples per device, natural partition) and equal speeds: every client
# takes the same simulated time, so no update is ever stale.
EQUAL_CLIENTS = {
    "name": "equal",
    "rounds": 4,
    "data.dataset": "synthetic",
    "data.partition": "natural",
    "data.num_clients": 20,
    "data.synthetic.samples_per_device": 50,
    "model.hidden": [16],
    "server.clients_per_round": 5,
    "client.system.speed_sigma": 0.0,
    "server.async.concurrency": None,  # = clients per round
    "server.async.buffer_size": None,  # = concurrency
    "runtime.workers": 2,
    "runtime.cpus_per_worker": 0.5,
    "runtime.reduction_groups": 3,
    "runtime.checkpoint_every": 2,
}
HETEROGENEOUS = {
    **EQUAL_CLIENTS,
    "name": "hetero",
    "server.mode": "async",
    "client.system.speed_sigma": 1.0,
    "client.system.dropout": 0.1,
    "server.async.concurrency": 6,
    "server.async.buffer_size": 2,
    "rounds": 8,
}


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


# --- the staleness functions and the schedule (no Ray) -----------------------------


def test_staleness_weights_follow_fedasync():
    s = np.array([0, 1, 4, 5, 9])
    assert StalenessWeight("constant")(s).tolist() == [1.0] * 5
    np.testing.assert_allclose(StalenessWeight("polynomial", a=0.5)(s), (1 + s) ** -0.5, rtol=0)
    # hinge, a = 10, b = 4: 1 up to b, then 1 / (a (s - b) + 1)
    assert StalenessWeight("hinge", a=10, b=4)(s).tolist() == [1.0, 1.0, 1.0, 1 / 11, 1 / 51]
    with pytest.raises(ValueError, match="staleness kind"):
        StalenessWeight("linear")


def test_equal_clients_step_together_and_sample_as_sync_rounds_do():
    schedule = AsyncSchedule(
        seed=3, num_clients=40, concurrency=8, buffer_size=8, work=np.full(40, 120.0), system=SystemModel()
    )
    for step in range(1, 6):
        plan = schedule.next_step()
        assert sorted(t.client for t in plan.arrivals) == sample_clients(3, step, 40, 8).tolist()
        assert plan.staleness().tolist() == [0] * 8
        assert [t.event for t in plan.dispatched] == [step] * 8
        assert plan.time == pytest.approx(step * 0.12)


def _run_schedule(steps=60, max_staleness=None, **system):
    rng = np.random.default_rng(0)
    work = rng.integers(20, 300, 30).astype(float)
    model = SystemModel(speed_sigma=1.0, **system)
    schedule = AsyncSchedule(
        seed=1,
        num_clients=30,
        concurrency=7,
        buffer_size=3,
        work=work,
        system=model,
        max_staleness=max_staleness,
    )
    return [schedule.next_step() for _ in range(steps)], schedule


def test_heterogeneous_schedule_keeps_its_invariants_and_repeats_exactly():
    plans, schedule = _run_schedule(dropout=0.2)
    times = [p.time for p in plans]
    assert times == sorted(times) and times[-1] > 0
    for plan in plans:
        assert len(plan.arrivals) == 3
        assert (plan.staleness() >= 0).all()
        assert all(t.outcome == "arrives" and t.finish <= plan.time for t in plan.arrivals)
        assert all(t.version == plan.step - 1 for t in plan.dispatched)
    assert max(p.staleness().max() for p in plans) >= 1  # fast clients overtake slow ones
    assert sum(p.dropped for p in plans) > 0
    assert len(schedule.in_flight) <= 7
    again, _ = _run_schedule(dropout=0.2)
    assert [[t.key for t in p.arrivals] for p in again] == [[t.key for t in p.arrivals] for p in plans]


def test_too_stale_updates_are_discarded_and_deadlines_cut_trips():
    plans, _ = _run_schedule(max_staleness=0)
    assert all(p.staleness().max() == 0 for p in plans)
    assert sum(len(p.discarded) for p in plans) > 0
    timed, _ = _run_schedule(deadline=0.15)
    assert sum(p.timed_out for p in timed) > 0
    assert all(t.finish - t.start <= 0.15 + 1e-12 for p in timed for t in p.arrivals)


def test_a_deadline_no_client_meets_is_one_clear_error(monkeypatch):
    monkeypatch.setattr("server.asynchronous.MAX_FRUITLESS_TRIPS", 2000)  # the real limit takes seconds
    schedule = AsyncSchedule(
        seed=0,
        num_clients=4,
        concurrency=2,
        buffer_size=1,
        work=np.full(4, 100.0),
        system=SystemModel(deadline=0.01),
    )
    with pytest.raises(ValueError, match="ended without a usable update"):
        schedule.next_step()


# --- through the product ----------------------------------------------------------


def test_async_with_buffer_equal_to_concurrency_equals_sync_fedavg_bit_for_bit(ray_cluster, tmp_path):
    sync = Simulation.from_yaml(
        ASYNC_CONFIG, {**EQUAL_CLIENTS, "server.mode": "sync"}, run_dir=tmp_path / "s"
    ).run()
    asyn = Simulation.from_yaml(
        ASYNC_CONFIG, {**EQUAL_CLIENTS, "server.mode": "async"}, run_dir=tmp_path / "a"
    ).run()
    assert asyn.final_params.tobytes() == sync.final_params.tobytes()
    compared = (
        "train_loss", "test_accuracy", "test_loss", "clients", "num_samples", "bytes_up", "bytes_down",
        "simulated_elapsed", "update_norm_mean",
    )  # fmt: skip
    for s_row, a_row in zip(sync.rows, asyn.rows, strict=True):
        assert {k: a_row[k] for k in compared} == {k: s_row[k] for k in compared}
        assert a_row["staleness_histogram"] == [5]


def test_async_bits_do_not_depend_on_workers_or_resume(ray_cluster, tmp_path):
    two = Simulation.from_yaml(ASYNC_CONFIG, HETEROGENEOUS, run_dir=tmp_path / "two").run()
    one = Simulation.from_yaml(
        ASYNC_CONFIG, {**HETEROGENEOUS, "runtime.workers": 1}, run_dir=tmp_path / "one"
    ).run()
    assert one.final_params.tobytes() == two.final_params.tobytes()
    assert strip_timing(one.rows) == strip_timing(two.rows)
    assert any(max(i for i, c in enumerate(r["staleness_histogram"]) if c) > 0 for r in two.rows)

    resumed = interrupted_and_resumed(ASYNC_CONFIG, HETEROGENEOUS, tmp_path / "r", stop_after=5)
    assert resumed.final_params.tobytes() == two.final_params.tobytes()
    assert strip_timing(resumed.rows) == strip_timing(two.rows)


def test_staleness_weighting_reaches_the_server_step(ray_cluster, tmp_path):
    const = Simulation.from_yaml(
        ASYNC_CONFIG,
        {**HETEROGENEOUS, "rounds": 4, "server.async.staleness": "constant"},
        run_dir=tmp_path / "c",
    ).run()
    poly = Simulation.from_yaml(
        ASYNC_CONFIG, {**HETEROGENEOUS, "rounds": 4, "server.async.staleness_a": 2.0}, run_dir=tmp_path / "p"
    ).run()
    stale = [r["round"] for r in const.rows if len(r["staleness_histogram"]) > 1]
    assert stale, "the config must produce stale updates"
    # Identical up to the first stale buffer, different after it.
    first = stale[0]
    assert strip_timing(const.rows[: first - 1]) == strip_timing(poly.rows[: first - 1])
    assert const.final_params.tobytes() != poly.final_params.tobytes()


# FedAsync (Xie et al. 2019): HETEROGENEOUS's clients, one arrival mixed in per step.
FEDASYNC = {
    **HETEROGENEOUS,
    "name": "fedasync",
    "server.async.rule": "fedasync",
    "server.async.buffer_size": None,  # = 1 under fedasync
    "server.async.mixing": 0.5,
    "rounds": 6,
    "runtime.checkpoint_every": 1,
}


def _fedbuff_twin(overrides: dict) -> dict:
    """FedBuff with one arrival a step and server.lr = the mixing weight: FedAsync's twin
    when no update is stale."""
    mixing = overrides["server.async.mixing"]
    return {**overrides, "server.async.rule": "fedbuff", "server.async.mixing": 0.6, "server.lr": mixing,
            "server.async.buffer_size": 1}  # fmt: skip


def test_fedasync_without_staleness_is_fedbuff_with_lr_mixing_bit_for_bit(ray_cluster, tmp_path):
    """With one client at a time, every client starts from the current model (tau = t - 1,
    staleness 0): x <- (1 - a) x + a x_new = x + a delta, FedBuff's step at lr a. The drift
    x_tau - x is exactly zero then, so the bits agree."""
    fresh = {**FEDASYNC, "server.async.concurrency": 1, "rounds": 3, "server.async.staleness": "constant"}
    mixed = Simulation.from_yaml(ASYNC_CONFIG, fresh, run_dir=tmp_path / "a").run()
    buffered = Simulation.from_yaml(ASYNC_CONFIG, _fedbuff_twin(fresh), run_dir=tmp_path / "b").run()
    assert [r["staleness_histogram"] for r in mixed.rows] == [[1]] * 3
    assert [r["mixing_weight"] for r in mixed.rows] == [0.5] * 3
    assert mixed.final_params.tobytes() == buffered.final_params.tobytes()
    assert "mixing_weight" not in buffered.rows[0]


def _checkpoint_tensors(run_dir, round_):
    from safetensors.numpy import load_file

    return load_file(run_dir / "checkpoints" / f"round_{round_:06d}.safetensors")


def test_fedasync_mixes_stale_models_as_published_and_resumes_bit_for_bit(ray_cluster, tmp_path):
    """Each stale step, recomputed in float64 from what the checkpoints before and after it
    hold (x_{t-1}, the arriving client's delta and the model x_tau it started from), is
    x_t = (1 - a_t) x_{t-1} + a_t (x_tau + delta), a_t = a (1 + (t - tau))^-0.5 with t - tau
    one more than the reported staleness s (0 when fresh); FedBuff's step
    x_{t-1} + a_t delta is not. The run resumes bit for bit from mid-run."""
    saved = {}

    def keep_checkpoint(row):
        saved[row["round"]] = (row, _checkpoint_tensors(tmp_path / "straight", row["round"]))

    straight = Simulation.from_yaml(
        ASYNC_CONFIG, FEDASYNC, run_dir=tmp_path / "straight", on_round_end=keep_checkpoint
    ).run()
    checked = 0
    for step in range(2, FEDASYNC["rounds"] + 1):
        row, after = saved[step]
        staleness = len(row["staleness_histogram"]) - 1
        if staleness == 0:
            assert row["mixing_weight"] == pytest.approx(0.5 * 2**-0.5, rel=1e-12)  # s(t - tau = 1)
            continue
        before = saved[step - 1][1]
        (client,) = row["clients"]
        (delta_key,) = [
            k for k in before if k.startswith("server.async.") and k.endswith(f".{client}.update")
        ]
        start = before[f"server.async.model.{step - 1 - staleness}"].astype(np.float64)
        delta = before[delta_key].astype(np.float64)
        x_old, x_new = before["global_params"].astype(np.float64), after["global_params"].astype(np.float64)
        a_t = 0.5 * (2 + staleness) ** -0.5  # t - tau = staleness + 1, as the paper counts
        assert row["mixing_weight"] == pytest.approx(a_t, rel=1e-12)
        expected = (1 - a_t) * x_old + a_t * (start + delta)
        # Five float32 roundings (drift, delta + drift, weight x update, the step, the cast)
        # of values |x| <= ~1 each err by <= 6e-8 |x|: 1e-6 bounds them all.
        np.testing.assert_allclose(x_new, expected, rtol=0, atol=1e-6)
        fedbuff_step = x_old + a_t * delta  # differs from it by a_t |x_tau - x_{t-1}|
        assert np.abs(x_new - fedbuff_step).max() > 1e-4
        checked += 1
    assert checked >= 2, "the config must produce stale arrivals"

    # Three steps, then three more from the step-3 checkpoint (clients in flight, their
    # updates and starting models in it): no interrupt, so the same warm workers serve.
    Simulation.from_yaml(ASYNC_CONFIG, {**FEDASYNC, "rounds": 3}, run_dir=tmp_path / "r").run()
    resumed = Simulation.resume_from(tmp_path / "r", {"rounds": FEDASYNC["rounds"]}).run()
    assert resumed.final_params.tobytes() == straight.final_params.tobytes()
    assert strip_timing(resumed.rows) == strip_timing(straight.rows)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"server.aggregator": "median"},
            "server.aggregator: 'median' is not allowed with server.mode: async",
        ),
        (
            {"client.algorithm": "scaffold"},
            "client.algorithm: 'scaffold' is not allowed with server.mode: async",
        ),
        ({"server.async.concurrency": 500}, "server.async.concurrency: 500 is not allowed"),
        ({"server.async.staleness": "linear"}, "server.async.staleness: 'linear' is not allowed"),
        ({"server.async.staleness_a": -1.0}, "server.async.staleness_a: -1.0 is not allowed"),
        ({"server.asynch.buffer_size": 2}, "did you mean 'server.async'"),
        ({"server.async.mixing": 0.0}, "server.async.mixing: 0.0 is not allowed; must be in (0, 1]"),
        (
            {"server.async.mixing": 0.9},
            "server.async.mixing: 0.9 is not allowed with server.async.rule: fedbuff",
        ),
        *(
            (
                {"server.async.rule": "fedasync", **bad},
                f"{message} is not allowed with server.async.rule: fedasync",
            )
            for bad, message in [
                ({"server.async.buffer_size": 2}, "server.async.buffer_size: 2"),
                ({"server.async.buffer_size": None, "server.optimizer": "adam"}, "server.optimizer: 'adam'"),
                ({"server.async.buffer_size": None, "server.lr": 0.5}, "server.lr: 0.5"),
                (
                    {"server.async.buffer_size": 1, "server.weighting": "uniform"},
                    "server.weighting: 'uniform'",
                ),
            ]
        ),
    ],
)
def test_bad_async_settings_are_refused_with_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(ASYNC_CONFIG, {"server.mode": "async", **overrides})


def test_cli_refuses_a_bad_async_key_with_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "validate", ASYNC_CONFIG, "--set", "server.async.buffer_size=0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "server.async.buffer_size: 0 is not allowed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_refuses_a_fedasync_buffer_with_one_line_and_exit_2():
    """configs/fedbuff.yaml buffers 5 arrivals: FedAsync mixes them one at a time."""
    proc = subprocess.run(
        [sys.executable, "-m", "simulator", "validate", ASYNC_CONFIG, "--set", "server.async.rule=fedasync"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fedsim: error: server.async.buffer_size: 5 is not allowed with server.async.rule: fedasync; "
        "FedAsync mixes each arrival into the model at once (buffer_size 1 or null)"
    ]


def test_report_plots_staleness_and_sync_against_async_on_simulated_time(ray_cluster, tmp_path):
    asyn = Simulation.from_yaml(ASYNC_CONFIG, {**HETEROGENEOUS, "rounds": 4}, run_dir=tmp_path / "a").run()
    sync = Simulation.from_yaml(
        ASYNC_CONFIG,
        {**HETEROGENEOUS, "rounds": 2, "server.mode": "sync", "server.async": {}},
        run_dir=tmp_path / "s",
    ).run()
    assert all(r["simulated_elapsed"] > 0 for r in sync.rows)
    page = write_report([asyn.run_dir, sync.run_dir], tmp_path / "report").read_text()
    assert 'id="panel-staleness"' in page
    assert 'id="panel-accuracy-vs-simulated-time"' in page
    summary = json.loads((asyn.run_dir / "summary.json").read_text())
    assert summary["mode"] == "async"


@pytest.mark.slow
def test_async_bits_survive_a_killed_worker(ray_cluster, tmp_path):
    stop_idle_workers()  # the only ClientWorker processes left are the runs' own
    straight = Simulation.from_yaml(ASYNC_CONFIG, HETEROGENEOUS, run_dir=tmp_path / "straight").run()
    killed = []

    def kill_one_worker(row):
        if row["round"] in (2, 5):
            killed.append(client_worker_pids()[0])
            os.kill(killed[-1], signal.SIGKILL)

    faulty = Simulation.from_yaml(
        ASYNC_CONFIG, HETEROGENEOUS, run_dir=tmp_path / "faulty", on_round_end=kill_one_worker
    ).run()
    assert len(killed) == 2
    assert faulty.final_params.tobytes() == straight.final_params.tobytes()
    assert strip_timing(faulty.rows) == strip_timing(straight.rows)


@pytest.mark.parametrize(
    "mode, moving", [("async", "step 1: 0/2 arrivals"), ("sync", "round 1: 5/5 clients trained")]
)
def test_the_live_line_moves_while_a_round_trains(ray_cluster, tmp_path, monkeypatch, capsys, mode, moving):
    """An async step says how much of its buffer is in; a sync round, how many clients trained."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # rich draws its live bar, as on a terminal
    monkeypatch.setenv("TERM", "xterm")
    overrides = {**(HETEROGENEOUS if mode == "async" else EQUAL_CLIENTS), "rounds": 2, "server.mode": mode}
    Simulation.from_yaml(ASYNC_CONFIG, overrides, run_dir=tmp_path / mode, quiet=False).run()
    out = capsys.readouterr().out
    assert moving in out
    if mode == "async":
        assert "step 1: 2/2 arrivals" in out and "step 2: " in out


def test_server_modules_import_no_torch_and_no_ray():
    """server/ is what the server does to updates, in numpy: importing any of it (the
    asynchronous buffer included) loads neither torch nor Ray."""
    probe = (
        "import importlib, pkgutil, sys, server; "
        "[importlib.import_module('server.' + m.name) for m in pkgutil.iter_modules(server.__path__)]; "
        "print(sorted({'torch', 'ray'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
