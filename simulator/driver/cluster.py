"""Starting or joining Ray, and sizing the worker pool from its resources.

fedsim shuts Ray down only when it started it; a cluster it merely connected
to is left running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.job_config import JobConfig

from clients.errors import ClusterError, ConfigError
from clients.user_code import (
    installed,
    is_path_entry,
    module_locations,
    path_entry_location,
    put_on_driver_path,
)
from simulator.config.schema import Config, RuntimeConfig, user_code_targets
from simulator.config.yaml_input import one_line, show

log = logging.getLogger("fedsim")
WORKER_PRELOAD = "torch,clients.worker"
_outer: _RayOwner | None = None  # the outermost ray_starting block's Ray, while it is starting or up


@dataclass(frozen=True)
class Resources:
    """CPUs and GPUs: what a cluster has (in all, or free), or what a worker or a run takes."""

    cpus: float
    gpus: float = 0.0

    def fit_in(self, available: Resources) -> int:
        """How many of these ``available`` holds, GPUs counting only when these take some;
        a float's rounding (3 x 0.1 CPU) does not lose one."""
        fit = math.floor(available.cpus / self.cpus + 1e-9)
        if self.gpus > 0:
            fit = min(fit, math.floor(available.gpus / self.gpus + 1e-9))
        return fit


@dataclass(frozen=True)
class RaySession:
    started_here: bool
    cpus: float
    gpus: float = 0.0

    @property
    def resources(self) -> Resources:
        return Resources(self.cpus, self.gpus)


@contextmanager
def ray_session(address: str | None, debug: bool = False, py_modules: Sequence[str] = ()):
    """Yield a RaySession: reuse an initialised Ray, connect to ``address``, or start one."""
    with ray_starting(address, debug, py_modules) as wait_for_ray:
        yield wait_for_ray()


@contextmanager
def ray_starting(
    address: str | None, debug: bool = False, py_modules: Sequence[str] = ()
) -> Iterator[Callable[[], RaySession]]:
    """Start (or join) Ray in the background and yield a function that waits for it and
    returns the RaySession, so the caller can build its data and model meanwhile: Ray's
    start is seconds of waiting on its own processes. Blocks nest: an inner block (a run
    inside ``fedsim run``'s own block, which starts Ray before importing torch) shares the
    outer block's Ray. ``py_modules`` (folders and .py files of user code, from
    ``user_py_modules``) travel to every worker with the job, as fedsim's own packages do;
    a Ray this process initialised itself (``ray.init`` in a notebook) keeps the job's
    runtime_env its caller gave it."""
    global _outer
    if _outer is not None:
        outer = _outer

        def joined() -> RaySession:  # the outer block stops this Ray, not the caller
            return dataclasses.replace(outer.session(), started_here=False)

        yield joined
        return
    if ray.is_initialized():
        if py_modules:  # a notebook's ray.init: its runtime_env is the caller's to give
            log.warning(
                "Ray was started before this run, so fedsim cannot ship your code to its workers; "
                "if they cannot import it, pass ray.init(runtime_env={'py_modules': %s})",
                py_modules,
            )
        session = RaySession(False, *_cluster_cpus_gpus())
        yield lambda: session
        return
    started = address is None
    _quiet_ray_environment(debug)
    if address is not None:
        _check_reachable(_resolve_auto(address))
    else:
        _warm_worker_environment()
    with (
        _reaper() if started else contextlib.nullcontext(),
        _exit_on_sigterm(),
        _private_to_this_machine() if started else contextlib.nullcontext(),
    ):
        owner = _outer = _RayOwner(address, debug, list(py_modules))
        try:
            yield owner.session
        finally:
            _outer = None
            owner.close()


class _RayOwner:
    """A thread that starts or joins Ray, then holds it until ``close``.

    The thread must outlive the session: the embedded Ray's processes are started with
    Linux's parent-death signal, which fires when the *thread* that started them ends.
    """

    def __init__(self, address: str | None, debug: bool, py_modules: list[str]):
        self.started_here = address is None
        self.ready, self.release = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        args = (address, debug, py_modules)
        self.thread = threading.Thread(target=self._own, args=args, name="fedsim-ray")
        self.thread.daemon = True
        self.thread.start()

    def _own(self, address: str | None, debug: bool, py_modules: list[str]) -> None:
        try:
            _init_ray(address, debug, py_modules)
        except BaseException as exc:  # handed to the thread that waits for Ray
            self.error = exc
            return
        finally:
            self.ready.set()
        self.release.wait()
        if self.started_here:
            ray.shutdown()

    def session(self) -> RaySession:
        self.ready.wait()
        if self.error is not None:
            raise self.error
        return RaySession(self.started_here, *_cluster_cpus_gpus())

    def close(self) -> None:
        """Stop the Ray fedsim started (after its start finishes), or leave the cluster."""
        self.release.set()
        self.thread.join()


