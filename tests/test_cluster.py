"""Joining a running Ray cluster: fedsim runs on it and leaves it running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

# The `ray` command, run from this interpreter (its script may live elsewhere, e.g. outside a venv).
RAY = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(port: int) -> list[int]:
    """PIDs whose command line names this cluster's GCS port (the daemons `ray start` made)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f":{port}" in cmdline or f"gcs_server_port={port}" in cmdline:
            pids.append(int(entry.name))
    return pids


def stop(port: int) -> None:
    """Stop only what this test started (never `ray stop`, which stops every Ray here):
    SIGTERM, then SIGKILL for daemons that outlive it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_of(port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while processes_of(port) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.slow
def test_run_against_a_started_cluster_and_leave_it_running(tmp_path):
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"}
    start = [*RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats"]  # fmt: skip
    subprocess.run(start, check=True, capture_output=True, timeout=120, env=env)
    try:
        gcs = processes_of(port)
        assert gcs, "ray start left no daemons"
        run = subprocess.run(
            [sys.executable, "-m", "simulator", "run", ROOT / "configs" / "default.yaml", "--address",
             f"127.0.0.1:{port}", "--out", tmp_path / "run", "--set", "rounds=3", "--quiet"],
            cwd=ROOT, capture_output=True, text=True, timeout=240, env=env,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["rounds_completed"] == 3
        assert all(Path(f"/proc/{pid}").exists() for pid in gcs)  # fedsim did not shut the cluster down
    finally:
        stop(port)
    assert not processes_of(port)
