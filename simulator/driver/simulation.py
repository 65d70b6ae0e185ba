"""The round loop, written once: sample, broadcast, train, aggregate, step,
evaluate, log, checkpoint.

Determinism: every random draw derives from (seed, round, client, purpose);
the sampled clients are cut into a fixed number of reduction groups; a worker
sums its group in client-id order and the server adds group sums in group
order. Worker count, scheduling and resumption cannot change a bit.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError, RayTaskError
from threadpoolctl import threadpool_limits

from clients.errors import ClusterError, FedsimError, RunDiverged
from clients.models.engines import initial_state
from clients.protocol import RoundInput, WorkerRun
from clients.streams import Stream
from server.async_buffer import AsyncRounds
from server.evaluation import EvalResult, evaluate
from server.pruning import magnitude_scores, random_scores
from server.sampling import reduction_groups
from server.system import RoundContext, RoundPlan
from simulator.config.loading import (
    Overrides,
    apply_overrides,
    from_dict,
    load_config,
    load_run_config,
)
from simulator.config.schema import Config, user_code_targets
from simulator.driver import workers
from simulator.driver.cluster import (
    RaySession,
    free_resources,
    pool_size,
    ray_session,
    ray_starting,
    user_py_modules,
    worker_resources,
)
from simulator.driver.divergence import DivergenceWatch
from simulator.driver.federated_eval import EvaluatedModel, client_rows, round_metrics
from simulator.driver.pool import GroupCall, WorkerPool, map_groups
from simulator.driver.run_state import RunState, check_resume_compatible
from simulator.report.progress import RoundProgress
from simulator.report.tracking import Trackers
from simulator.rundir.directory import check_new_run_dir

log = logging.getLogger("fedsim")
LOSS_BYTES = 8  # a power-of-choice candidate's answer: its loss, one float64

RoundCallback = Callable[[dict[str, Any]], None]


@dataclass
class History:
    """What a run produced: per-round metrics rows, the run directory, the summary."""

    rows: list[dict[str, Any]]
    run_dir: Path
    summary: dict[str, Any]
    final_params: np.ndarray = field(repr=False)


class Simulation:
    """One federated training run from a validated Config.

    ``Simulation.from_yaml(path, overrides={...}).run()`` -> History.
    """

    def __init__(
        self,
        config: Config,
        run_dir: Path | None = None,
        *,
        resume: bool = False,
        quiet: bool = True,
        debug: bool = False,
        on_round_end: RoundCallback | None = None,
    ):
        self.cfg = config
        self.run_dir = Path(run_dir) if run_dir else _default_run_dir(config)
        self.resume = resume
        self.quiet = quiet
        self.debug = debug
        self.on_round_end = on_round_end
        self._warned: set[str] = set()

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Overrides | None = None, **kwargs) -> Simulation:
        return cls(load_config(Path(path), overrides), **kwargs)

    @classmethod
    def resume_from(cls, run_dir: str | Path, overrides: Overrides | None = None, **kwargs):
        """Continue ``run_dir`` from its last checkpoint; only rounds and runtime.* may change."""
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise FedsimError(f"{run_dir}: not a run directory (no config.yaml)")
        saved = load_run_config(run_dir)
        cfg = from_dict(apply_overrides(saved.to_dict(), overrides or []))
        check_resume_compatible(saved, cfg)
        return cls(cfg, run_dir, resume=True, **kwargs)

    def run(self) -> History:
        self.startup = StartupClock()
        trackers = Trackers(self.cfg, self.run_dir)  # a missing tracking package fails here, first
        if not self.resume:  # a taken or unwritable --out is one error before Ray starts
            check_new_run_dir(self.run_dir)
        shipped = user_py_modules(self.cfg)  # an entry that is not there fails before Ray starts
        with ray_starting(self.cfg.runtime.address, self.debug, shipped) as wait_for_ray:
            # Ray forks its processes meanwhile, and OpenBLAS stops its threads before every
            # fork: a threaded BLAS call running then never returns. One thread has none.
            with threadpool_limits(1, user_api="blas"):
                state = RunState(self.cfg, self.run_dir)  # the data and model, while Ray starts
            self.startup.mark("data")
            session = wait_for_ray()
            self.startup.mark("ray")
            try:
                state.open_run_dir(self.resume)
                return self._run_with_workers(state, session, trackers)
            finally:
                state.lock.release()

    def _run_with_workers(self, state: RunState, session: RaySession, trackers: Trackers) -> History:
        progress = RoundProgress(self.cfg.rounds, state.next_round, self.cfg.name, self.quiet)
        try:
            trackers.start(state.next_round)
            pool = self._start_workers(state, session, progress)
            self.startup.mark("workers")
            state.startup = self.startup.seconds()
            progress.message(f"fedsim: {self.startup.describe()}")
            completed = False
            try:
                self._loop(state, pool, progress, trackers)
                completed = True
            except RunDiverged:
                completed = True  # found between rounds: every worker is idle, and sound
                raise
            finally:
                self._stop_workers(state, pool, session, reusable=completed)
        except KeyboardInterrupt:
            state.finish("interrupted")
            trackers.finish("interrupted")
            raise
        except RunDiverged as exc:
            state.finish("diverged", error=str(exc))
            trackers.finish("diverged")
            raise
        except Exception as exc:
            state.finish("failed", error=str(exc))
            trackers.finish("failed")
            raise
        finally:
            progress.close()
        summary = state.finish("completed")
        trackers.finish("completed")
        return History(list(state.metrics.rows), self.run_dir, summary, state.params)

    def _start_workers(self, state: RunState, session: RaySession, progress: RoundProgress) -> WorkerPool:
        """The run's workers (warm ones when ``workers.reuse_workers`` is on), each loaded
        with this run's model, data and plan."""
        shape = state.schedule.workers
        count = pool_size(self.cfg.runtime, session)
        run = state.worker_run()
        user_code = user_code_targets(self.cfg, on_workers=True)

        def respawn():
            workers.stop_idle_workers()  # idle workers of other runs must not take its place
            # Only where a worker fits now: a pending actor would stall the round.
            if worker_resources(self.cfg.runtime).fit_in(free_resources()) < 1:
                raise ClusterError("no free CPUs/GPUs for a replacement worker")
            replacement = shape.start()
            if _loaded([replacement], run, user_code)[0]["device"] != state.device:
                ray.kill(replacement)
                raise ClusterError(f"a replacement worker would not train on {state.device}")
            return replacement

        actors = workers.acquire(shape, count)
        try:
            state.device = _one_device(_loaded(actors, run, user_code), state.recorded_device())
        except BaseException:
            workers.release(shape, actors, keep=False)
            raise
        gpus = f" + {shape.gpus:g} GPU" if shape.gpus else ""
        progress.message(
            f"fedsim: {count} workers x ({shape.cpus:g} CPU{gpus}) on {state.device} "
            f"(cluster has {session.cpus:g} CPUs, {session.gpus:g} GPUs); run directory {self.run_dir}"
        )
        return WorkerPool(actors, respawn=respawn)

    @contextmanager
    def loaded_workers(self, state: RunState) -> Iterator[LoadedWorkers]:
        """Ray and the workers of ``state``'s run, loaded as for its rounds, for commands
        that work on a finished run; stopped (or, inside ``reuse_workers``, handed on) when
        the block ends."""
        with ray_session(self.cfg.runtime.address, py_modules=user_py_modules(self.cfg)) as session:
            pool = self._start_workers(state, session, RoundProgress(1, 1, self.cfg.name, quiet=True))
            completed = False
            try:
                yield LoadedWorkers(self, state, pool)
                completed = True
            finally:
                self._stop_workers(state, pool, session, reusable=completed)

    def _stop_workers(self, state: RunState, pool: WorkerPool, session: RaySession, reusable: bool) -> None:
        """Hand the workers on to the next run (inside ``reuse_workers``) or stop them."""
        keep = reusable and not session.started_here  # Ray stops with a session fedsim started
        workers.release(state.schedule.workers, list(pool.actors), keep=keep)
        pool.actors.clear()

    def _loop(self, state: RunState, pool: WorkerPool, progress: RoundProgress, trackers: Trackers) -> None:
        classes = None if state.spec.loss.is_regression else state.spec.num_classes
        divergence = DivergenceWatch(self.cfg, lambda: _initial_test_loss(state), classes)
        divergence.replay([r for r in state.metrics.rows if r["round"] <= state.completed_round])
        for round_ in range(state.next_round, state.rounds + 1):
            row = self._round(state, pool, round_, progress)
            state.metrics.record(row)
            trackers.log_round(row)  # re-run rounds too: a crash may have cut them from the trackers
            state.completed_round = round_
            if round_ % state.schedule.checkpoint_every == 0 or round_ == state.rounds:
                state.checkpoint()
            progress.update(row)
            divergence.check(row, state.params)
            if self.on_round_end:
                self.on_round_end(row)

    def _round(
        self, state: RunState, pool: WorkerPool, round_: int, progress: RoundProgress | None = None
    ) -> dict[str, Any]:
        """One round's metrics row; ``progress`` hears how its training goes."""
        if state.async_rounds is not None:
            return self._async_step(state, state.async_rounds, pool, round_, progress)
        start = time.perf_counter()
        sampled, system_metrics, plan = self._sample(state, pool, round_)
        groups = reduction_groups(sampled, state.reduction_groups)
        heard = _clients_trained(progress, round_, groups)
        results = self._train(state, pool, round_, groups, None, heard, plan)
        selection = state.sampler.selection
        polled = 0
        if selection is not None and plan is not None:
            selection.learn(round_, plan, results)
            system_metrics.update(selection.metrics())
            polled = system_metrics.get("candidates_measured", 0)
        # The model as broadcast this round, to every selected client (stragglers too), or
        # to every candidate a poll asked for its loss (the selected among them).
        server = state.server
        bytes_down = server.bytes_down(max(polled, system_metrics.get("num_selected", len(sampled))))
        server_metrics = server.step(round_, results)
        target, pruning = server.pruning_target(round_), server.pruning
        # Gradient-based scores come from the round's clients: without any, no step yet.
        if target is not None and pruning is not None and (len(sampled) or not pruning.uses_gradients):
            server.prune(pruning_scores(pruning.method, state, pool, state.params, sampled), target)
        row = _round_row(round_, results, state.model_bytes, state.spec.loss.is_regression)
        row.update(server_metrics, bytes_down=bytes_down, **server.pruning_metrics(), **system_metrics)
        row["bytes_up"] += LOSS_BYTES * polled  # each polled candidate's answer
        system = state.sampler.system
        if system is not None and (system.stragglers or system.partial_work):  # how much work was done
            row.update(_local_steps(results, sampled))
        return self._finish_row(state, pool, round_, row, results, sampled, start)

    def _async_step(
        self, state: RunState, steps: AsyncRounds, pool: WorkerPool, round_: int, progress=None
    ) -> dict[str, Any]:
        """One asynchronous server step (``round_`` counts steps) of ``steps``, the run's
        schedule: train the clients dispatched from the current model, then step on the
        buffer that arrived."""
        start = time.perf_counter()
        plan = steps.plan()

        def arrivals(got: int, needed: int) -> None:
            progress.working(f"step {round_}: {got}/{needed} arrivals")

        trained = steps.train(
            plan,
            lambda groups, events, heard: self._train(state, pool, round_, groups, events, heard),
            None if progress is None else arrivals,
        )
        state.server.keep_client_states(trained)
        results = steps.buffer_results(plan, state.params)
        server_metrics = state.server.step(round_, results)
        row = _round_row(round_, results, state.model_bytes, state.spec.loss.is_regression)
        row.update(
            server_metrics, bytes_down=state.server.bytes_down(len(plan.dispatched)), **steps.row(plan)
        )
        row["simulated_seconds"] = plan.time - state.simulated_elapsed
        state.simulated_elapsed = plan.time
        arrived = np.array(sorted(t.client for t in plan.arrivals), np.int64)
        return self._finish_row(state, pool, round_, row, results, arrived, start)

    def _train(self, state, pool, round_, groups, events=None, on_groups_done=None, plan=None) -> list:
        """Each group's result of training on the workers from the current model;
        ``events`` (async): group -> the dispatch event keying its clients' draws;
        ``on_groups_done(indices)``: progress, as each task's groups come back;
        ``plan``: the system model's RoundPlan, whose clients may do less than full work."""
        global_ref = ray.put(state.params)
        server = state.server

        def submit(actor, task):
            clients = np.concatenate([ids for _, ids in task])
            inputs = _with_reduced_work(server.round_input(round_, clients), plan, clients)
            if events:
                inputs = dataclasses.replace(inputs, group_rounds={g: events[g] for g, _ in task})
            return actor.train_groups.remote(global_ref, inputs, task)

        work = [float(state.client_work[ids].sum()) for ids in groups]
        try:
            results = pool.scheduler.run(pool, submit, groups, work, "train_groups", on_groups_done)
        except ClusterError as exc:
            clients = np.concatenate(groups).tolist() if groups else []
            raise ClusterError(
                f"round {round_} (clients {clients[:8]}{'...' if len(clients) > 8 else ''}): {exc}"
            ) from exc
        for result in results:
            self._warn_once(result.warnings)
        return results

    def _finish_row(self, state, pool, round_, row, results, clients, start) -> dict[str, Any]:
        """Add what every round reports: gradient flow, evaluations, clients, seconds."""
        if state.server.plan.track_gradients:
            row["gradient_flow"] = _gradient_flow(results, state.spec.tracked_layers())
        row.update(self._maybe_evaluate(state, round_))
        row.update(self._maybe_federated_eval(state, pool, round_))
        row["clients"] = clients.tolist()
        row["seconds"] = time.perf_counter() - start
        return row

    def _sample(
        self, state: RunState, pool: WorkerPool, round_: int
    ) -> tuple[np.ndarray, dict[str, Any], RoundPlan | None]:
        """This round's participants, what the system model measured, and its plan (if any)."""
        sampler, server = state.sampler, state.server
        selection, devices = sampler.selection, sampler.devices
        context = RoundContext(now=state.simulated_elapsed, link_bytes=server.trip_bytes())
        if selection is not None and devices is not None:
            context = dataclasses.replace(
                context,
                select=selection.chooser(round_, lambda clients: _local_losses(state, pool, clients)),
                upload_bytes=server.upload_bytes(),
                polled=lambda: selection.poll_seconds(devices, server.bytes_down(1)),
            )
        participants, plan = sampler.sample(round_, context)
        if plan is None:
            seconds = sampler.simulated_seconds(participants)
            state.simulated_elapsed += seconds
            timed = {"simulated_seconds": seconds, "simulated_elapsed": state.simulated_elapsed}
            return participants, timed, None
        state.simulated_elapsed += plan.simulated_seconds
        measured = {
            "num_selected": len(plan.selected),
            "simulated_seconds": plan.simulated_seconds,
            "simulated_elapsed": state.simulated_elapsed,
        }
        system = sampler.system
        assert system is not None  # a plan comes from the system model
        if system.stragglers:
            measured["stragglers"] = len(plan.stragglers)
        if system.partial_work:
            measured["partial_clients"] = len(plan.sample_budgets)
        if system.availability < 1 or (devices is not None and devices.availability is not None):
            measured["num_online"] = plan.num_online
        if selection is not None or (devices is not None and devices.traced):
            measured["selected"] = plan.selected.tolist()
        return participants, measured, plan

    def _warn_once(self, messages: tuple[str, ...]) -> None:
        """A warning raised by clients is logged the first time it is seen in this run."""
        for message in messages:
            if message not in self._warned:
                self._warned.add(message)
                log.warning("a client warned (shown once per run): %s", message)

    def _maybe_federated_eval(self, state: RunState, pool: WorkerPool, round_: int) -> dict[str, Any]:
        plan = state.schedule.federated_eval
        if not plan.due(round_):
            return {}
        clients = plan.clients(round_)
        server = state.server
        # A client's own model: its personal state, or its own buffers (model.buffers: local).
        own_models = server.plan.personal is not None or server.plan.buffers == "local"
        model = EvaluatedModel(state.params, server.buffers, server.client_states if own_models else None)
        columns = plan.evaluate(pool, round_, clients, model, state.held_out_sizes)
        state.client_evals.append(client_rows(round_, columns))
        return round_metrics(columns)

    def _maybe_evaluate(self, state: RunState, round_: int) -> dict[str, float | None]:
        schedule = state.schedule
        regression = state.spec.loss.is_regression
        if round_ % schedule.eval_every and round_ != state.rounds:
            return {"test_loss": None} if regression else {"test_accuracy": None, "test_loss": None}
        result = _test_scores(state, state.params, state.server.buffers)
        if regression:
            return {"test_loss": result.loss}
        return {"test_accuracy": result.accuracy, "test_loss": result.loss}


