"""System heterogeneity: who is online, who drops out, who beats the deadline.

Each client has a fixed compute speed drawn once from a lognormal around
``speed`` (samples per simulated second, spread ``speed_sigma``), as in the
device-heterogeneity model of FedProx (Li et al. 2020, arXiv:1812.06127,
Section 5.2) and the over-selection + deadline rounds of Bonawitz et al. 2019
(arXiv:1902.01046, Section 2.2). Every round a client is online with
probability ``availability``; the server selects ceil(k (1 + over_selection))
online clients uniformly, from the very draw FedAvg's sampling makes (so with
everyone online and no over-selection they are FedAvg's sample, and speeds alone
change nothing); each drops out with probability ``dropout``; a client's
simulated time is its local work (samples processed) over its speed; those
past the ``deadline`` do not count, and of the rest the k fastest do.

All draws come from (seed, round, client, purpose) generators, so who takes
part is decided before anyone trains, exactly and reproducibly; clients that
would not count are not trained at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from clients.streams import Stream


@dataclass(frozen=True)
class SystemModel:
    speed: float = 1000.0  # median samples per simulated second
    speed_sigma: float = 0.0  # lognormal spread of speeds across clients (0 = identical)
    availability: float = 1.0  # probability a client is online in a round
    dropout: float = 0.0  # probability a selected client fails to report
    deadline: float | None = None  # simulated seconds; None = wait for everyone
    over_selection: float = 0.0  # extra share of clients selected

    @property
    def active(self) -> bool:
        return (
            self.speed_sigma > 0 or self.availability < 1 or self.dropout > 0
            or self.deadline is not None or self.over_selection > 0
        )  # fmt: skip


@dataclass(frozen=True)
class RoundPlan:
    """Who was selected and who counts in one round, and the round's simulated length."""

    selected: np.ndarray  # sorted ids
    participants: np.ndarray  # sorted ids of the clients whose updates count
    simulated_seconds: float


def local_work(sizes: np.ndarray, update_kind: str, epochs: int, batch_size: int, local_steps: int | None):
    """Samples each client processes in a round, (num_clients,) float64, from its shard
    size ``sizes``: E passes for FedAvg-style training (``update_kind`` "weights"); one
    gradient for FedSGD ("gradients"), over the whole shard or ``local_steps`` batches
    (FedSGD takes no epochs)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if update_kind == "weights":
        return sizes * epochs
    if local_steps is None:
        return sizes
    return np.minimum(sizes, float(local_steps * batch_size))


def client_speeds(seed: int, client_ids: np.ndarray, model: SystemModel) -> np.ndarray:
    """Each client's fixed speed (samples / simulated second), from (seed, client)."""
    return np.array(
        [model.speed * math.exp(model.speed_sigma * _rng(seed, 0, int(c), Stream.SPEED).standard_normal())
         for c in client_ids]
    )  # fmt: skip


def plan_round(
    seed: int, round_: int, num_clients: int, per_round: int, work: np.ndarray, model: SystemModel
) -> RoundPlan:
    """``work``: (num_clients,) samples each client processes in a round (epochs x shard size)."""
    online = np.flatnonzero(_draws(seed, round_, num_clients, Stream.AVAILABLE) < model.availability)
    wanted = min(len(online), math.ceil(per_round * (1 + model.over_selection) - 1e-9))  # 100 * 1.1 is 110
    selected = uniform_sample(seed, round_, online, wanted)
    if not len(selected):
        return RoundPlan(selected, selected, 0.0)
    times = work[selected] / client_speeds(seed, selected, model)
    dropped = _draws(seed, round_, num_clients, Stream.SYSTEM_DROPOUT)[selected] < model.dropout
    in_time = ~dropped if model.deadline is None else ~dropped & (times <= model.deadline)
    finishers = selected[in_time][np.lexsort((selected[in_time], times[in_time]))][:per_round]
    return RoundPlan(
        selected, np.sort(finishers), _round_seconds(times, in_time, finishers, selected, per_round, model)
    )


def uniform_sample(seed: int, round_: int, candidates: np.ndarray, count: int) -> np.ndarray:
    """Sorted ``count`` of ``candidates`` (sorted ids), uniformly without replacement from
    the round's sampling stream: the one draw whether or not the system model is on, so
    with every client online and no over-selection it is exactly FedAvg's sample."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, round_, Stream.SAMPLING]))
    return np.sort(candidates[rng.choice(len(candidates), size=count, replace=False)]).astype(np.int64)


def _round_seconds(times, in_time, finishers, selected, per_round, model: SystemModel) -> float:
    """The round ends when the k-th finisher reports; else at the deadline; else the last."""
    if len(finishers) == per_round and len(finishers):
        return float(times[np.isin(selected, finishers)].max())
    if model.deadline is not None:
        return float(model.deadline)
    return float(times.max())


def _rng(seed: int, round_: int, client: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, round_, client + 1, purpose]))


def _draws(seed: int, round_: int, num_clients: int, purpose: int) -> np.ndarray:
    """One uniform draw per client for this round and purpose (num_clients,)."""
    return _rng(seed, round_, -1, purpose).random(num_clients)
