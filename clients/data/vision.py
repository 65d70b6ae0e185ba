"""MNIST, Fashion-MNIST and CIFAR-10 from a user-given data root, downloaded (md5-checked) on request.

Layouts accepted (first match wins):
- MNIST / Fashion-MNIST IDX files (each plain or ``.gz``) in ``ROOT/MNIST/raw/``
  (``ROOT/FashionMNIST/raw/``: torchvision's layout), ``ROOT/`` or ``ROOT/mnist/``
  (``ROOT/fashion_mnist/``); or Keras' ``mnist.npz`` (``fashion_mnist.npz``) in
  ``ROOT/`` or ``ROOT/mnist/`` (``ROOT/fashion_mnist/``).
- CIFAR-10's python batches in ``ROOT/cifar-10-batches-py/``, ``ROOT/`` or
  ``ROOT/cifar10/cifar-10-batches-py/``.

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian
header of two zero bytes, a dtype code (0x08 = unsigned byte), the number of
dimensions, then one uint32 per dimension; the data follow, row-major.

CIFAR-10's batches are pickles. Nothing read from disk is ever unpickled:
``_PickleReader`` walks the opcode stream with ``pickletools.genops`` (parsing
only) and interprets the few opcodes such files use on plain data, rebuilding
the numpy arrays itself; any other opcode or global is refused, not executed.
"""

import dataclasses
import gzip
import hashlib
import math
import os
import pickletools
import re
import shutil
import tarfile
import tempfile
import threading
import zipfile
import zlib
from functools import partial
from pathlib import Path
from typing import Literal, cast

import numpy as np

from clients.data.datasets import Dataset
from clients.data.sources import (
    CheckedFiles,
    RemoteFile,
    checksum_mismatch,
    fetch,
    file_md5,
    missing_files_error,
)
from clients.errors import DataError

NUM_CLASSES = 10
PIXEL_MAX = np.float32(255.0)  # uint8 intensities -> [0, 1]
MNIST_SIDE = 28
IDX_UBYTE = 0x08  # the IDX dtype code for unsigned bytes, the only one MNIST-style files use
IMAGES_NDIM, LABELS_NDIM = 3, 1  # IDX magic = 0x0800 + ndim: 2051 for images, 2049 for labels
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclasses.dataclass(frozen=True)
class IdxSource:
    """Where an MNIST-style dataset may lie under ROOT and where it is published."""

    name: str  # Dataset.name
    torchvision_folder: str  # ROOT/<this>/raw/, also where downloads go
    own_folder: str  # ROOT/<this>/
    npz_name: str  # Keras' archive name
    mirrors: tuple[str, ...]  # base URLs, tried in order
    gz_md5: tuple[tuple[str, str], ...]  # (file name, md5) of the four published .gz files
    # md5 of each uncompressed IDX file, in IDX_FILES order: what the content must hash to,
    # whatever holds it (plain IDX, .gz or an .npz); the train labels' tell the datasets apart.
    content_md5: tuple[str, str, str, str]

    @property
    def train_labels_md5(self) -> str:
        return self.content_md5[1]

    def remote_files(self) -> list[RemoteFile]:
        return [
            RemoteFile(name, tuple(base + name for base in self.mirrors), md5) for name, md5 in self.gz_md5
        ]


def published_gz(*md5s: str) -> tuple[tuple[str, str], ...]:
    """(file name, md5) of each IDX file as published, gzipped; ``md5s`` in IDX_FILES order."""
    return tuple((f"{name}.gz", md5) for name, md5 in zip(IDX_FILES, md5s, strict=True))