def _test_scores(state: RunState, params: np.ndarray, buffers: np.ndarray) -> EvalResult:
    """The model ``params`` (with its float ``buffers`` (m,)) on the server's test set."""
    with compute_threads(state.schedule.workers.threads):
        if buffers.size:
            state.eval_model.load_buffers(buffers)
        return evaluate(state.eval_model, params, state.x_test, state.y_test, state.schedule.eval_batch_size)


def _initial_test_loss(state: RunState) -> float:
    """The test loss of the run's initial model, drawn from the seed again (a resumed run's
    parameters are its checkpoint's)."""
    params, buffers = initial_state(state.spec, state.seed)
    return _test_scores(state, params, buffers).loss


class StartupClock:
    """When each part of a run's start was ready, in seconds since ``Simulation.run`` was
    called; data and Ray come up side by side, so they are times, not durations."""

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.ready_at: dict[str, float] = {}
        self.before_run = _seconds_since_process_start()

    def mark(self, part: str) -> None:
        self.ready_at[part] = time.perf_counter() - self.began

    def seconds(self) -> dict[str, float]:
        """{"data": s, "ray": s, "workers": s} since run(), plus "before_run": the process's
        own start (interpreter and imports) when the OS tells it."""
        times = {k: round(v, 3) for k, v in self.ready_at.items()}
        if self.before_run is not None:
            times["before_run"] = round(self.before_run, 3)
        return times

    def describe(self) -> str:
        t = self.ready_at
        launched = "" if self.before_run is None else f"{self.before_run + t['workers']:.1f} s after launch, "
        return (
            f"ready for round 1 {launched}{t['workers']:.1f} s after the run began "
            f"(data at {t['data']:.1f} s, Ray at {t['ray']:.1f} s, workers at {t['workers']:.1f} s)"
        )


