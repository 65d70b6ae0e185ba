"""Stragglers with partial work (FedProx, Li et al. 2020, Section 5.2) and partial work cut
at a deadline (issue 22, point 1): through the user's path, plus the plan and the cut."""

from __future__ import annotations

import re
import shlex

import numpy as np
import pytest

from clients.errors import ConfigError
from clients.models.spec import build_spec, init_params
from clients.models.torch_engine import TorchModel
from clients.training import ClientTask, LocalTrainingConfig, client_rng, train_client
from server.system import LocalWork, SystemModel, client_speeds, plan_round, straggler_epochs
from simulator import Simulation
from simulator.config.build import build_dataset, build_partition
from simulator.config.loading import apply_overrides, load_config, read_yaml
from simulator.driver.sweep import _plan, parse_grid
from tests.conftest import ROOT, small_overrides
from tests.test_cli import assert_one_line_error, fedsim

DEFAULT = ROOT / "configs" / "default.yaml"
EPOCHS = 4  # stragglers train 1..3 epochs
WORK = LocalWork(np.full(200, 100.0 * EPOCHS), EPOCHS, 10)  # every client: 100 samples, EPOCHS passes of 10


def _run(tmp_path, name: str, **extra):
    overrides = small_overrides(rounds=2, **{"client.epochs": EPOCHS, **extra})
    return Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / name).run()


def test_stragglers_train_fewer_epochs_and_their_work_counts(ray_cluster, tmp_path):
    base = _run(tmp_path, "base")
    kept = _run(tmp_path, "kept", **{"client.system.stragglers": 0.5})
    one_worker = _run(tmp_path, "one", **{"client.system.stragglers": 0.5, "runtime.workers": 1})
    drop = {"client.system.stragglers": 0.5, "client.system.drop_stragglers": True}
    dropped = _run(tmp_path, "drop", **drop)
    seed = load_config(DEFAULT).seed
    for b, k, d in zip(base.rows, kept.rows, dropped.rows, strict=True):
        # The same clients are selected; 6 - round(6 x 0.5) = 3 of them straggle.
        assert k["clients"] == b["clients"] and k["num_clients"] == 6
        assert k["stragglers"] == d["stragglers"] == 3 and "stragglers" not in b
        assert len(k["client_steps"]) == 6 and len(d["client_steps"]) == 3 and "client_steps" not in b
        selected = np.array(b["clients"])
        stragglers = selected[straggler_epochs(seed, b["round"], selected, 0.5, EPOCHS) < EPOCHS]
        assert d["clients"] == sorted(set(b["clients"]) - set(stragglers.tolist()))  # dropped: not trained
    assert kept.final_params.tobytes() != base.final_params.tobytes()  # their epochs were cut...
    assert kept.final_params.tobytes() != dropped.final_params.tobytes()  # ...and their work kept
    # A straggler's epochs come from (seed, round, client): whichever worker trains it.
    assert one_worker.final_params.tobytes() == kept.final_params.tobytes()


def test_rows_report_the_local_steps_the_plan_gave_each_client(ray_cluster, tmp_path):
    """The plan's straggler epochs and deadline budgets reach the workers: on 8 iid digits
    shards of 179-180 rows, a full epoch is 18 batches of 10, so each client's steps are
    exact: 18 x its epochs, or 40 when 4 s at 100 samples/s (400 samples) cut it."""
    iid = {"data.num_clients": 8, "data.partition": "iid", "client.system.stragglers": 0.5}
    cut = {"client.system.partial_work": True, "client.system.speed": 100.0, "client.system.deadline": 4.0}
    cfg = load_config(DEFAULT, small_overrides(**{"client.epochs": EPOCHS, **iid}))
    sizes = [len(p) for p in build_partition(build_dataset(cfg.data, cfg.seed), cfg.data, cfg.seed)]
    assert set(sizes) == {179, 180} and cfg.client.batch_size == 10  # 18 batches an epoch
    for extra in ({}, cut):
        for row in _run(tmp_path, f"steps{len(extra)}", **iid, **extra).rows:
            clients = np.array(row["clients"])
            assert row["num_selected"] == len(clients) == 6  # everyone selected counts
            epochs = straggler_epochs(cfg.seed, row["round"], clients, 0.5, EPOCHS)
            assert (epochs < EPOCHS).sum() == 3
            late = epochs * 180 > 400 if extra else np.zeros(6, bool)  # 3 epochs are 537-540 samples
            assert row["client_steps"] == np.where(late, 40, 18 * epochs).tolist()
            assert row["local_steps"] == sum(row["client_steps"])
            assert row.get("partial_clients", 0) == late.sum()


