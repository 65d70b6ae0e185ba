"""Losses and tasks through a config: regression (model.loss: mse) on CSV data with natural
clients and on parquet, Hugging Face, loader and npz data; what acts on the flat vector,
reports, sweeps and pruning under regression; a callable loss; mse on the numpy engine;
next-token prediction (Shakespeare, and logits per position); bad input as one line
(exit code 2)."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.errors import DataError
from simulator import Simulation
from simulator.cli import main
from simulator.config.build import build_run
from simulator.config.loading import load_config
from tests.conftest import ROOT, small_overrides
from tests.test_own_data import assert_one_line

DEFAULT = ROOT / "configs" / "default.yaml"
WEIGHTS = np.array([1.5, -2.0, 0.5, 1.0])  # the linear target the CSV rows follow


def write_regression_csv(folder: Path, seed: int = 0) -> None:
    """train.csv (96 rows) and test.csv (32): four features, a float ``target`` (a linear
    function of them plus noise) and a ``site`` column naming 4 natural clients."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, rows in (("train", 96), ("test", 32)):
        x = rng.normal(0, 1, (rows, 4))
        y = x @ WEIGHTS + 0.3 + rng.normal(0, 0.1, rows)
        with (folder / f"{name}.csv").open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["a", "b", "c", "d", "target", "site"])
            for i in range(rows):
                out.writerow([*(f"{v:.4f}" for v in x[i]), f"{y[i]:.4f}", f"s{i % 4}"])


def regression_config(tmp_path: Path) -> Path:
    """A YAML config of a 3-round mse run on the CSV under tmp_path/csv, clients by site."""
    write_regression_csv(tmp_path / "csv")
    config = {
        "name": "regression",
        "rounds": 3,
        "data": {
            "dataset": "csv", "root": str(tmp_path / "csv"), "label": "target",
            "client_column": "site", "partition": "natural", "num_clients": 4,
        },
        "model": {"name": "mlp", "hidden": [16], "loss": "mse"},
        "client": {"lr": 0.05, "batch_size": 8},
        "server": {"clients_per_round": 4},
        "runtime": {"workers": 1, "cpus_per_worker": 1.0},
    }  # fmt: skip
    path = tmp_path / "regression.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "model",
    [
        {"model.name": "mlp"},
        {
            "model.name": "module",
            "model.factory": "tests.regression_models:regressor",
            "model.kwargs": {"num_features": 4},
        },
    ],  # fmt: skip
    ids=["mlp", "module"],
)
def test_a_regression_run_learns_and_reports_loss_without_accuracy(model, ray_cluster, tmp_path):
    config = regression_config(tmp_path)
    overrides = {**model, "server.federated_eval.every": 3, "server.federated_eval.fraction": 1.0}
    Simulation.from_yaml(config, overrides, run_dir=tmp_path / "run").run()
    rows = rows_of(tmp_path / "run")
    losses = [row["test_loss"] for row in rows]
    assert losses[-1] < losses[0] and rows[-1]["train_loss"] < rows[0]["train_loss"], losses
    assert not [key for row in rows for key in row if "accuracy" in key]  # absent, not null
    assert rows[-1]["federated_clients"] == 4 and rows[-1]["federated_loss"] > 0
    clients = [json.loads(line) for line in (tmp_path / "run" / "clients.jsonl").read_text().splitlines()]
    assert clients and all("loss" in r and "accuracy" not in r for r in clients)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_test_loss"] == min(losses) and "final_test_accuracy" not in summary
    if model["model.name"] == "module":
        assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "report")]) == 0
        html = (tmp_path / "report" / "report.html").read_text()
        assert "Final test loss" in html and "panel-federated-loss" in html
        assert "accuracy" not in html.lower()  # no accuracy panel, column or heading
        target = ["report", str(tmp_path / "run"), "--target", "0.5", "--out", str(tmp_path / "r2")]
        assert main(target) == 2  # no accuracy to reach


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_callable_cross_entropy_gives_the_bits_of_the_built_in_one(ray_cluster, tmp_path):
    runs = {}
    losses = {
        "builtin": "cross_entropy",
        "callable": "tests.regression_models:cross_entropy",
        "smoothed": "tests.regression_models:smoothed_cross_entropy",  # the callable is what trains
    }
    for name, loss in losses.items():
        overrides = small_overrides(
            rounds=2, **{"model.loss": loss, "data.num_clients": 4, "server.clients_per_round": 2},
            **{"runtime.workers": 1, "runtime.cpus_per_worker": 1.0},
        )  # fmt: skip
        Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / name).run()
        runs[name] = _sha256(tmp_path / name / "model.safetensors")
    assert runs["builtin"] == runs["callable"] != runs["smoothed"]


