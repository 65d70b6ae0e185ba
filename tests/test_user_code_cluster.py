"""A user's code on Ray workers (runtime.py_modules), through the CLI.

The user's package lives in a folder of its own, found by the driver through
PYTHONPATH only: Ray's workers on another node (here: a node of a local
multi-node cluster, whose processes never saw that PYTHONPATH) find it only
because the run ships it. A worker that cannot import it stops the run with one
line naming the code, the node and the error.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simulator.cli import main
from simulator.rundir.checkpoints import load_model
from tests.conftest import ROOT
from tests.test_cli import assert_one_line_error

DEFAULT = ROOT / "configs" / "default.yaml"
TINY = [
    "rounds=1", "data.num_clients=4", "server.clients_per_round=2", "runtime.workers=2",
    "runtime.cpus_per_worker=1.0", "model.name=module", "model.factory=mypkg.nets:small",
]  # fmt: skip
NETS = (
    "from torch import nn\n\n\n"
    "def small(hidden=8):\n"
    "    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))\n"
)
# Imports on the driver, raises on every Ray worker (its process is in Ray's worker mode).
DRIVER_ONLY = (
    "import ray._private.worker as ray_worker\n\n"
    "if ray_worker.global_worker.mode == ray_worker.WORKER_MODE:\n"
    "    raise ImportError('licence server unreachable')\n" + NETS
)
NODE = re.compile(r"runtime\.py_modules: worker on node [0-9a-f.:]+ \([0-9a-f]{8}\) cannot import ")
# A local two-node cluster (one CPU each), held until stdin closes.
CLUSTER = """
import sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()
cluster.shutdown()
"""


def user_package(root: Path, nets: str = NETS, name: str = "mypkg") -> Path:
    """``mypkg.nets:small`` under ``root/code`` (neither installed nor in any working directory)."""
    (root / "code" / name).mkdir(parents=True)
    (root / "code" / name / "__init__.py").write_text("")
    (root / "code" / name / "nets.py").write_text(nets)
    return root / "code"


def fedsim_elsewhere(tmp_path: Path, env: dict, *args) -> subprocess.CompletedProcess:
    """`fedsim run` from an empty folder, the user's code found through PYTHONPATH."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    env = {**env, "PYTHONPATH": str(tmp_path / "code"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "simulator", "run", DEFAULT, "--quiet", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def test_code_the_driver_imports_but_the_workers_cannot_find_stops_the_run(
    ray_cluster, tmp_path, capsys, monkeypatch
):
    """A Ray the caller started (as in a notebook) keeps its own runtime_env: a package
    only on the driver's sys.path imports there, and each worker's own import, before
    the run loads, is what fails, in one line naming the code, the node and the error."""
    monkeypatch.syspath_prepend(str(user_package(tmp_path, name="driver_side_pkg")))
    monkeypatch.chdir(tmp_path)
    overrides = [*TINY, "runtime.workers=1", "model.factory=driver_side_pkg.nets:small"]
    try:
        code = main(["run", str(DEFAULT), "--out", str(tmp_path / "run"), "--quiet", *sets(overrides)])
        assert "driver_side_pkg.nets" in sys.modules  # the driver's import succeeded
    finally:
        for name in ("driver_side_pkg", "driver_side_pkg.nets"):
            sys.modules.pop(name, None)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fedsim: error: "), lines
    assert NODE.search(lines[0]), lines[0]  # the node's IP and id
    assert (
        "cannot import model.factory driver_side_pkg.nets:small: "
        "ModuleNotFoundError: No module named 'driver_side_pkg'"
    ) in lines[0]


@pytest.mark.slow
def test_a_module_that_fails_on_the_workers_stops_the_run_in_one_line(tmp_path):
    """The driver imports the factory (and builds the model) fine; each worker imports it
    itself before loading the run, so the worker's failure is what stops the run."""
    user_package(tmp_path, DRIVER_ONLY)
    result = fedsim_elsewhere(tmp_path, dict(os.environ), "--out", tmp_path / "run", *sets(TINY))
    assert_one_line_error(
        result,
        "runtime.py_modules: worker on node 127.0.0.1 (",
        "cannot import model.factory mypkg.nets:small: ImportError: licence server unreachable",
    )
    assert (tmp_path / "run" / "config.yaml").is_file()  # the run directory keeps what it had


