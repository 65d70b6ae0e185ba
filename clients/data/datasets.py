"""Datasets fedsim can train on: scikit-learn's digits and FedProx's Synthetic(α, β).

``make_synthetic`` follows Li, Sahu, Zaheer, Sanjabi, Talwalkar & Smith
(2020), "Federated Optimization in Heterogeneous Networks" (FedProx),
arXiv:1812.06127, Section 5.1, and its public generator script
``generate_synthetic.py``. For device k:

    u_k ~ N(0, α²),  B_k ~ N(0, β²)          (α, β are standard deviations,
                                               as in ``np.random.normal(0, alpha)``)
    W_k[c, j] ~ N(u_k, 1),  b_k[c] ~ N(u_k, 1)  W_k: (C, d), b_k: (C,)
    v_k[j] ~ N(B_k, 1)                         v_k: (d,)
    x ~ N(v_k, Σ),  Σ = diag(j^-1.2), j = 1..d
    y = argmax softmax(W_k x + b_k)

Sample counts per device are ``int(lognormal(4, 2)) + 50``, as in the script;
that heavy tail occasionally gives a device tens of thousands of samples.

Note on α: ``u_k`` is added to every entry of W_k and b_k, so it shifts all C
logits by the same amount, u_k · (Σ_j x_j + 1), and cannot change the argmax.
The labels therefore do not depend on α (only on the unit-variance parts of
W_k, b_k and on β through v_k); this is a property of the paper's generator,
kept here on purpose.
"""

import functools
import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.errors import DataError
from clients.streams import Stream

TOKEN_DTYPES = (np.dtype(np.uint8), np.dtype(np.int64))
DIGITS_MAX_PIXEL = 16.0  # sklearn's digits are 4-bit intensities, 0..16
DIGITS_SHAPE = (1797, 65)  # 64 pixels and the label per row, as scikit-learn ships them
DIGITS_FILE_MAX_BYTES = 1 << 20  # the file is 57 KB
SYNTHETIC_COV_EXPONENT = -1.2  # Σ_jj = j^-1.2 (FedProx Section 5.1)
LOGNORMAL_MEAN, LOGNORMAL_SIGMA, MIN_DEVICE_SAMPLES = 4.0, 2.0, 50  # from the script