def test_mse_on_the_numpy_engine_agrees_with_torch(ray_cluster, tmp_path):
    """Both engines in float32 from the same initial vector: only summation order differs,
    so after 3 rounds of SGD the parameters agree to ~1e-6 relative; 1e-4 leaves room."""
    config = regression_config(tmp_path)
    final = {}
    for engine in ("torch", "numpy"):
        history = Simulation.from_yaml(config, {"model.engine": engine}, run_dir=tmp_path / engine).run()
        final[engine] = history.final_params
    np.testing.assert_allclose(final["numpy"], final["torch"], rtol=1e-4, atol=1e-5)
    assert main(["gradcheck", "--model", "mlp-mse"]) == 0  # finite differences and autograd


def _validate(capsys, config: Path, overrides: dict, data: bool) -> tuple[int, str]:
    args = ["validate", str(config), *(["--data"] if data else [])]
    for key, value in overrides.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    code = main(args)
    return code, capsys.readouterr().err


MODULE = {"model.name": "module", "model.factory": "tests.regression_models:regressor"}


@pytest.mark.parametrize(
    ("overrides", "data", "fragments"),
    [
        ({"data.partition": "dirichlet"}, False, ["data.partition", "dirichlet", "regression"]),
        (
            {"model.loss": "tests.regression_models.per_sample_mse"},
            False,
            ["model.loss", "is not a loss", "package.module:callable"],
        ),
        (
            {"model.loss": "no_such_loss_fedsim:mse"},
            True,
            ["model.loss", "no module named 'no_such_loss_fedsim'"],
        ),
        (
            {"model.loss": "tests.regression_models:nothing"},
            True,
            ["model.loss", "has no attribute 'nothing'"],
        ),
        ({"model.loss": "tests.regression_models:per_sample_mse"}, True, ["model.loss", "scalar"]),
        ({"model.loss": "tests.regression_models:detached_mse"}, True, ["model.loss", "no gradient"]),
        ({"model.loss": "tests.regression_models:nan_loss"}, True, ["model.loss", "nan", "finite"]),
        ({**MODULE, "model.kwargs": {"num_features": 4, "outputs": 2}}, True, ["model.factory", "(2, 2)"]),
        ({"model.loss": "mse", "model.task": "classification"}, False, ["model.task", "regression"]),
        (
            {"model.loss": "tests.regression_models:cross_entropy", "model.engine": "numpy"},
            False,
            ["model.loss", "model.engine"],
        ),
    ],  # fmt: skip
    ids=[
        "dirichlet",
        "no_colon",
        "missing_module",
        "missing_attribute",
        "not_scalar",
        "detached",
        "nan",
        "output_width",
        "mse_classification",
        "callable_on_numpy",
    ],  # fmt: skip
)
def test_bad_input_is_one_line_and_exit_2(overrides, data, fragments, tmp_path, capsys):
    config = regression_config(tmp_path)
    if data:  # the config alone is fine: what is wrong shows only once its code runs
        assert _validate(capsys, config, overrides, data=False)[0] == 0
    assert_one_line(*_validate(capsys, config, overrides, data), *fragments)


def test_a_loss_that_fails_past_the_probe_stops_the_run_in_one_line(ray_cluster, tmp_path, capsys):
    """A client's failure travels back from its worker as one line naming client and round
    (the exception must survive Ray's pickling), exit 2, no traceback."""
    config = regression_config(tmp_path)
    args = ["run", str(config), "--out", str(tmp_path / "run"), "--quiet"]
    code = main([*args, "--set", "model.loss=tests.regression_models:mse_for_probes_only"])
    assert_one_line(code, capsys.readouterr().err, "client", "round 1", "fails on training batches")


