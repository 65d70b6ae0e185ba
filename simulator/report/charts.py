"""Drawing a report's charts: figures of their own (no pyplot global state), one colour
per run, and the standard panels (accuracy and loss against rounds, time and traffic).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import XAxis, YAxis
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from simulator.report.runs import RunRecord, series

DPI = 110  # chart resolution, dots per inch


FIGSIZE = (7.5, 4.6)  # chart size, inches
LEGEND_INSIDE_MAX = 5  # more runs than this: the legend goes below the axes, not over the lines
LEGEND_TWO_COLUMN_CHARS = 40  # labels up to this long fit two to a row below the axes
LEGEND_ROW_INCHES = 0.22  # the figure grows by this per legend row below the axes


MARKER_MAX_POINTS = 30  # draw point markers when a curve has at most this many


# Metrics logged as fractions in [0, 1] and charted as percentages.
PERCENT_KEYS = frozenset(
    {"test_accuracy", "federated_accuracy", "federated_accuracy_worst10", "clipped_fraction"}
)


@dataclass(frozen=True)
class Panel:
    """One chart: which metric family (``accuracy``/``loss``) against which x."""

    panel_id: str
    filename: str
    title: str
    y: str  # "accuracy" | "loss"
    x: str  # "round" | "time" | "bytes"


PANELS = (
    Panel(
        "panel-accuracy-vs-bytes",
        "accuracy_vs_bytes.png",
        "Test accuracy against traffic (what clients would send and receive)",
        "accuracy",
        "bytes",
    ),
    Panel(
        "panel-accuracy-vs-round",
        "accuracy_vs_round.png",
        "Test accuracy per round",
        "accuracy",
        "round",
    ),
    Panel(
        "panel-loss-vs-round",
        "loss_vs_round.png",
        "Loss per round (test solid, train dashed)",
        "loss",
        "round",
    ),
    Panel(
        "panel-accuracy-vs-time",
        "accuracy_vs_time.png",
        "Test accuracy against wall-clock time",
        "accuracy",
        "time",
    ),
    Panel(
        "panel-loss-vs-time",
        "loss_vs_time.png",
        "Loss against wall-clock time (test solid, train dashed)",
        "loss",
        "time",
    ),
)


def run_colour(i: int, n: int) -> str:
    """One distinct colour per run: tab10 up to 10 runs, tab20 beyond."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return to_hex(cmap(i % cmap.N))


def new_axes() -> tuple[Figure, Axes]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="tight")
    return fig, fig.add_subplot()


