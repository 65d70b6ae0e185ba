"""Seeded client sampling and the fixed reduction groups of a round.

The sample of round r depends only on (seed, r): uniformly without
replacement, as in FedAvg (McMahan et al. 2017, arXiv:1602.05629, Algorithm 1,
"S_t <- random set of m clients"). Groups are cut by position in the sorted
sample, never by worker, so partial sums add up the same whatever the pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.streams import Stream
from server.selection import OortSelector, PowerOfChoice, statistical_utility
from server.system import (
    Devices,
    LocalWork,
    RoundContext,
    RoundPlan,
    SystemModel,
    parametric_devices,
    plan_round,
    uniform_sample,
)

SELECTION_PREFIX = "selection."  # the selection policy's arrays among a checkpoint's


def sample_clients(seed: int, round_: int, num_clients: int, per_round: int) -> np.ndarray:
    """Sorted ids of the ``per_round`` clients sampled in ``round_``: (per_round,) int64."""
    if not 1 <= per_round <= num_clients:
        raise ValueError(f"per_round must be in [1, {num_clients}], got {per_round}")
    return uniform_sample(seed, round_, np.arange(num_clients, dtype=np.int64), per_round)


def reduction_groups(sorted_ids: np.ndarray, num_groups: int) -> list[np.ndarray]:
    """Cut the sorted sample into at most ``num_groups`` contiguous, non-empty groups."""
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    # More groups than clients would only add empty ones (dropped here): never build them.
    return [g for g in np.array_split(sorted_ids, min(num_groups, max(len(sorted_ids), 1))) if len(g)]


def poisson_sample(seed: int, round_: int, num_clients: int, rate: float) -> np.ndarray:
    """Sorted ids of the clients included in ``round_``, each independently with
    probability ``rate`` (the sampling DP-SGD style accounting assumes; the count varies)."""
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, round_, Stream.SAMPLING]))
    return np.flatnonzero(rng.random(num_clients) < rate).astype(np.int64)


class Selection:
    """server.selection other than uniform, round by round: which of the round's online
    clients it selects (``chooser``), and what the policy learns from the round
    (``learn``: Oort's utilities and trip times). ``sizes`` (num_clients,): training
    samples of each client; ``oort``: Oort's selector, or None for power-of-choice with
    ``candidates`` d (None: twice the clients selected)."""

    def __init__(
        self, seed: int, sizes: np.ndarray, oort: OortSelector | None, candidates: int | None = None
    ):
        self.seed, self.sizes, self.oort, self.candidates = seed, sizes, oort, candidates
        # power-of-choice: the candidates whose loss the last round measured, and how long
        # that poll took on the simulated clock
        self.measured = np.zeros(0, np.int64)
        self.polled_for = 0.0

    def chooser(
        self, round_: int, local_losses: Callable[[np.ndarray], np.ndarray]
    ) -> Callable[[np.ndarray, int], np.ndarray]:
        """``select(online, count)`` for ``round_``; power-of-choice asks ``local_losses``
        (sorted ids -> their losses at the current model) of its candidates."""
        oort = self.oort
        if oort is not None:
            return lambda online, count: oort.select(round_, online, count)

        def highest_loss(online: np.ndarray, count: int) -> np.ndarray:
            drawn = PowerOfChoice.candidates(
                self.seed, round_, online, self.candidates or 2 * count, self.sizes
            )
            if len(drawn) <= count:  # every candidate is selected: no loss to rank by
                self.measured = np.zeros(0, np.int64)
                return drawn
            self.measured = drawn
            return PowerOfChoice.pick(drawn, local_losses(drawn), count)

        return highest_loss

    def poll_seconds(self, devices: Devices, down_bytes: int) -> float | None:
        """How long the last selection's poll took (None: it polled nobody): until the
        slowest candidate has downloaded the model and computed its loss over its rows."""
        if not len(self.measured):
            return None
        self.polled_for = float(
            devices.query_seconds(self.measured, self.sizes[self.measured], down_bytes).max()
        )
        return self.polled_for

    def learn(self, round_: int, plan: RoundPlan, results: list[Any]) -> None:
        """Oort hears each reporting client's statistical utility and trip seconds, and the
        trip seconds of the selected clients that did not report."""
        if self.oort is None:
            return
        accepted = [r for r in results if r.loss_squares is not None and r.samples_seen is not None]
        ids = np.concatenate([r.client_ids[r.accepted] for r in accepted] or [np.zeros(0, np.int64)])
        samples = np.concatenate([r.samples_seen[r.accepted] for r in accepted] or [np.zeros(0)])
        squares = np.concatenate([r.loss_squares[r.accepted] for r in accepted] or [np.zeros(0)])
        trips = plan.trip_seconds[np.searchsorted(plan.selected, ids)]
        order = np.argsort(ids, kind="stable")
        # A loss too large to square is still a large utility, not a missing one.
        utilities = np.nan_to_num(
            statistical_utility(samples, squares), nan=0.0, posinf=np.finfo(np.float64).max
        )
        self.oort.feedback(round_, ids[order], utilities[order], trips[order])
        silent = ~np.isin(plan.selected, ids)
        self.oort.observe_durations(plan.selected[silent], plan.trip_seconds[silent])

    def metrics(self) -> dict[str, Any]:
        if self.oort is None:
            polled = {"poll_seconds": self.polled_for} if len(self.measured) else {}
            return {"candidates_measured": len(self.measured), **polled}
        return {f"oort_{key}": value for key, value in self.oort.metrics().items()}

    def arrays(self) -> dict[str, np.ndarray]:
        return {} if self.oort is None else {SELECTION_PREFIX + k: v for k, v in self.oort.arrays().items()}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if self.oort is not None:
            self.oort.load_arrays(
                {
                    k.removeprefix(SELECTION_PREFIX): v
                    for k, v in arrays.items()
                    if k.startswith(SELECTION_PREFIX)
                }
            )


@dataclass(frozen=True)
class ClientSampler:
    """Who takes part in each round: ``per_round`` of ``num_clients`` uniformly (FedAvg),
    each with probability per_round / num_clients (``poisson``, for DP accounting), or
    as the ``system`` model plans it from each client's ``work`` in a round on its
    ``devices``, with the ``selection`` policy (None: uniform)."""

    seed: int
    num_clients: int
    per_round: int
    poisson: bool = False
    system: SystemModel | None = None
    work: LocalWork | None = None
    devices: Devices | None = None
    selection: Selection | None = None

    @property
    def planned(self) -> bool:
        """Whether rounds are planned on the devices (else a uniform sample of everyone)."""
        traced = self.devices is not None and self.devices.traced
        return traced or self.selection is not None or (self.system is not None and self.system.active)

    def sample(self, round_: int, context: RoundContext | None = None) -> tuple[np.ndarray, RoundPlan | None]:
        """Sorted participant ids, and the system model's plan when it decided them;
        ``context``: the round's start time, trip bytes and selection (default: none)."""
        if self.poisson:
            return poisson_sample(
                self.seed, round_, self.num_clients, self.per_round / self.num_clients
            ), None
        if not self.planned:
            return sample_clients(self.seed, round_, self.num_clients, self.per_round), None
        if self.work is None:
            raise ValueError("the system model needs each client's work per round")
        system = self.system or SystemModel()
        devices = self.devices or parametric_devices(self.seed, self.num_clients, system)
        plan = plan_round(
            self.seed,
            round_,
            self.num_clients,
            self.per_round,
            self.work,
            system,
            devices,
            context or RoundContext(),
        )
        return plan.participants, plan

    def simulated_seconds(self, participants: np.ndarray) -> float:
        """A round without a heterogeneity model on the simulated clock: its slowest
        participant's work at the median speed (0 when there is no work to time)."""
        if self.work is None or not len(participants):
            return 0.0
        speed = self.system.speed if self.system is not None else SystemModel().speed
        return float(self.work.samples[participants].max() / speed)
