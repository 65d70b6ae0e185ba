"""A sweep's comparison: per grid point, the final test accuracy (a regression sweep's:
loss) over seeds, as ``comparison.png``, a self-contained ``comparison.html`` and the
text table ``fedsim sweep`` prints.

It reads the runs as sweep.json lists them (``SweepRun``, from
``simulator.rundir.sweep_index``), so it loads neither Ray nor torch.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from matplotlib.figure import Figure

from simulator.config.yaml_input import flow_text
from simulator.report.charts import png_bytes
from simulator.report.formatting import TEXT_MISSING, percent
from simulator.report.html_page import BASE_CSS, document, png_image
from simulator.rundir.files import atomic_write_bytes
from simulator.rundir.sweep_index import COMPLETED, FAILED, GridAxis, SweepRun

PNG_NAME = "comparison.png"
HTML_NAME = "comparison.html"


def write_comparison(sweep_dir: Path, axes: list[GridAxis], runs: list[SweepRun], seeds: int) -> None:
    """``comparison.png`` and ``comparison.html`` in ``sweep_dir``; ``seeds``: how many
    seeds each grid point ran."""
    stats = point_stats(axes, runs)
    png = _comparison_png(axes, stats, seeds)
    atomic_write_bytes(sweep_dir / PNG_NAME, png)
    page = _comparison_html(axes, stats, runs, png)
    atomic_write_bytes(sweep_dir / HTML_NAME, page.encode("utf-8"))


def text_table(axes: list[GridAxis], runs: list[SweepRun]) -> str:
    """The comparison as a fixed-width text table, one line per grid point."""
    return _text_table(axes, point_stats(axes, runs))


@dataclass
class PointStats:
    point: dict[str, Any]  # grid key -> value
    runs: list[SweepRun] = field(default_factory=list)
    metric: str = "accuracy"  # "loss" when no run measured accuracy (a regression sweep)

    @property
    def accuracies(self) -> list[float]:
        """The runs' final test accuracies (their losses, for a regression sweep)."""
        values = [getattr(r, f"final_test_{self.metric}") for r in self.runs]
        return [v for v in values if v is not None]

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.accuracies)) if self.accuracies else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds; None with fewer than two."""
        return float(np.std(self.accuracies, ddof=1)) if len(self.accuracies) > 1 else None

    def label(self, sep: str = ", ") -> str:
        return sep.join(f"{k}={flow_text(v)}" for k, v in self.point.items())


def point_stats(axes: list[GridAxis], runs: list[SweepRun]) -> list[PointStats]:
    regression = any(r.final_test_loss is not None for r in runs) and all(
        r.final_test_accuracy is None for r in runs
    )
    points: dict[int, PointStats] = {}
    for run in runs:
        grid_values = {a.key: run.overrides[a.key] for a in axes}
        metric = "loss" if regression else "accuracy"
        points.setdefault(run.point, PointStats(grid_values, metric=metric)).runs.append(run)
    return [points[i] for i in sorted(points)]


def _score_text(value: float | None, metric: str) -> str:
    if value is None:
        return TEXT_MISSING
    return percent(value, sign="") if metric == "accuracy" else f"{value:.4g}"


def _mean_std_text(stats: PointStats) -> str:
    if stats.mean is None:
        return TEXT_MISSING
    text = _score_text(stats.mean, stats.metric)
    return text + ("" if stats.std is None else f" ± {_score_text(stats.std, stats.metric)}")


def _score_heading(stats: list[PointStats], short: bool = False) -> str:
    if stats and stats[0].metric == "loss":
        return "final test loss"
    return "final acc %" if short else "final test accuracy %"


def _comparison_png(axes: list[GridAxis], stats: list[PointStats], seeds: int) -> bytes:
    fig = Figure(figsize=(max(6.0, 1.2 * len(stats) + 2), 4.8), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(stats))
    loss = bool(stats) and stats[0].metric == "loss"
    scale = 1 if loss else 100
    means = [scale * s.mean if s.mean is not None else np.nan for s in stats]
    errors = [scale * s.std if s.std is not None else 0.0 for s in stats]
    ax.bar(x, means, yerr=errors, capsize=5, color="#4c72b0", alpha=0.8, label="mean over seeds (± std)")
    for i, s in enumerate(stats):
        runs = [scale * a for a in s.accuracies]
        ax.scatter([i] * len(runs), runs, color="black", s=12, zorder=3, label="one seed" if i == 0 else None)
        if s.mean is None:
            ax.text(i, 2, "no result", ha="center", rotation=90, fontsize=8)
    ax.set_xticks(x, [s.label("\n") for s in stats], fontsize=8, rotation=30 if len(stats) > 8 else 0)
    if not loss:
        ax.set_ylim(0, 100)
    ax.set_xlabel("grid point (" + ", ".join(a.key for a in axes) + ")")
    ax.set_ylabel("final test loss" if loss else "final test accuracy (%)")
    what = "loss" if loss else "accuracy"
    ax.set_title(f"Final test {what} per grid point, mean ± std over {seeds} seed{'s' * (seeds > 1)}")
    ax.legend(loc="lower right", fontsize=8)
    return png_bytes(fig)


_CSS = f"{BASE_CSS}.failed{{color:#b00}}"


def _comparison_html(axes: list[GridAxis], stats: list[PointStats], runs: list[SweepRun], png: bytes) -> str:
    heads = [a.key for a in axes] + [f"{_score_heading(stats)} (mean ± std)", "seeds (n)", "runs"]
    rows = [_html_row(axes, s) for s in stats]
    failed = [r for r in runs if r.status == FAILED]
    failures = "".join(
        f'<li class="failed">{html.escape(r.directory)}: {html.escape(r.error or "")}</li>' for r in failed
    )
    body = (
        "<h1>fedsim sweep</h1>\n"
        f"{png_image(png, f'{_score_heading(stats)} per grid point')}\n"
        "<table>\n<tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in heads)
        + "</tr>\n"
        + "\n".join(rows)
        + "\n</table>\n"
        + (f"<h2>Failed runs</h2>\n<ul>{failures}</ul>\n" if failures else "")
    )
    return document("fedsim sweep", _CSS, body)


def _html_row(axes: list[GridAxis], stats: PointStats) -> str:
    links = " ".join(
        f'<a href="{quote(r.directory, safe="=+")}/">seed {r.seed}</a>'
        + ("" if r.status == COMPLETED else f' <span class="failed">({html.escape(r.status)})</span>')
        for r in stats.runs
    )
    cells = [html.escape(flow_text(stats.point[a.key])) for a in axes]
    cells += [html.escape(_mean_std_text(stats)), str(len(stats.accuracies)), links]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _text_table(axes: list[GridAxis], stats: list[PointStats]) -> str:
    heads = [a.key for a in axes] + [f"{_score_heading(stats, short=True)} (mean ± std)", "n", "failed"]
    body = [
        [flow_text(s.point[a.key]) for a in axes]
        + [_mean_std_text(s), str(len(s.accuracies)), str(sum(r.status == FAILED for r in s.runs))]
        for s in stats
    ]
    widths = [max(len(row[i]) for row in [heads, *body]) for i in range(len(heads))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [heads, *body]]
    return "\n".join(line.rstrip() for line in lines)