def finish_axes(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    """Title, axis labels, grid and (when something was drawn) a legend."""
    ax.set_title(title, fontsize=12)
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.tick_params(labelsize=9)
    ax.grid(True, alpha=0.3)
    place_legend(ax, fontsize=9)


def place_legend(ax: Axes, fontsize: int) -> bool:
    """A legend where it hides no line: inside the axes for a few runs; for more (a
    sweep's), below them, the figure growing by its height. False when nothing has a label."""
    labels = ax.get_legend_handles_labels()[1]
    if not labels:
        return False
    if len(labels) <= LEGEND_INSIDE_MAX:
        ax.legend(fontsize=fontsize, loc="best")
        return True
    columns = 2 if max(map(len, labels)) <= LEGEND_TWO_COLUMN_CHARS else 1
    rows = math.ceil(len(labels) / columns)
    fig = ax.get_figure(root=True)
    assert isinstance(fig, Figure)
    fig.set_figheight(fig.get_figheight() + LEGEND_ROW_INCHES * rows)
    ax.legend(fontsize=fontsize - 1, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=columns)
    return True


def draw_series(ax: Axes, run: RunRecord, key: str, x: str, style: dict[str, Any]) -> None:
    xs, ys = series(run, key, x)
    if not xs:
        return
    if key in PERCENT_KEYS:
        ys = [100.0 * y for y in ys]
    marker = "o" if len(xs) <= MARKER_MAX_POINTS else None
    ax.plot(xs, ys, marker=marker, markersize=4, linewidth=1.6, **style)


def _plot_runs(ax: Axes, panel: Panel, runs: list[RunRecord], labels: list[str]) -> None:
    for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
        colour = run_colour(i, len(runs))
        if panel.y == "accuracy":
            draw_series(ax, run, "test_accuracy", panel.x, {"color": colour, "label": label})
            continue
        draw_series(
            ax,
            run,
            "test_loss",
            panel.x,
            {"color": colour, "linestyle": "-", "label": label},
        )
        # One legend entry per run: the title says which line style is which loss.
        draw_series(ax, run, "train_loss", panel.x, {"color": colour, "linestyle": "--"})


def _decorate(ax: Axes, panel: Panel) -> None:
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
    if not place_legend(ax, fontsize=10):
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


def render_panel(panel: Panel, runs: list[RunRecord], labels: list[str]) -> bytes:
    """One chart as PNG bytes (a Figure of its own: no pyplot global state)."""
    fig, ax = new_axes()
    _plot_runs(ax, panel, runs, labels)
    _decorate(ax, panel)
    return png_bytes(fig)


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def runs_with(runs: list[RunRecord], labels: list[str], keep) -> list[tuple[RunRecord, str]]:
    """(run, label) of the runs an optional panel has something to draw for."""
    return [(run, label) for run, label in zip(runs, labels, strict=True) if keep(run)]


@dataclass(frozen=True)
class Line:
    """One metric drawn over rounds in a rounds chart; every run draws it in its own colour."""

    key: str
    linestyle: str = "-"
    suffix: str = ""  # appended to the run's legend label


@dataclass(frozen=True)
class Axis:
    """One subplot of a rounds chart: its y label and the metrics sharing its y axis."""

    ylabel: str
    lines: tuple[Line, ...]


def _measured(run: RunRecord, axes: tuple[Axis, ...]) -> bool:
    return any(series(run, line.key, "round")[0] for axis in axes for line in axis.lines)


def rounds_chart(
    runs: list[RunRecord], labels: list[str], title: str, axes: tuple[Axis, ...]
) -> Figure | None:
    """Metrics against the round, one subplot per `Axis`; None if no run measured any of them."""
    tracked = runs_with(runs, labels, lambda run: _measured(run, axes))
    if not tracked:
        return None
    fig = Figure(figsize=(FIGSIZE[0], 3.0 * len(axes) + 1.0), dpi=DPI, layout="tight")
    subplots = fig.subplots(len(axes), 1, sharex=True, squeeze=False)[:, 0]
    for k, (ax, axis) in enumerate(zip(subplots, axes, strict=True)):
        for i, (run, label) in enumerate(tracked):
            for line in axis.lines:
                style = {"color": run_colour(i, len(tracked)), "linestyle": line.linestyle}
                draw_series(ax, run, line.key, "round", {**style, "label": f"{label}{line.suffix}"})
        integer_ticks(ax.xaxis)
        # Subplots share the x axis: one title on top, one "Round" label at the bottom.
        finish_axes(ax, title if k == 0 else "", "Round" if k == len(axes) - 1 else "", axis.ylabel)
    return fig


def mean_and_max(title: str, ylabel: str, prefix: str):
    """A rounds chart of the metrics ``{prefix}_mean`` (solid) and ``{prefix}_max`` (dashed)."""
    lines = (Line(f"{prefix}_mean", "-", " (mean)"), Line(f"{prefix}_max", "--", " (max)"))
    return functools.partial(
        rounds_chart, title=f"{title} (mean solid, max dashed)", axes=(Axis(ylabel, lines),)
    )


def integer_ticks(axis: XAxis | YAxis) -> None:
    """Ticks at whole numbers only (rounds, counts), where the axis puts its ticks otherwise."""
    cast(MaxNLocator, axis.get_major_locator()).set_params(integer=True)


def overlaid_histograms(ax: Axes, captioned: Sequence[tuple[Sequence[float], str]], bins: Any) -> None:
    """One translucent histogram per run (values, legend caption), counts on the y axis."""
    for i, (values, caption) in enumerate(captioned):
        colour = run_colour(i, len(captioned))
        ax.hist(values, bins=bins, color=colour, alpha=0.35, edgecolor=colour, linewidth=1.5, label=caption)
    integer_ticks(ax.yaxis)
    ax.margins(y=0.25)  # headroom above the tallest bar for the legend
