"""Tests for simulator.report.page: reports drawn from hand-written run directories."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib import image as mpimg

from clients.errors import FedsimError
from simulator.report.charts import DPI, FIGSIZE, LEGEND_ROW_INCHES, PANELS
from simulator.report.page import write_report
from simulator.report.panels import OPTIONAL_PANELS, _participation_counts
from simulator.report.runs import load_run, rounds_to_target

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _row(rnd: int, acc: float | None, loss: float | None, train: float) -> dict:
    return {
        "round": rnd,
        "test_accuracy": acc,
        "test_loss": loss,
        "train_loss": train,
        "num_clients": 4,
        "seconds": 2.0,
        "bytes_up": 512,
        "bytes_down": 1024,
    }


def _make_run(
    root: Path,
    dirname: str,
    name: str,
    rows: list[dict],
    *,
    tail: str = "",
    summary: dict | None = None,
    config: str = "data: {}\nmodel: {}\n",
) -> Path:
    """A run directory with config.yaml (name, seed, rounds + `config`), metrics.jsonl
    (+ raw `tail`), summary.json."""
    run_dir = root / dirname
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"name: {json.dumps(name)}\nseed: 0\nrounds: 4\n{config}")
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    (run_dir / "metrics.jsonl").write_text(lines + tail)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps({"name": name, **summary}))
    return run_dir


def write_alpha(root: Path) -> Path:
    """Finished run; round 2 not evaluated; accuracy first >= 0.8 at round 3."""
    rows = [
        _row(1, 0.50, 1.20, 1.50),
        _row(2, None, None, 1.10),
        _row(3, 0.82, 0.60, 0.90),
        _row(4, 0.85, 0.50, 0.70),
    ]
    summary = {
        "rounds_completed": 4,
        "final_test_accuracy": 0.85,
        "best_test_accuracy": 0.85,
        "best_round": 4,
        "total_seconds": 8.0,
        "total_bytes_up": 1536,
        "total_bytes_down": 3 * 1024 * 1024,
        "status": "completed",
    }
    return _make_run(root, "alpha_dir", "alpha", rows, summary=summary)


@pytest.fixture
def alpha(tmp_path: Path) -> Path:
    return write_alpha(tmp_path)


@pytest.fixture
def beta(tmp_path: Path) -> Path:
    """Crashed run: no summary.json, last metrics line cut in half."""
    rows = [
        _row(1, 0.40, 1.40, 1.60),
        _row(2, 0.60, 1.00, 1.20),
        _row(3, 0.70, 0.90, 1.00),
    ]
    return _make_run(tmp_path, "beta_dir", "beta", rows, tail='{"round": 4, "test_accu')


def _table_row(page: str, label: str) -> list[str]:
    """The cells of the summary-table row whose first cell is `label`."""
    match = re.search(rf"<tr><td>{re.escape(label)}</td>(.*?)</tr>", page)
    assert match is not None, f"no summary row for {label}"
    return [label, *re.findall(r"<td>(.*?)</td>", match.group(1))]


def test_report_embeds_every_chart_as_png(alpha: Path, beta: Path, tmp_path: Path):
    out = tmp_path / "report"

    report = write_report([alpha, beta], out)

    assert report == out / "report.html" and report.is_file()
    page = report.read_text(encoding="utf-8")
    for panel in PANELS:
        assert f'<section id="{panel.panel_id}">' in page
    assert '<section id="panel-summary">' in page
    assert "alpha" in page and "beta" in page
    payloads = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(payloads) == len(PANELS)
    for panel, payload in zip(PANELS, payloads, strict=True):
        png = base64.b64decode(payload, validate=True)
        assert png.startswith(PNG_SIGNATURE)
        on_disk = (out / panel.filename).read_bytes()
        assert on_disk == png and len(on_disk) > 5000
    assert not list(out.glob("*.tmp")), "temporary files left behind"


def test_rounds_to_target_counts_first_round_at_or_above(alpha: Path):
    rows = load_run(alpha).rows

    assert rounds_to_target(rows, 0.8) == 3
    assert rounds_to_target(rows, 0.5) == 1  # equality counts
    assert rounds_to_target(rows, 0.9) is None


def test_summary_table_with_target(alpha: Path, beta: Path, tmp_path: Path):
    page = write_report([alpha, beta], tmp_path / "out", target_accuracy=0.8).read_text()

    a = _table_row(page, "alpha")
    b = _table_row(page, "beta")

    assert a[2:] == [
        "85.00%",
        "85.00% (round 4)",
        "4",
        "8.0 s",
        "1.50 KiB",
        "3.00 MiB",
        "completed",
        "3",
        "—",  # its rows keep no simulated clock
        "—",  # no epsilon logged
        "rounds=4",  # the only setting in its config.yaml that is not fedsim's default
    ]
    # beta has no summary.json: numbers come from its three complete rows.
    assert b[2:] == [
        "70.00%",
        "70.00% (round 3)",
        "3",
        "6.0 s",
        "1.50 KiB",
        "3.00 KiB",
        "incomplete (no readable summary.json)",
        "not reached",
        "—",
        "—",
        "rounds=4",
    ]
    assert "Rounds (async: steps) to 80.00%" in page
    assert "Simulated time to 80.00%" in page


def test_truncated_last_line_is_skipped(beta: Path):
    run = load_run(beta)

    assert [r["round"] for r in run.rows] == [1, 2, 3]
    assert run.name == "beta"  # from config.yaml, as summary.json is missing
    assert run.summary == {}


def test_run_without_metrics_raises_naming_path(tmp_path: Path):
    run_dir = tmp_path / "empty_run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("name: empty\n")

    with pytest.raises(FedsimError, match="metrics.jsonl") as info:
        load_run(run_dir)

    assert str(run_dir) in str(info.value)


def test_metrics_without_valid_rows_raises_naming_file(tmp_path: Path):
    run_dir = _make_run(tmp_path, "cut", "cut", [], tail='{"round": 1, "te')

    with pytest.raises(FedsimError, match="no valid metrics rows") as info:
        load_run(run_dir)

    assert str(run_dir / "metrics.jsonl") in str(info.value)


def test_corrupt_middle_line_raises_with_line_number(tmp_path: Path):
    run_dir = _make_run(
        tmp_path,
        "bad",
        "bad",
        [_row(1, 0.5, 1.0, 1.0)],
        tail="garbage\n" + json.dumps(_row(2, 0.6, 0.9, 0.9)) + "\n",
    )

    with pytest.raises(FedsimError, match=r"metrics\.jsonl:2"):
        load_run(run_dir)


def test_failed_report_leaves_no_report_html(alpha: Path, tmp_path: Path):
    out = tmp_path / "out"
    no_metrics = tmp_path / "no_metrics"
    no_metrics.mkdir()

    with pytest.raises(FedsimError):
        write_report([alpha, no_metrics], out)

    assert not (out / "report.html").exists()


def test_run_name_is_html_escaped(tmp_path: Path):
    run_dir = _make_run(
        tmp_path,
        "evil",
        "<b>x</b>",
        [_row(1, 0.5, 1.0, 1.0)],
        summary={"status": "completed"},
    )

    page = write_report([run_dir], tmp_path / "out").read_text()

    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<b>x</b>" not in page


def test_shared_names_are_disambiguated_by_directory(tmp_path: Path):
    rows = [_row(1, 0.5, 1.0, 1.0), _row(2, 0.6, 0.9, 0.8)]
    first = _make_run(tmp_path, "r1", "same", rows)
    second = _make_run(tmp_path, "r2", "same", rows)

    page = write_report([first, second], tmp_path / "out").read_text()

    assert _table_row(page, "same (r1)")[1] == str(first)
    assert _table_row(page, "same (r2)")[1] == str(second)


def test_target_must_be_a_fraction(alpha: Path, tmp_path: Path):
    with pytest.raises(FedsimError, match="80"):
        write_report([alpha], tmp_path / "out", target_accuracy=80)


# ---------------------------------------------------------------- optional panels

# Settings gamma sets away from fedsim's defaults (name and runtime.out_dir are not compared).
GAMMA_CONFIG = """data: {num_clients: 6, alpha: 0.5}
model: {hidden: [32]}
server:
  weighting: uniform
  clipping: {kind: fixed, norm: 0.5}
  privacy: {noise_multiplier: 1.1}