def _seconds_since_process_start() -> float | None:
    """Seconds since this process started, from /proc (10 ms ticks); None elsewhere."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _one_device(infos: list[dict[str, Any]], recorded: str | None) -> str:
    """The device every worker trains on; refused when they differ (which groups ran
    where would decide the bits) or when a resumed run would change device."""
    devices = sorted({info["device"] for info in infos})
    if len(devices) > 1:
        raise ClusterError(
            f"the workers train on different devices ({', '.join(devices)}); results would depend on "
            "scheduling: give every node the same torch build or set model.device: cpu"
        )
    if recorded is not None and recorded != devices[0]:
        raise ClusterError(
            f"--resume: this run trained on {recorded} but the workers now train on {devices[0]}; "
            "the bits would differ (model.device / runtime.gpus_per_worker)"
        )
    return devices[0]


def _loaded(
    actors: list, run: WorkerRun | ray.ObjectRef, user_code: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Load ``run`` into each worker, once each has imported the ``user_code`` it names
    ({key: "package.module:callable"}); their pings. A constructor's, the import's or
    ``load``'s error (say, no CUDA device, or no memory for the model) becomes one line."""
    try:
        if user_code:
            _every_answer([a.import_user_code.remote(user_code) for a in actors])
        return _every_answer([a.load.remote(run) for a in actors])
    except RayActorError as exc:
        causes = [line.split("Error: ", 1)[1] for line in str(exc).splitlines() if "Error: " in line]
        raise ClusterError(
            f"the worker actors could not start: {(causes or [str(exc)])[-1].strip()}"
        ) from None
    except RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, FedsimError):
            raise cause from None
        raise ClusterError(f"the workers could not load the run: {cause!r}") from None


