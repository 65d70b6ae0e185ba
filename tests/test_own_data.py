"""Users' own data through a config: arrays from code, .npz, ImageFolder, CSV, parquet and
Hugging Face datasets; natural clients from a column; normalisation and augmentation;
bad input as one line (exit code 2)."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.data.transforms import Augmentation
from clients.errors import DataError
from simulator import Simulation
from simulator.cli import main
from simulator.config.build import build_dataset, build_run
from simulator.config.loading import load_config
from tests.conftest import ROOT, small_overrides

DEFAULT = ROOT / "configs" / "default.yaml"
CLASSES, FEATURES = 3, 6


def tabular(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (rows, FEATURES) float32 with the class in the first features, y (rows,) in
    0..CLASSES-1, and a writer per row ("w0".."w4")."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % CLASSES
    x = rng.normal(0, 0.3, (rows, FEATURES)).astype(np.float32)
    x[np.arange(rows), y] += 2.0
    writers = np.array([f"w{i % 5}" for i in range(rows)])
    return x, y, writers


def images(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, 1, 8, 8) uint8 images whose bright row is the class, and labels."""
    rng = np.random.default_rng(seed)
    y = np.arange(rows) % CLASSES
    x = rng.integers(0, 60, (rows, 1, 8, 8)).astype(np.uint8)
    x[np.arange(rows), 0, 2 * y + 1] = 250
    return x, y


def write_csv(path: Path, x: np.ndarray, y: np.ndarray, writers: np.ndarray) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*(f"f{j}" for j in range(FEATURES)), "label", "writer"])
        for row, label, writer in zip(x, y, writers, strict=True):
            out.writerow([*(f"{v:.4f}" for v in row), f"c{label}", writer])


def write_data(fmt: str, tmp: Path) -> dict:
    """Tiny data of format ``fmt`` under tmp; the overrides that read it."""
    x, y, writers = tabular(90, 0)
    xt, yt, writers_t = tabular(30, 1)
    overrides = {"data.dataset": fmt, "data.root": str(tmp / fmt)}
    if fmt == "npz":
        np.savez(tmp / "npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
        overrides["data.root"] = str(tmp / "npz.npz")
    elif fmt == "npz_pooled":
        np.savez(tmp / "pooled", x=x, y=y)
        overrides.update({"data.dataset": "npz", "data.root": str(tmp / "pooled.npz")})
    elif fmt == "csv":
        (tmp / "csv").mkdir()
        write_csv(tmp / "csv" / "train.csv", x, y, writers)
        write_csv(tmp / "csv" / "test.csv", xt, yt, writers_t)
        overrides["data.client_column"] = "writer"  # not a feature
    elif fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        table = pa.table({**{f"f{j}": x[:, j] for j in range(FEATURES)}, "label": y, "writer": writers})
        pq.write_table(table, tmp / "data.parquet")
        overrides["data.root"] = str(tmp / "data.parquet")  # one file: the test split is held out
        overrides["data.client_column"] = "writer"
    elif fmt == "hf_disk":
        datasets = pytest.importorskip(
            "datasets", reason="the `datasets` package (pip install 'fedsim[data]')"
        )
        splits = {
            name: datasets.Dataset.from_dict(
                {"pixels": a.reshape(len(a), 1, 2, 3).tolist(), "label": b.tolist()}
            )
            for name, (a, b) in {"train": (x, y), "test": (xt, yt)}.items()
        }
        datasets.DatasetDict(splits).save_to_disk(str(tmp / "hf_disk"))
    elif fmt == "image_folder":
        from PIL import Image

        for split, (pixels, labels) in {"train": images(60, 0), "test": images(15, 1)}.items():
            for i, (image, label) in enumerate(zip(pixels, labels, strict=True)):
                folder = tmp / "image_folder" / split / f"class_{label}"
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image[0]).save(folder / f"{i}.png")
    elif fmt == "arrays":
        (tmp / "my_loader.py").write_text(
            "import numpy as np\n"
            "def load():\n"
            f"    d = np.load({str(tmp / 'arrays.npz')!r})\n"
            "    return {k: d[k] for k in d.files}\n"
        )
        np.savez(tmp / "arrays", x_train=x, y_train=y, x_test=xt, y_test=yt)
        overrides = {"data.dataset": "arrays", "data.loader": "my_loader:load"}
    return overrides


