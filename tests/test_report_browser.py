"""The HTML report in headless Chromium: it loads without script or resource errors
and renders every chart (Playwright drives /usr/bin/chromium; skipped without it)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from matplotlib import image as mpimg

from simulator.report.page import write_report
from tests.test_report import GAMMA_PANELS, PNG_SIGNATURE, write_alpha, write_gamma

CHROMIUM = Path("/usr/bin/chromium")
# Offline machine: no network services, sandbox or GPU; each of these otherwise
# makes Chromium wait on a connection or fail to start as root in a container.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason=f"{CHROMIUM} not found (make install-test installs it with apt)"
)


@pytest.mark.slow
def test_report_renders_in_chromium_without_errors(tmp_path: Path):
    report = write_report([write_alpha(tmp_path), write_gamma(tmp_path)], tmp_path / "out", 0.6)
    errors: list[str] = []

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(report.as_uri(), wait_until="load", timeout=15_000)
            # naturalWidth is 0 for an image the browser could not decode.
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(img => img.naturalWidth)")
            section_ids = page.eval_on_selector_all("section", "els => els.map(el => el.id)")
            screenshot = page.screenshot(full_page=True)
        finally:
            browser.close()

    assert errors == []
    assert set(section_ids) >= GAMMA_PANELS
    assert len(widths) == len(section_ids) - 1  # every section but the summary is a chart
    assert all(width >= 600 for width in widths), widths
    assert screenshot.startswith(PNG_SIGNATURE) and len(screenshot) > 20_000
    height, width, _ = mpimg.imread(io.BytesIO(screenshot), format="png").shape
    assert width == VIEWPORT["width"]
    assert height > 4 * VIEWPORT["height"]  # full page: a dozen stacked charts, not one screen


WIDE = {"width": 1400, "height": 900}  # the window of the screenshot ("defaul t")
NARROW = {"width": 800, "height": 900}
# Every place inside a table cell where a line ends between two letters or digits.
MID_WORD_BREAKS = """cells => cells.flatMap(cell => {
    const word = /[\\p{L}\\p{N}]/u;
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    const breaks = [];
    let previous = null, previousTop = null;
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        for (let i = 0; i < node.length; i++) {
            const range = document.createRange();
            range.setStart(node, i);
            range.setEnd(node, i + 1);
            const rect = range.getClientRects()[0];  // none for white space the line dropped
            const ch = node.data[i];
            if (rect && previousTop !== null && rect.top > previousTop + 1
                && word.test(previous) && word.test(ch)) {
                breaks.push(cell.textContent.trim() + ` (between '${previous}' and '${ch}')`);
            }
            if (rect) previousTop = rect.top;
            previous = ch;
        }
    }
    return breaks;
})"""
BOXES = """els => els.map(el => {
    const r = el.getBoundingClientRect(), y = window.scrollY;
    return {id: el.id, top: r.top + y, left: r.left, right: r.right, bottom: r.bottom + y};
})"""


def _layout(report: Path, viewport: dict[str, int]) -> tuple[list[str], list[dict]]:
    """At ``viewport``: the table cells that break a word across lines, and every section's box."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            page.goto(report.as_uri(), wait_until="load", timeout=15_000)
            breaks = page.eval_on_selector_all("#panel-summary th, #panel-summary td", MID_WORD_BREAKS)
            boxes = page.eval_on_selector_all("section", BOXES)
        finally:
            browser.close()
    return breaks, boxes


@pytest.mark.slow
def test_report_reads_summary_first_then_charts_in_a_grid(tmp_path: Path):
    report = write_report([write_alpha(tmp_path), write_gamma(tmp_path)], tmp_path / "out", 0.6)

    breaks, boxes = _layout(report, WIDE)
    assert breaks == []  # no cell wraps mid-word ("defaul t", "complete d")
    summary, first, second, *_ = boxes
    assert summary["id"] == "panel-summary"
    assert all(summary["bottom"] <= chart["top"] for chart in boxes[1:])  # the summary comes first
    assert first["top"] == second["top"] and first["right"] <= second["left"]  # two charts in a row

    breaks, boxes = _layout(report, NARROW)
    assert breaks == []
    charts = boxes[1:]
    assert len({chart["left"] for chart in charts}) == 1  # one under another
    assert all(a["bottom"] <= b["top"] for a, b in zip(charts, charts[1:], strict=False))
