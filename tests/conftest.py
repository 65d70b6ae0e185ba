"""Shared fixtures: one Ray for the whole session, small configs, paths."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def ray_cluster():
    """Ray started once per test session (2 CPUs, no dashboard); Simulation reuses it."""
    ray = pytest.importorskip("ray")
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def small_overrides(**extra) -> dict:
    """A seconds-long digits run: 12 clients, 6 per round, a small MLP."""
    overrides = {
        "name": "small",
        "rounds": 4,
        "data.num_clients": 12,
        "server.clients_per_round": 6,
        "model.hidden": [32],
        "runtime.reduction_groups": 4,
        "runtime.cpus_per_worker": 0.5,
        "runtime.workers": 2,
        "runtime.checkpoint_every": 2,
    }
    overrides.update(extra)
    return overrides


def small_config(**extra):
    """The small run as a validated Config object."""
    from simulator.config import apply_overrides, from_dict

    return from_dict(apply_overrides({}, small_overrides(**extra)))