@dataclass(frozen=True)
class Dataset:
    """A train/test split held in memory.

    x_train: (N, *input_shape) float32, or token ids for text (uint8 when the vocabulary
    fits, else int64; engines widen each batch); y_train: (N,) int64 class ids, (N, T)
    int64 class ids per position (sequence labels: next-token targets), or for
    regression float32 targets (N,) or (N, k).
    x_test: (M, *input_shape) of the same dtype; y_test: (M,) or (M, k) like y_train.
    num_classes: the model's output width: classes, or k (1 for (N,) targets).
    train_owner: (N,) int64 natural client id of each training row, or None
    when the dataset has no natural clients; test_owner: (M,) the same for the
    test rows (each natural client's own held-out data), or None. All arrays
    are C-contiguous.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    train_owner: np.ndarray | None
    test_owner: np.ndarray | None = None

    def __post_init__(self) -> None:
        x_dtype = self.x_train.dtype if self.x_train.dtype in TOKEN_DTYPES else np.float32
        _check_split(self.name, "train", self.x_train, self.y_train, self.input_shape, x_dtype)
        _check_split(self.name, "test", self.x_test, self.y_test, self.input_shape, x_dtype)
        for field, owner, labels in (
            ("train_owner", self.train_owner, self.y_train),
            ("test_owner", self.test_owner, self.y_test),
        ):
            if owner is None:
                continue
            _check_array(self.name, field, owner, np.int64)
            if owner.shape != labels.shape[:1]:
                raise DataError(
                    f"dataset {self.name!r}: {field} has shape {owner.shape}, expected {labels.shape[:1]}"
                )

    @property
    def is_text(self) -> bool:
        return self.x_train.dtype in TOKEN_DTYPES

    @property
    def is_sequence(self) -> bool:
        """Class ids per position (N, T) rather than one per row."""
        return not self.is_regression and self.y_train.ndim == 2

    @property
    def is_regression(self) -> bool:
        """Float targets rather than class ids."""
        return self.y_train.dtype == np.float32


def _check_split(
    name: str, split: str, x: np.ndarray, y: np.ndarray, input_shape: tuple, x_dtype=np.float32
) -> None:
    """Raise DataError unless x: (N, *input_shape) of x_dtype and y: (N,) or (N, T) int64
    class ids (or float32 targets (N,) / (N, k)) line up."""
    _check_array(name, f"x_{split}", x, x_dtype)
    targets = isinstance(y, np.ndarray) and y.dtype == np.float32
    _check_array(name, f"y_{split}", y, np.float32 if targets else np.int64)
    if x.shape[1:] != tuple(input_shape) or y.shape[:1] != x.shape[:1] or y.ndim > 2:
        raise DataError(
            f"dataset {name!r}: x_{split} has shape {x.shape} and y_{split} {y.shape}; "
            f"expected (N, *{tuple(input_shape)}) and (N,) (or (N, T) / (N, k))"
        )


def _check_array(name: str, field: str, array: np.ndarray, dtype: type) -> None:
    """Raise DataError unless array is a C-contiguous ndarray of dtype."""
    if not isinstance(array, np.ndarray) or array.dtype != dtype:
        raise DataError(f"dataset {name!r}: {field} must be a {np.dtype(dtype)} ndarray")
    if not array.flags.c_contiguous:
        raise DataError(f"dataset {name!r}: {field} must be C-contiguous")


def load_digits(seed: int, test_fraction: float) -> Dataset:
    """scikit-learn's 1797 8x8 digit images, split per class with a seeded shuffle.

    Pixels are scaled to [0, 1]; x: (N, 1, 8, 8) float32, y: (N,) int64, 10 classes.
    Each class holds out round(test_fraction * count) images, clamped so that
    every class has at least one image in both train and test.
    """
    _check_fraction(test_fraction)
    pixels, labels = _digits_arrays()
    images = (pixels.reshape(-1, 8, 8) / DIGITS_MAX_PIXEL).astype(np.float32)[:, None, :, :]
    test_mask = stratified_test_mask(labels, test_fraction, np.random.default_rng(seed))
    return Dataset(
        name="digits",
        x_train=np.ascontiguousarray(images[~test_mask]),
        y_train=np.ascontiguousarray(labels[~test_mask]),
        x_test=np.ascontiguousarray(images[test_mask]),
        y_test=np.ascontiguousarray(labels[test_mask]),
        num_classes=10,
        input_shape=(1, 8, 8),
        train_owner=None,
    )


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits' (1797, 64) float64 pixels and (1797,) int64 labels, read-only: scikit-learn's
    own file read as its load_digits reads it, without importing scikit-learn (2 s of a
    run's start); through load_digits where that file is not where it has always been. Read
    once per process (parsing the text takes ~25 ms, a sixth of a tiny run: sweeps and
    notebooks build many runs)."""
    pixels, labels = _read_digits()
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file() and path.stat().st_size < DIGITS_FILE_MAX_BYTES:
            with gzip.open(path, mode="rt", encoding="utf-8") as rows:
                data = np.loadtxt(rows, delimiter=",")
            if data.shape == DIGITS_SHAPE:
                return data[:, :-1], data[:, -1].astype(np.int64)
    import sklearn.datasets

    bunch = sklearn.datasets.load_digits()
    return bunch.data, bunch.target.astype(np.int64)


