"""Client selection state machines (server/selection.py): Oort's preference for fast and
high-utility clients, its pacer, blacklist, checkpoints and determinism; power-of-choice's
candidates and pick. The runs through configs are in the tests of the round loop."""

from __future__ import annotations

import numpy as np
import pytest

from server.selection import OortSelector, OortSettings, PowerOfChoice, statistical_utility

EVERYONE = np.arange(40, dtype=np.int64)


def _oort(utility, duration, seed=1, **settings) -> OortSelector:
    return OortSelector(len(utility), OortSettings(**settings), seed, utility, duration)


def _run(selector: OortSelector, rounds: range, utility, duration, online=EVERYONE, count=8):
    """Every selected client reports its fixed utility and duration; the selections."""
    picks = []
    for round_ in rounds:
        ids = selector.select(round_, online, count)
        selector.feedback(round_, ids, utility[ids], duration[ids])
        picks.append(ids)
    return picks


def test_oort_prefers_fast_clients_once_exploration_decays():
    duration = np.where(EVERYONE % 2 == 0, 1.0, 10.0)  # odd ids 10x slower
    utility = np.full(40, 50.0)
    picks = _run(_oort(utility, duration), range(1, 61), utility, duration)
    late = np.concatenate(picks[40:])
    # Uniform selection's expected mean trip is 5.5 s; the penalty (T/10)^2 = 0.01 leaves a
    # slow client 1% of a fast one's score, so nearly every late pick is fast.
    assert duration[late].mean() < 0.5 * duration.mean()
    assert (duration[late] == 1.0).mean() > 0.9


def test_oort_with_equal_durations_prefers_high_utility_clients():
    duration = np.ones(40)
    utility = 1.0 + EVERYONE.astype(np.float64)  # client 39 teaches the model 40x client 0's
    picks = _run(_oort(utility, duration), range(1, 61), utility, duration)
    counts = np.bincount(np.concatenate(picks[20:]), minlength=40)
    top, bottom = counts[30:].sum(), counts[:10].sum()
    assert top > 3 * bottom, (top, bottom)


