"""The worker: one process that hosts many virtual clients.

A virtual client is (id, shard indices, optional state); it is not a process.
A worker keeps one model and the read-only training set (zero-copy from Ray's
object store) and, per task, trains reduction groups of clients in client-id
order. Per client: train (or compute the FedSGD gradient), act maliciously if
the client is an attacker, reject non-finite updates, then the server's
per-client postprocessing (clip, compress) which the simulator hands in. For
linear aggregation it returns the group's SUM of updates, so traffic per
round is O(groups x model), not O(clients x model); for robust aggregators it
returns the per-client updates. The class is plain Python; the simulator
wraps it with ``ray.remote``.

A worker is built for a shape (threads, device) and then ``load``-ed with a
run (model, data refs, plan, seed); it can be loaded again with another run,
so warm workers can serve several runs in one process. Loading rebuilds every
piece of per-run state, so a reused worker computes the same bits as a new one.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from clients.algorithms import scaffold_new_control
from clients.attacks import flip_labels
from clients.data.transforms import Augmenter
from clients.devices import worker_device
from clients.errors import ClientFailure, ConfigError, FedsimError
from clients.models.arrays import to_numpy
from clients.models.engines import build_model
from clients.models.norm_statistics import calibrated
from clients.personalization import (
    finetuned,
    train_personalized,
)
from clients.protocol import EvalRequest, GroupResult, RoundInput, WorkerRun
from clients.streams import Stream
from clients.training import (
    ClientResult,
    ClientTask,
    ScoreTask,
    client_gradient,
    client_rng,
    client_scores,
    train_client,
)
from clients.updates import add_weighted, update_norm
from clients.user_code import import_here

SHAPE_ATTRIBUTES = frozenset({"device", "device_name"})  # what a worker keeps between runs


class _GroupAccumulator:
    """Collects a group's clients in order: sums, stacks, norms, bytes, states."""

    def __init__(self, size: int, reduction: str, weighting: str):
        self.uniform = weighting == "uniform"
        self.total = np.zeros(size, np.float32) if reduction == "sum" else None
        self.stacked: list[np.ndarray] = []
        self.stacked_weights: list[float] = []
        self.weight_total = 0.0
        self.flow_sum: np.ndarray | None = None
        self.control_sum: np.ndarray | None = None
        self.buffer_sum: np.ndarray | None = None
        self.buffer_weight = 0.0

    def add(self, update: np.ndarray, num_samples: int) -> None:
        weight = 1.0 if self.uniform else float(num_samples)
        self.weight_total += weight
        if self.total is None:
            self.stacked.append(update)
            self.stacked_weights.append(weight)
        else:
            add_weighted(self.total, update, weight)

    def add_flow(self, flow: np.ndarray | None, num_samples: int) -> None:
        if flow is not None:
            weighted = num_samples * flow
            self.flow_sum = weighted if self.flow_sum is None else self.flow_sum + weighted

    def add_buffers(self, buffers: np.ndarray, num_samples: int) -> None:
        if self.buffer_sum is None:
            self.buffer_sum = np.zeros(buffers.size, np.float32)
        add_weighted(self.buffer_sum, buffers, float(num_samples))
        self.buffer_weight += num_samples

    def add_control_delta(self, delta: np.ndarray) -> None:
        self.control_sum = delta.copy() if self.control_sum is None else self.control_sum + delta


def _this_node() -> str:
    """The Ray node this worker runs on: its IP address and the start of its node id."""
    import ray

    return f"{ray.util.get_node_ip_address()} ({ray.get_runtime_context().get_node_id()[:8]})"


