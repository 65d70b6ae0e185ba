"""Users' own data: arrays returned by their code, and .npz, ImageFolder, CSV, parquet
and Hugging Face (``save_to_disk``) datasets read from ``data.root``.

Every format comes down to one or two ``Split``s (features, raw labels, raw client ids)
that ``assemble`` turns into a ``Dataset``:
- features become float32 (N, *shape) (integer inputs with labels per position (N, T)
  stay int64 token ids, a sequence model's); labels that are integers >= 0 are kept, any
  other labels (strings) are numbered in sorted order over both splits; under regression
  labels are float32 targets (N,) or (N, k) instead (``task``: numbers, text of numbers);
- client ids (any values) are numbered in sorted order, training clients first, then
  those only in the test split (as LEAF's users are), so a column of writers gives one
  natural client per distinct value;
- without a test split, a seeded, per-class share ``test_fraction`` is held out.

Trust: files are data, never code. Dataset files must be regular files; .npz members
are read with ``allow_pickle=False`` after their headers are checked against their
sizes; parquet and Hugging Face data are read through pyarrow (which refuses pickled
extension types since 14.0.1) one column at a time, never through pandas; images only
through PIL's plain raster decoders. Only ``data.loader`` runs code, and only when the
run starts.
"""

from __future__ import annotations

import array
import csv
import importlib
import math
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.data.datasets import Dataset, stratified_test_mask
from clients.data.vision import NPZ_READ_ERRORS, read_npz
from clients.errors import DataError

CODE_DATASET = "arrays"  # data.loader's
FILE_FORMATS = ("npz", "image_folder", "csv", "parquet", "hf_disk")
TABLE_FORMATS = ("csv", "parquet", "hf_disk")  # read data.features, data.label, data.client_column
USER_DATASETS = (CODE_DATASET, *FILE_FORMATS)
MAX_FEATURE_BYTES = 1 << 34  # float32 features of one split: 16 GiB, refused before allocating
MAX_CLASSES = 100_000
# torchvision's ImageFolder extensions, and the PIL decoders allowed to read them
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "PPM", "TIFF", "WEBP")
MAX_IMAGE_PIXELS = 1 << 26  # one image; PIL's own bomb guard allows more
# pip extras that bring a format's reader
EXTRAS = {"pyarrow": "fedsim[data]", "datasets": "fedsim[data]"}


@dataclass(frozen=True)
class Split:
    """One split as read: x (N, *shape) numeric, labels (N,), clients (N,) or None."""

    x: np.ndarray
    labels: np.ndarray
    clients: np.ndarray | None = None
    owned: bool = False  # x is a float32 buffer the reader made: it may be rearranged in place


# ------------------------------------------------------------------ assembling


def assemble(
    name: str,
    train: Split,
    test: Split | None,
    rng: np.random.Generator,
    test_fraction: float,
    task: str | None = "classification",
) -> Dataset:
    """The Dataset of one or two splits; see the module docstring for the numbering.
    ``task``: classification, regression, or None to let the labels decide (floats, or
    text of numbers that are not all integers, are regression targets)."""
    if task is None:
        task = "regression" if _float_labels(train.labels) else "classification"
    regression = task == "regression"
    for split, part in (("train", train), ("test", test)):
        if part is not None:
            _check_lengths(name, split, part, regression)
    if len(train.labels) == 0:
        raise DataError(f"{name}: the training split is empty")
    if test is not None and test.clients is not None and train.clients is None:
        raise DataError(f"{name}: client ids are given for the test rows only; give the training rows' too")
    if test is None:
        train, test = _held_out(train, rng, test_fraction, regression)
    if regression:
        labels, num_classes = _targets(name, train.labels, test.labels)
    else:
        labels, num_classes = _label_ids(name, train.labels, test.labels)
    owners = None if train.clients is None else _client_ids(train.clients, test.clients)
    if not regression and labels[0].ndim == 2 and train.x.dtype.kind in "iu" and test.x.dtype.kind in "iu":
        # A sequence model's inputs: token ids stay integers, as the embedding takes them.
        x_train, x_test = _tokens(name, "train", train.x), _tokens(name, "test", test.x)
    else:
        x_train, x_test = _features(name, "train", train.x), _features(name, "test", test.x)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{name}: train rows have shape {x_train.shape[1:]} but test rows {x_test.shape[1:]}")
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=labels[0],
        x_test=x_test,
        y_test=labels[1],
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
        train_owner=None if owners is None else owners[0],
        test_owner=None if owners is None or test.clients is None else owners[1],
    )


