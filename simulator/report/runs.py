"""What a report reads from a run directory: ``RunRecord`` and ``load_run``, and the
numbers derived from a run's rows (series to chart, the summary table's values).

Only the run directory's files are read -- ``config.yaml``, ``metrics.jsonl``,
``summary.json`` and, when present, ``clients.jsonl`` and ``prune.json`` -- never live
simulation objects. A crash may leave ``summary.json`` missing or the last line of
``metrics.jsonl`` half-written: the half line is skipped and the summary is derived
from the rows; ``clients.jsonl`` is read the same way.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.errors import FedsimError
from simulator.config.loading import read_yaml
from simulator.config.yaml_input import one_line
from simulator.rundir.checkpoints import load_model
from simulator.rundir.directory import running_pid
from simulator.rundir.files import read_json
from simulator.rundir.metrics import read_metrics
from simulator.rundir.summary import read_summary


@dataclass(frozen=True)
class RunRecord:
    """Everything the report reads from one run directory.

    ``rows`` are the metrics.jsonl objects sorted by ``round``, one per round
    (a round logged twice, e.g. after a resume, keeps its last row).
    ``config`` and ``summary`` are empty dicts when their file is missing.
    ``client_evals`` are the clients.jsonl objects (one per client evaluation:
    round, client, num_samples, accuracy, loss), empty without federated evaluation.
    """

    name: str
    run_dir: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    client_evals: list[dict[str, Any]] = field(default_factory=list)
    running_pid: int | None = None  # a fedsim process is still writing this run


def load_run(run_dir: Path) -> RunRecord:
    """Read one run directory; raise FedsimError if it has no usable metrics."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FedsimError(f"run directory not found: {run_dir}")
    _check_model(run_dir / "model.safetensors")
    config = _read_config(run_dir / "config.yaml")
    summary = read_summary(run_dir)  # {} when missing or cut short by a crash: rows fill in
    rows = _read_metrics(run_dir / "metrics.jsonl")
    client_evals = _read_client_evals(run_dir / "clients.jsonl")
    name = summary.get("name") or config.get("name") or run_dir.name
    return RunRecord(str(name), run_dir, config, rows, summary, client_evals, running_pid(run_dir))


def _check_model(path: Path) -> None:
    """A report is of the run that made it: a final model altered since is refused."""
    if os.path.lexists(path):
        try:
            load_model(path)
        except FedsimError as exc:
            raise FedsimError(f"{exc}; remove it to report the metrics alone") from None


def _read_config(path: Path) -> dict[str, Any]:
    return read_yaml(path, follow_links=False) if os.path.lexists(path) else {}


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """Parse metrics.jsonl (a truncated last line is skipped); dedupe by round."""
    if not os.path.lexists(path):
        raise FedsimError(f"no metrics.jsonl in run directory {path.parent} (looked for {path})")
    by_round: dict[int, dict[str, Any]] = {}
    for row in read_metrics(path):
        if _valid_row(row) is None:
            raise FedsimError(f"{path}: a row is not a JSON object with an integer 'round': {row!r}")
        by_round[row["round"]] = row
    if not by_round:
        raise FedsimError(f"{path}: no valid metrics rows")
    return [by_round[r] for r in sorted(by_round)]


def _read_client_evals(path: Path) -> list[dict[str, Any]]:
    """Parse clients.jsonl ([] when absent; a truncated last line is skipped)."""
    if not os.path.lexists(path):
        return []
    rows = read_metrics(path)
    for row in rows:
        if (
            _valid_row(row) is None
            or not isinstance(row.get("client"), int)
            or (metric(row, "accuracy") is None and "accuracy" in row)
            or ("accuracy" not in row and not isinstance(row.get("loss"), (int, float)))
        ):
            raise FedsimError(
                f"{path}: a row is not a JSON object with integer 'round' and 'client' "
                f"and a numeric 'accuracy' (regression: 'loss'): {row!r}"
            )
    return rows


def _valid_row(row: Any) -> dict[str, Any] | None:
    if not isinstance(row, dict):
        return None
    rnd = row.get("round")
    if not isinstance(rnd, int) or isinstance(rnd, bool):
        return None
    return row


