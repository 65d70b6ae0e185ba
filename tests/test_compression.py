"""Top-k, 8-bit stochastic quantisation and error feedback."""

from __future__ import annotations

import numpy as np
import pytest

from server.compression import compress, dequantize_8bit, quantize_8bit, top_k


def test_top_k_by_hand_ties_to_lowest_index():
    update = np.array([0.5, -3.0, 2.0, -3.0, 1.0])
    sparse, k, size = top_k(update, fraction=0.4)  # k = ceil(2.0) = 2: the two -3s
    np.testing.assert_array_equal(sparse, [0.0, -3.0, 0.0, -3.0, 0.0])
    assert (k, size) == (2, 16)
    sparse, k, _ = top_k(update, fraction=0.2)  # k = 1: the tie goes to index 1
    np.testing.assert_array_equal(sparse, [0.0, -3.0, 0.0, 0.0, 0.0])
    assert sparse.dtype == np.float32
    np.testing.assert_array_equal(update, [0.5, -3.0, 2.0, -3.0, 1.0])  # input untouched


def test_top_k_count():
    assert top_k(np.ones(30), 0.1)[1] == 3  # 0.1 * 30 is 3.0000000000000004 in floats
    assert top_k(np.ones(30), 1e-6)[1] == 1
    assert top_k(np.ones(30), 1.0)[1] == 30
    with pytest.raises(ValueError, match="fraction"):
        top_k(np.ones(3), 0.0)


def test_top_k_keeps_exactly_the_largest():
    update = np.random.default_rng(0).normal(size=1000)
    sparse, k, _ = top_k(update, fraction=0.05)
    kept = sparse != 0
    assert k == 50 and kept.sum() == 50
    assert np.abs(update[kept]).min() > np.abs(update[~kept]).max()
    np.testing.assert_array_equal(sparse[kept], update[kept].astype(np.float32))


def test_quantize_by_hand_ends_are_exact():
    codes, low, step = quantize_8bit(np.array([0.0, 2.55, 1.0]), np.random.default_rng(0))
    assert codes.dtype == np.uint8 and low == 0.0 and step == pytest.approx(0.01)
    assert codes[0] == 0 and codes[1] == 255 and codes[2] in (99, 100, 101)


def test_quantize_is_unbiased_and_within_one_step():
    x = np.array([-1.0, 0.123, 0.5, 0.777, 2.0])
    repeats = 20_000
    codes, low, step = quantize_8bit(np.tile(x, repeats), np.random.default_rng(1))
    decoded = dequantize_8bit(codes, low, step).reshape(repeats, -1)
    assert decoded.dtype == np.float32
    assert np.all(np.abs(decoded - x) <= step * (1 + 1e-6))
    # per-coordinate s.e. <= step / (2 sqrt(20000)) = 0.0035 step
    np.testing.assert_allclose(decoded.mean(axis=0), x, atol=0.02 * step)


def test_quantize_constant_vector():
    codes, low, step = quantize_8bit(np.full(4, 1.5), np.random.default_rng(0))
    np.testing.assert_array_equal(dequantize_8bit(codes, low, step), np.full(4, 1.5, dtype=np.float32))


def test_compress_sizes_and_methods():
    update, rng = np.arange(10.0), np.random.default_rng(0)
    assert compress(update, "none", 1.0, rng)[2] == 40
    assert compress(update, "topk", 0.2, rng)[2] == 16
    assert compress(update, "qsgd8", 1.0, rng)[2] == 18
    with pytest.raises(ValueError, match="'none', 'topk' or 'qsgd8'"):
        compress(update, "zip", 1.0, rng)


def test_compress_adds_the_residual_first():
    sent, residual, _ = compress(np.array([1.0, 0.0]), "topk", 0.5, None, residual=np.array([0.0, 3.0]))
    # meant = (1, 3); top-1 sends (0, 3) and keeps (1, 0)
    np.testing.assert_array_equal(sent, [0.0, 3.0])
    np.testing.assert_array_equal(residual, [1.0, 0.0])


@pytest.mark.parametrize("method, fraction", [("topk", 0.1), ("qsgd8", 1.0)])
def test_error_feedback_sum_of_sent_tracks_sum_of_inputs(method, fraction):
    rng = np.random.default_rng(2)
    inputs = rng.normal(0.1, 1.0, size=(200, 50))
    residual = np.zeros(50, dtype=np.float32)
    sent_total, without_feedback = np.zeros(50), np.zeros(50)
    residual_norms = []
    for update in inputs:
        sent, residual, _ = compress(update, method, fraction, rng, residual)
        sent_total += sent
        residual_norms.append(np.linalg.norm(residual))
        without_feedback += compress(update, method, fraction, rng)[0]
    gap = np.linalg.norm(sent_total - inputs.sum(axis=0))
    assert gap < np.linalg.norm(without_feedback - inputs.sum(axis=0)) / 4
    assert gap == pytest.approx(residual_norms[-1], rel=1e-3)  # sum(sent) = sum(inputs) - e_T
    assert gap < 0.1 * np.linalg.norm(inputs.sum(axis=0))
    assert max(residual_norms[100:]) < 2 * max(residual_norms[:100]) + 1e-6  # bounded, not growing
