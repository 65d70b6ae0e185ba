"""The messages between the driver and its workers, as Ray carries them.

Everything here is a plain dataclass of numpy arrays and small values, so Ray
pickles it with the arrays out of band: a worker reads them zero-copy from the
object store, as numpy (never torch tensors). Driver to worker: ``WorkerRun`` (a
run, once per worker), ``RoundInput`` (per training task), ``EvalRequest`` (per
evaluation task); worker to driver: ``GroupResult`` (per reduction group).
``ClientPlan`` and ``ClientShards`` are parts of a run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clients.models.spec import BUFFER_POLICIES

if TYPE_CHECKING:
    from clients.attacks import Attack
    from clients.data.datasets import SyntheticClients
    from clients.data.transforms import Augmentation
    from clients.models.spec import ModelSpec
    from clients.personalization import PersonalPlan
    from clients.training import LocalTrainingConfig

REDUCTIONS = ("sum", "stack")
WEIGHTINGS = ("samples", "uniform")


@dataclass(frozen=True, kw_only=True)
class ClientPlan:
    """What every client of this run does, fixed for the run.

    update_kind: "weights" (send local - global) or "gradients" (FedSGD).
    reduction: "sum" (a group returns the weighted sum of its updates, for the
    linear mean) or "stack" (per-client updates, for robust aggregators).
    weighting: "samples" (w_i = n_i, FedAvg) or "uniform" (w_i = 1: the SCAFFOLD
    and DP-FedAvg papers' unweighted average).
    attack: the run's malicious clients, or None.
    postprocess: the server's per-client step, ``process(update, clip_norm, rng,
    residual) -> ProcessedUpdate``, or None.
    """

    training: LocalTrainingConfig
    update_kind: str = "weights"
    reduction: str = "sum"
    weighting: str = "samples"
    scaffold: bool = False
    attack: Attack | None = None
    postprocess: Any = None
    track_gradients: bool = False
    personal: PersonalPlan | None = None  # FedPer, FedRep, FedBN or Ditto
    augment: Augmentation | None = None  # crops / flips of training batches (data.augment)
    # A module model's buffers: each client starts from the global ones, which the server
    # averages from the clients' by samples ("average"), from its own kept ones ("local"),
    # or from their initial values ("reset").
    buffers: str = "average"

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS or self.weighting not in WEIGHTINGS:
            raise ValueError(f"reduction must be in {REDUCTIONS} and weighting in {WEIGHTINGS}")
        if self.buffers not in BUFFER_POLICIES:
            raise ValueError(f"buffers must be in {BUFFER_POLICIES}, got {self.buffers!r}")

    def upload_bytes(self, sent: int, size: int, buffer_size: int) -> int:
        """What a client uploads: its processed update of ``sent`` bytes (of a model of
        ``size`` parameters), less what a personalized client keeps when the update travels
        dense, plus SCAFFOLD's control-variate change and, averaged, its ``buffer_size``
        buffers."""
        if self.personal is not None and sent == 4 * size:
            sent -= self.personal.kept_bytes
        averaged = buffer_size if self.buffers == "average" else 0
        return sent + (4 * size if self.scaffold else 0) + 4 * averaged

    def planned_upload_bytes(self, size: int, buffer_size: int, mask: np.ndarray | None) -> int:
        """``upload_bytes`` of any client's update this round, known before anyone trains."""
        sent = 4 * size if self.postprocess is None else self.postprocess.sent_bytes(size, mask)
        return self.upload_bytes(sent, size, buffer_size)


@dataclass(frozen=True, kw_only=True)
class RoundInput:
    """What a task needs beyond the global model: this round's clip norm, SCAFFOLD's
    server control variate, the state of the group's clients, and how much work each
    does when the system model gives some less."""

    round: int
    clip_norm: float | None = None
    server_control: np.ndarray | None = None
    client_states: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    mask: np.ndarray | None = None  # (n,) bool pruning mask broadcast with the model
    buffers: np.ndarray | None = None  # (m,) the global model's buffers (module models with any)
    # Asynchronous runs: a group's clients were dispatched at its own event, which keys
    # their draws in place of the round (group index -> event).
    group_rounds: dict[int, int] = field(default_factory=dict)
    # Partial work (client.system): client -> its local epochs when fewer than
    # client.epochs (a straggler), and client -> the samples it processes before the
    # deadline cuts it; clients not named do full work.
    local_epochs: dict[int, int] = field(default_factory=dict)
    sample_budgets: dict[int, int] = field(default_factory=dict)

    def for_group(self, group_index: int) -> RoundInput:
        """This input as the clients of group ``group_index`` see it."""
        if group_index not in self.group_rounds:
            return self
        return dataclasses.replace(self, round=self.group_rounds[group_index])


