"""Pruning: which tensors are prunable, the scores, exact-count masks, the schedule, sizes."""

from __future__ import annotations

import numpy as np
import pytest

from clients.models.layout import Layout
from server.pruning import (
    build_mask,
    density,
    is_pruning_round,
    layer_densities,
    magnitude_scores,
    polynomial_sparsity,
    prunable,
    random_scores,
    saliency_scores,
    sparse_bytes,
    squared_gradient_scores,
)

SPARSITIES = (0.0, 0.5, 0.9, 0.95, 0.99)


def tiny_layout() -> Layout:
    """fc.weight 0..5, fc.bias 6..7, bn.weight 8..9 (1-d), lstm.weight_ih_l0 10..17, its bias 18..21."""
    return Layout(
        [
            ("fc.weight", (2, 3)),
            ("fc.bias", (2,)),
            ("bn.weight", (2,)),
            ("lstm.weight_ih_l0", (4, 2)),
            ("lstm.bias_ih_l0", (4,)),
        ]
    )


def big_layout() -> Layout:
    """Two conv/linear weights of 1,000 and 2,400 coordinates, with biases between them."""
    return Layout(
        [
            ("conv.weight", (10, 4, 5, 5)),
            ("conv.bias", (10,)),
            ("fc.weight", (24, 100)),
            ("fc.bias", (24,)),
        ]
    )


def test_prunable_marks_weights_not_biases_or_1d():
    layout = tiny_layout()

    mask = prunable(layout)

    expected = np.zeros(22, dtype=bool)
    expected[0:6] = True  # fc.weight
    expected[10:18] = True  # lstm.weight_ih_l0
    np.testing.assert_array_equal(mask, expected)
    assert mask.dtype == bool


def test_scores_by_hand():
    w = np.array([-2.0, 0.5, 0.0, 3.0], dtype=np.float32)
    g = np.array([1.0, -4.0, 7.0, -0.5])

    magnitude = magnitude_scores(w)
    saliency = saliency_scores(w, g)
    squared = squared_gradient_scores(np.array([0.25, 0.0, 4.0, 1.0], dtype=np.float32))

    np.testing.assert_array_equal(magnitude, [2.0, 0.5, 0.0, 3.0])
    np.testing.assert_array_equal(saliency, [2.0, 2.0, 0.0, 1.5])
    np.testing.assert_array_equal(squared, [0.25, 0.0, 4.0, 1.0])
    assert magnitude.dtype == saliency.dtype == squared.dtype == np.float64
    np.testing.assert_array_equal(w, [-2.0, 0.5, 0.0, 3.0])  # input untouched


def test_random_scores_seeded_uniform():
    a = random_scores(1000, np.random.default_rng(3))
    b = random_scores(1000, np.random.default_rng(3))

    np.testing.assert_array_equal(a, b)
    assert a.shape == (1000,) and a.min() >= 0 and a.max() < 1


def test_score_errors():
    with pytest.raises(ValueError, match="mean_gradient"):
        saliency_scores(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match=">= 0"):
        squared_gradient_scores(np.array([1.0, -1.0]))


def test_build_mask_by_hand_global_and_layer():
    layout = tiny_layout()
    scores = np.array([5, 1, 4, 2, 6, 3, 0, 0, 0, 0, 9, 8, 7, 0.5, 10, 11, 12, 13, 0, 0, 0, 0], dtype=float)
    keep = prunable(layout)

    global_mask = build_mask(scores, keep, 0.5, layout)  # 7 of 14: 0.5, 1, 2, 3, 4, 5, 6
    layer_mask = build_mask(scores, keep, 0.5, layout, scope="layer")  # 3 of fc, 4 of lstm

    pruned_global = np.flatnonzero(~global_mask)
    pruned_layer = np.flatnonzero(~layer_mask)
    np.testing.assert_array_equal(pruned_global, [0, 1, 2, 3, 4, 5, 13])
    np.testing.assert_array_equal(pruned_layer, [1, 3, 5, 10, 11, 12, 13])


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("ties", ["random", "all-equal", "few-values"])
def test_build_mask_global_exact_count(sparsity, ties):
    layout = big_layout()
    scores = _scores(layout.size, ties)
    keep = prunable(layout)
    before = scores.copy(), keep.copy()

    mask = build_mask(scores, keep, sparsity, layout)

    assert np.count_nonzero(~mask) == round(sparsity * 3400)
    assert mask[~keep].all()  # biases never pruned
    if sparsity > 0:
        assert scores[~mask].max() <= scores[mask & keep].min()  # lowest scores went
    np.testing.assert_array_equal(scores, before[0])
    np.testing.assert_array_equal(keep, before[1])


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("ties", ["random", "all-equal", "few-values"])
def test_build_mask_layer_exact_count(sparsity, ties):
    layout = big_layout()
    scores = _scores(layout.size, ties)
    keep = prunable(layout)

    mask = build_mask(scores, keep, sparsity, layout, scope="layer")

    for slot in layout:
        pruned = np.count_nonzero(~mask[slot.offset : slot.stop])
        expected = round(sparsity * slot.size) if slot.name.endswith(".weight") else 0
        assert pruned == expected, slot.name
    densities = layer_densities(mask, layout)
    assert list(densities) == ["conv.weight", "fc.weight"]
    assert densities["conv.weight"] == (1000 - round(sparsity * 1000)) / 1000
    assert density(mask, keep) == pytest.approx(1 - np.count_nonzero(~mask) / 3400)