def _check_lengths(name: str, split: str, part: Split, regression: bool = False) -> None:
    x, labels, clients = part.x, part.labels, part.clients
    if x.ndim < 2 or labels.ndim not in (1, 2):
        wanted = "(N,) or (N, k)" if regression else "(N,), or (N, T) class ids per position"
        raise DataError(
            f"{name}: x_{split} must be (N, features...) and y_{split} {wanted}; "
            f"got {x.shape} and {labels.shape}"
        )
    if len(x) != len(labels) or (clients is not None and clients.shape != labels.shape[:1]):
        got = f"x_{split} has {len(x)} rows, y_{split} {len(labels)}"
        got += "" if clients is None else f", client_{split} {len(clients)}"
        raise DataError(f"{name}: {got}; every row needs its label (and client id)")


def _held_out(
    train: Split, rng: np.random.Generator, test_fraction: float, regression: bool = False
) -> tuple[Split, Split]:
    """A seeded share ``test_fraction`` of each label's rows (regression: of all rows) as
    the test split."""
    if regression or train.labels.ndim == 2:  # targets, or labels per position: no classes
        classes = np.zeros(len(train.labels), np.int64)
    else:
        _, classes = np.unique(train.labels, return_inverse=True)
    mask = stratified_test_mask(classes.reshape(-1), test_fraction, rng)
    keep, hold = np.flatnonzero(~mask), np.flatnonzero(mask)
    clients = train.clients
    x_test = train.x[hold]
    if train.owned and train.x.flags.c_contiguous and train.x.flags.writeable:
        x_train = _compacted(train.x, keep)
    else:
        x_train = train.x[keep]
    return (
        Split(x_train, train.labels[keep], None if clients is None else clients[keep]),
        Split(x_test, train.labels[hold], None if clients is None else clients[hold]),
    )


