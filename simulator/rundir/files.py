"""Opening files that must be plain files: no symbolic link followed, no FIFO, device or
folder opened as if it were one, and nothing read past a stated size; writing a file
whole (to a temporary name first, then moved into place) and small JSON files.

A run directory is data a user may have copied, edited or been handed; a link in it
would make fedsim write to (or read) a file outside it, a FIFO would hang the read,
and ``/dev/zero`` would never end. Every file fedsim opens inside a run directory goes
through ``clients.files.open_regular``.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from clients.errors import FedsimError
from clients.files import kind_of, open_error, read_regular

MAX_SMALL_FILE_BYTES = 1 << 20  # run.json, summary.json


def check_folder(path: Path) -> None:
    """``path`` exists and is a real folder, not a link to one (nor a file)."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise FedsimError(open_error(path, exc)) from None
    if stat.S_ISLNK(info.st_mode):
        raise FedsimError(f"{path}: is a symbolic link; fedsim follows no links inside a run directory")
    if not stat.S_ISDIR(info.st_mode):
        raise FedsimError(f"{path}: is a {kind_of(info.st_mode)}, not a folder")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a fresh temporary file beside ``path`` (written through its own
    descriptor: a link planted at a temporary name is never written through), then
    rename it into place; a folder in the way is one error."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are for sharing
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FedsimError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: Path, limit: int = MAX_SMALL_FILE_BYTES) -> Any:
    """A JSON file of the run directory (summary.json, prune.json); ValueError if it is not JSON."""
    return json.loads(read_regular(path, limit))


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
