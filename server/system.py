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
past the ``deadline`` do not count (or, with ``partial_work``, count with the
steps they finished by then), and of the rest the k fastest do. A share
``stragglers`` of the selected clients train a uniform 1..E-1 of the E local
epochs, as FedProx's experiments (Section 5.2 and its reference code) have
them; their partial work counts, or with ``drop_stragglers`` they are dropped.

With device traces (``Devices``, server/traces.py) a client's speed and link come
from its trace profile: a trip is download + compute + upload, compute its samples
at 1000 / (backward_factor x ms per sample) samples a second, the transfers the
bytes the round actually sends over its bandwidth; who is online is its
availability windows at the round's start on the simulated clock (a round that
finds nobody online starts when the first device comes online, the wait counted in
its length), and a client offline again when its trip ends is lost (FedScale's rule). Who of the online
clients is selected is the selection policy's call (``RoundContext.select``;
uniform by default).

All draws come from (seed, round, client, purpose) generators, so who takes
part is decided before anyone trains, exactly and reproducibly; clients that
would not count are not trained at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from clients.streams import Stream

if TYPE_CHECKING:
    from server.traces import AvailabilityTrace

KILOBIT = 1000  # bits: trace bandwidths are kilobits a second
# Forward passes a training sample costs (forward + backward): FedScale's factor 3, also
# client.system.trace.backward_factor's default; times a loss query without a trace.
FORWARD_PASSES = 3.0


@dataclass(frozen=True)
class SystemModel:
    speed: float = 1000.0  # median samples per simulated second
    speed_sigma: float = 0.0  # lognormal spread of speeds across clients (0 = identical)
    availability: float = 1.0  # probability a client is online in a round
    dropout: float = 0.0  # probability a selected client fails to report
    deadline: float | None = None  # simulated seconds; None = wait for everyone
    over_selection: float = 0.0  # extra share of clients selected
    stragglers: float = 0.0  # share of the selected clients that train 1..E-1 epochs (FedProx)
    drop_stragglers: bool = False  # stragglers neither train nor count (FedProx's FedAvg baseline)
    partial_work: bool = False  # a client past the deadline sends the steps it finished by then

    @property
    def active(self) -> bool:
        return (
            self.speed_sigma > 0 or self.availability < 1 or self.dropout > 0
            or self.deadline is not None or self.over_selection > 0 or self.stragglers > 0
        )  # fmt: skip


@dataclass(frozen=True)
class RoundPlan:
    """Who was selected and who counts in one round, and the round's simulated length."""

    selected: np.ndarray  # sorted ids
    participants: np.ndarray  # sorted ids of the clients whose updates count
    simulated_seconds: float
    stragglers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted selected ids
    # Participants that do less than full work: their local epochs (stragglers), and the
    # samples they process before the deadline cuts them (partial work).
    local_epochs: dict[int, int] = field(default_factory=dict)
    sample_budgets: dict[int, int] = field(default_factory=dict)
    # Each selected client's whole trip in simulated seconds (aligned with ``selected``),
    # and the clients online when the round started.
    trip_seconds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    num_online: int = 0


@dataclass(frozen=True, eq=False)
class LocalWork:
    """Each client's full local work in a round: ``samples`` (num_clients,) float64 it
    processes, ``epochs`` passes over its shard in batches of ``batch_size``; a straggler's
    and a deadline-cut client's share of it follow from those two."""

    samples: np.ndarray
    epochs: int = 1
    batch_size: int = 1


