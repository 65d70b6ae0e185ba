"""Opening files that must be plain files, for what fedsim reads from disk: no FIFO,
device or folder opened as if it were one (a FIFO would hang the read, ``/dev/zero``
never end), no symbolic link followed where a link could point out of a run directory,
and nothing read past a stated size. The checks are made on the open descriptor, so
nothing swapped in after them is read. Errors are ``error`` (FedsimError by default):
one line naming the path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from clients.errors import FedsimError


def open_regular(
    path: Path,
    flags: int = os.O_RDONLY,
    *,
    follow_links: bool = False,
    mode: int = 0o644,
    error: type[FedsimError] = FedsimError,
) -> int:
    """A blocking descriptor for ``path``, which must be a regular file (``follow_links``:
    a link to one is accepted too). O_NONBLOCK makes the open of a FIFO return at once,
    so it can be refused instead of waiting for a writer."""
    extra = os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as exc:
        raise error(open_error(path, exc)) from None
    kind = kind_of(os.fstat(fd).st_mode)
    if kind != "regular file":
        os.close(fd)
        raise error(f"{path}: is a {kind}, not a regular file; fedsim opens only regular files here")
    os.set_blocking(fd, True)
    return fd


def read_regular(
    path: Path, limit: int, *, follow_links: bool = False, error: type[FedsimError] = FedsimError
) -> bytes:
    """The bytes of the regular file ``path``, refused when it holds more than ``limit``."""
    fd = open_regular(path, follow_links=follow_links, error=error)
    with os.fdopen(fd, "rb") as f:
        if os.fstat(fd).st_size > limit:
            raise error(f"{path}: over {limit:,} bytes; at most that is read")
        data = f.read()
    if len(data) > limit:  # it grew since the stat
        raise error(f"{path}: over {limit:,} bytes; at most that is read")
    return data


def open_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:  # what O_NOFOLLOW answers for a link
        return f"{path}: is a symbolic link; fedsim follows no links inside a run directory"
    if exc.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
        return f"{path}: is a FIFO, not a regular file; fedsim opens only regular files here"
    return f"{path}: {exc.strerror or exc}"


def kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "regular file"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"),
        (stat.S_ISLNK, "symbolic link"),
    ):  # fmt: skip
        if test(mode):
            return name
    return "special file"