@pytest.mark.parametrize(
    ("entries", "fragments"),
    [
        ("[1]", ["runtime.py_modules", "a list of str or null"]),
        ('["my pkg"]', ["runtime.py_modules", "'my pkg' is neither a module name", "nor a path"]),
        ('["./no_such_folder"]', ["runtime.py_modules", "'./no_such_folder' is not a folder or a .py file"]),
        ('["no_such_package_fedsim"]', ["runtime.py_modules", "'no_such_package_fedsim' is no module"]),
        ('["/"]', ["runtime.py_modules", "would ship a whole tree"]),
        ('["~/"]', ["runtime.py_modules", "would ship a whole tree"]),
    ],
)
def test_a_bad_py_modules_entry_is_one_line_and_exit_2(entries, fragments, tmp_path, capsys, monkeypatch):
    """Checked when the run starts, before Ray does (the form already when the config loads)."""
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "run",
            str(DEFAULT),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            "--set",
            f"runtime.py_modules={entries}",
        ]
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fedsim: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_a_path_entry_is_where_the_driver_imports_the_code_from_too(tmp_path, capsys, monkeypatch):
    """runtime.py_modules: [./code/mypkg] ships mypkg, and the driver finds it there as well,
    though neither its Python path nor the folder it runs in holds mypkg."""
    user_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the entry's folder is added for this test only
    overrides = [*TINY, "runtime.py_modules=[./code/mypkg]"]
    code = main(["validate", str(DEFAULT), "--data", *sets(overrides)])
    captured = capsys.readouterr()
    out = captured.out + captured.err  # the YAML on stdout, the "# data:" summary on stderr
    sys.modules.pop("mypkg.nets", None), sys.modules.pop("mypkg", None)
    assert code == 0 and "model: 610 parameters" in out, out[-500:]  # 64*8+8 + 8*10+10


def test_plain_validate_reads_py_modules_without_importing_anything(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "imported"
    marking = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n" + NETS
    code_dir = user_package(tmp_path, marking, name="marking_pkg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(code_dir))
    entries = '["marking_pkg", "./code/marking_pkg", "./missing_folder"]'
    overrides = [*TINY, "model.factory=marking_pkg.nets:small", f"runtime.py_modules={entries}"]
    assert main(["validate", str(DEFAULT), *sets(overrides)]) == 0
    out = capsys.readouterr().out
    assert "- ./code/marking_pkg" in out and not marker.exists()
    assert "marking_pkg" not in sys.modules


@pytest.fixture
def two_node_cluster(tmp_path):
    """A local Ray cluster of two nodes, token-authenticated; yields (address, env).
    Only this cluster is stopped afterwards (never `ray stop`)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("PYTHONPATH", None)
    holder = subprocess.Popen(
        [sys.executable, "-c", CLUSTER], cwd=tmp_path, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        address = holder.stdout.readline().strip()
        assert address, "the cluster did not start"
        yield address, env
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait(timeout=10)


@pytest.mark.slow
def test_the_users_package_reaches_workers_on_every_node(tmp_path, two_node_cluster):
    """Shipped by default, the package trains on a two-node cluster (one worker per node)
    to the same bits as on the embedded Ray; shipped nothing (`[]`), the workers cannot
    import it and the run stops in one line naming a node."""
    address, env = two_node_cluster
    user_package(tmp_path)
    cluster = fedsim_elsewhere(
        tmp_path, env, "--address", address, "--out", tmp_path / "cluster", *sets(TINY)
    )
    assert cluster.returncode == 0, cluster.stderr[-3000:]
    embedded = fedsim_elsewhere(tmp_path, dict(os.environ), "--out", tmp_path / "embedded", *sets(TINY))
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    on_cluster, on_embedded = (
        load_model(tmp_path / "cluster" / "model.safetensors"),
        load_model(tmp_path / "embedded" / "model.safetensors"),
    )
    assert sorted(on_cluster) == sorted(on_embedded) == ["1.bias", "1.weight", "3.bias", "3.weight"]
    assert all(np.array_equal(on_cluster[name], on_embedded[name]) for name in on_cluster)
    unshipped = [*TINY, "runtime.py_modules=[]"]
    bare = fedsim_elsewhere(tmp_path, env, "--address", address, "--out", tmp_path / "bare", *sets(unshipped))
    assert_one_line_error(bare, "cannot import model.factory mypkg.nets:small: ModuleNotFoundError")
    assert NODE.search(bare.stderr), bare.stderr  # the node's IP and id
