"""devices.json: every client's device as a run simulated it (its training speed, from a
capacity trace its compute time and bandwidth, its share of time online), and the trace
files' sha256, for reports and for a resume, which must see the very same traces.

Written once when a run whose rounds are planned on devices starts (a system model,
device traces or a selection policy); a report reads it as untrusted input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from clients.errors import FedsimError
from server.system import Devices, SystemModel
from simulator.rundir.files import write_json

DEVICES_NAME = "devices.json"
DEVICES_FORMAT = "fedsim-devices-1"


def write_devices(run_dir: Path, devices: Devices, system: SystemModel) -> None:
    """``run_dir``/devices.json for ``devices`` (the run's, every client's) under ``system``."""
    share = devices.online_share()
    if share is None:
        share = np.full(len(devices.speed), system.availability)
    write_json(
        run_dir / DEVICES_NAME,
        {
            "format": DEVICES_FORMAT,
            "num_clients": len(devices.speed),
            "speed": devices.speed.tolist(),
            "compute_ms_per_sample": _listed(devices.compute_ms),
            "bandwidth_kbps": _listed(devices.bandwidth_kbps),
            "online_share": share.tolist(),
            "trace": _trace_files(devices),
        },
    )


def check_same_traces(run_dir: Path, devices: Devices) -> None:
    """A resume must read the traces the run started with: FedsimError when a trace file
    recorded in devices.json now has other contents (or another file is configured)."""
    path = run_dir / DEVICES_NAME
    if not devices.trace_files or not path.is_file():
        return
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("trace") or {}
    except (OSError, ValueError, AttributeError):
        raise FedsimError(f"{path}: unreadable; it records the device traces this run started with") from None
    for kind, file, sha256 in devices.trace_files:
        was = recorded.get(kind) if isinstance(recorded, dict) else None
        if isinstance(was, dict) and was.get("sha256") != sha256:
            raise FedsimError(
                f"client.system.trace.{kind}: {file} is not the trace this run started with (its sha256 "
                f"{sha256[:16]}... differs from {str(was.get('sha256'))[:16]}... in {path}); put the "
                "original file back to resume, or start a new run"
            )


def _listed(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else values.tolist()


def _trace_files(devices: Devices) -> dict[str, Any]:
    files: dict[str, Any] = {"capacity": None, "availability": None}
    for kind, file, sha256 in devices.trace_files:
        files[kind] = {"path": file, "sha256": sha256}
    return files
