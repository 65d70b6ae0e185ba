"""The server pipeline end to end on a session-wide Ray: FedSGD, FedProx, SCAFFOLD,
robust aggregation under attack, adaptive clipping, DP accounting, stateful resume."""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp

from clients.algorithms import StepTransform
from clients.errors import RunDiverged
from clients.models.engines import build_model
from clients.models.spec import init_params
from simulator import Simulation
from simulator.config.build import build_dataset, build_model_spec
from simulator.config.loading import apply_overrides, from_dict, load_config
from tests.conftest import ROOT, interrupted_and_resumed, small_overrides

DEFAULT = ROOT / "configs" / "default.yaml"


def run(tmp_path, run_name: str, overrides: dict, config=DEFAULT):
    return Simulation.from_yaml(
        config, {"runtime.workers": 2, **overrides}, run_dir=tmp_path / run_name
    ).run()


def union_loss(history, config, overrides: dict) -> float:
    """The global model's mean loss on the whole training set (the federated objective)."""
    cfg = load_config(config, overrides)
    dataset = build_dataset(cfg.data, cfg.seed)
    model = build_model(build_model_spec(cfg.model, dataset), cfg.model.engine)
    model.params[:] = history.final_params
    loss_sum, _, count = model.evaluate(dataset.x_train, dataset.y_train, 4096)
    return loss_sum / count


def test_fedsgd_with_full_shards_is_centralised_gradient_descent(ray_cluster, tmp_path):
    overrides = {
        "rounds": 3, "data.num_clients": 10, "data.partition": "iid", "model.name": "logreg",
        "server.clients_per_round": 10, "server.update": "gradients", "server.lr": 0.5,
        "client.batch_size": 64,
    }  # fmt: skip
    history = run(tmp_path, "fedsgd", overrides)
    cfg = from_dict(apply_overrides({}, overrides))
    dataset = build_dataset(cfg.data, cfg.seed)
    model = build_model(build_model_spec(cfg.model, dataset), "torch")
    params = init_params(model.spec, cfg.seed)
    for _ in range(3):
        model.params[:] = params
        model.loss_and_grad(dataset.x_train, dataset.y_train)  # mean over the union
        params = params - 0.5 * model.grad
    # Same gradient, summed in another order in float32: agreement to ~1e-6 relative.
    np.testing.assert_allclose(history.final_params, params, rtol=1e-4, atol=1e-6)


def test_fedsgd_under_batch_norm_skips_a_last_batch_of_one_as_local_training_does(ray_cluster, tmp_path):
    # 1,438 digits rows over 8 IID clients: six of 180 rows, two of 179; in batches of 89
    # the 179-row shards end in a batch of one, which batch norm cannot normalise (in
    # training mode it raises): the run completes only if FedSGD skips it. Clients are
    # weighted by their shard sizes all the same (McMahan et al.'s n_k), so the rows count
    # every shard row.
    overrides = {
        "rounds": 2, "data.num_clients": 8, "data.partition": "iid", "model.hidden": [16],
        "model.batchnorm": True, "server.clients_per_round": 8, "client.batch_size": 89,
    }  # fmt: skip
    history = run(tmp_path, "fedsgd_bn", overrides, ROOT / "configs" / "fedsgd.yaml")
    assert [row["num_samples"] for row in history.rows] == [6 * 180 + 2 * 179] * 2
    assert np.isfinite(history.final_params).all()


def test_step_transform_adds_the_proximal_pull_then_clips_then_corrects():
    """The local step's gradient modifications by hand (FedProx's run-level effect is in
    tests/test_algorithms.py): g + mu (w - w_t), clipped to C, plus SCAFFOLD's c - c_i."""
    params, start = np.array([1.0, 2.0], np.float32), np.array([0.0, 2.0], np.float32)
    grad = np.array([0.0, 3.0], np.float32)
    StepTransform(prox_mu=4.0, global_params=start).apply(grad, params)
    np.testing.assert_array_equal(grad, [4.0, 3.0])  # + 4 * (1 - 0, 2 - 2)
    StepTransform(max_grad_norm=1.0, correction=np.array([1.0, 0.0], np.float32)).apply(grad, params)
    np.testing.assert_allclose(grad, [0.8 + 1.0, 0.6], rtol=1e-6)  # (4, 3) / 5, then + (1, 0)
    assert not StepTransform().active and StepTransform(prox_mu=0.1).active


def test_scaffold_beats_fedavg_when_every_client_holds_one_label(ray_cluster, tmp_path):
    config = ROOT / "configs" / "scaffold.yaml"
    base = {"rounds": 30}
    scaffold = run(tmp_path, "scaffold", base, config)
    fedavg = run(tmp_path, "fedavg", {**base, "client.algorithm": "fedavg"}, config)
    # The clients' own minibatch losses are low under FedAvg (each fits its one label);
    # the objective that matters is the global model's loss on all the training data.
    assert union_loss(scaffold, config, base) < union_loss(fedavg, config, base)


