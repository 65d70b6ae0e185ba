"""Tests for clients.data.datasets: digits split and FedProx's Synthetic(α, β)."""

import numpy as np
import pytest

from clients.data.datasets import Dataset, SyntheticSettings, load_digits, make_synthetic
from clients.data.partition import label_skew, natural_partition
from clients.errors import DataError

DIGITS_COUNT = 1797


def _assert_arrays_equal(a: Dataset, b: Dataset) -> None:
    for field in ("x_train", "y_train", "x_test", "y_test", "train_owner"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_digits_shapes_dtypes_and_range():
    # Execute
    data = load_digits(seed=0, test_fraction=0.2)

    # Assert
    assert data.x_train.shape[1:] == data.x_test.shape[1:] == data.input_shape == (1, 8, 8)
    assert data.x_train.dtype == data.x_test.dtype == np.float32
    assert data.y_train.dtype == data.y_test.dtype == np.int64
    assert data.x_train.flags.c_contiguous and data.x_test.flags.c_contiguous
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    assert data.x_test.min() >= 0.0 and data.x_test.max() <= 1.0
    assert data.num_classes == 10 and data.train_owner is None


def test_digits_split_is_stratified_and_sized():
    # Execute
    data = load_digits(seed=0, test_fraction=0.2)

    # Assert: each class holds out round(0.2 * its count) images.
    all_labels = np.concatenate([data.y_train, data.y_test])
    class_counts = np.bincount(all_labels, minlength=10)
    expected_test = np.rint(0.2 * class_counts).astype(np.int64)
    np.testing.assert_array_equal(np.bincount(data.y_test, minlength=10), expected_test)
    assert len(data.y_train) + len(data.y_test) == DIGITS_COUNT
    assert len(data.y_test) == expected_test.sum()


def test_digits_split_is_reproducible_and_seeded():
    # Execute
    first = load_digits(seed=1, test_fraction=0.25)
    again = load_digits(seed=1, test_fraction=0.25)
    other = load_digits(seed=2, test_fraction=0.25)

    # Assert
    _assert_arrays_equal(first, again)
    assert not np.array_equal(first.x_test, other.x_test)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_digits_rejects_bad_test_fraction(fraction):
    with pytest.raises(DataError, match=f"test_fraction={fraction}"):
        load_digits(seed=0, test_fraction=fraction)


def test_synthetic_shapes_and_labels():
    # Execute
    data = make_synthetic(SyntheticSettings(alpha=0.5, beta=0.5, num_devices=30, seed=0))

    # Assert
    assert data.input_shape == (60,)
    assert data.x_train.shape == (len(data.y_train), 60)
    assert data.x_test.shape == (len(data.y_test), 60)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.train_owner.dtype == np.int64
    assert set(np.unique(data.train_owner)) == set(range(30))
    assert data.y_train.min() >= 0 and data.y_train.max() < 10
    assert data.y_test.min() >= 0 and data.y_test.max() < 10


def test_synthetic_lognormal_counts_are_at_least_50_per_device():
    # Execute
    data = make_synthetic(SyntheticSettings(alpha=1.0, beta=1.0, num_devices=30, seed=0))

    # Assert: every device has int(lognormal) + 50 >= 50 samples in train + test.
    train_counts = np.bincount(data.train_owner, minlength=30)
    assert train_counts.sum() + len(data.y_test) >= 30 * 50
    assert train_counts.min() >= 40  # 50 minus round(0.2 * 50) held out


def test_synthetic_follows_samples_per_device_exactly():
    # Execute
    data = make_synthetic(
        SyntheticSettings(
            alpha=1.0,
            beta=1.0,
            num_devices=7,
            seed=3,
            num_features=5,
            num_classes=3,
            samples_per_device=21,
            test_fraction=0.2,
        )
    )

    # Assert: 21 per device, round(0.2 * 21) = 4 held out from each.
    np.testing.assert_array_equal(np.bincount(data.train_owner, minlength=7), np.full(7, 17))
    assert len(data.y_test) == 7 * 4
    assert data.input_shape == (5,) and data.num_classes == 3
    assert data.y_train.max() < 3


def test_synthetic_holds_out_at_least_one_per_device():
    # Execute: round(0.1 * 2) = 0, clamped to 1.
    data = make_synthetic(
        SyntheticSettings(alpha=1.0, beta=1.0, num_devices=4, seed=0, samples_per_device=2, test_fraction=0.1)
    )

    # Assert
    np.testing.assert_array_equal(np.bincount(data.train_owner, minlength=4), np.ones(4))
    assert len(data.y_test) == 4


def test_synthetic_is_bit_reproducible_and_seeded():
    # Execute
    first = make_synthetic(SyntheticSettings(alpha=1.0, beta=1.0, num_devices=10, seed=5))
    again = make_synthetic(SyntheticSettings(alpha=1.0, beta=1.0, num_devices=10, seed=5))
    other = make_synthetic(SyntheticSettings(alpha=1.0, beta=1.0, num_devices=10, seed=6))

    # Assert
    _assert_arrays_equal(first, again)
    assert first.x_train.shape != other.x_train.shape or not np.array_equal(first.x_train, other.x_train)


def _device_label_skew(alpha: float, beta: float) -> float:
    data = make_synthetic(
        SyntheticSettings(alpha=alpha, beta=beta, num_devices=100, seed=0, samples_per_device=100)
    )
    parts = natural_partition(data.train_owner, 100)
    return label_skew(data.y_train, parts, data.num_classes)


def test_synthetic_heterogeneity_grows_with_alpha_and_beta():
    # Execute
    homogeneous = _device_label_skew(0.0, 0.0)
    heterogeneous = _device_label_skew(1.0, 1.0)

    # Assert
    assert heterogeneous > homogeneous


def test_synthetic_labels_do_not_depend_on_alpha():
    """u_k shifts every logit of device k by the same amount, so argmax ignores it.

    A property of FedProx's generator (see the module docstring): only β
    changes the data. Same seed => same features; labels agree except for
    float-rounding ties.
    """
    # Execute
    without_alpha = make_synthetic(
        SyntheticSettings(alpha=0.0, beta=1.0, num_devices=20, seed=0, samples_per_device=50)
    )
    with_alpha = make_synthetic(
        SyntheticSettings(alpha=1.0, beta=1.0, num_devices=20, seed=0, samples_per_device=50)
    )

    # Assert
    np.testing.assert_array_equal(without_alpha.x_train, with_alpha.x_train)
    assert np.mean(without_alpha.y_train == with_alpha.y_train) >= 0.99


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_devices": 0}, "num_devices=0"),
        ({"alpha": -1.0}, "alpha=-1.0"),
        ({"beta": -0.5}, "beta=-0.5"),
        ({"num_features": 0}, "num_features=0"),
        ({"num_classes": 1}, "num_classes=1"),
        ({"samples_per_device": 1}, "samples_per_device=1"),
        ({"test_fraction": 1.0}, "test_fraction=1.0"),
    ],
)
def test_synthetic_rejects_bad_arguments(kwargs, message):
    # Prepare
    arguments = {"alpha": 1.0, "beta": 1.0, "num_devices": 3, "seed": 0} | kwargs

    # Execute / Assert
    with pytest.raises(DataError, match=message):
        make_synthetic(SyntheticSettings(**arguments))


def test_dataset_rejects_mismatched_arrays():
    # Prepare
    x = np.zeros((3, 2), dtype=np.float32)
    y = np.zeros(4, dtype=np.int64)

    # Execute / Assert
    with pytest.raises(DataError, match="x_train has shape"):
        Dataset("bad", x, y, x, y[:3], 2, (2,), None)


def test_digits_are_scikit_learns_bits_without_importing_it():
    """The run reads scikit-learn's bundled digits file itself (2 s less start-up)."""
    import sklearn.datasets

    from clients.data.datasets import _digits_arrays

    pixels, labels = _digits_arrays()
    reference = sklearn.datasets.load_digits()
    assert pixels.tobytes() == reference.data.tobytes() and pixels.shape == reference.data.shape
    assert np.array_equal(labels, reference.target) and labels.dtype == np.int64
