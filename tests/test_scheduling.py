"""Reduction groups dealt to workers by work and measured speed (simulator/driver/pool.py)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import ray
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.config.build import build_run
from simulator.config.loading import apply_overrides, from_dict
from simulator.driver.pool import GroupScheduler, WorkerPool, balanced_shares, held_back


def test_ten_equal_clients_in_eight_groups_split_five_and_five():
    """The issue's case: consecutive groups by count gave one worker 6 clients, the other 4."""
    group_clients = [2, 2, 1, 1, 1, 1, 1, 1]
    shares = balanced_shares(group_clients, [1.0, 1.0])
    assert sorted(sum(group_clients[g] for g in share) for share in shares) == [5, 5]


def test_a_worker_measured_twice_as_fast_gets_about_twice_the_work():
    work = [1.0] * 30
    shares = balanced_shares(work, [2.0, 1.0])
    assert [len(s) for s in shares] == [20, 10]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=0, max_size=40),
    st.lists(st.floats(0.1, 10.0), min_size=1, max_size=6),
)
def test_every_group_is_dealt_once_and_the_longest_finish_is_within_lpts_bound(work, speeds):
    shares = balanced_shares(work, speeds)
    assert sorted(g for share in shares for g in share) == list(range(len(work)))
    assert all(share == sorted(share) for share in shares)
    assert balanced_shares(work, speeds) == shares  # a pure function of its inputs
    finish = [sum(work[g] for g in share) / speed for share, speed in zip(shares, speeds, strict=True)]
    # List scheduling on related machines: no worker ends later than the perfect split
    # plus the largest group at the slowest speed (each group went where it ended soonest).
    perfect = sum(work) / sum(speeds)
    assert max(finish) <= perfect + max(work, default=0.0) / min(speeds) + 1e-9


def test_speeds_follow_measurements_smoothed_and_new_workers_start_at_the_median():
    scheduler = GroupScheduler()
    a, b, c = object(), object(), object()
    scheduler._measured(a, "train_groups", work=100.0, seconds=1.0)
    scheduler._measured(b, "train_groups", work=100.0, seconds=2.0)
    scheduler._measured(a, "train_groups", work=100.0, seconds=0.5)  # 200/s, smoothed with 100/s
    assert scheduler._speeds([a, b], "train_groups") == pytest.approx([130.0, 50.0])
    assert scheduler._speeds([a, b, c], "train_groups")[2] == pytest.approx(90.0)
    assert scheduler._speeds([a], "evaluate_groups") == [1.0]  # kinds of work are measured apart


def test_client_work_is_samples_processed_plus_a_batch(tmp_path):
    """What the scheduler weighs: E passes over each client's shard, plus one batch."""
    cfg = from_dict(apply_overrides({}, {"data.num_clients": 12, "client.epochs": 3, "client.batch_size": 7}))
    setup = build_run(cfg)
    np.testing.assert_array_equal(setup.client_work, setup.shards.sizes() * 3.0 + 7)


def test_each_share_holds_back_its_smallest_group_for_whoever_is_free_first():
    work = [5.0, 1.0, 4.0, 2.0, 3.0, 3.0]
    shares = balanced_shares(work, [1.0, 1.0])
    heads, tail = held_back(shares, work)
    assert sorted([*(g for share in heads for g in share), *tail]) == list(range(6))
    for share, head in zip(shares, heads, strict=True):
        smallest = min(share, key=lambda g: work[g])
        assert smallest in tail and head == [g for g in share if g != smallest]
    assert [work[g] for g in tail] == sorted((work[g] for g in tail), reverse=True)
    assert held_back([[3]], work) == ([[3]], [])  # a single group is never held back


@ray.remote(num_cpus=0)
class _Timed:
    def __init__(self, seconds: float):
        self.seconds = seconds

    def work(self, task):
        time.sleep(self.seconds * len(task))
        return [(index, os.getpid(), self.seconds) for index, _ in task]


def test_the_held_back_tail_goes_to_the_worker_that_is_free(ray_cluster):
    """A worker slower than measured finishes its share late; the tail goes to the other."""
    slow, fast = _Timed.remote(0.3), _Timed.remote(0.02)
    pool = WorkerPool([slow, fast])
    groups = [np.array([g]) for g in range(6)]
    results = pool.scheduler.run(pool, lambda actor, task: actor.work.remote(task), groups, [1.0] * 6, "t")
    assert [r[0] for r in results] == list(range(6))  # in group order, whoever ran them
    ran_fast = sum(1 for r in results if r[2] == 0.02)
    assert ran_fast == 4  # its two of three, then both held-back groups
    for actor in (slow, fast):
        ray.kill(actor)
