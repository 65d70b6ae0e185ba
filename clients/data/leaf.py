"""LEAF's FEMNIST and Shakespeare, read from LEAF's own JSON output, one client per writer / role.

LEAF: Caldas, Duddu, Wu, Li, Konečný, McMahan, Smith & Talwalkar (2018),
"LEAF: A Benchmark for Federated Settings", arXiv:1812.01097,
https://github.com/TalwalkarLab/leaf (BSD-2-Clause).

LEAF data cannot be downloaded ready-made: LEAF's ``preprocess.sh`` downloads the
raw NIST SD19 images / Project Gutenberg text and writes JSON shards, and this
module reads those shards. Each shard holds ``users`` (ids), ``num_samples`` and
``user_data`` ({user: {"x": [...], "y": [...]}}); train and test are separate
folders, and a user's rows may be spread over several shards.

Natural partition: the users with training rows are indexed first, in sorted
user-id order, then users present only in test (LEAF's ``-t user`` split has
them), so owners mean the same client in both splits and clients 0..k-1 are
those that can train; rows are grouped by user in that order, and
``train_owner`` / ``test_owner`` give each row's user index.

Checks: ``num_samples`` must equal len(x) == len(y) for every user, except in
Shakespeare's test split, where LEAF writes the window count from before it
drops the 79-window gap between train and test; there len(x) is trusted.

Memory: peak is about the final arrays plus one shard's parsed Python objects
(the ``json`` module builds those; a 70 MB FEMNIST shard takes ~0.6 GB).
"""

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.data.datasets import Dataset
from clients.errors import DataError

FEMNIST_CLASSES = 62  # 0-9 digits, 10-35 'A'-'Z', 36-61 'a'-'z'
FEMNIST_SIDE = 28
FEMNIST_PIXELS = FEMNIST_SIDE * FEMNIST_SIDE
SHAKESPEARE_WINDOW = 80  # LEAF's input string length

# LEAF's vocabulary (models/utils/language_utils.py); a character's id is ALL_LETTERS.find(c).
ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
UNKNOWN_CHAR = -1
_CHAR_TO_ID = np.full(256, UNKNOWN_CHAR, dtype=np.int64)  # ASCII byte -> token id
_CHAR_TO_ID[np.frombuffer(ALL_LETTERS.encode("ascii"), dtype=np.uint8)] = np.arange(len(ALL_LETTERS))

LEAF_REPO = "https://github.com/TalwalkarLab/leaf"
MAX_SHARD_BYTES = 1 << 30  # json builds ~10x its size in Python objects

