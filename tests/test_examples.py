"""The examples in examples/ run as a user runs them: `fedsim run examples/.../config.yaml`
from the repository root, here on tiny generated copies of their data in the standard
on-disk layouts (CIFAR-10's python batches, LEAF's Shakespeare JSON, a CSV file), with
smaller models and populations set on the command line as a user would."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.data.leaf import ALL_LETTERS
from simulator.cli import main
from simulator.rundir.checkpoints import load_model
from simulator.rundir.metrics import read_metrics
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
CONFIGS = {
    "resnet18": EXAMPLES / "resnet18_cifar10" / "config.yaml",
    "resnet18_torchvision": EXAMPLES / "resnet18_cifar10" / "config_torchvision.yaml",
    "shakespeare": EXAMPLES / "shakespeare_transformer" / "config.yaml",
    "tabular": EXAMPLES / "tabular_regression" / "config.yaml",
}
SMALL_RUN = {
    "rounds": 1, "data.num_clients": 4, "server.clients_per_round": 2,
    "runtime.workers": 1, "runtime.cpus_per_worker": 1.0,
}  # fmt: skip


def write_cifar10(root: Path, per_batch: int = 8, test: int = 6) -> None:
    """CIFAR-10's python layout under root/cifar-10-batches-py/, as the archive holds it:
    data_batch_1..5 and test_batch (dicts of b'data' (n, 3072) uint8, b'labels', ...,
    pickled with protocol 2) and batches.meta; random pixels, every label present."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(count: int, label: bytes) -> bytes:
        return pickle.dumps(
            {
                b"batch_label": label,
                b"labels": [int(y) for y in rng.permutation(np.arange(count) % 10)],
                b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                b"filenames": [f"image_{i}.png".encode() for i in range(count)],
            },
            protocol=2,
        )

    for index in range(1, 6):
        label = f"training batch {index} of 5".encode()
        (folder / f"data_batch_{index}").write_bytes(batch(per_batch, label))
    (folder / "test_batch").write_bytes(batch(test, b"testing batch 1 of 1"))
    names = b"airplane automobile bird cat deer dog frog horse ship truck".split()
    meta = {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def write_shakespeare(root: Path, roles: int = 4, windows: int = 12) -> None:
    """LEAF's layout under root/shakespeare/data/{train,test}/: one JSON shard per split,
    each role's 80-character windows of its own text and the character after each."""
    rng = np.random.default_rng(0)
    letters = np.array(list(ALL_LETTERS))
    for split, count in (("train", windows), ("test", windows // 4)):
        user_data = {}
        for role in range(roles):
            text = "".join(rng.choice(letters, count + 80))
            x = [text[i : i + 80] for i in range(count)]
            user_data[f"ROLE_{role}"] = {"x": x, "y": [text[i + 80] for i in range(count)]}
        folder = root / "shakespeare" / "data" / split
        folder.mkdir(parents=True)
        shard = {"users": list(user_data), "num_samples": [count] * roles, "user_data": user_data}
        (folder / "all_data_niid_0_keep_0_sample.json").write_text(json.dumps(shard))


def fedsim_run(config: Path, out: Path, overrides: dict, monkeypatch, capsys) -> int:
    """`fedsim run CONFIG --out OUT --quiet --set KEY=VALUE ...` from the repository root,
    in this process (the session's Ray); its exit code (stderr shown on failure)."""
    monkeypatch.chdir(ROOT)
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    code = main(["run", str(config.relative_to(ROOT)), "--out", str(out), "--quiet", *sets])
    assert code == 0, capsys.readouterr().err
    return code


def parameter_count(factory, **kwargs) -> int:
    return sum(p.numel() for p in factory(**kwargs).parameters())


def assert_trained(out: Path, expected_parameters: int, classification: bool = True) -> list[dict]:
    """The run wrote a model with the module's parameter count and a finite metrics row
    (with the test accuracy for classification, none for regression)."""
    model = load_model(out / "model.safetensors")
    assert sum(tensor.size for tensor in model.values()) == expected_parameters
    rows = read_metrics(out / "metrics.jsonl")
    assert [row["round"] for row in rows] == [1]
    assert math.isfinite(rows[0]["train_loss"]) and math.isfinite(rows[0]["test_loss"])
    if classification:
        assert 0.0 <= rows[0]["test_accuracy"] <= 1.0
    else:
        assert "test_accuracy" not in rows[0]
    return rows


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_the_resnet18_example_trains_on_cifar10_batches(norm, ray_cluster, tmp_path, monkeypatch, capsys):
    from examples.resnet18_cifar10.model import resnet18

    write_cifar10(tmp_path / "data")
    kwargs = {"num_classes": 10, "width": 4, "norm": norm, "groups": 2}
    overrides = {**SMALL_RUN, "data.root": str(tmp_path / "data"), "data.verify": False}
    overrides["model.kwargs"] = kwargs
    fedsim_run(CONFIGS["resnet18"], tmp_path / "run", overrides, monkeypatch, capsys)
    assert_trained(tmp_path / "run", parameter_count(resnet18, **kwargs))
    names = sorted(load_model(tmp_path / "run" / "model.safetensors"))
    assert names == sorted(name for name, _ in resnet18(**kwargs).named_parameters())
    assert ("layer1.0.norm1.weight" in names) and ("fc.weight" in names)


def test_the_torchvision_resnet18_example_trains_on_cifar10_batches(
    ray_cluster, tmp_path, monkeypatch, capsys
):
    models = pytest.importorskip(
        "torchvision.models",
        reason="torchvision is not installed (pip install torchvision, the build matching your torch)",
    )
    write_cifar10(tmp_path / "data")
    overrides = {**SMALL_RUN, "data.root": str(tmp_path / "data"), "data.verify": False}
    fedsim_run(CONFIGS["resnet18_torchvision"], tmp_path / "run", overrides, monkeypatch, capsys)
    assert_trained(tmp_path / "run", parameter_count(models.resnet18, num_classes=10))


def test_the_shakespeare_transformer_example_trains_on_leaf_json(ray_cluster, tmp_path, monkeypatch, capsys):
    from examples.shakespeare_transformer.model import transformer

    write_shakespeare(tmp_path / "leaf")
    overrides = {**SMALL_RUN, "data.root": str(tmp_path / "leaf"), "server.eval_batch_size": 8}
    fedsim_run(CONFIGS["shakespeare"], tmp_path / "run", overrides, monkeypatch, capsys)
    rows = assert_trained(tmp_path / "run", parameter_count(transformer))
    assert rows[0]["num_clients"] == 2


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_the_tabular_example_writes_its_data_and_regresses_on_natural_clients(
    fmt, ray_cluster, tmp_path, monkeypatch, capsys
):
    from examples.tabular_regression.model import mlp_regressor

    if fmt == "parquet":
        pytest.importorskip("pyarrow", reason="parquet needs pyarrow (pip install 'fedsim[data]')")
    make_data = [sys.executable, str(EXAMPLES / "tabular_regression" / "make_data.py")]
    written = subprocess.run(
        [*make_data, "--out", str(tmp_path / "data"), "--sites", "4", "--rows", "12", "--format", fmt],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == [f"test.{fmt}", f"train.{fmt}"]
    overrides = {**SMALL_RUN, "data.dataset": fmt, "data.root": str(tmp_path / "data")}
    overrides["server.federated_eval.every"] = 1  # each site evaluates on its own test rows
    fedsim_run(CONFIGS["tabular"], tmp_path / "run", overrides, monkeypatch, capsys)
    rows = assert_trained(tmp_path / "run", parameter_count(mlp_regressor), classification=False)
    assert rows[0]["num_clients"] == 2 and math.isfinite(rows[0]["federated_loss"])


def test_the_tabular_examples_shipped_data_is_what_make_data_writes(tmp_path):
    """The CSV files the example runs on as cloned are make_data.py's seeded output, byte for
    byte, so anyone can regenerate (or enlarge) them."""
    shipped = EXAMPLES / "tabular_regression" / "data"
    make_data = [sys.executable, str(EXAMPLES / "tabular_regression" / "make_data.py")]
    written = subprocess.run(
        [*make_data, "--out", str(tmp_path), "--rows", "40"], capture_output=True, text=True, timeout=60
    )
    assert written.returncode == 0, written.stderr
    for name in ("train.csv", "test.csv"):
        assert (tmp_path / name).read_bytes() == (shipped / name).read_bytes(), name


def test_validate_checks_every_example_without_importing_its_code():
    """Plain `fedsim validate` (no --data) of each example exits 0 and imports none of the
    examples' modules, nor torchvision (a subprocess, so that no other test's imports count)."""
    script = (
        "import sys\n"
        "from simulator.cli import main\n"
        f"codes = [main(['validate', str(c)]) for c in {[str(c) for c in CONFIGS.values()]!r}]\n"
        "imported = sorted(m for m in sys.modules if m.startswith(('examples', 'torchvision')))\n"
        "print('RESULT', codes, imported)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"RESULT {[0] * len(CONFIGS)} []", result.stdout[-2000:]
