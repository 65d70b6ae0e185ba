"""Turning a config into the objects a run needs: dataset, partition, model spec,
the clients' plan, the server's parts and the round sampler.

Every runtime object is built from its config section *by name*
(``from_section``): each parameter of the object is looked up under the same
name in the section, and one that is not there is an error unless the caller
hands it in explicitly. So a config field cannot silently stop reaching the
object that should use it, and ``build_run`` is the one place that reads the
config for anything that shapes training (tests/test_wiring.py checks that
every config key is read there or is listed as not shaping training).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients.attacks import Attack, malicious_clients
from clients.data.datasets import Dataset, SyntheticClients, SyntheticSettings, load_digits, make_synthetic
from clients.data.formats import USER_DATASETS
from clients.data.partition import (
    dirichlet_partition,
    holdout_split,
    iid_partition,
    natural_partition,
    shards_partition,
)
from clients.data.transforms import Augmentation, normalized
from clients.errors import ConfigError, DataError, ModelError
from clients.models.engines import initial_state
from clients.models.losses import check_loss, load_loss
from clients.models.module_model import build_module, check_fits, module_spec
from clients.models.spec import BUILT_IN_LOSSES, MODULE_MODEL, Architecture, LossSource, ModelSpec, build_spec
from clients.models.torch_engine import TorchModel
from clients.personalization import PersonalPlan
from clients.protocol import ClientPlan, ClientShards
from clients.streams import Stream
from clients.training import LocalTrainingConfig
from clients.user_code import resolve
from server.aggregation import AGGREGATORS
from server.async_buffer import AsyncRounds
from server.asynchronous import AsyncSchedule, StalenessWeight
from server.clipping import AdaptiveClipNorm, FixedClipNorm
from server.optimizers import SERVER_OPTIMIZERS
from server.pipeline import Aggregation, UpdatePostprocessor
from server.privacy import PrivacyAccountant
from server.pruning import PruningSchedule
from server.sampling import ClientSampler, Selection
from server.selection import OortSelector, OortSettings
from server.state import ServerParts, ServerState
from server.system import Devices, LocalWork, SystemModel, local_work, parametric_devices
from server.traces import assign_profiles, read_availability, read_capacity
from simulator.config.rules.model import model_task, refuse_under_regression
from simulator.config.rules.personalization import module_personal_entries, personal_layer_names
from simulator.config.schema import (
    Config,
    DataConfig,
    ModelConfig,
    ServerConfig,
    async_shape,
    sampled_per_round,
)
from simulator.config.yaml_input import show


def section_kwargs(
    target: Callable[..., Any],
    section: Any,
    /,
    *,
    skip: Iterable[str] = (),
    aliases: Mapping[str, str] | None = None,
    **given: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``target`` (a class or function): each of its parameters
    taken from ``given`` or, by the same name (or ``aliases[name]``), from the config
    ``section``. ``skip`` names parameters the caller fills later (an aggregator's
    updates). A parameter found nowhere is an error even when it has a default: a
    default quietly standing in for a config value is how a knob gets lost."""
    aliases = dict(aliases or {})
    fields = {f.name for f in dataclasses.fields(section)}
    params = [
        p.name
        for p in inspect.signature(target).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in set(skip)
    ]
    if unknown := set(given) - set(params):
        raise TypeError(f"{_name(target)} takes no parameter(s) {sorted(unknown)}")
    kwargs, missing = {}, []
    for name in params:
        field = aliases.get(name, name)
        if name in given:
            kwargs[name] = given[name]
        elif field in fields:
            kwargs[name] = getattr(section, field)
        else:
            missing.append(name)
    if missing:
        raise TypeError(
            f"{_name(target)}: parameter(s) {missing} are neither fields of "
            f"{type(section).__name__} nor given; pass them explicitly"
        )
    return kwargs


def from_section(target: Callable[..., Any], section: Any, /, **given: Any) -> Any:
    """``target(**section_kwargs(target, section, **given))``: see ``section_kwargs``."""
    return target(**section_kwargs(target, section, **given))


