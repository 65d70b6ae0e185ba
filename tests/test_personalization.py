"""Personalization (FedPer, FedRep, FedBN, Ditto) and fine-tuning evaluation, through
the configs a user runs."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from clients.errors import ConfigError
from clients.models.engines import build_model
from clients.models.spec import Architecture, build_spec, init_params
from clients.personalization import PersonalPlan, train_personalized
from clients.training import ClientTask, LocalTrainingConfig, client_rng
from simulator import Simulation
from simulator.config.loading import load_config
from simulator.driver.workers import stop_idle_workers
from simulator.report.page import write_report
from simulator.rundir.checkpoints import intact_checkpoints
from simulator.rundir.directory import read_run_id
from tests.conftest import ROOT, client_worker_pids, interrupted_and_resumed

CONFIG = ROOT / "configs" / "personalization.yaml"
# Seconds-long: 12 clients with alpha 0.1 label skew, all evaluated every 3 rounds.
SMALL = {
    "rounds": 6,
    "data.num_clients": 12,
    "server.clients_per_round": 6,
    "model.hidden": [32],
    "client.epochs": 1,
    "server.federated_eval.every": 3,
    "server.federated_eval.finetune_steps": 3,
    "runtime.workers": 2,
    "runtime.cpus_per_worker": 0.5,
    "runtime.reduction_groups": 4,
    "runtime.checkpoint_every": 2,
}
HEAD = 32 * 10 + 10  # fc2: the output layer of the 64-32-10 MLP


def run(tmp_path, name, **overrides):
    return Simulation.from_yaml(CONFIG, {**SMALL, **overrides}, run_dir=tmp_path / name).run()


def client_states(history) -> dict[int, dict[str, np.ndarray]]:
    """The personal state in the run's last checkpoint: client -> {name: array}."""
    ckpt = next(iter(intact_checkpoints(history.run_dir, read_run_id(history.run_dir))))
    states: dict[int, dict[str, np.ndarray]] = {}
    for key, value in ckpt.server_state.items():
        if key.startswith("client."):
            _, cid, name = key.split(".", 2)
            states.setdefault(int(cid), {})[name] = value
    return states


def participants(history) -> set[int]:
    return {c for row in history.rows for c in row["clients"]}


def last_evaluation(history) -> list[dict]:
    rows = [json.loads(line) for line in (history.run_dir / "clients.jsonl").read_text().splitlines()]
    return [r for r in rows if r["round"] == history.rows[-1]["round"]]


# --- the algorithms, one client at a time ----------------------------------------


def _one_client(method: str, **plan_args):
    spec = build_spec("mlp", (8,), 3, Architecture(hidden=[6]))
    model = build_model(spec, "numpy")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 8)).astype(np.float32), rng.integers(0, 3, 30)
    cfg = LocalTrainingConfig(lr=0.1, momentum=0.5, weight_decay=0.01, epochs=2, batch_size=5)
    head = np.zeros(spec.layout().size, bool)
    head[spec.layout()["fc2.weight"].offset :] = True
    plan = PersonalPlan(method, None if method == "ditto" else head, **plan_args)
    start = init_params(spec, 0)
    task = ClientTask(
        model=model,
        start=start,
        x=x,
        y=y,
        shard=np.arange(30),
        cfg=cfg,
        rng=client_rng(0, 1, 7, 1),
        client_id=7,
    )
    return plan, start, head, train_personalized(plan, task, {}, client_rng(0, 1, 7, 16))


def test_fedrep_trains_the_head_then_the_body_and_sends_only_the_body():
    plan, start, head, (result, state) = _one_client("fedrep", head_epochs=1)
    assert (result.update[head] == 0).all()  # the head's change stays on the client
    assert (result.update[~head] != 0).any()
    assert state["personal"].shape == (head.sum(),)
    assert not np.array_equal(state["personal"], start[head])
    # Weight decay and momentum on: the frozen part still does not move (bits).
    _, _, _, (again, again_state) = _one_client("fedrep", head_epochs=1)
    assert again.update.tobytes() == result.update.tobytes()
    assert again_state["personal"].tobytes() == state["personal"].tobytes()


def test_ditto_keeps_a_whole_personal_model_pulled_towards_the_global_one():
    _, start, _, (result, state) = _one_client("ditto", ditto_lambda=0.0, ditto_epochs=2)
    # With lambda 0 and the same epochs the personal model takes the same steps but from
    # its own rng: a whole model, not the global update.
    assert state["personal"].shape == start.shape
    _, _, _, (_, pulled) = _one_client("ditto", ditto_lambda=5.0, ditto_epochs=2)  # lr x lambda = 0.5
    free_drift = np.linalg.norm(state["personal"] - start)
    assert np.linalg.norm(pulled["personal"] - start) < 0.5 * free_drift


def _batch_norms(model) -> list:
    modules = model.net.modules() if model.engine == "torch" else model.modules
    return [m for m in modules if hasattr(m, "fixed")]


def _host(statistic) -> np.ndarray:
    return statistic.detach().numpy() if hasattr(statistic, "detach") else statistic