# torchvision's tables (torchvision/datasets/mnist.py), cross-checked against other public copies.
MNIST = IdxSource(
    name="mnist",
    torchvision_folder="MNIST",
    own_folder="mnist",
    npz_name="mnist.npz",
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    gz_md5=published_gz(
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
    content_md5=(
        "6bbc9ace898e44ae57da46a324031adb",
        "a25bea736e30d166cdddb491f175f624",
        "2646ac647ad5339dbf082846283269ea",
        "27ae3e4e09519cfbb04c329615203637",
    ),
)
FASHION_MNIST = IdxSource(
    name="fashion_mnist",
    torchvision_folder="FashionMNIST",
    own_folder="fashion_mnist",
    npz_name="fashion_mnist.npz",
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        # Zalando's own repository serves the same files (same md5s) over https.
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
    gz_md5=published_gz(
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
    content_md5=(
        "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "9018921c3c673c538a1fc5bad174d6f9",
        "8181f5470baa50b63fa0f6fddb340f0a",
        "15d484375f8d13e6eb1aabb0c3f46965",
    ),
)

_DOWNLOAD_LOCK = threading.Lock()

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_SHAPE = (3, 32, 32)
# torchvision's per-batch md5s (the files inside the archive).
CIFAR10_BATCH_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
# Nothing fedsim reads is larger (CIFAR-10's batches are 31 MB, MNIST's images 47 MB): a header
# declaring more is refused before anything is allocated or decompressed.
MAX_ARRAY_BYTES = 1 << 31
MAX_GZ_RATIO = 100  # a gzip bomb expands 1000x; image and label files 2-5x
CIFAR10_ARCHIVE = RemoteFile(
    "cifar-10-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    "c58f30108f718f92721af3b95e74349a",
)


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


def load_mnist(root: Path, download: bool, verify: bool = True) -> Dataset:
    """MNIST: x (N, 1, 28, 28) float32 in [0, 1], y (N,) int64; 60000 train, 10000 test.
    ``verify``: the content must hash to the published uncompressed files' md5s."""
    return _load_idx_dataset(MNIST, Path(root), download, verify)


def load_fashion_mnist(root: Path, download: bool, verify: bool = True) -> Dataset:
    """Fashion-MNIST: x (N, 1, 28, 28) float32 in [0, 1], y (N,) int64; 60000 train, 10000 test."""
    return _load_idx_dataset(FASHION_MNIST, Path(root), download, verify)


def _load_idx_dataset(source: IdxSource, root: Path, download: bool, verify: bool) -> Dataset:
    """Load from the first layout found under root; else download the .gz files if allowed."""
    folders = [root / source.torchvision_folder / "raw", root, root / source.own_folder]
    found = next((folder for folder in folders if _idx_paths(folder) is not None), None)
    npz_paths = [root / source.npz_name, root / source.own_folder / source.npz_name]
    npz = next((path for path in npz_paths if path.is_file()), None)
    if found is not None:
        if found == root:  # both datasets use the same file names: make sure these are ours
            _refuse_the_other_dataset(source, found)
        files = _idx_paths(found) or []
        arrays = _idx_arrays(files)
    elif npz is not None:
        files, arrays = [npz], _npz_arrays(npz)
    else:
        files = _download_idx(source, folders, download)
        arrays = _idx_arrays(files)
    if verify:
        _verify_content(source, arrays, files)
    return _mnist_dataset(source.name, *arrays)


def _download_idx(source: IdxSource, folders: list[Path], download: bool) -> list[Path]:
    download_dir = folders[0]
    expected = [f"{name}[.gz]" for name in IDX_FILES] + [f"or {source.npz_name}"]
    hint = f"put them in {download_dir}/"
    if not download:
        raise missing_files_error(source.name, expected, folders, hint)
    try:
        for remote in source.remote_files():
            fetch(remote, download_dir)
    except DataError as error:
        raise missing_files_error(source.name, expected, folders, hint, str(error)) from error
    return _idx_paths(download_dir) or []


def _verify_content(source: IdxSource, arrays: tuple[np.ndarray, ...], files: list[Path]) -> None:
    """Each array, encoded as its uncompressed IDX file, must hash to the published md5.
    Hashes are recorded beside the files (CheckedFiles), so this costs once per file."""
    checked = CheckedFiles(files[0].parent)
    for i, (array, expected) in enumerate(zip(arrays, source.content_md5, strict=True)):
        holder = files[i] if len(files) == len(arrays) else files[0]  # an .npz holds all four
        key = f"{holder.name}#{IDX_FILES[i]}"
        got = checked.md5(holder, key, partial(_idx_md5, array))
        if got != expected:
            raise checksum_mismatch(f"{source.name}'s {IDX_FILES[i]}", holder, got, expected)
    checked.save()


def _idx_md5(array: np.ndarray) -> str:
    """md5 of ``array`` (uint8 values) encoded as an IDX file: header, then the bytes."""
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    digest = hashlib.md5(header, usedforsecurity=False)
    digest.update(np.ascontiguousarray(array, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def _refuse_the_other_dataset(source: IdxSource, folder: Path) -> None:
    labels = (_idx_paths(folder) or [])[1]
    digest = _idx_md5(_read_idx(labels, LABELS_NDIM))
    for other in (MNIST, FASHION_MNIST):
        if other.name != source.name and digest == other.train_labels_md5:
            raise DataError(
                f"{labels} is {other.name}'s training labels, not {source.name}'s; keep each dataset in "
                f"its own folder ({source.torchvision_folder}/raw/ or {source.own_folder}/ under data.root)"
            )


def _idx_paths(folder: Path) -> list[Path] | None:
    """The four IDX files in folder (plain preferred over .gz), or None unless all four are there."""
    paths = []
    for name in IDX_FILES:
        candidates = [folder / name, folder / f"{name}.gz"]
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            return None
        paths.append(path)
    return paths


def _idx_arrays(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels), uint8, from the four IDX files."""
    train_images, train_labels, test_images, test_labels = paths
    return (*_idx_pair(train_images, train_labels), *_idx_pair(test_images, test_labels))


def _idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) from two IDX files, checked against each other."""
    images = _read_idx(images_path, IMAGES_NDIM)
    labels = _read_idx(labels_path, LABELS_NDIM)
    _check_images(images, str(images_path))
    _check_labels(labels, str(labels_path))
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "they must match one to one"
        )
    return images, labels


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ndim dimensions, as a uint8 array of the header's shape.
    Only as many bytes as the header declares are read (plus one, to see trailing bytes), so
    a .gz that would expand without bound, or a header claiming terabytes, costs nothing."""
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as stream:
            header_bytes = 4 + 4 * ndim
            header = stream.read(header_bytes)
            shape = _idx_shape(path, header, ndim)
            size = math.prod(shape)  # Python ints: a hostile header cannot overflow
            if size > MAX_ARRAY_BYTES:
                raise DataError(f"{path}: its header declares {shape}: {size} bytes, over {MAX_ARRAY_BYTES}")
            if path.suffix == ".gz" and size > MAX_GZ_RATIO * path.stat().st_size + (1 << 16):
                raise DataError(
                    f"{path}: its header declares {shape}, {size} bytes, over {MAX_GZ_RATIO}x the "
                    f"{path.stat().st_size} compressed bytes it could come from (MNIST's expand 2-5x)"
                )
            body = stream.read(size + 1)
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read: {error}") from error
    if len(body) != size:
        problem = "truncated" if len(body) < size else "has trailing bytes"
        raise DataError(f"{path}: {problem}: its header {shape} needs {header_bytes + size} bytes")
    return np.frombuffer(body, np.uint8).reshape(shape)


def _idx_shape(path: Path, header: bytes, ndim: int) -> tuple[int, ...]:
    header_bytes = 4 + 4 * ndim
    if len(header) < header_bytes:
        raise DataError(f"{path}: truncated IDX header ({len(header)} bytes, expected {header_bytes})")
    magic = int.from_bytes(header[:4], "big")
    if header[:2] != b"\0\0" or header[3] != ndim:
        raise DataError(
            f"{path}: IDX magic number is {magic}, expected {(IDX_UBYTE << 8) + ndim} "
            f"({ndim}-d unsigned bytes)"
        )
    if header[2] != IDX_UBYTE:
        raise DataError(
            f"{path}: IDX dtype code is {header[2]:#04x}, only {IDX_UBYTE:#04x} (unsigned byte) is read"
        )
    return tuple(int(size) for size in np.frombuffer(header, ">u4", count=ndim, offset=4))


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Keras' layout: uint8 x_train (N, 28, 28), y_train (N,), x_test, y_test; never unpickled,
    and each array's .npy header checked against its stored size before numpy allocates it."""
    x_train, y_train, x_test, y_test = read_npz(path, NPZ_ARRAYS).values()
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        _check_images(images, f"{path} x_{split}")
        _check_labels(labels, f"{path} y_{split}")
        if len(images) != len(labels):
            raise DataError(f"{path}: x_{split} has {len(images)} rows but y_{split} has {len(labels)}")
    return x_train, y_train, x_test, y_test


def check_npz_headers(path: Path, keys: tuple[str, ...]) -> None:
    """Each member ``keys`` names must be there, and its .npy header must describe exactly
    the bytes the member holds, at most MAX_ARRAY_BYTES: a header claiming 10^12 rows is
    refused unallocated."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        missing = [key for key in keys if f"{key}.npy" not in names]
        if missing:
            raise DataError(f"{path}: missing arrays {missing}; expected {list(keys)}")
        for key in keys:
            info = archive.getinfo(f"{key}.npy")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0}.get(
                    version, np.lib.format.read_array_header_2_0
                )
                shape, _fortran, dtype = read_header(member)
                header_size = member.tell()
            if dtype.hasobject:
                raise DataError(f"{path}: {key} holds Python objects; only plain arrays are read")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > MAX_ARRAY_BYTES or nbytes != info.file_size - header_size:
                raise DataError(
                    f"{path}: {key}'s header declares {shape} {dtype} ({nbytes} bytes) but the member "
                    f"holds {info.file_size - header_size}"
                )


def _check_images(images: np.ndarray, where: str) -> None:
    if images.dtype != np.uint8 or images.shape[1:] != (MNIST_SIDE, MNIST_SIDE):
        raise DataError(
            f"{where}: images are {images.dtype} {images.shape}, "
            f"expected uint8 (N, {MNIST_SIDE}, {MNIST_SIDE})"
        )


def _check_labels(labels: np.ndarray, where: str) -> None:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels are {labels.dtype} {labels.shape}, expected integers (N,)")
    if labels.size and not 0 <= labels.min() <= labels.max() < NUM_CLASSES:
        raise DataError(f"{where}: labels span {labels.min()}..{labels.max()}, expected 0..{NUM_CLASSES - 1}")


def _mnist_dataset(name: str, x_train, y_train, x_test, y_test) -> Dataset:
    """uint8 (N, 28, 28) images and integer labels -> Dataset with x (N, 1, 28, 28) float32 in [0, 1]."""
    return Dataset(
        name=name,
        x_train=_scaled(x_train, (1, MNIST_SIDE, MNIST_SIDE)),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_test=_scaled(x_test, (1, MNIST_SIDE, MNIST_SIDE)),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        num_classes=NUM_CLASSES,
        input_shape=(1, MNIST_SIDE, MNIST_SIDE),
        train_owner=None,
    )


def _scaled(pixels: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """uint8 pixels -> C-contiguous float32 (N, *image_shape) in [0, 1]."""
    scaled = pixels.reshape(-1, *image_shape).astype(np.float32)  # one float copy, divided in place
    scaled /= PIXEL_MAX
    return np.ascontiguousarray(scaled)


# ---------------------------------------------------------------- CIFAR-10


def load_cifar10(root: Path, download: bool, verify: bool = True) -> Dataset:
    """CIFAR-10: x (N, 3, 32, 32) float32 in [0, 1], y (N,) int64; 50000 train, 10000 test.
    ``verify``: every batch file must have its published md5."""
    root = Path(root)
    folders = [root / CIFAR10_FOLDER, root, root / "cifar10" / CIFAR10_FOLDER]
    folder = next((folder for folder in folders if _has_cifar10_batches(folder)), None)
    if folder is None:
        folder = _download_cifar10(root, folders, download)
    if verify:
        _verify_cifar10(folder)
    train = [_read_cifar10_batch(folder / name) for name in CIFAR10_TRAIN_BATCHES]
    test_pixels, test_labels = _read_cifar10_batch(folder / CIFAR10_TEST_BATCH)
    return Dataset(
        name="cifar10",
        x_train=_scaled(np.concatenate([pixels for pixels, _ in train]), CIFAR10_SHAPE),
        y_train=np.concatenate([labels for _, labels in train]),
        x_test=_scaled(test_pixels, CIFAR10_SHAPE),
        y_test=test_labels,
        num_classes=NUM_CLASSES,
        input_shape=CIFAR10_SHAPE,
        train_owner=None,
    )


def _verify_cifar10(folder: Path) -> None:
    checked = CheckedFiles(folder)
    for name, expected in CIFAR10_BATCH_MD5.items():
        path = folder / name
        got = checked.md5(path, name, partial(file_md5, path))
        if got != expected:
            raise checksum_mismatch(f"CIFAR-10's {name}", path, got, expected)
    checked.save()


def _has_cifar10_batches(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH))


def _download_cifar10(root: Path, searched: list[Path], download: bool) -> Path:
    """Fetch and unpack the archive into root; return the batches' folder or raise missing-files."""
    expected = [*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH]
    hint = f"put them in {root / CIFAR10_FOLDER}/ (unpack {CIFAR10_ARCHIVE.name} into {root}/)"
    if not download:
        raise missing_files_error("cifar10", expected, searched, hint)
    with _DOWNLOAD_LOCK:  # runs of one sweep share the process: one fetch, one unpack
        if not _has_cifar10_batches(root / CIFAR10_FOLDER):
            try:
                _extract_tar(fetch(CIFAR10_ARCHIVE, root), root)
            except DataError as error:
                raise missing_files_error("cifar10", expected, searched, hint, str(error)) from error
    if not _has_cifar10_batches(root / CIFAR10_FOLDER):
        reason = f"{CIFAR10_ARCHIVE.name} did not unpack to {root / CIFAR10_FOLDER}/"
        raise missing_files_error("cifar10", expected, searched, hint, reason)
    return root / CIFAR10_FOLDER


def _extract_tar(archive: Path, dest: Path) -> None:
    """Unpack into a temporary folder beside dest, then move the batches' folder into
    place: an interrupted unpack never leaves batch files that look complete."""
    if not hasattr(tarfile, "data_filter"):
        raise DataError(f"unpacking {archive} safely needs Python >= 3.11.4 (tarfile's data filter)")
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=".unpack-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # filter="data" refuses absolute paths, "..", links out of dest and special files.
            tar.extractall(staging, filter="data")
        unpacked = staging / CIFAR10_FOLDER
        if unpacked.is_dir():
            if (dest / CIFAR10_FOLDER).exists():
                shutil.rmtree(dest / CIFAR10_FOLDER)  # an incomplete earlier unpack
            os.replace(unpacked, dest / CIFAR10_FOLDER)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot unpack {archive}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (n, 3072) uint8, labels (n,) int64) of one batch file, read without unpickling."""
    try:
        if path.stat().st_size > MAX_ARRAY_BYTES:
            raise DataError(f"{path}: {path.stat().st_size} bytes; a CIFAR-10 batch is about 31 MB")
        batch = _PickleReader(path).run(path.read_bytes())
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict with b'data' and b'labels', found {type(batch).__name__}")
    pixels, labels = _batch_field(batch, "data", path), _batch_field(batch, "labels", path)
    side = math.prod(CIFAR10_SHAPE)
    if not isinstance(pixels, _PendingArray) or pixels.array is None:
        raise DataError(f"{path}: b'data' is not a numpy array")
    if pixels.array.dtype != np.uint8 or pixels.array.ndim != 2 or pixels.array.shape[1] != side:
        raise DataError(
            f"{path}: b'data' is {pixels.array.dtype} {pixels.array.shape}, expected uint8 (n, {side})"
        )
    if not isinstance(labels, list) or not all(
        type(label) is int and 0 <= label < NUM_CLASSES for label in labels
    ):
        raise DataError(f"{path}: b'labels' must be a list of integers in 0..{NUM_CLASSES - 1}")
    label_array = np.array(labels, dtype=np.int64)
    _check_labels(label_array, f"{path} b'labels'")
    if len(label_array) != len(pixels.array):
        raise DataError(f"{path}: {len(pixels.array)} images but {len(label_array)} labels")
    return pixels.array, label_array


def _batch_field(batch: dict, key: str, path: Path):
    """batch[b'key'] (Python 2 files, read as bytes) or batch['key'] (Python 3 str keys)."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise DataError(f"{path}: no {key!r} entry; a CIFAR-10 batch holds b'data' and b'labels'")


# ---------------------------------------------------------------- pickle opcodes, interpreted on data only


@dataclasses.dataclass(frozen=True)
class _Global:
    """A global the file names and we recognise: a symbol, never resolved to a Python object."""

    kind: str  # "reconstruct", "ndarray", "dtype", "encode" or "bytes"


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",  # numpy < 2
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",  # numpy >= 2
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",  # Python 3 protocol < 3 writes bytes as encode(str, "latin1")
    ("__builtin__", "bytes"): "bytes",  # ... and b"" as bytes()
    ("builtins", "bytes"): "bytes",
}
_DTYPE_SPEC = re.compile(r"[biufc][1-9][0-9]?")  # numeric dtypes only: never object or structured
# Opcodes whose argument genops has already decoded into the value they push.
_PUSHED_ARGUMENTS = frozenset(
    {"BININT", "BININT1", "BININT2", "LONG1", "BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}
)


@dataclasses.dataclass(eq=False)
class _PendingDtype:
    """numpy.dtype(spec) as pickled; BUILD then sets its byte order."""

    spec: str
    byteorder: str = "="

    def resolve(self) -> np.dtype:
        dtype = np.dtype(self.spec)
        if self.byteorder not in "<>":
            return dtype
        # A pickle's byte order may be any string: numpy refuses (ValueError) one it does not know.
        return dtype.newbyteorder(cast(Literal["<", ">"], self.byteorder))


@dataclasses.dataclass(eq=False)
class _PendingArray:
    """numpy's _reconstruct(ndarray, ...); BUILD fills it from (version, shape, dtype, fortran, raw)."""

    array: np.ndarray | None = None


class _PickleReader:
    """A stack machine for the opcodes of pickled dicts, lists, bytes, ints and numpy arrays.

    It calls nothing named in the file: the few globals numpy arrays need are
    symbols, and REDUCE/BUILD on them are replayed here with np.frombuffer.
    """

    def __init__(self, path: Path):
        self.path = path
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}

    def run(self, data: bytes):
        """The object the pickle describes, with numpy arrays as filled _PendingArray."""
        try:
            for opcode, argument, _position in pickletools.genops(data):
                if opcode.name == "STOP":
                    return self.stack.pop()
                self._step(opcode.name, argument)
        except (ValueError, IndexError, KeyError, TypeError) as error:
            raise DataError(f"{self.path}: not a well-formed pickle: {error}") from error
        raise DataError(f"{self.path}: not a well-formed pickle: no STOP opcode")

    def _refuse(self, what: str) -> DataError:
        return DataError(f"refusing to load {self.path}: unexpected pickle content {what}")

    def _step(self, name: str, argument) -> None:
        stack = self.stack
        match name:
            case "PROTO" | "FRAME":  # framing is transparent to genops
                pass
            case "NONE" | "NEWTRUE" | "NEWFALSE":
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            case "EMPTY_DICT" | "EMPTY_LIST" | "EMPTY_TUPLE":
                stack.append({"EMPTY_DICT": dict, "EMPTY_LIST": list, "EMPTY_TUPLE": tuple}[name]())
            case _ if name in _PUSHED_ARGUMENTS:
                stack.append(argument)
            case "BINSTRING" | "SHORT_BINSTRING":
                # A Python 2 str; genops decodes it as latin-1. Bytes, as pickle's encoding="bytes" gives.
                stack.append(argument.encode("latin-1"))
            case "MARK":
                self.marks.append(len(stack))
            case "TUPLE":
                stack.append(tuple(self._pop_to_mark()))
            case "TUPLE1" | "TUPLE2" | "TUPLE3":
                stack.append(self._pop_tuple(int(name[-1])))
            case "BINPUT" | "LONG_BINPUT":
                self.memo[argument] = stack[-1]
            case "MEMOIZE":
                self.memo[len(self.memo)] = stack[-1]
            case "BINGET" | "LONG_BINGET":
                stack.append(self.memo[argument])
            case "APPEND":
                item = stack.pop()
                self._top(list).append(item)
            case "APPENDS":
                items = self._pop_to_mark()
                self._top(list).extend(items)
            case "SETITEM":
                value, key = stack.pop(), stack.pop()
                self._top(dict)[key] = value
            case "SETITEMS":
                items = self._pop_to_mark()
                self._top(dict).update(zip(items[::2], items[1::2], strict=True))
            case "GLOBAL":
                module, _, attribute = argument.partition(" ")
                stack.append(self._global(module, attribute))
            case "STACK_GLOBAL":
                attribute, module = stack.pop(), stack.pop()
                stack.append(self._global(module, attribute))
            case "REDUCE":
                arguments, function = stack.pop(), stack.pop()
                stack.append(self._reduce(function, arguments))
            case "BUILD":
                state = stack.pop()
                self._build(stack[-1], state)
            case _:
                raise self._refuse(f"opcode {name}")

    def _pop_tuple(self, size: int) -> tuple:
        if len(self.stack) < size:
            raise IndexError(f"TUPLE{size} on a stack of {len(self.stack)}")
        items = tuple(self.stack[len(self.stack) - size :])
        del self.stack[len(self.stack) - size :]
        return items

    def _top(self, kind: type):
        if not self.stack or type(self.stack[-1]) is not kind:
            raise self._refuse(f"{kind.__name__} operation on a non-{kind.__name__}")
        return self.stack[-1]

    def _pop_to_mark(self) -> list:
        mark = self.marks.pop()
        items = self.stack[mark:]
        del self.stack[mark:]
        return items

    def _global(self, module, attribute) -> _Global:
        kind = _ALLOWED_GLOBALS.get((module, attribute)) if isinstance(module, str) else None
        if kind is None:
            raise self._refuse(f"global {module}.{attribute}")
        return _Global(kind)

    def _reduce(self, function, arguments):
        """The value of function(*arguments) for the allowed globals, computed here, never called."""
        kind = function.kind if isinstance(function, _Global) else None
        if kind == "encode" and _is_tuple_of(arguments, str, str) and arguments[1] in ("latin1", "latin-1"):
            return arguments[0].encode("latin-1")
        if kind == "bytes" and arguments == ():
            return b""
        if kind == "dtype" and len(arguments) == 3 and isinstance(arguments[0], str | bytes):
            spec = arguments[0].decode("latin-1") if isinstance(arguments[0], bytes) else arguments[0]
            if _DTYPE_SPEC.fullmatch(spec):
                return _PendingDtype(spec)
        if kind == "reconstruct" and len(arguments) == 3 and arguments[0] == _Global("ndarray"):
            return _PendingArray()
        raise self._refuse(f"call of {kind or type(function).__name__} with {_describe(arguments)}")

    def _build(self, target, state) -> None:
        """Apply BUILD's state to a dtype (its byte order) or an array (its shape, dtype and bytes)."""
        if isinstance(target, _PendingDtype) and isinstance(state, tuple) and len(state) >= 2:
            order = state[1].decode("latin-1") if isinstance(state[1], bytes) else state[1]
            if order in ("<", ">", "|", "="):
                target.byteorder = order
                return
        if isinstance(target, _PendingArray) and target.array is None and _is_array_state(state):
            _version, shape, dtype, is_fortran, raw = state
            target.array = _array_from_bytes(raw, dtype.resolve(), shape, bool(is_fortran), self.path)
            return
        raise self._refuse(f"state {_describe(state)} for {type(target).__name__}")


def _is_tuple_of(value, *kinds: type) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == len(kinds)
        and all(isinstance(item, kind) for item, kind in zip(value, kinds, strict=True))
    )