@pytest.mark.slow
def test_robust_aggregators_survive_sign_flipping_attackers(ray_cluster, tmp_path):
    """The robust aggregators end within 5 points of the clean run. The mean follows the
    attackers: its test loss explodes, so the loss-growth rule (on by default) stops it as
    diverged long before its 80 rounds (round 13), at an accuracy far below the clean run's;
    stopping it is the stronger evidence, and the rule must blame the attack first."""
    config = ROOT / "configs" / "robust_attack.yaml"
    clean = run(tmp_path, "clean", {"server.attack.kind": "none", "server.aggregator": "mean"}, config)
    accuracy = {"clean": clean.summary["final_test_accuracy"]}
    blamed = r"stop_after_loss_growth=100 .*\(likely server.attack.kind=sign_flip with server.aggregator=mean"
    with pytest.raises(RunDiverged, match=blamed):
        run(tmp_path, "mean", {"server.aggregator": "mean"}, config)
    mean = json.loads((tmp_path / "mean" / "summary.json").read_text())
    assert mean["status"] == "diverged" and mean["rounds_completed"] < 20, mean
    accuracy["mean"] = mean["final_test_accuracy"]  # its last evaluated model's
    cases = {
        "median": {"server.aggregator": "median"},
        "trimmed_mean": {"server.aggregator": "trimmed_mean", "server.trim_beta": 0.25},
        "krum": {"server.aggregator": "krum", "server.krum_f": 4},
    }
    for name, overrides in cases.items():
        accuracy[name] = run(tmp_path, name, overrides, config).summary["final_test_accuracy"]
    assert accuracy["clean"] - accuracy["mean"] >= 0.20, accuracy
    for name in ("median", "trimmed_mean", "krum"):
        assert accuracy["clean"] - accuracy[name] <= 0.05, accuracy


def test_adaptive_clipping_converges_to_the_target_quantile(ray_cluster, tmp_path):
    overrides = small_overrides(rounds=40, **{
        "server.clients_per_round": 12, "server.clipping.kind": "adaptive",
        "server.clipping.target_quantile": 0.75, "server.clipping.learning_rate": 0.3,
    })  # fmt: skip
    history = run(tmp_path, "adaptive", overrides)
    clip_norms = [row["clip_norm"] for row in history.rows]
    late = [row["clipped_fraction"] for row in history.rows[-15:]]
    assert clip_norms[0] == pytest.approx(0.1)  # Andrew et al.'s initial norm
    assert clip_norms[-1] > 0.1  # grew toward the update norms
    assert abs(np.mean(late) - 0.25) < 0.12  # 75% under the norm => a quarter clipped


def test_dp_epsilon_matches_the_accountant_and_noise_has_its_std(ray_cluster, tmp_path):
    overrides = small_overrides(rounds=3, **{
        "data.num_clients": 40, "data.partition": "iid", "server.clients_per_round": 8,
        "server.clipping.kind": "fixed", "server.clipping.norm": 0.5,
        "server.privacy.noise_multiplier": 1.1, "server.privacy.sampling": "poisson", "runtime.workers": 2,
        "server.weighting": "uniform",
    })  # fmt: skip
    history = run(tmp_path, "dp", overrides)
    q, z, delta = 8 / 40, 1.1, 1e-5
    for row in history.rows:
        accountant = rdp.RdpAccountant(
            neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        )
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, row["round"]))
        assert row["epsilon"] == pytest.approx(accountant.get_epsilon(delta), rel=1e-9)
        assert row["noise_std"] == pytest.approx(z * 0.5)
    summary = json.loads((history.run_dir / "summary.json").read_text())
    assert summary["epsilon"] == pytest.approx(history.rows[-1]["epsilon"])


def test_resume_with_every_kind_of_server_state_is_bit_identical(ray_cluster, tmp_path):
    overrides = small_overrides(rounds=6, **{
        "client.algorithm": "scaffold", "server.optimizer": "adam", "server.lr": 0.01,
        "server.clipping.kind": "adaptive", "server.compression.method": "topk",
        "server.compression.fraction": 0.1, "runtime.checkpoint_every": 2,
    })  # fmt: skip
    straight = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "straight").run()
    resumed = interrupted_and_resumed(DEFAULT, overrides, tmp_path / "resumed", stop_after=3)
    assert resumed.final_params.tobytes() == straight.final_params.tobytes()
    strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in h.rows] for h in (straight, resumed)]
    assert strip[0] == strip[1]
    # Each client sends its top-10% update (8 bytes an entry) and SCAFFOLD's dense control change.
    n = straight.final_params.size
    assert straight.rows[-1]["bytes_up"] == straight.rows[-1]["num_clients"] * (
        8 * math.ceil(0.1 * n) + 4 * n
    )