def _every_answer(refs: list[ray.ObjectRef]) -> list[Any]:
    """Each ref's value, in order; the first error is raised only after every ref has
    answered, since an error Ray never handed over is logged on stderr when its ref is
    dropped (a second line under fedsim's one-line error when two workers fail alike)."""
    answers, first_error = [], None
    for ref in refs:
        try:
            answers.append(ray.get(ref))
        except (RayActorError, RayTaskError) as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return answers


def _local_losses(state: RunState, pool: WorkerPool, clients: np.ndarray) -> np.ndarray:
    """Each of ``clients``' (sorted ids) mean loss of the current model on its own training
    rows (power-of-choice's ranking), (k,) float64 in their order."""
    server = state.server
    buffers = server.buffers if server.buffers.size else None
    kept = {int(c): server.client_states[int(c)] for c in clients if int(c) in server.client_states}
    call = GroupCall("loss_groups", (state.schedule.eval_batch_size, buffers, kept), state.client_work)
    parts = map_groups(pool, state.params, clients, state.reduction_groups, call)
    return np.concatenate([losses for _, losses in parts]) if parts else np.zeros(0)


def federated_scores(
    pool: WorkerPool,
    params: np.ndarray,
    clients: np.ndarray,
    kind: str,
    groups: int,
    client_work: np.ndarray | None = None,
):
    """Sample-weighted mean over ``clients`` of their scores at ``params`` (n,) float64,
    added in group order (so it does not depend on the workers)."""
    total, weight = np.zeros(params.size, np.float64), 0.0
    parts = map_groups(pool, params, clients, groups, GroupCall("score_groups", (kind,), client_work))
    for _, group_total, group_weight in parts:
        total += group_total
        weight += group_weight
    return total / max(weight, 1.0)