@dataclass(frozen=True, eq=False)
class Devices:
    """Every client's device: ``speed`` (num_clients,) training samples per simulated
    second; with a capacity trace its ``bandwidth_kbps`` (num_clients,) (None: transfers
    take no time, the parametric model) and ``compute_ms`` (the trace's inference ms per
    sample); with an availability trace, ``availability`` and each client's profile in
    it, ``profiles`` (num_clients,) (None: client.system.availability's draw)."""

    speed: np.ndarray
    bandwidth_kbps: np.ndarray | None = None
    compute_ms: np.ndarray | None = None
    availability: AvailabilityTrace | None = None
    profiles: np.ndarray | None = None
    # (kind, path, sha256) of each trace file read: "capacity", "availability".
    trace_files: tuple[tuple[str, str, str], ...] = ()

    @property
    def traced(self) -> bool:
        return self.bandwidth_kbps is not None or self.availability is not None

    def link_seconds(self, clients: np.ndarray, link_bytes: int) -> np.ndarray | None:
        """(k,) seconds each of ``clients`` takes to download and upload ``link_bytes``
        (both ways together), or None when transfers take no time."""
        if self.bandwidth_kbps is None:
            return None
        return link_bytes * 8 / KILOBIT / self.bandwidth_kbps[clients]

    def online(self, clients: np.ndarray, t: float | np.ndarray) -> np.ndarray:
        """(k,) bool: whether each of ``clients`` is online at simulated time ``t``
        (a scalar, or (k,) one per client) by its availability trace."""
        assert self.availability is not None and self.profiles is not None
        return self.availability.online(self.profiles[clients], t)

    def query_seconds(self, clients: np.ndarray, samples: np.ndarray, down_bytes: int) -> np.ndarray:
        """(k,) seconds each of ``clients`` takes to download ``down_bytes`` and compute its
        loss over ``samples`` (k,) rows: forward passes, at the trace's inference ms per
        sample or, without a trace, at FORWARD_PASSES training samples' time a row."""
        if self.compute_ms is None:
            forward = samples / (self.speed[clients] * FORWARD_PASSES)
        else:
            forward = samples * self.compute_ms[clients] / 1000
        link = self.link_seconds(clients, down_bytes)
        return forward if link is None else forward + link

    def next_online(self, clients: np.ndarray, t: float) -> float:
        """The earliest simulated time >= ``t`` at which one of ``clients`` is online."""
        assert self.availability is not None and self.profiles is not None
        return self.availability.next_online(self.profiles[clients], t)

    def online_share(self) -> np.ndarray | None:
        """(num_clients,) the share of its trace's period each client is online, or None."""
        if self.availability is None or self.profiles is None:
            return None
        return self.availability.online_fraction(self.profiles)


def parametric_devices(seed: int, num_clients: int, model: SystemModel) -> Devices:
    """Devices of the lognormal model: client_speeds of every client (identical when
    ``model.speed_sigma`` is 0, without a draw: exp(0 x z) is exactly 1)."""
    if model.speed_sigma == 0:
        return Devices(np.full(num_clients, model.speed * 1.0))
    return Devices(client_speeds(seed, np.arange(num_clients, dtype=np.int64), model))


@dataclass(frozen=True)
class RoundContext:
    """What a round's plan takes beyond the seed and the round: the simulated time it starts
    at, the bytes a client's trip moves (download + upload; ``upload_bytes`` of them up),
    and the selection policy, ``select(online sorted ids, count) -> sorted ids`` (None:
    uniform). ``polled``, asked after ``select``: the simulated seconds the selection spent
    polling candidates that then hold the model (power-of-choice's loss queries), or None
    when it polled nobody; the trips start after it and need no download."""

    now: float = 0.0
    link_bytes: int = 0
    select: Callable[[np.ndarray, int], np.ndarray] | None = None
    upload_bytes: int = 0
    polled: Callable[[], float | None] | None = None


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
    seed: int,
    round_: int,
    num_clients: int,
    per_round: int,
    work: LocalWork,
    model: SystemModel,
    devices: Devices | None = None,
    context: RoundContext = RoundContext(),
) -> RoundPlan:
    """Who of ``num_clients`` is selected and whose update counts among ``per_round``, each
    doing ``work`` or, as a straggler or cut by the deadline, a share of it, on ``devices``
    (default: the lognormal model's) at ``context``'s time, bytes and selection."""
    devices = devices or parametric_devices(seed, num_clients, model)
    start = context.now
    online = _online(seed, round_, num_clients, model, devices, start)
    if not len(online) and devices.availability is not None:  # wait for the first device online
        start = devices.next_online(np.arange(num_clients), start)
        online = _online(seed, round_, num_clients, model, devices, start)
    idle = start - context.now
    wanted = min(len(online), math.ceil(per_round * (1 + model.over_selection) - 1e-9))  # 100 * 1.1 is 110
    select = context.select or (lambda candidates, count: uniform_sample(seed, round_, candidates, count))
    selected = select(online, wanted)
    polling = context.polled() if context.polled else None
    link_bytes = context.link_bytes if polling is None else context.upload_bytes
    if polling is not None:  # the trips start once the poll is over
        idle, start = idle + polling, start + polling
    if not len(selected):
        return RoundPlan(selected, selected, idle, num_online=len(online))
    # Stragglers are decided first: their smaller work is what their time is made of.
    epochs, samples = work.epochs, work.samples[selected]
    local_epochs = straggler_epochs(seed, round_, selected, model.stragglers, epochs)
    straggling = local_epochs < epochs
    speeds = devices.speed[selected]
    link = devices.link_seconds(selected, link_bytes)
    times = samples * (local_epochs / epochs) / speeds
    if link is not None:
        times = times + link
    dropped = _draws(seed, round_, num_clients, Stream.SYSTEM_DROPOUT)[selected] < model.dropout
    if model.drop_stragglers:
        dropped |= straggling
    ends = times if model.deadline is None else np.minimum(times, model.deadline)  # cut ones report then
    if devices.availability is not None:  # offline again by the end of its trip: lost
        dropped |= ~devices.online(selected, start + ends)
    first_batch = np.minimum(work.batch_size, samples / epochs)
    counted, budgets = _reporting(times, speeds, link, dropped, first_batch, model)
    finishers = np.sort(selected[counted][np.lexsort((selected[counted], ends[counted]))][:per_round])
    waited = ~(straggling & model.drop_stragglers)  # dropped stragglers are not waited for
    finished = np.isin(selected, finishers)
    short = finished & straggling
    return RoundPlan(
        selected, finishers, idle + _round_seconds(ends, waited, finished, per_round, model),
        stragglers=selected[straggling],
        local_epochs=_by_client(selected[short], local_epochs[short]),
        sample_budgets=_by_client(selected[finished & (budgets > 0)], budgets[finished & (budgets > 0)]),
        trip_seconds=times, num_online=len(online),
    )  # fmt: skip


