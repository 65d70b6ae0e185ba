"""Federated runs with the numpy engine: accuracy parity with torch, determinism,
gradient-flow metrics and their report panels."""

from __future__ import annotations

import json

from simulator import Simulation
from simulator.report.page import write_report
from tests.conftest import ROOT, small_overrides

DEFAULT = ROOT / "configs" / "default.yaml"


def test_numpy_engine_reaches_torch_accuracy_on_the_default_config(ray_cluster, tmp_path):
    common = {"runtime.workers": 2, "runtime.cpus_per_worker": 1.0}
    torch_run = Simulation.from_yaml(
        DEFAULT, {**common, "model.engine": "torch"}, run_dir=tmp_path / "t"
    ).run()
    numpy_run = Simulation.from_yaml(
        DEFAULT, {**common, "model.engine": "numpy"}, run_dir=tmp_path / "n"
    ).run()
    torch_acc = torch_run.summary["final_test_accuracy"]
    numpy_acc = numpy_run.summary["final_test_accuracy"]
    assert numpy_acc >= 0.90
    assert abs(numpy_acc - torch_acc) <= 0.01


def test_numpy_engine_is_bit_identical_across_worker_counts(ray_cluster, tmp_path):
    runs = [
        Simulation.from_yaml(
            DEFAULT,
            small_overrides(**{"model.engine": "numpy", "runtime.workers": n}),
            run_dir=tmp_path / f"w{n}",
        ).run()
        for n in (1, 3)
    ]
    strip = [[{k: v for k, v in row.items() if k != "seconds"} for row in run.rows] for run in runs]
    assert strip[0] == strip[1]
    assert (runs[0].run_dir / "model.safetensors").read_bytes() == (
        runs[1].run_dir / "model.safetensors"
    ).read_bytes()


def test_gradient_flow_is_logged_and_reported(ray_cluster, tmp_path):
    tracked = Simulation.from_yaml(
        ROOT / "configs" / "gradient_flow.yaml",
        small_overrides(**{"model.hidden": [16] * 4, "data.partition": "iid", "rounds": 3}),
        run_dir=tmp_path / "tracked",
    ).run()
    plain = Simulation.from_yaml(DEFAULT, small_overrides(rounds=2), run_dir=tmp_path / "plain").run()
    flow = json.loads((tracked.run_dir / "metrics.jsonl").read_text().splitlines()[-1])["gradient_flow"]
    assert list(flow) == ["fc1", "fc2", "fc3", "fc4", "fc5"]
    assert all(v["grad_norm"] > 0 and v["signal_norm"] > 0 for v in flow.values())
    assert flow["fc1"]["grad_norm"] < flow["fc5"]["grad_norm"]  # sigmoid: shrinking toward the input

    with_flow = write_report([tracked.run_dir, plain.run_dir], tmp_path / "r1").read_text()
    without = write_report([plain.run_dir], tmp_path / "r2").read_text()
    for panel in ("panel-gradient-flow", "panel-gradient-flow-last"):
        assert f'id="{panel}"' in with_flow
        assert f'id="{panel}"' not in without
    assert (tmp_path / "r1" / "gradient_flow.png").stat().st_size > 5000
