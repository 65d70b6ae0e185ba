"""Split a training set among clients: IID, Dirichlet label skew, shards, natural owners.

Every partitioner is a pure function over numpy arrays returning one sorted
int64 index array per client; together they cover each training index
exactly once. Randomness comes only from the ``rng`` passed in.

- ``dirichlet_partition``: label skew after Hsu, Qi & Brown (2019),
  "Measuring the Effects of Non-Identical Data Distribution for Federated
  Visual Classification", arXiv:1909.06335. Hsu et al. draw each client's
  class mix q ~ Dir(α p); like most FL code (e.g. Yurochkin et al. 2019,
  arXiv:1905.12022) this draws, per class, the share of that class each
  client gets, p_c ~ Dir(α 1_K). Both give IID-like splits as α → ∞ and
  one-label clients as α → 0.
- ``shards_partition``: the pathological non-IID split of McMahan, Moore,
  Ramage, Hampson & Agüera y Arcas (2017), "Communication-Efficient Learning
  of Deep Networks from Decentralized Data", arXiv:1602.05629, Section 3.
"""

import math

import numpy as np

from clients.errors import DataError

PARTITIONS = ("iid", "dirichlet", "shards", "natural")  # data.partition: the *_partition functions here
MAX_DIRICHLET_ATTEMPTS = 100  # redraws before giving up on min_samples


