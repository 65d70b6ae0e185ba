"""Typed, frozen run configuration, read from YAML at the edge.

Every field has a default and a description (units, meaning). A config file
is a short diff over these defaults; ``--set a.b=v`` overrides one value with
YAML type coercion. Unknown keys are refused with a "did you mean", bad
values with the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from clients.attacks import ATTACKS
from clients.data.formats import USER_DATASETS
from clients.data.partition import PARTITIONS
from clients.data.transforms import AUGMENTATIONS, NORMALIZATIONS
from clients.devices import DEVICES
from clients.models.engines import ENGINES
from clients.models.spec import (
    ACTIVATION_KINDS,
    BUFFER_POLICIES,
    MODEL_NAMES,
    MODULE_MODEL,
)
from clients.personalization_methods import PERSONALIZATION_METHODS
from server.aggregation import AGGREGATORS
from server.asynchronous import ASYNC_RULES, STALENESS_KINDS
from server.clipping import CLIPPING_KINDS
from server.compression import COMPRESSION_METHODS
from server.optimizers import SERVER_OPTIMIZERS
from server.privacy import SAMPLINGS
from server.pruning import PRUNING_SCORES, SCHEDULES, SCOPES

BUILT_IN_DATASETS = ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "femnist", "shakespeare")
DATASETS = (*BUILT_IN_DATASETS, *USER_DATASETS)
NATURAL_DATASETS = ("synthetic", "femnist", "shakespeare")  # datasets whose clients are given
TEXT_DATASETS = ("shakespeare",)
MODELS = (*MODEL_NAMES, MODULE_MODEL)
IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "femnist")
IMAGE_USER_DATASETS = ("arrays", "npz", "image_folder", "hf_disk")  # may hold (N, C, H, W) images
ACTIVATIONS = ACTIVATION_KINDS
TASKS = ("auto", "classification", "regression")
INT64_MAX = 2**63 - 1
log = logging.getLogger("fedsim")


def _field(
    default: Any,
    help_: str,
    choices: tuple[str, ...] | None = None,
    at_most: int | None = None,
    yaml_key: str | None = None,
) -> Any:
    """A config field: its default, its meaning and units, the values allowed, and for
    counts and sizes an upper bound (on each element of a list) that keeps a hostile or
    mistyped number from exhausting memory before anything could refuse it.
    ``yaml_key``: the key in YAML when it differs from the field's name (``async`` is
    a Python keyword, so the field is ``async_``)."""
    meta = {"help": help_, "choices": choices, "at_most": at_most, "yaml_key": yaml_key}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SyntheticConfig:
    alpha: float = _field(1.0, "Synthetic(α, β): spread of the per-device models u_k ~ N(0, α)")
    beta: float = _field(1.0, "Synthetic(α, β): spread of the per-device feature means B_k ~ N(0, β)")
    num_features: int = _field(60, "input dimension d", at_most=100_000)
    num_classes: int = _field(10, "number of classes", at_most=100_000)
    samples_per_device: int | None = _field(
        None, "samples on every device; null = lognormal(4, 2) + 50 as in the paper", at_most=10**7
    )


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _field("digits", "which dataset", DATASETS)
    root: str = _field("data", "folder holding the file-based datasets, in their standard layouts")
    download: bool = _field(True, "download a missing MNIST / Fashion-MNIST / CIFAR-10 (checksummed)")
    verify: bool = _field(
        True, "check MNIST / Fashion-MNIST / CIFAR-10 files on disk against their published md5s (once)"
    )
    num_clients: int = _field(
        50,
        "registered clients (devices for synthetic; the first N writers / roles for LEAF data)",
        at_most=10**7,
    )
    partition: str = _field("dirichlet", "how training data is split over clients", PARTITIONS)
    alpha: float = _field(0.5, "Dirichlet concentration; smaller = more label skew")
    shards_per_client: int = _field(2, "shards partition: label-sorted shards per client", at_most=10**6)
    min_samples_per_client: int = _field(
        2, "dirichlet: redraw until every client has this many", at_most=10**7
    )
    test_fraction: float = _field(0.2, "share of the data held out as the server test set")
    generate_on_workers: bool = _field(
        False, "synthetic: workers generate each client's data from (seed, id); any population size"
    )
    loader: str | None = _field(
        None,
        "arrays: 'package.module:callable' returning train/test arrays and optional client ids "
        "(its code runs when the run starts)",
    )
    features: list[str] = _field(
        [], "csv / parquet / hf_disk: feature columns; [] = every column but the label and client ones"
    )
    label: str = _field("label", "csv / parquet / hf_disk: the label column")
    client_column: str | None = _field(
        None, "csv / parquet / hf_disk: column of client ids; one natural client per distinct value"
    )
    normalize: str = _field(
        "none", "inputs: standard (mean 0, std 1) or minmax ([0, 1]), from the training split", NORMALIZATIONS
    )
    augment: str = _field(
        "none", "image training batches: random crop, horizontal flip, or both", AUGMENTATIONS
    )
    crop_padding: int = _field(4, "augment crop: zero padding on each side before the crop", at_most=1 << 10)
    synthetic: SyntheticConfig = _field(SyntheticConfig(), "Synthetic(α, β) generator settings")


@dataclass(frozen=True)
class ModelConfig:
    name: str = _field("mlp", "architecture; module = your own torch nn.Module (model.factory)", MODELS)
    factory: str | None = _field(
        None,
        "module: 'package.module:callable' returning a torch.nn.Module, built under torch seeded from "
        "the run's seed (importing it runs its code when the run starts)",
    )
    kwargs: dict[str, Any] = _field({}, "module: keyword arguments of the factory")
    buffers: str = _field(
        "average",
        "a module model's buffers (batch-norm running statistics): average (sample-weighted with "
        "the update), local (kept per client, as FedBN does), reset (re-initialised every round)",
        BUFFER_POLICIES,
    )
    loss: str = _field(
        "cross_entropy",
        "cross_entropy, mse, or 'package.module:callable' taking (outputs, targets) and returning "
        "the batch's mean loss as a scalar tensor (importing it runs its code when the run starts)",
    )
    task: str = _field(
        "auto",
        "classification (class-id labels, accuracy measured) or regression (float targets, loss only); "
        "auto = regression for mse, classification for cross_entropy, and for a callable loss "
        "regression when the labels are floats",
        TASKS,
    )
    engine: str = _field(
        "torch", "backpropagation engine: torch, or numpy (fedsim's chain-rule engine)", ENGINES
    )
    hidden: list[int] = _field([200, 200], "mlp: hidden layer widths", at_most=1 << 20)
    activation: str = _field("relu", "mlp: hidden activation", ACTIVATIONS)
    residual: bool = _field(False, "mlp: hidden layers after the first are x + act(Wx + b)")
    batchnorm: bool = _field(
        False,
        "mlp: batch norm after each hidden linear layer, normalising by each batch's own statistics "
        "in training and, in evaluation, by those of the whole evaluated set (no running statistics "
        "outside the flat vector)",
    )
    dropout: float = _field(0.0, "mlp: dropout probability after each hidden layer")
    conv_channels: list[int] = _field(
        [32, 64], "cnn: channels of the two 5x5 convolutions (resnet: the first)", at_most=1 << 16
    )
    fc_width: int = _field(512, "cnn: width of the fully connected layer", at_most=1 << 20)
    embedding_dim: int = _field(8, "charlstm: character embedding width", at_most=1 << 16)
    lstm_hidden: int = _field(256, "charlstm: LSTM width", at_most=1 << 16)
    lstm_layers: int = _field(2, "charlstm: stacked LSTM layers", at_most=100)
    device: str = _field(
        "auto",
        "where workers train: cuda (needs runtime.gpus_per_worker > 0), cpu, or auto "
        "(cuda when the worker was given a GPU and torch sees one, else cpu)",
        DEVICES,
    )


@dataclass(frozen=True)
class TraceConfig:
    capacity: str | None = _field(
        None,
        "device capacity trace (each device's compute ms per sample and bandwidth): FedScale's "
        "client_device_capacity pickle (read without running code) or fedsim's JSON lines "
        "(docs/traces.md); replaces client.system.speed and speed_sigma; null = none",
    )
    availability: str | None = _field(
        None,
        "device availability trace (online windows, periodic): FedScale's client_behave_trace pickle "
        "or fedsim's JSON lines; replaces client.system.availability; null = none",
    )
    mapping: str = _field(
        "seeded",
        "which trace profile each client gets: seeded (a permutation drawn from the seed; client n "
        "takes perm[n mod count]) or fedscale (client n takes profile (n + 1) mod count, FedScale's rule)",
        ("seeded", "fedscale"),
    )
    backward_factor: float = _field(
        3.0,
        "a training sample costs this many times the trace's inference ms per sample (forward + "
        "backward; FedScale uses 3)",
    )


@dataclass(frozen=True)
class SystemConfig:
    speed: float = _field(1000.0, "median client speed, samples per simulated second")
    speed_sigma: float = _field(0.0, "lognormal spread of client speeds (0 = all equal)")
    availability: float = _field(1.0, "probability a client is online in a round")
    dropout: float = _field(0.0, "probability a selected client fails to report")
    deadline: float | None = _field(None, "round deadline in simulated seconds; null = none")
    over_selection: float = _field(0.0, "extra share of clients selected; the first k to finish count")
    stragglers: float = _field(
        0.0,
        "share of each round's selected clients that straggle: each trains a uniform 1..E-1 local "
        "epochs and its partial work is aggregated (FedProx, Li et al. 2020, Section 5.2)",
    )
    drop_stragglers: bool = _field(
        False,
        "stragglers neither train nor count (FedAvg as FedProx's experiments run it); refused when it "
        "would drop every selected client",
    )
    partial_work: bool = _field(
        False,
        "with a deadline: a client that would finish late sends the local steps it finished by the "
        "deadline instead of being cut",
    )
    trace: TraceConfig = _field(
        TraceConfig(),
        "device traces: compute speed, bandwidth and availability of measured devices; a trip is "
        "download + compute + upload of the bytes actually sent (docs/traces.md)",
    )


@dataclass(frozen=True)
class PersonalizationConfig:
    method: str = _field(
        "none",
        "what each client keeps for itself: fedper / fedrep (a local head), fedbn (local batch-norm "
        "layers), ditto (a whole personal model)",
        PERSONALIZATION_METHODS,
    )
    personal_layers: list[str] = _field(
        [], "fedper / fedrep: layers kept on the clients (e.g. [fc3]); [] = the output layer"
    )
    head_epochs: int = _field(
        1, "fedrep: local epochs on the head (body frozen) before the body's", at_most=10**6
    )
    ditto_lambda: float = _field(0.1, "ditto: λ, the pull of each personal model towards the global one")
    ditto_epochs: int | None = _field(
        None, "ditto: local epochs of the personal model; null = client.epochs", at_most=10**6
    )


@dataclass(frozen=True)
class ClientConfig:
    optimizer: str = _field("sgd", "local optimiser (state is fresh every round)", ("sgd", "adam"))
    lr: float = _field(0.05, "local learning rate")
    momentum: float = _field(0.0, "local SGD momentum (0 = plain SGD; ignored by adam)")
    weight_decay: float = _field(0.0, "local L2 weight decay")
    epochs: int = _field(1, "local epochs per round (E)", at_most=10**6)
    batch_size: int = _field(10, "local minibatch size (B)", at_most=10**7)
    track_gradients: bool = _field(
        False, "record per-layer norms of dL/dh and of the parameter gradients (gradient flow)"
    )
    algorithm: str = _field(
        "fedavg", "fedavg, or scaffold (control variates, option II)", ("fedavg", "scaffold")
    )
    prox_mu: float = _field(0.0, "FedProx proximal weight mu (0 = FedAvg)")
    max_grad_norm: float | None = _field(None, "clip each local step's gradient to this L2 norm; null = off")
    local_steps: int | None = _field(
        None,
        "FedSGD: batches in each client's gradient (their mean); the client still weighs its shard "
        "size n_k in the server's mean; null = its whole shard",
        at_most=10**9,
    )
    system: SystemConfig = _field(
        SystemConfig(), "system heterogeneity: speeds, availability, dropout, deadline, stragglers"
    )
    personalization: PersonalizationConfig = _field(
        PersonalizationConfig(), "personalized federated learning: FedPer, FedRep, FedBN, Ditto"
    )


@dataclass(frozen=True)
class ClippingConfig:
    kind: str = _field("none", "per-client L2 clipping of updates", CLIPPING_KINDS)
    norm: float = _field(1.0, "fixed: the clip norm C")
    initial_norm: float = _field(
        0.1,
        "adaptive: C in the first round; after each round C moves geometrically towards the "
        "target_quantile of that round's update norms (Andrew et al. 2021)",
    )
    target_quantile: float = _field(0.5, "adaptive: fraction of updates meant to fall under C")
    learning_rate: float = _field(0.2, "adaptive: geometric step size of C")


@dataclass(frozen=True)
class PrivacyConfig:
    noise_multiplier: float = _field(0.0, "DP-FedAvg Gaussian noise std / clip norm (z); 0 = no privacy")
    delta: float = _field(1e-5, "the delta at which epsilon is reported")
    sampling: str = _field("fixed", "fixed-size (m of N) or poisson client sampling", SAMPLINGS)


@dataclass(frozen=True)
class AttackConfig:
    kind: str = _field("none", "simulated malicious clients", ATTACKS)
    fraction: float = _field(0.2, "share of the population that is malicious (fixed, seeded)")
    scale: float = _field(10.0, "sign_flip / scale: the factor on the honest update")
    noise_std: float = _field(1.0, "gaussian: std of the noise sent instead of an update")


@dataclass(frozen=True)
class CompressionConfig:
    method: str = _field("none", "update compression", COMPRESSION_METHODS)
    fraction: float = _field(0.01, "topk: share of coordinates sent")
    error_feedback: bool = _field(True, "carry what compression dropped into the client's next update")


PRUNING_METHODS = ("none", *PRUNING_SCORES)


@dataclass(frozen=True)
class PruningConfig:
    method: str = _field("none", "what ranks weights for pruning", PRUNING_METHODS)
    scope: str = _field("global", "rank all weights together or each layer alone", SCOPES)
    schedule: str = _field("gradual", "one_shot at start_round, or gradual (Zhu & Gupta 2017)", SCHEDULES)
    initial_sparsity: float = _field(0.0, "gradual: sparsity at start_round")
    sparsity: float = _field(0.9, "final share of weights pruned (biases are never pruned)")
    start_round: int = _field(10, "first pruning round (one_shot: the only one)")
    end_round: int = _field(40, "gradual: round that reaches the final sparsity")
    every: int = _field(5, "gradual: rounds between pruning steps")


@dataclass(frozen=True)
class FederatedEvalConfig:
    every: int = _field(
        0,
        "evaluate the global model on sampled clients' own held-out data every this many rounds "
        "(and the last); 0 = off",
    )
    fraction: float = _field(0.1, "share of all clients evaluated each time (at least one)")
    holdout: float = _field(
        0.2, "share of each client's samples held out from its training for its own evaluation"
    )
    finetune_steps: int = _field(
        0,
        "also evaluate the global model after this many local SGD steps on each evaluated client's "
        "own training rows (fine-tuning personalization); 0 = off",
        at_most=10**6,
    )


@dataclass(frozen=True)
class AsyncConfig:
    concurrency: int | None = _field(
        None,
        "async: clients training at once (FedBuff's concurrency); null = server.clients_per_round",
        at_most=10**7,
    )
    buffer_size: int | None = _field(
        None,
        "async: arrivals buffered before each server step (K); null = concurrency (fedbuff), 1 (fedasync)",
        at_most=10**7,
    )
    staleness: str = _field(
        "polynomial",
        "async: weight of an update s steps stale: constant 1, polynomial (1+s)^-a, "
        "hinge 1 if s <= b else 1/(a(s-b)+1) (Xie et al. 2019)",
        STALENESS_KINDS,
    )
    staleness_a: float = _field(0.5, "async: polynomial exponent a, or hinge slope a")
    staleness_b: int = _field(4, "async: hinge: staleness b up to which updates keep weight 1", at_most=10**9)
    max_staleness: int | None = _field(
        None, "async: updates more than this many steps stale are discarded; null = none", at_most=10**9
    )
    rule: str = _field(
        "fedbuff",
        "async: the server step: fedbuff (Nguyen et al. 2022) steps with the buffer's staleness-weighted "
        "mean delta (server.lr, server.optimizer); fedasync (Xie et al. 2019) mixes each arrival into the "
        "model, x <- (1 - a_t) x + a_t x_new with a_t = mixing * s(t - tau), t - tau = staleness + 1 "
        "(buffer_size 1)",
        ASYNC_RULES,
    )
    mixing: float = _field(
        0.6,
        "async, rule fedasync: the mixing weight a in (0, 1] (0.6 and 0.9 in Xie et al. 2019's experiments)",
    )


@dataclass(frozen=True)
class OortConfig:
    exploration: float = _field(
        0.9, "oort: initial share of each round's clients explored (exploration_factor)"
    )
    exploration_decay: float = _field(0.98, "oort: the exploration share is multiplied by this each round")
    exploration_min: float = _field(0.3, "oort: the exploration share never decays below this")
    alpha: float = _field(
        2.0, "oort: system penalty exponent: utility x (T / duration)^alpha above the preferred duration T"
    )
    pacer_step: int = _field(
        20, "oort: rounds between the pacer's checks of exploited utility", at_most=10**9
    )
    pacer_delta: float = _field(
        5.0, "oort: the pacer relaxes T's duration percentile by this many points when utility stalls"
    )
    cutoff_utility: float = _field(
        0.05,
        "oort: exploitation samples from the clients scoring at least (1 - this) x the (k+1)-th best "
        "score (the paper's 95%)",
    )
    sample_window: float = _field(
        5.0, "oort: unexplored clients considered for exploration: this many times the exploration slots"
    )
    round_threshold: float = _field(
        30.0, "oort: the preferred duration T is this percentile of the clients' known trip times"
    )
    clip_bound: float = _field(0.9, "oort: statistical utilities are clipped at this quantile of them")
    blacklist_rounds: int = _field(
        -1,
        "oort: a client that reported more than this many times is no longer selected; -1 = never",
        at_most=10**9,
    )
    blacklist_max_share: float = _field(0.3, "oort: at most this share of the clients is blacklisted")


@dataclass(frozen=True)
class PowerOfChoiceConfig:
    candidates: int | None = _field(
        None,
        "power_of_choice: d, the candidates drawn (by data size) whose local loss is measured; null = "
        "twice the clients selected",
        at_most=10**7,
    )


@dataclass(frozen=True)
class ServerConfig:
    mode: str = _field(
        "sync",
        "sync rounds (FedAvg), or async: FedBuff on the simulated clock (server.async)",
        ("sync", "async"),
    )
    clients_per_round: int | float = _field(
        10, "sampled clients per round: an int count, or a float fraction in (0, 1]"
    )
    lr: float = _field(1.0, "server learning rate on the averaged delta (1.0 = FedAvg)")
    update: str = _field(
        "weights", "clients send weights deltas (FedAvg) or gradients (FedSGD)", ("weights", "gradients")
    )
    optimizer: str = _field(
        "sgd",
        "server optimiser on the pseudo-gradient (Reddi et al. 2021)",
        tuple(SERVER_OPTIMIZERS),
    )
    momentum: float = _field(0.9, "momentum: server momentum beta (FedAvgM)")
    beta1: float = _field(0.9, "adam/yogi/adagrad: first-moment decay")
    beta2: float = _field(0.99, "adam/yogi: second-moment decay")
    tau: float = _field(1e-3, "adam/yogi/adagrad: adaptivity tau")
    bias_correction: bool = _field(False, "adam/yogi: divide moments by (1 - beta^t)")
    aggregator: str = _field("mean", "how updates are combined", tuple(AGGREGATORS))
    weighting: str = _field(
        "samples",
        "each update's weight in mean / multi_krum: samples (n_i, FedAvg) or uniform (1, as the "
        "SCAFFOLD and DP-FedAvg papers average)",
        ("samples", "uniform"),
    )
    trim_beta: float = _field(0.1, "trimmed_mean: share trimmed at each end")
    krum_f: int = _field(1, "krum/multi_krum: tolerated Byzantine clients f (needs k > 2f + 2)")
    krum_m: int = _field(1, "multi_krum: updates averaged")
    clipping: ClippingConfig = _field(ClippingConfig(), "per-client update clipping")
    privacy: PrivacyConfig = _field(PrivacyConfig(), "DP-FedAvg noise and accounting")
    attack: AttackConfig = _field(AttackConfig(), "attack simulation")
    compression: CompressionConfig = _field(CompressionConfig(), "update compression")
    pruning: PruningConfig = _field(PruningConfig(), "pruning in the round pipeline")
    stop_after_nonfinite_rounds: int = _field(
        3,
        "stop with status 'diverged' (exit 3) after this many rounds in a row in which every update "
        "was non-finite, the server step overflowed, or the model's loss was non-finite; 0 = never",
        at_most=10**9,
    )
    stop_after_rejected_share: float = _field(
        0.5,
        "a round in which more than this share of the updates was NaN/Inf (rejected) counts towards "
        "stop_after_nonfinite_rounds too; 1 = only rounds in which every update was",
    )
    stop_after_loss_growth: float | None = _field(
        100.0,
        "stop with status 'diverged' (exit 3) once the test loss, finite but exploding, is above this "
        "many times the initial model's (for classification at least chance level, ln(classes)) for "
        "stop_after_loss_growth_evals evaluations in a row; a factor > 1; null = never (also off when "
        "the initial loss is not > 0)",
    )
    stop_after_loss_growth_evals: int = _field(
        3, "evaluations in a row above stop_after_loss_growth that stop the run", at_most=10**9
    )
    eval_every: int = _field(1, "evaluate on the test set every this many rounds (and the last)")
    eval_batch_size: int = _field(
        1024,
        "evaluation batch size (test set, federated evaluation); results do not depend on it "
        "(losses to float32 rounding): batch norm (model.batchnorm) evaluates with the statistics "
        "of the whole evaluated set, gathered in such batches; a module model's BatchNorm without "
        "running statistics (track_running_stats=False) normalises each batch by its own",
        at_most=10**7,
    )
    federated_eval: FederatedEvalConfig = _field(
        FederatedEvalConfig(), "per-client evaluation on clients' own held-out data (clients.jsonl)"
    )
    async_: AsyncConfig = _field(
        AsyncConfig(), "asynchronous aggregation (server.mode: async)", yaml_key="async"
    )
    selection: str = _field(
        "uniform",
        "who of the online clients is selected: uniform (FedAvg), oort (Lai et al. 2021: statistical "
        "utility and system speed, server.oort) or power_of_choice (Cho et al. 2022: the highest local "
        "loss of d candidates, server.power_of_choice); sync rounds",
        ("uniform", "oort", "power_of_choice"),
    )
    oort: OortConfig = _field(OortConfig(), "Oort's settings (server.selection: oort)")
    power_of_choice: PowerOfChoiceConfig = _field(
        PowerOfChoiceConfig(), "power-of-choice's settings (server.selection: power_of_choice)"
    )


@dataclass(frozen=True)
class RuntimeConfig:
    workers: int | None = _field(None, "worker actors; null = what the cluster's CPUs allow", at_most=100_000)
    cpus_per_worker: float = _field(1.0, "CPUs each worker reserves; also its torch thread count")
    gpus_per_worker: float = _field(
        0.0, "GPUs each worker reserves (fractional shares one GPU between workers); 0 = none"
    )
    reduction_groups: int = _field(
        8, "fixed number of partial sums per round; caps useful workers (determinism)", at_most=10**6
    )
    checkpoint_every: int = _field(10, "write a checkpoint every this many rounds (and the last)")
    address: str | None = _field(None, "Ray cluster address; null = start an embedded local Ray")
    out_dir: str = _field("runs", "parent folder of run directories")
    tensorboard: bool = _field(False, "write TensorBoard scalars per round under RUN_DIR/tensorboard")
    mlflow: str | None = _field(
        None, "MLflow tracking URI (e.g. file:///path/mlruns); logs params, metrics, report; null = off"
    )
    mlflow_experiment: str = _field("fedsim", "MLflow experiment the run is logged under")
    py_modules: list[str] | None = _field(
        None,
        "user code shipped to every Ray worker with the job: module names (mypkg) or paths with a "
        "'/' (./mypkg, src/mymodels.py; relative to the folder fedsim runs in); null = the top-level "
        "packages of model.factory, model.loss and data.loader that are not installed; [] = none",
    )


@dataclass(frozen=True)
class Config:
    name: str = _field("fedsim", "run name (run directory prefix, legend label)")
    seed: int = _field(0, "root seed of every random draw", at_most=INT64_MAX)
    rounds: int = _field(50, "communication rounds", at_most=10**9)
    data: DataConfig = _field(DataConfig(), "dataset and partition")
    model: ModelConfig = _field(ModelConfig(), "model architecture")
    client: ClientConfig = _field(ClientConfig(), "local training")
    server: ServerConfig = _field(ServerConfig(), "sampling, aggregation, evaluation")
    runtime: RuntimeConfig = _field(RuntimeConfig(), "Ray workers, checkpoints, output")

    def sampled_per_round(self) -> int:
        """Number of clients sampled each round (a fraction resolves to at least 1)."""
        return sampled_per_round(self.server, self.data.num_clients)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data under its YAML keys."""
        return _as_yaml_dict(self)


