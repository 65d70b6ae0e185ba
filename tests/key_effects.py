"""Every config key and what changing it must do to a run, for tests/test_wiring.py and
tests/test_key_effects.py.

A row names a key, the context it acts in (overrides on top of a tiny base run), a
value other than the context's, and the effect that value must have:

- ``trains``: the final model differs (the key shapes training);
- ``rounding``: the same training in another float32 order; the models differ, but only
  within ROUNDING_ATOL;
- ``reports``: the model is bit-identical and the metric ``observe`` differs;
- ``none``: the model, the training losses and the reported test accuracy are bit-identical.

A key of ``fedsim validate``'s output without a row fails both tests.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from clients.data.leaf import ALL_LETTERS

EFFECTS = ("trains", "rounding", "reports", "none")
# Keys that give a run workers of another shape or count: run last, so that the warm
# workers of the base shape serve every other run.
WORKER_KEYS = ("runtime.workers", "runtime.cpus_per_worker", "runtime.gpus_per_worker", "model.device")
# Float32 sums in another order (another engine's kernels, other reduction groups): after
# two short rounds of a small MLP whose weights are O(0.1), the models agree to ~1e-6;
# 1e-4 leaves room without hiding a real change (one SGD step moves weights by ~1e-2).
ROUNDING_ATOL = 1e-4

# A seconds-long run: 8 digit clients, 4 a round, 2 rounds, an 8-unit MLP, one worker.
BASE = {
    "name": "keys",
    "rounds": 2,
    "data.num_clients": 8,
    "data.synthetic.samples_per_device": 40,  # read only by the synthetic contexts
    "model.hidden": [8],
    "client.epochs": 1,
    "client.lr": 0.05,
    "server.clients_per_round": 4,
    "server.clipping.norm": 0.5,  # below most updates' norms (~0.6-0.9), once clipping is on
    "runtime.workers": 1,
    "runtime.cpus_per_worker": 1.0,
    "runtime.reduction_groups": 2,
}

# Oort over the devices of capacity_a.jsonl (all online) for 3 rounds: enough for both
# exploration and exploitation to choose among several clients (the "oort" context).
OORT = {"server.selection": "oort", "client.system.trace.capacity": "{traces}/capacity_a.jsonl", "rounds": 3}

CONTEXTS: dict[str, dict[str, Any]] = {
    "base": {},
    "synthetic": {"data.dataset": "synthetic"},
    "synthetic_natural": {"data.dataset": "synthetic", "data.partition": "natural"},
    "shards": {"data.partition": "shards"},
    "femnist": {
        "data.dataset": "femnist", "data.root": "{leaf_a}", "data.partition": "natural",
        "data.num_clients": 6, "server.clients_per_round": 3,
    },
    "shakespeare": {
        "data.dataset": "shakespeare", "data.root": "{leaf_a}", "data.partition": "natural",
        "data.num_clients": 4, "server.clients_per_round": 2, "model.name": "charlstm",
        "model.embedding_dim": 2, "model.lstm_hidden": 4, "model.lstm_layers": 1,
    },
    # Users' own data: a CSV folder (features f0..f3, two label and two writer columns),
    # and arrays from code (loaders below).
    "csv": {"data.dataset": "csv", "data.root": "{csv}", "data.features": ["f0", "f1", "f2", "f3"]},
    "csv_natural": {
        "data.dataset": "csv", "data.root": "{csv}", "data.features": ["f0", "f1", "f2", "f3"],
        "data.client_column": "writer", "data.partition": "natural", "data.num_clients": 6,
        "server.clients_per_round": 3,
    },
    # Regression needs no class labels to split by: iid clients.
    "csv_iid": {
        "data.dataset": "csv", "data.root": "{csv}", "data.features": ["f0", "f1", "f2", "f3"],
        "data.partition": "iid",
    },
    "csv_either": {
        "data.dataset": "csv", "data.root": "{csv}", "data.features": ["f0", "f1", "f2", "f3"],
        "data.partition": "iid", "model.loss": "tests.regression_models:either",
    },
    "arrays": {"data.dataset": "arrays", "data.loader": "tests.key_effects:tiny_arrays"},
    "augment_crop": {"data.augment": "crop"},
    "mlp2": {"model.hidden": [8, 8]},
    "batchnorm": {"model.batchnorm": True, "model.hidden": [8, 8]},
    # Users' own models (tests/module_models.py): a small MLP, and one with batch norm.
    "module": {"model.name": "module", "model.factory": "tests.module_models:small_net"},
    "module_bn": {"model.name": "module", "model.factory": "tests.module_models:BatchNormNet"},
    "cnn": {"model.name": "cnn", "model.conv_channels": [2, 2], "model.fc_width": 8},
    "fedsgd": {"server.update": "gradients", "server.lr": 0.5, "client.batch_size": 20},
    # 3 of the 8 clients sampled in two rounds beat the deadline: speeds and deadlines
    # decide who counts.
    "system": {"client.system.speed_sigma": 1.0, "client.system.deadline": 0.2},
    # Two of the four clients a round straggle: each trains 1 or 2 of the 3 epochs.
    "stragglers": {"client.epochs": 3, "client.system.stragglers": 0.5},
    "momentum": {"server.optimizer": "momentum"},
    "adam": {"server.optimizer": "adam", "server.lr": 0.01},
    "trimmed": {"server.aggregator": "trimmed_mean"},
    "multi_krum": {"server.aggregator": "multi_krum", "server.clients_per_round": 6, "server.krum_m": 2},
    "fixed_clip": {"server.clipping.kind": "fixed"},
    "adaptive_clip": {"server.clipping.kind": "adaptive"},
    "dp": {
        "server.clipping.kind": "fixed", "server.privacy.noise_multiplier": 1.0,
        "server.weighting": "uniform",
    },
    "sign_flip": {"server.attack.kind": "sign_flip", "server.attack.fraction": 0.5},
    "gaussian": {"server.attack.kind": "gaussian", "server.attack.fraction": 0.5},
    # Three rounds: error feedback acts when a client trains again.
    "topk": {"server.compression.method": "topk", "server.compression.fraction": 0.1, "rounds": 3},
    "pruning": {
        "server.pruning.method": "magnitude", "server.pruning.start_round": 1,
        "server.pruning.end_round": 3, "server.pruning.every": 1, "server.pruning.sparsity": 0.5,
        "rounds": 3,
    },
    "fedeval": {"server.federated_eval.every": 1},
    # Lognormal speeds, 2 arrivals a step, 3 steps: some updates arrive a step or two stale.
    "async": {
        "server.mode": "async", "client.system.speed_sigma": 1.0, "server.async.concurrency": 4,
        "server.async.buffer_size": 2, "rounds": 3,
    },
    "async_hinge": {
        "server.mode": "async", "client.system.speed_sigma": 1.0, "server.async.concurrency": 4,
        "server.async.buffer_size": 1, "server.async.staleness": "hinge", "server.async.staleness_b": 0,
        "rounds": 4,
    },
    # FedAsync: the same clients, each arrival mixed into the model as it comes.
    "fedasync": {
        "server.mode": "async", "client.system.speed_sigma": 1.0, "server.async.concurrency": 4,
        "server.async.rule": "fedasync", "rounds": 3,
    },
    "fedper": {"client.personalization.method": "fedper"},
    "fedrep": {"client.personalization.method": "fedrep"},
    "ditto": {"client.personalization.method": "ditto", "server.federated_eval.every": 1},
    "mlflow": {"runtime.mlflow": "file://{tmp}/mlruns"},
    # Devices from traces (write_trace_files): clients 1-6 are online and all 6 selected; the
    # first 4 back count (3, 4, 5 and 6: trips of 0.2-1.1 s of compute and link time).
    "traces": {
        "client.system.trace.capacity": "{traces}/capacity_a.jsonl",
        "client.system.trace.availability": "{traces}/availability_a.jsonl",
        "client.system.over_selection": 0.5,
    },
    # Oort over traced devices, 3 rounds: 4 explored in round 1; 1 exploited of those and 3
    # explored in round 2; 3 exploited of 7 and the last one explored in round 3.
    "oort": OORT,
    # The pacer every round, 20 points a step: T's percentile is 50 in round 2, back to 30 in 3.
    "oort_pacer": {**OORT, "server.oort.pacer_step": 1, "server.oort.pacer_delta": 20.0},
    # Exploration halves each round: floored at exploration_min (0.3) from round 2.
    "oort_decay": {**OORT, "server.oort.exploration_decay": 0.5},
    # Clients that reported once are blacklisted, at most 30% of them (2).
    "oort_blacklist": {**OORT, "server.oort.blacklist_rounds": 0},
    # d = twice the 4 selected: all 8 clients are candidates, the 4 of highest loss take part.
    "power_of_choice": {"server.selection": "power_of_choice"},
}  # fmt: skip


@dataclass(frozen=True)
class Row:
    key: str
    value: Any
    effect: str
    context: str = "base"
    observe: str | None = None  # for "reports": the metric that must differ
    why: str = ""  # for rows whose effect may surprise

    def overrides(self, paths: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the context's overrides, the same with this row's value), paths filled in."""
        context = _fill({**BASE, **CONTEXTS[self.context]}, paths)
        return context, {**context, self.key: _fill_value(self.value, paths)}


