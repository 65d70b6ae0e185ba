"""Server steps of an asynchronous run (``server.mode: async``), on the workers.

Each step: the clients dispatched since the last step (all from the current
model) train on the workers; their updates wait, on the driver, until the
schedule (``server.asynchronous``) says they arrive; the step's buffer is then
summed as a synchronous round's sample would be (sorted by client, cut into
the same reduction groups, each group added in float32 in client order, the
groups in group order), every update weighted by its samples (or 1) times its
staleness weight, and divided by the buffer's total weight. So with no
staleness the step is synchronous FedAvg bit for bit.

FedAsync (``mixing`` set; Xie et al. 2019, Algorithm 1) takes one arrival per
step and mixes the client's model x_new = x_tau + delta into the current x:
x <- (1 - a_t) x + a_t x_new, a_t = mixing * s(t - tau), where t - tau is one more
than FedBuff's staleness (the paper's count of versions). That is the server's
SGD step with lr = mixing on s * (x_new - x) = s * (delta + (x_tau - x)): the
same buffer sum with each delta moved onto the current model, so the model
x_tau each client in flight started from is kept until it arrives. Without
staleness the drift x_tau - x is zero and FedAsync is FedBuff with
buffer_size 1 and server.lr = mixing, bit for bit.

Updates waiting for their step (at most ``concurrency``), and under FedAsync
the models they started from, go into checkpoints, so a resumed run replays
the schedule and continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.errors import ConfigError, FedsimError
from clients.protocol import GroupResult
from clients.updates import add_weighted
from server.asynchronous import AsyncSchedule, StalenessWeight, StepPlan, Trip, staleness_histogram
from server.sampling import reduction_groups

MODEL_PREFIX = "async.model."  # checkpoint arrays: FedAsync's starting models, by version


@dataclass(frozen=True)
class ClientUpdate:
    """One trained trip, waiting for its arrival: the processed update (None when
    rejected) and what the worker measured."""

    update: np.ndarray | None
    num_samples: int
    train_loss: float
    norm: float
    bytes_up: int
    weight: float  # n_i (or 1 with uniform weighting); staleness is applied at arrival

    def meta(self) -> np.ndarray:
        accepted = float(self.update is not None)
        row = (self.num_samples, self.train_loss, self.norm, self.bytes_up, accepted, self.weight)
        return np.array(row, np.float64)

    @classmethod
    def from_arrays(cls, meta: np.ndarray, update: np.ndarray | None) -> ClientUpdate:
        n, loss, norm, sent, accepted, weight = (float(v) for v in meta)
        return cls(update if accepted else None, int(n), loss, norm, int(sent), weight)


def updates_of(result: GroupResult) -> list[ClientUpdate]:
    """A stacked group's per-client updates, in its client order."""
    out, row = [], 0
    for i in range(len(result.client_ids)):
        update, weight = None, 0.0
        if result.accepted[i]:
            assert result.stacked is not None and result.stacked_weights is not None  # "stack" groups
            update, weight = result.stacked[row], float(result.stacked_weights[row])
            row += 1
        out.append(
            ClientUpdate(
                update, int(result.num_samples[i]), float(result.train_losses[i]), float(result.norms[i]),
                int(result.bytes_up[i]), weight,
            )
        )  # fmt: skip
    return out


