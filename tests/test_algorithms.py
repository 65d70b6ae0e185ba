"""Each algorithm's own effect, measured on runs a user would start: a shipped YAML
config with overrides, through ``Simulation.from_yaml`` (never hand-built internals).
What is measured comes from the run's own files: metrics.jsonl rows and the global
model in each round's checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from clients.models.engines import build_model
from clients.streams import Stream
from clients.training import client_rng
from simulator import Simulation
from simulator.config.build import build_dataset, build_model_spec, build_partition
from simulator.config.loading import load_config
from tests.conftest import ROOT

CONFIGS = ROOT / "configs"
DEFAULT = CONFIGS / "default.yaml"
# One round of the default config on a small MLP, everything else left as a user has it.
ONE_ROUND = {"rounds": 1, "model.hidden": [32], "runtime.workers": 2, "runtime.cpus_per_worker": 1.0}


@pytest.fixture
def ray_tmp(ray_cluster, tmp_path: Path) -> Path:
    """A run folder, with the session's Ray up."""
    return tmp_path


def run(tmp_path: Path, name: str, overrides: dict, config: Path = DEFAULT):
    return Simulation.from_yaml(config, overrides, run_dir=tmp_path / name).run()


def global_model(run_dir: Path, round_: int) -> np.ndarray:
    """The global parameters after ``round_`` (0: the initial model), from its checkpoint."""
    return load_file(str(run_dir / "checkpoints" / f"round_{round_:06d}.safetensors"))["global_params"]


def first_step(history) -> np.ndarray:
    """What the server did to the model in round 1: w_1 - w_0, float64."""
    before, after = (global_model(history.run_dir, r).astype(np.float64) for r in (0, 1))
    return after - before


def test_fedprox_keeps_local_models_closer_to_the_global_one(ray_tmp):
    config, base = CONFIGS / "fedprox.yaml", {"rounds": 3, "server.eval_every": 3}
    norms = {}
    for mu in (0.0, 1.0, 10.0):
        history = run(ray_tmp, f"mu{mu:g}", {**base, "client.prox_mu": mu}, config)
        norms[mu] = [row["update_norm_mean"] for row in history.rows]  # mean ||w_local - w_t||
    # The proximal pull mu (w - w_t) shortens every round's local drift, more with a larger mu.
    for r in range(3):
        assert norms[10.0][r] < norms[1.0][r] < norms[0.0][r], norms
    assert norms[1.0][0] < 0.8 * norms[0.0][0], norms  # not a rounding-level difference


def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit(ray_tmp):
    # fedprox.yaml and fedprox_synthetic.yaml differ only in name (no effect) and mu.
    short = {"rounds": 2, "server.eval_every": 2}
    prox = run(ray_tmp, "prox0", {**short, "client.prox_mu": 0.0}, CONFIGS / "fedprox.yaml")
    fedavg = run(ray_tmp, "fedavg", short, CONFIGS / "fedprox_synthetic.yaml")
    assert prox.final_params.tobytes() == fedavg.final_params.tobytes()


def test_local_gradient_clipping_bounds_every_step(ray_tmp):
    base = {**ONE_ROUND, "data.partition": "iid", "client.epochs": 1, "client.batch_size": 10}
    clip, lr = 0.02, 0.1  # default.yaml's client.lr
    clipped = run(ray_tmp, "clipped", {**base, "client.max_grad_norm": clip}).rows[0]
    free = run(ray_tmp, "free", base).rows[0]
    # IID shards differ by at most one sample: the largest takes ceil(n / B) steps of length
    # at most lr * C, so no client's update is longer than steps * lr * C.
    steps = math.ceil(math.ceil(clipped["num_samples"] / clipped["num_clients"]) / 10)
    bound = steps * lr * clip
    assert clipped["update_norm_max"] <= bound * (1 + 1e-5)
    assert free["update_norm_max"] > 2 * bound  # the clip binds: without it steps are longer


