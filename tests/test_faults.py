"""Fault tolerance: a killed worker or a lost node costs time, never bits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import ray

from clients.errors import ClusterError
from simulator import Simulation
from simulator.driver.pool import WorkerPool
from simulator.driver.workers import stop_idle_workers
from tests.conftest import ROOT, client_worker_pids, small_overrides

DEFAULT = ROOT / "configs" / "default.yaml"


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_bits_do_not_change(ray_cluster, tmp_path):
    stop_idle_workers()  # the only ClientWorker processes left are the runs' own, and CPUs are free
    overrides = small_overrides(rounds=6)
    straight = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "straight").run()
    killed = []

    def kill_one_worker(row):
        if row["round"] in (2, 4):
            pid = client_worker_pids()[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    faulty = Simulation.from_yaml(
        DEFAULT, overrides, run_dir=tmp_path / "faulty", on_round_end=kill_one_worker
    ).run()
    assert len(killed) == 2
    assert faulty.final_params.tobytes() == straight.final_params.tobytes()
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in h.rows] for h in (straight, faulty)]
    assert strip[0] == strip[1]


@ray.remote(num_cpus=0.25)
class _Fragile:
    def work(self, item):
        if item == "poison":
            os._exit(1)  # the process dies, as a segfaulting client would
        return item * 2


def test_an_item_that_kills_every_worker_stops_with_a_clear_error(ray_cluster):
    stop_idle_workers()  # idle ClientWorkers would hold the CPUs these actors need
    pool = WorkerPool([_Fragile.remote(), _Fragile.remote()], respawn=_Fragile.remote, max_respawns=5)
    assert pool.map(lambda actor, item: actor.work.remote(item), [1, 2, 3]) == [2, 4, 6]
    with pytest.raises(ClusterError, match="work item 1 failed on 4 workers"):
        pool.map(lambda actor, item: actor.work.remote(item), [1, "poison", 3], max_retries=3)
    assert pool.evicted == 4
    pool.shutdown()


NODE_LOSS_SCRIPT = """
import sys, logging
sys.path.insert(0, {root!r})
import ray
from ray.cluster_utils import Cluster
from simulator import Simulation
from tests.conftest import small_overrides

cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1, "include_dashboard": False}})
second = cluster.add_node(num_cpus=2)
ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
overrides = small_overrides(rounds=5, **{{"runtime.workers": 3, "runtime.cpus_per_worker": 1.0}})
straight = Simulation.from_yaml({config!r}, overrides, run_dir={out!r} + "/straight").run()

def lose_node(row):
    if row["round"] == 2:
        cluster.remove_node(second)

lossy = Simulation.from_yaml({config!r}, {{**overrides, "runtime.workers": 3}}, run_dir={out!r} + "/lossy",
                             on_round_end=lose_node).run()
print("IDENTICAL" if lossy.final_params.tobytes() == straight.final_params.tobytes() else "DIFFERENT")
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_losing_a_node_mid_run_keeps_the_bits(tmp_path):
    script = NODE_LOSS_SCRIPT.format(root=str(ROOT), config=str(DEFAULT), out=str(tmp_path))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IDENTICAL" in result.stdout, result.stdout + result.stderr[-2000:]
