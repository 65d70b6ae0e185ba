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
