"""A run between rounds: what the round loop mutates or reads each round (the
server, the sampler, the data), and the run directory it checkpoints into and
resumes from, with the rules for what may change on resume."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from clients.errors import ConfigError, FedsimError
from clients.models.engines import build_model
from clients.protocol import WorkerRun
from server.system import SystemModel
from simulator.config.build import build_run, build_server_state
from simulator.config.loading import dump_yaml, inert_reset
from simulator.config.schema import Config
from simulator.config.yaml_input import show
from simulator.driver.federated_eval import FederatedEvalPlan
from simulator.driver.workers import WorkerShape
from simulator.rundir.checkpoints import Checkpoint, intact_checkpoints, save_checkpoint, save_model
from simulator.rundir.devices import check_same_traces, write_devices
from simulator.rundir.directory import RunLock, create_run_dir, read_run_id
from simulator.rundir.files import atomic_write_text, write_json
from simulator.rundir.metrics import ClientEvalLog, MetricsLog
from simulator.rundir.summary import SUMMARY_NAME, read_summary

log = logging.getLogger("fedsim")

MUTABLE_ON_RESUME = ("rounds", "runtime")
# runtime keys that change bits: the summation order and the kernels' thread count
# (A change of device, e.g. through gpus_per_worker, is refused when the workers start.)
FIXED_RUNTIME_ON_RESUME = ("reduction_groups", "cpus_per_worker")
DATA_LOCATION = ("root", "download", "verify")  # where the data are found, not what they are


@dataclass(frozen=True)
class RoundSchedule:
    """What the round loop takes from the config beyond what shapes training (build_run
    reads that into RunSetup): when it evaluates and checkpoints, how the server
    evaluates, federated evaluation's plan and the workers' shape."""

    eval_every: int
    eval_batch_size: int
    checkpoint_every: int
    workers: WorkerShape  # the server evaluates with a worker's thread count, too
    federated_eval: FederatedEvalPlan

    @classmethod
    def of(cls, cfg: Config) -> RoundSchedule:
        s = cfg.server
        return cls(
            s.eval_every, s.eval_batch_size, cfg.runtime.checkpoint_every, WorkerShape.of(cfg),
            FederatedEvalPlan.of(cfg),
        )  # fmt: skip


class RunState:
    """A run between rounds: what the loop mutates or reads each round (built by
    build_run, and the RoundSchedule), plus run-directory I/O."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        setup = build_run(cfg)
        dataset = setup.dataset
        self.rounds, self.seed = setup.rounds, setup.seed
        self.engine, self.sampler = setup.engine, setup.sampler
        self.client_work = setup.client_work
        self.reduction_groups = setup.reduction_groups
        self.schedule = RoundSchedule.of(cfg)
        self.async_rounds = setup.async_rounds
        self.shards, self.eval_shards = setup.shards, setup.eval_shards
        self.eval_in_test = setup.splits.held_out_in_test
        self.population = setup.population
        self.spec = setup.spec
        self.layout = self.spec.layout()
        self.x_train, self.y_train = dataset.x_train, dataset.y_train
        self.x_test, self.y_test = dataset.x_test, dataset.y_test
        self.eval_model = build_model(self.spec, self.engine)
        self.server = setup.server
        self.model_bytes = self.params.nbytes
        self.completed_round = 0
        self.next_round = 1
        self.simulated_elapsed = 0.0
        self.metrics: MetricsLog
        self.client_evals: ClientEvalLog
        self.device: str | None = None  # what the workers train on, once they are up
        self.lock = RunLock(run_dir)
        self.run_id: str | None = None  # run.json's; None in run directories of fedsim before 0.3
        self.startup: dict[str, float] = {}  # when data, Ray and workers were ready (StartupClock)

    @property
    def params(self) -> np.ndarray:
        return self.server.params

    def restart_server(self, params: np.ndarray, mask: np.ndarray) -> None:
        """Go on from ``params`` with a fresh server (optimiser state, clip norm, ...) that
        keeps the weights ``mask`` prunes at zero: fine-tuning a pruned model."""
        # A module model's buffers go on from the run's.
        self.server = build_server_state(self.cfg, params.copy(), self.spec, self.server.buffers)
        self.server.mask = mask

    @property
    def held_out_sizes(self) -> np.ndarray | None:
        """Each client's held-out samples (federated evaluation), when workers hold them."""
        return None if self.eval_shards is None else self.eval_shards.sizes()

    def open_run_dir(self, resume: bool) -> None:
        """Create the run directory (or restore from its checkpoint) and open the metrics log."""
        if resume:
            self.lock.acquire()
            self.run_id = read_run_id(self.run_dir)
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
            self._restore(self.metrics.last_round())
        else:
            self.run_id = create_run_dir(self.run_dir)
            self.lock.acquire()
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(self.cfg))
            if self.sampler.planned and self.sampler.devices is not None:
                write_devices(self.run_dir, self.sampler.devices, self.sampler.system or SystemModel())
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
            self.checkpoint()  # round 0: resumable even if stopped before its first round
        self.client_evals = ClientEvalLog(self.run_dir / "clients.jsonl", self.completed_round)
        done = [r for r in self.metrics.rows if r["round"] <= self.completed_round]
        self.simulated_elapsed = float(done[-1].get("simulated_elapsed", 0.0)) if done else 0.0

    def _restore(self, logged_round: int) -> None:
        """Continue from the newest intact checkpoint whose rounds are all in metrics.jsonl
        (``logged_round``) and whose record of those rows matches them: a damaged, renamed
        or foreign checkpoint is skipped, and rows lost from the log are rebuilt by
        re-running their rounds from an earlier checkpoint, bit for bit. Rows that a
        newer checkpoint disagrees with are moved aside and rebuilt the same way."""
        disagreed = False
        for ckpt in intact_checkpoints(self.run_dir, self.run_id):
            if ckpt.round > logged_round:
                log.warning(
                    "%s: metrics.jsonl ends at round %d, before checkpoint round %d; resuming from an "
                    "earlier checkpoint re-runs the missing rounds",
                    self.run_dir, logged_round, ckpt.round,
                )  # fmt: skip
            elif ckpt.metrics_sha256 not in (None, self.metrics.prefix_digest(ckpt.round)):
                disagreed = True
                log.warning(
                    "%s: metrics.jsonl's rows up to round %d are not those checkpoint round %d was "
                    "written after (rows edited, or the checkpoint copied in); trying an earlier one",
                    self.run_dir, ckpt.round, ckpt.round,
                )  # fmt: skip
            else:
                break
        else:
            raise FedsimError(
                f"{self.run_dir}: no intact checkpoint at or before round {logged_round}, where "
                "metrics.jsonl ends, that agrees with its rows; the run cannot continue without "
                "losing rows (start it again)"
            )
        if disagreed:
            self.metrics.cut_after(ckpt.round, f"a checkpoint after round {ckpt.round} disagrees with them")
        self._check_checkpoint(ckpt)
        if self.sampler.devices is not None:
            check_same_traces(self.run_dir, self.sampler.devices)
        self.metrics.settle()  # only now that the run can go on is anything in the log changed
        self.server.params = ckpt.params.astype(np.float32)
        self.server.load_arrays(ckpt.server_state)
        if self.async_rounds is not None:
            self.async_rounds.restore(ckpt.round, ckpt.server_state)
        if self.sampler.selection is not None:
            self.sampler.selection.load_arrays(ckpt.server_state)
        self.completed_round, self.next_round = ckpt.round, ckpt.round + 1
        atomic_write_text(self.run_dir / "config.yaml", dump_yaml(self.cfg))

    def _check_checkpoint(self, ckpt: Checkpoint) -> None:
        if ckpt.round > self.cfg.rounds:
            raise ConfigError(
                f"--resume: rounds={self.cfg.rounds} is below the {ckpt.round} rounds already "
                "completed; rounds can only be extended"
            )
        if ckpt.params.shape != self.params.shape:
            raise FedsimError(
                f"{ckpt.path}: checkpoint has {ckpt.params.size} parameters, model needs {self.params.size}"
            )
        recorded = None if ckpt.config is None else inert_reset(ckpt.config)[0]
        changed = [] if recorded is None else _differences(recorded, trained_config(self.cfg))
        if changed:
            raise ConfigError(
                f"{self.run_dir}/config.yaml differs from the config checkpoint round {ckpt.round} was "
                f"trained with ({', '.join(changed[:5])}); put it back, or start a new run"
            )

    def worker_run(self) -> ray.ObjectRef:
        """``ClientWorker.load``'s argument: the run, put into the object store once per
        run, from where Ray hands each worker its arrays (dataset, partition) zero-copy."""
        held_out = self.eval_shards
        run = WorkerRun(
            spec=self.spec,
            engine=self.engine,
            x_train=self.x_train,
            y_train=self.y_train,
            shard_indices=self.shards.indices,
            shard_offsets=self.shards.offsets,
            plan=self.server.plan,
            seed=self.seed,
            population=self.population,
            eval_indices=None if held_out is None else held_out.indices,
            eval_offsets=None if held_out is None else held_out.offsets,
            # Natural clients' own test rows live in the test arrays: ship those too.
            eval_x=self.x_test if self.eval_in_test else None,
            eval_y=self.y_test if self.eval_in_test else None,
        )
        return ray.put(run)

    def recorded_device(self) -> str | None:
        """The device a resumed run trained on before, from its summary.json."""
        path = self.run_dir / SUMMARY_NAME
        if self.completed_round == 0 or not path.is_file():
            return None
        try:
            return read_summary(self.run_dir).get("device")
        except FedsimError:
            return None  # a damaged summary is rewritten at the end; it decides nothing

    def checkpoint(self) -> None:
        arrays = self.server.arrays()
        if self.async_rounds is not None:  # updates still in flight
            arrays.update(self.async_rounds.arrays())
        if self.sampler.selection is not None:  # what the policy has learnt of the clients
            arrays.update(self.sampler.selection.arrays())
        identity = {"metrics_sha256": self.metrics.prefix_digest(self.completed_round)}
        if self.run_id is not None:
            identity["run_id"] = self.run_id
        save_checkpoint(
            self.run_dir, self.completed_round, self.params, arrays, trained_config(self.cfg), identity
        )

    def finish(self, status: str, error: str | None = None) -> dict[str, Any]:
        """Checkpoint, write the model and summary.json; return the summary."""
        self.checkpoint()
        save_model(
            self.run_dir / "model.safetensors", self.layout, self.params, self.completed_round, self.cfg.name
        )
        summary = _summary(self.cfg, self.metrics.rows, status, self.layout.size)
        summary["device"] = self.device or self.recorded_device()
        if self.startup:
            summary["startup_seconds"] = self.startup
        if error:
            summary["error"] = error
        write_json(self.run_dir / SUMMARY_NAME, summary)
        return summary