def _name(target: Callable[..., Any]) -> str:
    return getattr(target, "__qualname__", repr(target))


MAX_PARAMETERS = 1 << 28  # 1 GiB a float32 copy; params, grads and optimiser state take several


def build_population(data: DataConfig, seed: int) -> SyntheticClients | None:
    """The on-demand synthetic population, when clients' data are generated on workers."""
    if not data.generate_on_workers:
        return None
    return from_section(SyntheticClients, data.synthetic, seed=seed, test_fraction=data.test_fraction)


def build_dataset(data: DataConfig, seed: int, task: str | None = "classification") -> Dataset:
    """The driver's dataset, its inputs normalised as ``data.normalize`` says; with
    generated populations only the server test set is held. ``task`` (model_task's):
    users' labels are read as class ids or as regression targets; None lets them decide."""
    dataset = normalized(_read_dataset(data, seed, task), data.normalize)
    if data.augment != "none" and len(dataset.input_shape) != 3:
        raise DataError(
            f"data.augment: {show(data.augment)} crops and flips (N, C, H, W) images; "
            f"{dataset.name}'s inputs are {dataset.input_shape}"
        )
    return dataset


def _read_dataset(data: DataConfig, seed: int, task: str | None) -> Dataset:
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
    if data.dataset in USER_DATASETS:
        return _user_dataset(data, seed, task)
    if data.dataset != "synthetic":
        return _file_dataset(data)
    settings = from_section(
        SyntheticSettings, data.synthetic, num_devices=data.num_clients, seed=seed,
        test_fraction=data.test_fraction,
    )  # fmt: skip
    return make_synthetic(settings)


def _user_dataset(data: DataConfig, seed: int, task: str | None) -> Dataset:
    """Users' own data: arrays from ``data.loader`` (its code runs here), or a file format
    under ``data.root``; natural clients keep the first ``num_clients`` of them."""
    from clients.data import formats

    rng = np.random.default_rng(np.random.SeedSequence([seed, Stream.TEST_SPLIT]))
    if data.dataset == "arrays":
        loader = data.loader
        assert loader is not None  # validation requires data.loader for arrays
        where = f"data.loader {loader}"
        splits = formats.load_from_code(resolve(loader, "data.loader"), loader)
    else:
        root = data_root(data)
        where = str(root)
        columns = formats.Columns(tuple(data.features), data.label, data.client_column)
        try:
            if data.dataset == "npz":
                splits = formats.load_npz(root)
            elif data.dataset == "image_folder":
                splits = formats.load_image_folder(root)
            elif data.dataset == "hf_disk":
                splits = formats.load_hf_disk(root, columns)
            else:
                splits = formats.load_table(root, data.dataset, columns)
        except OSError as exc:
            where = str(exc.filename or root)
            raise DataError(f"data.root {root}: cannot use {where}: {exc.strerror or exc}") from None
    dataset = formats.assemble(data.dataset, *splits, rng, data.test_fraction, task)
    if data.partition != "natural":
        return dataset
    if dataset.train_owner is None:
        raise DataError(
            f"data.partition: natural, but {where} gives no client ids "
            "(client_train / client arrays, or data.client_column)"
        )
    return first_clients(dataset, data.num_clients, where)


def data_root(data: DataConfig) -> Path:
    """``data.root`` with ``~`` expanded; one error when no home folder is known for it."""
    try:
        return Path(data.root).expanduser()
    except RuntimeError:  # ~name of no user on this machine (pathlib: "could not determine home")
        user = data.root.split("/", 1)[0]
        raise DataError(
            f"data.root: {show(data.root)} starts with {show(user)}, but this machine has no home "
            "directory for it; give the folder's full path"
        ) from None