runtime: {out_dir: /elsewhere}
"""
GAMMA_DIFFERENCES = (
    "rounds=4, data.num_clients=6, model.hidden=[32], server.weighting=uniform, "
    "server.clipping.kind=fixed, server.clipping.norm=0.5, server.privacy.noise_multiplier=1.1"
)
# The panels gamma's metrics call for, on top of the always-drawn PANELS.
GAMMA_PANELS = {
    "panel-participation",
    "panel-client-accuracy",
    "panel-federated-accuracy",
    "panel-update-norms",
    "panel-clipping",
    "panel-epsilon",
}


def _client_eval(rnd: int, client: int, accuracy: float) -> dict:
    return {"round": rnd, "client": client, "num_samples": 20, "accuracy": accuracy, "loss": 1.0 - accuracy}


def write_gamma(root: Path) -> Path:
    """A DP run with clipping, participation and federated evaluation on rounds 2 and 4.

    Client 5 is never sampled; clients 0 and 1 train every round.
    """
    rows = []
    for rnd in range(1, 5):
        row = _row(rnd, 0.3 + 0.1 * rnd, 1.5 - 0.2 * rnd, 1.6 - 0.2 * rnd)
        row |= {
            "clients": [0, 1, 2 + rnd % 3],
            "update_norm_mean": 1.0 / rnd,
            "update_norm_max": 2.0 / rnd,
            "clip_norm": 0.5,
            "clipped_fraction": 1.0 / rnd,
            "epsilon": 0.5 * rnd + 0.5,
        }
        if rnd % 2 == 0:
            row |= {
                "federated_accuracy": 0.2 * rnd,
                "federated_loss": 1.0,
                "federated_accuracy_std": 0.1,
                "federated_accuracy_worst10": 0.1 * rnd,
            }
        rows.append(row)
    run_dir = _make_run(root, "gamma_dir", "gamma", rows, config=GAMMA_CONFIG)
    evals = [_client_eval(rnd, c, 0.1 * rnd + 0.1 * c) for rnd in (2, 4) for c in range(5)]
    (run_dir / "clients.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    return run_dir


@pytest.fixture
def gamma(tmp_path: Path) -> Path:
    return write_gamma(tmp_path)


def _section_ids(page: str) -> set[str]:
    return set(re.findall(r'<section id="([^"]+)">', page))


def _embedded_pngs(page: str) -> dict[str, bytes]:
    """Each chart section's id -> its decoded embedded image."""
    sections = re.findall(
        r'<section id="([^"]+)">\n<h2>.*?</h2>\n<img src="data:image/png;base64,([^"]+)"', page
    )
    return {panel_id: base64.b64decode(data, validate=True) for panel_id, data in sections}