def _fill(overrides: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    return {k: _fill_value(v, paths) for k, v in overrides.items()}


def _fill_value(value: Any, paths: dict[str, str]) -> Any:
    return value.format(**paths) if isinstance(value, str) and "{" in value else value


ROWS = [
    Row("name", "other", "none"),
    Row("seed", 1, "trains"),
    Row("rounds", 3, "trains"),
    # data
    Row("data.dataset", "synthetic", "trains"),
    Row("data.root", "{leaf_b}", "trains", "femnist"),
    Row("data.download", False, "none", "femnist", why="it only fetches missing MNIST/CIFAR files"),
    Row("data.verify", False, "none", "femnist", why="it only checks MNIST/CIFAR files' md5s"),
    Row("data.num_clients", 10, "trains"),
    Row("data.partition", "iid", "trains"),
    Row("data.alpha", 0.1, "trains"),
    Row("data.shards_per_client", 3, "trains", "shards"),
    Row("data.min_samples_per_client", 100, "trains", why="forces Dirichlet redraws"),
    Row("data.test_fraction", 0.3, "trains"),
    Row("data.generate_on_workers", True, "trains", "synthetic_natural"),
    Row(
        "data.synthetic.alpha", 3.0, "none", "synthetic",
        why="Li et al.'s generator adds u_k ~ N(0, α²) to every logit alike: the labels do not move",
    ),
    Row("data.synthetic.beta", 3.0, "trains", "synthetic"),
    Row("data.synthetic.num_features", 30, "trains", "synthetic"),
    Row("data.synthetic.num_classes", 5, "trains", "synthetic"),
    Row("data.synthetic.samples_per_device", 30, "trains", "synthetic"),
    Row("data.loader", "tests.key_effects:other_tiny_arrays", "trains", "arrays"),
    Row("data.features", ["f0", "f1"], "trains", "csv"),
    Row("data.label", "label2", "trains", "csv"),
    Row("data.client_column", "writer2", "trains", "csv_natural"),
    Row("data.normalize", "standard", "trains"),
    Row("data.augment", "flip", "trains"),
    Row("data.crop_padding", 2, "trains", "augment_crop"),
    # model
    Row("model.name", "logreg", "trains"),
    Row("model.engine", "numpy", "rounding"),
    Row("model.hidden", [9], "trains"),
    Row("model.activation", "tanh", "trains"),
    Row("model.residual", True, "trains", "mlp2"),
    Row("model.dropout", 0.2, "trains"),
    Row("model.conv_channels", [2, 3], "trains", "cnn"),
    Row("model.fc_width", 9, "trains", "cnn"),
    Row("model.embedding_dim", 3, "trains", "shakespeare"),
    Row("model.lstm_hidden", 5, "trains", "shakespeare"),
    Row("model.lstm_layers", 2, "trains", "shakespeare"),
    Row("model.device", "cpu", "none", why="auto is the host without a GPU"),
    Row("model.loss", "mse", "trains", "csv_iid", why="the class ids become float targets of one output"),
    Row("model.task", "regression", "trains", "csv_either"),
    Row("model.factory", "tests.module_models:BatchNormNet", "trains", "module"),
    Row("model.kwargs", {"width": 8}, "trains", "module"),
    Row(
        "model.buffers", "local", "reports", "module_bn", observe="test_loss",
        why="batch norm trains on each batch's own statistics; its running ones act in evaluation",
    ),
    # client
    Row("client.optimizer", "adam", "trains"),
    Row("client.lr", 0.1, "trains"),
    Row("client.momentum", 0.5, "trains"),
    Row("client.weight_decay", 0.01, "trains"),
    Row("client.epochs", 2, "trains"),
    Row("client.batch_size", 5, "trains"),
    Row("client.track_gradients", True, "reports", observe="gradient_flow"),
    Row("client.algorithm", "scaffold", "trains"),
    Row("client.prox_mu", 1.0, "trains"),
    Row("client.max_grad_norm", 0.1, "trains"),
    Row("client.local_steps", 2, "trains", "fedsgd"),
    Row("client.system.speed", 500.0, "trains", "system"),
    Row("client.system.speed_sigma", 2.0, "trains", "system"),
    Row(
        "client.system.speed_sigma", 2.0, "none",
        why="without a deadline or over-selection speeds decide nothing: FedAvg's sample trains",
    ),
    Row("client.system.availability", 0.5, "trains"),
    Row("client.system.dropout", 0.3, "trains"),
    Row("client.system.deadline", 0.3, "trains", "system"),
    Row("client.system.over_selection", 0.5, "trains", "system"),
    Row("client.system.stragglers", 0.0, "trains", "stragglers"),
    Row("client.system.drop_stragglers", True, "trains", "stragglers"),
    Row("client.system.partial_work", True, "trains", "system", why="the clients past the deadline count"),
    # server
    Row("server.clients_per_round", 5, "trains"),
    Row("server.lr", 0.5, "trains"),
    Row("server.update", "gradients", "trains"),
    Row("server.optimizer", "adam", "trains"),
    Row("server.momentum", 0.5, "trains", "momentum"),
    Row("server.beta1", 0.5, "trains", "adam"),
    Row("server.beta2", 0.5, "trains", "adam"),
    Row("server.tau", 0.01, "trains", "adam"),
    Row("server.bias_correction", True, "trains", "adam"),
    Row("server.aggregator", "median", "trains"),
    Row("server.weighting", "uniform", "trains"),
    Row("server.trim_beta", 0.3, "trains", "trimmed"),
    Row("server.krum_f", 0, "trains", "multi_krum"),
    Row("server.krum_m", 3, "trains", "multi_krum"),
    Row("server.clipping.kind", "fixed", "trains"),
    Row("server.clipping.norm", 0.1, "trains", "fixed_clip"),
    Row("server.clipping.initial_norm", 0.5, "trains", "adaptive_clip"),
    Row("server.clipping.target_quantile", 0.9, "trains", "adaptive_clip"),
    Row("server.clipping.learning_rate", 1.0, "trains", "adaptive_clip"),
    Row("server.privacy.noise_multiplier", 0.5, "trains", "dp"),
    Row("server.privacy.delta", 1e-3, "reports", "dp", observe="epsilon"),
    Row("server.privacy.sampling", "poisson", "trains", "dp"),
    Row("server.attack.kind", "sign_flip", "trains"),
    Row("server.attack.fraction", 0.2, "trains", "sign_flip"),
    Row("server.attack.scale", 2.0, "trains", "sign_flip"),
    Row("server.attack.noise_std", 0.1, "trains", "gaussian"),
    Row("server.compression.method", "topk", "trains"),
    Row("server.compression.fraction", 0.3, "trains", "topk"),
    Row("server.compression.error_feedback", False, "trains", "topk"),
    Row("server.pruning.method", "random", "trains", "pruning"),
    Row("server.pruning.scope", "layer", "trains", "pruning"),
    Row("server.pruning.schedule", "one_shot", "trains", "pruning"),
    Row("server.pruning.initial_sparsity", 0.2, "trains", "pruning"),
    Row("server.pruning.sparsity", 0.7, "trains", "pruning"),
    Row("server.pruning.start_round", 2, "trains", "pruning"),
    Row("server.pruning.end_round", 2, "trains", "pruning"),
    Row("server.pruning.every", 2, "trains", "pruning"),
    Row(
        "server.stop_after_nonfinite_rounds", 1, "none",
        why="it only stops runs that learn nothing finite (tests/test_hostile_input.py)",
    ),
    Row(
        "server.stop_after_rejected_share", 1.0, "none",
        why="it only stops runs whose updates are mostly NaN/Inf (tests/test_hostile_input.py)",
    ),
    Row(
        "server.stop_after_loss_growth", None, "none",
        why="it only stops runs whose test loss explodes (tests/test_hostile_input.py); off (None) against"
        " the default 100, measuring the initial model's loss must not touch training",
    ),
    Row(
        "server.stop_after_loss_growth_evals", 1, "none",
        why="it only stops runs whose test loss explodes (tests/test_hostile_input.py)",
    ),
    Row("server.eval_every", 2, "reports", observe="test_accuracy"),
    Row("server.eval_batch_size", 7, "none"),
    Row(
        "server.eval_batch_size", 7, "none", "batchnorm",
        why="batch norm evaluates with the whole test set's statistics, gathered in batches",
    ),
    Row("server.eval_batch_size", 7, "none", "module_bn", why="running statistics: evaluation is per row"),
    Row("server.federated_eval.every", 1, "trains", why="clients hold out part of their shard"),
    Row("server.federated_eval.fraction", 0.5, "reports", "fedeval", observe="federated_clients"),
    Row("server.federated_eval.holdout", 0.4, "trains", "fedeval"),
    Row("server.federated_eval.finetune_steps", 2, "reports", "fedeval", observe="finetuned_loss"),
    Row("client.personalization.method", "fedper", "trains"),
    Row("client.personalization.personal_layers", ["fc1"], "trains", "fedper"),
    Row("client.personalization.head_epochs", 2, "trains", "fedrep"),
    Row(
        "client.personalization.ditto_lambda", 1.0, "reports", "ditto", observe="personal_loss",
        why="Ditto's global model is FedAvg's; λ shapes the personal models only",
    ),
    Row("client.personalization.ditto_epochs", 2, "reports", "ditto", observe="personal_loss"),
    Row("model.batchnorm", True, "trains"),
    Row("server.mode", "async", "trains", why="digits shards differ in size: updates arrive stale"),
    Row("server.async.concurrency", 6, "trains", "async"),
    Row("server.async.buffer_size", 3, "trains", "async"),
    Row("server.async.staleness", "constant", "trains", "async"),
    Row("server.async.staleness_a", 2.0, "trains", "async"),
    Row("server.async.staleness_b", 2, "trains", "async_hinge"),
    Row("server.async.max_staleness", 0, "trains", "async"),
    Row("server.async.rule", "fedasync", "trains", "async_hinge", why="mixes x <- (1 - a_t) x + a_t x_new"),
    Row("server.async.mixing", 0.9, "trains", "fedasync"),
    Row("server.async.staleness", "constant", "trains", "fedasync", why="a_t = mixing x s(staleness + 1)"),
    # devices and client selection
    Row("client.system.trace.capacity", "{traces}/capacity_b.jsonl", "trains", "traces"),
    Row("client.system.trace.availability", "{traces}/availability_b.jsonl", "trains", "traces"),
    Row(
        "client.system.trace.mapping", "fedscale", "trains", "traces",
        why="client n takes profile n + 1: other devices, and clients 5 and 6 offline",
    ),
    Row(
        "client.system.trace.backward_factor", 1.0, "trains", "traces",
        why="compute takes a third of the time: client 1 overtakes client 5, whose trip is mostly link",
    ),
    Row("server.selection", "oort", "trains"),
    Row("server.selection", "power_of_choice", "trains", "oort"),
    Row("server.oort.exploration", 0.5, "trains", "oort", why="round 2 exploits 3 clients, not 1"),
    Row("server.oort.exploration_decay", 0.5, "trains", "oort", why="round 2 exploits 3 clients, not 1"),
    Row(
        "server.oort.exploration_min", 0.6, "trains", "oort_decay",
        why="exploration floored at 0.6: rounds 2 and 3 exploit 2 clients, not 3",
    ),
    Row("server.oort.alpha", 0.0, "trains", "oort", why="no penalty for clients slower than T"),
    Row(
        "server.oort.pacer_step", 2, "trains", "oort_pacer",
        why="the first window is compared in round 4: T stays at the 30th percentile in round 2",
    ),
    Row(
        "server.oort.pacer_delta", 5.0, "trains", "oort_pacer",
        why="the 35th percentile of 8 durations is the 30th's (the 3rd smallest); the 50th is the 5th",
    ),
    Row(
        "server.oort.cutoff_utility", 0.9, "trains", "oort",
        why="exploitation admits scores down to a tenth of the (m+1)-th best, not 95% of it",
    ),
    Row(
        "server.oort.sample_window", 1.0, "trains", "oort",
        why="exploration draws from as many clients as it takes: round 1 takes the 4 best registered",
    ),
    Row("server.oort.round_threshold", 100.0, "trains", "oort", why="T is infinite: no system penalty"),
    Row(
        "server.oort.clip_bound", 0.0, "trains", "oort",
        why="every utility is clipped to the smallest: staleness and speed alone rank the explored",
    ),
    Row(
        "server.oort.blacklist_rounds", 0, "trains", "oort",
        why="from round 2 the 2 clients first by reports (then by id) are not exploited",
    ),
    Row(
        "server.oort.blacklist_max_share", 0.5, "trains", "oort_blacklist",
        why="round 2 blacklists all 4 explored clients and takes the 4 unexplored",
    ),
    Row(
        "server.power_of_choice.candidates", 5, "trains", "power_of_choice",
        why="5 candidates drawn by data size, not all 8, are ranked by loss",
    ),
    # runtime
    Row("runtime.workers", 2, "none"),
    Row("runtime.cpus_per_worker", 0.5, "none", why="one torch thread either way"),
    Row("runtime.gpus_per_worker", 0.5, "none", why="auto trains on the host when torch sees no GPU"),
    Row("runtime.reduction_groups", 1, "rounding"),
    Row("runtime.checkpoint_every", 1, "none"),
    Row("runtime.address", "{address}", "none", why="the run joins the Ray this process already runs"),
    Row(
        "runtime.py_modules", ["tests"], "none",
        why="it says where the workers find code, not what the code is",
    ),
    Row("runtime.out_dir", "{tmp}/elsewhere", "none"),
    Row("runtime.tensorboard", True, "none"),
    Row("runtime.mlflow", "file://{tmp}/mlruns", "none"),
    Row("runtime.mlflow_experiment", "other", "none", "mlflow"),
]  # fmt: skip


def validate_keys(resolved_yaml: str) -> list[str]:
    """Every dotted leaf key of ``fedsim validate``'s output (the resolved config YAML)."""

    def leaves(node: dict, prefix: str) -> list[str]:
        keys = []
        for name, value in node.items():
            path = f"{prefix}{name}"
            # A section is a mapping of keys; an empty mapping is a value (model.kwargs: {}).
            keys += leaves(value, path + ".") if isinstance(value, dict) and value else [path]
        return keys

    return leaves(yaml.safe_load(resolved_yaml), "")


def write_leaf_roots(tmp: Path) -> dict[str, str]:
    """Two small LEAF roots (FEMNIST and Shakespeare JSON each) with different seeded
    contents: {"leaf_a": ..., "leaf_b": ...}."""
    roots = {}
    for name, seed in (("leaf_a", 1), ("leaf_b", 2)):
        root, rng = tmp / name, random.Random(seed)
        for split, count in (("train", 12), ("test", 3)):
            femnist = {
                f"w{u}": {
                    "x": [[round(rng.random(), 3) for _ in range(784)] for _ in range(count)],
                    "y": [rng.randrange(62) for _ in range(count)],
                }
                for u in range(6)
            }
            _write_shard(root / "femnist" / "data" / split / "0.json", femnist)
            plays = {
                f"ROLE_{u}": {
                    "x": ["".join(rng.choice(ALL_LETTERS) for _ in range(80)) for _ in range(count)],
                    "y": [rng.choice(ALL_LETTERS) for _ in range(count)],
                }
                for u in range(4)
            }
            _write_shard(root / "shakespeare" / "data" / split / "0.json", plays)
        roots[name] = str(root)
    return roots


def write_data_roots(tmp: Path) -> dict[str, str]:
    """A CSV folder (train.csv, test.csv) for the users' data contexts: {"csv": ...}."""
    root = tmp / "csv"
    root.mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", 120, 1), ("test", 30, 2)):
        x, y = _tiny(count, seed)
        rows = ["f0,f1,f2,f3,label,label2,writer,writer2"]
        rows += [
            ",".join(
                [*(f"{v:.4f}" for v in row), str(label), str((label + i) % 3), f"w{i % 6}", f"v{i % 7 % 6}"]
            )
            for i, (row, label) in enumerate(zip(x, y, strict=True))
        ]
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return {"csv": str(root)}


# Eight device profiles (ms of inference per sample, kbps) for the eight clients. A trip
# moves 4,880 bytes (39 kbit: the 64-8-10 MLP down and its update up), so links take
# 0.04-0.8 s and computing a client's 95-326 samples 3x 0.25-4 ms each 0.07-3.9 s: both
# matter, and no device is fastest at both.
CAPACITY_A = ((0.5, 50.0), (1.0, 500.0), (2.0, 100.0), (0.5, 1000.0),
              (4.0, 500.0), (1.0, 60.0), (2.0, 1000.0), (0.25, 80.0))  # fmt: skip
# One window a period of 10 simulated seconds; the "traces" runs last under 3 s, so the
# profiles whose window opens at 5 s are offline throughout: 6 of the 8 clients are online.
ALWAYS, LATER = ([0.0], [10.0]), ([5.0], [10.0])


def write_trace_files(tmp: Path) -> dict[str, str]:
    """fedsim JSON Lines traces for the trace contexts, {"traces": folder}: capacity_a and
    capacity_b (the same devices in reverse profile order), availability_a (profiles 6, 7
    offline) and availability_b (profiles 0, 1 offline)."""
    root = tmp / "traces"
    root.mkdir(parents=True, exist_ok=True)
    for name, devices in (("a", CAPACITY_A), ("b", CAPACITY_A[::-1])):
        lines = [
            {"id": i, "compute_ms_per_sample": ms, "bandwidth_kbps": kbps}
            for i, (ms, kbps) in enumerate(devices)
        ]
        _write_lines(root / f"capacity_{name}.jsonl", lines)
    for name, offline in (("a", {6, 7}), ("b", {0, 1})):
        windows = [LATER if i in offline else ALWAYS for i in range(len(CAPACITY_A))]
        lines = [
            {"id": i, "active": active, "inactive": inactive, "period": 10.0}
            for i, (active, inactive) in enumerate(windows)
        ]
        _write_lines(root / f"availability_{name}.jsonl", lines)
    return {"traces": str(root)}


def _write_lines(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def _tiny(count: int, seed: int) -> tuple:
    """x (count, 4) float32 with the class in its first features, y (count,) in 0..2."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.arange(count) % 3
    x = rng.normal(0, 0.5, (count, 4)).astype(np.float32)
    x[np.arange(count), y] += 1.5
    return x, y


def tiny_arrays() -> dict:
    """data.loader of the "arrays" context: a held-out test split of its own."""
    (x, y), (xt, yt) = _tiny(120, 3), _tiny(30, 4)
    return {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt}


def other_tiny_arrays() -> tuple:
    (x, y), (xt, yt) = _tiny(120, 5), _tiny(30, 6)
    return x, y, xt, yt


def _write_shard(path: Path, user_data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = [len(rows["y"]) for rows in user_data.values()]
    path.write_text(json.dumps({"users": list(user_data), "num_samples": counts, "user_data": user_data}))
