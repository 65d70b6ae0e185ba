"""`fedsim sweep`: one config, a grid of overrides, one run per (grid point, seed).

The grid is the Cartesian product of ``--grid KEY=V1,V2,...`` axes; values are
YAML scalars parsed as ``--set`` parses them, so a value cannot contain a comma.
Every point's config is validated before anything runs. Runs share one Ray
session; as many run at once as the cluster's CPUs (and GPUs) hold all of
their workers, in threads. Each run is deterministic from its own config, so
running them together changes no bit of any run.

The sweep directory holds one run directory per (point, seed), ``sweep.json``
(rewritten whenever a run finishes, so Ctrl-C leaves it current) and a
comparison: ``comparison.png`` and a self-contained ``comparison.html``.

Public API: :func:`run_sweep` of a :class:`SweepRequest`,
:func:`parse_grid`, :class:`GridAxis`, :class:`SweepRun`, :class:`SweepResult`
(``GridAxis`` and ``SweepRun``, what sweep.json holds, live in
:mod:`simulator.rundir.sweep_index`).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from clients.errors import ConfigError, FedsimError, RunDiverged
from simulator.config.loading import Overrides, apply_overrides, from_dict, parse_override, read_yaml
from simulator.config.schema import Config
from simulator.config.yaml_input import flow_text, show
from simulator.driver.cluster import (
    RaySession,
    Resources,
    pool_size,
    ray_session,
    user_py_modules,
    worker_resources,
)
from simulator.driver.workers import WorkerShape, reuse_workers
from simulator.report.progress import StepProgress
from simulator.report.sweep_page import text_table, write_comparison
from simulator.rundir.files import atomic_write_text
from simulator.rundir.summary import read_summary
from simulator.rundir.sweep_index import (
    COMPLETED,
    DIVERGED,
    FAILED,
    INDEX_FORMAT,
    INDEX_NAME,
    INTERRUPTED,
    GridAxis,
    SweepRun,
)

# Most filesystems allow 255 bytes per name; leave room for a uniqueness suffix.
MAX_RUN_NAME = 200
# Grid points x seeds: a few thousand runs is a big but real study; more is a typo
# (a run takes seconds at the very least, and sweep.json lists every run).
MAX_SWEEP_RUNS = 10_000
PLAN_PROGRESS_FROM = 200  # runs: validating fewer takes well under a second

RunCallback = Callable[["SweepRun"], None]


@dataclass
class SweepResult:
    """What ``run_sweep`` returns: the sweep directory and every run's record."""

    sweep_dir: Path
    runs: list[SweepRun]
    grid: list[GridAxis]

    @property
    def failed(self) -> list[SweepRun]:
        return [r for r in self.runs if r.status == FAILED]

    def table(self) -> str:
        """The comparison as a fixed-width text table, one line per grid point."""
        return text_table(self.grid, self.runs)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep; sweep.json in ``sweep_dir`` lists what finished."""

    def __init__(self, sweep_dir: Path):
        super().__init__(str(sweep_dir))
        self.sweep_dir = sweep_dir


# --- the grid --------------------------------------------------------------


def parse_grid(specs: Sequence[str]) -> list[GridAxis]:
    """``["client.lr=0.01,0.1", ...]`` -> axes; each value is parsed like a ``--set`` value."""
    axes = [_parse_axis(spec) for spec in specs]
    keys = [a.key for a in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise ConfigError(f"--grid {key}: given more than once; list all its values in one --grid")
    return axes


def _parse_axis(spec: str) -> GridAxis:
    key, sep, raw = spec.partition("=")
    pieces = [p.strip() for p in raw.split(",")]
    if len(pieces) > MAX_SWEEP_RUNS:  # refused before parsing each value
        raise ConfigError(
            f"--grid {show(key.strip())}: {len(pieces):,} values; a sweep runs at most "
            f"{MAX_SWEEP_RUNS:,} runs (split it into several sweeps)"
        )
    if not sep or not key.strip() or not all(pieces):
        raise ConfigError(
            f"--grid {spec!r}: expected KEY=V1,V2,... with non-empty values, e.g. client.lr=0.01,0.1"
        )
    try:
        values = tuple(parse_override(f"{key}={p}")[1] for p in pieces)
    except ConfigError as exc:
        raise ConfigError(f"--grid {spec!r}: {exc}") from None
    if len(set(map(flow_text, values))) < len(values):
        raise ConfigError(f"--grid {spec!r}: a value is listed twice")
    return GridAxis(key.strip(), values)


def _axes_of(grid: Sequence[GridAxis] | Sequence[str] | dict[str, Sequence[Any]]) -> list[GridAxis]:
    if isinstance(grid, dict):
        return [GridAxis(k, tuple(v)) for k, v in grid.items()]
    if all(isinstance(a, str) for a in grid):
        return parse_grid(cast(Sequence[str], grid))
    return list(cast(Sequence[GridAxis], grid))


# --- planning: every run's config, validated before anything runs ----------


@dataclass(frozen=True)
class _Planned:
    run: SweepRun
    config: Config


def _plan(
    base_raw: dict[str, Any], axes: list[GridAxis], repeat_seeds: int, quiet: bool = True
) -> list[_Planned]:
    """One validated config per (point, seed), in grid order then seed order; a sweep of
    more than MAX_SWEEP_RUNS is refused before any is built. ``quiet=False`` shows the
    validation's progress for a large sweep."""
    if not axes or any(not a.values for a in axes):
        raise ConfigError("sweep: give at least one --grid KEY=V1,V2,... with at least one value")
    if repeat_seeds < 1:
        raise ConfigError(f"--repeat-seeds: {repeat_seeds} is not allowed; must be >= 1")
    if repeat_seeds > 1 and any(a.key == "seed" for a in axes):
        raise ConfigError("--grid seed=... and --repeat-seeds > 1 both set seeds; use one of them")
    points = math.prod(len(a.values) for a in axes)
    total = points * repeat_seeds
    if total > MAX_SWEEP_RUNS:
        raise ConfigError(
            f"sweep: {points:,} grid points x {repeat_seeds:,} seeds = {total:,} runs; "
            f"at most {MAX_SWEEP_RUNS:,} runs per sweep (split it into several sweeps)"
        )
    progress = StepProgress(total, "validating runs", quiet=quiet or total < PLAN_PROGRESS_FROM)
    planned = []
    try:
        for index, values in enumerate(itertools.product(*(a.values for a in axes))):
            point = dict(zip((a.key for a in axes), values, strict=True))
            first_seed = _validated(base_raw, point).seed
            for seed in range(first_seed, first_seed + repeat_seeds):
                overrides = {**point, "seed": seed}
                planned.append(
                    _Planned(SweepRun("", index, overrides, seed), _validated(base_raw, overrides))
                )
                progress.advance()
    finally:
        progress.close()
    _name_runs([p.run for p in planned])
    return planned