def test_report_draws_exactly_the_panels_whose_metrics_exist(alpha: Path, gamma: Path, tmp_path: Path):
    page = write_report([alpha, gamma], tmp_path / "out").read_text(encoding="utf-8")

    expected = {p.panel_id for p in PANELS} | GAMMA_PANELS
    assert _section_ids(page) == expected | {"panel-summary"}
    pngs = _embedded_pngs(page)
    assert set(pngs) == expected
    for panel_id, png in pngs.items():
        assert png.startswith(PNG_SIGNATURE), panel_id
        height, width, _ = mpimg.imread(io.BytesIO(png), format="png").shape
        assert width >= 600 and height >= 400, (panel_id, width, height)


@pytest.mark.parametrize(
    ("extra", "panel_id"),
    [
        ({"clients": [0, 2]}, "panel-participation"),
        ({"federated_accuracy": 0.5}, "panel-federated-accuracy"),
        ({"update_norm_mean": 1.5}, "panel-update-norms"),
        ({"clipped_fraction": 0.25}, "panel-clipping"),
        ({"clip_norm": 0.5}, "panel-clipping"),
        ({"epsilon": 1.5}, "panel-epsilon"),
    ],
)
def test_one_metric_adds_only_its_panel(extra: dict, panel_id: str, tmp_path: Path):
    rows = [_row(1, 0.5, 1.0, 1.0) | extra, _row(2, 0.6, 0.9, 0.9) | extra]
    run_dir = _make_run(tmp_path, "one", "one", rows)

    page = write_report([run_dir], tmp_path / "out").read_text()

    optional = {p.panel_id for p in OPTIONAL_PANELS} & _section_ids(page)
    assert optional == {panel_id}


def test_clients_jsonl_alone_adds_the_client_accuracy_panel(tmp_path: Path):
    run_dir = _make_run(tmp_path, "fair", "fair", [_row(1, 0.5, 1.0, 1.0)])
    (run_dir / "clients.jsonl").write_text(json.dumps(_client_eval(1, 0, 0.4)) + "\n")

    page = write_report([run_dir], tmp_path / "out").read_text()

    optional = {p.panel_id for p in OPTIONAL_PANELS} & _section_ids(page)
    assert optional == {"panel-client-accuracy"}