def test_fixed_clipping_bounds_the_server_step(ray_tmp):
    norm = 0.05  # the unclipped step of this round is about 0.19 long
    clipped = run(
        ray_tmp, "clipped", {**ONE_ROUND, "server.clipping.kind": "fixed", "server.clipping.norm": norm}
    )
    free = run(ray_tmp, "free", ONE_ROUND)
    # With server lr 1 the step is a weighted mean of updates each clipped to norm C.
    assert np.linalg.norm(first_step(clipped)) <= norm * (1 + 1e-5)
    assert clipped.rows[0]["clipped_fraction"] > 0
    assert np.linalg.norm(first_step(free)) > norm


def test_dp_noise_on_the_model_has_the_calibrated_std(ray_tmp):
    z, clip, m = 1.5, 0.3, 10  # default.yaml samples m = 10 clients a round
    common = {**ONE_ROUND, "server.clipping.kind": "fixed", "server.clipping.norm": clip,
              "server.weighting": "uniform"}  # fmt: skip
    private = run(ray_tmp, "dp", {**common, "server.privacy.noise_multiplier": z})
    plain = run(ray_tmp, "plain", common)
    # Fixed sampling draws the same m clients; DP divides (sum + N(0, (zC)^2 I)) by m where
    # the plain run divides the sum by its m accepted clients: the gap is noise / m.
    assert private.rows[0]["rejected_updates"] == plain.rows[0]["rejected_updates"] == 0
    noise = first_step(private) - first_step(plain)
    expected = z * clip / m
    # n ~ 2,400 coordinates: the sample std is within ~1.5% of the true one (1 sigma); 6% is 4 sigma.
    assert np.std(noise) == pytest.approx(expected, rel=0.06)
    assert abs(np.mean(noise)) < 4 * expected / math.sqrt(noise.size)
    assert private.rows[0]["noise_std"] == pytest.approx(z * clip)


def test_topk_and_qsgd8_send_what_they_promise(ray_tmp):
    one_client = {**ONE_ROUND, "server.clients_per_round": 1}
    fraction = 0.05
    topk = run(ray_tmp, "topk", {**one_client, "server.compression.method": "topk",
                                 "server.compression.fraction": fraction})  # fmt: skip
    step = first_step(topk)
    k = math.ceil(fraction * step.size)
    assert np.count_nonzero(step) == k  # the one client's k largest coordinates, nothing else
    assert topk.rows[0]["bytes_up"] == 8 * k  # value + index per coordinate
    qsgd = run(ray_tmp, "qsgd8", {**one_client, "server.compression.method": "qsgd8"})
    values = np.sort(first_step(qsgd))
    # An 8-bit grid: at most 256 levels, each blurred only by float32 rounding (~1e-8 here).
    levels = 1 + np.count_nonzero(np.diff(values) > 1e-6)
    assert 2 < levels <= 256
    assert qsgd.rows[0]["bytes_up"] == step.size + 8


# FedSGD from every client of a Dirichlet split (unequal shards), server lr 1: the step is
# minus the aggregated gradient.
FEDSGD_ALL = {
    "rounds": 1, "data.num_clients": 6, "server.clients_per_round": 6, "model.name": "logreg",
    "server.update": "gradients", "server.lr": 1.0,
}  # fmt: skip


def client_gradients(run_dir: Path, overrides: dict, rows_seen) -> tuple[list[np.ndarray], list[int]]:
    """Each client's float64 mean-loss gradient at ``run_dir``'s initial model over the
    positions ``rows_seen(client_id, shard_size)`` of its shard, and its shard size n_k,
    computed here on the dataset and model the config builds."""
    cfg = load_config(DEFAULT, overrides)
    dataset = build_dataset(cfg.data, cfg.seed)
    model = build_model(build_model_spec(cfg.model, dataset), "torch")
    model.params[:] = global_model(run_dir, 0)
    gradients, sizes = [], []
    for client_id, shard in enumerate(build_partition(dataset, cfg.data, cfg.seed)):
        rows = shard[rows_seen(client_id, len(shard))]
        model.loss_and_grad(dataset.x_train[rows], dataset.y_train[rows])
        gradients.append(model.grad.astype(np.float64))
        sizes.append(len(shard))
    assert len(set(sizes)) > 1
    return gradients, sizes