@contextmanager
def _exit_on_sigterm():
    """What ray.init does in the main thread (it starts Ray from another thread here): a
    SIGTERM becomes SystemExit, so the run stops through its cleanup and Ray shuts down."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _init_ray(address: str | None, debug: bool, py_modules: list[str]) -> None:
    """ray.init: a fresh embedded Ray for ``None``, else the cluster at ``address``. On a
    cluster, fedsim's own packages and the user's ``py_modules`` travel with the job
    (nodes need only the dependencies). An embedded Ray's workers share this machine's
    files: the folders holding ``py_modules`` go on their Python path instead, which
    makes the same code importable there without a runtime environment, whose workers
    Ray would start afresh (seconds each) rather than take from its warm pool."""
    shipped = [] if address is None else _package_dirs() + py_modules
    on_path = [str(Path(location).parent) for location in py_modules] if address is None else []
    try:
        ray.init(
            # "local" always starts a fresh embedded Ray, even when a cluster started
            # with `ray start` is running on this machine (plain None would join it).
            address="local" if address is None else address,
            include_dashboard=False,
            log_to_driver=debug,
            logging_level=logging.INFO if debug else logging.ERROR,
            configure_logging=True,
            runtime_env={"py_modules": shipped} if shipped else None,
            # Ray's own way to give workers the driver's folders (it adds the working directory so).
            job_config=JobConfig(_py_driver_sys_path=list(dict.fromkeys(on_path))),
        )
    except Exception as exc:  # Ray raises many types for an unreachable cluster
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise ClusterError(f"could not start or reach {where}: {exc}") from exc


# What the embedded Ray is started under, and restored once it has stopped.
_PRIVATE_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


@contextmanager
def _private_to_this_machine():
    """The embedded Ray accepts nothing from beyond this machine. Its node address is
    loopback (Ray's single-machine mode, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: the GCS,
    raylet, workers, driver and runtime-env agent then listen on 127.0.0.1 only, not on
    every interface), and Ray's token authentication is on with a fresh random token for
    this run, held only in the environment its processes inherit (readable by this user
    alone), never in a file (Ray's default is a lasting ~/.ray/auth_token). Everything is
    put back once Ray has stopped, so a later connection to a user's cluster from this
    process sees the environment it had."""
    from ray._private import ray_constants

    saved = {name: os.environ.get(name) for name in _PRIVATE_ENV}
    saved_cluster = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    os.environ.update(
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"
    )
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import; Ray then takes 127.0.0.1 as the node IP
    _reload_ray_auth()
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_ray_auth()


def _reload_ray_auth() -> None:
    """Have this process's Ray read the auth mode and token from the environment again
    (both are cached once read), as Ray's own tests do: config first, then token."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]
    except ImportError:  # a Ray without token authentication
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextmanager
def _reaper():
    """A watcher process (simulator/driver/reaper.py) that kills the embedded Ray's processes if
    this process dies without shutting Ray down (kill -9): Ray leaves two agents behind
    then. A normal end tells it to stand down. Linux only (it reads /proc)."""
    if not os.path.isdir("/proc"):
        yield
        return
    read_end, write_end = os.pipe()  # not inherited by Ray's processes: only the reaper holds it
    try:
        watcher = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("reaper.py")), str(os.getpid()), str(read_end)],
            pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,  # Ctrl-C in the terminal must not stop it
        )  # fmt: skip
    except OSError as exc:
        log.debug("no reaper for the embedded Ray: %s", exc)
        os.close(write_end)
        watcher = None
    finally:
        os.close(read_end)
    try:
        yield
    finally:
        if watcher is not None:
            with contextlib.suppress(OSError):
                os.write(write_end, b"q")
                os.close(write_end)
            with contextlib.suppress(subprocess.TimeoutExpired):
                watcher.wait(timeout=5)


