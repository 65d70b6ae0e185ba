"""`fedsim sweep`: grid expansion, the sweep directory, determinism under concurrency, bad input."""

from __future__ import annotations

import io
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from simulator.cli import main
from simulator.driver import sweep as sweep_module
from simulator.driver.simulation import History
from tests.conftest import small_overrides

GRID = {"client.lr": [0.05, 0.2], "server.clients_per_round": [3, 6]}


def write_config(folder: Path, **extra) -> Path:
    """small_overrides as a YAML file: keys are dotted, so nest them first."""
    from simulator.config.loading import apply_overrides

    path = folder / "base.yaml"
    path.write_text(yaml.safe_dump(apply_overrides({}, small_overrides(rounds=2, **extra))))
    return path


def model_bytes(sweep_dir: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted(sweep_dir.glob("*/model.safetensors"))}


def metric_rows(sweep_dir: Path) -> dict[str, str]:
    """metrics.jsonl without the wall-clock column, per run."""
    rows = {}
    for path in sorted(sweep_dir.glob("*/metrics.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        rows[path.parent.name] = json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in lines])
    return rows


@pytest.fixture(scope="module")
def concurrent_sweep(ray_cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    result = sweep_module.run_sweep(
        sweep_module.SweepRequest(config=write_config(folder), grid=GRID, out=folder / "concurrent")
    )
    return folder, result


def test_a_2x2_grid_writes_four_runs_an_index_and_a_comparison(concurrent_sweep):
    folder, result = concurrent_sweep
    sweep_dir = result.sweep_dir
    index = json.loads((sweep_dir / "sweep.json").read_text())
    assert index["status"] == "completed" and index["grid"] == GRID and index["seeds"] == [0]
    assert index["runs_at_once"] == 2  # 2 CPUs, each run 2 workers x 0.5 CPU
    assert [r["directory"] for r in index["runs"]] == [
        "client.lr=0.05__server.clients_per_round=3__seed=0",
        "client.lr=0.05__server.clients_per_round=6__seed=0",
        "client.lr=0.2__server.clients_per_round=3__seed=0",
        "client.lr=0.2__server.clients_per_round=6__seed=0",
    ]
    for entry in index["runs"]:
        summary = json.loads((sweep_dir / entry["directory"] / "summary.json").read_text())
        assert entry["status"] == "completed" and entry["error"] is None
        assert entry["final_test_accuracy"] == summary["final_test_accuracy"] is not None
        assert entry["best_test_accuracy"] == summary["best_test_accuracy"]
        config = yaml.safe_load((sweep_dir / entry["directory"] / "config.yaml").read_text())
        assert config["client"]["lr"] == entry["overrides"]["client.lr"]
        assert config["server"]["clients_per_round"] == entry["overrides"]["server.clients_per_round"]


def test_the_comparison_png_and_html(concurrent_sweep):
    from PIL import Image

    _, result = concurrent_sweep
    png = (result.sweep_dir / "comparison.png").read_bytes()
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert image.shape[0] > 200 and image.shape[1] > 400
    assert len(np.unique(image)) > 20  # bars, text and axes: not a blank canvas
    page = (result.sweep_dir / "comparison.html").read_text()
    assert "data:image/png;base64," in page and page.count("<tr>") == 5  # header + 4 points
    for run in result.runs:
        assert f'href="{run.directory}/"' in page
    assert "server.clients_per_round" in result.table() and len(result.table().splitlines()) == 5


def test_concurrent_runs_are_bit_identical_to_sequential_ones(concurrent_sweep):
    folder, concurrent = concurrent_sweep
    sequential = sweep_module.run_sweep(
        sweep_module.SweepRequest(
            config=write_config(folder), grid=GRID, out=folder / "sequential", max_concurrent=1
        )
    )
    assert json.loads((sequential.sweep_dir / "sweep.json").read_text())["runs_at_once"] == 1
    assert len(model_bytes(concurrent.sweep_dir)) == 4
    assert model_bytes(sequential.sweep_dir) == model_bytes(concurrent.sweep_dir)
    assert metric_rows(sequential.sweep_dir) == metric_rows(concurrent.sweep_dir)
    # ... and to a plain run of the same point, outside any sweep.
    from simulator import Simulation

    point = {"client.lr": 0.05, "server.clients_per_round": 3}
    Simulation.from_yaml(write_config(folder), point, run_dir=folder / "plain").run()
    (swept,) = [
        d
        for d in concurrent.sweep_dir.iterdir()
        if d.name.startswith("client.lr=0.05__server.clients_per_round=3")
    ]
    assert (swept / "model.safetensors").read_bytes() == (folder / "plain" / "model.safetensors").read_bytes()


def test_repeated_seeds_are_deterministic_and_distinct(ray_cluster, tmp_path):
    config = write_config(tmp_path, seed=7)
    args = ["sweep", str(config), "--grid", "client.lr=0.1", "--repeat-seeds", "2", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "first")]) == 0
    assert main([*args, "--out", str(tmp_path / "second")]) == 0
    first, second = model_bytes(tmp_path / "first"), model_bytes(tmp_path / "second")
    assert list(first) == ["client.lr=0.1__seed=7", "client.lr=0.1__seed=8"]
    assert first == second
    assert first["client.lr=0.1__seed=7"] != first["client.lr=0.1__seed=8"]
    index = json.loads((tmp_path / "first" / "sweep.json").read_text())
    assert index["seeds"] == [7, 8] and [r["seed"] for r in index["runs"]] == [7, 8]


@pytest.mark.parametrize(
    "grid, fragment",
    [
        ("client.lrr=0.1,0.2", "--grid client.lrr=0.1"),
        ("client.lr=0.1,-1", "--grid client.lr=-1"),
        ("client.lr=", "expected KEY=V1,V2"),
        ("client.lr=0.1,0.1", "listed twice"),
    ],
)
def test_a_bad_grid_exits_2_and_writes_nothing(tmp_path, capsys, grid, fragment):
    out = tmp_path / "sweep"
    assert main(["sweep", str(write_config(tmp_path)), "--grid", grid, "--out", str(out)]) == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists()


def test_an_existing_non_empty_out_is_refused(tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["sweep", str(write_config(tmp_path)), "--grid", "client.lr=0.1", "--out", str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


class FailingForLargeLr:
    """Stands in for Simulation: a run with client.lr > 0.1 fails, others finish at once."""

    def __init__(self, config, run_dir, **_options):
        self.config, self.run_dir = config, Path(run_dir)

    def run(self) -> History:
        from clients.errors import ClientFailure

        if self.config.client.lr > 0.1:
            raise ClientFailure(3, 1, "loss became NaN")
        self.run_dir.mkdir(parents=True)
        summary = {"status": "completed", "final_test_accuracy": 0.5, "best_test_accuracy": 0.6}
        return History([], self.run_dir, summary, np.zeros(1, np.float32))


def test_a_failed_run_is_recorded_and_the_sweep_goes_on(ray_cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("simulator.driver.simulation.Simulation", FailingForLargeLr)
    out = tmp_path / "sweep"
    grid = ["--grid", "client.lr=0.05,0.5,0.1", "--max-concurrent", "1"]
    assert main(["sweep", str(write_config(tmp_path)), *grid, "--out", str(out)]) == 1
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["completed", "failed", "completed"]
    assert "client 3 failed in round 1" in runs[1]["error"]
    assert runs[0]["final_test_accuracy"] == 0.5 and runs[1]["final_test_accuracy"] is None
    assert "loss became NaN" in (out / "comparison.html").read_text()
    assert "1 of 3 runs failed" in capsys.readouterr().err


class InterruptedAtLargeLr(FailingForLargeLr):
    """A run with client.lr > 0.1 presses Ctrl-C (SIGINT reaches the main thread, as from a
    terminal); every run then goes round by round until the sweep stops it."""

    def __init__(self, config, run_dir, on_round_end=None, **_options):
        super().__init__(config, run_dir)
        self.on_round_end = on_round_end

    def run(self) -> History:
        if self.config.client.lr > 0.1:
            os.kill(os.getpid(), signal.SIGINT)
        for _ in range(200):  # 2 s, bounded: a sweep that never says stop completes; the test fails
            self.on_round_end({})
            time.sleep(0.01)
        return super().run()


@pytest.mark.parametrize("at_once, others", [("1", ["completed"]), ("2", ["interrupted"])])
def test_ctrl_c_stops_the_sweep_and_leaves_its_index(ray_cluster, tmp_path, monkeypatch, at_once, others):
    """Sequentially, the run before finished; concurrently, the run beside is stopped between rounds;
    the run after is never started."""
    monkeypatch.setattr("simulator.driver.simulation.Simulation", InterruptedAtLargeLr)
    out = tmp_path / "sweep"
    grid = ["--grid", "client.lr=0.05,0.5,0.1", "--max-concurrent", at_once, "--quiet"]
    assert main(["sweep", str(write_config(tmp_path)), *grid, "--out", str(out)]) == 130
    index = json.loads((out / "sweep.json").read_text())
    assert index["status"] == "interrupted"
    assert [r["status"] for r in index["runs"]] == [*others, "interrupted", "not run"]
    assert (out / "comparison.html").is_file()


def test_validating_a_large_sweep_shows_its_progress(ray_cluster, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("simulator.driver.simulation.Simulation", FailingForLargeLr)  # runs finish at once
    out = tmp_path / "sweep"
    grid = ["--grid", "client.lr=0.05,0.1", "--repeat-seeds", "100", "--out", str(out)]
    assert main(["sweep", str(write_config(tmp_path)), *grid]) == 0
    lines = capsys.readouterr().out.splitlines()
    progress = [line for line in lines if line.startswith("validating runs")]
    assert progress == [f"validating runs {20 * i}/200" for i in range(1, 11)]
    assert lines.index(progress[-1]) < min(i for i, line in enumerate(lines) if line.startswith("completed"))