def _compacted(x: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """x[keep] for increasing ``keep``, made by moving those rows to the front of x itself,
    about 1 MiB at a time (row keep[i] >= i is read before anything overwrites it): the
    training rows are not copied a second time. A view of x's first len(keep) rows."""
    chunk = max(1, (1 << 20) // max(1, x[:1].nbytes))
    for start in range(0, len(keep), chunk):
        rows = keep[start : start + chunk]
        x[start : start + len(rows)] = x[rows]
    return x[: len(keep)]


def _label_ids(name: str, train: np.ndarray, test: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """((y_train, y_test) int64, number of classes): integers >= 0 as they are, else the
    sorted distinct values numbered 0..K-1. Labels per position (N, T) keep their shape."""
    if train.shape[1:] != test.shape[1:]:
        raise DataError(f"{name}: train labels have shape {train.shape[1:]} but test labels {test.shape[1:]}")
    both = np.concatenate([train, test])
    if both.dtype.kind == "O":
        raise DataError(f"{name}: labels are Python objects; give integers or strings")
    if _float_labels(both):  # text such as "2.5" would otherwise become a class per value
        raise DataError(
            f"{name}: labels are numbers, not all whole, so they are no class ids; for regression "
            "targets set model.loss: mse (or model.task: regression)"
        )
    if both.dtype.kind in "biuf":
        if len(both) and both.min() < 0:
            raise DataError(
                f"{name}: labels must be class ids (integers >= 0) or names; got {both.dtype} values"
            )
        ids = both.astype(np.int64)
        num_classes = int(ids.max()) + 1 if len(ids) else 0
    else:
        values, ids = np.unique(both.astype(str), return_inverse=True)
        ids, num_classes = ids.reshape(both.shape).astype(np.int64), len(values)
    if not 2 <= num_classes <= MAX_CLASSES:
        raise DataError(f"{name}: {num_classes} classes; between 2 and {MAX_CLASSES:,} are supported")
    return (np.ascontiguousarray(ids[: len(train)]), np.ascontiguousarray(ids[len(train) :])), num_classes


def _float_labels(labels: np.ndarray) -> bool:
    """Whether labels are numbers that are not all whole (float values, or text of
    numbers) rather than class ids or names: 0.0 / 1.0 or "-1" / "1" are classes."""
    if labels.dtype.kind not in "fU":
        return False
    try:
        values = labels.astype(np.float64)
    except ValueError:
        return False
    finite = values[np.isfinite(values)]
    return bool(len(finite) < len(values) or np.any(finite != np.round(finite)))


def _targets(name: str, train: np.ndarray, test: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """((y_train, y_test) float32 regression targets, their width k: 1 for (N,))."""
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"{name}: train targets have shape {train.shape[1:]} but test targets {test.shape[1:]}"
        )
    out = []
    for split, labels in (("train", train), ("test", test)):
        if labels.dtype.kind not in "biufU":
            raise DataError(f"{name}: y_{split} is {labels.dtype}; regression targets must be numbers")
        try:
            values = np.ascontiguousarray(labels.astype(np.float64).astype(np.float32))
        except ValueError:
            raise DataError(
                f"{name}: y_{split} holds text that is not a number; regression targets must be numbers"
            ) from None
        if not np.all(np.isfinite(values)):
            raise DataError(f"{name}: y_{split} holds NaN or Inf (or values beyond float32's range)")
        out.append(values)
    width = int(train.shape[1]) if train.ndim == 2 else 1
    if width < 1:
        raise DataError(f"{name}: targets have shape {train.shape}; at least one output is needed")
    return (out[0], out[1]), width


def _client_ids(train: np.ndarray, test: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Clients numbered: training values in sorted order, then values only in test."""
    if train.dtype.kind == "O" or (test is not None and test.dtype.kind == "O"):
        train, test = train.astype(str), None if test is None else test.astype(str)
    if test is not None and train.dtype.kind != test.dtype.kind:
        train, test = train.astype(str), test.astype(str)
    known = np.unique(train)
    extra = np.setdiff1d(np.unique(test), known) if test is not None and len(test) else known[:0]
    values = np.concatenate([known, extra])  # position = client id
    order = np.argsort(values, kind="stable")
    ordered = values[order]

    def number(column: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(order[np.searchsorted(ordered, column)], dtype=np.int64)

    test_ids = number(test) if test is not None and len(test) else np.zeros(0, np.int64)
    return number(train), test_ids


def _tokens(name: str, split: str, x: np.ndarray) -> np.ndarray:
    """Integer inputs of a sequence model as int64 token ids (>= 0)."""
    if len(x) and x.min() < 0:
        raise DataError(f"{name}: x_{split} holds negative token ids; ids are integers >= 0")
    return np.ascontiguousarray(x, dtype=np.int64)


def _features(name: str, split: str, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name}: x_{split} is {x.dtype}; features must be numbers")
    out = np.ascontiguousarray(x, dtype=np.float32)
    # NaN and Inf carry through a float64 sum (finite float32 values cannot overflow it),
    # which, unlike isfinite, allocates nothing the size of x.
    if not np.isfinite(out.sum(dtype=np.float64)):
        raise DataError(f"{name}: x_{split} holds NaN or Inf (or values beyond float32's range)")
    return out


# ------------------------------------------------------------------ arrays from code and .npz

SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
POOLED_KEYS = ("x", "y")


def from_arrays(name: str, arrays: Mapping[str, Any], where: str) -> tuple[Split, Split | None]:
    """Splits from named arrays: x_train, y_train, x_test, y_test (with optional
    client_train, client_test), or x, y (with optional client) and no test split."""
    keys = set(arrays)
    if set(SPLIT_KEYS) <= keys:
        train = _split(arrays, where, "x_train", "y_train", "client_train")
        return train, _split(arrays, where, "x_test", "y_test", "client_test")
    if set(POOLED_KEYS) <= keys:
        return _split(arrays, where, "x", "y", "client"), None
    raise DataError(
        f"{where}: has {sorted(keys)}; expected x_train, y_train, x_test, y_test "
        "(optional client_train, client_test), or x, y (optional client)"
    )


def _split(arrays: Mapping[str, Any], where: str, x: str, y: str, client: str) -> Split:
    values = {}
    for key in (x, y, client):
        if key not in arrays or arrays[key] is None:
            continue
        try:
            values[key] = np.asarray(arrays[key])
        except Exception as exc:  # a value numpy cannot make an array of (ragged lists, ...)
            raise DataError(f"{where}: {key} is not an array: {type(exc).__name__}: {exc}") from None
        if values[key].dtype.kind == "O":
            raise DataError(f"{where}: {key} holds Python objects; give numbers (or strings for labels)")
    return Split(values[x], values[y], values.get(client))


def load_from_code(loader: Callable[[], Any], target: str) -> tuple[Split, Split | None]:
    """Call the user's loader (no arguments) and read what it returns: a mapping of arrays
    (see ``from_arrays``) or a tuple (x_train, y_train, x_test, y_test[, client_train[, client_test]])."""
    where = f"data.loader {target!r}"
    try:
        returned = loader()
    except Exception as exc:
        raise DataError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(returned, tuple) and 4 <= len(returned) <= 6:
        returned = dict(zip((*SPLIT_KEYS, "client_train", "client_test"), returned, strict=False))
    if not isinstance(returned, Mapping):
        raise DataError(
            f"{where} returned a {type(returned).__name__}; return a dict of arrays (x_train, y_train, "
            "x_test, y_test[, client_train, client_test]) or that tuple"
        )
    return from_arrays("arrays", returned, where)


def load_npz(path: Path) -> tuple[Split, Split | None]:
    """An .npz of plain arrays, named as ``from_arrays`` expects."""
    _regular_file(path, "npz")
    try:
        with zipfile.ZipFile(path) as archive:
            names = {n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy")}
        keys: tuple[str, ...] = SPLIT_KEYS if set(SPLIT_KEYS) <= names else POOLED_KEYS
        optional = ("client_train", "client_test") if keys == SPLIT_KEYS else ("client",)
        keys = keys + tuple(k for k in optional if k in names)
    except NPZ_READ_ERRORS as e:
        raise DataError(f"{path}: cannot read as an .npz archive of plain arrays: {e}") from None
    return from_arrays("npz", read_npz(path, keys), str(path))


# ------------------------------------------------------------------ ImageFolder


def load_image_folder(root: Path) -> tuple[Split, Split | None]:
    """torchvision's ImageFolder: ROOT/train/<class>/<image> and ROOT/test/<class>/<image>,
    or ROOT/<class>/<image> alone (the test split is then held out). Classes are the
    training folder's sub-folders in sorted order; every image must have the same size;
    grey images give (N, 1, H, W), any other mode is converted to RGB (N, 3, H, W);
    pixels are scaled to [0, 1]."""
    if not root.is_dir():
        raise DataError(f"data.root {root}: not a folder of class folders (ImageFolder layout)")
    has_splits = (root / "train").is_dir() and (root / "test").is_dir()
    train_root = root / "train" if has_splits else root
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{train_root}: no class folders; expected {train_root}/<class>/<image>")
    train = _image_split(train_root, classes)
    test = _image_split(root / "test", classes) if has_splits else None
    return train, test


def _image_split(folder: Path, classes: list[str]) -> Split:
    files, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()) if (folder / name).is_dir() else []:
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                _regular_file(path, "image")
                files.append(path)
                labels.append(label)
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise DataError(f"{folder}: class folders {extra[:5]} are not among the training classes")
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
    first = _read_image(files[0], None)
    x = np.empty((len(files), *first.shape), np.uint8)
    x[0] = first
    for i, path in enumerate(files[1:], start=1):
        x[i] = _read_image(path, first.shape)
    pixels = x.astype(np.float32)
    pixels /= np.float32(255.0)
    return Split(pixels, np.asarray(labels, np.int64), owned=True)


def _read_image(path: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    """(C, H, W) uint8; C = 1 for grey images, else 3."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # PIL warns from 89M pixels (beyond MAX_IMAGE_PIXELS): an error, so one line is printed
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path, formats=IMAGE_FORMATS)
        with image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise DataError(f"{path}: {image.width}x{image.height} pixels; at most {MAX_IMAGE_PIXELS:,}")
            grey = image.mode in ("1", "L", "I", "I;16", "F") if shape is None else shape[0] == 1
            pixels = np.asarray(image.convert("L" if grey else "RGB"), dtype=np.uint8)
    except DataError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        raise DataError(f"{path}: cannot read as an image: {exc}") from None
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if shape is not None and chw.shape != shape:
        raise DataError(
            f"{path}: {chw.shape[2]}x{chw.shape[1]} pixels, but the first image is {shape[2]}x{shape[1]}; "
            "every image must have the same size (resize them first)"
        )
    return chw


# ------------------------------------------------------------------ tables: CSV, parquet, Hugging Face


@dataclass(frozen=True)
class Columns:
    """Which columns of a table are what: data.features ([] = every other column),
    data.label, data.client_column (None = no natural clients)."""

    features: tuple[str, ...]
    label: str
    client: str | None

    def pick(self, names: list[str], where: str) -> tuple[str, ...]:
        """The feature columns; every named column must exist."""
        wanted = [*self.features, self.label, *([self.client] if self.client else [])]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DataError(f"{where}: no column {missing[0]!r}; its columns are {names[:20]}")
        if self.features:
            return self.features
        features = tuple(c for c in names if c not in (self.label, self.client))
        if not features:
            raise DataError(f"{where}: no feature columns besides {self.label!r}")
        return features


def load_table(root: Path, fmt: str, columns: Columns) -> tuple[Split, Split | None]:
    """CSV or parquet: data.root is one file (the test split is held out) or a folder
    holding train.<ext> and test.<ext>."""
    ext = {"csv": ".csv", "parquet": ".parquet"}[fmt]
    read = _read_csv if fmt == "csv" else _read_parquet
    if root.is_dir():
        train_path, test_path = root / f"train{ext}", root / f"test{ext}"
        if not train_path.exists() or not test_path.exists():
            raise DataError(f"data.root {root}: a folder, so it must hold train{ext} and test{ext}")
        return read(train_path, columns), read(test_path, columns)
    if not root.exists():
        raise DataError(f"data.root {root}: no such file or folder ({fmt} data)")
    return read(root, columns), None


def _read_csv(path: Path, columns: Columns) -> Split:
    """A CSV file with a header row; features parsed as numbers, row by row."""
    _regular_file(path, "csv")
    with path.open(newline="", encoding="utf-8", errors="strict") as stream:
        try:
            reader = csv.reader(stream)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty; expected a header row, then one row per sample")
            features = columns.pick(header, str(path))
            feature_at = [header.index(c) for c in features]
            label_at = header.index(columns.label)
            client_at = header.index(columns.client) if columns.client else None
            values, labels, clients = array.array("f"), [], []
            for row in reader:
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(row)} fields, the header {len(header)}"
                    )
                try:
                    values.extend(float(row[i]) for i in feature_at)
                except ValueError:
                    bad = next(features[k] for k, i in enumerate(feature_at) if not _is_number(row[i]))
                    raise DataError(
                        f"{path}: line {reader.line_num}: column {bad!r} is not a number"
                    ) from None
                labels.append(row[label_at])
                if client_at is not None:
                    clients.append(row[client_at])
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a readable UTF-8 CSV file: {exc}") from None
    x = np.frombuffer(values, dtype=np.float32).reshape(len(labels), len(features))
    clients_ = np.asarray(clients) if client_at is not None else None
    return Split(x, _text_labels(labels), clients_, owned=True)  # x shares the array's buffer


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _text_labels(labels: list[str]) -> np.ndarray:
    """Labels read as text: integers when every one is a non-negative integer, else strings."""
    if all(label.isdigit() and label.isascii() for label in labels):
        return np.asarray([int(label) for label in labels], np.int64)
    return np.asarray(labels)


def _read_parquet(path: Path, columns: Columns) -> Split:
    """A parquet file, one column at a time into the features array: the file's data are
    held once, not once as a table and again as arrays."""
    _regular_file(path, "parquet")
    pq = optional_import("pyarrow.parquet", "parquet")
    try:
        handle = pq.ParquetFile(path)
        names = handle.schema_arrow.names
        features = columns.pick(names, str(path))
        rows = handle.metadata.num_rows
        x = _feature_buffer(path, rows, len(features))
        for j, name in enumerate(features):
            x[:, j] = _numeric(handle.read(columns=[name]).column(0), path, name)
        labels = _plain(handle.read(columns=[columns.label]).column(0), path, columns.label)
        clients = None
        if columns.client:
            clients = _plain(handle.read(columns=[columns.client]).column(0), path, columns.client)
    except DataError:
        raise
    except Exception as exc:  # pyarrow's errors are many (ArrowInvalid, OSError, ...)
        raise DataError(f"{path}: cannot read as parquet: {type(exc).__name__}: {exc}") from None
    return Split(x, labels, clients, owned=True)


def _feature_buffer(where: Any, rows: int, width: int) -> np.ndarray:
    nbytes = rows * width * 4
    if nbytes > MAX_FEATURE_BYTES:
        raise DataError(f"{where}: {rows:,} rows x {width:,} features is {nbytes / 2**30:.0f} GiB of float32")
    return np.empty((rows, width), np.float32)


def _numeric(column: Any, where: Any, name: str) -> np.ndarray:
    """A pyarrow column of numbers as numpy, without nulls."""
    import pyarrow as pa

    if column.null_count:
        raise DataError(f"{where}: column {name!r} has {column.null_count} empty values")
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise DataError(f"{where}: column {name!r} is {kind}; feature columns must hold numbers")
    return column.to_numpy()


def _plain(column: Any, where: Any, name: str) -> np.ndarray:
    """A label or client column (numbers or strings) as numpy."""
    import pyarrow as pa

    if column.null_count:
        raise DataError(f"{where}: column {name!r} has {column.null_count} empty values")
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.asarray(column.to_pylist(), dtype=str)
    if pa.types.is_dictionary(kind):  # datasets' ClassLabel and pandas' categoricals
        return _plain(column.cast(kind.value_type), where, name)
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise DataError(f"{where}: column {name!r} is {kind}; expected numbers or strings")
    return column.to_numpy()


def load_hf_disk(root: Path, columns: Columns) -> tuple[Split, Split | None]:
    """A Hugging Face dataset written by ``save_to_disk``: a DatasetDict with ``train`` and
    ``test`` splits, or one Dataset (the test split is then held out). Feature columns hold
    numbers, or one column holds fixed-shape arrays (an image as nested lists)."""
    datasets = optional_import("datasets", "hf_disk")
    if not root.is_dir():
        raise DataError(f"data.root {root}: not a folder written by save_to_disk")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = datasets.load_from_disk(str(root))
    except Exception as exc:  # FileNotFoundError, json errors, arrow errors
        raise DataError(f"data.root {root}: cannot load with datasets.load_from_disk: {exc}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded or "test" not in loaded:
            raise DataError(f"data.root {root}: its splits are {list(loaded)}; expected train and test")
        return _hf_split(loaded["train"], root, columns), _hf_split(loaded["test"], root, columns)
    return _hf_split(loaded, root, columns), None


def _hf_split(split: Any, root: Path, columns: Columns) -> Split:
    table = split.data.table if split._indices is None else split.flatten_indices().data.table  # noqa: SLF001
    where = f"{root} ({split.split or 'dataset'})"
    features = columns.pick(table.column_names, where)
    first = table.column(features[0])
    if len(features) == 1 and not _is_scalar(first.type):
        x = _nested(first, where, features[0])
    else:
        x = _feature_buffer(where, table.num_rows, len(features))
        for j, name in enumerate(features):
            x[:, j] = _numeric(table.column(name), where, name)
    labels = _plain(table.column(columns.label), where, columns.label)
    clients = _plain(table.column(columns.client), where, columns.client) if columns.client else None
    return Split(x, labels, clients, owned=x.flags.writeable and x.flags.owndata)


def _is_scalar(kind: Any) -> bool:
    import pyarrow as pa

    return not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind))