def test_partial_work_counts_the_clients_the_deadline_cuts(ray_cluster, tmp_path):
    system = {"client.system.speed_sigma": 1.0, "client.system.deadline": 0.3}
    cut = _run(tmp_path, "cut", **system)
    partial = _run(tmp_path, "partial", **system, **{"client.system.partial_work": True})
    cfg = load_config(DEFAULT, small_overrides(**{"client.epochs": EPOCHS, **system}))
    model = SystemModel(**{k: getattr(cfg.client.system, k) for k in SystemModel.__dataclass_fields__})
    late = 0
    for c, p in zip(cut.rows, partial.rows, strict=True):
        assert set(c["clients"]) < set(p["clients"]), (c["clients"], p["clients"])
        assert p["partial_clients"] == p["num_clients"] - c["num_clients"]
        newcomers = np.array(sorted(set(p["clients"]) - set(c["clients"])))
        # Each processed what its speed allowed by the deadline: less than its full work.
        budgets = np.floor(0.3 * client_speeds(cfg.seed, newcomers, model))
        assert np.all(budgets >= cfg.client.batch_size), budgets
        late += len(newcomers)
    assert late > 0 and partial.final_params.tobytes() != cut.final_params.tobytes()


def test_the_plan_draws_the_reference_codes_straggler_count_and_epochs():
    model = SystemModel(stragglers=0.9)
    for round_ in range(1, 40):
        plan = plan_round(5, round_, 200, 10, WORK, model)
        assert len(plan.stragglers) == 9 and plan.participants.tobytes() == plan.selected.tobytes()
        assert sorted(plan.local_epochs) == plan.stragglers.tolist()
        assert set(plan.local_epochs.values()) <= {1, 2, 3}  # uniform in 1..E-1, as the code draws
    # The reference keeps round(k (1 - s)) active: 5 - round(2.5) = 3 stragglers of 5.
    assert (straggler_epochs(0, 1, np.arange(5), 0.5, EPOCHS) < EPOCHS).sum() == 3
    dropping = SystemModel(stragglers=0.5, drop_stragglers=True)
    dropped = plan_round(5, 1, 200, 10, WORK, dropping)
    assert len(dropped.participants) == 5 and not dropped.local_epochs


def test_partial_work_budgets_are_the_samples_processed_by_the_deadline():
    model = SystemModel(speed_sigma=1.0, deadline=0.3, partial_work=True)
    plan = plan_round(6, 1, 200, 20, WORK, model)
    cut = plan_round(6, 1, 200, 20, WORK, SystemModel(speed_sigma=1.0, deadline=0.3))
    ids = np.array(sorted(plan.sample_budgets))
    speeds = client_speeds(6, ids, model)
    assert len(ids) and not set(ids) & set(cut.participants.tolist())
    assert [plan.sample_budgets[c] for c in ids] == np.floor(0.3 * speeds).astype(int).tolist()
    assert all(10 <= b < WORK.samples[0] for b in plan.sample_budgets.values())  # a step at least, not all
    assert plan.simulated_seconds == 0.3


