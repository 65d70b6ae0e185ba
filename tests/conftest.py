"""Shared fixtures: one Ray for the whole session, small configs, paths."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    """Ctrl-C tests send the process SIGINT. A shell that starts the suite in the background
    (``make test &``, nohup) has it ignored, and Python then raises no KeyboardInterrupt:
    give SIGINT Python's own handler, as a terminal would."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def ray_cluster():
    """Ray started once per test session (2 CPUs, no dashboard); Simulation reuses it.
    It advertises one GPU, a resource only (torch sees none here), so that
    runtime.gpus_per_worker can be scheduled as on a GPU machine. Worker actors
    are handed from run to run (``reuse_workers``, bit-identical to fresh ones):
    starting them would be most of the suite's time."""
    ray = pytest.importorskip("ray")
    from simulator.driver.workers import reuse_workers

    ray.init(
        address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
        logging_level=logging.ERROR,
    )  # fmt: skip
    try:
        with reuse_workers():
            yield ray
    finally:
        ray.shutdown()


def small_overrides(**extra) -> dict:
    """A seconds-long digits run: 12 clients, 6 per round, a small MLP."""
    overrides = {
        "name": "small",
        "rounds": 4,
        "data.num_clients": 12,
        "server.clients_per_round": 6,
        "model.hidden": [32],
        "runtime.reduction_groups": 4,
        "runtime.cpus_per_worker": 0.5,
        "runtime.workers": 2,
        "runtime.checkpoint_every": 2,
    }
    overrides.update(extra)
    return overrides


def interrupted_and_resumed(config, overrides: dict, run_dir: Path, stop_after: int):
    """Run ``config`` with ``overrides`` into ``run_dir``, interrupt it (Ctrl-C) after
    round ``stop_after``, then resume it to the end; the resumed run's History."""
    from simulator import Simulation

    def interrupt(row):
        if row["round"] == stop_after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Simulation.from_yaml(config, overrides, run_dir=run_dir, on_round_end=interrupt).run()
    return Simulation.resume_from(run_dir).run()


def small_config(**extra):
    """The small run as a validated Config object."""
    from simulator.config.loading import apply_overrides, from_dict

    return from_dict(apply_overrides({}, small_overrides(**extra)))


def client_worker_pids() -> list[int]:
    """PIDs of the live ClientWorker actor processes of this test session's Ray (Ray titles
    them ray::ClientWorker...; they descend from this process through its raylet)."""
    parents, workers = {}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: ppid
        if cmdline.startswith(b"ray::ClientWorker"):
            workers.append(int(entry.name))
    return sorted(pid for pid in workers if _descends_from(pid, os.getpid(), parents))


def _descends_from(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
    while pid in parents and pid > 1:
        pid = parents[pid]
        if pid == ancestor:
            return True
    return False