def pruning_scores(
    method: str, state: RunState, pool: WorkerPool, params: np.ndarray, clients: np.ndarray
) -> np.ndarray:
    """Each weight's score by ``method`` at ``params``; gradient-based ones are computed by
    ``clients`` on their own shards and averaged by samples."""
    if method == "magnitude":
        return magnitude_scores(params)
    if method == "random":
        rng = np.random.default_rng(np.random.SeedSequence([state.seed, Stream.PRUNING]))
        return random_scores(params.size, rng)
    return federated_scores(pool, params, clients, method, state.reduction_groups, state.client_work)


@dataclass(frozen=True)
class LoadedWorkers:
    """A run's workers, loaded with its model, data and plan, for commands that score or
    train outside the round loop (``fedsim prune``); ``Simulation.loaded_workers`` yields it."""

    simulation: Simulation
    state: RunState
    pool: WorkerPool

    def scores(self, method: str, params: np.ndarray, clients: np.ndarray) -> np.ndarray:
        """Each weight's score by a pruning ``method``, as ``pruning_scores``."""
        return pruning_scores(method, self.state, self.pool, params, clients)

    def train_round(self, round_: int) -> dict[str, Any]:
        """One round from the state's server, as the run's loop trains it; its row (not logged)."""
        return self.simulation._round(self.state, self.pool, round_)