# One user's rows as numpy arrays: x (n, *input_shape), y (n,) int64.
UserRows = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _LeafFormat:
    """What differs between the LEAF datasets fedsim reads."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    x_dtype: type[np.number]
    preprocess: str  # the LEAF command that produces the JSON
    parse_user: Callable[[list, list, str], UserRows]  # (x, y, where) -> rows
    # LEAF's Shakespeare test num_samples counts windows before the 79-window
    # train/test gap is dropped, so it overstates len(x); trust len(x) there.
    test_num_samples_exact: bool


def load_femnist(root: Path) -> Dataset:
    """LEAF FEMNIST: x (N, 1, 28, 28) float32 in LEAF's [0, 1] (background 1.0), y (N,) int64 in 0..61.

    One natural client per writer; see the module docstring for layouts and owners.
    """
    return load_leaf(root, "femnist")[0]


def load_shakespeare(root: Path) -> Dataset:
    """LEAF Shakespeare next-character prediction: x (N, 80) uint8 token ids, y (N,) int64 in 0..79.

    Token id = ``ALL_LETTERS.find(char)`` (LEAF's vocabulary); one natural client per speaking role.
    """
    return load_leaf(root, "shakespeare")[0]


def load_leaf(root: Path, name: str) -> tuple[Dataset, list[str]]:
    """The named LEAF dataset and its user ids: user ``i`` owns the rows whose owner is ``i``.

    name: "femnist" or "shakespeare". Raises DataError if the JSON is missing or malformed.
    """
    if name not in _FORMATS:
        raise DataError(f"unknown LEAF dataset {name!r}; allowed: {sorted(_FORMATS)}")
    leaf_format = _FORMATS[name]
    train_dir, test_dir = _find_split_dirs(Path(root), leaf_format)
    train_rows = _read_split(train_dir, leaf_format, num_samples_exact=True)
    test_rows = _read_split(test_dir, leaf_format, num_samples_exact=leaf_format.test_num_samples_exact)
    # Users with training rows first, so clients 0..k-1 are exactly those that can train.
    users = sorted(train_rows) + sorted(test_rows.keys() - train_rows.keys())
    x_train, y_train, train_owner = _stack_by_user(train_rows, users, leaf_format)
    x_test, y_test, test_owner = _stack_by_user(test_rows, users, leaf_format)
    if len(y_train) == 0:
        raise DataError(f"LEAF {name}: no training rows in {train_dir}")
    dataset = Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=leaf_format.num_classes,
        input_shape=leaf_format.input_shape,
        train_owner=train_owner,
        test_owner=test_owner,
    )
    return dataset, users


def _find_split_dirs(root: Path, leaf_format: _LeafFormat) -> tuple[Path, Path]:
    """(train_dir, test_dir) of the first accepted layout under root that has both folders.

    Accepted, in order: root/<name>/data/{train,test} (LEAF's own), root/<name>/{train,test},
    root/{train,test}. Raises DataError naming every folder searched and how to make the data.
    """
    candidates = [root / leaf_format.name / "data", root / leaf_format.name, root]
    for base in candidates:
        train_dir, test_dir = base / "train", base / "test"
        if train_dir.is_dir() and test_dir.is_dir():
            for split_dir in (train_dir, test_dir):
                if not any(split_dir.glob("*.json")):
                    message = f"LEAF {leaf_format.name}: no *.json shards in {split_dir}"
                    raise DataError(f"{message}; {_how_to_get(leaf_format)}")
            return train_dir, test_dir
    searched = ", ".join(f"{base}/{{train,test}}" for base in candidates)
    message = f"LEAF {leaf_format.name} data not found; searched {searched}"
    raise DataError(f"{message}; {_how_to_get(leaf_format)}")


def _how_to_get(leaf_format: _LeafFormat) -> str:
    """The one-line remedy appended to every 'not found' error."""
    return (
        f"expected LEAF JSON shards (*.json) in ROOT/{leaf_format.name}/data/train and .../test; "
        f"LEAF data cannot be downloaded ready-made, produce it with LEAF: git clone {LEAF_REPO} && "
        f"cd leaf/data/{leaf_format.name} && {leaf_format.preprocess}, then pass the folder holding "
        f"{leaf_format.name}/ (that is, leaf/data) as the root"
    )


def _read_split(
    split_dir: Path, leaf_format: _LeafFormat, num_samples_exact: bool
) -> dict[str, list[UserRows]]:
    """{user: [rows from each shard that holds the user]} over every *.json in split_dir.

    Shards are parsed one at a time and each user's lists are turned into numpy
    at once, so only one shard's Python objects are alive at any moment.
    """
    rows_by_user: dict[str, list[UserRows]] = {}
    for shard in sorted(split_dir.glob("*.json")):
        for user, rows in _read_shard(shard, leaf_format, num_samples_exact):
            rows_by_user.setdefault(user, []).append(rows)
    return rows_by_user


def _read_shard(
    shard: Path, leaf_format: _LeafFormat, num_samples_exact: bool
) -> Iterator[tuple[str, UserRows]]:
    """(user, rows) for each user of one LEAF JSON shard; DataError naming the file and user."""
    content = _load_json(shard)
    users, counts, user_data = content["users"], content["num_samples"], content["user_data"]
    if len(users) != len(counts) or len(set(users)) != len(users) or set(users) != set(user_data):
        raise DataError(
            f"{shard}: 'users' ({len(users)}), 'num_samples' ({len(counts)}) and 'user_data' "
            f"({len(user_data)}) must list the same users"
        )
    for user, count in zip(users, counts, strict=True):
        where = f"{shard}, user {user!r}"
        samples = user_data[user]
        if not isinstance(samples, dict) or not {"x", "y"} <= samples.keys():
            raise DataError(f"{where}: user_data entry must be an object with 'x' and 'y' lists")
        x, y = samples["x"], samples["y"]
        if not isinstance(x, list) or not isinstance(y, list) or len(x) != len(y):
            raise DataError(f"{where}: 'x' and 'y' must be lists of equal length")
        if num_samples_exact and count != len(x):
            raise DataError(f"{where}: num_samples is {count} but x and y hold {len(x)} samples")
        yield user, leaf_format.parse_user(x, y, where)


def _load_json(shard: Path) -> dict:
    """The parsed shard, checked to be an object with LEAF's three keys."""
    try:
        if not shard.is_file():  # a FIFO would block, /dev/zero would never end
            raise DataError(f"{shard}: not a regular file")
        if shard.stat().st_size > MAX_SHARD_BYTES:
            raise DataError(f"{shard}: {shard.stat().st_size:,} bytes; LEAF writes shards of tens of MB")
        with shard.open("rb") as stream:
            content = json.load(stream)
    except (OSError, ValueError) as error:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise DataError(f"{shard}: not readable LEAF JSON ({error})") from error
    except RecursionError:  # json recurses per nesting level; LEAF nests four deep
        raise DataError(f"{shard}: not LEAF JSON: nested thousands of levels deep") from None
    if not (
        isinstance(content, dict)
        and isinstance(content.get("users"), list)
        and isinstance(content.get("num_samples"), list)
        and isinstance(content.get("user_data"), dict)
        and all(isinstance(user, str) for user in content["users"])
    ):
        raise DataError(
            f"{shard}: a LEAF shard must be an object with 'users' (list of ids), "
            "'num_samples' (list of ints) and 'user_data' (object)"
        )
    return content


def _femnist_user(x: list, y: list, where: str) -> UserRows:
    """x: n lists of 784 floats in [0, 1] -> (n, 1, 28, 28) float32; y: n ints in 0..61 -> (n,) int64."""
    try:
        parsed = np.array(x) if x else np.empty((0, FEMNIST_PIXELS))
    except (ValueError, TypeError) as error:  # ragged rows
        raise DataError(
            f"{where}: each x row must be a list of {FEMNIST_PIXELS} numbers ({error})"
        ) from error
    if parsed.dtype.kind not in "iuf":  # strings ("0.5"), booleans, None, mixed objects
        raise DataError(f"{where}: each x row must hold {FEMNIST_PIXELS} numbers, found {parsed.dtype}")
    pixels = parsed.astype(np.float32).reshape(len(x), -1) if x else parsed
    if pixels.shape[1] != FEMNIST_PIXELS or (x and np.ndim(x[0]) != 1):
        raise DataError(
            f"{where}: each x row must be a list of {FEMNIST_PIXELS} numbers, got {np.shape(x[0])}"
        )
    if pixels.size and not (pixels.min() >= 0.0 and pixels.max() <= 1.0):  # also rejects NaN
        raise DataError(
            f"{where}: pixels must lie in [0, 1] (LEAF's scale), got {pixels.min()}..{pixels.max()}"
        )
    labels = _int_labels(y, FEMNIST_CLASSES, where)
    return pixels.reshape(-1, 1, FEMNIST_SIDE, FEMNIST_SIDE), labels


def _int_labels(y: list, num_classes: int, where: str) -> np.ndarray:
    """(n,) int64 labels, each an integer in 0..num_classes-1."""
    try:
        labels = np.asarray(y)
    except (ValueError, TypeError, OverflowError):  # ragged lists
        labels = np.asarray([None])
    if labels.size and (labels.dtype.kind not in "iu" or labels.ndim != 1):
        raise DataError(f"{where}: y must be a list of integer labels")
    labels = labels.astype(np.int64).reshape(-1)
    if labels.size and not (labels.min() >= 0 and labels.max() < num_classes):
        raise DataError(
            f"{where}: labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}"
        )
    return labels


def _shakespeare_user(x: list, y: list, where: str) -> UserRows:
    """x: n strings of 80 characters -> (n, 80) uint8 token ids; y: n single characters -> (n,) int64."""
    bad_window = next((w for w in x if not (isinstance(w, str) and len(w) == SHAKESPEARE_WINDOW)), None)
    if bad_window is not None:
        raise DataError(
            f"{where}: each x must be a {SHAKESPEARE_WINDOW}-character string, got {bad_window!r:.100}"
        )
    bad_char = next((c for c in y if not (isinstance(c, str) and len(c) == 1)), None)
    if bad_char is not None:
        raise DataError(f"{where}: each y must be a single character, got {bad_char!r:.100}")
    # Windows as uint8 ids (the vocabulary has 80): 8x less memory than int64 for a corpus
    # of millions of windows; the engines widen each batch.
    windows = _token_ids("".join(x), where).astype(np.uint8).reshape(len(x), SHAKESPEARE_WINDOW)
    return windows, _token_ids("".join(y), where)


def _token_ids(text: str, where: str) -> np.ndarray:
    """(len(text),) int64 ids via a 256-entry table over the ASCII bytes (no per-character Python loop)."""
    try:
        codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError as error:
        bad = text[error.start]
        raise DataError(f"{where}: character {bad!r} is not in LEAF's 80-character vocabulary") from error
    ids = _CHAR_TO_ID[codes]
    unknown = np.flatnonzero(ids == UNKNOWN_CHAR)
    if unknown.size:
        raise DataError(
            f"{where}: character {chr(codes[unknown[0]])!r} is not in LEAF's 80-character vocabulary"
        )
    return ids


def _stack_by_user(
    rows_by_user: dict[str, list[UserRows]], users: list[str], leaf_format: _LeafFormat
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y, owner for one split, rows grouped by user in the order of users.

    Chunks are copied into outputs allocated once and dropped as they are copied,
    so the split is never held twice in full (np.empty pages are only touched on write).
    """
    chunks_per_user = [rows_by_user.pop(user, []) for user in users]
    counts = np.array([sum(len(y) for _, y in chunks) for chunks in chunks_per_user], dtype=np.int64)
    total = int(counts.sum())
    x = np.empty((total, *leaf_format.input_shape), dtype=leaf_format.x_dtype)
    y = np.empty(total, dtype=np.int64)
    start = 0
    for chunks in chunks_per_user:
        while chunks:  # pop, so each chunk is freed once copied
            chunk_x, chunk_y = chunks.pop(0)
            x[start : start + len(chunk_y)] = chunk_x
            y[start : start + len(chunk_y)] = chunk_y
            start += len(chunk_y)
    owner = np.repeat(np.arange(len(users), dtype=np.int64), counts)
    return x, y, owner


_FORMATS = {
    "femnist": _LeafFormat(
        name="femnist",
        num_classes=FEMNIST_CLASSES,
        input_shape=(1, FEMNIST_SIDE, FEMNIST_SIDE),
        x_dtype=np.float32,
        preprocess="./preprocess.sh -s niid --sf 0.05 -k 0 -t sample",
        parse_user=_femnist_user,
        test_num_samples_exact=True,
    ),
    "shakespeare": _LeafFormat(
        name="shakespeare",
        num_classes=len(ALL_LETTERS),
        input_shape=(SHAKESPEARE_WINDOW,),
        x_dtype=np.uint8,
        preprocess="./preprocess.sh -s niid --sf 0.2 -k 0 -t sample -tf 0.8",
        parse_user=_shakespeare_user,
        test_num_samples_exact=False,
    ),
}
