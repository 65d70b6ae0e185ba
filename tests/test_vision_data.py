"""MNIST / Fashion-MNIST / CIFAR-10 loaders and the checked-download layer, on tiny files the tests write.

No test touches the network: downloads come from file:// URLs of files written here.
"""

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from clients.data import vision
from clients.data.sources import RemoteFile, fetch, missing_files_error
from clients.data.vision import load_cifar10, load_fashion_mnist, load_mnist
from clients.errors import DataError

N_TRAIN, N_TEST = 7, 3
TRAIN_LABELS = np.array([0, 1, 2, 3, 4, 5, 9], dtype=np.uint8)
TEST_LABELS = np.array([7, 8, 6], dtype=np.uint8)


def _images(count: int, offset: int) -> np.ndarray:
    """(count, 28, 28) uint8 with pixel (i, r, c) = (offset + 37 i + 28 r + c) % 256: every value known."""
    index = np.arange(count)[:, None, None] * 37 + np.arange(28)[:, None] * 28 + np.arange(28)
    return ((index + offset) % 256).astype(np.uint8)


TRAIN_IMAGES, TEST_IMAGES = _images(N_TRAIN, 0), _images(N_TEST, 100)


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding: 0, 0, dtype code 0x08, ndim, big-endian uint32 sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _idx_contents() -> dict[str, bytes]:
    return {
        "train-images-idx3-ubyte": _idx_bytes(TRAIN_IMAGES),
        "train-labels-idx1-ubyte": _idx_bytes(TRAIN_LABELS),
        "t10k-images-idx3-ubyte": _idx_bytes(TEST_IMAGES),
        "t10k-labels-idx1-ubyte": _idx_bytes(TEST_LABELS),
    }


def _write_idx(folder: Path, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in _idx_contents().items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)


