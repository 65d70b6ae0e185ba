"""Value rules that types cannot express, and cross-field rules: a Config is checked here."""

from __future__ import annotations

import dataclasses
import inspect
import math
import unicodedata
from typing import Any

from clients.data.formats import CODE_DATASET, TABLE_FORMATS, USER_DATASETS
from clients.errors import ConfigError
from clients.models.spec import (
    BUILT_IN_LOSSES,
    MODULE_MODEL,
    ModelSpec,
    build_spec,
)
from clients.user_code import check_py_module_entry, check_target
from server.aggregation import UNWEIGHTED_AGGREGATORS
from simulator.config.schema import (
    BUILT_IN_DATASETS,
    IMAGE_DATASETS,
    IMAGE_USER_DATASETS,
    NATURAL_DATASETS,
    RAY_RESOURCE_STEP,
    RUN_NAME,
    TEXT_DATASETS,
    AsyncConfig,
    ClientConfig,
    Config,
    DataConfig,
    FederatedEvalConfig,
    ModelConfig,
    PersonalizationConfig,
    RuntimeConfig,
    ServerConfig,
    SystemConfig,
    async_shape,
    sampled_per_round,
    yaml_key,
)
from simulator.config.yaml_input import show

# --- value rules that types cannot express ---------------------------------