def _file_dataset(data: DataConfig) -> Dataset:
    """A dataset read from ``data.root``; LEAF data keeps its first ``num_clients``
    writers / roles when partitioned naturally."""
    from clients.data import leaf, vision

    root = data_root(data)
    if root.exists() and not root.is_dir():
        raise DataError(f"data.root: {root} is a file, not a folder holding the dataset")
    try:
        if data.dataset in ("femnist", "shakespeare"):
            dataset = leaf.load_femnist(root) if data.dataset == "femnist" else leaf.load_shakespeare(root)
            return first_clients(dataset, data.num_clients, root) if data.partition == "natural" else dataset
        loaders = {
            "mnist": vision.load_mnist,
            "fashion_mnist": vision.load_fashion_mnist,
            "cifar10": vision.load_cifar10,
        }
        return loaders[data.dataset](root, data.download, data.verify)
    except OSError as exc:  # a symlink loop, a folder we may not read, a full disk while unpacking
        where = exc.filename or root
        raise DataError(f"data.root {root}: cannot use {where}: {exc.strerror or exc}") from None


def first_clients(dataset: Dataset, count: int, root: Path | str) -> Dataset:
    """The rows of natural clients 0..count-1 (train and test)."""
    owner = dataset.train_owner
    assert owner is not None  # natural clients come from datasets that name each row's owner
    available = len(np.unique(owner))  # loaders index training users first
    if count > available:
        raise DataError(
            f"data.num_clients={count}, but {dataset.name} under {root} has {available} clients "
            "with training data; lower data.num_clients"
        )
    train = owner < count
    test = dataset.test_owner < count if dataset.test_owner is not None else slice(None)
    return dataclasses.replace(
        dataset,
        x_train=np.ascontiguousarray(dataset.x_train[train]),
        y_train=np.ascontiguousarray(dataset.y_train[train]),
        x_test=np.ascontiguousarray(dataset.x_test[test]),
        y_test=np.ascontiguousarray(dataset.y_test[test]),
        train_owner=np.ascontiguousarray(owner[train]),
        test_owner=None if dataset.test_owner is None else np.ascontiguousarray(dataset.test_owner[test]),
    )


def build_partition(dataset: Dataset, data: DataConfig, seed: int) -> list[np.ndarray]:
    """Each client's training-sample indices, seeded by (seed, partition purpose)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, Stream.PARTITION]))
    labels = dataset.y_train
    if data.partition == "iid":
        return iid_partition(len(labels), data.num_clients, rng)
    if data.generate_on_workers:
        return []  # no shards: each worker generates a client's rows when it trains it
    if dataset.is_sequence and data.partition in ("dirichlet", "shards"):
        raise DataError(
            f"data.partition: {show(data.partition)} splits by each row's class; {dataset.name}'s labels "
            f"are class ids per position {dataset.y_train.shape[1:]}: use iid or natural"
        )
    if data.partition == "dirichlet":
        return dirichlet_partition(labels, data.num_clients, data.alpha, rng, data.min_samples_per_client)
    if data.partition == "shards":
        if dataset.is_regression:  # sorted by target (a row's mean for (N, k) targets): target skew
            labels = labels if labels.ndim == 1 else labels.mean(axis=1)
        return shards_partition(labels, data.num_clients, data.shards_per_client, rng)
    assert dataset.train_owner is not None  # natural partitions need each row's owner (validated)
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
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, Stream.HOLDOUT]))
    return ClientSplits(*holdout_split(parts, fe.holdout, rng))


def build_model_spec(model: ModelConfig, dataset: Dataset, seed: int | None = None) -> ModelSpec:
    """The model for this data; refused before anything is allocated when it has more
    than MAX_PARAMETERS (workers keep several vectors of that length each). A module
    model (``seed``: the run's, which its initial weights are built from) runs the user's
    factory here, and is refused unless it maps the data's inputs to one logit per class."""
    loss = _loss_source(model, dataset)
    if model.name == MODULE_MODEL:
        spec = _module_model_spec(model, dataset, seed, loss)
    else:
        if dataset.is_sequence:
            raise ModelError(
                f"model.name: {show(model.name)} gives one output per row; {dataset.name}'s labels are "
                f"class ids per position {dataset.y_train.shape[1:]}: use model.name module with a model "
                "giving logits (B, T, classes)"
            )
        shape, classes = dataset.input_shape, dataset.num_classes
        spec = dataclasses.replace(build_spec(model.name, shape, classes, Architecture.of(model)), loss=loss)
        if loss.name not in BUILT_IN_LOSSES:
            probe = _probe_inputs(dataset)
            with torch.no_grad():
                outputs = TorchModel(spec).net.eval()(probe)
            check_loss(load_loss(loss), outputs, _probe_targets(dataset), loss)
    size = spec.layout().size
    if size > MAX_PARAMETERS:
        raise ConfigError(
            f"model: {model.name} on {dataset.name} has {size:,} parameters ({size * 4 / 2**30:.1f} GiB "
            f"a copy); at most {MAX_PARAMETERS:,}: lower model.hidden / conv_channels / fc_width / lstm_*"
        )
    return spec


def _loss_source(model: ModelConfig, dataset: Dataset) -> LossSource:
    """model.loss and the run's task (the data's: float targets are regression); a callable
    loss is imported here, first from the folder fedsim runs in, as model.factory is."""
    task = "regression" if dataset.is_regression else "classification"
    if model.loss in BUILT_IN_LOSSES:
        return LossSource(model.loss, task)
    load_loss(LossSource(model.loss, task, search_path=os.getcwd()))
    # Workers import it from their own path, where runtime.py_modules ships it (and check
    # that they can before the run loads), as a module model's factory.
    return LossSource(model.loss, task)


def _probe_inputs(dataset: Dataset) -> torch.Tensor:
    """Two test rows, as a model takes them (token ids widened to int64)."""
    probe = torch.from_numpy(np.ascontiguousarray(dataset.x_test[:2]))
    return probe.long() if dataset.x_test.dtype.kind in "iu" else probe


def _probe_targets(dataset: Dataset) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(dataset.y_test[:2]))


