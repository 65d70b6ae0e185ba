"""GPU resources on a cluster whose GPUs are Ray resources only (CI has no GPU).

A head node advertising one GPU lets Ray schedule ``runtime.gpus_per_worker``
exactly as on a GPU machine: fractional shares, pool sizing, respawn checks.
Torch sees no CUDA device there, so ``model.device: auto`` must fall back to
the host (same bits as a CPU-only run) and ``cuda`` must stop with one clear
error. The device code path itself is tested in test_devices.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

FAKE_GPU_SCRIPT = """
import sys, logging
sys.path.insert(0, {root!r})
import ray
from ray.cluster_utils import Cluster
from clients.errors import FedsimError
from simulator import Simulation
from tests.conftest import small_overrides

head = {{"num_cpus": 2, "num_gpus": 1, "include_dashboard": False}}
cluster = Cluster(initialize_head=True, head_node_args=head)
ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
base = small_overrides(rounds=2, **{{"runtime.workers": None}})
host = Simulation.from_yaml({config!r}, base, run_dir={out!r} + "/host", quiet=True).run()
shared = Simulation.from_yaml({config!r}, {{**base, "runtime.gpus_per_worker": 0.5}},
                              run_dir={out!r} + "/shared", quiet=False).run()
print("IDENTICAL" if shared.final_params.tobytes() == host.final_params.tobytes() else "DIFFERENT")
try:
    Simulation.from_yaml({config!r}, {{**base, "runtime.gpus_per_worker": 0.5, "model.device": "cuda"}},
                         run_dir={out!r} + "/cuda", quiet=True).run()
    print("CUDA RUN DID NOT FAIL")
except FedsimError as exc:
    print("CUDA ERROR:", exc)
try:
    Simulation.from_yaml({config!r}, {{**base, "runtime.gpus_per_worker": 0.5, "runtime.workers": 3}},
                         run_dir={out!r} + "/toomany", quiet=True).run()
except FedsimError as exc:
    print("TOO MANY:", exc)
ray.shutdown()
cluster.shutdown()
"""


@pytest.mark.slow
def test_fractional_gpus_size_the_pool_and_auto_falls_back_to_the_host(tmp_path):
    script = FAKE_GPU_SCRIPT.format(
        root=str(ROOT), config=str(ROOT / "configs" / "default.yaml"), out=str(tmp_path)
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240, env=env
    )
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    # 2 CPUs / 0.5 CPU would allow 4 workers; 1 GPU / 0.5 GPU allows 2.
    assert "fedsim: 2 workers x (0.5 CPU + 0.5 GPU) on cpu (cluster has 2 CPUs, 1 GPUs)" in out, out
    assert "IDENTICAL" in out, out
    assert (
        "CUDA ERROR: the worker actors could not start: model.device: cuda, but torch in this "
        "worker sees no CUDA device (CUDA_VISIBLE_DEVICES='0', Ray GPU ids [0]"
    ) in out, out
    assert "TOO MANY: runtime.workers=3 needs 3 x (0.5 CPU + 0.5 GPU)" in out, out
    assert "the cluster has 2 CPUs and 1 GPUs" in out, out