def _assert_tiny_mnist(dataset, name: str) -> None:
    assert dataset.name == name
    assert dataset.x_train.shape == (N_TRAIN, 1, 28, 28) and dataset.x_test.shape == (N_TEST, 1, 28, 28)
    assert dataset.x_train.dtype == np.float32 and dataset.y_train.dtype == np.int64
    assert dataset.x_train.flags.c_contiguous and dataset.x_test.flags.c_contiguous
    np.testing.assert_array_equal(dataset.x_train[:, 0], TRAIN_IMAGES.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(dataset.x_test[:, 0], TEST_IMAGES.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(dataset.y_train, TRAIN_LABELS.astype(np.int64))
    np.testing.assert_array_equal(dataset.y_test, TEST_LABELS.astype(np.int64))
    assert dataset.x_train[0, 0, 0, 0] == 0.0 and dataset.x_train[0, 0, 9, 3] == 1.0  # 28*9+3 = 255
    assert (dataset.num_classes, dataset.input_shape, dataset.train_owner) == (10, (1, 28, 28), None)


LOADERS = [(load_mnist, "mnist", "MNIST"), (load_fashion_mnist, "fashion_mnist", "FashionMNIST")]


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("layout", ["torchvision", "root", "own_folder"])
@pytest.mark.parametrize(("loader", "name", "torchvision_folder"), LOADERS, ids=["mnist", "fashion"])
def test_idx_layouts_load_exact_pixels_and_labels(tmp_path, loader, name, torchvision_folder, layout, gz):
    folder = {
        "torchvision": tmp_path / torchvision_folder / "raw",
        "root": tmp_path,
        "own_folder": tmp_path / name,
    }
    _write_idx(folder[layout], gz)

    dataset = loader(tmp_path, download=False, verify=False)

    _assert_tiny_mnist(dataset, name)


@pytest.mark.parametrize("in_own_folder", [False, True])
@pytest.mark.parametrize(("loader", "name", "_tv"), LOADERS, ids=["mnist", "fashion"])
def test_keras_npz_layout(tmp_path, loader, name, _tv, in_own_folder):
    folder = tmp_path / name if in_own_folder else tmp_path
    folder.mkdir(exist_ok=True)
    np.savez(
        folder / f"{name}.npz",
        x_train=TRAIN_IMAGES,
        y_train=TRAIN_LABELS,
        x_test=TEST_IMAGES,
        y_test=TEST_LABELS,
    )

    _assert_tiny_mnist(loader(tmp_path, download=False, verify=False), name)


def test_npz_with_object_array_is_refused_not_unpickled(tmp_path):
    np.savez(
        tmp_path / "mnist.npz",
        x_train=np.array([None], dtype=object),
        y_train=TRAIN_LABELS,
        x_test=TEST_IMAGES,
        y_test=TEST_LABELS,
    )

    with pytest.raises(DataError, match="mnist.npz"):
        load_mnist(tmp_path, download=False, verify=False)


def _corrupt(contents: dict[str, bytes], kind: str) -> tuple[str, dict[str, bytes], str]:
    """(file name, contents with that file broken, text the error must contain)."""
    images = contents["train-images-idx3-ubyte"]
    broken = {
        "bad_magic": ("train-images-idx3-ubyte", b"\0\0\x08\x01" + images[4:], "magic number is 2049"),
        "bad_dtype": ("train-images-idx3-ubyte", b"\0\0\x0d\x03" + images[4:], "dtype code is 0x0d"),
        "truncated": ("train-images-idx3-ubyte", images[:-5], "truncated"),
        "short_header": ("t10k-labels-idx1-ubyte", b"\0\0\x08", "truncated IDX header"),
        "label_range": (
            "train-labels-idx1-ubyte",
            _idx_bytes(np.array([0, 1, 2, 3, 4, 5, 12], np.uint8)),
            "labels span 0..12",
        ),
        "count_mismatch": ("t10k-labels-idx1-ubyte", _idx_bytes(TEST_LABELS[:2]), "3 images but"),
    }[kind]
    name, content, message = broken
    return name, {**contents, name: content}, message


@pytest.mark.parametrize(
    "kind", ["bad_magic", "bad_dtype", "truncated", "short_header", "label_range", "count_mismatch"]
)
def test_corrupt_idx_raises_data_error_naming_the_file(tmp_path, kind):
    name, contents, message = _corrupt(_idx_contents(), kind)
    for file_name, content in contents.items():
        (tmp_path / file_name).write_bytes(content)

    with pytest.raises(DataError, match=message) as raised:
        load_mnist(tmp_path, download=False, verify=False)

    assert str(tmp_path / name) in str(raised.value)


def test_corrupt_gzip_raises_data_error_naming_the_file(tmp_path):
    _write_idx(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")

    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: cannot read"):
        load_mnist(tmp_path, download=False, verify=False)


def test_missing_files_offline_names_expected_files_and_folders(tmp_path):
    with pytest.raises(DataError) as raised:
        load_fashion_mnist(tmp_path, download=False, verify=False)

    message = str(raised.value)
    assert "\n" not in message
    for expected in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "fashion_mnist.npz"):
        assert expected in message
    for folder in (tmp_path / "FashionMNIST" / "raw", tmp_path / "fashion_mnist"):
        assert str(folder) in message
    assert "data.download: true" in message


# ---------------------------------------------------------------- downloads


def _md5(content: bytes) -> str:
    return hashlib.md5(content).hexdigest()


def test_fetch_verifies_md5_and_renames_into_place(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "blob.bin").write_bytes(b"payload" * 1000)
    remote = RemoteFile("blob.bin", ((mirror / "blob.bin").as_uri(),), _md5(b"payload" * 1000))

    path = fetch(remote, tmp_path / "dest", progress=False)

    assert path == tmp_path / "dest" / "blob.bin"
    assert path.read_bytes() == b"payload" * 1000
    assert os.listdir(tmp_path / "dest") == ["blob.bin"]  # no temporary file left behind


def test_fetch_with_progress_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    (tmp_path / "blob.bin").write_bytes(b"x" * 3_000_000)
    remote = RemoteFile("blob.bin", ((tmp_path / "blob.bin").as_uri(),), _md5(b"x" * 3_000_000))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)

    path = fetch(remote, tmp_path / "dest", progress=True)

    assert path.read_bytes() == b"x" * 3_000_000
    assert capsys.readouterr().out == ""  # the bar goes to stderr, never stdout


def test_fetch_wrong_md5_raises_and_leaves_no_file(tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"tampered")
    remote = RemoteFile("blob.bin", ((tmp_path / "blob.bin").as_uri(),), "0" * 32)

    with pytest.raises(
        DataError, match=f"md5 mismatch for blob.bin: expected {'0' * 32}, got {_md5(b'tampered')}"
    ):
        fetch(remote, tmp_path / "dest", progress=False)

    assert os.listdir(tmp_path / "dest") == []


def test_fetch_tries_the_next_mirror_and_reports_all_failures(tmp_path):
    (tmp_path / "good.bin").write_bytes(b"ok")
    dead = (tmp_path / "absent.bin").as_uri()
    remote = RemoteFile("good.bin", (dead, (tmp_path / "good.bin").as_uri()), _md5(b"ok"))

    assert fetch(remote, tmp_path / "dest", progress=False).read_bytes() == b"ok"
    with pytest.raises(DataError, match=f"could not download good.bin: {dead}: .*; {dead}: "):
        fetch(dataclasses.replace(remote, urls=(dead, dead)), tmp_path / "other", progress=False)


def test_fetch_keeps_a_verified_existing_file_without_network(tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"cached")
    remote = RemoteFile("blob.bin", ("http://unreachable.invalid/blob.bin",), _md5(b"cached"))

    assert fetch(remote, tmp_path, progress=False).read_bytes() == b"cached"


def _mirror_of_idx_gz(tmp_path: Path) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Write the four .gz files to a mirror folder; return its file:// base URL and their (name, md5)."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    md5s = []
    for name, content in _idx_contents().items():
        packed = gzip.compress(content, mtime=0)
        (mirror / f"{name}.gz").write_bytes(packed)
        md5s.append((f"{name}.gz", _md5(packed)))
    return mirror.as_uri() + "/", tuple(md5s)


def test_download_fetches_into_torchvision_raw_folder_and_loads(tmp_path, monkeypatch):
    base, md5s = _mirror_of_idx_gz(tmp_path)
    dead = (tmp_path / "no-such-mirror").as_uri() + "/"
    monkeypatch.setattr(vision, "MNIST", dataclasses.replace(vision.MNIST, mirrors=(dead, base), gz_md5=md5s))
    root = tmp_path / "root"

    dataset = load_mnist(root, download=True, verify=False)

    _assert_tiny_mnist(dataset, "mnist")
    assert sorted(os.listdir(root / "MNIST" / "raw")) == sorted(name for name, _ in md5s)


def test_download_with_wrong_md5_fails_cleanly(tmp_path, monkeypatch):
    base, md5s = _mirror_of_idx_gz(tmp_path)
    wrong = (md5s[0][0], "f" * 32), *md5s[1:]
    monkeypatch.setattr(
        vision, "FASHION_MNIST", dataclasses.replace(vision.FASHION_MNIST, mirrors=(base,), gz_md5=wrong)
    )
    root = tmp_path / "root"

    with pytest.raises(DataError) as raised:
        load_fashion_mnist(root, download=True, verify=False)

    message = str(raised.value)
    assert "download failed" in message and f"expected {'f' * 32}, got {md5s[0][1]}" in message
    assert "train-images-idx3-ubyte.gz" in message and str(root / "FashionMNIST" / "raw") in message
    assert os.listdir(root / "FashionMNIST" / "raw") == []


# ---------------------------------------------------------------- CIFAR-10


def _cifar_batch(count: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 3072), dtype=np.uint8), rng.integers(0, 10, count).tolist()


