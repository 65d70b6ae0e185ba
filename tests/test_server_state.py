"""The server step's guards: non-finite aggregates, too few updates for Krum, DP combinations."""

from __future__ import annotations

import numpy as np
import pytest

from clients.errors import ConfigError
from clients.protocol import GroupResult
from server.state import ServerState
from server.system import LocalWork, SystemModel, plan_round
from simulator.config.build import build_dataset, build_model_spec, build_server_state
from simulator.config.loading import apply_overrides, from_dict
from tests.conftest import small_overrides


def state_for(**overrides) -> ServerState:
    cfg = from_dict(apply_overrides({}, small_overrides(**overrides)))
    spec = build_model_spec(cfg.model, build_dataset(cfg.data, cfg.seed))
    return build_server_state(cfg, np.ones(spec.layout().size, np.float32), spec)


def group(updates: np.ndarray, stacked: bool) -> GroupResult:
    k = len(updates)
    common = dict(
        group_index=0, client_ids=np.arange(k), num_samples=np.full(k, 10), train_losses=np.ones(k),
        accepted=np.ones(k, bool), norms=np.linalg.norm(updates, axis=1), bytes_up=np.zeros(k, np.int64),
        weight_total=10.0 * k,
    )  # fmt: skip
    if stacked:
        return GroupResult(**common, stacked=updates.astype(np.float32), stacked_weights=np.full(k, 10.0))
    with np.errstate(over="ignore"):  # one test sums to inf on purpose
        total = (10 * updates.sum(axis=0)).astype(np.float32)
    return GroupResult(**common, weighted_sum=total)


def test_an_overflowing_aggregate_is_not_applied_and_does_not_poison_the_optimiser():
    state = state_for(**{"server.optimizer": "momentum"})
    n = state.params.size
    state.step(1, [group(np.full((1, n), 0.5), stacked=False)])
    params, velocity = state.params.copy(), state.optimizer.state()["velocity"].copy()
    metrics = state.step(2, [group(np.full((1, n), 3e38), stacked=False)])  # inf once summed
    assert metrics["rejected_aggregate"] is True
    assert state.params.tobytes() == params.tobytes()
    assert state.optimizer.state()["velocity"].tobytes() == velocity.tobytes()
    assert state.step(3, [group(np.full((1, n), 0.5), stacked=False)])["rejected_aggregate"] is False


def test_krum_with_too_few_updates_skips_the_round_instead_of_stopping():
    state = state_for(**{"server.aggregator": "krum", "server.krum_f": 1, "server.clients_per_round": 6})
    before = state.params.copy()
    metrics = state.step(1, [group(np.ones((3, state.params.size)), stacked=True)])  # k=3 <= 2f+2
    assert "Krum needs" in metrics["aggregation_skipped"]
    assert state.params.tobytes() == before.tobytes()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"server.compression.method": "topk"}, "compressed updates"),
        ({"server.clipping.kind": "adaptive"}, "un-noised quantile"),
        ({"client.algorithm": "scaffold"}, "control variates"),
    ],
)
def test_dp_refuses_what_its_analysis_does_not_cover(extra, fragment):
    dp = {
        "server.privacy.noise_multiplier": 1.0,
        "server.clipping.kind": "fixed",
        "server.weighting": "uniform",
    }
    with pytest.raises(ConfigError, match=fragment):
        from_dict(apply_overrides({}, small_overrides(**{**dp, **extra})))


def test_over_selection_count_is_exact():
    plan = plan_round(0, 1, 1000, 100, LocalWork(np.full(1000, 10.0)), SystemModel(over_selection=0.1))
    assert len(plan.selected) == 110