def _module_model_spec(model: ModelConfig, dataset: Dataset, seed: int | None, loss: LossSource) -> ModelSpec:
    if seed is None:
        raise ValueError("a module model's spec needs the run's seed")
    assert model.factory is not None  # validation requires model.factory for a module model
    tokens = dataset.x_test.dtype.kind in "iu"
    spec = module_spec(
        model.factory, model.kwargs, seed, dataset.input_shape, dataset.num_classes,
        "int64" if tokens else "float32",
    )  # fmt: skip
    spec = dataclasses.replace(spec, loss=loss)
    targets = tuple(dataset.y_test.shape[1:]) if dataset.is_regression else None
    positions = dataset.y_test.shape[1] if dataset.is_sequence else None
    assert spec.source is not None  # module_spec names its source
    net = build_module(spec.source)
    outputs = check_fits(
        net, _probe_inputs(dataset), dataset.num_classes, model.factory, targets, positions
    )  # fmt: skip
    check_loss(load_loss(loss), outputs, _probe_targets(dataset), loss)
    return spec


def local_training(cfg: Config) -> LocalTrainingConfig:
    return from_section(LocalTrainingConfig, cfg.client)


# --- the server's parts and the clients' plan ---------------------------------


def build_aggregation(cfg: Config) -> Aggregation:
    s = cfg.server
    aggregator = AGGREGATORS[s.aggregator]
    hyper = section_kwargs(
        aggregator,
        s,
        skip=("updates", "weights"),
        aliases={"beta": "trim_beta", "f": "krum_f", "m": "krum_m"},
    )
    return from_section(
        Aggregation, s,
        hyper=tuple(hyper.items()),
        noise_multiplier=s.privacy.noise_multiplier,
        expected_clients=sampled_per_round(s, cfg.data.num_clients),
    )  # fmt: skip


def build_personal_plan(cfg: Config, spec: ModelSpec) -> PersonalPlan | None:
    """What clients keep for themselves (client.personalization), or None."""
    p = cfg.client.personalization
    if p.method == "none":
        return None
    personal = None if p.method == "ditto" else personal_entries(spec, p.method, p.personal_layers)
    return PersonalPlan(
        p.method, personal, p.head_epochs, p.ditto_lambda,
        cfg.client.epochs if p.ditto_epochs is None else p.ditto_epochs,
    )  # fmt: skip