# Config keys that may name user code ("package.module:callable"), and whether workers
# import it (data.loader runs on the driver alone). By default (runtime.py_modules: null)
# the packages of all of them travel to the workers; a new key of the kind goes here only.
USER_CODE_KEYS = (("model.factory", True), ("model.loss", True), ("data.loader", False))


def user_code_targets(cfg: Config, on_workers: bool = False) -> dict[str, str]:
    """The user code ``cfg`` names, by key ({"model.factory": "mypkg.nets:small"}); with
    ``on_workers``, only what the workers import. A key that is unset, or names a
    built-in (model.loss: mse), names no code."""
    targets = {}
    for key, imported_on_workers in USER_CODE_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name, None)
        if isinstance(value, str) and ":" in value and (imported_on_workers or not on_workers):
            targets[key] = value
    return targets


def yaml_key(f: dataclasses.Field) -> str:
    """A field's key in YAML (and in dotted paths): its name, unless it says otherwise."""
    return f.metadata.get("yaml_key") or f.name


def _as_yaml_dict(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[yaml_key(f)] = _as_yaml_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def async_shape(s: ServerConfig, num_clients: int) -> tuple[int, int]:
    """(concurrency, buffer size) of an async server, nulls resolved."""
    concurrency = s.async_.concurrency or sampled_per_round(s, num_clients)
    if s.async_.rule == "fedasync":  # one arrival, one mixing step
        return concurrency, 1
    return concurrency, s.async_.buffer_size or concurrency


def sampled_per_round(s: ServerConfig, num_clients: int) -> int:
    """``server.clients_per_round`` as a count: a fraction of ``num_clients`` resolves to at least 1."""
    per_round = s.clients_per_round
    return max(1, round(per_round * num_clients)) if isinstance(per_round, float) else per_round


def selected_per_round(cfg: Config) -> int:
    """Clients the system model selects in a round when every client is online: ceil(k (1 +
    client.system.over_selection)) of data.num_clients (k: ``sampled_per_round``)."""
    k, num_clients = sampled_per_round(cfg.server, cfg.data.num_clients), cfg.data.num_clients
    return min(num_clients, math.ceil(k * (1 + cfg.client.system.over_selection) - 1e-9))  # 100 * 1.1 is 110