def test_uniform_weighting_is_the_plain_mean_of_client_gradients(ray_tmp):
    """The step is the mean of the clients' own mean gradients with uniform weighting
    (SCAFFOLD's and DP-FedAvg's rule), and the union gradient with sample weighting (FedAvg's)."""
    overrides = {**FEDSGD_ALL, "client.batch_size": 2000}
    steps = {
        w: first_step(run(ray_tmp, w, {**overrides, "server.weighting": w})) for w in ("uniform", "samples")
    }
    gradients, sizes = client_gradients(ray_tmp / "uniform", overrides, lambda _, n: np.arange(n))
    # float32 gradients summed in another order: agreement to ~1e-7 of the step's size.
    np.testing.assert_allclose(-steps["uniform"], np.mean(gradients, axis=0), atol=1e-6)
    np.testing.assert_allclose(-steps["samples"], np.average(gradients, axis=0, weights=sizes), atol=1e-6)
    assert np.abs(steps["uniform"] - steps["samples"]).max() > 1e-3


def test_fedsgd_with_local_steps_weights_each_client_by_its_shard_size(ray_tmp):
    """McMahan et al. 2017's FedSGD, sum over k of (n_k / n) g_k, with client.local_steps: each
    g_k is the mean gradient over the 2 batches of 16 rows the client saw (the first 32 of its
    seeded order), and it weighs n_k, its shard size, not the 32 rows seen (which would be the
    plain mean here: every shard holds more than 32 rows)."""
    batch, steps = 16, 2
    overrides = {**FEDSGD_ALL, "client.batch_size": batch, "client.local_steps": steps}
    step = first_step(run(ray_tmp, "local_steps", overrides))

    def first_batches(client_id: int, shard_size: int) -> np.ndarray:
        order = client_rng(0, 1, client_id, Stream.DATA_ORDER).permutation(shard_size)
        return order[: batch * steps]

    gradients, sizes = client_gradients(ray_tmp / "local_steps", overrides, first_batches)
    assert min(sizes) > batch * steps
    # float32 gradients (of 2 batches, not 1 of 32) summed in another order: ~1e-7 of the step.
    np.testing.assert_allclose(-step, np.average(gradients, axis=0, weights=sizes), atol=1e-6)
    assert np.abs(step + np.mean(gradients, axis=0)).max() > 1e-3  # the weights matter here


def test_fedsgd_work_on_the_simulated_clock_ignores_epochs(ray_tmp):
    """FedSGD computes one gradient, over the shard or ``local_steps`` batches: client.epochs
    must not count in its simulated time, while FedAvg's time grows with epochs."""
    slow_clock = {"rounds": 2, "client.system.deadline": 1e6, "client.system.speed": 100.0}

    def seconds(config: Path, name: str, extra: dict) -> list[float]:
        rows = run(ray_tmp, name, {**slow_clock, **extra}, config).rows
        return [row["simulated_seconds"] for row in rows]

    fedsgd = CONFIGS / "fedsgd.yaml"
    one, five = (
        seconds(fedsgd, "sgd_e1", {"client.epochs": 1}),
        seconds(fedsgd, "sgd_e5", {"client.epochs": 5}),
    )
    assert one == five
    # One batch of 8 samples: the round lasts 8 / speed (some participant has 8 samples).
    steps = seconds(fedsgd, "sgd_steps", {"client.local_steps": 1, "client.batch_size": 8})
    assert steps == [8 / 100.0] * 2
    avg_one, avg_five = (
        seconds(DEFAULT, "avg_e1", {"client.epochs": 1}),
        seconds(DEFAULT, "avg_e5", {"client.epochs": 5}),
    )
    assert avg_five == pytest.approx([5 * s for s in avg_one])