def personal_entries(spec: ModelSpec, method: str, names: list[str]) -> np.ndarray:
    """(n,) bool: the parameters of the layers a client keeps: the batch-norm layers
    (fedbn), or ``names`` (default: the output layer); see ``personal_layer_names``."""
    if spec.source is not None:
        return module_personal_entries(spec, method, names)
    layout = spec.layout()
    keep = np.zeros(layout.size, bool)
    names = personal_layer_names(spec, method, names)
    for slot in layout:
        if slot.name.split(".", 1)[0] in names:
            keep[slot.offset : slot.stop] = True
    return keep


def build_plan(cfg: Config, aggregation: Aggregation, spec: ModelSpec) -> ClientPlan:
    """What every client does; an async server sums its buffer itself, so its clients
    return their updates one by one ("stack")."""
    s = cfg.server
    postprocess = None
    if s.clipping.kind != "none" or s.compression.method != "none" or s.pruning.method != "none":
        postprocess = from_section(UpdatePostprocessor, s.compression, clip=s.clipping.kind != "none")
    return ClientPlan(
        training=local_training(cfg),
        update_kind=s.update,
        reduction="stack" if s.mode == "async" else aggregation.reduction,
        weighting=aggregation.weighting,
        scaffold=cfg.client.algorithm == "scaffold",
        attack=_attack(cfg),
        postprocess=postprocess,
        track_gradients=cfg.client.track_gradients,
        personal=build_personal_plan(cfg, spec),
        buffers=_buffer_policy(cfg, spec),
        augment=Augmentation.of(cfg.data.augment, cfg.data.crop_padding),
    )


def _buffer_policy(cfg: Config, spec: ModelSpec) -> str:
    """model.buffers, refused where averaging a module model's buffers cannot be done
    faithfully: asynchronous arrivals (one at a time), or DP (the statistics would leak
    what the noise hides)."""
    policy, s = cfg.model.buffers, cfg.server
    if policy != "average" or not spec.buffer_layout().size:
        return policy
    names = ", ".join(slot.name for slot in list(spec.buffer_layout())[:3])
    refusals = ((s.mode == "async", "server.mode: async"), (s.privacy.noise_multiplier > 0, "DP noise"))
    for refused, why in refusals:
        if refused:
            raise ModelError(
                f"model.buffers: 'average' is not supported with {why}; the model's buffers ({names}, ...) "
                "would be averaged outside it: use model.buffers local or reset"
            )
    return policy


def _attack(cfg: Config) -> Attack | None:
    a = cfg.server.attack
    if a.kind == "none":
        return None
    malicious = from_section(malicious_clients, a, seed=cfg.seed, num_clients=cfg.data.num_clients)
    return from_section(Attack, a, malicious=frozenset(int(c) for c in malicious))


def _clipper(s: ServerConfig) -> FixedClipNorm | AdaptiveClipNorm | None:
    c = s.clipping
    if c.kind == "fixed":
        return from_section(FixedClipNorm, c)
    if c.kind == "adaptive":
        # Noising the clipped count is for DP, which refuses adaptive clipping: no noise here.
        return from_section(AdaptiveClipNorm, c, count_noise_std=0.0)
    return None


def _accountant(cfg: Config) -> PrivacyAccountant | None:
    p = cfg.server.privacy
    if p.noise_multiplier <= 0:
        return None
    n, per_round = cfg.data.num_clients, sampled_per_round(cfg.server, cfg.data.num_clients)
    poisson = p.sampling == "poisson"
    return from_section(
        PrivacyAccountant, p, population=n,
        clients_per_round=None if poisson else per_round,
        sampling_rate=per_round / n if poisson else None,
    )  # fmt: skip


def build_server_state(
    cfg: Config, params: np.ndarray, spec: ModelSpec, buffers: np.ndarray | None = None
) -> ServerState:
    """A fresh server (optimiser moments, clip norm, control variates, ...) at ``params``
    (and a module model's ``buffers`` (m,), when it has any)."""
    s = cfg.server
    aggregation = build_aggregation(cfg)
    parts = ServerParts(
        seed=cfg.seed,
        plan=build_plan(cfg, aggregation, spec),
        aggregation=aggregation,
        optimizer=from_section(SERVER_OPTIMIZERS[s.optimizer], s, **_mixing_step(s)),
        clipper=_clipper(s),
        accountant=_accountant(cfg),
        pruning=None if s.pruning.method == "none" else from_section(PruningSchedule, s.pruning),
        num_clients=cfg.data.num_clients,
    )
    return ServerState(params, spec.layout(), parts, buffers)