def _with_reduced_work(inputs: RoundInput, plan: RoundPlan | None, client_ids: np.ndarray) -> RoundInput:
    """``inputs`` with the less than full work ``plan`` gives any of ``client_ids``: a
    straggler's epochs, a deadline's sample budget (keyed by client: no worker decides)."""
    if plan is None or not (plan.local_epochs or plan.sample_budgets):
        return inputs
    ids = {int(c) for c in client_ids}
    return dataclasses.replace(
        inputs,
        local_epochs={c: e for c, e in plan.local_epochs.items() if c in ids},
        sample_budgets={c: b for c, b in plan.sample_budgets.items() if c in ids},
    )


def _local_steps(results: list, clients: np.ndarray) -> dict[str, Any]:
    """The local steps each of ``clients`` (the row's list) took (0: rejected or empty
    update), and their sum."""
    taken = {int(c): int(n) for r in results for c, n in zip(r.client_ids, r.steps, strict=True)}
    steps = [taken.get(int(c), 0) for c in clients]
    return {"client_steps": steps, "local_steps": sum(steps)}


def _clients_trained(progress: RoundProgress | None, round_: int, groups: list[np.ndarray]):
    """A round's ``on_groups_done``: the live line says how many of its clients trained."""
    if progress is None:
        return None
    total, done = sum(len(g) for g in groups), 0

    def heard(indices: list[int]) -> None:
        nonlocal done
        done += sum(len(groups[g]) for g in indices)
        progress.working(f"round {round_}: {done}/{total} clients trained")

    return heard


