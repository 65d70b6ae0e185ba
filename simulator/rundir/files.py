"""Opening files that must be plain files: no symbolic link followed, no FIFO, device or
folder opened as if it were one, and nothing read past a stated size; writing a file
whole (to a temporary name first, then moved into place) and small JSON files.

A run directory is data a user may have copied, edited or been handed; a link in it
would make fedsim write to (or read) a file outside it, a FIFO would hang the read,
and ``/dev/zero`` would never end. Every file fedsim opens inside a run directory goes
through ``open_regular``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from clients.errors import FedsimError

MAX_SMALL_FILE_BYTES = 1 << 20  # run.json, summary.json


def open_regular(
    path: Path, flags: int = os.O_RDONLY, *, follow_links: bool = False, mode: int = 0o644
) -> int:
    """A blocking descriptor for ``path``, which must be a regular file (``follow_links``:
    a link to one is accepted too). O_NONBLOCK makes the open of a FIFO return at once,
    so it can be refused instead of waiting for a writer."""
    extra = os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as exc:
        raise FedsimError(_open_error(path, exc)) from None
    kind = _kind(os.fstat(fd).st_mode)
    if kind != "regular file":
        os.close(fd)
        raise FedsimError(f"{path}: is a {kind}, not a regular file; fedsim opens only regular files here")
    os.set_blocking(fd, True)
    return fd


def read_regular(path: Path, limit: int, *, follow_links: bool = False) -> bytes:
    """The bytes of the regular file ``path``, refused when it holds more than ``limit``."""
    fd = open_regular(path, follow_links=follow_links)
    with os.fdopen(fd, "rb") as f:
        if os.fstat(fd).st_size > limit:
            raise FedsimError(f"{path}: over {limit:,} bytes; at most that is read")
        data = f.read()
    if len(data) > limit:  # it grew since the stat
        raise FedsimError(f"{path}: over {limit:,} bytes; at most that is read")
    return data


def check_folder(path: Path) -> None:
    """``path`` exists and is a real folder, not a link to one (nor a file)."""
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise FedsimError(_open_error(path, exc)) from None
    if stat.S_ISLNK(info.st_mode):
        raise FedsimError(f"{path}: is a symbolic link; fedsim follows no links inside a run directory")
    if not stat.S_ISDIR(info.st_mode):
        raise FedsimError(f"{path}: is a {_kind(info.st_mode)}, not a folder")


def _open_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:  # what O_NOFOLLOW answers for a link
        return f"{path}: is a symbolic link; fedsim follows no links inside a run directory"
    if exc.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
        return f"{path}: is a FIFO, not a regular file; fedsim opens only regular files here"
    return f"{path}: {exc.strerror or exc}"


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symbolic link"),
    ):  # fmt: skip
        if test(mode):
            return name
    return "special file"


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