def _mixing_step(s: ServerConfig) -> dict[str, float]:
    """FedAsync's step x <- x + a_t (x_new - x) is the SGD step with lr = mixing on the
    staleness-weighted x_new - x that ``AsyncRounds`` hands the server (server.lr stays 1.0)."""
    return {"lr": s.async_.mixing} if s.mode == "async" and s.async_.rule == "fedasync" else {}


def build_sampler(cfg: Config, work: np.ndarray, sizes: np.ndarray, server: ServerState) -> ClientSampler:
    """Who takes part in each round; the system model sees each client's local ``work``
    on its device (and times every round on the simulated clock, heterogeneous or not);
    the selection policy sees each client's training samples ``sizes`` and ``server``'s
    bytes a trip moves."""
    s, n = cfg.server, cfg.data.num_clients
    system = from_section(SystemModel, cfg.client.system)
    devices = build_devices(cfg, system)
    return ClientSampler(
        seed=cfg.seed,
        num_clients=n,
        per_round=sampled_per_round(s, n),
        poisson=s.privacy.noise_multiplier > 0 and s.privacy.sampling == "poisson",
        system=system,
        work=LocalWork(work, cfg.client.epochs, cfg.client.batch_size),
        devices=devices,
        selection=build_selection(cfg, sizes, _trip_seconds(devices, server.trip_bytes(), work)),
    )


def _trip_seconds(devices: Devices, trip_bytes: int, work: np.ndarray) -> np.ndarray:
    """Each client's whole trip in simulated seconds, its full ``work`` (num_clients,)."""
    compute = work / devices.speed
    link = devices.link_seconds(np.arange(len(work)), trip_bytes)
    return compute if link is None else compute + link


def build_devices(cfg: Config, system: SystemModel) -> Devices:
    """Every client's device: from client.system.trace's files where given (each client
    mapped to a profile by trace.mapping), else the lognormal model's speeds."""
    t, n = cfg.client.system.trace, cfg.data.num_clients
    devices = parametric_devices(cfg.seed, n, system)
    if t.capacity is not None:
        capacity = read_capacity(_trace_path("capacity", t.capacity))
        profiles = assign_profiles(n, len(capacity.ids), t.mapping, cfg.seed)
        compute_ms = capacity.compute_ms[profiles]
        devices = Devices(
            1000.0 / (t.backward_factor * compute_ms), capacity.bandwidth_kbps[profiles], compute_ms,
            trace_files=(("capacity", t.capacity, capacity.sha256),),
        )  # fmt: skip
    if t.availability is not None:
        availability = read_availability(_trace_path("availability", t.availability))
        profiles = assign_profiles(n, len(availability.ids), t.mapping, cfg.seed)
        files = (*devices.trace_files, ("availability", t.availability, availability.sha256))
        devices = dataclasses.replace(
            devices, availability=availability, profiles=profiles, trace_files=files
        )
    return devices


def _trace_path(kind: str, path: str) -> Path:
    """client.system.trace.``kind``'s file; a missing one is one error saying where a relative
    path was looked for."""
    found = Path(path).expanduser()
    if not found.exists():
        where = (
            ""
            if found.is_absolute()
            else f" (a relative path is read from the working directory, {Path.cwd()})"
        )
        raise DataError(f"client.system.trace.{kind}: {path} not found{where}")
    return found


def build_selection(cfg: Config, sizes: np.ndarray, trip_seconds: np.ndarray) -> Selection | None:
    """server.selection's policy (None: uniform); Oort registers each client with its
    ``sizes`` (training samples) and expected ``trip_seconds``, as FedScale registers them."""
    s = cfg.server
    if s.selection == "uniform":
        return None
    sizes = np.asarray(sizes, np.float64)
    if s.selection == "power_of_choice":
        return Selection(cfg.seed, sizes, None, s.power_of_choice.candidates)
    settings = from_section(OortSettings, s.oort)
    return Selection(cfg.seed, sizes, OortSelector(len(sizes), settings, cfg.seed, sizes, trip_seconds))


