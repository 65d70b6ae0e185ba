"""Experiment tracking: TensorBoard scalars and MLflow runs, both off by default.

``runtime.tensorboard: true`` writes every numeric metric of every round as a
scalar (step = round) under ``RUN_DIR/tensorboard``; gradient-flow norms
become ``gradient_flow/LAYER/signal_norm`` and ``.../grad_norm``.
``runtime.mlflow: URI`` logs the resolved config as params, the same metrics
per round, and at the end the run directory with its report as artifacts.
Both libraries are optional (``pip install 'fedsim[tracking]'``); asking for
one that is not installed is a config error before anything runs.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from clients.errors import ConfigError, FedsimError
from simulator.config.schema import Config
from simulator.report.settings import flatten
from simulator.rundir.files import atomic_write_text, check_folder
from simulator.rundir.summary import read_json_object

MLFLOW_RUN_FILE = "mlflow_run.json"
# The run's small files; checkpoints and clients.jsonl stay in the run directory.
MLFLOW_ARTIFACTS = ("report.html", "summary.json", "config.yaml", "metrics.jsonl", "model.safetensors")
MLFLOW_PARAMS_PER_CALL = 100  # MLflow's batch limit
MLFLOW_STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}
log = logging.getLogger("fedsim")


def scalar_metrics(row: dict[str, Any]) -> dict[str, float]:
    """The row's numbers by tag: booleans and missing values left out, nested
    gradient-flow norms flattened, the round itself and client lists dropped."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "gradient_flow" and isinstance(value, dict):
            for layer, norms in value.items():
                for name, number in norms.items():
                    out[f"gradient_flow/{layer}/{name}"] = float(number)
        elif isinstance(value, int | float) and not isinstance(value, bool) and key != "round":
            out[key] = float(value)
    return out


def flat_config(cfg: Config) -> dict[str, str]:
    """The config as dotted keys -> text, for tracking params."""
    return {key: str(value) for key, value in flatten(cfg.to_dict()).items()}


def _require_module(name: str, option: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"{option} needs the {name} package, which is not installed: "
            f"pip install 'fedsim[tracking]' (or pip install {name})"
        ) from None


class Trackers:
    """What the run reports to besides its run directory.

    Tracking never costs the run: a tracker that fails at start stops the run
    before its first round with one clear error, one that fails later is
    dropped with a warning and the run goes on."""

    def __init__(self, cfg: Config, run_dir: Path):
        rt = cfg.runtime
        self.cfg, self.run_dir = cfg, run_dir
        self._tensorboard_module: Any = (
            _require_module("tensorboardX", "runtime.tensorboard") if rt.tensorboard else None
        )
        self._mlflow_module = _require_module("mlflow", "runtime.mlflow") if rt.mlflow else None
        self._writer = None
        self._mlflow: Any = None  # the module, once its run has started

    def start(self, first_round: int) -> None:
        """Open the writers (after the run directory exists); ``first_round`` is the
        round the run continues from: TensorBoard drops what it had logged from there."""
        if self._tensorboard_module is not None:
            self._writer = self._start_tensorboard(first_round)
        if self._mlflow_module is not None:
            try:
                self._start_mlflow(self._mlflow_module)
            except Exception as exc:  # MLflow raises many types for a bad URI or server
                raise ConfigError(
                    f"runtime.mlflow={self.cfg.runtime.mlflow!r}: could not start an MLflow run: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            self._mlflow = self._mlflow_module

    def _start_tensorboard(self, first_round: int):
        if os.path.lexists(self.run_dir / "tensorboard"):  # its event files must stay in the run
            check_folder(self.run_dir / "tensorboard")
        try:
            return self._tensorboard_module.SummaryWriter(
                logdir=str(self.run_dir / "tensorboard"), purge_step=first_round if first_round > 1 else None
            )
        except OSError as exc:
            raise FedsimError(
                f"runtime.tensorboard: cannot write {self.run_dir / 'tensorboard'}: {exc}"
            ) from None

    def _start_mlflow(self, mlflow) -> None:
        uri = self.cfg.runtime.mlflow
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(self.cfg.runtime.mlflow_experiment)
        record_path = self.run_dir / MLFLOW_RUN_FILE
        record = read_json_object(record_path)
        # A resumed run continues its MLflow run.
        if record.get("tracking_uri") == uri and isinstance(record.get("run_id"), str):
            mlflow.start_run(run_id=record["run_id"])
            return
        run = mlflow.start_run(run_name=self.cfg.name)
        atomic_write_text(record_path, json.dumps({"run_id": run.info.run_id, "tracking_uri": uri}))
        params = sorted(flat_config(self.cfg).items())
        for start in range(0, len(params), MLFLOW_PARAMS_PER_CALL):
            mlflow.log_params(dict(params[start : start + MLFLOW_PARAMS_PER_CALL]))

    def log_round(self, row: dict[str, Any]) -> None:
        scalars = scalar_metrics(row)
        if self._writer is not None:
            try:
                for tag, value in scalars.items():
                    self._writer.add_scalar(tag, value, global_step=row["round"])
                self._writer.flush()  # a crash must not leave a gap that resume cannot fill
            except Exception as exc:
                self._writer = self._drop("TensorBoard", exc)
        if self._mlflow is not None:
            try:
                self._mlflow.log_metrics(scalars, step=row["round"])
            except Exception as exc:
                self._mlflow = self._drop("MLflow", exc)

    def finish(self, status: str) -> None:
        """Close TensorBoard; give MLflow the report and the run's small files, and end
        its run. Never raises: the run's own outcome is what the caller reports."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as exc:
                self._drop("TensorBoard", exc)
        if self._mlflow is not None:
            try:
                self._finish_mlflow(status)
            except Exception as exc:
                self._drop("MLflow", exc)
        self._writer = self._mlflow = None

    def _finish_mlflow(self, status: str) -> None:
        self._write_report()
        for name in MLFLOW_ARTIFACTS:
            if (self.run_dir / name).is_file() and not (self.run_dir / name).is_symlink():
                self._mlflow.log_artifact(str(self.run_dir / name), artifact_path="run")
        self._mlflow.end_run(status=MLFLOW_STATUS.get(status, "FAILED"))

    def _write_report(self) -> None:
        from simulator.report.page import write_report

        try:
            write_report([self.run_dir], self.run_dir)
        except FedsimError as exc:  # e.g. stopped before its first round: log the rest anyway
            log.warning("no report for MLflow: %s", exc)

    @staticmethod
    def _drop(name: str, exc: Exception) -> None:
        log.warning(
            "%s tracking failed and is off for the rest of this run: %s: %s", name, type(exc).__name__, exc
        )
        return None