def _validated(base_raw: dict[str, Any], point: dict[str, Any]) -> Config:
    """The point's Config; a bad value is blamed on the grid key that alone makes it bad."""
    try:
        return from_dict(apply_overrides(base_raw, point))
    except ConfigError as exc:
        for key, value in point.items():
            try:
                from_dict(apply_overrides(base_raw, {key: value}))
            except ConfigError as alone:
                raise ConfigError(f"--grid {key}={flow_text(value)}: {alone}") from None
        raise ConfigError(f"--grid point {_point_text(point)}: {exc}") from None


def _point_text(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={flow_text(v)}" for k, v in point.items())


def _name_runs(runs: list[SweepRun]) -> None:
    """Readable, filesystem-safe, unique directory names: key=value__...__seed=S."""
    used: set[str] = set()
    for run in runs:
        name = "__".join(f"{k}={_safe(flow_text(v))}" for k, v in run.overrides.items())
        if len(name) > MAX_RUN_NAME:
            digest = hashlib.sha256(name.encode()).hexdigest()[:10]
            name = f"{name[: MAX_RUN_NAME - 11]}-{digest}"
        unique, n = name, 2
        while unique in used:  # two values that sanitise alike, e.g. "a/b" and "a_b"
            unique, n = f"{name}-{n}", n + 1
        used.add(unique)
        run.directory = unique


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


# --- the sweep directory and its index -------------------------------------


def _sweep_dir(out: Path | None, base: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(out) if out is not None else Path(base.runtime.out_dir) / f"{base.name}-sweep-{stamp}"
    if path.exists() and not path.is_dir():
        raise FedsimError(f"sweep directory {path} is an existing file; pick another --out")
    if path.exists() and any(path.iterdir()):
        raise FedsimError(f"sweep directory {path} already exists and is not empty; pick another --out")
    return path


class _Index:
    """sweep.json, rewritten atomically whenever a run finishes. Runs finish on
    several threads; the lock keeps each write a consistent snapshot."""

    def __init__(self, path: Path, header: dict[str, Any], runs: list[SweepRun], on_run_end: RunCallback):
        self.path, self.header, self.runs = path, header, runs
        self.on_run_end = on_run_end
        self._lock = threading.Lock()

    def record(self, run: SweepRun, **outcome: Any) -> None:
        with self._lock:
            for key, value in outcome.items():
                setattr(run, key, value)
            self._write()
            self.on_run_end(run)

    def write(self) -> None:
        with self._lock:
            self._write()

    def close(self, status: str) -> None:
        with self._lock:
            self.header["status"] = status
            self._write()

    def _write(self) -> None:
        index = {**self.header, "runs": [asdict(r) for r in self.runs]}
        atomic_write_text(self.path, json.dumps(index, indent=2, default=str) + "\n")


def _index_header(config_path: Path, overrides: Any, axes: list[GridAxis], planned, at_once: int) -> dict:
    return {
        "format": INDEX_FORMAT,
        "status": "running",
        "config": str(Path(config_path).resolve()),
        "overrides": overrides,
        "grid": {a.key: list(a.values) for a in axes},
        "seeds": sorted({p.run.seed for p in planned}),
        "runs_at_once": at_once,
    }


# --- running ---------------------------------------------------------------


def runs_at_once(configs: list[Config], session: RaySession, limit: int | None = None) -> int:
    """How many runs fit on the cluster together: each takes the workers fedsim would
    give it alone (``pool_size``: runtime.workers, or what the cluster allows when
    null, which is usually all of it) times its CPUs/GPUs per worker."""
    runs = [(pool_size(c.runtime, session), worker_resources(c.runtime)) for c in configs]
    largest = Resources(max(n * each.cpus for n, each in runs), max(n * each.gpus for n, each in runs))
    fit = largest.fit_in(session.resources)
    if len({_driver_threads(c) for c in configs}) > 1:
        fit = 1  # the driver's thread count is process-wide: runs together must agree on it
    return max(1, min(fit, len(configs), limit or len(configs)))


def _driver_threads(cfg: Config) -> int:
    return WorkerShape.of(cfg).threads


def _run_one(job: _Planned, run_dir: Path, index: _Index, stop: threading.Event, progress: bool, debug: bool):
    """Run one point; record its outcome. A FedsimError fails this run, not the sweep."""
    from simulator.driver.simulation import Simulation

    def stop_between_rounds(_row: dict[str, Any]) -> None:
        if stop.is_set():
            # Simulation treats this like Ctrl-C: marks the run interrupted, stops its workers.
            raise KeyboardInterrupt

    if stop.is_set():
        return  # Ctrl-C came while this run waited for a thread: it stays "not run"
    sim = Simulation(job.config, run_dir, quiet=not progress, debug=debug, on_round_end=stop_between_rounds)
    try:
        summary = sim.run().summary
    except RunDiverged as exc:  # a result of the grid point (say, too large an lr), not a failure
        index.record(job.run, status=DIVERGED, error=str(exc), **_scores(run_dir))
        return
    except FedsimError as exc:
        index.record(job.run, status=FAILED, error=str(exc))
        return
    except KeyboardInterrupt:
        index.record(job.run, status=INTERRUPTED)
        raise
    except Exception as exc:  # not the run's own error: record it, then stop the sweep
        index.record(job.run, status=FAILED, error=f"{type(exc).__name__}: {exc}")
        raise
    index.record(
        job.run,
        status=summary["status"],
        final_test_accuracy=summary.get("final_test_accuracy"),  # a regression run has none
        best_test_accuracy=summary.get("best_test_accuracy"),
        final_test_loss=summary.get("final_test_loss"),
    )


def _scores(run_dir: Path) -> dict[str, Any]:
    """The final and best test accuracy and the final loss a stopped run's summary.json recorded."""
    try:
        summary = read_summary(run_dir)
    except FedsimError:
        return {}
    return {k: summary.get(k) for k in ("final_test_accuracy", "best_test_accuracy", "final_test_loss")}


def _execute(jobs: list[Callable[[], None]], at_once: int, stop: threading.Event) -> None:
    """Run the jobs, ``at_once`` at a time; on Ctrl-C (or any error) let the running
    ones stop at their next round end and start no more."""
    if at_once == 1:
        for job in jobs:
            job()  # in this thread, so Ctrl-C reaches the run at once
        return
    pool = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="fedsim-sweep")
    try:  # Ctrl-C may land anywhere here, submitting included
        for future in as_completed([pool.submit(job) for job in jobs]):
            future.result()  # re-raises what is not a run's own FedsimError
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, kw_only=True)
class SweepRequest:
    """A sweep to run: every (grid point, seed) of ``config`` + ``overrides``."""

    config: str | Path
    grid: Sequence[GridAxis] | Sequence[str] | dict[str, Sequence[Any]]
    repeat_seeds: int = 1
    overrides: Overrides | None = None
    out: str | Path | None = None  # the sweep directory (default: a new one in runtime.out_dir)
    quiet: bool = True
    debug: bool = False
    max_concurrent: int | None = None  # at most this many runs at once
    on_run_end: RunCallback | None = None  # hears each run's record as it finishes


