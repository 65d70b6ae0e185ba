"""Tests for clients.data.partition: coverage, determinism, skew, and error messages."""

import numpy as np
import pytest

from clients.data.datasets import SyntheticSettings, load_digits, make_synthetic
from clients.data.partition import (
    dirichlet_partition,
    iid_partition,
    label_skew,
    natural_partition,
    shards_partition,
)
from clients.errors import DataError

NUM_CLASSES = 10
BALANCED_LABELS = np.repeat(np.arange(NUM_CLASSES), 100)  # 10 classes x 100 samples


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return load_digits(seed=0, test_fraction=0.2).y_train


def _partitioners(labels: np.ndarray):
    """name -> function(rng) -> parts, for every seeded partitioner."""
    return {
        "iid": lambda rng: iid_partition(len(labels), 7, rng),
        "dirichlet": lambda rng: dirichlet_partition(labels, 7, 0.5, rng),
        "shards": lambda rng: shards_partition(labels, 7, 3, rng),
    }


def _assert_exact_cover(parts: list[np.ndarray], num_samples: int) -> None:
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "each part is sorted ascending without repeats"
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(num_samples))


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
def test_every_sample_assigned_exactly_once(name, digits_labels):
    # Prepare
    partition = _partitioners(digits_labels)[name]

    # Execute
    parts = partition(np.random.default_rng(0))

    # Assert
    assert len(parts) == 7
    _assert_exact_cover(parts, len(digits_labels))


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
def test_same_seed_same_parts_other_seed_other_parts(name, digits_labels):
    # Prepare
    partition = _partitioners(digits_labels)[name]

    # Execute
    first = partition(np.random.default_rng(3))
    again = partition(np.random.default_rng(3))
    other = partition(np.random.default_rng(4))

    # Assert
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_iid_parts_are_near_equal():
    # Execute
    parts = iid_partition(10, 3, np.random.default_rng(0))

    # Assert
    assert sorted(len(p) for p in parts) == [3, 3, 4]


def test_dirichlet_skew_grows_as_alpha_shrinks(digits_labels):
    # Execute
    skew = {
        alpha: label_skew(
            digits_labels,
            dirichlet_partition(digits_labels, 50, alpha, np.random.default_rng(0)),
            NUM_CLASSES,
        )
        for alpha in (100.0, 1.0, 0.1)
    }

    # Assert
    assert skew[100.0] < skew[1.0] < skew[0.1]


def test_dirichlet_respects_min_samples(digits_labels):
    # Execute
    parts = dirichlet_partition(digits_labels, 20, 0.1, np.random.default_rng(0), min_samples=10)

    # Assert
    assert min(len(p) for p in parts) >= 10
    _assert_exact_cover(parts, len(digits_labels))


def test_dirichlet_gives_up_with_a_message_naming_what_to_change():
    # Prepare: 1 sample per class and a tiny alpha cannot give 5 clients 2 samples each.
    labels = np.repeat(np.arange(NUM_CLASSES), 1)

    # Execute / Assert
    with pytest.raises(DataError, match=r"min_samples=2 .* alpha=0\.01; raise alpha"):
        dirichlet_partition(labels, 5, 0.01, np.random.default_rng(0), min_samples=2)


def test_shards_give_each_client_at_most_k_labels():
    # Prepare: 50 clients x 2 shards of 10; every class count (100) is a multiple of 10.
    shards_per_client = 2

    # Execute
    parts = shards_partition(BALANCED_LABELS, 50, shards_per_client, np.random.default_rng(0))

    # Assert
    distinct = np.array([len(np.unique(BALANCED_LABELS[p])) for p in parts])
    assert np.all((distinct >= 1) & (distinct <= shards_per_client))
    assert np.mean(distinct == shards_per_client) >= 0.8
    assert all(len(p) == 20 for p in parts)


def test_natural_partition_matches_train_owner():
    # Prepare
    data = make_synthetic(
        SyntheticSettings(alpha=1.0, beta=1.0, num_devices=5, seed=0, samples_per_device=20)
    )

    # Execute
    parts = natural_partition(data.train_owner, 5)

    # Assert
    _assert_exact_cover(parts, len(data.y_train))
    for client, part in enumerate(parts):
        np.testing.assert_array_equal(part, np.flatnonzero(data.train_owner == client))


def test_natural_partition_on_hand_made_owners():
    # Execute
    parts = natural_partition(np.array([1, 0, 1, 2, 0]), 3)

    # Assert
    assert [p.tolist() for p in parts] == [[1, 4], [0, 2], [3]]


@pytest.mark.parametrize(
    ("owner", "num_clients", "message"),
    [
        (np.array([0, 1, 3]), 3, "owner ids span 0..3"),
        (np.array([-1, 0, 1]), 3, "owner ids span -1..1"),
        (np.array([0, 0, 2]), 3, r"clients \[1\] own no samples"),
        (np.array([0.0, 1.0]), 2, "owner must be a 1-D integer array"),
    ],
)
def test_natural_partition_rejects_bad_owners(owner, num_clients, message):
    with pytest.raises(DataError, match=message):
        natural_partition(owner, num_clients)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda rng: iid_partition(5, 6, rng), "num_clients=6"),
        (lambda rng: iid_partition(5, 0, rng), "num_clients=0"),
        (lambda rng: dirichlet_partition(BALANCED_LABELS, 5, 0.0, rng), "alpha=0.0"),
        (lambda rng: dirichlet_partition(BALANCED_LABELS, 5, -1.0, rng), "alpha=-1.0"),
        (lambda rng: dirichlet_partition(BALANCED_LABELS, 5, 1.0, rng, 300), "min_samples=300"),
        (lambda rng: dirichlet_partition(BALANCED_LABELS[:3], 5, 1.0, rng), "num_clients=5"),
        (lambda rng: shards_partition(BALANCED_LABELS, 5, 0, rng), "shards_per_client=0"),
        (lambda rng: shards_partition(BALANCED_LABELS[:50], 10, 6, rng), "60 shards"),
        (lambda rng: shards_partition(np.array([[0, 1]]), 1, 1, rng), "labels must be a 1-D"),
        (lambda rng: shards_partition(np.array([0, -2]), 1, 1, rng), "labels must be >= 0"),
    ],
)
def test_bad_arguments_raise_data_error_naming_them(call, message):
    with pytest.raises(DataError, match=message):
        call(np.random.default_rng(0))


def test_label_skew_on_hand_computable_parts():
    # Prepare: global mix is 50/50.
    labels = np.array([0, 0, 1, 1])

    # Execute
    balanced = label_skew(labels, [np.array([0, 2]), np.array([1, 3])], 2)
    one_label = label_skew(labels, [np.array([0, 1]), np.array([2, 3])], 2)

    # Assert: TV(50/50, 50/50) = 0; TV(100/0, 50/50) = 0.5 = 1 - 1/C.
    assert balanced == 0.0
    assert one_label == 0.5


def test_label_skew_rejects_labels_beyond_num_classes():
    with pytest.raises(DataError, match="num_classes=2"):
        label_skew(np.array([0, 2]), [np.array([0, 1])], 2)