class ClientWorker:
    """Hosts virtual clients; trains reduction groups per call, for the run last loaded."""

    def __init__(self, threads: int, device: str = "cpu", gpus_per_worker: float = 0.0):
        # Same thread count on every worker => kernels reduce in the same order.
        torch.set_num_threads(threads)
        threadpool_limits(threads)  # numpy's BLAS too; stays in force for this process
        self.device = worker_device(device, gpus_per_worker)
        self.device_name = "cpu" if self.device is None else str(self.device)

    def load(self, run: WorkerRun) -> dict[str, Any]:
        """Take on ``run``: every piece of per-run state is set here, none survives from a
        previous run. Returns ``ping()``."""
        self.unload()
        spec, plan = run.spec, run.plan
        self.model = build_model(spec, run.engine, device=self.device)
        self.model.track_gradients = plan.track_gradients
        # A module model may draw from torch's generator anywhere (dropout, stochastic depth).
        self.has_dropout = spec.source is not None or any(layer.kind == "dropout" for layer in spec.layers)
        self.has_batch_stats = any(layer.args.get("batch_stats") for layer in spec.layers)
        self.buffer_size = spec.buffer_layout().size  # a module model's float buffers (m,)
        self.has_buffers = self.buffer_size > 0
        self.x, self.y = run.x_train, run.y_train
        flips = plan.attack is not None and plan.attack.kind == "label_flip"
        self.y_flipped = flip_labels(run.y_train, spec.num_classes) if flips else None
        self.shards = run.shards
        # Clients' own held-out samples, for federated evaluation (None when it is off).
        self.eval_shards = run.eval_shards
        # The arrays those shards index: the training set, or a natural test split.
        self.eval_x, self.eval_y = run.eval_arrays
        self.population = run.population  # when set, clients' data are generated here on demand
        self.plan = plan
        self.seed = run.seed
        return self.ping()

    def import_user_code(self, targets: dict[str, str]) -> None:
        """Import the user code the run names (``{"model.factory": "mypkg.nets:small"}``) here,
        before ``load`` builds with it: the worker's environment is not the driver's (a
        package not shipped, or not installed on this node), so that the driver imports it
        proves nothing. A failure is one ConfigError naming the code, this node and the error."""
        for key, target in targets.items():
            why = import_here(target)
            if why is not None:
                raise ConfigError(
                    f"runtime.py_modules: worker on node {_this_node()} cannot import {key} {target}: {why}"
                )

    def unload(self) -> None:
        """Let go of everything the run loaded (model, data refs, plan), so an idle worker
        pins nothing in the object store; only the shape (device) stays."""
        for name in set(vars(self)) - SHAPE_ATTRIBUTES:
            delattr(self, name)

    def ping(self) -> dict[str, Any]:
        """What this worker runs with: torch threads and the device it trains on."""
        return {"threads": torch.get_num_threads(), "device": self.device_name}

    def train_groups(
        self, global_params: np.ndarray, inputs: RoundInput, groups: list[tuple[int, np.ndarray]]
    ) -> list[GroupResult]:
        """Train several reduction groups in one call: one task and one returned
        object instead of several, which is what a Ray call costs. Each group's sum
        is still computed alone, so the result is the same whoever carries it."""
        results = []
        for index, ids in groups:
            with warnings.catch_warnings(record=True) as caught:  # default filters: the driver dedups
                result = self.train_group(global_params, inputs.for_group(index), index, ids)
            raised = tuple(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
            results.append(dataclasses.replace(result, warnings=raised))
        return results

    def train_group(
        self, global_params: np.ndarray, inputs: RoundInput, group_index: int, client_ids: np.ndarray
    ) -> GroupResult:
        """Train ``client_ids`` (ascending) from ``global_params``; reduce them per the plan."""
        count = len(client_ids)
        acc = _GroupAccumulator(global_params.size, self.plan.reduction, self.plan.weighting)
        sizes, losses = np.zeros(count, np.int64), np.zeros(count, np.float64)
        squares, seen = np.full(count, np.nan), np.zeros(count, np.int64)
        accepted, norms = np.zeros(count, bool), np.full(count, np.nan)
        bytes_up, steps = np.zeros(count, np.int64), np.zeros(count, np.int64)
        new_states: dict[int, dict[str, np.ndarray]] = {}
        for i, cid in enumerate(int(c) for c in client_ids):
            state = inputs.client_states.get(cid, {})
            self._start_buffers(inputs.buffers, state)
            result, personal_state = self._train_one(global_params, inputs, cid, state)
            sizes[i], losses[i], squares[i] = result.num_samples, result.train_loss, result.loss_square
            seen[i] = result.samples_seen
            update, norm, cid_state = self._client_update(result, global_params, inputs, state)
            if update is None:
                continue  # empty or non-finite: never reaches the model
            processed = self._postprocess(update, norm, inputs, cid, cid_state)
            cid_state.update(personal_state)
            accepted[i], norms[i], bytes_up[i], steps[i] = (
                True,
                processed.norm,
                self.plan.upload_bytes(processed.bytes, update.size, self.buffer_size),
                result.steps,
            )
            acc.add(processed.update, result.num_samples)
            acc.add_flow(result.flow, result.num_samples)
            self._keep_buffers(acc, cid_state, result.num_samples)
            if "control_delta" in cid_state:
                acc.add_control_delta(cid_state.pop("control_delta"))
            if cid_state:
                new_states[cid] = cid_state
        return GroupResult(
            group_index=group_index, client_ids=np.asarray(client_ids), num_samples=sizes,
            train_losses=losses, accepted=accepted, norms=norms, bytes_up=bytes_up,
            weight_total=acc.weight_total, weighted_sum=acc.total, stacked=_stack(acc.stacked),
            stacked_weights=np.asarray(acc.stacked_weights), flow_sum=acc.flow_sum,
            control_delta_sum=acc.control_sum, new_states=new_states, buffer_sum=acc.buffer_sum,
            buffer_weight=acc.buffer_weight, steps=steps, loss_squares=squares, samples_seen=seen,
        )  # fmt: skip

    def _start_buffers(self, global_buffers: np.ndarray | None, state: dict, policy: str = "") -> None:
        """Set the model's buffers (m,) to what the next client starts from, per ``policy``
        (default: the plan's): the global ones ("average"; ``global_buffers``, initial ones
        when None), the client's own kept ones ("local"; initial ones the first time), or
        the initial ones ("reset")."""
        if not self.has_buffers:
            return
        policy, initial = policy or self.plan.buffers, self.model.initial_buffers
        if policy == "local":
            self.model.load_buffers(state.get("buffers", initial))
        else:
            use_initial = policy == "reset" or global_buffers is None
            self.model.load_buffers(initial if use_initial else global_buffers)

    def _keep_buffers(self, acc: _GroupAccumulator, new_state: dict, num_samples: int) -> None:
        """After an accepted client: its buffers join the group's sum ("average") or its
        state ("local")."""
        if not self.has_buffers or self.plan.buffers == "reset":
            return
        buffers = to_numpy(self.model.buffers).copy()
        if self.plan.buffers == "local":
            new_state["buffers"] = buffers
        else:
            acc.add_buffers(buffers, num_samples)

    def _client_update(self, result: ClientResult, global_params, inputs: RoundInput, state: dict):
        """The update the client sends (after any attack), its L2 norm and the client's new
        state; (None, nan, {}) for an empty or non-finite update."""
        norm = update_norm(result.update)
        if result.num_samples == 0 or not (math.isfinite(result.train_loss) and math.isfinite(norm)):
            return None, math.nan, {}
        new_state: dict[str, np.ndarray] = {}
        if self.plan.scaffold:
            assert inputs.server_control is not None  # the server keeps one under SCAFFOLD
            old_c = state.get("control", np.zeros_like(global_params))
            local = global_params + result.update
            new_c = scaffold_new_control(
                old_c, inputs.server_control, global_params, local, result.steps, self.plan.training.lr
            )
            new_state["control"], new_state["control_delta"] = new_c, new_c - old_c
        update, attack = result.update, self.plan.attack
        if attack is not None and result.client_id in attack.malicious:
            rng = client_rng(self.seed, inputs.round, result.client_id, Stream.ATTACK_NOISE)
            update = attack.sent_update(update, rng)
            norm = update_norm(update)
        return update, norm, new_state

    def _postprocess(self, update: np.ndarray, norm: float, inputs: RoundInput, cid: int, new_state: dict):
        if self.plan.postprocess is None:
            return _Unprocessed(update, norm, update.size * 4)
        rng = client_rng(self.seed, inputs.round, cid, Stream.COMPRESSION)
        residual = inputs.client_states.get(cid, {}).get("residual")
        processed = self.plan.postprocess.process(update, inputs.clip_norm, rng, residual, inputs.mask)
        if processed.residual is not None:
            new_state["residual"] = processed.residual
        return processed

    def score_groups(
        self, global_params: np.ndarray, groups: list[tuple[int, np.ndarray]], kind: str
    ) -> list[tuple[int, np.ndarray, float]]:
        """Per group: (index, sum over clients of n_i x scores_i (n,) float64, sum of n_i)."""
        out = []
        for index, client_ids in groups:
            total, weight = np.zeros(global_params.shape, np.float64), 0.0
            for cid in (int(c) for c in client_ids):
                if self.has_dropout:  # scores must not depend on what this worker ran before
                    self.model.set_rng(client_rng(self.seed, 0, cid, Stream.SCORES))
                x, y, shard = self._client_data(cid)
                scores = client_scores(
                    ScoreTask(
                        kind=kind, model=self.model, params=global_params, x=x, y=y, shard=shard,
                        batch_size=self.plan.training.batch_size,
                    )
                )  # fmt: skip
                total += len(shard) * scores
                weight += len(shard)
            out.append((index, total, weight))
        return out

    def loss_groups(
        self,
        global_params: np.ndarray,
        groups: list[tuple[int, np.ndarray]],
        batch_size: int,
        buffers: np.ndarray | None = None,
        states: dict[int, dict[str, np.ndarray]] | None = None,
    ) -> list[tuple[int, np.ndarray]]:
        """Each client's mean loss of ``global_params`` on its own training rows, as it would
        start training (its labels, flipped if it attacks so; the buffers it would start
        from: ``buffers`` global, or its own in ``states``): the local loss power-of-choice
        ranks candidates by. Per group, (index, (k,) float64 in client order; nan for a
        client without rows)."""
        out = []
        for index, client_ids in groups:
            losses = np.full(len(client_ids), np.nan)
            for i, cid in enumerate(int(c) for c in client_ids):
                x, labels, shard = self._training_rows(cid)
                if len(shard):
                    self._start_buffers(buffers, (states or {}).get(cid, {}))
                    loss_sum, _, count = self._evaluated(
                        global_params, cid, x[shard], labels[shard], batch_size
                    )
                    losses[i] = loss_sum / count
            out.append((index, losses))
        return out

    def evaluate_groups(
        self, global_params: np.ndarray, groups: list[tuple[int, np.ndarray]], request: EvalRequest
    ) -> list[tuple[int, dict[str, np.ndarray]]]:
        """Federated evaluation: per group, (index, columns), each column (k,) in client
        order: ``client``, ``num_samples`` (held out), ``loss`` (summed) and ``correct`` of
        the global model; with personalization, ``personal_loss`` / ``personal_correct``
        of each client's own model (nan / -1 for a client with no state yet); with
        ``request.finetune_steps``, ``finetuned_loss`` / ``finetuned_correct`` of the global
        model after that many local steps on the client's training rows. A client's own
        model evaluates with its own kept buffers when it has any ("local")."""
        states, buffers, batch_size = request.states, request.buffers, request.batch_size
        out = []
        for index, client_ids in groups:
            columns = _EvalColumns(
                len(client_ids),
                self._has_own_models(),
                request.finetune_steps > 0,
                self.model.spec.loss.is_regression,
            )
            for i, cid in enumerate(int(c) for c in client_ids):
                x, y = self._held_out_data(cid)
                if not len(y):
                    continue
                self._start_buffers(buffers, {}, policy="average")
                columns.set(i, "", self._evaluated(global_params, cid, x, y, batch_size))
                if cid in states:
                    personal = self.plan.personal
                    mine = personal.personal_model(global_params, states[cid]) if personal else global_params
                    self._start_buffers(buffers, states[cid])
                    columns.set(i, "personal_", self._evaluated(mine, cid, x, y, batch_size))
                if request.finetune_steps:
                    self._start_buffers(buffers, {}, policy="average")
                    tuned = self._finetuned(global_params, cid, request.finetune_steps, request.round)
                    columns.set(i, "finetuned_", self._evaluated(tuned, cid, x, y, batch_size))
            out.append((index, {"client": np.asarray(client_ids), **columns.arrays}))
        return out

    def _has_own_models(self) -> bool:
        """Whether clients hold models of their own: personalization, or kept buffers."""
        return self.plan.personal is not None or (self.has_buffers and self.plan.buffers == "local")

    def _evaluated(self, params: np.ndarray, client_id: int, x: np.ndarray, y: np.ndarray, batch_size: int):
        """``params`` on a client's held-out (x, y). Batch-statistics norm layers normalise
        by the statistics of all the client's training rows (what FedBN's local running
        statistics estimate), gathered ``batch_size`` rows at a time, not by each small
        held-out batch."""
        self.model.load_params(params)
        if not self.has_batch_stats:
            return self.model.evaluate(x, y, batch_size)
        train_x, _, shard = self._client_data(client_id)
        with calibrated(self.model, train_x[shard], batch_size):
            return self.model.evaluate(x, y, batch_size)

    def _finetuned(self, global_params: np.ndarray, client_id: int, steps: int, round_: int) -> np.ndarray:
        x, y, shard = self._client_data(client_id)
        rng = client_rng(self.seed, round_, client_id, Stream.FINETUNE)
        if self.has_dropout:
            self.model.set_rng(client_rng(self.seed, round_, client_id, Stream.FINETUNE_DROPOUT))
        task = ClientTask(
            model=self.model, start=global_params, x=x, y=y, shard=shard, cfg=self.plan.training,
            rng=rng, client_id=client_id,
        )  # fmt: skip
        return finetuned(task, steps)

    def _held_out_data(self, client_id: int) -> tuple[np.ndarray, np.ndarray]:
        if self.population is not None:
            return self.population.device(client_id)[2:]
        if self.eval_shards is None:
            raise FedsimError("federated evaluation needs held-out shards; this worker was given none")
        shard = self.eval_shards.shard(client_id)
        return self.eval_x[shard], self.eval_y[shard]

    def _client_data(self, client_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, indices of the client's rows in them)."""
        if self.population is not None:
            x, y, _, _ = self.population.device(client_id)
            return x, y, np.arange(len(x))
        return self.x, self.y, self.shards.shard(client_id)

    def _training_rows(self, client_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, labels, indices of the client's rows): its labels as it trains on them,
        flipped when it is a label-flipping attacker."""
        x, labels, shard = self._client_data(client_id)
        if self.plan.attack is not None and self.plan.attack.flips_labels_of(client_id):
            if self.population is None:
                assert self.y_flipped is not None  # flipped at load for a label-flipping attack
                labels = self.y_flipped
            else:
                labels = flip_labels(labels, self.model.spec.num_classes)
        return x, labels, shard

    def _train_one(self, global_params: np.ndarray, inputs: RoundInput, client_id: int, state: dict):
        rng = client_rng(self.seed, inputs.round, client_id, Stream.DATA_ORDER)
        if self.has_dropout:
            self.model.set_rng(client_rng(self.seed, inputs.round, client_id, Stream.LOCAL_DROPOUT))
        x, labels, shard = self._training_rows(client_id)
        augment = None
        if self.plan.augment is not None:
            augment_rng = client_rng(self.seed, inputs.round, client_id, Stream.AUGMENT)
            augment = Augmenter(self.plan.augment, augment_rng)
        task = ClientTask(
            model=self.model, start=global_params, x=x, y=labels, shard=shard, cfg=self.plan.training,
            rng=rng, client_id=client_id, mask=inputs.mask, augment=augment,
            max_samples=inputs.sample_budgets.get(client_id),
        )  # fmt: skip
        if client_id in inputs.local_epochs:  # a straggler (client.system.stragglers)
            task = dataclasses.replace(
                task, cfg=dataclasses.replace(task.cfg, epochs=inputs.local_epochs[client_id])
            )
        try:
            if self.plan.update_kind == "gradients":
                return client_gradient(task), {}
            if self.plan.personal is not None:
                personal_rng = client_rng(self.seed, inputs.round, client_id, Stream.PERSONAL)
                return train_personalized(self.plan.personal, task, state, personal_rng)
            if self.plan.scaffold:
                correction = inputs.server_control - state.get("control", np.zeros_like(global_params))
                task = dataclasses.replace(task, correction=correction)
            return train_client(task), {}
        except Exception as exc:
            raise ClientFailure(client_id, inputs.round, f"{type(exc).__name__}: {exc}") from exc


class _EvalColumns:
    """One group's evaluation columns: loss sums, correct counts (-1: not evaluated), held-out
    counts; under regression, which has no accuracy, ``evaluated`` flags instead of counts."""

    def __init__(self, count: int, personal: bool, finetuned: bool, regression: bool = False):
        prefixes = ["", *(["personal_"] if personal else []), *(["finetuned_"] if finetuned else [])]
        self.arrays: dict[str, np.ndarray] = {"num_samples": np.zeros(count, np.int64)}
        for prefix in prefixes:
            self.arrays[f"{prefix}loss"] = np.full(count, np.nan)
            if regression:
                self.arrays[f"{prefix}evaluated"] = np.zeros(count, bool)
            else:
                self.arrays[f"{prefix}correct"] = np.full(count, -1, np.int64)

    def set(self, i: int, prefix: str, evaluation: tuple[float, int | None, int]) -> None:
        loss_sum, correct, count = evaluation
        self.arrays[f"{prefix}loss"][i] = loss_sum
        if correct is None:
            self.arrays[f"{prefix}evaluated"][i] = True
        else:
            self.arrays[f"{prefix}correct"][i] = correct
        self.arrays["num_samples"][i] = count


@dataclass(frozen=True)
class _Unprocessed:
    update: np.ndarray
    norm: float
    bytes: int
    residual: None = None


def _stack(updates: list[np.ndarray]) -> np.ndarray | None:
    return np.stack(updates) if updates else None