def build_async(
    cfg: Config, work: np.ndarray, system: SystemModel, devices: Devices | None, trip_bytes: int
) -> AsyncRounds | None:
    """The asynchronous server's schedule and staleness weighting (server.mode: async),
    on the sampler's ``system`` model and ``devices``, each trip moving ``trip_bytes``."""
    s, n = cfg.server, cfg.data.num_clients
    if s.mode != "async":
        return None
    concurrency, buffer_size = async_shape(s, n)
    a = s.async_
    schedule = AsyncSchedule(
        seed=cfg.seed, num_clients=n, concurrency=concurrency, buffer_size=buffer_size, work=work,
        system=system, max_staleness=a.max_staleness, devices=devices, trip_bytes=trip_bytes,
    )  # fmt: skip
    weight = StalenessWeight(a.staleness, a.staleness_a, a.staleness_b)
    mixing = a.mixing if a.rule == "fedasync" else None
    return AsyncRounds(schedule, weight, cfg.runtime.reduction_groups, mixing)


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """Everything that shapes a run's training, built from its config by ``build_run``."""

    rounds: int
    seed: int
    dataset: Dataset
    splits: ClientSplits
    shards: ClientShards  # each client's training rows, packed
    eval_shards: ClientShards | None  # each client's held-out rows (federated evaluation)
    population: SyntheticClients | None
    spec: ModelSpec
    engine: str
    server: ServerState
    sampler: ClientSampler
    client_work: np.ndarray  # (num_clients,) samples each processes in a round, plus one batch
    reduction_groups: int  # the sampled clients are summed in this many groups, in this order
    async_rounds: AsyncRounds | None = None  # server.mode: async


def _sizes(shards: ClientShards, population: SyntheticClients | None, num_clients: int) -> np.ndarray:
    """Training samples of every client (num_clients,)."""
    if population is not None:
        return np.full(num_clients, population.train_size())
    return shards.sizes()


def build_run(cfg: Config) -> RunSetup:
    """Read the config for everything that shapes training; nothing else does."""
    dataset = build_dataset(cfg.data, cfg.seed, model_task(cfg.model))
    if dataset.is_regression:  # a callable loss with model.task auto learns it only now
        refuse_under_regression(cfg)
    if not len(dataset.y_test):
        raise DataError(
            f"the server's test set of {dataset.name} is empty (data.test_fraction, or the test rows "
            "of the clients kept by data.num_clients); nothing could evaluate the model"
        )
    splits = client_splits(dataset, cfg)
    population = build_population(cfg.data, cfg.seed)
    shards = ClientShards.pack(splits.train)
    spec = build_model_spec(cfg.model, dataset, cfg.seed)
    params, buffers = initial_state(spec, cfg.seed)
    server = build_server_state(cfg, params, spec, buffers)
    sizes = _sizes(shards, population, cfg.data.num_clients)
    training = server.plan.training
    work = from_section(local_work, training, sizes=sizes, update_kind=cfg.server.update)
    sampler = build_sampler(cfg, work, sizes, server)
    eval_shards = None if splits.held_out is None else ClientShards.pack(splits.held_out)
    system = sampler.system
    assert system is not None  # build_sampler gives every sampler a system model
    return RunSetup(
        rounds=cfg.rounds, seed=cfg.seed, dataset=dataset, splits=splits, shards=shards,
        eval_shards=eval_shards, population=population, spec=spec, engine=cfg.model.engine,
        server=server, sampler=sampler,
        # A client costs about a batch beyond its samples: the model copy, its update's norm and sum.
        client_work=work + training.batch_size,
        reduction_groups=cfg.runtime.reduction_groups,
        async_rounds=build_async(cfg, work, system, sampler.devices, server.trip_bytes()),
    )  # fmt: skip
