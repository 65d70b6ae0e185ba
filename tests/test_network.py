"""Nothing reaches in: the Ray that `fedsim run` starts itself listens on loopback only,
and refuses callers without this run's token.

Measured from the processes' own sockets (/proc/PID/fd -> /proc/net/tcp{,6}), not from
what Ray reports. Every server of the embedded Ray 2.60 can be told to bind loopback
(its node address is then 127.0.0.1: GCS, both raylet ports, the driver's and every
worker's gRPC server, the runtime-env agent), so the test requires loopback of all of
them; no server needs the weaker "an unauthenticated caller is refused" instead. Token
authentication is checked as well, where it can be without a gRPC client (none is a
dependency): the runtime-env agent's HTTP server answers 401 to a request without the
token, and the token is this run's own (not Ray's lasting ~/.ray/auth_token) and is
written nowhere in the run directory.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, small_overrides

# The servers a run under way has; a name is the process's argv[0] (Ray retitles workers).
EXPECTED = {"gcs_server", "raylet", "ray::RuntimeEnvAgent", "ray::ClientWorker", "driver"}


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, i = [root], 0
    while i < len(found):
        found.extend(children.get(found[i], []))
        i += 1
    return found


def _listening() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket in this namespace."""
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A":  # TCP_LISTEN
                    continue
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # per-word host order
                found[int(fields[9])] = (socket.inet_ntop(family, raw), int(port, 16))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _name(pid: int, driver: int) -> str:
    if pid == driver:
        return "driver"
    with contextlib.suppress(OSError):
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        return argv0.split(".")[0] if argv0.startswith("ray::") else Path(argv0).name
    return "?"


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket bound to ::ffff:127.0.0.1
    return ip.is_loopback


def _environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


def _session_dir(gcs: int) -> Path:
    """The Ray session folder (/tmp/ray/session_*) the GCS was started with."""
    for arg in Path(f"/proc/{gcs}/cmdline").read_bytes().decode().split("\0"):
        _, _, value = arg.partition("=")
        parts = Path(value).parts
        for i, part in enumerate(parts):
            if part.startswith("session_") and part != "session_latest":
                return Path(*parts[: i + 1])
    raise AssertionError("no session folder on the GCS's command line")


def _agent_answer(pids: set[int], driver: int) -> int | str:
    """The HTTP status with which the runtime-env agent answers a request without the
    token, on a port it listens on now (under load, a port seen while Ray came up was
    sometimes closed again by the time of the request: connection refused)."""
    listening = _listening()
    ports = sorted(
        listening[inode][1]
        for pid in pids
        if _name(pid, driver) == "ray::RuntimeEnvAgent"
        for inode in _socket_inodes(pid) & listening.keys()
    )
    for port in ports:
        url = f"http://127.0.0.1:{port}/get_runtime_envs_info"  # loopback, as asserted
        request = urllib.request.Request(url, b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status
        except urllib.error.HTTPError as refused:
            return refused.code
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException):
            continue  # not an HTTP port, or gone: the next one
    return f"nothing (the agent's ports now: {ports})"


def test_an_embedded_run_listens_on_loopback_only_and_wants_its_token(tmp_path):
    overrides = small_overrides(rounds=100_000)  # stopped once seen: it must outlast the look
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    run_dir, log = tmp_path / "run", (tmp_path / "stderr").open("w")
    command = [sys.executable, "-m", "simulator", "run", str(ROOT / "configs" / "default.yaml"),
               "--out", str(run_dir), "--quiet", *sets]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=env)
    seen: dict[tuple[str, int], str] = {}  # (address, port) -> the process listening
    names: set[str] = set()  # every name seen listening (an idle worker is retitled ClientWorker)
    pids: set[int] = set()
    try:
        deadline, settled = time.monotonic() + 120, None
        while time.monotonic() < deadline and (settled is None or time.monotonic() < settled):
            assert driver.poll() is None, f"the run ended early: {(tmp_path / 'stderr').read_text()[-2000:]}"
            listening = _listening()
            for pid in _descendants(driver.pid):
                pids.add(pid)
                for inode in _socket_inodes(pid) & listening.keys():
                    seen[listening[inode]] = _name(pid, driver.pid)
                    names.add(seen[listening[inode]])
            if settled is None and names >= EXPECTED:
                settled = time.monotonic() + 1.0  # the run is training: look a little longer
            time.sleep(0.2)
        assert names >= EXPECTED, f"after 120 s only {sorted(seen.items())}"
        exposed = {f"{a}:{p}": who for (a, p), who in seen.items() if not _is_loopback(a)}
        assert not exposed, f"listening beyond loopback: {exposed}"

        status = _agent_answer(pids, driver.pid)
        assert status == 401, f"the runtime-env agent answered {status} without the token"

        gcs = next(pid for pid in pids if _name(pid, driver.pid) == "gcs_server")
        token = _environ(gcs).get("RAY_AUTH_TOKEN", "")
        assert _environ(gcs).get("RAY_AUTH_MODE") == "token" and len(token) >= 32
        lasting = Path.home() / ".ray" / "auth_token"
        assert not lasting.is_file() or lasting.read_text().strip() != token, "not a fresh token"
        for pid in pids:  # command lines are readable by every user
            with contextlib.suppress(OSError):
                assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes(), (
                    f"token in {pid}'s argv"
                )
        for folder in (run_dir, _session_dir(gcs)):
            for path in folder.rglob("*"):
                if path.is_file() and not path.is_symlink() and path.stat().st_size < 64 << 20:
                    assert token.encode() not in path.read_bytes(), f"token in {path}"
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGTERM)  # fedsim stops Ray on SIGTERM
            try:
                driver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                driver.kill()
                driver.wait(timeout=10)
        log.close()
        time.sleep(0.5)
        for pid in pids - {driver.pid}:  # whatever of its Ray outlived it (the reaper's job too)
            with contextlib.suppress(OSError):
                if _name(pid, driver.pid).startswith(("ray::", "gcs_server", "raylet")):
                    os.kill(pid, signal.SIGKILL)


def test_the_environment_is_put_back_after_the_embedded_ray(tmp_path):
    """The loopback node address and the run's token stay with the embedded Ray: a later
    connection from the same process (to a user's cluster) sees the environment it had."""
    script = (
        "import os\n"
        "from ray._private import ray_constants\n"
        "from simulator.driver.cluster import _PRIVATE_ENV, _private_to_this_machine\n"
        "before = {n: os.environ.get(n) for n in _PRIVATE_ENV}\n"
        "with _private_to_this_machine():\n"
        "    assert os.environ['RAY_AUTH_MODE'] == 'token' and len(os.environ['RAY_AUTH_TOKEN']) == 64\n"
        "    assert 'RAY_AUTH_TOKEN_PATH' not in os.environ and not ray_constants.ENABLE_RAY_CLUSTER\n"
        "assert {n: os.environ.get(n) for n in _PRIVATE_ENV} == before, before\n"
        "assert ray_constants.ENABLE_RAY_CLUSTER\n"
    )
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "theirs")}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