def _nested(column: Any, where: Any, name: str) -> np.ndarray:
    """A column of equal-shape nested lists of numbers as one (N, *shape) float32 array."""
    import pyarrow as pa

    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    shape: list[int] = []
    values = column
    while not _is_scalar(values.type):
        if values.null_count:
            raise DataError(f"{where}: column {name!r} has empty values")
        lengths = np.diff(values.offsets.to_numpy()) if not pa.types.is_fixed_size_list(values.type) else None
        width = values.type.list_size if lengths is None else (int(lengths[0]) if len(lengths) else 0)
        if lengths is not None and np.any(lengths != width):
            raise DataError(f"{where}: column {name!r} holds arrays of different shapes")
        shape.append(width)
        values = values.flatten()
    flat = _numeric(values, where, name)
    if len(column) and flat.size != len(column) * math.prod(shape):
        raise DataError(f"{where}: column {name!r} holds arrays of different shapes")
    return flat.astype(np.float32, copy=False).reshape(len(column), *shape)


# ------------------------------------------------------------------ helpers


def _regular_file(path: Path, what: str) -> None:
    if not path.is_file():
        kind = "missing" if not path.exists() else "not a regular file"
        raise DataError(f"{path}: {kind}; a {what} dataset file must be a regular file")


def optional_import(module: str, fmt: str) -> Any:
    """Import an optional reader, or one error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise DataError(
            f"data.dataset {fmt} needs the {package} package: pip install '{EXTRAS[package]}'"
        ) from None