def user_py_modules(cfg: Config) -> list[str]:
    """The folders and .py files of user code a run of ``cfg`` ships to its workers:
    ``runtime.py_modules``'s entries, or by default the top-level packages of the code the
    config names (USER_CODE_KEYS) that are neither installed nor fedsim's own. Found
    without importing anything; an entry that is not there is one ConfigError. A path
    entry's folder also goes on this process's Python path, so the driver imports what the
    workers do."""
    entries = cfg.runtime.py_modules
    found: list[str] = []
    if entries is None:
        for target in user_code_targets(cfg).values():
            name = target.partition(":")[0]
            locations = None if name.split(".")[0] in FEDSIM_PACKAGES else module_locations(name)
            if locations and not installed(locations):  # a missing one fails at its import, named
                found += locations
    for entry in entries or []:
        if is_path_entry(entry):
            found.append(path_entry_location(entry))
            put_on_driver_path(str(Path(found[-1]).parent))
            continue
        locations = module_locations(entry)
        if not locations:
            raise ConfigError(
                f"runtime.py_modules: {entry!r} is no module on this Python path or in the folder "
                "fedsim runs in (a folder or .py file is written with a '/': ./mypkg)"
            )
        found += locations
    return list(dict.fromkeys(found))


FEDSIM_PACKAGES = ("simulator", "server", "clients")


def _package_dirs() -> list[str]:
    import clients
    import server
    import simulator

    return [str(Path(str(m.__file__)).parent) for m in (simulator, server, clients)]


def _resolve_auto(address: str) -> str:
    """``auto`` means RAY_ADDRESS or the cluster `ray start` recorded on this machine."""
    if address != "auto":
        return address
    recorded = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    found = os.environ.get("RAY_ADDRESS") or (recorded.read_text().strip() if recorded.is_file() else "")
    if not found:
        raise ClusterError(
            "--address auto: no running Ray cluster found on this machine (start one with `ray start --head`)"
        )
    return found


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on HOST:PORT addresses nobody answers (Ray itself retries for minutes)."""
    host_port = address.removeprefix("ray://")
    host, sep, port = host_port.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: Ray resolves and reports them itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, UnicodeError, ValueError, OverflowError) as exc:  # also a host name idna refuses
        reason = getattr(exc, "strerror", None) or one_line(str(exc), 100)
        raise ClusterError(
            f"no Ray cluster answers at {show(address)} ({reason}); start one with "
            "`ray start --head` or check --address / runtime.address"
        ) from None


def _warm_worker_environment() -> None:
    """The embedded Ray starts one idle worker process per CPU as it comes up; have them
    import torch and the worker code then, so the run's workers are warm when asked for.
    (Best effort in Ray; a cluster started with `ray start` takes the same variable.)"""
    os.environ.setdefault("RAY_preload_python_modules", WORKER_PRELOAD)


def _quiet_ray_environment(debug: bool) -> None:
    if not debug:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def _cluster_cpus_gpus() -> tuple[float, float]:
    resources = ray.cluster_resources()
    return float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))


def free_resources() -> Resources:
    """What the cluster has free now."""
    free = ray.available_resources()
    return Resources(free.get("CPU", 0.0), free.get("GPU", 0.0))


def worker_resources(runtime: RuntimeConfig) -> Resources:
    """What one worker reserves (runtime.cpus_per_worker, runtime.gpus_per_worker)."""
    return Resources(runtime.cpus_per_worker, runtime.gpus_per_worker)


def pool_size(runtime: RuntimeConfig, session: RaySession) -> int:
    """Workers to start: runtime.workers, or what the CPUs (and GPUs, when workers take
    them) allow, never more than runtime.reduction_groups (more would idle)."""
    each = worker_resources(runtime)
    fit = each.fit_in(session.resources)
    need = f"{each.cpus:g} CPU"
    have = f"{session.cpus:g} CPUs"
    if each.gpus > 0:
        need += f" + {each.gpus:g} GPU"
        have += f" and {session.gpus:g} GPUs"
    requested = runtime.workers
    if requested is not None:
        if requested > fit:
            raise ClusterError(
                f"runtime.workers={requested} needs {requested} x ({need}) "
                f"(runtime.cpus_per_worker / gpus_per_worker) but the cluster has {have}"
            )
        return requested
    if fit < 1:
        raise ClusterError(f"the cluster has {have}, fewer than one worker needs ({need})")
    return max(1, min(fit, runtime.reduction_groups))
