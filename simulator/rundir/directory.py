"""A run directory as a whole: making a fresh one with its identity (run.json), reading
that identity back, and the lock a run holds while it writes there."""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path

from clients.errors import FedsimError
from clients.files import open_regular, read_regular
from simulator.rundir.files import MAX_SMALL_FILE_BYTES, write_json

LOCK_NAME = ".lock"
LOCK_ATTEMPTS = 5
RUN_FILE = "run.json"
RUN_FORMAT = "fedsim-run-1"


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


def create_run_dir(path: Path) -> str:
    """Make a fresh run directory with its identity (run.json), and return that id;
    refuse one that already holds files or cannot be made."""
    check_new_run_dir(path)
    try:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedsimError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    run_id = uuid.uuid4().hex
    write_json(path / RUN_FILE, {"format": RUN_FORMAT, "run_id": run_id})
    return run_id


def read_run_id(run_dir: Path) -> str | None:
    """The run's identity from run.json; None for a run directory made before fedsim kept
    one (its checkpoints carry none either)."""
    path = run_dir / RUN_FILE
    if not os.path.lexists(path):
        return None
    try:
        record = json.loads(read_regular(path, MAX_SMALL_FILE_BYTES))
    except (ValueError, RecursionError):
        record = None
    run_id = record.get("run_id") if isinstance(record, dict) else None
    if not isinstance(run_id, str) or not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise FedsimError(f"{path}: damaged (expected a JSON object with a 32-hex-digit 'run_id')")
    return run_id


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
    """The lock file's descriptor; a link, FIFO or anything but a regular file is refused."""
    try:
        return open_regular(path, flags)
    except FedsimError as exc:
        raise FedsimError(f"cannot lock run directory {path.parent}: {exc}") from None


def running_pid(run_dir: Path) -> int | None:
    """The pid of the fedsim run that holds ``run_dir``'s lock now, else None."""
    try:
        fd = _open_lock_file(run_dir / LOCK_NAME, os.O_RDONLY)
    except FedsimError:
        return None  # no lock file (or not one fedsim made): nobody holds it
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