def metric(row: dict[str, Any], key: str) -> float | None:
    """A row's numeric metric, or None if absent, null or not finite."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def rounds_to_target(rows: list[dict[str, Any]], target: float) -> int | None:
    """First round whose test_accuracy >= target, or None if never reached.

    rows: metrics rows sorted by round (as in ``RunRecord.rows``).
    """
    for row in rows:
        acc = metric(row, "test_accuracy")
        if acc is not None and acc >= target:
            return int(row["round"])
    return None


def simulated_time_to_target(rows: list[dict[str, Any]], target: float) -> float | None:
    """Simulated seconds at the first evaluation with test_accuracy >= target, or None
    (never reached, or the run kept no simulated clock)."""
    for row in rows:
        acc, elapsed = metric(row, "test_accuracy"), metric(row, "simulated_elapsed")
        if acc is not None and acc >= target:
            return elapsed
    return None


def series(run: RunRecord, key: str, x: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of rows where `key` was measured; x is the round, cumulative seconds or
    cumulative MiB moved (up + down)."""
    xs: list[float] = []
    ys: list[float] = []
    elapsed, moved = 0.0, 0.0
    for row in run.rows:
        elapsed += metric(row, "seconds") or 0.0
        moved += ((metric(row, "bytes_up") or 0.0) + (metric(row, "bytes_down") or 0.0)) / 2**20
        y = metric(row, key)
        if y is not None:
            xs.append({"round": float(row["round"]), "time": elapsed, "bytes": moved}[x])
            ys.append(y)
    return xs, ys


@dataclass(frozen=True)
class RunStats:
    """Summary-table values: as found in summary.json (any JSON type) or derived."""

    final_acc: Any
    best_acc: Any
    best_round: Any
    rounds_completed: Any
    total_seconds: Any
    bytes_up: Any
    bytes_down: Any
    status: Any


def has_accuracy(run: RunRecord) -> bool:
    """Whether the run measures accuracy: a regression run's rows carry no test_accuracy."""
    return any("test_accuracy" in row for row in run.rows)


def run_stats(run: RunRecord) -> RunStats:
    """summary.json's numbers, each falling back to one derived from the rows; a regression
    run's final and best are its test loss (lowest is best)."""
    s = run.summary
    if not has_accuracy(run):
        rounds, losses = series(run, "test_loss", "round")
        best = min(range(len(losses)), key=lambda i: (losses[i], i), default=None)
        final = s.get("final_test_loss", losses[-1] if losses else None)
        best_score = s.get("best_test_loss", None if best is None else losses[best])
    else:
        rounds, accs = series(run, "test_accuracy", "round")
        best = max(range(len(accs)), key=lambda i: (accs[i], -i), default=None)
        final = s.get("final_test_accuracy", accs[-1] if accs else None)
        best_score = s.get("best_test_accuracy", None if best is None else accs[best])
    return RunStats(
        final_acc=final,
        best_acc=best_score,
        best_round=s.get("best_round", None if best is None else int(rounds[best])),
        rounds_completed=s.get("rounds_completed", run.rows[-1]["round"]),
        total_seconds=s.get("total_seconds", _total(run, "seconds")),
        bytes_up=s.get("total_bytes_up", _total(run, "bytes_up")),
        bytes_down=s.get("total_bytes_down", _total(run, "bytes_down")),
        status=(
            f"still running (pid {run.running_pid}, round {run.rows[-1]['round']})"
            if run.running_pid is not None
            else s.get("status", "incomplete (no readable summary.json)")
        ),
    )


def _total(run: RunRecord, key: str) -> float:
    return sum(metric(row, key) or 0.0 for row in run.rows)


def run_labels(runs: list[RunRecord]) -> list[str]:
    """Legend labels: the run name, plus the directory name when names clash."""
    counts = Counter(run.name for run in runs)
    labels = [f"{r.name} ({r.run_dir.name})" if counts[r.name] > 1 else r.name for r in runs]
    clashes = Counter(labels)
    return [f"{lab} #{i + 1}" if clashes[lab] > 1 else lab for i, lab in enumerate(labels)]


def logs(run: RunRecord, key: str) -> bool:
    return any(key in row for row in run.rows)


def prune_results(run: RunRecord) -> dict[str, Any] | None:
    path = run.run_dir / "prune.json"
    if not os.path.lexists(path):
        return None
    try:
        return read_json(path, limit=64 << 20)
    except (ValueError, RecursionError) as exc:
        raise FedsimError(f"{path}: unreadable prune results: {one_line(str(exc), 200)}") from None
