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