def test_all_equal_scores_prune_the_lowest_indices_first():
    layout = big_layout()
    keep = prunable(layout)
    scores = np.ones(layout.size)

    global_mask = build_mask(scores, keep, 0.5, layout)  # 1700: conv 0..999, fc 1010..1709
    layer_mask = build_mask(scores, keep, 0.5, layout, scope="layer")  # conv 0..499, fc 1010..2209

    pruned_global = np.r_[0:1000, 1010:1710]
    pruned_layer = np.r_[0:500, 1010:2210]
    np.testing.assert_array_equal(np.flatnonzero(~global_mask), pruned_global)
    np.testing.assert_array_equal(np.flatnonzero(~layer_mask), pruned_layer)


def test_density_by_hand():
    mask = np.array([True, False, False, True, True])
    keep = np.array([True, True, True, True, False])

    assert density(mask, keep) == 0.5
    assert layer_densities(np.ones(22, dtype=bool), tiny_layout()) == {
        "fc.weight": 1.0,
        "lstm.weight_ih_l0": 1.0,
    }


def test_build_mask_errors():
    layout = tiny_layout()
    keep = prunable(layout)
    scores = np.zeros(22)
    with pytest.raises(ValueError, match="sparsity < 1"):
        build_mask(scores, keep, 1.0, layout)
    with pytest.raises(ValueError, match="0 <= sparsity"):
        build_mask(scores, keep, -0.1, layout)
    with pytest.raises(ValueError, match="scope"):
        build_mask(scores, keep, 0.5, layout, scope="tensor")
    with pytest.raises(ValueError, match="scores"):
        build_mask(np.zeros(21), keep, 0.5, layout)
    with pytest.raises(ValueError, match="finite"):
        build_mask(np.full(22, np.nan), keep, 0.5, layout)


def test_schedule_endpoints_middle_and_holds():
    # s_i = 0, s_f = 0.8, t0 = 10, n Δt = 20, Δt = 5: at t = 20, 0.8 + (0 - 0.8)(1 - 10/20)^3 = 0.7
    def s(t):
        return polynomial_sparsity(t, initial=0.0, final=0.8, start_round=10, end_round=30, every=5)

    assert s(0) == 0.0 and s(9) == 0.0
    assert s(10) == 0.0  # the first step prunes to s_i
    assert s(15) == pytest.approx(0.8 - 0.8 * 0.75**3)
    assert s(20) == pytest.approx(0.7)
    assert s(21) == s(24) == s(20)  # held between steps
    assert s(30) == s(31) == s(1000) == 0.8
    assert all(s(t) <= s(t + 1) for t in range(40))


def test_schedule_with_initial_and_start_equals_end():
    assert polynomial_sparsity(3, 0.2, 0.6, 5, 9, 2) == 0.2
    assert polynomial_sparsity(7, 0.2, 0.6, 5, 9, 2) == pytest.approx(0.6 - 0.4 * 0.5**3)
    assert polynomial_sparsity(5, 0.0, 0.5, 5, 5, 1) == 0.5


def test_is_pruning_round():
    rounds = [t for t in range(40) if is_pruning_round(t, start_round=10, end_round=30, every=5)]
    uneven = [t for t in range(40) if is_pruning_round(t, start_round=10, end_round=22, every=5)]

    assert rounds == [10, 15, 20, 25, 30]
    assert uneven == [10, 15, 20, 22]  # end_round is a step: the schedule reaches s_f there


def test_schedule_errors():
    with pytest.raises(ValueError, match="initial <= final"):
        polynomial_sparsity(0, 0.5, 0.4, 0, 10, 1)
    with pytest.raises(ValueError, match="final < 1"):
        polynomial_sparsity(0, 0.0, 1.0, 0, 10, 1)
    with pytest.raises(ValueError, match="0 <= initial"):
        polynomial_sparsity(0, -0.1, 0.5, 0, 10, 1)
    with pytest.raises(ValueError, match="start_round <= end_round"):
        is_pruning_round(0, 10, 5, 1)
    with pytest.raises(ValueError, match="every >= 1"):
        polynomial_sparsity(0, 0.0, 0.5, 0, 10, 0)


def test_sparse_bytes_by_hand():
    vector = np.arange(10, dtype=np.float32)
    mask = np.array([1, 0, 0, 1, 1, 0, 0, 0, 0, 1], dtype=bool)

    size = sparse_bytes(vector, mask)

    assert size == 4 * 4 + 2  # 4 kept floats, ceil(10 / 8) = 2 bitmap bytes
    assert sparse_bytes(np.zeros(16), np.ones(16, dtype=bool)) == 64 + 2
    with pytest.raises(ValueError, match="mask"):
        sparse_bytes(vector, mask[:9])


def _scores(n: int, ties: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if ties == "all-equal":
        return np.full(n, 0.25)
    if ties == "few-values":
        return rng.integers(0, 3, size=n).astype(float)
    return rng.normal(size=n)