def stratified_test_mask(labels: np.ndarray, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(N,) bool, True for the rows held out: a shuffled share of each class."""
    test_mask = np.zeros(labels.shape, dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        test_mask[members[: int(_held_out_count(len(members), test_fraction))]] = True
    return test_mask


def _held_out_count(count: np.ndarray | int, test_fraction: float) -> np.ndarray:
    """round(test_fraction * count), kept in [1, count - 1] so both sides are non-empty.

    count: scalar or (K,) with every count >= 2; returns int64 of the same shape.
    """
    rounded = np.rint(test_fraction * np.asarray(count)).astype(np.int64)
    return np.clip(rounded, 1, np.asarray(count) - 1)


@dataclass(frozen=True, kw_only=True)
class SyntheticSettings:
    """What ``make_synthetic`` generates: Synthetic(``alpha``, ``beta``) over ``num_devices``
    devices from ``seed``, inputs of ``num_features``, ``num_classes`` labels,
    ``samples_per_device`` each (None: the paper's lognormal counts), ``test_fraction`` of
    each device's samples held out."""

    alpha: float
    beta: float
    num_devices: int
    seed: int
    num_features: int = 60
    num_classes: int = 10
    samples_per_device: int | None = None
    test_fraction: float = 0.2


def make_synthetic(settings: SyntheticSettings) -> Dataset:
    """FedProx's Synthetic(α, β): one logistic-regression task per device (see module docstring).

    Each device's samples are shuffled; the last round(test_fraction * n) of
    them (at least 1, at most n - 1) go to a pooled server test set and the
    rest are its training rows (train_owner = device id).
    x: (N, num_features) float32, y: (N,) int64.
    """
    s = settings
    _check_synthetic_args(s)
    _check_fraction(s.test_fraction)
    rng = np.random.default_rng(np.random.SeedSequence(s.seed))
    counts = _device_sample_counts(rng, s.num_devices, s.samples_per_device)
    x, y, owner = _sample_devices(rng, s.alpha, s.beta, counts, s.num_features, s.num_classes)
    order, test_mask = _per_device_holdout(rng, owner, counts, s.test_fraction)
    train_rows, test_rows = order[~test_mask], order[test_mask]
    return Dataset(
        name=f"synthetic_{s.alpha:g}_{s.beta:g}",
        x_train=x[train_rows],
        y_train=y[train_rows],
        x_test=x[test_rows],
        y_test=y[test_rows],
        num_classes=s.num_classes,
        input_shape=(s.num_features,),
        train_owner=owner[train_rows],
    )


def _check_synthetic_args(s: SyntheticSettings) -> None:
    """Raise DataError naming the first make_synthetic argument out of range."""
    if not s.alpha >= 0 or not s.beta >= 0:
        raise DataError(f"alpha={s.alpha} and beta={s.beta} must both be >= 0 (they are standard deviations)")
    if s.num_devices < 1:
        raise DataError(f"num_devices={s.num_devices} must be >= 1")
    if s.num_features < 1:
        raise DataError(f"num_features={s.num_features} must be >= 1")
    if s.num_classes < 2:
        raise DataError(f"num_classes={s.num_classes} must be >= 2")
    if s.samples_per_device is not None and s.samples_per_device < 2:
        raise DataError(
            f"samples_per_device={s.samples_per_device} must be None or >= 2 "
            "(one sample to train on, one to test)"
        )


def _check_fraction(test_fraction: float) -> None:
    """Raise DataError unless 0 < test_fraction < 1."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction={test_fraction} must be in the open interval (0, 1)")


def _device_sample_counts(
    rng: np.random.Generator, num_devices: int, samples_per_device: int | None
) -> np.ndarray:
    """(K,) int64 samples per device: int(lognormal(4, 2)) + 50, or samples_per_device each.

    The lognormal is drawn either way so that the devices' parameters, drawn
    next, are the same whether or not samples_per_device is given.
    """
    lognormal = rng.lognormal(LOGNORMAL_MEAN, LOGNORMAL_SIGMA, num_devices)
    if samples_per_device is not None:
        return np.full(num_devices, samples_per_device, dtype=np.int64)
    return lognormal.astype(np.int64) + MIN_DEVICE_SAMPLES


def _draw_device_models(
    rng: np.random.Generator, alpha: float, beta: float, num_devices: int, d: int, c: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-device feature means v: (K, d), weights W: (K, C, d) and biases b: (K, C)."""
    weight_mean = rng.normal(0.0, alpha, num_devices)  # u_k
    feature_mean_prior = rng.normal(0.0, beta, num_devices)  # B_k
    feature_mean = rng.normal(feature_mean_prior[:, None], 1.0, (num_devices, d))  # v_k
    weights = rng.normal(weight_mean[:, None, None], 1.0, (num_devices, c, d))
    biases = rng.normal(weight_mean[:, None], 1.0, (num_devices, c))
    return feature_mean, weights, biases


def _sample_devices(
    rng: np.random.Generator,
    alpha: float,
    beta: float,
    counts: np.ndarray,
    num_features: int,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw every device's model and samples.

    counts: (K,). Returns x: (N, d) float32, y: (N,) int64 and owner: (N,)
    int64, rows grouped by device in ascending device order.
    """
    feature_mean, weights, biases = _draw_device_models(
        rng, alpha, beta, len(counts), num_features, num_classes
    )
    feature_std = np.arange(1, num_features + 1, dtype=np.float64) ** (SYNTHETIC_COV_EXPONENT / 2)
    # Σ is diagonal, so x = v_k + z * sqrt(diag Σ) with z standard normal.
    x = rng.standard_normal((int(counts.sum()), num_features), dtype=np.float32)
    x *= feature_std.astype(np.float32)
    y = np.empty(len(x), dtype=np.int64)
    ends = np.cumsum(counts)
    for device, (start, end) in enumerate(zip(ends - counts, ends, strict=True)):
        x[start:end] += feature_mean[device].astype(np.float32)
        # softmax is monotone, so argmax of the logits is argmax of the softmax.
        y[start:end] = np.argmax(x[start:end] @ weights[device].T + biases[device], axis=1)
    owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return x, y, owner


def _per_device_holdout(
    rng: np.random.Generator, owner: np.ndarray, counts: np.ndarray, test_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle each device's rows and mark the last share of each as test.

    owner: (N,) grouped by device; counts: (K,). Returns order: (N,) row
    indices, still grouped by device but shuffled within it, and test_mask:
    (N,) bool over positions in order.
    """
    order = np.lexsort((rng.random(len(owner)), owner))
    starts = np.cumsum(counts) - counts
    rank_in_device = np.arange(len(owner)) - starts[owner]
    kept = counts - _held_out_count(counts, test_fraction)
    test_mask = rank_in_device >= kept[owner]
    return order, test_mask


@dataclass(frozen=True)
class SyntheticClients:
    """Synthetic(α, β) devices generated on demand from (seed, device): a population of
    any size costs no memory until a client is sampled. Device k's data come from its
    own generator, so any worker makes the same bits (not the bits of make_synthetic,
    which draws all devices from one stream)."""

    seed: int
    alpha: float
    beta: float
    num_features: int
    num_classes: int
    samples_per_device: int
    test_fraction: float

    def device(self, device: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x_train, y_train, x_test, y_test) of one device: x float32 (m, d), y int64."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, device, Stream.SYNTHETIC_DEVICE]))
        counts = np.array([self.samples_per_device])
        x, y, owner = _sample_devices(rng, self.alpha, self.beta, counts, self.num_features, self.num_classes)
        order, test_mask = _per_device_holdout(rng, owner, counts, self.test_fraction)
        train, test = order[~test_mask], order[test_mask]
        return x[train], y[train], x[test], y[test]

    def train_size(self) -> int:
        return int(
            self.samples_per_device
            - _held_out_count(np.array([self.samples_per_device]), self.test_fraction)[0]
        )

    def server_test_set(self, num_devices: int, max_devices: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """The held-out rows of the first min(num_devices, max_devices) devices."""
        parts = [self.device(k)[2:] for k in range(min(num_devices, max_devices))]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