class AsyncRounds:
    """The schedule, the updates in flight, and one server step at a time; ``mixing``:
    FedAsync's mixing weight a (None: FedBuff's buffered mean)."""

    def __init__(
        self, schedule: AsyncSchedule, weight: StalenessWeight, groups: int, mixing: float | None = None
    ):
        self.schedule, self.weight, self.groups, self.mixing = schedule, weight, groups, mixing
        self.waiting: dict[tuple[int, int], ClientUpdate] = {}  # (event, client) -> update
        self.models: dict[int, np.ndarray] = {}  # FedAsync: version -> model clients in flight started from

    def restore(self, completed: int, arrays: dict[str, np.ndarray]) -> None:
        """Replay the schedule through step ``completed``; take the updates still in flight
        from a checkpoint's arrays."""
        for _ in range(completed):
            self.schedule.next_step()
        for key, array in arrays.items():
            if key.startswith(MODEL_PREFIX):
                self.models[int(key.removeprefix(MODEL_PREFIX))] = array
            elif key.startswith("async.") and key.endswith(".meta"):
                _, event, client, _ = key.split(".")
                update = arrays.get(f"async.{event}.{client}.update")
                self.waiting[(int(event), int(client))] = ClientUpdate.from_arrays(array, update)
        trained = [
            t for t in self.schedule.in_flight.values() if t.outcome == "arrives" and t.version < completed
        ]
        missing = len({t.key for t in trained} - set(self.waiting))
        if self.mixing is not None:  # FedAsync mixes each from the model it started from
            missing += len({t.version for t in trained} - set(self.models))
        if missing:
            raise FedsimError(
                f"the checkpoint of step {completed} lacks {missing} updates or starting models still "
                "in flight; it was not written by an async run of this config"
            )

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for (event, client), update in self.waiting.items():
            out[f"async.{event}.{client}.meta"] = update.meta()
            if update.update is not None:
                out[f"async.{event}.{client}.update"] = update.update
        out.update({f"{MODEL_PREFIX}{version}": model for version, model in self.models.items()})
        return out

    def plan(self) -> StepPlan:
        try:
            return self.schedule.next_step()
        except ValueError as exc:  # no client can ever report: a config the run cannot serve
            raise ConfigError(f"server.mode: async: {exc}") from None

    def train(self, plan: StepPlan, run_groups, on_arrivals=None) -> list[GroupResult]:
        """Train the trips dispatched from the current model that will report;
        ``run_groups(groups, group_rounds, on_groups_done)`` runs them on the workers and
        returns their GroupResults in group order, which this returns too. Updates that
        will arrive too stale are dropped from the waiting ones. ``on_arrivals(got,
        needed)`` hears how many of the step's buffer are trained, as groups finish."""
        for trip in plan.discarded:
            self.waiting.pop(trip.key, None)
        reporting = [t for t in plan.dispatched if t.outcome == "arrives"]
        groups, events = _groups_by_event(reporting, self.groups)
        buffer = {t.key for t in plan.arrivals}
        got = len(buffer & self.waiting.keys())  # trained in earlier steps
        if on_arrivals is not None:
            on_arrivals(got, len(buffer))
        if not groups:
            return []

        def groups_done(indices: list[int]) -> None:
            nonlocal got
            got += sum((events[g], int(c)) in buffer for g in indices for c in groups[g])
            on_arrivals(got, len(buffer))

        results = run_groups(groups, events, None if on_arrivals is None else groups_done)
        for index, result in enumerate(results):
            for client, update in zip(result.client_ids, updates_of(result), strict=True):
                self.waiting[(events[index], int(client))] = update
        return results

    def buffer_results(self, plan: StepPlan, params: np.ndarray) -> list[GroupResult]:
        """The buffer as group results the server step takes from ``params``, the current
        model: each reduction group's staleness-weighted float32 sum, its clients in
        (client, event) order."""
        trips = sorted(plan.arrivals, key=lambda t: (t.client, t.event))
        updates = [self.waiting.pop(t.key) for t in trips]
        if self.mixing is not None:
            updates = [
                self._onto_current(t, u, params, plan.step - 1) for t, u in zip(trips, updates, strict=True)
            ]
            self._keep_starting_models(params, plan.step - 1)
        weights = self._weights(plan.staleness(trips))
        positions = reduction_groups(np.arange(len(trips)), self.groups)
        return [
            _summed(index, part, trips, updates, weights, params.size) for index, part in enumerate(positions)
        ]

    def _weights(self, staleness: np.ndarray) -> np.ndarray:
        """Each update's staleness weight. FedAsync's s(t - tau) counts versions as the paper
        does: a client dispatched with the newest model x_{t-1} (tau = t - 1) arrives 1 step
        stale, where FedBuff's count, the server steps between dispatch and arrival, says 0."""
        return self.weight(staleness + 1 if self.mixing is not None else staleness)

    def _onto_current(
        self, trip: Trip, update: ClientUpdate, params: np.ndarray, current: int
    ) -> ClientUpdate:
        """FedAsync: the update x_new - x = delta + (x_tau - x), from the current model
        ``params`` (version ``current``) to the client's x_new = x_tau + delta."""
        if update.update is None or trip.version == current:  # no drift: delta as it came
            return update
        drift = self.models[trip.version] - params
        return dataclasses.replace(update, update=update.update + drift)

    def _keep_starting_models(self, params: np.ndarray, current: int) -> None:
        """Keep the models that the trips still in flight started from, no other."""
        needed = sorted({t.version for t in self.schedule.in_flight.values() if t.outcome == "arrives"})
        self.models = {v: params.copy() if v == current else self.models[v] for v in needed}

    def row(self, plan: StepPlan) -> dict[str, Any]:
        staleness = plan.staleness()
        row = {
            "staleness_histogram": staleness_histogram(staleness),
            "staleness_mean": float(staleness.mean()) if len(staleness) else None,
            "staleness_max": int(staleness.max()) if len(staleness) else None,
            "num_dispatched": len(plan.dispatched),
            "dropped_clients": plan.dropped,
            "timed_out_clients": plan.timed_out,
            "stale_discarded": len(plan.discarded),
            "simulated_elapsed": plan.time,
        }
        if self.mixing is not None:  # FedAsync's a_t = a * s(staleness) of the step's one arrival
            row["mixing_weight"] = float(self.mixing * self._weights(staleness)[0])
        return row


def _groups_by_event(trips: list[Trip], groups: int) -> tuple[list[np.ndarray], dict[int, int]]:
    """Each dispatch event's clients (sorted) cut into reduction groups; group -> event."""
    by_event: dict[int, list[int]] = {}
    for trip in trips:
        by_event.setdefault(trip.event, []).append(trip.client)
    cut: list[np.ndarray] = []
    events: dict[int, int] = {}
    for event, clients in sorted(by_event.items()):
        for group in reduction_groups(np.array(sorted(clients), np.int64), groups):
            events[len(cut)] = event
            cut.append(group)
    return cut, events


def _summed(index, part, trips, updates, weights, size: int) -> GroupResult:
    total, weight_total = np.zeros(size, np.float32), 0.0
    with warnings.catch_warnings():
        # Updates arrive from Ray read-only; torch warns on wrapping them, but only reads them.
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        for p in part:
            u = updates[p]
            if u.update is not None:
                add_weighted(total, u.update, u.weight * weights[p])
                weight_total += u.weight
    return GroupResult(
        group_index=index,
        client_ids=np.array([trips[p].client for p in part], np.int64),
        num_samples=np.array([updates[p].num_samples for p in part], np.int64),
        train_losses=np.array([updates[p].train_loss for p in part], np.float64),
        accepted=np.array([updates[p].update is not None for p in part], bool),
        norms=np.array([updates[p].norm for p in part], np.float64),
        bytes_up=np.array([updates[p].bytes_up for p in part], np.int64),
        weight_total=weight_total,
        weighted_sum=total,
    )