def _cifar_pickle(data: np.ndarray, labels: list[int], protocol: int = 2) -> bytes:
    batch = {
        b"batch_label": b"training batch",
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))] + [b""],
    }
    return pickle.dumps(batch, protocol=protocol)


def _python2_style_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """The opcodes Python 2's cPickle wrote for CIFAR-10: str as (SHORT_)BINSTRING, numpy < 2 globals."""

    def string(value: bytes) -> bytes:
        if len(value) < 256:
            return b"U" + bytes([len(value)]) + value
        return b"T" + struct.pack("<I", len(value)) + value

    def int1(value: int) -> bytes:
        return b"K" + bytes([value])

    dtype = b"cnumpy\ndtype\nq\x01" + string(b"u1") + int1(0) + int1(1) + b"\x87R"
    dtype += b"(" + int1(3) + string(b"|") + b"NNN" + b"J\xff\xff\xff\xffJ\xff\xff\xff\xff" + int1(0) + b"tb"
    shape = b"M" + struct.pack("<H", data.shape[0]) + b"M" + struct.pack("<H", data.shape[1]) + b"\x86"
    array = b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\n" + int1(0) + b"\x85" + string(b"b")
    array += b"\x87R(" + int1(1) + shape + dtype + b"\x89" + string(data.tobytes()) + b"tb"
    label_list = b"](" + b"".join(int1(label) for label in labels) + b"e"
    items = string(b"data") + array + string(b"labels") + label_list + string(b"batch_label") + string(b"x")
    return b"\x80\x02}q\x00(" + items + b"u."


