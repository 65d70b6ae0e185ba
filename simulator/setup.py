"""Turning a config into the objects a run needs: dataset, partition, model spec."""

from __future__ import annotations

import numpy as np

from clients.data.datasets import Dataset, SyntheticClients, load_digits, make_synthetic
from clients.data.partition import (
    dirichlet_partition,
    holdout_split,
    iid_partition,
    natural_partition,
    shards_partition,
)
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


def federated_holdout(
    parts: list[np.ndarray], cfg: Config
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """(training parts, held-out parts) when federated evaluation is on, else (parts, None).
    Generated populations hold their per-device test rows already."""
    fe = cfg.server.federated_eval
    if fe.every == 0 or cfg.data.generate_on_workers:
        return parts, None
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, PURPOSE_HOLDOUT]))
    return holdout_split(parts, fe.holdout, rng)


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