def _gradient_flow(results: list, layers: list[str]) -> dict[str, dict[str, float]]:
    """Sample-weighted mean over the round's accepted clients of each layer's norms."""
    sums = [r.flow_sum for r in results if r.flow_sum is not None]
    weight = sum(int(r.num_samples[r.accepted].sum()) for r in results if r.flow_sum is not None)
    if not sums or weight <= 0:
        return {}
    mean = np.sum(sums, axis=0) / weight
    return {
        name: {"signal_norm": float(s), "grad_norm": float(g)}
        for name, (s, g) in zip(layers, mean, strict=True)
    }


def _round_row(round_: int, results: list, model_bytes: int, regression: bool) -> dict[str, Any]:
    """The round's row before evaluation fills in its scores; a regression run has no
    accuracy, so no key for it (absent, not null)."""

    def joined(field: str, dtype) -> np.ndarray:
        return np.concatenate([getattr(r, field) for r in results]) if results else np.zeros(0, dtype)

    sizes, losses = joined("num_samples", np.int64), joined("train_losses", np.float64)
    accepted, sent = joined("accepted", bool), joined("bytes_up", np.int64)
    weight = sizes[accepted].sum()
    train_loss = float(np.dot(sizes[accepted], losses[accepted]) / weight) if weight else None
    clients = len(sizes)
    return {
        "round": round_,
        **({} if regression else {"test_accuracy": None}),
        "test_loss": None,
        "train_loss": train_loss,
        "num_clients": clients,
        "num_samples": int(sizes.sum()),
        "rejected_updates": int((~accepted).sum()),
        "seconds": 0.0,
        # A rejected update still travelled: it counts at full size.
        "bytes_up": int(sent[accepted].sum()) + int((~accepted).sum()) * model_bytes,
        "bytes_down": clients * model_bytes,
    }


def _default_run_dir(cfg: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(cfg.runtime.out_dir) / f"{cfg.name}-{stamp}"


@contextmanager
def compute_threads(count: int):
    """Torch and BLAS threads for the server's own compute, as a worker would use."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(count):
            yield
    finally:
        torch.set_num_threads(before)
