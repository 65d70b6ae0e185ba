"""Charts and a self-contained HTML summary of one or more runs.

Plots are made from a run directory's files only -- ``config.yaml``,
``metrics.jsonl``, ``summary.json`` and, when present, ``clients.jsonl``
(per-client federated evaluations) and ``prune.json`` -- never from live
simulation objects, so a report can be drawn for a finished run, a crashed
run, or runs made on another machine. A crash may leave ``summary.json``
missing or the last line of ``metrics.jsonl`` half-written: the half line is
skipped and the summary is derived from the rows; ``clients.jsonl`` is read
the same way. Everything is rendered in memory first and each file is then
written atomically, so a failed report never leaves a half-written
``report.html``.

Public API: :func:`write_report`, :func:`load_run`, :class:`RunRecord`,
:func:`rounds_to_target`.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from clients.errors import FedsimError
from simulator.config.loading import read_yaml
from simulator.config.schema import Config
from simulator.config.yaml_input import one_line
from simulator.rundir.checkpoints import load_model
from simulator.rundir.directory import running_pid
from simulator.rundir.files import atomic_write_bytes, read_json
from simulator.rundir.metrics import read_metrics
from simulator.rundir.summary import read_summary

DPI = 110  # chart resolution, dots per inch
FIGSIZE = (7.5, 4.6)  # chart size, inches
MARKER_MAX_POINTS = 30  # draw point markers when a curve has at most this many
# Metrics logged as fractions in [0, 1] and charted as percentages.
PERCENT_KEYS = frozenset(
    {"test_accuracy", "federated_accuracy", "federated_accuracy_worst10", "clipped_fraction"}
)
REPORT_NAME = "report.html"


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


@dataclass(frozen=True)
class _Panel:
    """One chart: which metric family (``accuracy``/``loss``) against which x."""

    panel_id: str
    filename: str
    title: str
    y: str  # "accuracy" | "loss"
    x: str  # "round" | "time" | "bytes"


PANELS = (
    _Panel(
        "panel-accuracy-vs-bytes",
        "accuracy_vs_bytes.png",
        "Test accuracy against traffic (what clients would send and receive)",
        "accuracy",
        "bytes",
    ),
    _Panel(
        "panel-accuracy-vs-round",
        "accuracy_vs_round.png",
        "Test accuracy per round",
        "accuracy",
        "round",
    ),
    _Panel(
        "panel-loss-vs-round",
        "loss_vs_round.png",
        "Loss per round (test solid, train dashed)",
        "loss",
        "round",
    ),
    _Panel(
        "panel-accuracy-vs-time",
        "accuracy_vs_time.png",
        "Test accuracy against wall-clock time",
        "accuracy",
        "time",
    ),
    _Panel(
        "panel-loss-vs-time",
        "loss_vs_time.png",
        "Loss against wall-clock time (test solid, train dashed)",
        "loss",
        "time",
    ),
)


# ---------------------------------------------------------------- loading


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
            or (_metric(row, "accuracy") is None and "accuracy" in row)
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


# ---------------------------------------------------------------- derived numbers


def _metric(row: dict[str, Any], key: str) -> float | None:
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
        acc = _metric(row, "test_accuracy")
        if acc is not None and acc >= target:
            return int(row["round"])
    return None


def simulated_time_to_target(rows: list[dict[str, Any]], target: float) -> float | None:
    """Simulated seconds at the first evaluation with test_accuracy >= target, or None
    (never reached, or the run kept no simulated clock)."""
    for row in rows:
        acc, elapsed = _metric(row, "test_accuracy"), _metric(row, "simulated_elapsed")
        if acc is not None and acc >= target:
            return elapsed
    return None


def _series(run: RunRecord, key: str, x: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of rows where `key` was measured; x is the round, cumulative seconds or
    cumulative MiB moved (up + down)."""
    xs: list[float] = []
    ys: list[float] = []
    elapsed, moved = 0.0, 0.0
    for row in run.rows:
        elapsed += _metric(row, "seconds") or 0.0
        moved += ((_metric(row, "bytes_up") or 0.0) + (_metric(row, "bytes_down") or 0.0)) / 2**20
        y = _metric(row, key)
        if y is not None:
            xs.append({"round": float(row["round"]), "time": elapsed, "bytes": moved}[x])
            ys.append(y)
    return xs, ys


@dataclass(frozen=True)
class _RunStats:
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


