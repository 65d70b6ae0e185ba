"""The report of one or more runs: a PNG per chart and ``report.html``, a self-contained
page with the summary table first and the charts after it, in a grid where the window
allows.

Everything is rendered in memory first and each file is then written atomically, so
a failed report never leaves a half-written ``report.html``.

Public API: :func:`write_report` (the runs themselves: :mod:`simulator.report.runs`).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from clients.errors import FedsimError
from simulator.report import formatting as fmt
from simulator.report.charts import PANELS, Panel, png_bytes, render_panel
from simulator.report.html_page import BASE_CSS, document, png_image
from simulator.report.panels import OPTIONAL_PANELS, ConditionalPanel
from simulator.report.runs import (
    RunRecord,
    has_accuracy,
    load_run,
    logs,
    rounds_to_target,
    run_labels,
    run_stats,
    simulated_time_to_target,
)
from simulator.report.settings import config_differences
from simulator.rundir.files import atomic_write_bytes

REPORT_NAME = "report.html"
# Words wrap only between words and a number stays whole with its unit; a table wider than
# the window scrolls on its own. Charts stand two or more to a row once each can be
# PANEL_MIN_WIDTH wide (narrower, their labels get hard to read), else one under another.
PANEL_MIN_WIDTH = "640px"
# The summary table's leading columns ({score}: accuracy, loss, or both); the target's
# columns, privacy and settings follow. Status is the one of them that may wrap.
SUMMARY_HEADS = (
    "Run",
    "Run directory",
    "Final test {score}",
    "Best test {score}",
    "Rounds completed",
    "Wall-clock",
    "Bytes up",
    "Bytes down",
    "Status",
)
STATUS_COLUMN = SUMMARY_HEADS.index("Status") + 1  # CSS's nth-child counts from 1
_CSS = f"""{BASE_CSS}
td{{max-width:36em;vertical-align:top}}.file{{color:#888;font-size:12px}}
td:nth-child(n+3):not(:nth-child({STATUS_COLUMN})):not(:last-child){{white-space:nowrap}}
.table-scroll{{overflow-x:auto}}
.panels{{display:grid;gap:0 2em;
grid-template-columns:repeat(auto-fill,minmax(min(100%,{PANEL_MIN_WIDTH}),1fr))}}
.panels section{{min-width:0}}"""


def _epsilon_text(run: RunRecord) -> str:
    """The privacy spent by the end of the run: the last logged ε ("∞" without noise)."""
    eps = next((row["epsilon"] for row in reversed(run.rows) if "epsilon" in row), None)
    return fmt.shown(eps, lambda e: "∞" if math.isinf(e) else f"{e:.2f}")


def _differences_text(config: dict[str, Any]) -> str:
    if not config:
        return "— (no config.yaml)"
    return ", ".join(config_differences(config)) or "none"


def _table_row(run: RunRecord, label: str, target: float | None) -> str:
    st = run_stats(run)
    score = fmt.percent if has_accuracy(run) else fmt.loss
    cells = [
        label,
        str(run.run_dir),
        fmt.shown(st.final_acc, score),
        f"{fmt.shown(st.best_acc, score)} (round {fmt.plain(st.best_round)})",
        fmt.plain(st.rounds_completed),
        fmt.shown(st.total_seconds, fmt.seconds),
        fmt.shown(st.bytes_up, fmt.binary_size),
        fmt.shown(st.bytes_down, fmt.binary_size),
        fmt.plain(st.status),
    ]
    if target is not None:
        reached = rounds_to_target(run.rows, target)
        cells.append("not reached" if reached is None else str(reached))
        seconds = simulated_time_to_target(run.rows, target)
        clocked = logs(run, "simulated_elapsed")
        cells.append(fmt.MISSING if not clocked else "not reached" if seconds is None else f"{seconds:.4g} s")
    cells += [_epsilon_text(run), _differences_text(run.config)]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _summary_section(runs: list[RunRecord], labels: list[str], target: float | None) -> str:
    kinds = {has_accuracy(run) for run in runs}
    score = "accuracy or loss" if len(kinds) > 1 else "accuracy" if True in kinds else "loss"
    heads = [h.format(score=score) for h in SUMMARY_HEADS]
    if target is not None:
        shown = fmt.percent(target)
        heads += [f"Rounds (async: steps) to {shown}", f"Simulated time to {shown}"]
    heads += ["ε (privacy)", "Differs from defaults"]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    body = "\n".join(_table_row(r, lab, target) for r, lab in zip(runs, labels, strict=True))
    return (
        f'<section id="panel-summary">\n<h2>Summary</h2>\n<div class="table-scroll">\n<table>\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>\n</div>\n</section>"
    )


def _chart_section(panel: Panel | ConditionalPanel, png: bytes) -> str:
    return (
        f'<section id="{panel.panel_id}">\n<h2>{html.escape(panel.title)}</h2>\n'
        f"{png_image(png, panel.title)}\n"
        f'<p class="file">{html.escape(panel.filename)}</p>\n</section>'
    )


def _render_html(
    runs: list[RunRecord],
    labels: list[str],
    pngs: dict[str, bytes],
    target: float | None,
) -> str:
    panels = [p for p in (*PANELS, *OPTIONAL_PANELS) if p.filename in pngs]
    charts = "\n".join(_chart_section(p, pngs[p.filename]) for p in panels)
    names = ", ".join(labels)
    body = (
        f"<h1>fedsim report</h1>\n<p>Runs: {html.escape(names)}</p>\n"
        f'{_summary_section(runs, labels, target)}\n<div class="panels">\n{charts}\n</div>\n'
    )
    return document(f"fedsim report: {names}", _CSS, body)


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
    labels = run_labels(runs)
    # Accuracy charts only when some run measures accuracy: a regression report has none.
    measured = [p for p in PANELS if p.y != "accuracy" or len(regression) < len(runs)]
    pngs = {p.filename: render_panel(p, runs, labels) for p in measured}
    for panel in OPTIONAL_PANELS:
        fig = panel.draw(runs, labels)
        if fig is not None:
            pngs[panel.filename] = png_bytes(fig)
    page = _render_html(runs, labels, pngs, target_accuracy)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for filename, png in pngs.items():
        atomic_write_bytes(out_dir / filename, png)
    report = out_dir / REPORT_NAME
    atomic_write_bytes(report, page.encode("utf-8"))
    return report