def _write_cifar(folder: Path, writer=_cifar_pickle) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Five 4-image training batches and a 3-image test batch; returns the expected uint8 data and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    train = [_cifar_batch(4, seed) for seed in range(5)]
    for index, (data, labels) in enumerate(train, start=1):
        (folder / f"data_batch_{index}").write_bytes(writer(data, labels))
    test_data, test_labels = _cifar_batch(3, 99)
    (folder / "test_batch").write_bytes(writer(test_data, test_labels))
    train_data = np.concatenate([data for data, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    return train_data, train_labels, test_data, np.array(test_labels)


def _assert_cifar(dataset, expected) -> None:
    train_data, train_labels, test_data, test_labels = expected
    assert dataset.name == "cifar10" and dataset.input_shape == (3, 32, 32) and dataset.num_classes == 10
    assert dataset.x_train.shape == (20, 3, 32, 32) and dataset.x_test.shape == (3, 3, 32, 32)
    assert dataset.x_train.dtype == np.float32 and dataset.y_train.dtype == np.int64
    assert dataset.x_train.flags.c_contiguous and dataset.x_test.flags.c_contiguous
    expected_x = train_data.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(dataset.x_train, expected_x)
    np.testing.assert_array_equal(dataset.x_test, test_data.reshape(-1, 3, 32, 32) / np.float32(255))
    np.testing.assert_array_equal(dataset.y_train, train_labels)
    np.testing.assert_array_equal(dataset.y_test, test_labels)
    # channel-major rows: pixel (c, r, col) of image 0 is byte c*1024 + r*32 + col of its row
    assert dataset.x_train[0, 2, 5, 7] == np.float32(train_data[0, 2 * 1024 + 5 * 32 + 7]) / np.float32(255)


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", ".", "cifar10/cifar-10-batches-py"])
def test_cifar10_layouts_load_exact_values(tmp_path, layout):
    expected = _write_cifar(tmp_path / layout)

    _assert_cifar(load_cifar10(tmp_path, download=False, verify=False), expected)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_cifar10_python3_pickles_of_any_protocol_parse(tmp_path, protocol):
    expected = _write_cifar(tmp_path / "cifar-10-batches-py", lambda d, y: _cifar_pickle(d, y, protocol))

    _assert_cifar(load_cifar10(tmp_path, download=False, verify=False), expected)


def test_cifar10_python2_style_pickles_parse(tmp_path):
    expected = _write_cifar(tmp_path / "cifar-10-batches-py", _python2_style_pickle)

    _assert_cifar(load_cifar10(tmp_path, download=False, verify=False), expected)


class _Exploit:
    """Unpickling this would run command; a safe reader must refuse it without running anything."""

    def __init__(self, function, command: str):
        self.function, self.command = function, command

    def __reduce__(self):
        return self.function, (self.command,)


@pytest.mark.parametrize("function", [os.system, eval], ids=["os.system", "builtins.eval"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, function):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w').close()"
    expected = _write_cifar(tmp_path / "cifar-10-batches-py")
    batch = {b"labels": expected[1][:4].tolist(), b"data": _Exploit(function, command)}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))

    with pytest.raises(DataError, match=r"refusing to load .*data_batch_3: unexpected pickle content global"):
        load_cifar10(tmp_path, download=False, verify=False)

    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "content"),
    [
        (
            pickle.dumps({b"data": np.array([None, 1], dtype=object), b"labels": [0, 1]}, protocol=2),
            "call of dtype",
        ),
        (pickle.dumps({b"data": io.BytesIO(b"x"), b"labels": [0]}, protocol=2), "global _io.BytesIO"),
        (b"(S'data'\np0\n.", "opcode STRING"),  # protocol 0 text opcodes are not read
    ],
    ids=["object-dtype", "other-class", "protocol-0"],
)
def test_unexpected_pickle_content_is_refused(tmp_path, payload, content):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(payload)

    with pytest.raises(
        DataError, match=f"refusing to load .*test_batch: unexpected pickle content {content}"
    ):
        load_cifar10(tmp_path, download=False, verify=False)