def _summary(cfg: Config, rows: list[dict[str, Any]], status: str, num_params: int) -> dict[str, Any]:
    """summary.json; the best round is the most accurate one, or under regression (rows
    without accuracy) the one of lowest test loss, with ``best_test_loss`` in place of
    the accuracy keys."""
    regression = bool(rows) and "test_accuracy" not in rows[0]
    key = "test_loss" if regression else "test_accuracy"
    evaluated = [r for r in rows if r.get(key) is not None]
    if regression:  # a NaN loss (a diverged round) is never the best
        best = min((r for r in evaluated if math.isfinite(r[key])), key=lambda r: r[key], default=None)
    else:
        best = max(evaluated, key=lambda r: r[key], default=None)
    final = evaluated[-1] if evaluated else None
    scores = {"final_test_loss": final["test_loss"] if final else None}
    if regression:
        scores["best_test_loss"] = best["test_loss"] if best else None
    else:
        scores = {
            "final_test_accuracy": final["test_accuracy"] if final else None,
            **scores,
            "best_test_accuracy": best["test_accuracy"] if best else None,
        }
    return {
        "name": cfg.name,
        "mode": cfg.server.mode,
        "status": status,
        "seed": cfg.seed,
        "rounds": cfg.rounds,
        "rounds_completed": rows[-1]["round"] if rows else 0,
        **scores,
        "best_round": best["round"] if best else None,
        "total_seconds": sum(r["seconds"] for r in rows),
        "total_bytes_up": sum(r["bytes_up"] for r in rows),
        "total_bytes_down": sum(r["bytes_down"] for r in rows),
        "num_parameters": num_params,
        "simulated_seconds": rows[-1].get("simulated_elapsed") if rows else None,
        **({"epsilon": rows[-1]["epsilon"]} if rows and "epsilon" in rows[-1] else {}),
    }