FORMATS = ["arrays", "npz", "npz_pooled", "image_folder", "csv", "parquet", "hf_disk"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_through_a_config_and_trains_a_round(fmt, ray_cluster, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = small_overrides(rounds=1, **write_data(fmt, tmp_path))
    history = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "run").run()
    assert len(history.rows) == 1 and np.isfinite(history.rows[0]["test_loss"])
    assert history.rows[0]["num_clients"] == 6


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_natural_clients_from_a_column_give_one_client_per_distinct_value(fmt, tmp_path):
    overrides = write_data(fmt, tmp_path)
    overrides.update({"data.client_column": "writer", "data.partition": "natural", "data.num_clients": 5})
    overrides["server.clients_per_round"] = 2
    setup = build_run(load_config(DEFAULT, overrides))
    x = setup.dataset.x_train
    assert len(setup.splits.train) == 5
    assert sum(len(part) for part in setup.splits.train) == len(x)
    for client, part in enumerate(setup.splits.train):  # writers w0..w4 in sorted order
        assert np.all(setup.dataset.train_owner[part] == client)
    too_many = {**overrides, "data.num_clients": 6}
    with pytest.raises(DataError, match="has 5 clients"):
        build_run(load_config(DEFAULT, too_many))


def test_labels_given_as_names_are_numbered_in_sorted_order(tmp_path):
    overrides = {**write_data("csv", tmp_path), "data.features": [f"f{j}" for j in range(FEATURES)]}
    del overrides["data.client_column"]  # the writer column is then simply not read
    dataset = build_dataset(load_config(DEFAULT, overrides).data, 0)
    _, y, _ = tabular(90, 0)
    assert dataset.input_shape == (FEATURES,) and dataset.train_owner is None
    assert dataset.num_classes == CLASSES and dataset.y_train.tolist() == y.tolist()  # c0 < c1 < c2


def test_normalize_uses_the_training_split_statistics_only(tmp_path):
    overrides = write_data("npz", tmp_path)
    x, _, _ = tabular(90, 0)
    xt, _, _ = tabular(30, 1)
    standard = build_dataset(load_config(DEFAULT, {**overrides, "data.normalize": "standard"}).data, 0)
    mean, std = x.astype(np.float64).mean(0), x.astype(np.float64).std(0)
    np.testing.assert_allclose(standard.x_train.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(standard.x_test, (xt - mean) / std, rtol=1e-4, atol=1e-5)
    minmax = build_dataset(load_config(DEFAULT, {**overrides, "data.normalize": "minmax"}).data, 0)
    assert minmax.x_train.min() == 0 and minmax.x_train.max() == 1
    np.testing.assert_allclose(minmax.x_test, (xt - x.min(0)) / (x.max(0) - x.min(0)), rtol=1e-4, atol=1e-5)


def test_image_folder_gives_scaled_channel_first_images(tmp_path):
    dataset = build_dataset(load_config(DEFAULT, write_data("image_folder", tmp_path)).data, 0)
    x, y = images(60, 0)
    order = np.argsort(y, kind="stable")  # class folders in order, files by name within
    assert dataset.input_shape == (1, 8, 8) and dataset.num_classes == CLASSES
    assert sorted(dataset.y_train.tolist()) == sorted(y.tolist())
    assert np.isclose(dataset.x_train.max(), 250 / 255) and set(np.unique(dataset.y_train)) == {0, 1, 2}
    assert len(order) == len(dataset.x_train)


def test_augmentation_crops_and_flips_by_the_generator_it_is_given():
    x = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
    flip = Augmentation(crop_padding=0, flip=True)
    rng = np.random.default_rng(5)
    rng.integers(0, 1, 2), rng.integers(0, 1, 2)  # the crop offsets are drawn first (span 1)
    expected_flips = rng.random(2) < 0.5
    out = flip.apply(x, np.random.default_rng(5))
    for i in range(2):
        assert np.array_equal(out[i], x[i][..., ::-1] if expected_flips[i] else x[i])
    crop = Augmentation(crop_padding=1, flip=False)
    out = crop.apply(x, np.random.default_rng(7))
    dy, dx = (lambda r: (r.integers(0, 3, 2), r.integers(0, 3, 2)))(np.random.default_rng(7))
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(2):
        assert np.array_equal(out[i], padded[i, :, dy[i] : dy[i] + 3, dx[i] : dx[i] + 3])
    torch = pytest.importorskip("torch")
    assert np.array_equal(crop.apply(torch.from_numpy(x), np.random.default_rng(7)).numpy(), out)


def test_augment_needs_images(tmp_path):
    overrides = {**write_data("npz", tmp_path), "data.augment": "flip"}
    with pytest.raises(DataError, match=r"crops and flips \(N, C, H, W\) images"):
        build_dataset(load_config(DEFAULT, overrides).data, 0)


def validate(capsys, overrides: dict, data: bool = True) -> tuple[int, str]:
    args = ["validate", str(DEFAULT), *(["--data"] if data else [])]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    code = main(args)
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("fedsim: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


LOADERS = {
    "mismatched": "def load():\n    return {'x_train': np.zeros((5, 2)), 'y_train': np.zeros(4, int),"
    " 'x_test': np.zeros((2, 2)), 'y_test': np.zeros(2, int)}\n",
    "empty": "def load():\n    return np.zeros((0, 2)), np.zeros(0, int), np.zeros((2, 2)), np.arange(2)\n",
}


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("mismatched", ["x_train has 5 rows, y_train 4"]),
        ("empty", ["the training split is empty"]),
        ("no_colon", ["data.loader", "is not an import path"]),
        ("missing_module", ["data.loader", "no module named 'no_such_module_fedsim'"]),
        ("missing_attribute", ["data.loader", "has no attribute 'nothing'"]),
        ("missing_column", ["no column 'nope'"]),
        ("empty_csv", ["empty; expected a header row"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, fragments, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    module = f"bad_loader_{case}"
    (tmp_path / f"{module}.py").write_text("import numpy as np\n" + LOADERS.get(case, "load = None\n"))
    overrides = {
        "mismatched": {"data.dataset": "arrays", "data.loader": f"{module}:load"},
        "empty": {"data.dataset": "arrays", "data.loader": f"{module}:load"},
        "no_colon": {"data.dataset": "arrays", "data.loader": f"{module}.load"},
        "missing_module": {"data.dataset": "arrays", "data.loader": "no_such_module_fedsim:load"},
        "missing_attribute": {"data.dataset": "arrays", "data.loader": f"{module}:nothing"},
        "missing_column": {**write_data("csv", tmp_path), "data.label": "nope"},
        "empty_csv": {"data.dataset": "csv", "data.root": str(tmp_path / "empty.csv")},
    }[case]
    (tmp_path / "empty.csv").write_text("")
    assert_one_line(*validate(capsys, overrides), *fragments)


def test_validate_without_data_never_imports_the_loader(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "imported"
    (tmp_path / "marking_loader.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import numpy as np\n"
        "def load():\n"
        "    x = np.eye(4, dtype=np.float32).repeat(10, 0)\n"
        "    return x, np.arange(40) % 4, x, np.arange(40) % 4\n"
    )
    overrides = {"data.dataset": "arrays", "data.loader": "marking_loader:load", "data.num_clients": 4}
    overrides["server.clients_per_round"] = 2
    code, err = validate(capsys, overrides, data=False)
    assert code == 0 and not marker.exists(), err
    code, err = validate(capsys, overrides, data=True)
    assert code == 0 and marker.exists(), err
    monkeypatch.delitem(sys.modules, "marking_loader")


def test_a_missing_optional_package_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    overrides = {"data.dataset": "parquet", "data.root": str(tmp_path / "t.parquet")}
    assert_one_line(*validate(capsys, overrides), "needs the pyarrow package", "fedsim[data]")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_dataset_files_must_be_regular_and_hold_no_pickles(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.csv")
    overrides = {"data.dataset": "csv", "data.root": str(tmp_path / "fifo.csv")}
    assert_one_line(*validate(capsys, overrides), "not a regular file")
    np.savez(tmp_path / "objects", x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    overrides = {"data.dataset": "npz", "data.root": str(tmp_path / "objects.npz")}
    assert_one_line(*validate(capsys, overrides), "holds Python objects")


def test_keys_of_other_formats_are_refused_without_reading_data(capsys):
    assert_one_line(*validate(capsys, {"data.label": "y"}, data=False), "data.label", "names a column")
    assert_one_line(*validate(capsys, {"data.loader": "m:f"}, data=False), "read with data.dataset: arrays")
    assert_one_line(*validate(capsys, {"data.dataset": "arrays"}, data=False), "needs data.loader")
    overrides = {"data.dataset": "csv", "data.partition": "natural"}
    assert_one_line(*validate(capsys, overrides, data=False), "data.client_column")


def test_one_file_holds_out_the_same_rows_whatever_its_format(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    x, y, _ = tabular(90, 0)
    np.savez(tmp_path / "pooled", x=x, y=y)
    pq.write_table(
        pa.table({**{f"f{j}": x[:, j] for j in range(FEATURES)}, "label": y}), tmp_path / "t.parquet"
    )
    from_npz = build_dataset(
        load_config(DEFAULT, {"data.dataset": "npz", "data.root": str(tmp_path / "pooled.npz")}).data, 3
    )
    from_parquet = build_dataset(
        load_config(DEFAULT, {"data.dataset": "parquet", "data.root": str(tmp_path / "t.parquet")}).data, 3
    )
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(from_npz, field), getattr(from_parquet, field)), field
    assert len(from_npz.y_test) == 18  # 20% of each class's 30 rows


PARQUET_MEMORY_PROBE = """
import sys, tracemalloc
from pathlib import Path
import pyarrow as pa
from simulator.config.loading import load_config
from simulator.config.build import build_dataset
overrides = {"data.dataset": "parquet", "data.root": sys.argv[1], "data.normalize": "standard"}
cfg = load_config(Path("configs/default.yaml"), overrides)
build_dataset(cfg.data, 0)  # imports allocate too: the first read is not measured
tracemalloc.start()
dataset = build_dataset(cfg.data, 0)
print(tracemalloc.get_traced_memory()[1], pa.default_memory_pool().max_memory())
"""


def test_a_parquet_file_is_held_once_not_as_a_table_and_again_as_arrays(tmp_path):
    """Peak numpy memory while reading, holding out and normalising: the features once, plus
    the held-out rows, a column's worth and labels; pyarrow's own pool (a fresh process's)
    holds about a column at a time, never the table."""
    pa = pytest.importorskip("pyarrow")
    import subprocess

    import pyarrow.parquet as pq

    rows, cols = 50_000, 64
    rng = np.random.default_rng(0)
    columns = {f"f{j}": rng.random(rows, dtype=np.float32) for j in range(cols)}
    pq.write_table(pa.table({**columns, "label": np.arange(rows) % 10}), tmp_path / "big.parquet")
    out = subprocess.run(
        [sys.executable, "-c", PARQUET_MEMORY_PROBE, str(tmp_path / "big.parquet")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    numpy_peak, arrow_peak = (int(v) / (rows * cols * 4) for v in out.stdout.split())
    assert numpy_peak < 1.5, numpy_peak  # x (1.0) + the held-out rows (0.2) + chunks, a column, labels
    assert arrow_peak < 0.25, arrow_peak  # a column at a time is 1/64 of x


def test_augmented_runs_are_the_same_whatever_the_worker_count(ray_cluster, tmp_path):
    overrides = small_overrides(
        rounds=2, **write_data("image_folder", tmp_path), **{"data.augment": "crop_flip"}
    )
    models = []
    for workers in (1, 2):
        run = {**overrides, "runtime.workers": workers, "name": f"w{workers}"}
        models.append(
            Simulation.from_yaml(DEFAULT, run, run_dir=tmp_path / f"run{workers}").run().final_params
        )
    plain = Simulation.from_yaml(
        DEFAULT, {**overrides, "data.augment": "none"}, run_dir=tmp_path / "plain"
    ).run()
    assert models[0].tobytes() == models[1].tobytes()
    assert plain.final_params.tobytes() != models[0].tobytes()


def test_the_example_loader_gives_one_client_per_sensor(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    code = main(["validate", "examples/own_data/config.yaml", "--data"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "data: arrays, 1,940 training rows over 40 clients" in err


def png_declaring(width: int, height: int) -> bytes:
    """A grey PNG whose header declares width x height, with a few bytes of pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 8))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [10_000, 100_000])  # over fedsim's 2^26 pixels; over PIL's own bomb guard
def test_an_image_declaring_billions_of_pixels_is_refused_undecoded(side, tmp_path, capsys):
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    (folder / "huge.png").write_bytes(png_declaring(side, side))
    (tmp_path / "images" / "dog").mkdir()
    overrides = {"data.dataset": "image_folder", "data.root": str(tmp_path / "images")}
    assert_one_line(*validate(capsys, overrides), "huge.png")


def test_an_npz_header_claiming_a_trillion_rows_is_refused_unallocated(tmp_path, capsys):
    import zipfile

    def npy(shape: tuple, body: bytes) -> bytes:
        header = repr({"descr": "<f4", "fortran_order": False, "shape": shape}).encode()
        header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + body

    with zipfile.ZipFile(tmp_path / "lying.npz", "w") as archive:
        archive.writestr("x.npy", npy((10**12, 2), b"\0" * 32))
        archive.writestr("y.npy", npy((4,), b"\0" * 16))
    overrides = {"data.dataset": "npz", "data.root": str(tmp_path / "lying.npz")}
    assert_one_line(*validate(capsys, overrides), "lying.npz", "header declares")


def test_client_ids_for_the_training_rows_alone_give_natural_clients(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "train_clients_only.py").write_text(
        "import numpy as np\n"
        "def load():\n"
        "    x = np.eye(3, dtype=np.float32).repeat(8, 0)\n"
        "    y = np.arange(24) // 8\n"
        "    return x, y, x[:6], y[:6], np.array(['b', 'a', 'c', 'd'] * 6)\n"
    )
    overrides = {
        "data.dataset": "arrays", "data.loader": "train_clients_only:load", "data.partition": "natural",
        "data.num_clients": 4, "server.clients_per_round": 2,
    }  # fmt: skip
    setup = build_run(load_config(DEFAULT, overrides))
    assert setup.dataset.test_owner is None and len(setup.dataset.y_test) == 6
    assert [part.tolist()[:2] for part in setup.splits.train] == [
        [1, 5],
        [0, 4],
        [2, 6],
        [3, 7],
    ]  # a, b, c, d
