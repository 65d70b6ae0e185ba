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
from clients.files import read_regular
from server.system import Devices, SystemModel
from simulator.config.yaml_input import show
from simulator.rundir.files import atomic_write_text

DEVICES_NAME = "devices.json"
DEVICES_FORMAT = "fedsim-devices-1"
MAX_DEVICES_BYTES = 64 << 20  # what a report reads: four numbers a client, over 500,000 clients
BYTES_PER_CLIENT = 128  # a resume reads what a run of its size wrote: four numbers of ~20 bytes


def write_devices(run_dir: Path, devices: Devices, system: SystemModel) -> None:
    """``run_dir``/devices.json for ``devices`` (the run's, every client's) under ``system``."""
    share = devices.online_share()
    if share is None:
        share = np.full(len(devices.speed), system.availability)
    devices_json = json.dumps(  # compact: a 100,000-client run's is about 8 MB
        {
            "format": DEVICES_FORMAT,
            "num_clients": len(devices.speed),
            "speed": devices.speed.tolist(),
            "compute_ms_per_sample": _listed(devices.compute_ms),
            "bandwidth_kbps": _listed(devices.bandwidth_kbps),
            "online_share": share.tolist(),
            "trace": _trace_files(devices),
        },
        separators=(",", ":"),
    )
    atomic_write_text(run_dir / DEVICES_NAME, devices_json + "\n")


def check_same_traces(run_dir: Path, devices: Devices) -> None:
    """A resume must read the traces the run started with: FedsimError when devices.json,
    which records their sha256, is missing, damaged or a link, does not record a configured
    trace, or records other contents than the file now holds."""
    if not devices.trace_files:
        return
    path = run_dir / DEVICES_NAME
    try:
        limit = max(MAX_DEVICES_BYTES, BYTES_PER_CLIENT * len(devices.speed))
        recorded = json.loads(read_regular(path, limit))["trace"]
    except FedsimError as exc:
        raise FedsimError(f"{exc}; {DEVICES_NAME} records the device traces this run started with") from None
    except (ValueError, TypeError, KeyError, RecursionError):
        raise FedsimError(f"{path}: damaged; it records the device traces this run started with") from None
    for kind, file, sha256 in devices.trace_files:
        was = recorded.get(kind) if isinstance(recorded, dict) else None
        started = was.get("sha256") if isinstance(was, dict) else None
        if started != sha256:
            raise FedsimError(
                f"client.system.trace.{kind}: {file} is not the trace this run started with (its sha256 "
                f"{sha256[:16]}... is not the {show(started)} in {path}); put the original file back to "
                "resume, or start a new run"
            )


def _listed(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else values.tolist()


def _trace_files(devices: Devices) -> dict[str, Any]:
    files: dict[str, Any] = {"capacity": None, "availability": None}
    for kind, file, sha256 in devices.trace_files:
        files[kind] = {"path": file, "sha256": sha256}
    return files
