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
import logging
from pathlib import Path
from typing import Any

from clients.errors import ConfigError, FedsimError
from simulator.config import Config

MLFLOW_RUN_ID_FILE = "mlflow_run_id"
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
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            flat[prefix] = str(node)

    walk("", cfg.to_dict())
    return flat


def _require_module(name: str, option: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"{option} needs the {name} package, which is not installed: "
            f"pip install 'fedsim[tracking]' (or pip install {name})"
        ) from None


class Trackers:
    """What the run reports to besides its run directory."""

    def __init__(self, cfg: Config, run_dir: Path):
        rt = cfg.runtime
        self.cfg, self.run_dir = cfg, run_dir
        self._tensorboard_module = (
            _require_module("tensorboardX", "runtime.tensorboard") if rt.tensorboard else None
        )
        self._mlflow = _require_module("mlflow", "runtime.mlflow") if rt.mlflow else None
        self._writer = None

    def start(self) -> None:
        """Open the writers (after the run directory exists)."""
        if self._tensorboard_module is not None:
            self._writer = self._tensorboard_module.SummaryWriter(logdir=str(self.run_dir / "tensorboard"))
        if self._mlflow is not None:
            self._start_mlflow()

    def _start_mlflow(self) -> None:
        mlflow = self._mlflow
        mlflow.set_tracking_uri(self.cfg.runtime.mlflow)
        mlflow.set_experiment(self.cfg.runtime.mlflow_experiment)
        id_file = self.run_dir / MLFLOW_RUN_ID_FILE
        if id_file.is_file():  # a resumed run continues its MLflow run
            mlflow.start_run(run_id=id_file.read_text().strip())
            return
        run = mlflow.start_run(run_name=self.cfg.name)
        id_file.write_text(run.info.run_id)
        params = sorted(flat_config(self.cfg).items())
        for start in range(0, len(params), MLFLOW_PARAMS_PER_CALL):
            mlflow.log_params(dict(params[start : start + MLFLOW_PARAMS_PER_CALL]))

    def log_round(self, row: dict[str, Any]) -> None:
        scalars = scalar_metrics(row)
        if self._writer is not None:
            for tag, value in scalars.items():
                self._writer.add_scalar(tag, value, global_step=row["round"])
        if self._mlflow is not None:
            self._mlflow.log_metrics(scalars, step=row["round"])

    def finish(self, status: str) -> None:
        """Flush TensorBoard; give MLflow the report and run directory, and end its run."""
        if self._writer is not None:
            self._writer.close()
        if self._mlflow is not None:
            self._write_report()
            self._mlflow.log_artifacts(str(self.run_dir), artifact_path="run")
            self._mlflow.end_run(status=MLFLOW_STATUS.get(status, "FAILED"))

    def _write_report(self) -> None:
        from simulator.report import write_report

        try:
            write_report([self.run_dir], self.run_dir)
        except FedsimError as exc:  # e.g. stopped before its first round: log the rest anyway
            log.warning("no report for MLflow: %s", exc)