def _is_array_state(state) -> bool:
    """numpy's ndarray state: (version, shape, dtype, is_fortran, raw bytes)."""
    return (
        _is_tuple_of(state, int, tuple, _PendingDtype, int, bytes)  # bool is an int
        and all(type(size) is int and size >= 0 for size in state[1])
    )


def _array_from_bytes(raw: bytes, dtype: np.dtype, shape: tuple, is_fortran: bool, path: Path) -> np.ndarray:
    count = math.prod(shape)
    if len(raw) != count * dtype.itemsize:
        raise DataError(
            f"{path}: array of shape {shape} {dtype} needs {count * dtype.itemsize} bytes, has {len(raw)}"
        )
    return np.frombuffer(raw, dtype).reshape(shape, order="F" if is_fortran else "C")


def _describe(value, depth: int = 0) -> str:
    """A short description of parsed content for an error message (never the content of a
    large blob, never deeper than three levels: a hostile file may nest thousands)."""
    if isinstance(value, tuple):
        if depth >= 3:
            return "(...)"
        items = ", ".join(_describe(item, depth + 1) for item in value[:6])
        return "(" + items + (", ...)" if len(value) > 6 else ")")
    if isinstance(value, str | bytes):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if isinstance(value, int | type(None)):
        return repr(value)
    return type(value).__name__


# What reading an .npz can raise: RuntimeError for an encrypted member, NotImplementedError
# for a compression zipfile lacks.
NPZ_READ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    zlib.error,
    zipfile.BadZipFile,
    RuntimeError,
    NotImplementedError,
)


def read_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an .npz archive, in that order; never unpickled, and each
    .npy header checked against its stored size before numpy allocates it."""
    try:
        check_npz_headers(path, keys)
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in keys}
    except NPZ_READ_ERRORS as error:
        raise DataError(f"{path}: cannot read as an .npz archive of plain arrays: {error}") from error