@pytest.mark.parametrize("rows", [7, 1])
def test_batch_norm_evaluates_alike_in_both_engines_and_calibrates_on_training_rows(rows):
    spec = build_spec("mlp", (12,), 4, Architecture(hidden=[6, 5], batchnorm=True))
    params = init_params(spec, 3)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(rows, 12)).astype(np.float32), rng.integers(0, 4, rows)
    train = rng.normal(2.0, 3.0, size=(40, 12)).astype(np.float32)  # statistics unlike x's
    results = {}
    for engine in ("numpy", "torch"):
        model = build_model(spec, engine)
        model.load_params(params)
        own = model.evaluate(x, y, 4)
        model.calibrate(train, 40)  # one batch: each layer's statistics over all 40 rows
        calibrated = model.evaluate(x, y, 4)
        whole = [tuple(map(_host, m.fixed)) for m in _batch_norms(model)]
        for size in (3, 1):  # the same statistics gathered `size` rows at a time, layer by layer
            model.calibrate(train, size)
            # float64 moments in another order, cast to float32: equal to float32 rounding.
            for (mean, var), (whole_mean, whole_var) in zip(
                (tuple(map(_host, m.fixed)) for m in _batch_norms(model)), whole, strict=True
            ):
                np.testing.assert_allclose(mean, whole_mean, rtol=1e-6, atol=1e-7)
                np.testing.assert_allclose(var, whole_var, rtol=1e-6)
            assert model.evaluate(x, y, 1)[1:] == calibrated[1:]
        model.calibrate(None, 3)
        assert model.evaluate(x, y, 4) == own  # back to each batch's own statistics
        results[engine] = (own, calibrated)
    # float32 sums in two libraries: summed losses agree to 1e-4 relative; counts exactly
    for (np_loss, np_correct, n), (t_loss, t_correct, m) in zip(
        results["numpy"], results["torch"], strict=True
    ):
        assert (np_correct, n) == (t_correct, m)
        assert np_loss == pytest.approx(t_loss, rel=1e-4)
    assert results["numpy"][0][0] != pytest.approx(results["numpy"][1][0], rel=1e-3)  # calibration acts


# --- through the product -----------------------------------------------------------


def test_fedper_keeps_heads_on_clients_and_personal_models_beat_the_global_one(ray_cluster, tmp_path):
    history = run(tmp_path, "fedper", **{"client.personalization.method": "fedper"})
    layout_head = slice(history.final_params.size - HEAD, None)
    initial = init_params(build_spec("mlp", (64,), 10, Architecture(hidden=[32])), 0)
    # The server never averages a head: its own stays as initialised, bit for bit.
    assert history.final_params[layout_head].tobytes() == initial[layout_head].tobytes()
    states = client_states(history)
    assert set(states) == participants(history)  # state only for clients that trained
    assert all(s["personal"].shape == (HEAD,) for s in states.values())
    n = history.final_params.size
    assert history.rows[0]["bytes_up"] == history.rows[0]["num_clients"] * 4 * (n - HEAD)
    final = history.rows[-1]
    assert final["personal_accuracy"] > final["federated_accuracy"] + 0.1
    evaluated = last_evaluation(history)
    assert {r["client"] for r in evaluated if "personal_accuracy" in r} == participants(history)


def test_ditto_global_model_is_fedavg_bit_for_bit(ray_cluster, tmp_path):
    fedavg = run(tmp_path, "fedavg", **{"client.personalization.method": "none"})
    ditto = run(tmp_path, "ditto", **{"client.personalization.method": "ditto"})
    assert ditto.final_params.tobytes() == fedavg.final_params.tobytes()
    assert [r["train_loss"] for r in ditto.rows] == [r["train_loss"] for r in fedavg.rows]
    assert ditto.rows[-1]["federated_accuracy"] == fedavg.rows[-1]["federated_accuracy"]
    assert ditto.rows[-1]["personal_accuracy"] > ditto.rows[-1]["federated_accuracy"]
    assert all(s["personal"].shape == ditto.final_params.shape for s in client_states(ditto).values())


def test_fedbn_keeps_batch_norm_layers_local(ray_cluster, tmp_path):
    history = run(tmp_path, "fedbn", **{"client.personalization.method": "fedbn", "model.batchnorm": True})
    spec = build_spec("mlp", (64,), 10, Architecture(hidden=[32], batchnorm=True))
    bn = spec.layout()["bn1.weight"].offset, spec.layout()["bn1.bias"].stop
    assert history.final_params[bn[0] : bn[1]].tobytes() == init_params(spec, 0)[bn[0] : bn[1]].tobytes()
    assert history.final_params[: bn[0]].tobytes() != init_params(spec, 0)[: bn[0]].tobytes()
    assert all(s["personal"].shape == (64,) for s in client_states(history).values())


def test_finetuning_evaluation_reports_without_changing_training(ray_cluster, tmp_path):
    tuned = run(tmp_path, "tuned", **{"client.personalization.method": "none"})
    plain = run(
        tmp_path,
        "plain",
        **{"client.personalization.method": "none", "server.federated_eval.finetune_steps": 0},
    )
    assert tuned.final_params.tobytes() == plain.final_params.tobytes()
    assert "finetuned_accuracy" in tuned.rows[-1] and "finetuned_accuracy" not in plain.rows[-1]
    rows = last_evaluation(tuned)
    assert all("finetuned_accuracy" in r and "personal_accuracy" not in r for r in rows)
    assert tuned.rows[-1]["finetuned_accuracy"] > tuned.rows[-1]["federated_accuracy"]


