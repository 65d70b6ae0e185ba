"""Experiment tracking: TensorBoard event files read back, MLflow calls recorded."""

from __future__ import annotations

import json
import struct
import sys
import types
from pathlib import Path

import pytest

from clients.errors import ConfigError
from simulator import Simulation
from simulator.report.tracking import scalar_metrics
from tests.conftest import ROOT, small_overrides

DEFAULT = ROOT / "configs" / "default.yaml"


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from TensorBoard event files (TFRecord framing:
    u64 length, u32 crc, payload, u32 crc)."""
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_scalar_metrics_keep_numbers_and_flatten_gradient_flow():
    row = {
        "round": 3, "test_accuracy": 0.5, "test_loss": None, "rejected_aggregate": False,
        "clients": [1, 2], "num_clients": 2,
        "gradient_flow": {"fc1": {"signal_norm": 1.5, "grad_norm": 0.25}},
    }  # fmt: skip
    assert scalar_metrics(row) == {
        "test_accuracy": 0.5,
        "num_clients": 2.0,
        "gradient_flow/fc1/signal_norm": 1.5,
        "gradient_flow/fc1/grad_norm": 0.25,
    }


def test_tensorboard_gets_every_rounds_metrics(ray_cluster, tmp_path):
    pytest.importorskip("tensorboardX")
    overrides = small_overrides(rounds=3, **{"runtime.tensorboard": True})
    history = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "tb").run()
    scalars = read_scalars(tmp_path / "tb" / "tensorboard")
    # Event files store float32: compare at float32 precision.
    assert scalars["test_accuracy"] == pytest.approx({r["round"]: r["test_accuracy"] for r in history.rows})
    assert sorted(scalars["train_loss"]) == [1, 2, 3]
    assert "clients" not in scalars and "round" not in scalars


class RecordingMlflow(types.ModuleType):
    """Stands in for the mlflow package: records what fedsim calls."""

    def __init__(self):
        super().__init__("mlflow")
        self.calls: list[tuple[str, tuple, dict]] = []
        self.failing_uri = False

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def record(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if name == "start_run":
                return types.SimpleNamespace(info=types.SimpleNamespace(run_id="run-123"))
            if name == "set_tracking_uri" and self.failing_uri:
                raise RuntimeError("connection refused")
            return None

        return record

    def named(self, name: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for n, a, k in self.calls if n == name]


def test_mlflow_gets_params_metrics_and_the_report(ray_cluster, tmp_path, monkeypatch):
    fake = RecordingMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    overrides = small_overrides(rounds=2, **{"runtime.mlflow": f"file://{tmp_path}/mlruns"})
    Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "ml").run()
    assert fake.named("set_tracking_uri") == [((f"file://{tmp_path}/mlruns",), {})]
    params = {k: v for args, _ in fake.named("log_params") for k, v in args[0].items()}
    assert params["client.lr"] == "0.1" and params["rounds"] == "2"
    steps = [kwargs["step"] for _, kwargs in fake.named("log_metrics")]
    assert steps == [1, 2]
    artifacts = sorted(Path(args[0]).name for args, _ in fake.named("log_artifact"))
    assert artifacts == ["config.yaml", "metrics.jsonl", "model.safetensors", "report.html", "summary.json"]
    assert fake.named("end_run") == [((), {"status": "FINISHED"})]
    record = json.loads((tmp_path / "ml" / "mlflow_run.json").read_text())
    assert record == {"run_id": "run-123", "tracking_uri": f"file://{tmp_path}/mlruns"}

    resumed = RecordingMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", resumed)
    Simulation.resume_from(tmp_path / "ml", {"rounds": 3}).run()
    assert resumed.named("start_run") == [((), {"run_id": "run-123"})]
    assert not resumed.named("log_params")
    assert [kwargs["step"] for _, kwargs in resumed.named("log_metrics")] == [3]


def test_an_unreachable_mlflow_stops_the_run_with_one_error_and_a_summary(ray_cluster, tmp_path, monkeypatch):
    fake = RecordingMlflow()
    fake.failing_uri = True
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    overrides = small_overrides(**{"runtime.mlflow": "http://127.0.0.1:9"})
    with pytest.raises(
        ConfigError, match=r"runtime.mlflow='http://127.0.0.1:9': could not start.*connection refused"
    ):
        Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "down").run()
    assert json.loads((tmp_path / "down" / "summary.json").read_text())["status"] == "failed"


def test_tracking_without_its_package_is_a_config_error_before_the_run(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    overrides = small_overrides(**{"runtime.mlflow": "file:///tmp/mlruns"})
    with pytest.raises(ConfigError, match=r"runtime.mlflow needs the mlflow package.*fedsim\[tracking\]"):
        Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "none").run()
    assert not (tmp_path / "none").exists()
