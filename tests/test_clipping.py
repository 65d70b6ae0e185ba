"""L2 clipping by hand and the adaptive clipping norm's convergence to a quantile."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.clipping import AdaptiveClipNorm, clip_update, clip_updates


def test_clip_update_scales_down_to_the_norm():
    update = np.array([3.0, 4.0])
    clipped, norm = clip_update(update, max_norm=1.0)
    # ||(3, 4)|| = 5, factor 1/5
    np.testing.assert_allclose(clipped, [0.6, 0.8], rtol=1e-15)
    assert norm == 5.0
    np.testing.assert_array_equal(update, [3.0, 4.0])  # input untouched
    assert not np.shares_memory(clipped, update)


def test_clip_update_leaves_short_and_zero_vectors():
    clipped, norm = clip_update(np.array([3.0, 4.0]), max_norm=10.0)
    np.testing.assert_array_equal(clipped, [3.0, 4.0])
    assert norm == 5.0
    zero, norm = clip_update(np.zeros(3), max_norm=1.0)
    np.testing.assert_array_equal(zero, np.zeros(3))
    assert norm == 0.0


def test_clip_updates_by_hand():
    updates = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    clipped, norms, fraction = clip_updates(updates, max_norm=1.0)
    np.testing.assert_allclose(clipped, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]], rtol=1e-15)
    np.testing.assert_array_equal(norms, [5.0, 0.0, 1.0])
    assert fraction == pytest.approx(1 / 3)  # a norm equal to the bound is not clipped
    np.testing.assert_array_equal(updates[0], [3.0, 4.0])


def test_clipping_preconditions():
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        clip_update(np.ones(2), 0.0)
    with pytest.raises(ValueError, match=r"\(k, n\)"):
        clip_updates(np.ones(2), 1.0)


def test_adaptive_update_by_hand():
    clip = AdaptiveClipNorm()  # C = 0.1, gamma = 0.5, eta = 0.2 (the paper's defaults)
    new = clip.update(np.array([0.05, 0.2, 0.3, 0.4]))
    # b = 1/4 below C -> C = 0.1 * exp(-0.2 * (0.25 - 0.5)) = 0.1 * exp(0.05)
    assert new == pytest.approx(0.1 * math.exp(0.05), rel=1e-15)
    assert clip.norm == new


@pytest.mark.parametrize("target", [0.5, 0.9])
def test_adaptive_norm_reaches_the_target_quantile(target):
    norms = np.random.default_rng(0).lognormal(mean=0.0, sigma=1.0, size=1000)
    clip = AdaptiveClipNorm(target_quantile=target)
    for _ in range(200):
        clip.update(norms)
    assert abs(np.mean(norms <= clip.norm) - target) < 0.05


def test_adaptive_noise_is_seeded_and_needs_an_rng():
    norms = np.array([0.05, 0.2, 0.3, 0.4])
    noisy = [AdaptiveClipNorm(count_noise_std=1.0).update(norms, np.random.default_rng(7)) for _ in range(2)]
    assert noisy[0] == noisy[1] != AdaptiveClipNorm().update(norms)
    with pytest.raises(ValueError, match="rng"):
        AdaptiveClipNorm(count_noise_std=1.0).update(norms)


def test_adaptive_state_round_trip():
    clip = AdaptiveClipNorm()
    clip.update(np.array([1.0, 2.0]))
    restored = AdaptiveClipNorm()
    restored.load_state(clip.state())
    assert restored.norm == clip.norm
    assert restored.update(np.array([0.01])) == clip.update(np.array([0.01]))