def test_a_sample_budget_cuts_local_training_before_the_batch_that_would_pass_it():
    spec = build_spec("logreg", (1, 8, 8), 10)
    rng = np.random.default_rng(1)
    x, y = rng.random((30, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, 30)
    cfg = LocalTrainingConfig(lr=0.1, momentum=0.0, weight_decay=0.0, epochs=2, batch_size=4)

    def train(**limit):
        task = ClientTask(
            model=TorchModel(spec), start=init_params(spec, 0), x=x, y=y, shard=np.arange(5, 25), cfg=cfg,
            rng=client_rng(0, 1, 7, 1), client_id=7, **limit,
        )  # fmt: skip
        return train_client(task)

    cut, steps = train(max_samples=30), train(max_steps=7)  # 7 batches of 4 = 28; an 8th would be 32
    assert cut.steps == 7 and cut.update.tobytes() == steps.update.tobytes()
    assert cut.num_samples == 20  # weighted by its n_k like every client


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["client.epochs=1", "client.system.stragglers=0.5"], "needs client.epochs >= 2, got 1"),
        (["client.system.stragglers=1"], "client.system.stragglers: 1.0 is not allowed; must be in [0, 1)"),
        (["client.system.stragglers=-0.1"], "must be in [0, 1)"),
        (["client.system.stragglers=.inf"], "client.system.stragglers: inf is not allowed"),
        (
            ["client.system.stragglers=0.5", "server.update=gradients"],
            "FedSGD (server.update: gradients) sends one gradient",
        ),
        (["client.system.drop_stragglers=true"], "set client.system.stragglers > 0"),
        (  # banker's rounding: round(0.5) = 0, as the reference code counts
            [
                "client.system.stragglers=0.5",
                "client.system.drop_stragglers=true",
                "server.clients_per_round=0.02",
            ],
            "round(1 x (1 - 0.5)) = 0 of its 1 selected (server.clients_per_round=0.02) stay active",
        ),
        (
            [
                "client.system.stragglers=0.96",
                "client.system.drop_stragglers=true",
                "client.system.over_selection=0.1",
            ],
            "round(11 x (1 - 0.96)) = 0 of its 11 selected (server.clients_per_round=10 with "
            "client.system.over_selection=0.1)",
        ),
        (["client.system.partial_work=true"], "client.system.partial_work: True is not allowed here"),
        (
            ["client.system.partial_work=true", "client.system.deadline=1", "server.update=gradients"],
            "client.system.partial_work: True is not allowed here; FedSGD",
        ),
        (
            ["client.system.stragglers=0.5", "client.personalization.method=ditto"],
            "ditto trains several passes a round",
        ),
        (
            ["client.system.stragglers=0.5", "server.mode=async"],
            "client.system.stragglers: 0.5 is not allowed with server.mode: async",
        ),
    ],
)
def test_partial_work_that_could_not_act_is_refused(overrides, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(DEFAULT, overrides)  # default.yaml trains 2 epochs


def test_refusals_are_one_line_from_the_cli():
    drop = ("--set", "client.system.drop_stragglers=true", "--set", "client.system.stragglers=0.96")
    assert_one_line_error(
        fedsim("validate", DEFAULT, *drop), "client.system.stragglers: 0.96",
        "round(10 x (1 - 0.96)) = 0 of its 10 selected (server.clients_per_round=10)", "never trains",
    )  # fmt: skip
    load_config(DEFAULT, ["client.system.drop_stragglers=true", "client.system.stragglers=0.95"])  # 1 active
    result = fedsim("validate", DEFAULT, "--set", "client.epochs=1", "--set", "client.system.stragglers=0.9")
    assert_one_line_error(result, "client.system.stragglers: 0.9", "needs client.epochs >= 2, got 1")
    assert_one_line_error(
        fedsim("validate", DEFAULT, "--set", "client.system.stragglers=.inf"), "client.system.stragglers: inf"
    )
    assert_one_line_error(
        fedsim("validate", DEFAULT, "--set", "client.system.partial_work=true"),
        "client.system.partial_work", "set a deadline",
    )  # fmt: skip


def test_the_configs_sweeps_plan_the_papers_grid():
    """The commands in configs/fedprox_stragglers.yaml's header name valid grids: mu x
    stragglers with partial work kept (6 runs), and FedAvg dropping them (2 runs)."""
    config = ROOT / "configs" / "fedprox_stragglers.yaml"
    commands, command = [], ""
    for line in (line[1:].strip() for line in config.read_text().splitlines() if line.startswith("#")):
        if line.startswith("fedsim sweep ") or command:  # a command, continued after a backslash
            command += line.removesuffix("\\") + " "
            if not line.endswith("\\"):
                commands, command = [*commands, shlex.split(command)[2:]], ""
    plans = []
    for words in commands:
        flags = list(zip(words[1::2], words[2::2], strict=True))
        sets = [value for flag, value in flags if flag == "--set"]
        grid = parse_grid([value for flag, value in flags if flag == "--grid"])
        plans.append(_plan(apply_overrides(read_yaml(ROOT / words[0]), sets), grid, 1))
    assert [len(p) for p in plans] == [6, 2]
    fedavg = [p.config.client for p in plans[1]]
    assert all(c.prox_mu == 0 and c.system.drop_stragglers for c in fedavg)
    assert {p.config.client.system.stragglers for p in plans[0]} == {0.0, 0.5, 0.9}
