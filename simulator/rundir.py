"""The run directory: config.yaml, metrics.jsonl, summary.json, model.safetensors, checkpoints/.

Metrics are appended one line per round and never rewritten; checkpoints and
the model are safetensors (no pickle on any load path); every file that is
replaced is written to a temporary name first and moved into place.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from clients.errors import FedsimError
from clients.models.layout import Layout
from simulator.yaml_input import one_line, show

log = logging.getLogger("fedsim")

CHECKPOINT_PATTERN = re.compile(r"^round_(\d{6})\.safetensors$")
KEEP_CHECKPOINTS = 3
LOCK_NAME = ".lock"
LOCK_ATTEMPTS = 5
CHECKPOINT_FORMAT = "fedsim-checkpoint-2"
OLD_CHECKPOINT_FORMAT = "fedsim-checkpoint-1"  # before the checksum and the recorded config


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_new_run_dir(path: Path) -> None:
    """Refuse, before anything starts, a run directory that holds files or could not be
    made (its nearest existing parent is not a folder we may write to)."""
    try:
        if path.exists() and not path.is_dir():
            raise FedsimError(f"run directory {path} is an existing file; pick another --out")
        if path.exists() and any(path.iterdir()):
            raise FedsimError(f"run directory {path} already exists and is not empty; pick another --out")
        parent = next(p for p in (path, *path.absolute().parents) if p.exists())
    except OSError as exc:
        raise FedsimError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    try:  # the only sure test of a folder we may write to (root, /proc, read-only mounts)
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".fedsim-probe-"))
    except OSError as exc:
        raise FedsimError(f"cannot create run directory {path}: {parent}: {exc.strerror or exc}") from None


def create_run_dir(path: Path) -> Path:
    """Make a fresh run directory; refuse one that already holds files or cannot be made."""
    check_new_run_dir(path)
    try:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedsimError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    return path


class RunLock:
    """An exclusive lock on a run directory (``RUN_DIR/.lock``, an flock the kernel drops
    when the process ends, however it ends) held while a run writes to it, so a second
    ``--resume`` of the same run cannot interleave rows with the first."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = _open_lock_file(self.path, os.O_RDWR | os.O_CREAT)
        for attempt in range(LOCK_ATTEMPTS):  # `fedsim report` probes the lock for a moment
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt == LOCK_ATTEMPTS - 1:
                    holder = _lock_holder(fd)
                    os.close(fd)
                    raise FedsimError(
                        f"run directory {self.path.parent} is in use by another fedsim run (pid {holder}); "
                        "wait for it to end or stop it first"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _open_lock_file(path: Path, flags: int) -> int:
    """The lock file's descriptor; a lock file that is not a regular file is refused
    (O_NONBLOCK: a FIFO put there must not block the open)."""
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise FedsimError(f"cannot lock run directory {path.parent}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FedsimError(f"cannot lock run directory {path.parent}: {path.name} is not a regular file")
    return fd


def running_pid(run_dir: Path) -> int | None:
    """The pid of the fedsim run that holds ``run_dir``'s lock now, else None."""
    if not (run_dir / LOCK_NAME).is_file():
        return None
    try:
        fd = _open_lock_file(run_dir / LOCK_NAME, os.O_RDONLY)
    except FedsimError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _lock_holder(fd) or -1
    finally:
        os.close(fd)
    return None


def _lock_holder(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class MetricsLog:
    """Append-only metrics.jsonl: one JSON object per round."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists():
            _drop_torn_tail(path)
        self.rows = read_metrics(path) if path.exists() else []
        if any(not isinstance(r, dict) or not isinstance(r.get("round"), int) for r in self.rows):
            raise FedsimError(f"{path}: every row must be a JSON object with an integer 'round'")

    def last_round(self) -> int:
        return self.rows[-1]["round"] if self.rows else 0

    def append(self, row: dict[str, Any]) -> None:
        _append_lines(self.path, [row])
        self.rows.append(row)


class ClientEvalLog:
    """Append-only clients.jsonl: one row per client evaluation, in round order.

    Opened for a run at checkpoint ``completed_round``, it keeps only the rows of
    rounds up to that one: later rounds are re-run on resume (with the same
    results), and a crash may have left one of them half-written. The file is
    scanned line by line and nothing is kept in memory, so the driver stays small
    however many clients report."""

    def __init__(self, path: Path, completed_round: int):
        self.path = path
        if path.exists():
            _truncate_after_round(path, completed_round)

    def append(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            _append_lines(self.path, rows)


def _truncate_after_round(path: Path, completed_round: int) -> None:
    """Cut a torn last line and every row of a round after ``completed_round``; a
    damaged complete line is an error, not something to cut away."""
    keep = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):  # not JSON, not UTF-8, nested absurdly deep
                raise FedsimError(f"{path}:{number}: not valid JSON") from None
            if not isinstance(row, dict) or not isinstance(row.get("round"), int):
                raise FedsimError(f"{path}:{number}: not a JSON object with an integer 'round'")
            if row["round"] > completed_round:
                break
            keep += len(line)
    if keep < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(keep)


def _append_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, allow_nan=True) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline: it is not a row, and
    appending after it would glue the next row onto it. Complete rows are never touched."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a truncated last line (a crash mid-write) is skipped."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise FedsimError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (ValueError, RecursionError):
            if number == len(lines):
                break
            raise FedsimError(f"{path}:{number}: not valid JSON") from None
    return rows


def save_model(path: Path, layout: Layout, params: np.ndarray, metadata: dict[str, str]) -> None:
    """Global parameters by layer name, as safetensors."""
    tensors = {name: np.ascontiguousarray(view) for name, view in layout.views(params).items()}
    _atomic_save(path, tensors, metadata)


def _atomic_save(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    # One metadata key: safetensors stores metadata in a hash map whose order varies
    # between writes, and identical runs must give identical files.
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"fedsim": json.dumps(metadata, sort_keys=True)})
    tmp.chmod(0o644)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: the global parameters and server state after ``round``, and the
    training config it was made with (None in checkpoints of fedsim before 0.2)."""

    round: int
    params: np.ndarray
    server_state: dict[str, np.ndarray]
    config: dict[str, Any] | None
    path: Path


def save_checkpoint(
    run_dir: Path,
    round_: int,
    params: np.ndarray,
    server_state: dict[str, np.ndarray],
    config: dict[str, Any],
) -> Path:
    """checkpoints/round_NNNNNN.safetensors: global params + server state, with a sha256 of
    every tensor and the training config in its metadata (checked when it is loaded)."""
    tensors = {"global_params": params, **{f"server.{k}": v for k, v in server_state.items()}}
    path = run_dir / "checkpoints" / f"round_{round_:06d}.safetensors"
    metadata = {"round": str(round_), "format": CHECKPOINT_FORMAT, "sha256": _tensors_sha256(tensors)}
    _atomic_save(path, tensors, {**metadata, "config": json.dumps(config, sort_keys=True)})
    for old in list_checkpoints(run_dir)[:-KEEP_CHECKPOINTS]:
        old.unlink()
    return path


def _tensors_sha256(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def load_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint, verified against its recorded sha256; FedsimError if it is unreadable,
    not fedsim's, or altered since it was written."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "numpy") as f:
            metadata = json.loads((f.metadata() or {}).get("fedsim", "{}"))
    except (SafetensorError, OSError, ValueError, RecursionError) as exc:
        raise FedsimError(f"{path}: unreadable checkpoint: {one_line(str(exc), 200)}") from None
    if "global_params" not in tensors or not isinstance(metadata, dict):
        raise FedsimError(f"{path}: not a fedsim checkpoint (no 'global_params' tensor)")
    fmt, checksum = metadata.get("format"), metadata.get("sha256")
    if fmt not in (CHECKPOINT_FORMAT, OLD_CHECKPOINT_FORMAT):
        raise FedsimError(f"{path}: corrupt checkpoint: unknown format {show(fmt)}")
    if (fmt == CHECKPOINT_FORMAT or checksum is not None) and checksum != _tensors_sha256(tensors):
        raise FedsimError(
            f"{path}: corrupt checkpoint: its tensors do not match the checksum written with them"
        )
    try:
        config = json.loads(metadata["config"]) if "config" in metadata else None
    except (TypeError, ValueError, RecursionError):
        raise FedsimError(f"{path}: corrupt checkpoint: its recorded config is not JSON") from None
    round_ = int(CHECKPOINT_PATTERN.match(path.name).group(1))
    state = {k.removeprefix("server."): v for k, v in tensors.items() if k.startswith("server.")}
    return Checkpoint(round_, tensors["global_params"], state, config, path)


def intact_checkpoints(run_dir: Path) -> Iterator[Checkpoint]:
    """The run's checkpoints that load and verify, newest first; each one that does not is
    logged and skipped. FedsimError when there is none at all."""
    paths = list_checkpoints(run_dir)
    if not paths:
        raise FedsimError(
            f"{run_dir}: no checkpoint to resume from (expected checkpoints/round_*.safetensors)"
        )
    for path in reversed(paths):
        try:
            yield load_checkpoint(path)
        except FedsimError as exc:
            log.warning("skipping a damaged checkpoint: %s", exc)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