def _online(seed: int, round_: int, num_clients: int, model: SystemModel, devices: Devices, now: float):
    """Sorted ids of the clients online at the round's start: by their availability trace
    at ``now``, or each with probability ``model.availability``."""
    if devices.availability is not None:
        return np.flatnonzero(devices.online(np.arange(num_clients), now))
    return np.flatnonzero(_draws(seed, round_, num_clients, Stream.AVAILABLE) < model.availability)


def _by_client(ids: np.ndarray, values: np.ndarray) -> dict[int, int]:
    return {int(c): int(v) for c, v in zip(ids, values, strict=True)}


def straggler_epochs(seed: int, round_: int, selected: np.ndarray, share: float, epochs: int) -> np.ndarray:
    """Each selected client's local epochs (len(selected),) int64: ``epochs`` (E), but for
    the round's stragglers, drawn as FedProx's reference code draws them (Li et al. 2020,
    flearn/trainers/fedprox.py): round(k (1 - share)) of the k selected are active and
    the rest straggle, each with a uniform number of epochs in {1, ..., E-1}."""
    local = np.full(len(selected), epochs, np.int64)
    count = len(selected) - active_count(len(selected), share)
    if count:
        positions = _rng(seed, round_, -1, Stream.STRAGGLERS).choice(len(selected), size=count, replace=False)
        local[positions] = [
            _rng(seed, round_, int(c), Stream.STRAGGLER_EPOCHS).integers(1, epochs)
            for c in selected[positions]
        ]
    return local


def active_count(selected: int, share: float) -> int:
    """Of ``selected`` clients with a ``share`` of stragglers, how many do full work: the
    reference code's round(k (1 - share)), Python's round (half to even) as there."""
    return round(selected * (1 - share))


def _reporting(
    times, speeds, link, dropped, first_batch, model: SystemModel
) -> tuple[np.ndarray, np.ndarray]:
    """Which selected clients report (bool mask), and the samples (int64, 0 for none) each
    client past the deadline processed by then, when partial work keeps its steps (its
    transfers, ``link`` seconds or None, come out of its time); a client whose budget does
    not reach its first batch finished no step and does not report."""
    if model.deadline is None:
        return ~dropped, np.zeros(len(times), np.int64)
    late = times > model.deadline
    if not model.partial_work:
        return ~dropped & ~late, np.zeros(len(times), np.int64)
    computing = model.deadline if link is None else np.maximum(model.deadline - link, 0.0)
    budgets = np.floor(np.where(late, computing * speeds, 0.0)).astype(np.int64)
    partial = ~dropped & late & (budgets >= first_batch)
    return ~dropped & (~late | partial), np.where(partial, budgets, 0)


def uniform_sample(seed: int, round_: int, candidates: np.ndarray, count: int) -> np.ndarray:
    """Sorted ``count`` of ``candidates`` (sorted ids), uniformly without replacement from
    the round's sampling stream: the one draw whether or not the system model is on, so
    with every client online and no over-selection it is exactly FedAvg's sample."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, round_, Stream.SAMPLING]))
    return np.sort(candidates[rng.choice(len(candidates), size=count, replace=False)]).astype(np.int64)


def _round_seconds(ends, waited, finished, per_round: int, model: SystemModel) -> float:
    """The round ends when the k-th finisher reports; else at the deadline; else when the
    last client it waits for ends (``ends``, ``waited``, ``finished``: per selected client)."""
    if finished.sum() == per_round:
        return float(ends[finished].max())
    if model.deadline is not None:
        return float(model.deadline)
    return float(ends[waited].max()) if waited.any() else 0.0


def _rng(seed: int, round_: int, client: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, round_, client + 1, purpose]))


def _draws(seed: int, round_: int, num_clients: int, purpose: int) -> np.ndarray:
    """One uniform draw per client for this round and purpose (num_clients,)."""
    return _rng(seed, round_, -1, purpose).random(num_clients)
