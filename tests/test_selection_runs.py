"""Client selection through the user's path (server.selection: oort | power_of_choice):
Oort's rounds are shorter than uniform's where half the devices are 10x slower, it picks
the high-loss clients when all devices are equal, its state resumes bit for bit and is the
same on one worker as on two; power-of-choice with every client a candidate selects the
highest losses of the model it is given; the combinations a policy cannot serve are one
error line. Every run is a config through Simulation.from_yaml or the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from clients.attacks import flip_labels, malicious_clients
from clients.models.engines import build_model
from server.evaluation import evaluate
from simulator import Simulation
from simulator.config.build import build_run
from simulator.config.loading import load_config
from simulator.rundir.checkpoints import list_checkpoints, load_checkpoint
from tests.conftest import ROOT
from tests.test_hostile_input import assert_refused, cli

DEFAULT = ROOT / "configs" / "default.yaml"
CLIENTS, PER_ROUND = 20, 8
# A capacity trace of two devices, the first 10x slower in compute and bandwidth alike, so
# a slow client's trip is exactly 10x a fast one's. Under mapping fedscale client n takes
# the profile at position (n + 1) mod 2: even clients are fast, odd ones slow.
SLOW_AND_FAST = (
    '{"id": "slow", "compute_ms_per_sample": 100.0, "bandwidth_kbps": 1000.0}\n'
    '{"id": "fast", "compute_ms_per_sample": 10.0, "bandwidth_kbps": 10000.0}\n'
)


def overrides(**extra) -> dict:
    """A small digits run: CLIENTS iid clients of ~70 samples, PER_ROUND a round, one epoch."""
    base = {
        "name": "selection",
        "rounds": 3,
        "data.num_clients": CLIENTS,
        "data.partition": "iid",
        "server.clients_per_round": PER_ROUND,
        "server.eval_every": 1,  # a run stopped early evaluates its last round as every round
        "model.hidden": [16],
        "client.epochs": 1,
        "runtime.reduction_groups": 4,
        "runtime.cpus_per_worker": 0.5,
        "runtime.workers": 2,
    }
    base.update(extra)
    return base


def traced(tmp_path: Path, **extra) -> dict:
    """``overrides`` on SLOW_AND_FAST devices (trace written under tmp_path)."""
    trace = tmp_path / "capacity.jsonl"
    trace.write_text(SLOW_AND_FAST)
    return overrides(
        **{"client.system.trace.capacity": str(trace), "client.system.trace.mapping": "fedscale", **extra}
    )


def rows_of(settings: dict, run_dir: Path) -> list[dict]:
    return Simulation.from_yaml(DEFAULT, settings, run_dir=run_dir).run().rows


def cli_sets(settings: dict) -> list[str]:
    return [a for key, value in settings.items() for a in ("--set", f"{key}={json.dumps(value)}")]


def timeless_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def model_sha256(run_dir: Path) -> str:
    return hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()


# ---------------------------------------------------------------- what Oort prefers


def test_oort_rounds_are_shorter_than_uniform_once_every_client_is_explored(ray_cluster, tmp_path):
    """Half the devices 10x slower: a uniform sample of 8 of 20 lacks a slow client with
    probability C(10,8)/C(20,8) = 3.6e-4, so nearly every uniform round lasts a slow trip.
    Oort explores every client once (its exploration share decays by 0.8 a round to the
    floor 0.3; the slow clients, penalised, are explored last), then exploits: a slow
    client's score is cut by (T / 10 T)^2 = 1/100, below the cut-off. A round lasts either
    one fast trip or ten, so "Oort's mean at most half uniform's" still holds with up to 4 in
    9 of its exploiting rounds slow (it has none): a margin a selection blind to speed cannot
    meet (with server.oort.alpha 0 every one of its rounds is slow)."""
    rounds = 12
    settings = traced(tmp_path, rounds=rounds)
    uniform = rows_of(settings, tmp_path / "uniform")
    oort = rows_of(
        {**settings, "server.selection": "oort", "server.oort.exploration_decay": 0.8}, tmp_path / "oort"
    )
    assert oort[-1]["oort_exploration"] == pytest.approx(0.3)
    # Rounds selected when every client had been explored (by the round before).
    exploiting = [row["round"] + 1 for row in oort[:-1] if row["oort_explored_clients"] == CLIENTS]
    assert len(exploiting) >= 4, [row["oort_explored_clients"] for row in oort]
    after = slice(exploiting[0] - 1, rounds)
    oort_mean = np.mean([row["simulated_seconds"] for row in oort[after]])
    uniform_mean = np.mean([row["simulated_seconds"] for row in uniform[after]])
    assert oort_mean <= 0.5 * uniform_mean, (oort_mean, uniform_mean)
    # Uniform's rounds are slow because it selects odd (slow) clients, Oort's fast because not.
    assert all(any(c % 2 for c in row["selected"]) for row in uniform[after])
    assert sum(c % 2 for row in oort[after] for c in row["selected"]) <= len(exploiting) // 2


def test_with_equal_devices_oort_selects_the_high_loss_clients(ray_cluster, tmp_path):
    """All devices equal (no trace, speed_sigma 0): what is left of Oort is loss-driven
    selection. A fifth of the clients train on flipped labels (server.attack label_flip),
    so their training loss on the model the honest majority shapes stays high and so does
    their statistical utility. Uniform gives them a fifth of its picks (in expectation);
    once Oort has explored everyone, it is asserted to give them at least 1.5 times that.
    It gives them 0.375-0.425 with seeds 0-2 and 4 or 5 clients a round (checked when this
    test was written), so 0.3 leaves a quarter of the effect as margin."""
    per_round = 5
    settings = overrides(
        rounds=12,
        **{
            "server.clients_per_round": per_round,
            "server.attack.kind": "label_flip",
            "server.attack.fraction": 0.2,
            "client.lr": 0.3,
        },
    )
    flipped = set(malicious_clients(0, CLIENTS, 0.2).tolist())  # the attack's seeded choice
    assert len(flipped) == 4
    uniform = rows_of(settings, tmp_path / "uniform")
    oort = rows_of({**settings, "server.selection": "oort"}, tmp_path / "oort")
    assert oort[0]["simulated_seconds"] == uniform[0]["simulated_seconds"]  # equal devices
    exploiting = [row for row in oort if row["oort_explored_clients"] == CLIENTS]
    assert len(exploiting) >= 6, [row["oort_explored_clients"] for row in oort]

    def flipped_share(rows: list[dict]) -> float:
        picks = [c for row in rows for c in row["clients"]]
        return sum(c in flipped for c in picks) / len(picks)

    oort_share, uniform_share = flipped_share(exploiting), flipped_share(uniform)
    assert oort_share >= 1.5 * len(flipped) / CLIENTS and oort_share > uniform_share, (
        oort_share,
        uniform_share,
    )


# ---------------------------------------------------------------- determinism

POLICIES = {
    "oort": {"server.selection": "oort", "server.oort.exploration_decay": 0.8},
    "power_of_choice": {"server.selection": "power_of_choice", "server.power_of_choice.candidates": 12},
}
STRAIGHT_ROUNDS, STOP_AFTER = 5, 2


@pytest.fixture(scope="module")
def straight(ray_cluster, tmp_path_factory):
    """Each policy's uninterrupted STRAIGHT_ROUNDS-round run on two workers, slow and fast
    devices, through the CLI: the run the resumed and the one-worker runs must reproduce."""
    base = tmp_path_factory.mktemp("straight")
    runs = {}
    for policy, settings in POLICIES.items():
        run_dir = base / policy
        sets = cli_sets(traced(base, rounds=STRAIGHT_ROUNDS, **{"runtime.checkpoint_every": 1}, **settings))
        code, _, err = cli("run", DEFAULT, *sets, "--out", run_dir, "--quiet")
        assert code == 0, err
        runs[policy] = run_dir
    return base, runs


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_resumed_selection_run_is_the_straight_run_bit_for_bit(policy, straight, tmp_path):
    """Stopped after round STOP_AFTER (Oort still exploring: its utilities, durations and
    exploration share carry the selections after it) and resumed to the end."""
    base, runs = straight
    run_dir = tmp_path / "resumed"
    settings = traced(base, rounds=STOP_AFTER, **{"runtime.checkpoint_every": 1}, **POLICIES[policy])
    code, _, err = cli("run", DEFAULT, *cli_sets(settings), "--out", run_dir, "--quiet")
    assert code == 0, err
    code, _, err = cli("run", "--resume", run_dir, "--set", f"rounds={STRAIGHT_ROUNDS}", "--quiet")
    assert code == 0, err
    assert timeless_rows(run_dir) == timeless_rows(runs[policy])
    assert model_sha256(run_dir) == model_sha256(runs[policy])
    # The selections were not all one: a policy that forgot its state could still match.
    assert len({tuple(row["selected"]) for row in timeless_rows(run_dir)}) == STRAIGHT_ROUNDS


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_selection_runs_are_the_same_on_one_worker_as_on_two(policy, straight, tmp_path):
    base, runs = straight
    settings = traced(
        base,
        rounds=STRAIGHT_ROUNDS,
        **{"runtime.checkpoint_every": 1, "runtime.workers": 1},
        **POLICIES[policy],
    )
    code, _, err = cli("run", DEFAULT, *cli_sets(settings), "--out", tmp_path / "one", "--quiet")
    assert code == 0, err
    assert timeless_rows(tmp_path / "one") == timeless_rows(runs[policy])
    assert model_sha256(tmp_path / "one") == model_sha256(runs[policy])


# ---------------------------------------------------------------- power-of-choice


@pytest.mark.parametrize("attack", [{}, {"server.attack.kind": "label_flip", "server.attack.fraction": 0.3}])
def test_power_of_choice_with_every_client_a_candidate_selects_the_highest_losses(
    ray_cluster, tmp_path, attack
):
    """d = every client: round r selects the PER_ROUND clients whose training rows the
    model after round r - 1 fits worst. Checked against losses computed here, outside the
    workers: the initial model (round 1) and the checkpoints of rounds 1 and 2 evaluated
    on each client's rows with the numpy engine, with the labels each client trains on (a
    label-flipping attacker's flipped). Only the ranking is compared; a tie within float
    rounding at the k-th place would be needed to flip it."""
    settings = overrides(
        **{
            "server.selection": "power_of_choice",
            "server.power_of_choice.candidates": CLIENTS,
            "runtime.checkpoint_every": 1,
            "model.engine": "numpy",
            **attack,
        }
    )
    flipped = set(malicious_clients(0, CLIENTS, 0.3).tolist()) if attack else set()
    rows = rows_of(settings, tmp_path / "run")
    assert [row["candidates_measured"] for row in rows] == [CLIENTS] * 3
    setup = build_run(load_config(DEFAULT, settings))
    model = build_model(setup.spec, "numpy")
    x, y = setup.dataset.x_train, setup.dataset.y_train
    run_id = json.loads((tmp_path / "run" / "run.json").read_text())["run_id"]
    after_rounds = [load_checkpoint(path, run_id).params for path in list_checkpoints(tmp_path / "run")[:2]]
    models = [setup.server.params, *after_rounds]
    for row, params in zip(rows, models, strict=True):
        labels = [flip_labels(y[p], 10) if c in flipped else y[p] for c, p in enumerate(setup.splits.train)]
        losses = np.array(
            [evaluate(model, params, x[p], labels[c], 64).loss for c, p in enumerate(setup.splits.train)]
        )
        highest = np.sort(np.argsort(-losses, kind="stable")[:PER_ROUND])
        assert row["selected"] == highest.tolist(), (row["round"], losses.round(4).tolist())
    assert rows[0]["selected"] != rows[1]["selected"]  # the ranking follows the model


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("policy", ["oort", "power_of_choice"])
@pytest.mark.parametrize(
    ("combination", "why"),
    [
        ({"server.mode": "async"}, "asynchronous dispatch samples idle clients uniformly"),
        (
            {
                "server.privacy.noise_multiplier": 1.0,
                "server.clipping.kind": "fixed",
                "server.weighting": "uniform",
            },
            "DP accounting assumes uniform (or Poisson) sampling",
        ),
    ],
    ids=["async", "dp_noise"],
)
def test_selection_with_async_or_dp_noise_is_one_line_naming_server_selection(
    policy, combination, why, tmp_path
):
    assert cli("validate", DEFAULT, *cli_sets(combination))[0] == 0  # fine with uniform selection
    settings = {"server.selection": policy, **combination}
    for command in (("validate", DEFAULT), ("run", DEFAULT, "--out", tmp_path / "run")):
        result = cli(*command, *cli_sets(settings))
        assert_refused(result, f"server.selection: '{policy}' is not allowed here")
        assert why in result[2]
    assert not (tmp_path / "run").exists()  # refused before anything is written