def _run_stats(run: RunRecord) -> _RunStats:
    """summary.json's numbers, each falling back to one derived from the rows; a regression
    run's final and best are its test loss (lowest is best)."""
    s = run.summary
    if not has_accuracy(run):
        rounds, losses = _series(run, "test_loss", "round")
        best = min(range(len(losses)), key=lambda i: (losses[i], i), default=None)
        final = s.get("final_test_loss", losses[-1] if losses else None)
        best_score = s.get("best_test_loss", None if best is None else losses[best])
    else:
        rounds, accs = _series(run, "test_accuracy", "round")
        best = max(range(len(accs)), key=lambda i: (accs[i], -i), default=None)
        final = s.get("final_test_accuracy", accs[-1] if accs else None)
        best_score = s.get("best_test_accuracy", None if best is None else accs[best])
    return _RunStats(
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
    return sum(_metric(row, key) or 0.0 for row in run.rows)


def _labels(runs: list[RunRecord]) -> list[str]:
    """Legend labels: the run name, plus the directory name when names clash."""
    counts = Counter(run.name for run in runs)
    labels = [f"{r.name} ({r.run_dir.name})" if counts[r.name] > 1 else r.name for r in runs]
    clashes = Counter(labels)
    return [f"{lab} #{i + 1}" if clashes[lab] > 1 else lab for i, lab in enumerate(labels)]


# ---------------------------------------------------------------- charts


def _colour(i: int, n: int) -> str:
    """One distinct colour per run: tab10 up to 10 runs, tab20 beyond."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return to_hex(cmap(i % cmap.N))


def _new_axes() -> tuple[Figure, Axes]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="tight")
    return fig, fig.add_subplot()


def _finish(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    """Title, axis labels, grid and (when something was drawn) a legend."""
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.tick_params(labelsize=9)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9, loc="best")


def _draw(ax: Axes, run: RunRecord, key: str, x: str, style: dict[str, Any]) -> None:
    xs, ys = _series(run, key, x)
    if not xs:
        return
    if key in PERCENT_KEYS:
        ys = [100.0 * y for y in ys]
    marker = "o" if len(xs) <= MARKER_MAX_POINTS else None
    ax.plot(xs, ys, marker=marker, markersize=4, linewidth=1.6, **style)


def _plot_runs(ax: Axes, panel: _Panel, runs: list[RunRecord], labels: list[str]) -> None:
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        colour = _colour(i, len(runs))
        if panel.y == "accuracy":
            _draw(ax, run, "test_accuracy", panel.x, {"color": colour, "label": label})
            continue
        _draw(
            ax,
            run,
            "test_loss",
            panel.x,
            {"color": colour, "linestyle": "-", "label": f"{label} (test)"},
        )
        _draw(
            ax,
            run,
            "train_loss",
            panel.x,
            {"color": colour, "linestyle": "--", "label": f"{label} (train)"},
        )


def _decorate(ax: Axes, panel: _Panel) -> None:
    ax.set_title(panel.title, fontsize=13)
    xlabel = {
        "round": "Round",
        "time": "Cumulative wall-clock time (s)",
        "bytes": "Cumulative traffic, up + down (MiB)",
    }
    ax.set_xlabel(xlabel[panel.x], fontsize=11)
    ax.set_ylabel("Test accuracy (%)" if panel.y == "accuracy" else "Loss", fontsize=11)
    ax.tick_params(labelsize=10)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=10, loc="best")
    else:
        ax.text(
            0.5,
            0.5,
            "no evaluated rounds",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=11,
            color="grey",
        )


def _render_panel(panel: _Panel, runs: list[RunRecord], labels: list[str]) -> bytes:
    """One chart as PNG bytes (a Figure of its own: no pyplot global state)."""
    fig, ax = _new_axes()
    _plot_runs(ax, panel, runs, labels)
    _decorate(ax, panel)
    return _png(fig)


# ---------------------------------------------------------------- optional panels


def _runs_with(runs: list[RunRecord], labels: list[str], keep) -> list[tuple[RunRecord, str]]:
    """(run, label) of the runs an optional panel has something to draw for."""
    return [(run, label) for run, label in zip(runs, labels, strict=True) if keep(run)]


def _logs(run: RunRecord, key: str) -> bool:
    return any(key in row for row in run.rows)


def _flow_rows(run: RunRecord) -> list[tuple[int, dict[str, dict[str, float]]]]:
    return [(r["round"], r["gradient_flow"]) for r in run.rows if r.get("gradient_flow")]


def _layer_order(runs: list[RunRecord]) -> list[str]:
    layers: list[str] = []
    for run in runs:
        for _, flow in _flow_rows(run):
            layers += [name for name in flow if name not in layers]
    return layers


def _gradient_flow_over_rounds(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """One subplot per run that tracked gradients: each layer's mean |dL/dθ| per round."""
    tracked = _runs_with(runs, labels, lambda run: bool(_flow_rows(run)))
    if not tracked:
        return None
    layers = _layer_order(runs)
    fig = Figure(figsize=(FIGSIZE[0], 2.6 * len(tracked) + 0.6), dpi=DPI, layout="tight")
    axes = fig.subplots(len(tracked), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (run, label) in zip(axes, tracked, strict=True):
        rows = _flow_rows(run)
        for i, layer in enumerate(layers):
            points = [(rnd, flow[layer]["grad_norm"]) for rnd, flow in rows if layer in flow]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, color=_colour(i, len(layers)), label=layer, linewidth=1.6)
        ax.set_yscale("log")
        ax.set_title(f"{label}: parameter-gradient norm per layer", fontsize=11)
        ax.set_ylabel("mean |dL/dθ| (log)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, ncol=min(len(layers), 6), loc="best")
    axes[-1].set_xlabel("Round", fontsize=10)
    return fig


def _gradient_flow_last_round(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Grouped bars: each layer's |dL/dθ| in each run's last tracked round (log scale)."""
    tracked = _runs_with(runs, labels, lambda run: bool(_flow_rows(run)))
    if not tracked:
        return None
    layers = _layer_order(runs)
    fig, ax = _new_axes()
    width = 0.8 / len(tracked)
    for j, (run, label) in enumerate(tracked):
        last = _flow_rows(run)[-1][1]
        heights = [last[layer]["grad_norm"] if layer in last else float("nan") for layer in layers]
        xs = [i + (j - (len(tracked) - 1) / 2) * width for i in range(len(layers))]
        ax.bar(xs, heights, width=width, color=_colour(j, len(tracked)), label=label)
    ax.set_xticks(range(len(layers)), layers, rotation=45 if len(layers) > 6 else 0, fontsize=9)
    ax.set_yscale("log")
    ax.set_xlabel("Layer (input → output)", fontsize=10)
    ax.set_ylabel("mean |dL/dθ| (log)", fontsize=10)
    ax.set_title("Gradient flow in the last round, per layer", fontsize=12)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=9)
    return fig


def _prune_results(run: RunRecord) -> dict[str, Any] | None:
    path = run.run_dir / "prune.json"
    if not os.path.lexists(path):
        return None
    try:
        return read_json(path, limit=64 << 20)
    except (ValueError, RecursionError) as exc:
        raise FedsimError(f"{path}: unreadable prune results: {one_line(str(exc), 200)}") from None


def _prune_accuracy_figure(prune: dict[str, Any], title: str) -> Figure:
    """Test accuracy (a regression run's: test loss) against sparsity, one line per method
    (dashed: after fine-tuning)."""
    key, scale = ("test_accuracy", 100) if "test_accuracy" in prune["baseline"] else ("test_loss", 1)
    fig, ax = _new_axes()
    methods = list(dict.fromkeys(r["method"] for r in prune["results"]))
    for i, method in enumerate(methods):
        rows = sorted((r for r in prune["results"] if r["method"] == method), key=lambda r: r["sparsity"])
        xs = [100 * r["sparsity"] for r in rows]
        colour = _colour(i, len(methods))
        ax.plot(xs, [scale * r[key] for r in rows], marker="o", color=colour, label=method)
        if rows and f"finetuned_{key}" in rows[0]:
            tuned = [scale * r[f"finetuned_{key}"] for r in rows]
            ax.plot(xs, tuned, marker="o", linestyle="--", color=colour, label=f"{method}, fine-tuned")
    ax.axhline(scale * prune["baseline"][key], color="grey", linestyle=":", label="unpruned")
    ax.set_xlabel("Sparsity (% of weights pruned)", fontsize=10)
    ax.set_ylabel("Test accuracy (%)" if scale == 100 else "Test loss", fontsize=10)
    ax.set_title(title, fontsize=12)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    return fig


def _prune_layers_figure(prune: dict[str, Any], title: str) -> Figure:
    """Per-layer density at the highest sparsity, one bar group per method."""
    top = max(r["sparsity"] for r in prune["results"])
    rows = [r for r in prune["results"] if r["sparsity"] == top]
    layers = list(rows[0]["layer_density"]) if rows else []
    fig, ax = _new_axes()
    width = 0.8 / max(len(rows), 1)
    for j, row in enumerate(rows):
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(layers))]
        heights = [100 * row["layer_density"][layer] for layer in layers]
        ax.bar(xs, heights, width=width, color=_colour(j, len(rows)), label=row["method"])
    ax.set_xticks(range(len(layers)), layers, rotation=45 if len(layers) > 4 else 0, fontsize=9)
    ax.set_xlabel("Layer", fontsize=10)
    ax.set_ylabel("Weights kept (%)", fontsize=10)
    ax.set_title(f"{title} at {100 * top:g}% sparsity", fontsize=12)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=9)
    return fig


PRUNE_CHARTS = (
    ("prune_accuracy.png", _prune_accuracy_figure, "Accuracy against sparsity"),
    ("prune_layers.png", _prune_layers_figure, "Per-layer density"),
)


def write_prune_charts(prune: dict[str, Any], out_dir: Path) -> list[Path]:
    """The `fedsim prune` charts as PNG files in ``out_dir``."""
    paths = []
    for filename, draw, title in PRUNE_CHARTS:
        if "test_accuracy" not in prune["baseline"]:  # a regression run's: loss
            title = title.replace("Accuracy", "Loss")
        path = Path(out_dir) / filename
        atomic_write_bytes(path, _png(draw(prune, title)))
        paths.append(path)
    return paths


def _first_prune(runs: list[RunRecord], labels: list[str]):
    for run, label in zip(runs, labels, strict=True):
        prune = _prune_results(run)
        if prune is not None:
            return prune, label
    return None, None


def _prune_accuracy_panel(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    prune, label = _first_prune(runs, labels)
    if prune is None:
        return None
    score = "accuracy" if "test_accuracy" in prune["baseline"] else "loss"
    return _prune_accuracy_figure(prune, f"{label}: {score} against sparsity")


def _prune_layers_panel(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    prune, label = _first_prune(runs, labels)
    return None if prune is None else _prune_layers_figure(prune, f"{label}: per-layer density")


def _density_over_rounds(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Density of the pruned model per round, for runs that pruned while training."""
    tracked = _runs_with(runs, labels, lambda run: _logs(run, "density"))
    if not tracked:
        return None
    fig, ax = _new_axes()
    for i, (run, label) in enumerate(tracked):
        points = [(row["round"], 100 * row["density"]) for row in run.rows if "density" in row]
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, color=_colour(i, len(tracked)), label=label, linewidth=1.8)
    _finish(ax, "Model density over rounds (pruning in the pipeline)", "Round", "Weights kept (%)")
    return fig


def _accuracy_vs_simulated_time(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Test accuracy against simulated time: sync rounds and async steps side by side."""
    tracked = _runs_with(runs, labels, lambda run: _logs(run, "simulated_elapsed") and has_accuracy(run))
    if not tracked:
        return None
    fig, ax = _new_axes()
    for i, (run, label) in enumerate(tracked):
        points = [
            (row["simulated_elapsed"], 100 * row["test_accuracy"])
            for row in run.rows
            if row.get("test_accuracy") is not None and "simulated_elapsed" in row
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, color=_colour(i, len(tracked)), label=label, linewidth=1.8)
    xlabel = "Simulated time (s): clients' work over their speeds (sync rounds wait for the slowest)"
    _finish(ax, "Test accuracy against simulated time", xlabel, "Test accuracy (%)")
    return fig


def _staleness_counts(run: RunRecord) -> list[int]:
    """Arrivals at each staleness over all of an async run's server steps ([] for sync)."""
    total: list[int] = []
    for row in run.rows:
        counts = row.get("staleness_histogram")
        if not isinstance(counts, list):
            continue
        total += [0] * (len(counts) - len(total))
        for s, c in enumerate(counts):
            total[s] += c if isinstance(c, int) else 0
    return total


def _staleness(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Bars per async run: the share of its updates that arrived s steps stale."""
    counted = [(_staleness_counts(run), label) for run, label in zip(runs, labels, strict=True)]
    tracked = [(counts, label) for counts, label in counted if sum(counts)]
    if not tracked:
        return None
    fig, ax = _new_axes()
    width = 0.8 / len(tracked)
    for i, (counts, label) in enumerate(tracked):
        total = sum(counts)
        mean = sum(s * c for s, c in enumerate(counts)) / total
        xs = np.arange(len(counts)) + (i - (len(tracked) - 1) / 2) * width
        shares = [100.0 * c / total for c in counts]
        caption = f"{label}: {total} updates, mean {mean:.2f}, max {len(counts) - 1}"
        ax.bar(xs, shares, width=width, color=_colour(i, len(tracked)), label=caption)
    ax.xaxis.get_major_locator().set_params(integer=True)
    title = "Async: staleness of the updates the server applied"
    _finish(ax, title, "Staleness (server steps since the client's model)", "Updates (%)")
    return fig


@dataclass(frozen=True)
class _Line:
    """One metric drawn over rounds in a rounds chart; every run draws it in its own colour."""

    key: str
    linestyle: str = "-"
    suffix: str = ""  # appended to the run's legend label


@dataclass(frozen=True)
class _Axis:
    """One subplot of a rounds chart: its y label and the metrics sharing its y axis."""

    ylabel: str
    lines: tuple[_Line, ...]


def _measured(run: RunRecord, axes: tuple[_Axis, ...]) -> bool:
    return any(_series(run, line.key, "round")[0] for axis in axes for line in axis.lines)


def _rounds_chart(
    runs: list[RunRecord], labels: list[str], title: str, axes: tuple[_Axis, ...]
) -> Figure | None:
    """Metrics against the round, one subplot per `_Axis`; None if no run measured any of them."""
    tracked = _runs_with(runs, labels, lambda run: _measured(run, axes))
    if not tracked:
        return None
    fig = Figure(figsize=(FIGSIZE[0], 3.0 * len(axes) + 1.0), dpi=DPI, layout="tight")
    subplots = fig.subplots(len(axes), 1, sharex=True, squeeze=False)[:, 0]
    for k, (ax, axis) in enumerate(zip(subplots, axes, strict=True)):
        for i, (run, label) in enumerate(tracked):
            for line in axis.lines:
                style = {"color": _colour(i, len(tracked)), "linestyle": line.linestyle}
                _draw(ax, run, line.key, "round", {**style, "label": f"{label}{line.suffix}"})
        ax.xaxis.get_major_locator().set_params(integer=True)
        # Subplots share the x axis: one title on top, one "Round" label at the bottom.
        _finish(ax, title if k == 0 else "", "Round" if k == len(axes) - 1 else "", axis.ylabel)
    return fig


def _mean_and_max(title: str, ylabel: str, prefix: str):
    """A rounds chart of the metrics ``{prefix}_mean`` (solid) and ``{prefix}_max`` (dashed)."""
    lines = (_Line(f"{prefix}_mean", "-", " (mean)"), _Line(f"{prefix}_max", "--", " (max)"))
    return functools.partial(
        _rounds_chart, title=f"{title} (mean solid, max dashed)", axes=(_Axis(ylabel, lines),)
    )


_update_norms = _mean_and_max("Client update norms per round", "L2 norm of a client's update", "update_norm")

_clipping = functools.partial(
    _rounds_chart,
    title="Update clipping per round",
    axes=(
        _Axis("Updates clipped (% of clients)", (_Line("clipped_fraction"),)),
        _Axis("Clipping bound (L2 norm)", (_Line("clip_norm"),)),
    ),
)

_epsilon = functools.partial(
    _rounds_chart,
    title="Privacy spent: ε after each round (at the configured δ)",
    axes=(_Axis("ε (cumulative privacy loss)", (_Line("epsilon"),)),),
)

_staleness_over_steps = _mean_and_max(
    "Async: staleness per server step", "Staleness (server steps)", "staleness"
)


def _federated_chart(measure: str, label: str):
    """A chart of federated evaluation's ``measure`` (accuracy or loss): sample-weighted
    over the evaluated clients, and their worst 10% dashed."""
    return functools.partial(
        _rounds_chart,
        title=f"Federated evaluation: {measure} on clients' own data (worst 10% dashed)",
        axes=(
            _Axis(
                label,
                (
                    _Line(f"federated_{measure}", "-", " (sample-weighted)"),
                    _Line(f"federated_{measure}_worst10", "--", " (worst 10%)"),
                ),
            ),
        ),
    )


_federated_accuracy = _federated_chart("accuracy", "Accuracy on evaluated clients (%)")
_federated_loss_chart = _federated_chart("loss", "Loss on evaluated clients")


def _federated_loss(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Regression runs' federated evaluation (they have no accuracy chart to show it)."""
    tracked = _runs_with(runs, labels, lambda run: not has_accuracy(run))
    return _federated_loss_chart([r for r, _ in tracked], [lab for _, lab in tracked]) if tracked else None


def _overlaid_histograms(ax: Axes, captioned: list[tuple[list[float], str]], bins: Any) -> None:
    """One translucent histogram per run (values, legend caption), counts on the y axis."""
    for i, (values, caption) in enumerate(captioned):
        colour = _colour(i, len(captioned))
        ax.hist(values, bins=bins, color=colour, alpha=0.35, edgecolor=colour, linewidth=1.5, label=caption)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.margins(y=0.25)  # headroom above the tallest bar for the legend


def _participation_counts(run: RunRecord) -> list[int]:
    """Rounds each client trained in, for every client id (never-sampled clients count 0);
    [] when the run did not log which clients trained."""
    rounds = [row["clients"] for row in run.rows if isinstance(row.get("clients"), list)]
    if not rounds:
        return []
    counts = Counter(client for ids in rounds for client in ids)
    num_clients = _config_value(run.config, "data.num_clients")
    population = max(num_clients if isinstance(num_clients, int) else 0, max(counts, default=-1) + 1)
    return [counts.get(client, 0) for client in range(population)]


def _participation(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Histogram per run: how many clients trained in 0, 1, 2, ... rounds."""
    pairs = zip((_participation_counts(run) for run in runs), labels, strict=True)
    tracked = [(counts, label) for counts, label in pairs if counts]
    if not tracked:
        return None
    fig, ax = _new_axes()
    bins = np.arange(-0.5, max(max(counts) for counts, _ in tracked) + 1.5)
    captioned = []
    for counts, label in tracked:
        spread = f"min {min(counts)}, max {max(counts)}, mean {np.mean(counts):.1f}"
        captioned.append((counts, f"{label}: {spread} over {len(counts)} clients"))
    _overlaid_histograms(ax, captioned, bins)
    ax.xaxis.get_major_locator().set_params(integer=True)
    title = "Client participation: rounds each client trained"
    _finish(ax, title, "Rounds participated", "Number of clients")
    return fig


def _last_evaluation(run: RunRecord) -> tuple[int, list[float]] | None:
    """(round, per-client accuracies in %) of the run's last federated evaluation, or None."""
    if not run.client_evals or not has_accuracy(run):
        return None
    last = max(row["round"] for row in run.client_evals)
    return last, [100.0 * row["accuracy"] for row in run.client_evals if row["round"] == last]


def _spread(run: RunRecord, rnd: int, accs: list[float]) -> tuple[float, float]:
    """(std, worst-10% mean) in %: the metrics row's when logged, else from the client rows."""
    row = next((r for r in run.rows if r["round"] == rnd), {})
    worst = sorted(accs)[: max(1, math.ceil(len(accs) / 10))]  # as federated evaluation logs it
    std, worst10 = _metric(row, "federated_accuracy_std"), _metric(row, "federated_accuracy_worst10")
    return (
        float(np.std(accs)) if std is None else 100.0 * std,
        float(np.mean(worst)) if worst10 is None else 100.0 * worst10,
    )


def _client_accuracy(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Histogram per run of the per-client accuracy at its last federated evaluation."""
    pairs = zip(runs, labels, (_last_evaluation(run) for run in runs), strict=True)
    tracked = [(run, label, evaluation) for run, label, evaluation in pairs if evaluation]
    if not tracked:
        return None
    fig, ax = _new_axes()
    every = [acc for _, _, (_, accs) in tracked for acc in accs]
    bins = np.linspace(min(every), max(every), 21) if max(every) > min(every) else 20
    captioned = []
    for run, label, (rnd, accs) in tracked:
        std, worst10 = _spread(run, rnd, accs)
        captioned.append((accs, f"{label}, round {rnd}: std {std:.1f} pp, worst 10% {worst10:.1f}%"))
    _overlaid_histograms(ax, captioned, bins)
    title = "Fairness: per-client accuracy at the last federated evaluation"
    _finish(ax, title, "Accuracy on the client's held-out data (%)", "Number of clients")
    return fig


PERSONAL_MODELS = (("accuracy", "global model"), ("personal_accuracy", "personalized"),
                   ("finetuned_accuracy", "global, fine-tuned"))  # fmt: skip


def _last_personal_evaluation(run: RunRecord) -> dict[str, list[float]]:
    """Per model kind, the per-client accuracies (%) at the run's last federated evaluation
    that measured a personalized or fine-tuned model ({} when none did)."""
    rounds = [r["round"] for r in run.client_evals if "personal_accuracy" in r or "finetuned_accuracy" in r]
    if not rounds:
        return {}
    last = [r for r in run.client_evals if r["round"] == max(rounds)]
    return {
        key: [100.0 * r[key] for r in last if isinstance(r.get(key), (int, float))]
        for key, _ in PERSONAL_MODELS
        if any(key in r for r in last)
    }


def _worst_tenth(values: list[float]) -> float:
    return float(np.mean(sorted(values)[: max(1, math.ceil(len(values) / 10))]))


def _personalization(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Per run, box plots of per-client accuracy under the global model, each client's
    personalized model and the fine-tuned global model, with mean and worst 10%."""
    evaluated = [(label, _last_personal_evaluation(run)) for run, label in zip(runs, labels, strict=True)]
    evaluated = [(label, kinds) for label, kinds in evaluated if kinds]
    if not evaluated:
        return None
    fig, ax = _new_axes()
    ticks, tick_labels, drawn = [], [], set()
    for i, (label, kinds) in enumerate(evaluated):
        for j, (key, _) in enumerate(PERSONAL_MODELS):
            values = kinds.get(key)
            if not values:
                continue
            x = i * (len(PERSONAL_MODELS) + 1) + j
            colour = _colour(j, len(PERSONAL_MODELS))
            box = ax.boxplot([values], positions=[x], widths=0.7, patch_artist=True, showmeans=True)
            box["boxes"][0].set(facecolor=colour, alpha=0.45)
            drawn.add(j)
            summary = f"{np.mean(values):.1f} / {_worst_tenth(values):.1f}"
            ax.annotate(summary, (x, 3), ha="center", va="bottom", rotation=90, fontsize=7)
        ticks.append(i * (len(PERSONAL_MODELS) + 1) + 1)
        tick_labels.append(label)
    ax.set_xticks(ticks, tick_labels)
    ax.set_ylim(0, 102)
    title = "Personalization: per-client accuracy on own held-out data"
    xlabel = "Run (each box: clients at the last evaluation; written: mean / worst 10%, triangle: mean)"
    _finish(ax, title, xlabel, "Client accuracy (%)")
    for j in sorted(drawn):
        ax.plot([], [], "s", color=_colour(j, len(PERSONAL_MODELS)), label=PERSONAL_MODELS[j][1])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(drawn), fontsize=9)
    return fig


def _config_value(config: dict[str, Any], dotted: str) -> Any:
    """config["a"]["b"] for "a.b"; the fedsim default when the run's config lacks it."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _default_settings().get(dotted)
        node = node[part]
    return node


# ---------------------------------------------------------------- config differences

# Settings every run sets to its own value: listing them would hide the interesting ones.
NOT_COMPARED = frozenset({"name", "runtime.out_dir"})
_ABSENT = object()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; tuples become lists, as they come back from YAML."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


@functools.cache
def _default_settings() -> dict[str, Any]:
    return _flatten(Config().to_dict())


def _differences(config: dict[str, Any]) -> list[str]:
    """``key=value`` for each setting in `config` whose value is not fedsim's default."""
    defaults = _default_settings()
    return [
        f"{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in _flatten(config).items()
        if key not in NOT_COMPARED and defaults.get(key, _ABSENT) != value
    ]


@dataclass(frozen=True)
class _OptionalPanel:
    """A chart drawn only when its metrics exist in at least one run."""

    panel_id: str
    filename: str
    title: str
    draw: Any  # (runs, labels) -> Figure | None


OPTIONAL_PANELS = (
    _OptionalPanel(
        "panel-gradient-flow",
        "gradient_flow.png",
        "Gradient flow: per-layer gradient norm over rounds",
        _gradient_flow_over_rounds,
    ),
    _OptionalPanel(
        "panel-gradient-flow-last",
        "gradient_flow_last_round.png",
        "Gradient flow in the last round",
        _gradient_flow_last_round,
    ),
    _OptionalPanel(
        "panel-prune-accuracy",
        "prune_accuracy.png",
        "Pruning: accuracy against sparsity",
        _prune_accuracy_panel,
    ),
    _OptionalPanel(
        "panel-prune-layers", "prune_layers.png", "Pruning: per-layer density", _prune_layers_panel
    ),
    _OptionalPanel("panel-density", "density.png", "Density over rounds", _density_over_rounds),
    _OptionalPanel(
        "panel-accuracy-vs-simulated-time",
        "accuracy_vs_simulated_time.png",
        "Test accuracy against simulated time",
        _accuracy_vs_simulated_time,
    ),
    _OptionalPanel("panel-staleness", "staleness.png", "Async: staleness of applied updates", _staleness),
    _OptionalPanel(
        "panel-staleness-over-steps",
        "staleness_over_steps.png",
        "Async: staleness per server step",
        _staleness_over_steps,
    ),
    _OptionalPanel(
        "panel-participation",
        "participation.png",
        "Client participation: rounds each client trained",
        _participation,
    ),
    _OptionalPanel(
        "panel-client-accuracy",
        "client_accuracy.png",
        "Fairness: per-client accuracy at the last federated evaluation",
        _client_accuracy,
    ),
    _OptionalPanel(
        "panel-personalization",
        "personalization.png",
        "Personalization: global against personalized per-client accuracy",
        _personalization,
    ),
    _OptionalPanel(
        "panel-federated-accuracy",
        "federated_accuracy.png",
        "Federated evaluation: accuracy over rounds",
        _federated_accuracy,
    ),
    _OptionalPanel(
        "panel-federated-loss",
        "federated_loss.png",
        "Federated evaluation: loss over rounds (regression)",
        _federated_loss,
    ),
    _OptionalPanel("panel-update-norms", "update_norms.png", "Client update norms", _update_norms),
    _OptionalPanel("panel-clipping", "clipping.png", "Update clipping", _clipping),
    _OptionalPanel("panel-epsilon", "epsilon.png", "Differential privacy: ε over rounds", _epsilon),
)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


# ---------------------------------------------------------------- HTML


def _fmt_pct(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    return f"{100.0 * value:.2f}%"


def _fmt_bytes(value: Any) -> str:
    """Bytes in binary units: 512 B, 1.50 KiB, 3.20 MiB, ..."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    size, i = float(value), 0
    while abs(size) >= 1024.0 and i < len(units) - 1:
        size, i = size / 1024.0, i + 1
    return f"{int(value)} B" if i == 0 else f"{size:.2f} {units[i]}"


def _fmt_seconds(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    return f"{value:.1f} s"


def _fmt(value: Any) -> str:
    return "—" if value is None else str(value)


def _fmt_epsilon(run: RunRecord) -> str:
    """The privacy spent by the end of the run: the last logged ε ("∞" without noise)."""
    eps = next((row["epsilon"] for row in reversed(run.rows) if "epsilon" in row), None)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        return _fmt(eps)
    return "∞" if math.isinf(eps) else f"{eps:.2f}"


def _fmt_differences(config: dict[str, Any]) -> str:
    if not config:
        return "— (no config.yaml)"
    return ", ".join(_differences(config)) or "none"


def _fmt_loss(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    return f"{value:.4g} (loss)"


def _table_row(run: RunRecord, label: str, target: float | None) -> str:
    st = _run_stats(run)
    score = _fmt_pct if has_accuracy(run) else _fmt_loss
    cells = [
        label,
        str(run.run_dir),
        score(st.final_acc),
        f"{score(st.best_acc)} (round {_fmt(st.best_round)})",
        _fmt(st.rounds_completed),
        _fmt_seconds(st.total_seconds),
        _fmt_bytes(st.bytes_up),
        _fmt_bytes(st.bytes_down),
        _fmt(st.status),
    ]
    if target is not None:
        reached = rounds_to_target(run.rows, target)
        cells.append("not reached" if reached is None else str(reached))
        seconds = simulated_time_to_target(run.rows, target)
        clocked = _logs(run, "simulated_elapsed")
        cells.append("—" if not clocked else "not reached" if seconds is None else f"{seconds:.4g} s")
    cells += [_fmt_epsilon(run), _fmt_differences(run.config)]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _summary_section(runs: list[RunRecord], labels: list[str], target: float | None) -> str:
    kinds = {has_accuracy(run) for run in runs}
    score = "accuracy or loss" if len(kinds) > 1 else "accuracy" if True in kinds else "loss"
    heads = [
        "Run",
        "Run directory",
        f"Final test {score}",
        f"Best test {score}",
        "Rounds completed",
        "Wall-clock",
        "Bytes up",
        "Bytes down",
        "Status",
    ]
    if target is not None:
        heads += [f"Rounds (async: steps) to {_fmt_pct(target)}", f"Simulated time to {_fmt_pct(target)}"]
    heads += ["ε (privacy)", "Differs from defaults"]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body = "\n".join(_table_row(r, lab, target) for r, lab in zip(runs, labels, strict=True))
    return (
        f'<section id="panel-summary">\n<h2>Summary</h2>\n<table>\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n</section>"
    )


def _chart_section(panel: _Panel | _OptionalPanel, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    title = html.escape(panel.title)
    return (
        f'<section id="{panel.panel_id}">\n<h2>{title}</h2>\n'
        f'<img src="data:image/png;base64,{data}" alt="{title}">\n'
        f'<p class="file">{html.escape(panel.filename)}</p>\n</section>'
    )


_CSS = """body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f2f2f2}td{max-width:36em;overflow-wrap:anywhere}img{max-width:100%}.file{color:#888;font-size:12px}"""


def _render_html(
    runs: list[RunRecord],
    labels: list[str],
    pngs: dict[str, bytes],
    target: float | None,
) -> str:
    panels = [p for p in (*PANELS, *OPTIONAL_PANELS) if p.filename in pngs]
    charts = "\n".join(_chart_section(p, pngs[p.filename]) for p in panels)
    names = html.escape(", ".join(labels))
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>fedsim report: {names}</title>\n<style>\n{_CSS}\n</style>\n</head>\n"
        f"<body>\n<h1>fedsim report</h1>\n<p>Runs: {names}</p>\n"
        f"{_summary_section(runs, labels, target)}\n{charts}\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------- writing


def write_report(run_dirs: list[Path], out_dir: Path, target_accuracy: float | None = None) -> Path:
    """Draw charts and an HTML summary of `run_dirs` into `out_dir`.

    target_accuracy: a fraction in [0, 1]; adds a "rounds to target" column.
    Writes a PNG per chart (PANELS, plus each OPTIONAL_PANELS chart whose metrics
    some run logged) and ``report.html`` (charts embedded as base64)
    and returns the path of ``report.html``. Raises FedsimError for an
    unusable run directory or target.
    """
    if not run_dirs:
        raise FedsimError("report needs at least one run directory")
    if target_accuracy is not None and not 0.0 <= target_accuracy <= 1.0:
        raise FedsimError(f"target accuracy {target_accuracy} is not a fraction in [0, 1]")
    runs = [load_run(Path(d)) for d in run_dirs]
    regression = [run for run in runs if not has_accuracy(run)]
    if target_accuracy is not None and regression:
        raise FedsimError(
            f"report --target: {regression[0].run_dir} is a regression run, which has no accuracy to reach"
        )
    labels = _labels(runs)
    # Accuracy charts only when some run measures accuracy: a regression report has none.
    measured = [p for p in PANELS if p.y != "accuracy" or len(regression) < len(runs)]
    pngs = {p.filename: _render_panel(p, runs, labels) for p in measured}
    for panel in OPTIONAL_PANELS:
        fig = panel.draw(runs, labels)
        if fig is not None:
            pngs[panel.filename] = _png(fig)
    page = _render_html(runs, labels, pngs, target_accuracy)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for filename, png in pngs.items():
        atomic_write_bytes(out_dir / filename, png)
    report = out_dir / REPORT_NAME
    atomic_write_bytes(report, page.encode("utf-8"))
    return report