def test_a_callable_loss_reads_whole_number_labels_as_classes(ray_cluster, tmp_path):
    """Under model.task auto a callable loss trains a regression on float targets, and a
    classifier (with accuracy) on labels that are whole numbers, float-typed or not."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (60, 3))
    labels = (x[:, 0] > 0).astype(np.float64)  # 0.0 / 1.0: classes, not targets
    np.savez(tmp_path / "whole.npz", x_train=x[:40], y_train=labels[:40], x_test=x[40:], y_test=labels[40:])
    config = regression_config(tmp_path)
    overrides = {
        "data.dataset": "npz", "data.root": str(tmp_path / "whole.npz"), "data.partition": "iid",
        "data.client_column": None, "data.label": "label", "rounds": 1,
        "model.loss": "tests.regression_models:either",
    }  # fmt: skip
    Simulation.from_yaml(config, overrides, run_dir=tmp_path / "run").run()
    assert "test_accuracy" in rows_of(tmp_path / "run")[0]


def test_regression_on_a_built_in_dataset_is_refused(capsys):
    assert_one_line(*_validate(capsys, DEFAULT, {"model.loss": "mse"}, False), "model.loss", "float targets")


def test_validate_without_data_never_imports_a_callable_loss(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "exploding_loss.py").write_text("raise RuntimeError('imported')\ndef loss(o, t):\n    pass\n")
    config = regression_config(tmp_path)
    overrides = {"model.loss": "exploding_loss:loss"}
    code, err = _validate(capsys, config, overrides, data=False)
    assert code == 0, err
    assert "exploding_loss" not in sys.modules
    assert_one_line(*_validate(capsys, config, overrides, data=True), "model.loss", "raised RuntimeError")


def _write_leaf(root: Path, users: dict[str, list[tuple[str, str]]], split: str) -> None:
    folder = root / "shakespeare" / "data" / split
    folder.mkdir(parents=True, exist_ok=True)
    body = {
        "users": list(users),
        "num_samples": [len(rows) for rows in users.values()],
        "user_data": {u: {"x": [w for w, _ in rows], "y": [c for _, c in rows]} for u, rows in users.items()},
    }
    (folder / "all_data_0.json").write_text(json.dumps(body))


def test_a_module_model_predicts_the_next_character_of_shakespeare(ray_cluster, tmp_path):
    """LEAF-format text (windows of 80 characters, the next one as label) and a module model
    giving (B, 80) logits: classification, with accuracy."""
    text = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer. " * 2
    windows = [(text[i : i + 80], text[i + 80]) for i in range(40)]
    _write_leaf(tmp_path, {"HAMLET": windows[:16], "OPHELIA": windows[16:30]}, "train")
    _write_leaf(tmp_path, {"HAMLET": windows[30:35], "OPHELIA": windows[35:]}, "test")
    overrides = {
        "rounds": 1, "data.root": str(tmp_path), "data.num_clients": 2, "server.clients_per_round": 2,
        "model.name": "module", "model.factory": "tests.regression_models:NextChar",
        "runtime.workers": 1, "runtime.cpus_per_worker": 1.0,
    }  # fmt: skip
    config = ROOT / "configs" / "shakespeare_lstm.yaml"
    history = Simulation.from_yaml(config, overrides, run_dir=tmp_path / "run").run()
    row = history.rows[-1]
    assert row["num_samples"] == 30 and 0 <= row["test_accuracy"] <= 1 and np.isfinite(row["test_loss"])
    assert history.summary["num_parameters"] == 80 * 8 + 8 * 80 + 80


@pytest.mark.slow
def test_a_regression_sweep_and_prune_compare_loss(ray_cluster, tmp_path, capsys):
    config = regression_config(tmp_path)
    out = tmp_path / "sweep"
    grid = ["--grid", "client.lr=0.02,0.05", "--set", "rounds=1"]
    assert main(["sweep", str(config), *grid, "--out", str(out)]) == 0
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert all(r["final_test_loss"] > 0 and r["final_test_accuracy"] is None for r in runs)
    html = (out / "comparison.html").read_text()
    assert "final test loss" in html and "accuracy" not in html
    capsys.readouterr()
    run_dir = out / runs[0]["directory"]
    assert main(["prune", str(run_dir), "--method", "magnitude", "--sparsity", "0.5"]) == 0
    prune = json.loads((run_dir / "prune.json").read_text())
    assert "test_accuracy" not in prune["baseline"] and prune["results"][0]["test_loss"] > 0
    assert "unpruned test loss" in capsys.readouterr().out


def test_two_column_npz_targets_train_and_shards_give_each_client_a_band_of_targets(ray_cluster, tmp_path):
    """y (N, 2) float targets from an .npz: a module model with two outputs trains, and the
    shards partition (one shard each) sorts rows by target, so the clients' target ranges
    do not overlap."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (80, 4)).astype(np.float32)
    y = np.stack([x @ WEIGHTS, x[:, 0] - x[:, 1]], axis=1)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    config = regression_config(tmp_path)
    overrides = {
        "data.dataset": "npz", "data.root": str(tmp_path / "data.npz"), "data.label": "label",
        "data.client_column": None, "data.partition": "shards", "data.shards_per_client": 1,
        "model.name": "module", "model.factory": "tests.regression_models:regressor",
        "model.kwargs": {"num_features": 4, "outputs": 2}, "rounds": 1,
    }  # fmt: skip
    setup = build_run(load_config(config, overrides))
    means = [setup.dataset.y_train[rows].mean(axis=1) for rows in setup.splits.train]
    bands = sorted((m.min(), m.max()) for m in means)
    assert all(high <= low for (_, high), (low, _) in zip(bands, bands[1:], strict=False))
    history = Simulation.from_yaml(config, overrides, run_dir=tmp_path / "run").run()
    assert "test_accuracy" not in history.rows[-1] and np.isfinite(history.rows[-1]["test_loss"])


