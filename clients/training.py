"""What one client computes in one round: local training from the global model
(FedAvg family) or the gradient at the global model (FedSGD).

All randomness (the data order) comes from a generator derived from
(seed, round, client id, purpose), so a client's update does not depend on
which worker computes it or when.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.algorithms import StepTransform
from clients.data.transforms import Augmenter
from clients.models import arrays
from clients.optim import make_optimizer


def client_rng(seed: int, round_: int, client_id: int, purpose: int) -> np.random.Generator:
    """The generator for one (seed, round, client, purpose); independent streams."""
    return np.random.default_rng(np.random.SeedSequence([seed, round_, client_id, purpose]))


@dataclass(frozen=True)
class LocalTrainingConfig:
    lr: float
    momentum: float
    weight_decay: float
    epochs: int
    batch_size: int
    optimizer: str = "sgd"
    prox_mu: float = 0.0  # FedProx
    max_grad_norm: float | None = None  # local per-step clipping
    local_steps: int | None = None  # FedSGD: batches in the gradient (None = whole shard)


@dataclass
class ClientResult:
    """One client's round: its update and what it measured.

    update: (n,) float32: local - global (weights), or the mean loss gradient at
    the global model (gradients). steps: local steps taken.
    """

    client_id: int
    num_samples: int
    train_loss: float
    update: np.ndarray
    flow: np.ndarray | None = None  # (layers, 2) mean |dL/dh|, |dL/dθ| over local steps
    steps: int = 0
    kept: np.ndarray | None = None  # the trained model's entries under ``keep`` (personal state)
    # The batch-size-weighted mean of squared minibatch losses over the samples it processed
    # (all epochs): Oort's statistical utility.
    loss_square: float = float("nan")
    samples_seen: int = 0


@dataclass(frozen=True, kw_only=True)
class ClientTask:
    """One local pass of one client: on what, from where, and how.

    model: an engine model with flat ``params``/``grad``, ``loss_and_grad`` and the
    array methods of ``clients.models.arrays.HostArrays`` (its vectors may live on a
    device: the update comes back as a host array either way).
    start: (n,) float32, the parameters the pass starts from (the global model).
    x: (N, *input_shape) and y: (N,) int64, the whole (read-only) training set;
    shard: (m,) int64 indices of this client's samples in it.
    cfg: the optimiser settings, epochs and batch size; rng: the data order's generator.
    correction: SCAFFOLD's c - c_i (n,), or None.
    mask: (n,) bool pruning mask: pruned weights get no gradient and stay exactly zero.
    trainable: (n,) bool, or None for all: the other entries stay exactly as they start
    (FedRep's alternating head and body phases).
    anchor: the proximal term's centre (n,) when it is not the start point (Ditto's
    personal model is pulled towards the global one); default ``start``.
    keep: (n,) bool: the trained entries to return as ``kept`` (a personal head), or None.
    max_steps: stop after this many local steps (fine-tuning), or None for whole epochs.
    max_samples: stop before the first batch that would take the samples processed past
    this budget (partial work cut at a deadline), or None.
    augment: crops and flips each training batch (data.augment), or None.
    """

    model: Any
    start: np.ndarray
    x: np.ndarray
    y: np.ndarray
    shard: np.ndarray
    cfg: LocalTrainingConfig
    rng: np.random.Generator
    client_id: int
    correction: np.ndarray | None = None
    mask: np.ndarray | None = None
    trainable: np.ndarray | None = None
    anchor: np.ndarray | None = None
    keep: np.ndarray | None = None
    max_steps: int | None = None
    max_samples: int | None = None
    augment: Augmenter | None = None


def train_client(task: ClientTask) -> ClientResult:
    """Run ``cfg.epochs`` of minibatch local training on the client's shard from its
    start point (``task``). Returns
    the delta and the sample-weighted mean minibatch loss."""
    model, cfg, shard = task.model, task.cfg, task.shard
    model.load_params(task.start)
    # On a device, the start point is copied there once, from the loaded parameters.
    start_params = arrays.copy(model.params) if arrays.is_tensor(model.params) else task.start
    step = _LocalStep(model, task, start_params)
    data = _client_batches(model, task)
    flow = FlowAverage() if model.track_gradients else None
    smallest = smallest_batch(model)
    loss_sum, square_sum, seen, steps = 0.0, 0.0, 0, 0
    for _ in range(cfg.epochs):
        order = task.rng.permutation(len(shard))
        for start in range(0, len(order), cfg.batch_size):
            if steps == task.max_steps:
                break
            positions = order[start : start + cfg.batch_size]
            if len(positions) < smallest:
                continue
            if task.max_samples is not None and seen + len(positions) > task.max_samples:
                break
            loss = model.loss_and_grad(*data.batch(positions))
            step.take(model)
            loss_sum += loss * len(positions)
            square_sum += loss * loss * len(positions)
            seen += len(positions)
            steps += 1
            if flow is not None:
                flow.add(model.last_flow)
    delta = arrays.to_numpy(model.params - start_params)
    kept = None if task.keep is None else arrays.to_numpy(model.params)[task.keep]
    mean_loss = loss_sum / seen if seen else float("nan")
    return ClientResult(
        client_id=task.client_id, num_samples=len(shard), train_loss=mean_loss, update=delta,
        flow=flow.mean() if flow else None, steps=steps, kept=kept,
        loss_square=square_sum / seen if seen else float("nan"), samples_seen=seen,
    )  # fmt: skip


def _client_batches(model: Any, task: ClientTask) -> Any:
    """The client's rows as the engine batches them, augmented when the task says so."""
    data = model.shard_data(task.x, task.y, task.shard)
    return data if task.augment is None else task.augment.wrap(data)


