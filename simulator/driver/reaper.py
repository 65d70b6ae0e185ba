"""Stops an embedded Ray's processes when the fedsim process that started it dies.

Run as a script (stdlib only, no fedsim import): ``python reaper.py DRIVER_PID FD``.
Ray starts its daemons as children of the driver, and they mostly exit when it
does, but after a ``kill -9`` of the driver Ray's DashboardAgent and
RuntimeEnvAgent live on, orphaned. This process, started before ``ray.init``,
notes every process under the driver whose command line names Ray (with its
start time, so a reused PID is never mistaken for it) once a second, and waits
on a pipe the driver holds open: a ``q`` then end-of-file means the session was
shut down normally; end-of-file alone means the driver died, and every noted
process still alive is killed.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys

POLL_SECONDS = 1.0


def _processes() -> dict[int, tuple[int, str, bytes]]:
    """{pid: (ppid, start time, command line)} of every process we can read."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), fields[19].decode(), cmdline)  # ppid, starttime
    return table


def _ray_descendants(root: int) -> dict[int, str]:
    """{pid: start time} of the Ray processes below ``root``."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _start, _cmd) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = {}, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        if b"ray" in table[pid][2].lower():
            found[pid] = table[pid][1]
    return found


def main(driver: int, fd: int) -> None:
    noted: dict[int, str] = {}
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_SECONDS)
        if ready:
            message = os.read(fd, 1)
            if message == b"q":
                return  # the session was shut down normally
            if message == b"":
                break  # the driver is gone
        noted.update(_ray_descendants(driver))
    alive = _processes()
    for pid, start in noted.items():
        if pid in alive and alive[pid][1] == start:
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