def run_sweep(request: SweepRequest) -> SweepResult:
    """Run every (grid point, seed) of ``request.config`` + ``overrides`` and compare them.

    grid: ``{"client.lr": [0.01, 0.1]}``, ``["client.lr=0.01,0.1"]`` or GridAxis list.
    Raises FedsimError before running anything for a bad key or value, more than
    MAX_SWEEP_RUNS runs, an existing non-empty ``out`` or a run the cluster cannot hold;
    a run that fails later is recorded as failed and the sweep goes on. Ctrl-C raises
    SweepInterrupted after sweep.json is written. ``quiet=False`` shows the validation's
    progress for a large sweep, and each run's progress when runs go one at a time.
    """
    config, overrides, quiet = request.config, request.overrides, request.quiet
    axes = _axes_of(request.grid)
    base_raw = apply_overrides(read_yaml(Path(config)), overrides or [])
    base = from_dict(base_raw)
    planned = _plan(base_raw, axes, request.repeat_seeds, quiet)
    sweep_dir = _sweep_dir(Path(request.out) if request.out is not None else None, base)
    # One job for every point: it ships the code any grid point names (a grid over model.factory too).
    shipped = list(dict.fromkeys(m for p in planned for m in user_py_modules(p.config)))
    with ray_session(base.runtime.address, request.debug, shipped) as session:
        at_once = runs_at_once([p.config for p in planned], session, request.max_concurrent)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        header = _index_header(Path(config), overrides or [], axes, planned, at_once)
        index = _Index(
            sweep_dir / INDEX_NAME, header, [p.run for p in planned], request.on_run_end or _ignore
        )
        with reuse_workers():  # a run hands its workers to the next: no actor start-up per point
            _run_all(
                planned, sweep_dir, index, at_once, progress=not quiet and at_once == 1, debug=request.debug
            )
    return SweepResult(sweep_dir, [p.run for p in planned], axes)


