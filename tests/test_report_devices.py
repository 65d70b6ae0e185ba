"""The device panels of `fedsim report` (participation by speed decile and availability,
selection fairness, round length), drawn from real runs' devices.json and metrics.jsonl."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from simulator import Simulation
from simulator.cli import main
from simulator.report.device_panels import (
    MAX_DEVICES_BYTES,
    availability_rates,
    jain_index,
    selection_counts,
    speed_decile_rates,
)
from simulator.report.runs import load_run

NUM_CLIENTS = 20
TINY = """\
name: {name}
seed: {seed}
rounds: {rounds}
data: {{dataset: synthetic, num_clients: 20, partition: natural}}
model: {{name: logreg}}
client:
  epochs: 1
  batch_size: 10
  system: {system}
server: {{clients_per_round: 5, selection: {selection}}}
runtime: {{workers: 1, cpus_per_worker: 0.5}}
"""
DEVICE_PANELS = {
    "panel-participation-by-speed",
    "panel-participation-by-availability",
    "panel-selection-fairness",
    "panel-round-length",
}


def _run(root: Path, name: str, seed: int, rounds: int, system: str, selection: str = "uniform") -> Path:
    config = root / f"{name}.yaml"
    config.write_text(TINY.format(name=name, seed=seed, rounds=rounds, system=system, selection=selection))
    run_dir = root / name
    Simulation.from_yaml(config, {}, run_dir=run_dir).run()
    return run_dir


@pytest.fixture(scope="module")
def runs(ray_cluster, tmp_path_factory) -> dict[str, Path]:
    """3-round runs: uniform selection on lognormal speeds with availability 0.7 (its rows
    log only whose updates counted), and power-of-choice on synthetic capacity and
    availability traces from `fedsim traces make` (its rows log whom it selected too; its
    clients' online shares differ); and a 1-round run without devices."""
    root = tmp_path_factory.mktemp("device_runs")
    traces = root / "traces"
    assert (
        main(["traces", "make", str(traces), "--devices", "40", "--period", "10", "--online-mean", "0.6"])
        == 0
    )
    traced = (
        f"{{trace: {{capacity: {traces / 'capacity.jsonl'}, availability: {traces / 'availability.jsonl'}}}}}"
    )
    return {
        "uniform": _run(root, "uniform", 0, 3, "{speed_sigma: 1.0, availability: 0.7}"),
        "power": _run(root, "power", 1, 3, traced, "power_of_choice"),
        "plain": _run(root, "plain", 0, 1, "{}"),
    }


def _report(capsys, caplog, *args) -> tuple[str, list[logging.LogRecord]]:
    """`fedsim report ARGS` (exit status 0 asserted): report.html and the warnings logged."""
    out = Path(args[args.index("--out") + 1])
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        assert main(["report", *map(str, args)]) == 0, capsys.readouterr().err
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    return (out / "report.html").read_text(encoding="utf-8"), warnings


def _sections(page: str) -> set[str]:
    return set(re.findall(r'<section id="([^"]+)">', page))


def _hand_rates(run_dir: Path, key: str, groups_of) -> np.ndarray:
    """Picks per client of each group over picks per client overall, counted by hand from
    metrics.jsonl: groups_of(devices) -> {client: group}."""
    devices = json.loads((run_dir / "devices.json").read_text())
    group = groups_of(devices)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    picks = Counter(group[c] for row in rows for c in row[key])
    sizes = Counter(group.values())
    total = sum(picks.values())
    return np.array([(picks[g] / total) / (sizes[g] / NUM_CLIENTS) for g in sorted(sizes)])


def _speed_deciles(devices: dict) -> dict[int, int]:
    ranked = sorted(range(NUM_CLIENTS), key=lambda c: (devices["speed"][c], c))
    return {c: rank * 10 // NUM_CLIENTS for rank, c in enumerate(ranked)}


def test_runs_with_devices_get_the_device_panels(runs, tmp_path, capsys, caplog):
    out = tmp_path / "report"

    page, warnings = _report(capsys, caplog, runs["uniform"], runs["power"], "--out", out, "--target", "0.3")

    assert warnings == []
    assert _sections(page) >= DEVICE_PANELS
    for name in (
        "participation_by_speed",
        "participation_by_availability",
        "selection_fairness",
        "round_length",
    ):
        assert (out / f"{name}.png").stat().st_size > 5000 and f"{name}.png" in page
    assert "Simulated time to 30.00%" in page  # --target's column, from simulated_elapsed


def _availability_bins(devices: dict) -> dict[int, int]:
    return {c: min(int(5 * share), 4) for c, share in enumerate(devices["online_share"])}


def test_speed_deciles_and_availability_bins_equal_a_hand_count(runs):
    power = load_run(runs["power"])
    by_speed, by_share = speed_decile_rates(power), availability_rates(power)

    assert set(by_speed) == set(by_share) == {"selected", "clients"}
    for key in ("selected", "clients"):
        # The same ratios, divided in another order: equal to float rounding.
        hand = _hand_rates(runs["power"], key, _speed_deciles)
        np.testing.assert_allclose(by_speed[key], hand, rtol=1e-12)
        hand = _hand_rates(runs["power"], key, _availability_bins)
        np.testing.assert_allclose(by_share[key][~np.isnan(by_share[key])], hand, rtol=1e-12)
    assert set(speed_decile_rates(load_run(runs["uniform"]))) == {"clients"}
    assert not availability_rates(load_run(runs["uniform"]))  # everyone online 70% of the time


@pytest.mark.parametrize(("run", "key"), [("power", "selected"), ("uniform", "clients")])
def test_selection_counts_equal_a_hand_count(runs, run, key):
    """A policy's runs log whom it selected; uniform's, only whose updates counted."""
    rows = [json.loads(line) for line in (runs[run] / "metrics.jsonl").read_text().splitlines()]
    assert all((key == "selected") == ("selected" in row) for row in rows)
    hand = Counter(c for row in rows for c in row[key])

    counts, picked = selection_counts(load_run(runs[run]))

    assert picked == key and counts.tolist() == [hand[c] for c in range(NUM_CLIENTS)]


def test_jain_index():
    assert jain_index(np.ones(7)) == 1.0
    assert jain_index(np.array([0, 0, 0, 5])) == 0.25  # one of four clients takes every pick
    assert jain_index(np.array([1, 3])) == 16 / 20
    assert np.isnan(jain_index(np.zeros(3)))


def test_a_damaged_devices_json_skips_the_device_panels_with_one_warning(runs, tmp_path, capsys, caplog):
    source = runs["uniform"]
    damaged = {
        "not_json": b'{"format": "fedsim-devices-1", "speed": [1, 2',
        "wrong_length": json.dumps({"speed": [1.0] * (NUM_CLIENTS - 1)}),
        "huge_list": json.dumps({"speed": [1] * 2_000_000, "num_clients": 2_000_000}),
        "nan": json.dumps({"speed": [float("nan")] * NUM_CLIENTS}),  # Python writes NaN
        "oversized": None,
    }
    run_dirs = []
    for case, text in damaged.items():
        run_dir = tmp_path / case
        shutil.copytree(source, run_dir)
        path = run_dir / "devices.json"
        if case == "oversized":
            os.truncate(path, MAX_DEVICES_BYTES + 1)  # sparse: nothing is written, nothing read
        elif isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(json.dumps(json.loads(path.read_text()) | json.loads(text)))
        run_dirs.append(run_dir)

    page, warnings = _report(capsys, caplog, *run_dirs, "--out", tmp_path / "report")

    assert sorted(Path(w.args[0]).parent.name for w in warnings) == sorted(damaged)  # one each
    sections = _sections(page)
    assert "panel-participation-by-speed" not in sections
    assert "panel-participation-by-availability" not in sections
    # Who was selected and how long rounds took are metrics.jsonl's: still drawn.
    assert {"panel-selection-fairness", "panel-round-length"} <= sections


def test_metrics_naming_a_client_outside_the_devices_is_one_warning(runs, tmp_path, caplog):
    run_dir = shutil.copytree(runs["uniform"], tmp_path / "foreign")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows[1]["clients"] = [*rows[1]["clients"], NUM_CLIENTS]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = load_run(run_dir)

    with caplog.at_level(logging.WARNING, logger="fedsim"):
        assert speed_decile_rates(run) == {} and selection_counts(run) is None

    assert len(caplog.records) == 1  # read once for every panel
    assert str(run_dir) in caplog.text and "round 2" in caplog.text


def test_a_run_without_devices_has_no_device_panels(runs, tmp_path, capsys, caplog):
    assert not (runs["plain"] / "devices.json").exists()

    page, warnings = _report(capsys, caplog, runs["plain"], "--out", tmp_path / "report")

    assert warnings == []
    assert not DEVICE_PANELS & _sections(page)