def _require(ok: bool, path: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {show(value)} is not allowed; must be {allowed}")


def validate(cfg: Config) -> Config:
    """Check value ranges and cross-field rules; return ``cfg`` unchanged."""
    d, c, s, r = cfg.data, cfg.client, cfg.server, cfg.runtime
    _require(cfg.rounds >= 1, "rounds", cfg.rounds, ">= 1")
    _require(cfg.seed >= 0, "seed", cfg.seed, ">= 0")
    _require(
        _is_run_name(cfg.name),
        "name",
        cfg.name,
        "1-100 characters, no '/', '\\' or control characters, not starting with '.' or a space "
        "(it names the run directory)",
    )
    _require(d.num_clients >= 1, "data.num_clients", d.num_clients, ">= 1")
    _require(0 < d.alpha <= 1e6, "data.alpha", d.alpha, "in (0, 1e6] (larger is IID: data.partition: iid)")
    _require(d.shards_per_client >= 1, "data.shards_per_client", d.shards_per_client, ">= 1")
    _require(d.min_samples_per_client >= 1, "data.min_samples_per_client", d.min_samples_per_client, ">= 1")
    _require(0 < d.test_fraction < 1, "data.test_fraction", d.test_fraction, "in (0, 1)")
    # Standard deviations of the generator's means; past 1e3 float32 features overflow.
    _require(0 <= d.synthetic.alpha <= 1e3, "data.synthetic.alpha", d.synthetic.alpha, "in [0, 1000]")
    _require(0 <= d.synthetic.beta <= 1e3, "data.synthetic.beta", d.synthetic.beta, "in [0, 1000]")
    _require(d.synthetic.num_features >= 1, "data.synthetic.num_features", d.synthetic.num_features, ">= 1")
    _require(d.synthetic.num_classes >= 2, "data.synthetic.num_classes", d.synthetic.num_classes, ">= 2")
    spd = d.synthetic.samples_per_device
    _require(spd is None or spd >= 2, "data.synthetic.samples_per_device", spd, "null or >= 2")
    if d.generate_on_workers and (d.dataset, d.partition) != ("synthetic", "natural"):
        raise ConfigError(
            "data.generate_on_workers: true needs data.dataset synthetic and data.partition natural"
        )
    if d.generate_on_workers and d.synthetic.samples_per_device is None:
        raise ConfigError(
            "data.generate_on_workers: true needs data.synthetic.samples_per_device (a fixed count)"
        )
    _validate_synthetic_size(d)
    _validate_user_data(d)
    if d.partition == "natural" and not _may_have_clients(d):
        raise ConfigError(
            f"data.partition: 'natural' is not allowed for data.dataset {d.dataset!r}; "
            f"it has no natural clients (datasets with them: {', '.join(NATURAL_DATASETS)}; "
            "arrays and npz when they give client ids; csv, parquet and hf_disk with data.client_column)"
        )
    _validate_model(cfg.model)
    _validate_model_fits_data(cfg.model, d)
    _validate_task(cfg)
    _validate_client(c)
    _validate_server(s, d.num_clients)
    _validate_pipeline(c, s, d.num_clients)
    p = c.personalization
    if p.method in ("fedper", "fedrep", "fedbn") and cfg.model.name != MODULE_MODEL:
        # A module model's layers are known once its code runs: checked when the run is built.
        personal_layer_names(layer_spec(cfg.model), p.method, p.personal_layers)
    _check_batch_norm_batches(cfg.model, c, s)
    _require(r.workers is None or r.workers >= 1, "runtime.workers", r.workers, "null or >= 1")
    _require(
        RAY_RESOURCE_STEP <= r.cpus_per_worker <= 100_000,
        "runtime.cpus_per_worker",
        r.cpus_per_worker,
        f"in [{RAY_RESOURCE_STEP}, 100000] (Ray counts CPUs to 4 decimals)",
    )
    _validate_devices(cfg.model, r)
    _require(r.reduction_groups >= 1, "runtime.reduction_groups", r.reduction_groups, ">= 1")
    _require(r.checkpoint_every >= 1, "runtime.checkpoint_every", r.checkpoint_every, ">= 1")
    for entry in r.py_modules or []:  # their form only: found (and imported) when the run starts
        check_py_module_entry(entry)
    _check_work(cfg)
    return cfg


def _may_have_clients(d: DataConfig) -> bool:
    """Whether the dataset can name each row's client (known for files and code only when
    they are read: a missing column or array is refused then)."""
    if d.dataset in TABLE_FORMATS:
        return d.client_column is not None
    return d.dataset in NATURAL_DATASETS or d.dataset in ("arrays", "npz")


def _validate_user_data(d: DataConfig) -> None:
    """Users' own data: each key only where it is read; data.loader's syntax, never its import."""
    if d.dataset == CODE_DATASET:
        if d.loader is None:
            raise ConfigError("data.dataset: 'arrays' needs data.loader ('package.module:callable')")
        check_target(d.loader, "data.loader")
    elif d.loader is not None:
        raise ConfigError(f"data.loader: {show(d.loader)} is read with data.dataset: arrays only")
    if d.dataset not in TABLE_FORMATS:
        given = {"features": d.features != [], "label": d.label != "label", "client_column": d.client_column}
        for key, set_ in given.items():
            if set_:
                raise ConfigError(
                    f"data.{key}: {show(getattr(d, key))} names a column; data.dataset {show(d.dataset)} "
                    f"has none (columns are read for {', '.join(TABLE_FORMATS)})"
                )
    _require(d.crop_padding >= 0, "data.crop_padding", d.crop_padding, ">= 0")
    if d.augment in ("crop", "crop_flip"):
        _require(d.crop_padding >= 1, "data.crop_padding", d.crop_padding, ">= 1 with a crop")
    if d.normalize != "none" and d.generate_on_workers:
        raise ConfigError(
            f"data.normalize: {show(d.normalize)} needs the training data on the driver; "
            "data.generate_on_workers generates it on the workers"
        )
    if d.normalize != "none" and d.dataset in TEXT_DATASETS:
        raise ConfigError(f"data.normalize: {show(d.normalize)}: {d.dataset} holds token ids, not numbers")
    if d.augment != "none" and d.dataset in (*TEXT_DATASETS, "synthetic", "csv", "parquet"):
        raise ConfigError(
            f"data.augment: {show(d.augment)} crops and flips images; "
            f"data.dataset {show(d.dataset)} holds none"
        )


SYNTHETIC_MEAN_SAMPLES = 453  # E[int(lognormal(4, 2))] + 50 = e^6 + 50, the paper's sizes
MAX_SYNTHETIC_BYTES = 1 << 32  # generated on the driver (float32 features)


def _validate_synthetic_size(d: DataConfig) -> None:
    """Synthetic(α, β) is generated whole on the driver (or one device at a time on the
    workers): refuse sizes no machine holds before generating anything."""
    if d.dataset != "synthetic":
        return
    s = d.synthetic
    samples = s.samples_per_device or SYNTHETIC_MEAN_SAMPLES
    per_device = samples * s.num_features * 4
    devices = 1 if d.generate_on_workers else d.num_clients
    if devices * per_device > MAX_SYNTHETIC_BYTES:
        raise ConfigError(
            f"data.synthetic: {devices:,} devices x {samples:,} samples x "
            f"{s.num_features:,} features is {devices * per_device / 2**30:.0f} GiB; at most "
            f"{MAX_SYNTHETIC_BYTES / 2**30:.0f} GiB (use data.generate_on_workers for large populations)"
        )


# The work a config asks for, estimated before anything runs; past these no run ends in
# any sensible time (a local step of the smallest model takes ~0.1 ms on a core), and a
# run that would sit silent for days is one error instead. Research runs stay far below
# (the configs in configs/ ask for at most 9,000 trips, 8,200 steps a round, 1.6e6 a run).
MAX_CLIENT_TRIPS = 10**8  # client trips in a run: a client trains once and reports
MAX_ROUND_STEPS = 10**6  # local steps in one round or async server step, fine-tuning included
MAX_RUN_STEPS = 10**9  # local steps in the whole run
# What validate assumes of the datasets without reading them: training rows (digits and
# synthetic before data.test_fraction), and LEAF's full FEMNIST and Shakespeare (Caldas et
# al. 2018, Table 1: samples, and their writers / speaking roles).
DATASET_ROWS = {
    "digits": 1_797, "mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000,
    "femnist": 805_263, "shakespeare": 4_226_158,
}  # fmt: skip
LEAF_CLIENTS = {"femnist": 3_550, "shakespeare": 1_129}


def client_rows(d: DataConfig, fe: FederatedEvalConfig) -> float:
    """A client's training rows on average (the mean over clients sets a run's expected
    work), from the config alone: no data is read."""
    natural_leaf = d.dataset in LEAF_CLIENTS and d.partition == "natural"
    if d.dataset not in DATASET_ROWS and d.dataset != "synthetic":
        return 0.0  # users' data: sizes unknown until read; a client counts one batch at least
    if d.dataset == "synthetic":
        rows = (d.synthetic.samples_per_device or SYNTHETIC_MEAN_SAMPLES) * (1 - d.test_fraction)
    elif natural_leaf:
        rows = DATASET_ROWS[d.dataset] / LEAF_CLIENTS[d.dataset]
    else:
        held_out = d.test_fraction if d.dataset == "digits" else 0.0
        rows = DATASET_ROWS[d.dataset] * (1 - held_out) / d.num_clients
    if fe.every and not (natural_leaf or d.generate_on_workers):
        rows *= 1 - fe.holdout
    return rows


def _check_work(cfg: Config) -> None:
    """Refuse more than MAX_CLIENT_TRIPS client trips, MAX_ROUND_STEPS local steps in a
    round or MAX_RUN_STEPS in the run, in one line naming the key that weighs most and
    how the work adds up (client_rows estimates a client's share)."""
    d, c, s, p, fe = cfg.data, cfg.client, cfg.server, cfg.client.personalization, cfg.server.federated_eval
    if s.mode == "async":
        per_round = async_shape(s, d.num_clients)[1]
        size = s.async_.buffer_size if s.async_.buffer_size is not None else f"null (= {per_round})"
        clients, rounds = f"server.async.buffer_size={size}", _n(cfg.rounds, "step")
    else:
        k = sampled_per_round(s, d.num_clients)
        per_round = min(d.num_clients, math.ceil(k * (1 + c.system.over_selection) - 1e-9))
        clients, rounds = f"server.clients_per_round={show(s.clients_per_round)}", _n(cfg.rounds, "round")
        if per_round > k:
            clients = f"client.system.over_selection={c.system.over_selection:g}"
    trips = cfg.rounds * per_round
    if trips > MAX_CLIENT_TRIPS:
        lead = clients if per_round >= cfg.rounds else f"rounds={cfg.rounds}"
        raise ConfigError(
            f"{lead} asks for {_amount(trips)} client trips ({per_round:,} a round over {rounds}); "
            f"at most {_amount(MAX_CLIENT_TRIPS)} are allowed"
        )
    batches = max(1, math.ceil(client_rows(d, fe) / c.batch_size))
    if s.update == "gradients":  # FedSGD: one gradient over the shard or local_steps batches
        passes: dict[str, int] = {}
        trip = batches if c.local_steps is None else min(batches, c.local_steps)
        training = f"{_n(per_round, 'client')} x ~{_n(trip, 'batch')}"
    else:
        passes = {"client.epochs": c.epochs}
        if p.method == "fedrep":
            passes["client.personalization.head_epochs"] = p.head_epochs
        if p.method == "ditto":
            passes["client.personalization.ditto_epochs"] = p.ditto_epochs or c.epochs
        epochs = sum(passes.values())
        trip = epochs * batches
        training = f"{_n(per_round, 'client')} x {_n(epochs, 'epoch')} x ~{_n(batches, 'batch')}"
    evaluated = max(1, round(fe.fraction * d.num_clients)) if fe.every else 0
    evaluations = -(-cfg.rounds // fe.every) if fe.every else 0
    tune = evaluated * fe.finetune_steps
    factors = {clients: per_round, f"client.batch_size={c.batch_size}": batches}
    factors.update({f"{key}={value}": value for key, value in passes.items() if value > 1})
    tuning = ""
    if tune:
        tuning = f" + {_n(evaluated, 'evaluated client')} x {_n(fe.finetune_steps, 'fine-tuning step')}"
    round_steps = per_round * trip + tune
    lead = f"server.federated_eval.finetune_steps={fe.finetune_steps}"
    if tune <= per_round * trip:
        lead = max(factors, key=factors.__getitem__)
    if round_steps > MAX_ROUND_STEPS:
        raise ConfigError(
            f"{lead} asks for {_amount(round_steps)} local steps a round ({training}{tuning}); "
            f"at most {_amount(MAX_ROUND_STEPS)} are allowed"
        )
    run_steps = cfg.rounds * per_round * trip + evaluations * tune
    if run_steps > MAX_RUN_STEPS:
        tuning = f" + {_n(evaluations, 'evaluation')} x {tuning[3:]}" if tune else ""
        raise ConfigError(
            f"rounds={cfg.rounds} asks for {_amount(run_steps)} local steps "
            f"({rounds} x {training}{tuning}); at most {_amount(MAX_RUN_STEPS)} are allowed"
        )


def _n(count: int, noun: str) -> str:
    """``count`` ``noun``s: 1 client, 2 clients, 3 batches."""
    return f"{count:,} {noun}" + ("" if count == 1 else "es" if noun == "batch" else "s")


def _amount(count: float) -> str:
    """A count in an error line: 12,345, or 1.2e9 from a hundred thousand on."""
    if count < 100_000:
        return f"{int(count):,}"
    mantissa, exponent = f"{count:.1e}".split("e")
    return f"{mantissa.removesuffix('.0')}e{int(exponent)}"


def _is_run_name(name: str) -> bool:
    """One path component: no separators, no control, format or line-separator characters
    (bidi overrides, U+2028), not hidden, at most 100 characters and 200 bytes."""
    return (
        RUN_NAME.fullmatch(name) is not None
        and len(name.encode("utf-8", "surrogatepass")) <= 200
        and not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name)
    )


def _validate_model(m: ModelConfig) -> None:
    _validate_module(m)
    if m.batchnorm and (m.name != "mlp" or m.residual):
        raise ConfigError(
            f"model.batchnorm: true is for the plain mlp; model.name is {show(m.name)}"
            f"{' with model.residual' if m.residual else ''}"
        )
    _require(all(h >= 1 for h in m.hidden), "model.hidden", m.hidden, "a list of widths >= 1")
    _require(
        len(m.conv_channels) == 2 and all(ch >= 1 for ch in m.conv_channels),
        "model.conv_channels",
        m.conv_channels,
        "two channel counts >= 1",
    )
    _require(m.fc_width >= 1, "model.fc_width", m.fc_width, ">= 1")
    _require(0 <= m.dropout < 1, "model.dropout", m.dropout, "in [0, 1)")
    _require(
        not m.residual or len(set(m.hidden)) <= 1,
        "model.hidden",
        m.hidden,
        "equal widths when model.residual is true",
    )
    for key in ("embedding_dim", "lstm_hidden", "lstm_layers"):
        _require(getattr(m, key) >= 1, f"model.{key}", getattr(m, key), ">= 1")


def _validate_module(m: ModelConfig) -> None:
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
    arch = inspect.signature(build_spec).parameters.keys() - {"name", "input_shape", "num_classes"}
    return build_spec(m.name, (1, 8, 8), 2, **{key: getattr(m, key) for key in arch})


def personal_layer_names(spec: ModelSpec, method: str, names: list[str]) -> list[str]:
    """The layers a fedper / fedrep / fedbn client keeps: every batch-norm layer (fedbn), or
    ``names`` (default: the output layer). Refused: a name that is not a layer of ``spec``
    with parameters, nothing to keep, or nothing left to share."""
    layers = spec.tracked_layers()
    key = "client.personalization.personal_layers"
    if method == "fedbn":
        names = [layer.name for layer in spec.layers if layer.kind == "batchnorm"]
        if not names:
            raise ConfigError(
                "client.personalization.method: 'fedbn' keeps the batch-norm layers local; the model has "
                "none (model.batchnorm: true puts one after each hidden layer of the mlp)"
            )
    elif not names:
        names = layers[-1:]
    if unknown := [n for n in names if n not in layers]:
        raise ConfigError(
            f"{key}: {show(unknown[0])} is not a layer of {spec.name}; its layers with parameters: "
            f"{', '.join(layers)}"
        )
    if set(names) == set(layers):
        hint = " (model.hidden: [] leaves the output layer alone)" if len(layers) == 1 else ""
        raise ConfigError(
            f"{key}: every layer would stay on the clients{hint}; nothing would be shared "
            "(use fewer layers, or method ditto)"
        )
    return names


def _check_batch_norm_batches(m: ModelConfig, c: ClientConfig, s: ServerConfig) -> None:
    if not (m.batchnorm and m.hidden):
        return
    for key, size in (("client.batch_size", c.batch_size), ("server.eval_batch_size", s.eval_batch_size)):
        if size < 2:
            raise ConfigError(
                f"{key}: {size} is not allowed with model.batchnorm: true; batch norm normalises a "
                "batch by its own statistics and needs batches of at least 2 rows"
            )


def _validate_devices(m: ModelConfig, r: RuntimeConfig) -> None:
    _require(
        r.gpus_per_worker == 0 or RAY_RESOURCE_STEP <= r.gpus_per_worker <= 10_000,
        "runtime.gpus_per_worker",
        r.gpus_per_worker,
        f"0, or in [{RAY_RESOURCE_STEP}, 10000] (Ray counts GPUs to 4 decimals)",
    )
    _require(
        r.gpus_per_worker <= 1 or float(r.gpus_per_worker).is_integer(),
        "runtime.gpus_per_worker",
        r.gpus_per_worker,
        "a fraction up to 1, or a whole number of GPUs (Ray's rule)",
    )
    if m.device == "cuda" and r.gpus_per_worker == 0:
        raise ConfigError(
            "model.device: cuda needs runtime.gpus_per_worker > 0, so that Ray gives each worker a GPU"
        )
    if m.device == "cpu" and r.gpus_per_worker > 0:
        raise ConfigError(
            "model.device: cpu with runtime.gpus_per_worker > 0 reserves GPUs that no worker uses; "
            "set gpus_per_worker: 0 or model.device: auto/cuda"
        )
    if m.engine == "numpy" and (m.device == "cuda" or r.gpus_per_worker > 0):
        raise ConfigError(
            "model.engine: numpy runs on CPUs only; use model.engine: torch for "
            "model.device: cuda / runtime.gpus_per_worker > 0"
        )


def _validate_model_fits_data(m: ModelConfig, d: DataConfig) -> None:
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


def _validate_task(cfg: Config) -> None:
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


def _validate_client(c: ClientConfig) -> None:
    _require(c.lr > 0, "client.lr", c.lr, "> 0")
    _require(0 <= c.momentum < 1, "client.momentum", c.momentum, "in [0, 1)")
    _require(c.weight_decay >= 0, "client.weight_decay", c.weight_decay, ">= 0")
    _require(c.epochs >= 1, "client.epochs", c.epochs, ">= 1")
    _require(c.batch_size >= 1, "client.batch_size", c.batch_size, ">= 1")


def _validate_pipeline(c: ClientConfig, s: ServerConfig, num_clients: int) -> None:
    """Value ranges of the server pipeline and the combinations it cannot run."""
    _require(c.prox_mu >= 0, "client.prox_mu", c.prox_mu, ">= 0")
    _require(
        c.max_grad_norm is None or c.max_grad_norm > 0, "client.max_grad_norm", c.max_grad_norm, "null or > 0"
    )
    _require(c.local_steps is None or c.local_steps >= 1, "client.local_steps", c.local_steps, "null or >= 1")
    y = c.system
    _require(y.speed > 0, "client.system.speed", y.speed, "> 0")
    _require(0 <= y.speed_sigma <= 20, "client.system.speed_sigma", y.speed_sigma, "in [0, 20]")
    _require(0 < y.availability <= 1, "client.system.availability", y.availability, "in (0, 1]")
    _require(0 <= y.dropout < 1, "client.system.dropout", y.dropout, "in [0, 1)")
    _require(y.deadline is None or y.deadline > 0, "client.system.deadline", y.deadline, "null or > 0")
    # Beyond a million times the round's clients, every online client is selected anyway.
    _require(0 <= y.over_selection <= 1e6, "client.system.over_selection", y.over_selection, "in [0, 1e6]")
    for key in ("momentum", "beta1", "beta2"):
        _require(0 <= getattr(s, key) < 1, f"server.{key}", getattr(s, key), "in [0, 1)")
    _require(s.tau > 0, "server.tau", s.tau, "> 0")
    _require(0 <= s.trim_beta < 0.5, "server.trim_beta", s.trim_beta, "in [0, 0.5)")
    _require(s.krum_f >= 0, "server.krum_f", s.krum_f, ">= 0")
    _require(s.krum_m >= 1, "server.krum_m", s.krum_m, ">= 1")
    cl, p, a, z = s.clipping, s.privacy, s.attack, s.compression
    for key in ("norm", "initial_norm", "learning_rate"):
        _require(getattr(cl, key) > 0, f"server.clipping.{key}", getattr(cl, key), "> 0")
    _require(0 < cl.target_quantile < 1, "server.clipping.target_quantile", cl.target_quantile, "in (0, 1)")
    _require(p.noise_multiplier >= 0, "server.privacy.noise_multiplier", p.noise_multiplier, ">= 0")
    _require(0 < p.delta < 1, "server.privacy.delta", p.delta, "in (0, 1)")
    _require(0 <= a.fraction < 1, "server.attack.fraction", a.fraction, "in [0, 1)")
    _require(a.scale > 0, "server.attack.scale", a.scale, "> 0")
    _require(a.noise_std > 0, "server.attack.noise_std", a.noise_std, "> 0")
    _require(0 < z.fraction <= 1, "server.compression.fraction", z.fraction, "in (0, 1]")
    pr = s.pruning
    _require(
        0 <= pr.initial_sparsity <= pr.sparsity,
        "server.pruning.initial_sparsity",
        pr.initial_sparsity,
        "in [0, sparsity]",
    )
    _require(0 <= pr.sparsity < 1, "server.pruning.sparsity", pr.sparsity, "in [0, 1)")
    _require(pr.start_round >= 1, "server.pruning.start_round", pr.start_round, ">= 1")
    _require(pr.end_round >= pr.start_round, "server.pruning.end_round", pr.end_round, ">= start_round")
    _require(pr.every >= 1, "server.pruning.every", pr.every, ">= 1")
    _check_combinations(c, s, num_clients)
    _check_async_combinations(c, s)
    _check_personalization(c, s)


def _check_combinations(c: ClientConfig, s: ServerConfig, num_clients: int) -> None:
    def refuse(key: str, value: Any, why: str) -> None:
        raise ConfigError(f"{key}: {show(value)} is not allowed here; {why}")

    if c.algorithm == "scaffold":
        if s.update != "weights":
            refuse("client.algorithm", "scaffold", "SCAFFOLD needs server.update: weights")
        if c.optimizer != "sgd" or c.momentum:
            refuse(
                "client.algorithm",
                "scaffold",
                "option II's control variate assumes plain local SGD (optimizer sgd, momentum 0)",
            )
    if s.update == "weights" and c.local_steps is not None:
        refuse(
            "client.local_steps",
            c.local_steps,
            "it sets FedSGD's batches (server.update: gradients); local training runs client.epochs passes",
        )
    if s.update == "gradients":
        for key, off in (("prox_mu", 0.0), ("max_grad_norm", None)):
            if getattr(c, key) != off:
                refuse(
                    f"client.{key}",
                    getattr(c, key),
                    "FedSGD (server.update: gradients) sends the gradient at the global model: "
                    "there are no local steps for it to act on",
                )
    if c.optimizer == "adam" and c.momentum:
        refuse("client.momentum", c.momentum, "the local adam optimiser has no momentum setting; set it to 0")
    if s.optimizer == "adagrad" and s.bias_correction:
        refuse("server.bias_correction", True, "bias correction applies to server.optimizer adam and yogi")
    if s.weighting == "uniform" and s.aggregator in UNWEIGHTED_AGGREGATORS:
        refuse(
            "server.weighting",
            "uniform",
            f"server.aggregator {s.aggregator!r} ignores weights; weighting applies to mean and multi_krum",
        )
    if s.aggregator in ("krum", "multi_krum"):
        k = sampled_per_round(s, num_clients)
        if k <= 2 * s.krum_f + 2:
            refuse("server.krum_f", s.krum_f, f"Krum needs clients per round k > 2f + 2, and k = {k}")
        if s.aggregator == "multi_krum" and s.krum_m > k:
            refuse("server.krum_m", s.krum_m, f"multi-Krum averages at most the k = {k} clients of a round")
    if s.privacy.noise_multiplier > 0:
        if s.clipping.kind == "none":
            refuse(
                "server.privacy.noise_multiplier",
                s.privacy.noise_multiplier,
                "DP needs server.clipping.kind fixed or adaptive",
            )
        if s.aggregator != "mean":
            refuse("server.aggregator", s.aggregator, "DP-FedAvg's noise calibration needs the mean")
        if s.compression.method != "none":
            refuse(
                "server.compression.method",
                s.compression.method,
                "compressed updates (with error feedback) can exceed the clip norm DP relies on",
            )
        if s.clipping.kind == "adaptive":
            refuse(
                "server.clipping.kind",
                "adaptive",
                "the adaptive norm follows an un-noised quantile of client norms; use fixed clipping with DP",
            )
        if c.algorithm == "scaffold":
            refuse(
                "client.algorithm", "scaffold", "SCAFFOLD's control variates would reach the server un-noised"
            )
        if c.system != SystemConfig():
            refuse(
                "client.system", "(set)", "DP accounting assumes the configured sampling; drop client.system"
            )
        if s.weighting != "uniform":
            refuse(
                "server.weighting",
                s.weighting,
                "DP-FedAvg sums clipped updates unweighted over a fixed denominator; "
                "set server.weighting: uniform",
            )
    elif s.privacy.sampling == "poisson":
        refuse(
            "server.privacy.sampling",
            "poisson",
            "Poisson sampling is for DP runs (set server.privacy.noise_multiplier)",
        )


def _validate_server(s: ServerConfig, num_clients: int) -> None:
    per_round = s.clients_per_round
    if isinstance(per_round, float):
        _require(0 < per_round <= 1, "server.clients_per_round", per_round, "a fraction in (0, 1]")
    else:
        _require(
            1 <= per_round <= num_clients,
            "server.clients_per_round",
            per_round,
            f"a count in [1, data.num_clients={num_clients}]",
        )
    _require(s.lr > 0, "server.lr", s.lr, "> 0")
    _require(s.eval_every >= 1, "server.eval_every", s.eval_every, ">= 1")
    _require(
        s.stop_after_nonfinite_rounds >= 0,
        "server.stop_after_nonfinite_rounds",
        s.stop_after_nonfinite_rounds,
        ">= 0 (0 = never stop)",
    )
    _require(
        0 <= s.stop_after_rejected_share <= 1,
        "server.stop_after_rejected_share",
        s.stop_after_rejected_share,
        "in [0, 1] (1 = only when every update is rejected)",
    )
    fe = s.federated_eval
    _require(fe.every >= 0, "server.federated_eval.every", fe.every, ">= 0 (0 = off)")
    _require(0 < fe.fraction <= 1, "server.federated_eval.fraction", fe.fraction, "in (0, 1]")
    _require(0 < fe.holdout < 1, "server.federated_eval.holdout", fe.holdout, "in (0, 1)")
    _require(s.eval_batch_size >= 1, "server.eval_batch_size", s.eval_batch_size, ">= 1")
    _validate_async(s.async_, num_clients)
    _require(
        fe.finetune_steps >= 0, "server.federated_eval.finetune_steps", fe.finetune_steps, ">= 0 (0 = off)"
    )


def _validate_async(a: AsyncConfig, num_clients: int) -> None:
    _require(
        a.concurrency is None or 1 <= a.concurrency <= num_clients,
        "server.async.concurrency",
        a.concurrency,
        f"null or a count in [1, data.num_clients={num_clients}]",
    )
    _require(
        a.buffer_size is None or a.buffer_size >= 1, "server.async.buffer_size", a.buffer_size, "null or >= 1"
    )
    _require(0 <= a.staleness_a <= 1e3, "server.async.staleness_a", a.staleness_a, "in [0, 1000]")
    _require(a.staleness_b >= 0, "server.async.staleness_b", a.staleness_b, ">= 0")
    _require(
        a.max_staleness is None or a.max_staleness >= 0, "server.async.max_staleness", a.max_staleness,
        "null or >= 0",
    )  # fmt: skip


# What an asynchronous server step cannot do: each names the key and why.
ASYNC_REFUSALS = (
    ("server.update", lambda c, s: s.update != "weights", "FedBuff buffers model deltas (update: weights)"),
    ("server.aggregator", lambda c, s: s.aggregator != "mean", "the buffer is averaged (aggregator: mean)"),
    (
        "server.privacy.noise_multiplier", lambda c, s: s.privacy.noise_multiplier > 0,
        "DP accounting assumes synchronous rounds of sampled clients",
    ),
    ("client.algorithm", lambda c, s: c.algorithm != "fedavg", "SCAFFOLD's control variates assume rounds"),
    ("server.pruning.method", lambda c, s: s.pruning.method != "none", "pruning steps run in sync rounds"),
    (
        "client.system.over_selection", lambda c, s: c.system.over_selection > 0,
        "async keeps server.async.concurrency clients busy; over-selection is for sync rounds",
    ),
)  # fmt: skip


# The personalization keys each method reads: set away from its default under another
# method, a key could not act, and is refused.
PERSONALIZATION_READERS = {
    "personal_layers": ("fedper", "fedrep"),
    "head_epochs": ("fedrep",),
    "ditto_lambda": ("ditto",),
    "ditto_epochs": ("ditto",),
}


def _check_personalization(c: ClientConfig, s: ServerConfig) -> None:
    p = c.personalization
    _require(p.head_epochs >= 1, "client.personalization.head_epochs", p.head_epochs, ">= 1")
    _require(0 <= p.ditto_lambda <= 1e6, "client.personalization.ditto_lambda", p.ditto_lambda, "in [0, 1e6]")
    _require(
        p.ditto_epochs is None or p.ditto_epochs >= 1, "client.personalization.ditto_epochs", p.ditto_epochs,
        "null or >= 1",
    )  # fmt: skip
    for name, readers in PERSONALIZATION_READERS.items():
        value = getattr(p, name)
        if p.method not in readers and value != getattr(PersonalizationConfig(), name):
            raise ConfigError(
                f"client.personalization.{name}: {show(value)} is for {' and '.join(readers)}; "
                f"client.personalization.method {show(p.method)} does not read it"
            )
    if p.method == "none":
        return
    key = "client.personalization.method"
    if s.update != "weights":
        raise ConfigError(f"{key}: {show(p.method)} needs local training (server.update: weights)")
    if c.algorithm != "fedavg":
        raise ConfigError(
            f"{key}: {show(p.method)} with client.algorithm {show(c.algorithm)} is not supported"
        )


def _check_async_combinations(c: ClientConfig, s: ServerConfig) -> None:
    if s.mode != "async":
        for f in dataclasses.fields(AsyncConfig):
            value = getattr(s.async_, f.name)
            if value != f.default:
                raise ConfigError(
                    f"server.async.{yaml_key(f)}: {show(value)} is not allowed with server.mode: sync; "
                    "server.async acts in async runs only (set server.mode: async, or reset the "
                    "section: --set server.async={})"
                )
        return
    for key, refused, why in ASYNC_REFUSALS:
        if refused(c, s):
            value = _config_path_value(c, s, key)
            raise ConfigError(f"{key}: {show(value)} is not allowed with server.mode: async; {why}")


def _config_path_value(c: ClientConfig, s: ServerConfig, key: str) -> Any:
    section, *rest = key.split(".")
    node: Any = c if section == "client" else s
    for part in rest:
        node = getattr(node, part)
    return node
