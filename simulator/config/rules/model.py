"""The model section's rules: architecture settings, a module model's keys, whether the
model fits the dataset, the loss and task (and what a regression run cannot do), and
batch norm's batches."""

from __future__ import annotations

from clients.data.formats import USER_DATASETS
from clients.errors import ConfigError
from clients.models.spec import BUILT_IN_LOSSES, MODULE_MODEL, Architecture, ModelSpec, build_spec
from clients.user_code import check_target
from simulator.config.rules import require
from simulator.config.schema import (
    BUILT_IN_DATASETS,
    IMAGE_DATASETS,
    IMAGE_USER_DATASETS,
    TEXT_DATASETS,
    Config,
    DataConfig,
    ModelConfig,
)
from simulator.config.yaml_input import show


def check_model(cfg: Config) -> None:
    """The architecture's settings, then whether it fits the data, then loss and task."""
    _check_architecture(cfg.model)
    _check_fits_data(cfg.model, cfg.data)
    _check_task(cfg)


def _check_architecture(m: ModelConfig) -> None:
    _check_module(m)
    if m.batchnorm and (m.name != "mlp" or m.residual):
        raise ConfigError(
            f"model.batchnorm: true is for the plain mlp; model.name is {show(m.name)}"
            f"{' with model.residual' if m.residual else ''}"
        )
    require(all(h >= 1 for h in m.hidden), "model.hidden", m.hidden, "a list of widths >= 1")
    require(
        len(m.conv_channels) == 2 and all(ch >= 1 for ch in m.conv_channels),
        "model.conv_channels",
        m.conv_channels,
        "two channel counts >= 1",
    )
    require(m.fc_width >= 1, "model.fc_width", m.fc_width, ">= 1")
    require(0 <= m.dropout < 1, "model.dropout", m.dropout, "in [0, 1)")
    require(
        not m.residual or len(set(m.hidden)) <= 1,
        "model.hidden",
        m.hidden,
        "equal widths when model.residual is true",
    )
    for key in ("embedding_dim", "lstm_hidden", "lstm_layers"):
        require(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), ">= 1")


def _check_module(m: ModelConfig) -> None:
    """A module model's keys, checked without importing anything: the factory's syntax."""
    if m.name != MODULE_MODEL:
        for key in ("factory", "kwargs"):
            if getattr(m, key):
                raise ConfigError(
                    f"model.{key}: {show(getattr(m, key))} is for model.name: module; "
                    f"model.name {show(m.name)} does not read it"
                )
        if m.buffers != "average":
            raise ConfigError(
                f"model.buffers: {show(m.buffers)} acts on a module model's buffers; model.name "
                f"{show(m.name)} keeps none (its batch norm normalises by each batch's own statistics)"
            )
        return
    if m.factory is None:
        raise ConfigError("model.name: 'module' needs model.factory ('package.module:callable')")
    check_target(m.factory, "model.factory")
    if m.engine != "torch":
        raise ConfigError(
            f"model.engine: {show(m.engine)} cannot run a module model (a torch nn.Module); use torch"
        )


def layer_spec(m: ModelConfig) -> ModelSpec:
    """The built-in architecture's layers from the config alone, before any data is read:
    the dataset's input shape and class count set widths, never layer names or kinds, so
    stand-ins serve (an 8x8 one-channel image, 2 classes)."""
    return build_spec(m.name, (1, 8, 8), 2, Architecture.of(m))


def check_batch_norm_batches(cfg: Config) -> None:
    """Batch norm trains on each batch's own statistics: a batch of one row has none. (Its
    evaluation takes the whole evaluated set's, so any server.eval_batch_size serves.)"""
    m, c = cfg.model, cfg.client
    if m.batchnorm and m.hidden and c.batch_size < 2:
        raise ConfigError(
            f"client.batch_size: {c.batch_size} is not allowed with model.batchnorm: true; batch norm "
            "trains on a batch's own statistics and needs batches of at least 2 rows"
        )


def _check_fits_data(m: ModelConfig, d: DataConfig) -> None:
    if m.name in ("cnn", "resnet") and d.dataset not in (*IMAGE_DATASETS, *IMAGE_USER_DATASETS):
        raise ConfigError(
            f"model.name: {m.name!r} needs image inputs; data.dataset {d.dataset!r} is not an image "
            f"dataset (image datasets: {', '.join(IMAGE_DATASETS)})"
        )
    if m.name != MODULE_MODEL and (m.name == "charlstm") != (d.dataset in TEXT_DATASETS):
        raise ConfigError(
            f"model.name: {m.name!r} does not fit data.dataset {d.dataset!r}: text datasets "
            f"({', '.join(TEXT_DATASETS)}) need model.name: charlstm, and charlstm needs one of them"
        )


def model_task(m: ModelConfig) -> str | None:
    """classification or regression as the config says; None when the labels decide
    (a callable loss with model.task auto: regression when they are floats)."""
    if m.task != "auto":
        return m.task
    return {"cross_entropy": "classification", "mse": "regression"}.get(m.loss)


def _check_task(cfg: Config) -> None:
    """model.loss and model.task, checked without importing a callable loss; regression is
    refused where something needs class labels."""
    m, d = cfg.model, cfg.data
    if m.loss not in BUILT_IN_LOSSES:
        if ":" not in m.loss:  # most likely a misspelt built-in (MSE, crossentropy)
            raise ConfigError(
                f"model.loss: {show(m.loss)} is not a loss; give {' or '.join(BUILT_IN_LOSSES)}, "
                "or your own as 'package.module:callable'"
            )
        check_target(m.loss, "model.loss")
        if m.engine != "torch":
            raise ConfigError(
                f"model.loss: {show(m.loss)} is a torch callable; model.engine {show(m.engine)} "
                f"computes {' and '.join(BUILT_IN_LOSSES)} only: use one of them, or model.engine torch"
            )
    wanted = {"cross_entropy": "classification", "mse": "regression"}.get(m.loss)
    if wanted and m.task not in ("auto", wanted):
        raise ConfigError(
            f"model.task: {show(m.task)} does not go with model.loss {show(m.loss)}, which is for "
            f"{wanted}: set model.task {wanted} (or auto)"
        )
    if model_task(m) == "regression" and d.dataset in BUILT_IN_DATASETS:
        raise ConfigError(
            f"model.loss / model.task: regression needs float targets; data.dataset {show(d.dataset)} has "
            f"class labels (regression data: {', '.join(USER_DATASETS)})"
        )
    if model_task(m) == "regression":
        refuse_under_regression(cfg)


def refuse_under_regression(cfg: Config) -> None:
    """One ConfigError for a setting that needs class labels, in a regression run."""
    if cfg.data.partition == "dirichlet":
        raise ConfigError(
            "data.partition: 'dirichlet' draws each client's class proportions; a regression run has "
            "no classes: use iid, shards (sorted by target) or natural"
        )
    if cfg.server.attack.kind == "label_flip":
        raise ConfigError("server.attack.kind: 'label_flip' flips class labels; a regression run has none")