def _run_all(
    planned: list[_Planned], sweep_dir: Path, index: _Index, at_once: int, progress: bool, debug: bool
) -> None:
    from simulator.driver.simulation import compute_threads

    stop = threading.Event()
    jobs: list[Callable[[], None]] = [
        functools.partial(_run_one, p, sweep_dir / p.run.directory, index, stop, progress, debug)
        for p in planned
    ]
    index.write()
    try:
        # Each run sets the driver's (process-wide) torch/BLAS threads for evaluation and
        # restores what it found; pinned to the same count here, interleaved runs cannot
        # leave one another a different count.
        with compute_threads(_driver_threads(planned[0].config)):
            _execute(jobs, at_once, stop)
    except KeyboardInterrupt:
        _finish(index, sweep_dir, INTERRUPTED)
        raise SweepInterrupted(sweep_dir) from None
    except BaseException:
        _finish(index, sweep_dir, FAILED)  # what did finish is still compared
        raise
    _finish(index, sweep_dir, COMPLETED)


def _finish(index: _Index, sweep_dir: Path, status: str) -> None:
    index.close(status)
    write_comparison(sweep_dir, _axes_from_header(index.header), index.runs, len(index.header["seeds"]))


def _axes_from_header(header: dict[str, Any]) -> list[GridAxis]:
    return [GridAxis(k, tuple(v)) for k, v in header["grid"].items()]


def _ignore(_run: SweepRun) -> None:
    pass