def iid_partition(num_samples: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle 0..num_samples-1 and cut it into num_clients near-equal parts."""
    _check_client_count(num_clients, num_samples)
    shuffled = rng.permutation(num_samples)
    return [_sorted_int64(part) for part in np.array_split(shuffled, num_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """Label-skewed split: each class is shared among clients by proportions ~ Dir(α·1).

    labels: (N,) non-negative ints. Redraws the whole split until every client
    has at least min_samples indices, at most MAX_DIRICHLET_ATTEMPTS times.
    """
    labels = _check_labels(labels)
    _check_client_count(num_clients, len(labels))
    _check_dirichlet_args(alpha, min_samples, num_clients, len(labels))
    for _ in range(MAX_DIRICHLET_ATTEMPTS):
        owner = _dirichlet_owner(labels, num_clients, alpha, rng)
        if np.bincount(owner, minlength=num_clients).min() >= min_samples:
            return _group_by_owner(owner, num_clients)
    raise DataError(
        f"dirichlet_partition could not give each of num_clients={num_clients} clients "
        f"min_samples={min_samples} samples in {MAX_DIRICHLET_ATTEMPTS} draws with "
        f"alpha={alpha}; raise alpha, lower min_samples or use fewer clients"
    )


def _dirichlet_owner(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """(N,) int64 client of each sample: per class, shuffled members cut by Dir(α·1) shares."""
    owner = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        owner[members] = np.searchsorted(cuts, np.arange(len(members)), side="right")
    return owner


def shards_partition(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Sort by label, cut into num_clients*shards_per_client shards, deal them out at random.

    labels: (N,) non-negative ints, or (N,) float regression targets (each client then
    holds a few bands of target values). With few shards per client each client
    sees only a few labels (McMahan et al. use 2 shards of 300 MNIST images).
    """
    targets = isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind == "f"
    labels = labels if targets else _check_labels(labels)
    _check_client_count(num_clients, len(labels))
    if shards_per_client < 1:
        raise DataError(f"shards_per_client={shards_per_client} must be >= 1")
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise DataError(
            f"num_clients * shards_per_client = {num_shards} shards is more than the "
            f"{len(labels)} samples; it must be <= the number of samples"
        )
    shards = np.array_split(np.argsort(labels, kind="stable"), num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [_sorted_int64(np.concatenate([shards[s] for s in hand])) for hand in dealt]


def natural_partition(owner: np.ndarray, num_clients: int, allow_empty: bool = False) -> list[np.ndarray]:
    """Client c gets the indices i with owner[i] == c.

    owner: (N,) ints in 0..num_clients-1, each used unless ``allow_empty`` (a natural
    test split, where some clients may hold no test rows).
    """
    owner = np.asarray(owner)
    if owner.ndim != 1 or not np.issubdtype(owner.dtype, np.integer):
        raise DataError(f"owner must be a 1-D integer array, got {owner.dtype} of shape {owner.shape}")
    if num_clients < 1:
        raise DataError(f"num_clients={num_clients} must be >= 1")
    if len(owner) and (owner.min() < 0 or owner.max() >= num_clients):
        raise DataError(
            f"owner ids span {owner.min()}..{owner.max()}; they must lie in 0..{num_clients - 1} "
            f"for num_clients={num_clients}"
        )
    empty = np.flatnonzero(np.bincount(owner, minlength=num_clients) == 0)
    if len(empty) and not allow_empty:
        raise DataError(
            f"clients {empty[:10].tolist()} own no samples ({len(empty)} of "
            f"num_clients={num_clients}); every id 0..{num_clients - 1} must own at least one"
        )
    return _group_by_owner(owner.astype(np.int64), num_clients)


def label_skew(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean over clients of TV(client's label distribution, global label distribution).

    labels: (N,) ints in 0..num_classes-1; parts: index arrays into labels.
    0 means every client mirrors the global mix; a client holding one label
    of C balanced classes scores 1 - 1/C. Clients with no samples have no
    label distribution and are left out of the mean.
    """
    labels = _check_labels(labels)
    if len(labels) == 0 or labels.max() >= num_classes:
        raise DataError(f"labels must be non-empty and in 0..{num_classes - 1} (num_classes={num_classes})")
    global_mix = np.bincount(labels, minlength=num_classes) / len(labels)
    distances = [
        0.5 * np.abs(np.bincount(labels[part], minlength=num_classes) / len(part) - global_mix).sum()
        for part in parts
        if len(part)
    ]
    if not distances:
        raise DataError("label_skew needs at least one non-empty part")
    return float(np.mean(distances))


def _group_by_owner(owner: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """owner: (N,) int64 in 0..num_clients-1 -> per-client ascending indices."""
    order = np.argsort(owner, kind="stable")  # stable: indices stay ascending within a client
    ends = np.cumsum(np.bincount(owner, minlength=num_clients))
    return [_sorted_int64(part) for part in np.split(order, ends[:-1])]


def _sorted_int64(indices: np.ndarray) -> np.ndarray:
    """A sorted, C-contiguous int64 copy of indices."""
    return np.sort(indices).astype(np.int64, copy=False)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Return labels as an int64 (N,) array, or raise DataError saying what is wrong."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"labels must be >= 0, got a label {labels.min()}")
    return labels.astype(np.int64, copy=False)


def _check_client_count(num_clients: int, num_samples: int) -> None:
    """Raise DataError unless 1 <= num_clients <= num_samples."""
    if not 1 <= num_clients <= num_samples:
        raise DataError(
            f"num_clients={num_clients} must be between 1 and the number of samples ({num_samples})"
        )


def _check_dirichlet_args(alpha: float, min_samples: int, num_clients: int, num_samples: int) -> None:
    """Raise DataError for a non-positive alpha or an impossible min_samples."""
    if not alpha > 0 or not np.isfinite(alpha):
        raise DataError(f"alpha={alpha} must be a finite number > 0 (smaller is more skewed)")
    if min_samples < 0 or min_samples * num_clients > num_samples:
        raise DataError(
            f"min_samples={min_samples} must be >= 0 and at most num_samples / num_clients = "
            f"{num_samples} / {num_clients}"
        )


def holdout_split(
    parts: list[np.ndarray], fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's indices split into (training, held-out): floor(fraction x n) held out
    at random, at least one sample kept for training; both parts sorted."""
    if not 0 < fraction < 1:
        raise DataError(f"holdout fraction must be in (0, 1), got {fraction}")
    train, held_out = [], []
    for part in parts:
        # floor, with slack for products like 0.29 * 100 = 28.999999999999996
        count = min(math.floor(fraction * len(part) + 1e-9), max(len(part) - 1, 0))
        chosen = rng.permutation(len(part))[:count]
        mask = np.zeros(len(part), bool)
        mask[chosen] = True
        train.append(_sorted_int64(part[~mask]))
        held_out.append(_sorted_int64(part[mask]))
    return train, held_out
