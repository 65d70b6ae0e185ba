"""A run's worker actors: started fresh, or handed on warm from an earlier run.

Starting a worker actor costs seconds (a process, Ray, torch, the model code);
a small run costs a fraction of that. Inside ``reuse_workers()`` a finished
run's workers stay up, idle, and the next run of the same shape (CPUs, GPUs,
device request) loads its own model, data and plan into them instead of
starting new ones. Loading sets every piece of per-run state afresh, so the
bits are those of new workers (tests/test_workers.py). Sweeps, the Python API
in a notebook and the test suite use it; ``fedsim run`` is one run per process
and does not.

Idle workers hold their CPUs: a run that has to start workers first stops the
idle ones of other shapes, and leaving the outermost block stops them all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from clients.worker import ClientWorker
from simulator.config.schema import Config

log = logging.getLogger("fedsim")

# One actor class for the process: Ray exports a class's code once per session, not per run.
WORKER_ACTOR = ray.remote(ClientWorker)
ANSWER_TIMEOUT_S = 30.0


def worker_threads(cpus_per_worker: float) -> int:
    """A worker's torch and BLAS threads: its whole CPUs, at least one."""
    return max(1, int(cpus_per_worker))


@dataclass(frozen=True)
class WorkerShape:
    """What a worker actor is started with and cannot change afterwards."""

    cpus: float  # runtime.cpus_per_worker: Ray's reservation and the torch/BLAS thread count
    gpus: float  # runtime.gpus_per_worker
    device: str  # model.device: auto, cpu or cuda

    @classmethod
    def of(cls, cfg: Config) -> WorkerShape:
        """The shape of ``cfg``'s workers."""
        return cls(cfg.runtime.cpus_per_worker, cfg.runtime.gpus_per_worker, cfg.model.device)

    @property
    def threads(self) -> int:
        return worker_threads(self.cpus)

    def start(self) -> Any:
        """A new worker actor of this shape (its constructor runs in the background)."""
        options = WORKER_ACTOR.options(num_cpus=self.cpus, num_gpus=self.gpus)
        return options.remote(self.threads, self.device, self.gpus)


class _IdleWorkers:
    """Idle actors by shape, valid for one Ray session."""

    def __init__(self) -> None:
        self.session: tuple[str, str] | None = None
        self.by_shape: dict[WorkerShape, list[Any]] = {}

    def for_this_session(self) -> None:
        """Forget actors of an earlier Ray session: they died with it (and their handles
        are not valid in this one). A new local Ray reuses job ids but not node ids."""
        context = ray.get_runtime_context()
        session = (context.get_job_id(), context.get_node_id())
        if session != self.session:
            self.session, self.by_shape = session, {}

    def take(self, shape: WorkerShape, count: int) -> list[Any]:
        pool = self.by_shape.get(shape, [])
        taken, pool[:] = pool[:count], pool[count:]
        return taken

    def others(self, shape: WorkerShape) -> list[Any]:
        """Remove and return every idle actor of another shape."""
        other = [a for s, actors in self.by_shape.items() if s != shape for a in actors]
        self.by_shape = {shape: self.by_shape.get(shape, [])}
        return other

    def everyone(self) -> list[Any]:
        """Remove and return every idle actor of this session."""
        if not ray.is_initialized():
            self.by_shape = {}  # gone with their Ray
        else:
            self.for_this_session()
        actors = [a for pool in self.by_shape.values() for a in pool]
        self.by_shape = {}
        return actors


_lock = threading.Lock()
_idle: _IdleWorkers | None = None  # None: reuse is off
_depth = 0


@contextmanager
def reuse_workers() -> Iterator[None]:
    """Within this block, runs in this process hand their workers on to the next run of
    the same shape. Blocks nest; leaving the outermost stops every idle worker."""
    global _idle, _depth
    with _lock:
        _depth += 1
        _idle = _idle or _IdleWorkers()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            leftover = _idle.everyone() if _depth == 0 and _idle else []
            if _depth == 0:
                _idle = None
        _kill(leftover)


def stop_idle_workers() -> None:
    """Stop every idle worker now (inside ``reuse_workers``), freeing their CPUs and GPUs."""
    with _lock:
        idle = _idle.everyone() if _idle is not None else []
    _kill(idle)


def acquire(shape: WorkerShape, count: int) -> list[Any]:
    """``count`` worker actors of ``shape``: idle ones that still answer first, then new ones."""
    taken: list[Any] = []
    with _lock:
        idle = _idle if ray.is_initialized() else None
        if idle is not None:
            idle.for_this_session()
            taken = idle.take(shape, count)
    if idle is not None:
        taken = _answering(taken, "ping")
        if len(taken) < count:
            with _lock:
                in_the_way = _idle.others(shape) if _idle is not None else []
            _kill(in_the_way)  # they hold CPUs the new workers need
    return taken + [shape.start() for _ in range(count - len(taken))]


def release(shape: WorkerShape, actors: list[Any], keep: bool) -> None:
    """A run is done with ``actors``: keep them idle for the next run (when reuse is on
    and ``keep``: the Ray session outlives the run), else stop them now, so their CPUs
    are free for whatever runs next."""
    with _lock:
        reusing = keep and _idle is not None
    if not reusing:
        _kill(actors)
        return
    alive = _answering(actors, "unload")  # and let go of the run's data
    with _lock:
        if _idle is None:  # the block ended meanwhile
            leftover = alive
        else:
            _idle.for_this_session()
            _idle.by_shape.setdefault(shape, []).extend(alive)
            leftover = []
    _kill(leftover)


def _answering(actors: list[Any], method: str) -> list[Any]:
    """The actors whose ``method()`` returns; the others are stopped (a worker may die idle)."""
    calls = []
    for actor in actors:
        try:
            calls.append((actor, getattr(actor, method).remote()))
        except Exception as exc:  # Ray refuses to submit to a handle it no longer knows
            _not_reused(actor, exc)
    alive = []
    for actor, ref in calls:
        try:
            ray.get(ref, timeout=ANSWER_TIMEOUT_S)
            alive.append(actor)
        except (RayActorError, GetTimeoutError) as exc:
            _not_reused(actor, exc)
    return alive


def _not_reused(actor: Any, exc: Exception) -> None:
    log.warning("a worker did not answer; it is not reused: %s", str(exc).splitlines()[0])
    _kill([actor])


def _kill(actors: list[Any]) -> None:
    if not ray.is_initialized():
        return  # they stopped with their Ray (and ray.kill would start a new one)
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception as exc:  # already gone, or from a Ray session that has ended
            log.debug("could not stop a worker: %s", exc)