def test_cifar10_batch_with_mismatched_labels_raises(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    data, labels = _cifar_batch(4, 7)
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(_cifar_pickle(data, labels[:3]))

    with pytest.raises(DataError, match="data_batch_1: 4 images but 3 labels"):
        load_cifar10(tmp_path, download=False, verify=False)


def test_cifar10_missing_offline_names_files_and_folders(tmp_path):
    with pytest.raises(DataError) as raised:
        load_cifar10(tmp_path, download=False, verify=False)

    message = str(raised.value)
    assert "data_batch_1" in message and "test_batch" in message
    assert str(tmp_path / "cifar-10-batches-py") in message and "data.download: true" in message


def _cifar_archive(tmp_path: Path, members: dict[str, bytes]) -> RemoteFile:
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return RemoteFile(archive.name, (archive.as_uri(),), _md5(archive.read_bytes()))


def test_cifar10_download_extracts_and_loads(tmp_path, monkeypatch):
    expected = _write_cifar(tmp_path / "made")
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    members = {f"cifar-10-batches-py/{name}": (tmp_path / "made" / name).read_bytes() for name in names}
    monkeypatch.setattr(vision, "CIFAR10_ARCHIVE", _cifar_archive(tmp_path, members))

    dataset = load_cifar10(tmp_path / "root", download=True, verify=False)

    _assert_cifar(dataset, expected)
    assert (tmp_path / "root" / "cifar-10-python.tar.gz").is_file()


def test_cifar10_archive_escaping_root_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(vision, "CIFAR10_ARCHIVE", _cifar_archive(tmp_path, {"../escaped": b"x"}))

    with pytest.raises(DataError, match="cannot unpack"):
        load_cifar10(tmp_path / "root", download=True, verify=False)

    assert not (tmp_path / "escaped").exists()


def test_missing_files_error_includes_download_reason():
    error = missing_files_error("mnist", ["a", "b"], [Path("/x"), Path("/y")], "put them in /x/", "timed out")

    assert str(error) == (
        "mnist files not found: expected a, b in one of: /x, /y; put them in /x/; download failed: timed out"
    )


def test_mnist_files_in_the_bare_root_are_not_taken_for_fashion_mnist(tmp_path, monkeypatch):
    """Both datasets name their files alike; the training labels' checksum tells them apart."""
    import clients.data.vision as vision

    _write_idx(tmp_path, gz=False)
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    digest = hashlib.md5(labels, usedforsecurity=False).hexdigest()
    md5s = (*vision.MNIST.content_md5[:1], digest, *vision.MNIST.content_md5[2:])
    monkeypatch.setattr(vision, "MNIST", dataclasses.replace(vision.MNIST, content_md5=md5s))
    assert vision.load_mnist(tmp_path, download=False, verify=False).name == "mnist"
    with pytest.raises(DataError, match="is mnist's training labels, not fashion_mnist's"):
        vision.load_fashion_mnist(tmp_path, download=False, verify=False)
