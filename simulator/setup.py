"""Turning a config into the objects a run needs: dataset, partition, model spec."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from clients.data.datasets import Dataset, SyntheticClients, load_digits, make_synthetic
from clients.data.partition import (
    dirichlet_partition,
    holdout_split,
    iid_partition,
    natural_partition,
    shards_partition,
)
from clients.errors import DataError
from clients.models.spec import ModelSpec, build_spec
from clients.training import LocalTrainingConfig
from simulator.config import Config, DataConfig, ModelConfig

PURPOSE_PARTITION = 3
PURPOSE_HOLDOUT = 10


def build_population(data: DataConfig, seed: int) -> SyntheticClients | None:
    """The on-demand synthetic population, when clients' data are generated on workers."""
    if not data.generate_on_workers:
        return None
    s = data.synthetic
    return SyntheticClients(
        seed, s.alpha, s.beta, s.num_features, s.num_classes, s.samples_per_device, data.test_fraction
    )


def build_dataset(data: DataConfig, seed: int) -> Dataset:
    """The driver's dataset; with generated populations only the server test set is held."""
    population = build_population(data, seed)
    if population is not None:
        x_test, y_test = population.server_test_set(data.num_clients)
        empty_x = np.zeros((0, population.num_features), np.float32)
        return Dataset(
            "synthetic_generated", empty_x, np.zeros(0, np.int64), x_test, y_test,
            population.num_classes, (population.num_features,), None,
        )  # fmt: skip
    if data.dataset == "digits":
        return load_digits(seed=seed, test_fraction=data.test_fraction)
    if data.dataset != "synthetic":
        return _file_dataset(data)
    s = data.synthetic
    return make_synthetic(
        alpha=s.alpha,
        beta=s.beta,
        num_devices=data.num_clients,
        seed=seed,
        num_features=s.num_features,
        num_classes=s.num_classes,
        samples_per_device=s.samples_per_device,
        test_fraction=data.test_fraction,
    )


def _file_dataset(data: DataConfig) -> Dataset:
    """A dataset read from ``data.root``; LEAF data keeps its first ``num_clients``
    writers / roles when partitioned naturally."""
    from clients.data import leaf, vision

    root = Path(data.root).expanduser()
    if data.dataset in ("femnist", "shakespeare"):
        dataset = leaf.load_femnist(root) if data.dataset == "femnist" else leaf.load_shakespeare(root)
        return first_clients(dataset, data.num_clients, root) if data.partition == "natural" else dataset
    loaders = {
        "mnist": vision.load_mnist,
        "fashion_mnist": vision.load_fashion_mnist,
        "cifar10": vision.load_cifar10,
    }
    return loaders[data.dataset](root, data.download)


def first_clients(dataset: Dataset, count: int, root: Path) -> Dataset:
    """The rows of natural clients 0..count-1 (train and test)."""
    available = len(np.unique(dataset.train_owner))  # loaders index training users first
    if count > available:
        raise DataError(
            f"data.num_clients={count}, but {dataset.name} under {root} has {available} clients "
            "with training data; lower data.num_clients"
        )
    train = dataset.train_owner < count
    test = dataset.test_owner < count if dataset.test_owner is not None else slice(None)
    return dataclasses.replace(
        dataset,
        x_train=np.ascontiguousarray(dataset.x_train[train]),
        y_train=np.ascontiguousarray(dataset.y_train[train]),
        x_test=np.ascontiguousarray(dataset.x_test[test]),
        y_test=np.ascontiguousarray(dataset.y_test[test]),
        train_owner=np.ascontiguousarray(dataset.train_owner[train]),
        test_owner=None if dataset.test_owner is None else np.ascontiguousarray(dataset.test_owner[test]),
    )


def build_partition(dataset: Dataset, data: DataConfig, seed: int) -> list[np.ndarray]:
    """Each client's training-sample indices, seeded by (seed, partition purpose)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, PURPOSE_PARTITION]))
    labels = dataset.y_train
    if data.partition == "iid":
        return iid_partition(len(labels), data.num_clients, rng)
    if data.generate_on_workers:
        return []  # no shards: each worker generates a client's rows when it trains it
    if data.partition == "dirichlet":
        return dirichlet_partition(labels, data.num_clients, data.alpha, rng, data.min_samples_per_client)
    if data.partition == "shards":
        return shards_partition(labels, data.num_clients, data.shards_per_client, rng)
    return natural_partition(dataset.train_owner, data.num_clients)


@dataclasses.dataclass(frozen=True)
class ClientSplits:
    """Each client's training rows and, with federated evaluation, its held-out rows:
    indices into the training arrays, or into the test arrays (``held_out_in_test``)
    when the dataset's natural clients come with their own test rows (LEAF)."""

    train: list[np.ndarray]
    held_out: list[np.ndarray] | None = None
    held_out_in_test: bool = False


def client_splits(dataset: Dataset, cfg: Config) -> ClientSplits:
    """The partition, and the rows each client evaluates on when federated evaluation is on.
    Generated populations hold their per-device test rows already."""
    parts = build_partition(dataset, cfg.data, cfg.seed)
    fe = cfg.server.federated_eval
    if fe.every == 0 or cfg.data.generate_on_workers:
        return ClientSplits(parts)
    if cfg.data.partition == "natural" and dataset.test_owner is not None:
        held_out = natural_partition(dataset.test_owner, cfg.data.num_clients, allow_empty=True)
        return ClientSplits(parts, held_out, held_out_in_test=True)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, PURPOSE_HOLDOUT]))
    return ClientSplits(*holdout_split(parts, fe.holdout, rng))


def build_model_spec(model: ModelConfig, dataset: Dataset) -> ModelSpec:
    return build_spec(
        model.name,
        dataset.input_shape,
        dataset.num_classes,
        hidden=model.hidden,
        activation=model.activation,
        conv_channels=model.conv_channels,
        fc_width=model.fc_width,
        residual=model.residual,
        dropout=model.dropout,
        embedding_dim=model.embedding_dim,
        lstm_hidden=model.lstm_hidden,
        lstm_layers=model.lstm_layers,
    )


def local_training(cfg: Config) -> LocalTrainingConfig:
    c = cfg.client
    return LocalTrainingConfig(c.lr, c.momentum, c.weight_decay, c.epochs, c.batch_size, c.optimizer)