class _LocalStep:
    """One local step after the gradient: the proximal term, per-step clipping and
    SCAFFOLD's correction; the pruning mask; frozen entries; the optimiser's update."""

    def __init__(self, model: Any, task: ClientTask, start_params: Any):
        cfg = task.cfg
        self.optimizer = make_optimizer(cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
        centre = start_params if task.anchor is None else model.to_engine(task.anchor)
        correction = model.to_engine(task.correction)
        self.transform = StepTransform(cfg.prox_mu, centre, cfg.max_grad_norm, correction)
        self.mask = None if task.mask is None else model.to_engine(task.mask)
        self.freeze = None if task.trainable is None else Freeze(model, task.trainable)

    def take(self, model: Any) -> None:
        if self.transform.active:
            self.transform.apply(model.grad, model.params)
        if self.mask is not None:
            model.grad *= self.mask
        if self.freeze is not None:
            model.grad *= self.freeze.trainable
        self.optimizer.step(model.params, model.grad)
        if self.mask is not None:
            model.params *= self.mask  # weight decay / momentum must not revive a pruned weight
        if self.freeze is not None:
            self.freeze.restore(model.params)


def smallest_batch(model) -> int:
    """The fewest rows a training batch may have: batch norm cannot normalise one sample by
    its own statistics, so under it a (last) batch of one is skipped, in every kind of pass."""
    return 2 if model.spec.has_batchnorm() else 1


class Freeze:
    """Holds the entries outside ``trainable`` at their values: their gradient is zeroed
    before each step, and after it they are put back exactly (weight decay would move them)."""

    def __init__(self, model, trainable: np.ndarray):
        self.trainable = model.to_engine(trainable.astype(np.float32))
        self.frozen = model.params * (1.0 - self.trainable)

    def restore(self, params) -> None:
        params *= self.trainable
        params += self.frozen


def client_gradient(task: ClientTask) -> ClientResult:
    """FedSGD (McMahan et al. 2017, arXiv:1602.05629, Section 2): the gradient of the
    client's mean loss at its start point, over its whole shard (in batches of
    ``cfg.batch_size``, weighted by batch size) or over ``cfg.local_steps`` batches
    of a seeded order; under batch norm a batch of one row is skipped, as in local
    training, and not counted. ``task``: a ``ClientTask`` (its mask and augmentation
    apply). Returns it as ``update`` (n,) float32, with ``num_samples`` the shard's
    size n_k whatever the batches seen: the server's sum over k of (n_k / n) g_k
    weighs each client by its data, as the paper's rule does (0 when no batch was
    left: an empty update)."""
    model, cfg = task.model, task.cfg
    model.load_params(task.start)
    data = _client_batches(model, task)
    order = task.rng.permutation(len(task.shard))
    batches = [order[s : s + cfg.batch_size] for s in range(0, len(order), cfg.batch_size)]
    if cfg.local_steps is not None:
        batches = batches[: cfg.local_steps]
    batches = [b for b in batches if len(b) >= smallest_batch(model)]
    total = arrays.zeros_like(model.grad, dtype=np.float64)
    loss_sum, square_sum, seen = 0.0, 0.0, 0
    for positions in batches:
        loss = model.loss_and_grad(*data.batch(positions))
        total += len(positions) * model.grad
        loss_sum += loss * len(positions)
        square_sum += loss * loss * len(positions)
        seen += len(positions)
    gradient = arrays.to_numpy(total / max(seen, 1)).astype(np.float32)
    if task.mask is not None:
        gradient *= task.mask
    mean_loss = loss_sum / seen if seen else float("nan")
    return ClientResult(
        client_id=task.client_id, num_samples=len(task.shard) if seen else 0, train_loss=mean_loss,
        update=gradient, steps=len(batches), loss_square=square_sum / seen if seen else float("nan"),
        samples_seen=seen,
    )  # fmt: skip


SCORE_KINDS = ("saliency", "squared_gradient")


@dataclass(frozen=True, kw_only=True)
class ScoreTask:
    """One client's pruning-score pass: ``kind`` (one of SCORE_KINDS) of ``model`` at
    ``params`` (n,) float32, on its rows ``shard`` of ``x`` / ``y``, ``batch_size`` a batch."""

    kind: str
    model: Any
    params: np.ndarray
    x: np.ndarray
    y: np.ndarray
    shard: np.ndarray
    batch_size: int


def client_scores(task: ScoreTask) -> np.ndarray:
    """One client's pruning scores (n,) float64 on its whole shard at ``task.params``:
    ``saliency`` |w ⊙ g| with g its mean loss gradient (SNIP, Lee et al. 2019), or
    ``squared_gradient`` the batch-size-weighted mean of squared batch gradients
    (PruneFL, Jiang et al. 2022). Batches in shard order: no randomness."""
    model, shard, kind = task.model, task.shard, task.kind
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score kind {kind!r}; known: {', '.join(SCORE_KINDS)}")
    model.load_params(task.params)
    data = model.shard_data(task.x, task.y, shard)
    total, seen = np.zeros(task.params.shape, dtype=np.float64), 0
    for start in range(0, len(shard), task.batch_size):
        positions = np.arange(start, min(start + task.batch_size, len(shard)))
        if len(positions) < smallest_batch(model):
            continue
        model.loss_and_grad(*data.batch(positions))
        grad = arrays.to_numpy(model.grad).astype(np.float64)
        total += len(positions) * (grad if kind == "saliency" else grad * grad)
        seen += len(positions)
    mean = total / max(seen, 1)
    return np.abs(task.params * mean) if kind == "saliency" else mean


class FlowAverage:
    """Mean over local steps of each layer's (|dL/dh|, |dL/dθ|)."""

    def __init__(self) -> None:
        self.total: np.ndarray | None = None
        self.steps = 0

    def add(self, flow: dict[str, tuple[float, float]]) -> None:
        step = np.array(list(flow.values()), dtype=np.float64)
        self.total = step if self.total is None else self.total + step
        self.steps += 1

    def mean(self) -> np.ndarray | None:
        return None if self.total is None else self.total / self.steps