def test_oort_pacer_relaxes_the_preferred_duration_while_utility_is_flat():
    duration = 1.0 + EVERYONE.astype(np.float64)
    utility = np.full(40, 50.0)
    selector = _oort(utility, duration, exploration=0.0, exploration_min=0.0, pacer_step=2)
    thresholds, preferred = {}, {}
    for round_ in range(1, 41):
        ids = selector.select(round_, EVERYONE, 8)
        selector.feedback(round_, ids, utility[ids], duration[ids])
        thresholds[round_] = selector.metrics()["round_threshold"]
        preferred[round_] = selector.metrics().get("preferred_duration")
    # Round 1 exploits no one (nothing explored yet), so the window ending at round 4
    # grows from 0: a sharp change, which tightens T's percentile; from round 6 on each
    # window's exploited utility equals the one before and every 2nd round adds 5.
    assert thresholds[4] == 25.0
    expected = {r: min(100.0, 25.0 + 5.0 * ((r - 4) // 2)) for r in range(6, 41)}
    assert {r: thresholds[r] for r in range(6, 41)} == expected
    assert preferred[6] == duration[int(40 * 30.0 / 100)]  # the 30th percentile's duration
    assert preferred[40] is None  # at the 100th percentile nobody is penalised: T is inf


def test_oort_blacklists_clients_after_blacklist_rounds_participations_up_to_the_cap():
    duration, utility = np.ones(20), 1.0 + np.arange(20.0)
    online = np.arange(20, dtype=np.int64)
    selector = _oort(utility, duration, blacklist_rounds=2, blacklist_max_share=1.0)
    _run(selector, range(1, 13), utility, duration, online=online, count=4)
    # The authors blacklist clients with more than blacklist_rounds participations, so
    # each takes part at most 3 times; 12 rounds of 4 leave 8+ eligible clients throughout.
    assert selector.participations.max() == 3
    capped = _oort(utility, duration, blacklist_rounds=2, blacklist_max_share=0.3)
    picks = _run(capped, range(1, 31), utility, duration, online=online, count=4)
    assert all(len(ids) == 4 for ids in picks)
    assert capped.metrics()["blacklisted"] == 6  # int(0.3 x 20): the rest are let back in
    assert capped.participations.max() > 3


def test_oort_resumes_bit_for_bit_from_its_arrays():
    duration = np.where(EVERYONE % 3 == 0, 9.0, 1.0)
    utility = 1.0 + (EVERYONE * 7 % 11).astype(np.float64)
    settings = {"pacer_step": 3, "blacklist_rounds": 4}
    online = EVERYONE[EVERYONE % 5 != 0]
    first = _oort(utility, duration, **settings)
    _run(first, range(1, 11), utility, duration, online=online)
    first.observe_durations(np.array([5, 10]), np.array([30.0, 0.5]))
    saved = first.arrays()
    resumed = _oort(np.zeros(40), np.zeros(40), **settings)
    resumed.load_arrays(saved)
    for round_ in range(11, 30):
        ids = first.select(round_, online, 8)
        assert np.array_equal(ids, resumed.select(round_, online, 8))
        half = ids[::2]  # half report, the others only have their duration observed
        for selector in (first, resumed):
            selector.feedback(round_, half, utility[half] * round_, duration[half])
            selector.observe_durations(ids[1::2], duration[ids[1::2]] + 1)
    final, again = first.arrays(), resumed.arrays()
    assert final.keys() == again.keys()
    assert all(final[k].dtype == again[k].dtype and final[k].tobytes() == again[k].tobytes() for k in final)
    assert first.metrics() == resumed.metrics()


def test_oort_refuses_state_of_another_shape():
    selector = _oort(np.ones(40), np.ones(40))
    arrays = selector.arrays()
    with pytest.raises(ValueError, match=r"'utility' has shape \(39,\), expected \(40,\)"):
        selector.load_arrays({**arrays, "utility": np.ones(39)})
    del arrays["pacer_windows"]
    with pytest.raises(ValueError, match="lacks 'pacer_windows'"):
        selector.load_arrays(arrays)


def test_oort_is_determined_by_its_seed():
    duration, utility = 1.0 + EVERYONE % 4, 1.0 + EVERYONE * 0.5

    def picks(seed):
        return np.concatenate(_run(_oort(utility, duration, seed=seed), range(1, 16), utility, duration))

    assert np.array_equal(picks(3), picks(3))
    assert not np.array_equal(picks(3), picks(4))


def test_oort_selects_from_online_clients_only_and_all_of_them_when_few():
    duration, utility = np.ones(40), np.ones(40)
    selector = _oort(utility, duration)
    online = np.array([3, 8, 21, 30, 33], np.int64)
    for round_ in range(1, 6):
        ids = selector.select(round_, online, 3)
        assert len(ids) == 3 and np.isin(ids, online).all() and np.array_equal(ids, np.unique(ids))
        selector.feedback(round_, ids, utility[ids], duration[ids])
    assert np.array_equal(selector.select(6, online, 5), online)
    assert np.array_equal(selector.select(7, online, 9), online)
    empty = selector.select(8, np.zeros(0, np.int64), 4)
    assert empty.dtype == np.int64 and empty.size == 0


def test_oort_settings_refuse_values_out_of_range():
    with pytest.raises(ValueError, match=r"exploration must be in \[0, 1\], got 1.5"):
        OortSettings(exploration=1.5)
    with pytest.raises(ValueError, match="blacklist_rounds must be >= 0, or -1 for off"):
        OortSettings(blacklist_rounds=-2)


def test_statistical_utility_is_samples_times_root_mean_square_loss():
    assert np.array_equal(statistical_utility(np.array([4, 9]), np.array([4.0, 0.25])), [8.0, 4.5])


def test_power_of_choice_candidates_prefer_large_clients():
    sizes = np.where(EVERYONE < 20, 100.0, 1.0)  # ids 0-19 hold 100x the data of 20-39
    drawn = np.concatenate([PowerOfChoice.candidates(5, r, EVERYONE, 6, sizes) for r in range(1, 101)])
    counts = np.bincount(drawn, minlength=40)
    assert counts[:20].sum() > 20 * counts[20:].sum()
    first = PowerOfChoice.candidates(5, 1, EVERYONE, 6, sizes)
    assert len(first) == 6 and np.array_equal(first, np.unique(first))
    assert np.array_equal(first, PowerOfChoice.candidates(5, 1, EVERYONE, 6, sizes))
    assert not np.array_equal(first, PowerOfChoice.candidates(5, 2, EVERYONE, 6, sizes))
    few = np.array([2, 7], np.int64)
    assert np.array_equal(PowerOfChoice.candidates(5, 1, few, 6, sizes), few)


def test_power_of_choice_picks_the_highest_losses():
    candidates = np.array([2, 5, 9, 11, 14], np.int64)
    losses = np.array([0.5, np.nan, 2.0, 0.5, 1.0])
    assert np.array_equal(PowerOfChoice.pick(candidates, losses, 2), [9, 14])
    assert np.array_equal(PowerOfChoice.pick(candidates, losses, 3), [2, 9, 14])  # tie: lower id
    assert np.array_equal(PowerOfChoice.pick(candidates, losses, 5), candidates)  # nan last
    assert PowerOfChoice.pick(candidates[:0], losses[:0], 3).size == 0