@dataclass(frozen=True, kw_only=True)
class GroupResult:
    """A reduction group's contribution to one round; per-client arrays follow ``client_ids``.

    weighted_sum: (n,) float32 sum over accepted clients of w_i * u_i (w_i = n_i, or
    1 with uniform weighting), added in client-id order; None for "stack", whose
    accepted updates are ``stacked`` (k_accepted, n) with weights ``stacked_weights``.
    """

    group_index: int
    client_ids: np.ndarray
    num_samples: np.ndarray
    train_losses: np.ndarray
    accepted: np.ndarray
    norms: np.ndarray  # update norms before clipping (nan when rejected)
    bytes_up: np.ndarray
    weight_total: float
    weighted_sum: np.ndarray | None = None
    stacked: np.ndarray | None = None
    stacked_weights: np.ndarray | None = None
    flow_sum: np.ndarray | None = None  # (layers, 2) sum of n_i * flow_i over accepted clients
    control_delta_sum: np.ndarray | None = None  # SCAFFOLD: sum of c_i+ - c_i
    new_states: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # distinct warnings its clients raised, "Category: message"
    # model.buffers: average: (m,) float32 sum of n_i * b_i (buffers after training) over
    # accepted clients, in client-id order, and the sum of their n_i.
    buffer_sum: np.ndarray | None = None
    buffer_weight: float = 0.0
    # (k,) int64 local steps of each accepted client (0: rejected or empty); None where a
    # group was put together from single updates (an asynchronous buffer).
    steps: np.ndarray | None = None
    # (k,) float64 each client's batch-size-weighted mean of squared minibatch losses (nan
    # where none), and (k,) int64 the samples it processed; None where a group was put
    # together from single updates.
    loss_squares: np.ndarray | None = None
    samples_seen: np.ndarray | None = None


@dataclass(frozen=True)
class ClientShards:
    """Every client's sample indices, packed: client c owns
    ``indices[offsets[c]:offsets[c + 1]]``."""

    indices: np.ndarray
    offsets: np.ndarray

    @classmethod
    def pack(cls, parts: list[np.ndarray]) -> ClientShards:
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        indices = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return cls(indices, offsets)

    def shard(self, client_id: int) -> np.ndarray:
        return self.indices[self.offsets[client_id] : self.offsets[client_id + 1]]

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True, kw_only=True)
class EvalRequest:
    """What federated evaluation asks of a task beyond the global model and its groups.

    batch_size: held-out rows per evaluation batch. states: the task's clients' own state
    (personal models, kept buffers) by client id. finetune_steps: local steps of the
    fine-tuned global model (0: none), whose draws ``round`` keys. buffers: (m,) the
    global model's buffers (module models; None: their initial values).
    """

    batch_size: int
    states: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    finetune_steps: int = 0
    round: int = 0
    buffers: np.ndarray | None = None


@dataclass(frozen=True, kw_only=True)
class WorkerRun:
    """One run as a worker takes it on (``ClientWorker.load``). The driver puts it into
    Ray's object store once; every worker reads its arrays from there zero-copy.

    x_train (N, *input_shape) and y_train (N,): the whole training set, read-only;
    shard_indices / shard_offsets: every client's rows of it, packed as ``ClientShards``.
    population: when set, clients' data are generated on the worker instead.
    eval_indices / eval_offsets: every client's held-out rows for federated evaluation
    (None when it is off), into eval_x / eval_y: a natural split's test arrays, or the
    training set's when None.
    """

    spec: ModelSpec
    engine: str
    x_train: np.ndarray
    y_train: np.ndarray
    shard_indices: np.ndarray
    shard_offsets: np.ndarray
    plan: ClientPlan
    seed: int
    population: SyntheticClients | None = None
    eval_indices: np.ndarray | None = None
    eval_offsets: np.ndarray | None = None
    eval_x: np.ndarray | None = None
    eval_y: np.ndarray | None = None

    @property
    def shards(self) -> ClientShards:
        return ClientShards(self.shard_indices, self.shard_offsets)

    @property
    def eval_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The (x, y) that ``eval_shards`` index."""
        if self.eval_x is None or self.eval_y is None:
            return self.x_train, self.y_train
        return self.eval_x, self.eval_y

    @property
    def eval_shards(self) -> ClientShards | None:
        if self.eval_indices is None or self.eval_offsets is None:
            return None
        return ClientShards(self.eval_indices, self.eval_offsets)