def test_two_column_targets_of_integer_features_train_the_built_in_mlp(ray_cluster, tmp_path):
    """Integer features with (N, 2) float targets are a regression on numbers, not token ids
    of a sequence model: the built-in mlp trains on them and outputs two values."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, (80, 4))
    np.savez(tmp_path / "counts.npz", x=x, y=np.stack([x @ WEIGHTS, x[:, 0] - x[:, 1]], axis=1))
    overrides = {
        "data.dataset": "npz", "data.root": str(tmp_path / "counts.npz"), "data.label": "label",
        "data.client_column": None, "data.partition": "iid", "rounds": 1,
    }  # fmt: skip
    history = Simulation.from_yaml(regression_config(tmp_path), overrides, run_dir=tmp_path / "run").run()
    assert history.final_params.size == 4 * 16 + 16 + 16 * 2 + 2  # hidden [16], two outputs
    assert np.isfinite(rows_of(tmp_path / "run")[0]["test_loss"])


def write_sequences(path: Path) -> None:
    """An .npz of token windows x (120, 10) over a vocabulary of 6 (each next token is the
    current one plus one, mod 6, after a random start) and their next tokens y (120, 10)."""
    rng = np.random.default_rng(0)
    start = rng.integers(0, 6, (120, 1))
    tokens = (start + np.arange(11)) % 6
    np.savez(path, x=tokens[:, :-1], y=tokens[:, 1:])


def test_per_position_logits_learn_next_tokens_with_accuracy_per_token(ray_cluster, tmp_path):
    write_sequences(tmp_path / "seq.npz")
    config = regression_config(tmp_path)  # its runtime; the data and model are replaced
    overrides = {
        "data.dataset": "npz", "data.root": str(tmp_path / "seq.npz"), "data.client_column": None,
        "data.partition": "iid", "data.label": "label", "model.name": "module", "model.loss": "cross_entropy",
        "model.factory": "tests.regression_models:PerPosition", "client.lr": 0.5, "rounds": 2,
    }  # fmt: skip
    history = Simulation.from_yaml(config, overrides, run_dir=tmp_path / "run").run()
    first, last = history.rows
    assert last["test_loss"] < first["test_loss"] and 0 <= last["test_accuracy"] <= 1
    # accuracy is per token: a multiple of 1 / (24 test rows x 10 positions)
    assert round(last["test_accuracy"] * 240, 6) == round(last["test_accuracy"] * 240)


def test_per_position_labels_refuse_class_partitions_and_built_in_models(tmp_path, capsys):
    write_sequences(tmp_path / "seq.npz")
    config = regression_config(tmp_path)
    data = {
        "data.dataset": "npz", "data.root": str(tmp_path / "seq.npz"), "data.client_column": None,
        "data.label": "label", "model.loss": "cross_entropy",
    }  # fmt: skip
    module = {"model.name": "module", "model.factory": "tests.regression_models:PerPosition"}
    code, err = _validate(capsys, config, {**data, **module, "data.partition": "shards"}, True)
    assert_one_line(code, err, "data.partition", "class ids per position")
    code, err = _validate(capsys, config, {**data, "data.partition": "iid"}, True)
    assert_one_line(code, err, "model.name", "logits (B, T, classes)")


@pytest.mark.parametrize("fmt", ["parquet", "hf_disk", "arrays"])
def test_float_label_columns_become_regression_targets_in_every_format(fmt, tmp_path, monkeypatch):
    """The float label column (parquet, Hugging Face) or y array (a loader's) is read as
    float32 targets under mse, the same values whatever the format; under cross_entropy
    the same floats are refused, as they are no class ids."""
    rng = np.random.default_rng(0)
    x, targets = rng.normal(0, 1, (40, 3)), rng.normal(0, 1, 40).round(3)
    root = tmp_path / fmt
    if fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "target": targets}), root)
        overrides = {"data.dataset": "parquet", "data.root": str(root), "data.label": "target"}
    elif fmt == "hf_disk":
        datasets = pytest.importorskip("datasets")
        table = {
            "a": x[:, 0].tolist(),
            "b": x[:, 1].tolist(),
            "c": x[:, 2].tolist(),
            "target": targets.tolist(),
        }
        datasets.Dataset.from_dict(table).save_to_disk(str(root))
        overrides = {"data.dataset": "hf_disk", "data.root": str(root), "data.label": "target"}
    else:
        monkeypatch.syspath_prepend(str(tmp_path))
        (tmp_path / "float_loader.py").write_text(
            "import numpy as np\n"
            "def load():\n"
            "    rng = np.random.default_rng(0)\n"
            "    x, y = rng.normal(0, 1, (40, 3)), rng.normal(0, 1, 40).round(3)\n"
            "    return {'x': x, 'y': y}\n"
        )
        overrides = {"data.dataset": "arrays", "data.loader": "float_loader:load"}
    overrides.update({"data.partition": "iid", "data.num_clients": 2, "server.clients_per_round": 2})
    dataset = build_run(load_config(DEFAULT, {**overrides, "model.loss": "mse"})).dataset
    assert dataset.y_train.dtype == np.float32 and dataset.num_classes == 1
    rows = np.concatenate([dataset.y_train, dataset.y_test])
    np.testing.assert_array_equal(np.sort(rows), np.sort(targets.astype(np.float32)))
    refused = "not all whole.*model.loss: mse"  # the same floats under cross_entropy: no class ids
    with pytest.raises(DataError, match=refused):
        build_run(load_config(DEFAULT, overrides))


ON_THE_FLAT_VECTOR = {
    "fedprox": {"client.prox_mu": 0.1},
    "scaffold": {"client.algorithm": "scaffold"},
    "dp": {
        "server.clipping.kind": "fixed",
        "server.privacy.noise_multiplier": 0.5,
        "server.weighting": "uniform",
    },
    "ditto": {"client.personalization.method": "ditto", "server.federated_eval.every": 1},
    "fedper": {"client.personalization.method": "fedper", "server.federated_eval.every": 1},
    "async": {"server.mode": "async", "server.async.concurrency": 4, "server.async.buffer_size": 2},
    "finetuned_eval": {"server.federated_eval.every": 1, "server.federated_eval.finetune_steps": 2},
}


@pytest.mark.parametrize("case", list(ON_THE_FLAT_VECTOR))
def test_what_acts_on_the_flat_vector_trains_a_regression_run(case, ray_cluster, tmp_path):
    config = regression_config(tmp_path)
    overrides = {**ON_THE_FLAT_VECTOR[case], "rounds": 2}
    history = Simulation.from_yaml(config, overrides, run_dir=tmp_path / "run").run()
    row = history.rows[-1]
    assert len(history.rows) == 2 and row["num_clients"] > 0
    assert np.isfinite(row["test_loss"]) and not [key for key in row if "accuracy" in key]
    if "server.federated_eval.every" in overrides:
        own = {"ditto": "personal_loss", "fedper": "personal_loss", "finetuned_eval": "finetuned_loss"}[case]
        assert np.isfinite(row["federated_loss"]) and np.isfinite(row[own])
