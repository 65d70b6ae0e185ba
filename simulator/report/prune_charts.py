"""The pruning charts: accuracy (a regression run's: loss) against sparsity and per-layer
density, as ``fedsim prune`` writes them and as a report shows a run's prune.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from simulator.report.charts import new_axes, png_bytes, run_colour
from simulator.report.runs import RunRecord, prune_results
from simulator.rundir.files import atomic_write_bytes


def _prune_accuracy_figure(prune: dict[str, Any], title: str) -> Figure:
    """Test accuracy (a regression run's: test loss) against sparsity, one line per method
    (dashed: after fine-tuning)."""
    key, scale = ("test_accuracy", 100) if "test_accuracy" in prune["baseline"] else ("test_loss", 1)
    fig, ax = new_axes()
    methods = list(dict.fromkeys(r["method"] for r in prune["results"]))
    for i, method in enumerate(methods):
        rows = sorted((r for r in prune["results"] if r["method"] == method), key=lambda r: r["sparsity"])
        xs = [100 * r["sparsity"] for r in rows]
        colour = run_colour(i, len(methods))
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
    fig, ax = new_axes()
    width = 0.8 / max(len(rows), 1)
    for j, row in enumerate(rows):
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(layers))]
        heights = [100 * row["layer_density"][layer] for layer in layers]
        ax.bar(xs, heights, width=width, color=run_colour(j, len(rows)), label=row["method"])
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
        atomic_write_bytes(path, png_bytes(draw(prune, title)))
        paths.append(path)
    return paths


def _first_prune(runs: list[RunRecord], labels: list[str]):
    for run, label in zip(runs, labels, strict=True):
        prune = prune_results(run)
        if prune is not None:
            return prune, label
    return None, None


def prune_accuracy_panel(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    prune, label = _first_prune(runs, labels)
    if prune is None:
        return None
    score = "accuracy" if "test_accuracy" in prune["baseline"] else "loss"
    return _prune_accuracy_figure(prune, f"{label}: {score} against sparsity")


def prune_layers_panel(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    prune, label = _first_prune(runs, labels)
    return None if prune is None else _prune_layers_figure(prune, f"{label}: per-layer density")