def test_summary_table_shows_differing_settings_and_epsilon(alpha: Path, gamma: Path, tmp_path: Path):
    page = write_report([alpha, gamma], tmp_path / "out").read_text()

    assert "<th>ε (privacy)</th><th>Differs from defaults</th>" in page
    assert _table_row(page, "gamma")[-2:] == ["2.50", GAMMA_DIFFERENCES]  # last row's epsilon
    assert _table_row(page, "alpha")[-2:] == ["—", "rounds=4"]


def test_differing_settings_are_html_escaped(tmp_path: Path):
    run_dir = _make_run(tmp_path, "odd", "odd", [_row(1, 0.5, 1.0, 1.0)], config="data: {dataset: <b>}\n")

    page = write_report([run_dir], tmp_path / "out").read_text()

    assert _table_row(page, "odd")[-1] == "rounds=4, data.dataset=&lt;b&gt;"


def test_participation_counts_never_sampled_clients_as_zero(gamma: Path):
    # Rounds 1-4 train clients [0, 1, 2 + round % 3]; data.num_clients is 6.
    assert _participation_counts(load_run(gamma)) == [4, 4, 1, 2, 1, 0]


def test_clients_jsonl_torn_last_line_is_skipped(gamma: Path):
    with (gamma / "clients.jsonl").open("a") as f:
        f.write('{"round": 6, "cli')

    evals = load_run(gamma).client_evals

    assert len(evals) == 10 and {e["round"] for e in evals} == {2, 4}


def test_clients_jsonl_corrupt_middle_line_raises_naming_file_and_line(gamma: Path):
    path = gamma / "clients.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "not json", *lines[1:]]) + "\n")

    with pytest.raises(FedsimError, match=r"clients\.jsonl:2: not valid JSON") as info:
        load_run(gamma)

    assert str(path) in str(info.value)


def test_clients_jsonl_row_without_accuracy_raises_naming_file(gamma: Path):
    (gamma / "clients.jsonl").write_text(json.dumps({"round": 1, "client": 0}) + "\n")

    with pytest.raises(FedsimError, match="accuracy") as info:
        load_run(gamma)

    assert str(gamma / "clients.jsonl") in str(info.value)


def test_report_and_the_sweep_comparison_load_neither_torch_nor_ray(alpha: Path, tmp_path: Path):
    """A report reads files: ``fedsim report`` and the sweep's comparison page need no
    training stack (the sweep's records live in simulator.rundir.sweep_index)."""
    probe = (
        "import sys; from simulator.cli import main; import simulator.report.sweep_page; "
        f"code = main(['report', {str(alpha)!r}, '--out', {str(tmp_path / 'out')!r}]); "
        "print(code, sorted({'torch', 'ray'} & set(sys.modules)))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0 []"


def _png_height(png: bytes) -> int:
    return int.from_bytes(png[20:24], "big")  # the IHDR chunk's height field


def test_a_sweeps_many_runs_get_their_legend_below_the_lines(alpha: Path, beta: Path, tmp_path: Path):
    """Eight runs named as a sweep names them: the legend would cover the lines inside the
    axes, so it goes below them (the chart grows) with one entry per run, the loss chart's
    test and train lines sharing it."""
    few = _embedded_pngs(write_report([alpha, beta], tmp_path / "few").read_text(encoding="utf-8"))
    rows = [_row(1, 0.5, 1.2, 1.5), _row(2, 0.6, 1.0, 1.1)]
    names = [f"fedprox (client.prox_mu={i % 2}__client.stragglers=0.{i}__seed=0)" for i in range(8)]
    sweep = [_make_run(tmp_path, f"r{i}", name, rows) for i, name in enumerate(names)]
    many = _embedded_pngs(write_report(sweep, tmp_path / "many").read_text(encoding="utf-8"))
    for panel_id in ("panel-loss-vs-round", "panel-accuracy-vs-round"):
        # Within a pixel: matplotlib truncates the figure's size in pixels.
        assert abs(_png_height(few[panel_id]) - FIGSIZE[1] * DPI) <= 1
        # Labels this long take a row each: eight rows below the axes (sixteen, were the
        # loss chart's train lines listed too).
        assert abs(_png_height(many[panel_id]) - (FIGSIZE[1] + 8 * LEGEND_ROW_INCHES) * DPI) <= 1