def test_personal_state_survives_resume_bit_for_bit(ray_cluster, tmp_path):
    overrides = {**SMALL, "client.personalization.method": "fedrep"}
    straight = Simulation.from_yaml(CONFIG, overrides, run_dir=tmp_path / "straight").run()
    resumed = interrupted_and_resumed(CONFIG, overrides, tmp_path / "resumed", stop_after=3)
    assert resumed.final_params.tobytes() == straight.final_params.tobytes()
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in h.rows] for h in (straight, resumed)]
    assert strip[0] == strip[1]
    a, b = client_states(straight), client_states(resumed)
    assert a.keys() == b.keys()
    assert all(a[c]["personal"].tobytes() == b[c]["personal"].tobytes() for c in a)


@pytest.mark.slow
def test_personal_state_survives_a_killed_worker(ray_cluster, tmp_path):
    stop_idle_workers()
    overrides = {"client.personalization.method": "ditto"}
    straight = run(tmp_path, "straight", **overrides)

    killed = []

    def kill_one_worker(row):
        if row["round"] == 2:
            killed.append(client_worker_pids()[0])
            os.kill(killed[-1], signal.SIGKILL)

    faulty = Simulation.from_yaml(
        CONFIG, {**SMALL, **overrides}, run_dir=tmp_path / "faulty", on_round_end=kill_one_worker
    ).run()
    assert len(killed) == 1
    assert faulty.final_params.tobytes() == straight.final_params.tobytes()
    assert faulty.rows[-1]["personal_accuracy"] == straight.rows[-1]["personal_accuracy"]


def test_a_large_population_holds_state_only_for_clients_that_trained(ray_cluster, tmp_path):
    history = Simulation.from_yaml(
        ROOT / "configs" / "population_100k.yaml",
        {
            "rounds": 2, "server.clients_per_round": 8, "runtime.reduction_groups": 2, "runtime.workers": 2,
            "runtime.cpus_per_worker": 0.5, "client.personalization.method": "fedper", "model.name": "mlp",
            "model.hidden": [8],
        },
        run_dir=tmp_path / "population",
    ).run()  # fmt: skip
    states = client_states(history)
    assert len(states) == len(participants(history)) <= 16


def test_report_draws_global_against_personalized_accuracy(ray_cluster, tmp_path):
    history = run(tmp_path, "fedrep", **{"client.personalization.method": "fedrep"})
    page = write_report([history.run_dir], tmp_path / "report").read_text()
    assert 'id="panel-personalization"' in page
    assert (tmp_path / "report" / "personalization.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"client.personalization.method": "fedbn"}, "the model has none"),
        ({"client.personalization.method": "fedper", "client.personalization.personal_layers": ["fc9"]},
         "'fc9' is not a layer of mlp; its layers with parameters: fc1, fc2, fc3"),
        ({"client.personalization.method": "fedper",
          "client.personalization.personal_layers": ["fc1", "fc2", "fc3"]}, "nothing would be shared"),
        ({"client.personalization.method": "ditto", "client.algorithm": "scaffold"}, "is not supported"),
        ({"client.personalization.method": "fedrep", "server.update": "gradients"}, "needs local training"),
        ({"client.personalization.method": "ditto", "client.personalization.personal_layers": ["fc1"]},
         "is for fedper and fedrep"),
        ({"model.batchnorm": True, "model.name": "cnn"}, "model.batchnorm: true is for the plain mlp"),
        ({"client.personalization.method": "fedrep", "client.personalization.head_epochs": 0}, "head_epochs"),
        ({"server.federated_eval.finetune_steps": -1}, "finetune_steps"),
    ],
)  # fmt: skip
def test_bad_personalization_settings_are_one_clear_error(overrides, message):
    from simulator.config.build import build_run

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_run(load_config(CONFIG, overrides))


def test_async_runs_personalize_too(ray_cluster, tmp_path):
    history = run(
        tmp_path, "async", **{
            "client.personalization.method": "fedrep", "server.mode": "async",
            "client.system.speed_sigma": 1.0, "server.async.buffer_size": 3,
        },
    )  # fmt: skip
    trained = {c for row in history.rows for c in row["clients"]}
    assert trained <= set(client_states(history))  # arrived clients (and some still in flight)
    assert history.rows[-1]["personal_accuracy"] > history.rows[-1]["federated_accuracy"]


def test_a_huge_layer_name_is_refused_in_one_bounded_line():
    from simulator.config.build import build_run

    overrides = {
        "client.personalization.method": "fedper",
        "client.personalization.personal_layers": ["x" * 100_000],
    }
    with pytest.raises(ConfigError) as refused:
        build_run(load_config(CONFIG, overrides))
    assert "is not a layer of mlp" in str(refused.value) and len(str(refused.value)) < 2000