def check_resume_compatible(saved: Config, requested: Config) -> None:
    old, new = saved.to_dict(), requested.to_dict()
    for key in old:
        if key not in MUTABLE_ON_RESUME and old[key] != new[key]:
            raise ConfigError(
                f"--resume: '{key}' differs from the run's config.yaml; only rounds and runtime.* "
                f"(except {', '.join(FIXED_RUNTIME_ON_RESUME)}) may change when resuming"
            )
    for key in FIXED_RUNTIME_ON_RESUME:
        if old["runtime"][key] != new["runtime"][key]:
            raise ConfigError(f"--resume: 'runtime.{key}' cannot change when resuming; it changes the bits")


def trained_config(cfg: Config) -> dict[str, Any]:
    """What a checkpoint records of the config: everything but what may change on resume
    and where the data are found (a dataset moved to another folder is the same data)."""
    recorded = {k: v for k, v in cfg.to_dict().items() if k not in MUTABLE_ON_RESUME}
    recorded["runtime"] = {k: getattr(cfg.runtime, k) for k in FIXED_RUNTIME_ON_RESUME}
    recorded["data"] = {k: v for k, v in recorded["data"].items() if k not in DATA_LOCATION}
    return recorded


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts, as 'key: old -> new'.
    Only keys both hold are compared: a key a later fedsim added (with its default) or
    removed does not make an older checkpoint unusable."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in old if k in new for d in _differences(old[k], new[k], f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {show(old)} -> {show(new)}"]
