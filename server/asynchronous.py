"""Asynchronous aggregation on the simulated clock: FedBuff (Nguyen et al. 2022,
arXiv:2106.06639, Algorithm 1) with FedAsync's staleness functions (Xie et al.
2019, arXiv:1903.03934, Section 5.2), or FedAsync itself (its Algorithm 1: one
arrival at a time, mixed into the model; server/async_buffer.py).

``concurrency`` clients train at once. Each starts from the model version the
server holds when it is dispatched; when it finishes, its update joins the
server's buffer, and after ``buffer_size`` arrivals the server steps (version
v -> v + 1) with the buffer's weighted mean, each update down-weighted by its
staleness s = (version at arrival) - (version it started from). A freed slot
is refilled at once with a client sampled from the idle ones.

Who is dispatched when, how long each trip takes (work / speed, as in
``server.system``), who drops out or misses the deadline, and which step each
arrival lands in depend only on (seed, event, client): the schedule is
simulated here, ahead of training, and never from real wall-clock order. So a
run is bit-identical whatever the workers, and a resumed run replays it.

Ties: events at one instant are taken in (time, client, event) order; every
arrival at an instant is processed (and any steps it triggers applied) before
the freed slots are refilled, from the newest model. So with buffer_size =
concurrency = clients per round and clients that all take the same time, every
step's clients start together from the same model: synchronous FedAvg.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from clients.streams import EVENT_KEY_SUFFIX, Stream
from server.system import Devices, SystemModel, parametric_devices

STALENESS_KINDS = ("constant", "polynomial", "hinge")
ASYNC_RULES = ("fedbuff", "fedasync")  # the server step: buffered mean delta, or model mixing
# Trips in a row that end without an arrival before the schedule gives up: a deadline
# no client can meet, or availability so low that nobody comes online.
MAX_FRUITLESS_TRIPS = 100_000


@dataclass(frozen=True)
class StalenessWeight:
    """s -> weight of an update ``s`` steps stale: ``constant`` 1; ``polynomial``
    (1 + s)^-a; ``hinge`` 1 for s <= b, else 1 / (a (s - b) + 1)."""

    kind: str = "polynomial"
    a: float = 0.5
    b: int = 4

    def __post_init__(self) -> None:
        if self.kind not in STALENESS_KINDS:
            raise ValueError(f"staleness kind must be one of {STALENESS_KINDS}, got {self.kind!r}")

    def __call__(self, staleness: np.ndarray) -> np.ndarray:
        s = np.asarray(staleness, dtype=np.float64)
        if self.kind == "constant":
            return np.ones_like(s)
        if self.kind == "polynomial":
            return (1.0 + s) ** -self.a
        return 1.0 / (self.a * np.maximum(s - self.b, 0.0) + 1.0)


@dataclass(frozen=True)
class Trip:
    """One client's trip: dispatched at ``event`` (the draw key that plays a round's part
    in its seeds) with model ``version`` at simulated time ``start``; it ends at
    ``finish`` with ``outcome`` "arrives", "drops" or "times_out"."""

    client: int
    event: int
    version: int
    start: float
    finish: float
    outcome: str

    @property
    def key(self) -> tuple[int, int]:
        return (self.event, self.client)


@dataclass
class StepPlan:
    """What happens up to server step ``step`` (version step-1 -> step)."""

    step: int
    time: float  # simulated time of the step
    dispatched: list[Trip] = field(default_factory=list)  # trips started from version step-1
    arrivals: list[Trip] = field(default_factory=list)  # the buffer, in arrival order
    dropped: int = 0  # trips that ended without reporting since the last step
    timed_out: int = 0
    discarded: list[Trip] = field(default_factory=list)  # arrivals staler than max_staleness

    def staleness(self, trips: list[Trip] | None = None) -> np.ndarray:
        """(len,) int64: each of ``trips``' (default: the arrivals') steps of staleness."""
        trips = self.arrivals if trips is None else trips
        return np.array([self.step - 1 - t.version for t in trips], dtype=np.int64)


class AsyncSchedule:
    """The event simulation; ``next_step()`` returns the plan of each server step in turn.

    ``work``: (num_clients,) samples each client processes in a trip; its simulated
    duration is work / speed on its device (``server.system.Devices``: the lognormal
    model's speeds by default), plus, with a device trace's bandwidth, the ``trip_bytes``
    it downloads and uploads. With an availability trace a client is dispatched only
    while online, and one offline again when its trip ends is lost (it drops)."""

    def __init__(
        self,
        *,  # seven settings: named at every construction, never by position
        seed: int,
        num_clients: int,
        concurrency: int,
        buffer_size: int,
        work: np.ndarray,
        system: SystemModel,
        max_staleness: int | None = None,
        devices: Devices | None = None,
        trip_bytes: int = 0,
    ):
        if not 1 <= concurrency <= num_clients or buffer_size < 1:
            raise ValueError(f"need 1 <= concurrency <= {num_clients} and buffer_size >= 1")
        self.seed, self.num_clients = seed, num_clients
        self.concurrency, self.buffer_size = concurrency, buffer_size
        self.work, self.system, self.max_staleness = np.asarray(work, np.float64), system, max_staleness
        self.devices = devices or parametric_devices(seed, num_clients, system)
        self.trip_bytes = trip_bytes
        self.version, self.events, self.time = 0, 0, 0.0
        self.in_flight: dict[int, Trip] = {}  # client -> its trip
        self.queue: list[tuple[float, int, int, int]] = []  # (time, 0 finish / 1 dispatch, client, event)
        self.refills: set[float] = set()  # instants with a refill queued
        self.plan = StepPlan(1, 0.0)
        self.fruitless = 0
        self._push_dispatch(0.0)

    def next_step(self) -> StepPlan:
        while self.queue:
            time, kind, client, _ = heapq.heappop(self.queue)
            self.time = time
            if kind == 1:
                self.refills.discard(time)
                self._dispatch(time)
            elif self._finish(self.in_flight.pop(client)):
                return self._step()
        raise RuntimeError("the asynchronous schedule ran out of events")  # _dispatch always queues one

    def _step(self) -> StepPlan:
        done, self.version = self.plan, self.version + 1
        done.time = self.time
        self.plan = StepPlan(self.version + 1, self.time)
        return done

    def _finish(self, trip: Trip) -> bool:
        """Take a trip's end; True when its arrival fills the buffer."""
        self._push_dispatch(trip.finish)
        if trip.outcome != "arrives":
            self._fruitless()
            if trip.outcome == "drops":
                self.plan.dropped += 1
            else:
                self.plan.timed_out += 1
            return False
        if self.max_staleness is not None and self.version - trip.version > self.max_staleness:
            self.plan.discarded.append(trip)
            self._fruitless()
            return False
        self.fruitless = 0
        self.plan.arrivals.append(trip)
        return len(self.plan.arrivals) == self.buffer_size

    def _fruitless(self) -> None:
        self.fruitless += 1
        if self.fruitless > MAX_FRUITLESS_TRIPS:
            raise ValueError(
                f"{MAX_FRUITLESS_TRIPS:,} client trips in a row ended without a usable update "
                "(client.system.deadline, dropout or server.async.max_staleness leave none)"
            )

    def _push_dispatch(self, time: float) -> None:
        """Refill free slots at ``time``, after every arrival at that instant (once)."""
        if time not in self.refills:
            self.refills.add(time)
            heapq.heappush(self.queue, (time, 1, -1, -1))

    def _dispatch(self, time: float) -> None:
        free = self.concurrency - len(self.in_flight)
        if free <= 0:
            return
        self.events += 1
        chosen = self._sample(self.events, free, time)
        for client in chosen:
            trip = self._trip(int(client), self.events, time)
            self.in_flight[trip.client] = trip
            self.plan.dispatched.append(trip)
            heapq.heappush(self.queue, (trip.finish, 0, trip.client, trip.event))
        if not self.in_flight:  # nobody online: try again after a typical trip
            self._fruitless()
            self._push_dispatch(self._next_try(time))

    def _sample(self, event: int, count: int, time: float) -> np.ndarray:
        """Sorted ids of up to ``count`` idle (and online at ``time``) clients, drawn uniformly
        from (seed, event); with no client in flight, exactly ``sample_clients(seed, event, ...)``."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, event, Stream.SAMPLING]))
        busy = np.fromiter(self.in_flight, np.int64, len(self.in_flight))
        if self.devices.availability is not None:
            online = self.devices.online(np.arange(self.num_clients), time)
        elif self.system.availability >= 1:
            # A uniform draw of count + busy distinct ids, in random order, holds at least
            # `count` idle ones; its first `count` idle ones are a uniform sample of them.
            drawn = rng.choice(self.num_clients, size=min(self.num_clients, count + len(busy)), replace=False)
            idle = drawn[~np.isin(drawn, busy)] if len(busy) else drawn
            return np.sort(idle[:count])
        else:
            online = (
                _event_rng(self.seed, event, -1, Stream.AVAILABLE).random(self.num_clients)
                < self.system.availability
            )
        online[busy] = False
        candidates = np.flatnonzero(online)
        return np.sort(rng.choice(candidates, size=min(count, len(candidates)), replace=False))

    def _trip(self, client: int, event: int, start: float) -> Trip:
        duration = float(self.work[client] / self.devices.speed[client])
        link = self.devices.link_seconds(np.array([client]), self.trip_bytes)
        if link is not None:
            duration += float(link[0])
        outcome, dropout = "arrives", self.system.dropout
        if dropout > 0 and _event_rng(self.seed, event, client, Stream.SYSTEM_DROPOUT).random() < dropout:
            outcome = "drops"
        elif self.system.deadline is not None and duration > self.system.deadline:
            outcome, duration = "times_out", float(self.system.deadline)
        elif (
            self.devices.availability is not None
            and not self.devices.online(np.array([client]), start + duration)[0]
        ):
            outcome = "drops"  # offline again before its update is in
        return Trip(client, event, self.version, start, start + duration, outcome)

    def _next_try(self, time: float) -> float:
        """When to try dispatching again after nobody could be: when the first device
        comes online by its availability trace, else after a typical trip."""
        if self.devices.availability is not None:
            opening = self.devices.next_online(np.arange(self.num_clients), time)
            if opening > time:
                return opening
        return time + self._typical_duration()

    def _typical_duration(self) -> float:
        if self.devices.traced:
            link = self.devices.link_seconds(np.arange(self.num_clients), self.trip_bytes)
            trips = self.work / self.devices.speed + (0.0 if link is None else link)
            return max(float(np.median(trips)), 1e-9)
        return max(float(np.median(self.work)) / self.system.speed, 1e-9)


def _event_rng(seed: int, event: int, client: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, event, client + 1, purpose, EVENT_KEY_SUFFIX]))


def staleness_histogram(staleness: np.ndarray) -> list[int]:
    """Counts of staleness 0, 1, ..., max."""
    return np.bincount(np.asarray(staleness, np.int64)).tolist() if len(staleness) else []
