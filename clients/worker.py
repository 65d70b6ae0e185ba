"""The worker: one process that hosts many virtual clients.

A virtual client is (id, shard indices); it is not a process. A worker keeps
one model and the read-only training set (zero-copy from Ray's object store)
and, per task, trains one reduction group of clients in client-id order and
returns their sample-weighted SUM of deltas, so traffic per round is
O(groups x model), not O(clients x model). The class is plain Python; the
simulator wraps it with ``ray.remote``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from clients.errors import ClientFailure
from clients.models.engines import build_model
from clients.models.spec import ModelSpec
from clients.training import (
    PURPOSE_DATA_ORDER,
    PURPOSE_DROPOUT,
    LocalTrainingConfig,
    client_rng,
    train_client,
)


@dataclass
class GroupResult:
    """A reduction group's contribution to one round.

    weighted_delta_sum: (n,) float32, sum over accepted clients of n_i * delta_i,
    added in client-id order (float32 halves what travels back; the server adds
    the group sums in float64). Per-client arrays are aligned with ``client_ids``.
    """

    group_index: int
    weighted_delta_sum: np.ndarray
    weight_total: float
    client_ids: np.ndarray
    num_samples: np.ndarray
    train_losses: np.ndarray
    accepted: np.ndarray
    flow_sum: np.ndarray | None = None  # (layers, 2) sum over accepted clients of n_i * flow_i


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


class ClientWorker:
    """Hosts virtual clients; trains a reduction group per call."""

    def __init__(
        self,
        spec: ModelSpec,
        engine: str,
        x_train: np.ndarray,
        y_train: np.ndarray,
        shard_indices: np.ndarray,
        shard_offsets: np.ndarray,
        training: LocalTrainingConfig,
        seed: int,
        threads: int,
        track_gradients: bool = False,
    ):
        # Same thread count on every worker => kernels reduce in the same order.
        torch.set_num_threads(threads)
        threadpool_limits(threads)  # numpy's BLAS too; stays in force for this process
        self.model = build_model(spec, engine)
        self.model.track_gradients = track_gradients
        self.has_dropout = any(layer.kind == "dropout" for layer in spec.layers)
        self.x, self.y = x_train, y_train
        self.shards = ClientShards(shard_indices, shard_offsets)
        self.training = training
        self.seed = seed

    def ping(self) -> int:
        return torch.get_num_threads()

    def train_groups(
        self, global_params: np.ndarray, round_: int, groups: list[tuple[int, np.ndarray]]
    ) -> list[GroupResult]:
        """Train several reduction groups in one call: one task and one returned
        object instead of several, which is what a Ray call costs. Each group's sum
        is still computed alone, so the result is the same whoever carries it."""
        return [self.train_group(global_params, round_, index, ids) for index, ids in groups]

    def train_group(
        self, global_params: np.ndarray, round_: int, group_index: int, client_ids: np.ndarray
    ) -> GroupResult:
        """Train ``client_ids`` (ascending) from ``global_params``; return their weighted sum."""
        total = np.zeros(global_params.shape, dtype=np.float32)
        scratch = np.empty_like(total)
        count = len(client_ids)
        sizes, losses = np.zeros(count, np.int64), np.zeros(count, np.float64)
        accepted = np.zeros(count, bool)
        weight_total, flow_sum = 0.0, None
        for i, cid in enumerate(client_ids):
            result = self._train_one(global_params, round_, int(cid))
            sizes[i], losses[i] = result.num_samples, result.train_loss
            if result.num_samples == 0 or not _is_finite(result.delta, result.train_loss):
                continue  # a non-finite update never reaches the model
            accepted[i] = True
            add_weighted(total, result.delta, result.num_samples, scratch)
            weight_total += result.num_samples
            if result.flow is not None:
                weighted = result.num_samples * result.flow
                flow_sum = weighted if flow_sum is None else flow_sum + weighted
        return GroupResult(
            group_index, total, weight_total, np.asarray(client_ids), sizes, losses, accepted, flow_sum
        )

    def _train_one(self, global_params: np.ndarray, round_: int, client_id: int):
        rng = client_rng(self.seed, round_, client_id, PURPOSE_DATA_ORDER)
        if self.has_dropout:
            self.model.set_rng(client_rng(self.seed, round_, client_id, PURPOSE_DROPOUT))
        try:
            return train_client(
                self.model,
                global_params,
                self.x,
                self.y,
                self.shards.shard(client_id),
                self.training,
                rng,
                client_id,
            )
        except Exception as exc:
            raise ClientFailure(client_id, round_, f"{type(exc).__name__}: {exc}") from exc


def add_weighted(total: np.ndarray, delta: np.ndarray, weight: int, scratch: np.ndarray) -> None:
    """total += weight * delta, in float32, without temporaries (all (n,) float32)."""
    np.multiply(delta, np.float32(weight), out=scratch)
    total += scratch


def _is_finite(delta: np.ndarray, loss: float) -> bool:
    return math.isfinite(loss) and bool(np.isfinite(delta).all())
