"""System heterogeneity: availability, dropout, deadline and over-selection, seeded and exact."""

from __future__ import annotations

import math

import numpy as np

from server.sampling import sample_clients
from server.system import LocalWork, SystemModel, client_speeds, plan_round
from simulator import Simulation
from simulator.config.build import build_dataset, build_partition
from simulator.config.loading import load_config
from simulator.report.page import write_report
from tests.conftest import ROOT, small_overrides

WORK = LocalWork(np.full(200, 100.0))  # every client processes 100 samples a round


def test_dropout_follows_its_binomial_distribution():
    model = SystemModel(dropout=0.3)
    counts = [len(plan_round(0, r, 200, 20, WORK, model).participants) for r in range(1, 501)]
    # Binomial(20, 0.7): mean 14, std of a 500-round mean sqrt(20 * 0.21 / 500) = 0.09.
    assert abs(np.mean(counts) - 14.0) < 0.4
    assert abs(np.var(counts) - 20 * 0.7 * 0.3) < 1.0


def test_availability_limits_who_can_be_selected():
    model = SystemModel(availability=0.05)
    plans = [plan_round(1, r, 200, 20, WORK, model) for r in range(1, 201)]
    # About 10 of 200 are online; never more than are online, never more than k.
    assert 8 < np.mean([len(p.selected) for p in plans]) < 12
    assert all(len(p.participants) <= 20 for p in plans)


def test_deadline_cuts_the_slow_clients_and_bounds_the_round():
    model = SystemModel(speed=1000.0, speed_sigma=1.0, deadline=0.1)  # the median client needs 0.1 s
    plans = [plan_round(2, r, 200, 20, WORK, model) for r in range(1, 201)]
    assert 0.4 < np.mean([len(p.participants) / 20 for p in plans]) < 0.6
    assert all(p.simulated_seconds <= 0.1 + 1e-12 for p in plans)
    speeds = client_speeds(2, np.arange(200), model)
    for p in plans[:20]:
        assert np.all(WORK.samples[p.participants] / speeds[p.participants] <= 0.1)


def test_over_selection_keeps_the_k_fastest():
    model = SystemModel(speed_sigma=0.5, over_selection=0.5)
    plan = plan_round(3, 1, 200, 20, WORK, model)
    assert len(plan.selected) == math.ceil(20 * 1.5) and len(plan.participants) == 20
    speeds = client_speeds(3, plan.selected, model)
    fastest = np.sort(plan.selected[np.argsort(-speeds, kind="stable")][:20])
    assert plan.participants.tolist() == fastest.tolist()
    again = plan_round(3, 1, 200, 20, WORK, model)  # seeded: the same plan again
    assert again.participants.tolist() == plan.participants.tolist()
    assert again.simulated_seconds == plan.simulated_seconds


def test_a_run_trains_exactly_the_planned_participants(ray_cluster, tmp_path):
    overrides = small_overrides(rounds=5, **{
        "server.clients_per_round": 8, "client.system.dropout": 0.25, "client.system.speed_sigma": 0.8,
        "client.system.deadline": 0.2, "client.system.over_selection": 0.25, "client.system.speed": 1000.0,
    })  # fmt: skip
    history = Simulation.from_yaml(
        ROOT / "configs" / "default.yaml", overrides, run_dir=tmp_path / "sys"
    ).run()
    cfg = load_config(ROOT / "configs" / "default.yaml", overrides)
    dataset = build_dataset(cfg.data, cfg.seed)
    work = np.array([len(p) for p in build_partition(dataset, cfg.data, cfg.seed)]) * cfg.client.epochs
    model = SystemModel(**{k: getattr(cfg.client.system, k) for k in SystemModel.__dataclass_fields__})
    elapsed = 0.0
    assert sum(row["num_clients"] for row in history.rows) > 0
    for row in history.rows:
        plan = plan_round(cfg.seed, row["round"], cfg.data.num_clients, 8, LocalWork(work), model)
        elapsed += plan.simulated_seconds
        assert row["num_clients"] == len(plan.participants)
        assert row["num_selected"] == len(plan.selected)
        assert row["simulated_elapsed"] == elapsed
    html = write_report([history.run_dir], tmp_path / "report").read_text()
    assert 'id="panel-accuracy-vs-simulated-time"' in html


def test_the_system_model_selects_fedavgs_sample_when_everyone_is_online():
    """Speeds alone decide nothing: the selection is sample_clients', bit for bit."""
    model = SystemModel(speed_sigma=2.0)
    for round_ in range(1, 30):
        plan = plan_round(4, round_, 200, 20, WORK, model)
        assert plan.selected.tobytes() == sample_clients(4, round_, 200, 20).tobytes()
        assert plan.participants.tobytes() == plan.selected.tobytes()


def test_speed_sigma_alone_leaves_the_run_bit_identical(ray_cluster, tmp_path):
    """Without a deadline or over-selection speeds decide nothing (issue 22, point 4)."""
    runs = [
        Simulation.from_yaml(
            ROOT / "configs" / "default.yaml", small_overrides(rounds=2, **extra), run_dir=tmp_path / str(i)
        ).run()
        for i, extra in enumerate(({}, {"client.system.speed_sigma": 2.0}))
    ]
    assert [r["clients"] for r in runs[0].rows] == [r["clients"] for r in runs[1].rows]
    assert runs[0].final_params.tobytes() == runs[1].final_params.tobytes()
    assert runs[1].rows[0]["num_selected"] == 6  # the system model did plan the rounds
