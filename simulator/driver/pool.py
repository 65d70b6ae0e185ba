"""A small pool of worker actors that knows nothing of their methods.

Work items are submitted as ``fn(actor, item) -> ObjectRef``; results come
back in item order. An actor that dies (killed process, lost node) is evicted,
a replacement is started when a ``respawn`` factory is given, and its items
re-run elsewhere: every result depends only on the item, so nothing changes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from clients.errors import ClusterError, FedsimError
from server.sampling import reduction_groups

log = logging.getLogger("fedsim")


class WorkerPool:
    def __init__(
        self,
        actors: Sequence[Any],
        in_flight_per_actor: int = 2,
        respawn: Callable[[], Any] | None = None,
        max_respawns: int = 8,
    ):
        if not actors:
            raise ClusterError("a worker pool needs at least one actor")
        self.actors = list(actors)
        self.depth = in_flight_per_actor
        self.respawn = respawn
        self.respawns_left = max_respawns
        self.evicted = 0
        self.scheduler = GroupScheduler()  # what each worker is measured to do per second

    def map(self, submit: Callable[[Any, Any], Any], items: Sequence[Any], max_retries: int = 3) -> list:
        """Run ``submit(actor, item)`` for every item; return results in item order."""
        return list(self.imap(submit, items, max_retries))

    def imap(
        self,
        submit: Callable[[Any, Any], Any],
        items: Sequence[Any],
        max_retries: int = 3,
        placed_on: Sequence[Any] | None = None,
        on_done: Callable[[Any, int, float], None] | None = None,
    ):
        """Like ``map`` but yields each result as soon as it and all before it are done,
        so the caller's in-order work overlaps with the workers'. Item i goes to
        ``placed_on[i]`` while that actor lives, else to the least-loaded one; an item
        placed on None waits for an idle actor (the round's tail goes to whoever is free
        first); ``on_done(actor, i, seconds)`` hears how long each item took from its
        submission."""
        results: dict[int, Any] = {}
        next_out = 0
        queue = deque(range(len(items)))
        attempts = [0] * len(items)
        running: dict[Any, tuple[Any, int, float]] = {}
        load = {id(a): 0 for a in self.actors}
        while queue or running:
            self._fill(submit, items, queue, running, load, placed_on)
            done, _ = ray.wait(list(running), num_returns=1)
            actor, index, submitted = running.pop(done[0])
            load[id(actor)] -= 1
            try:
                results[index] = ray.get(done[0])
                if on_done is not None:
                    on_done(actor, index, time.perf_counter() - submitted)
            except RayActorError as exc:
                self._evict(actor, exc, load)
                attempts[index] += 1
                if attempts[index] > max_retries:
                    raise ClusterError(
                        f"work item {index} failed on {attempts[index]} workers: {exc}"
                    ) from exc
                queue.appendleft(index)
            except RayTaskError as exc:
                raise _unwrap(exc) from exc
            while next_out in results:
                yield results.pop(next_out)
                next_out += 1

    def _fill(self, submit, items, queue, running, load, placed_on) -> None:
        if not self.actors:
            raise ClusterError("every worker actor died; no worker is left to run the round")
        while queue:
            actor = self._actor_for(queue[0], load, placed_on)
            if load[id(actor)] >= (
                1 if placed_on is not None and placed_on[queue[0]] is None else self.depth
            ):
                return
            index = queue.popleft()
            running[submit(actor, items[index])] = (actor, index, time.perf_counter())
            load[id(actor)] += 1

    def _actor_for(self, index: int, load: dict, placed_on: Sequence[Any] | None) -> Any:
        """The item's own actor while it lives; the least-loaded one otherwise."""
        if placed_on is not None and placed_on[index] in self.actors:
            return placed_on[index]
        return min(self.actors, key=lambda a: load[id(a)])

    @property
    def size(self) -> int:
        return len(self.actors)

    def shutdown(self) -> None:
        """Kill every actor now rather than when their handles are garbage-collected,
        so their CPUs are free for whatever runs next."""
        for actor in self.actors:
            ray.kill(actor)
        self.actors.clear()

    def _evict(self, actor, exc: Exception, load: dict) -> None:
        if actor not in self.actors:
            return
        self.actors.remove(actor)
        self.evicted += 1
        log.warning("evicted a dead worker (%d left): %s", len(self.actors), str(exc).splitlines()[0])
        if self.respawn is not None and self.respawns_left > 0:
            self.respawns_left -= 1
            try:
                replacement = self.respawn()
            except Exception as err:  # no room left on the cluster: carry on with fewer
                log.warning("could not start a replacement worker: %s", err)
                return
            self.actors.append(replacement)
            load[id(replacement)] = 0


def _unwrap(exc: RayTaskError) -> Exception:
    """The client's own FedsimError when there is one, else the task error."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, FedsimError):
        return cause
    return FedsimError(f"a worker task failed: {cause!r}" if cause else str(exc))


def balanced_shares(group_work: Sequence[float], speeds: Sequence[float]) -> list[list[int]]:
    """Group indices for each of ``len(speeds)`` workers: largest group first, each to the
    worker that would finish it soonest at its speed (LPT list scheduling, Graham 1969:
    within 4/3 of the best split). Ties go to the lower index, so the split is a pure
    function of its inputs; each share lists its groups in index order."""
    finish = [0.0] * len(speeds)
    shares: list[list[int]] = [[] for _ in speeds]
    for group in sorted(range(len(group_work)), key=lambda g: (-group_work[g], g)):
        worker = min(range(len(speeds)), key=lambda k: ((finish[k] + group_work[group]) / speeds[k], k))
        finish[worker] += group_work[group]
        shares[worker].append(group)
    return [sorted(share) for share in shares]


def held_back(shares: list[list[int]], group_work: Sequence[float]) -> tuple[list[list[int]], list[int]]:
    """(each share without its smallest group when it has two or more, those groups
    largest first): the tail a worker that finishes early takes on."""
    heads, tail = [], []
    for share in shares:
        if len(share) < 2:
            heads.append(share)
            continue
        smallest = min(share, key=lambda g: (group_work[g], -g))
        heads.append([g for g in share if g != smallest])
        tail.append(smallest)
    return heads, sorted(tail, key=lambda g: (-group_work[g], g))


class GroupScheduler:
    """Deals a round's reduction groups to the pool's workers by estimated work (each
    client's samples processed) and each worker's measured speed, one task per worker,
    less one small group each: those go, one at a time, to whichever worker is free
    first, which evens out a worker that runs slower this round than measured. A Ray
    call and its returned object cost milliseconds, so few, large tasks win.
    Only who carries a group depends on this, never a bit of the result."""

    SMOOTHING = 0.3  # weight of the newest speed measurement: this machine's timings drift ~15%

    def __init__(self) -> None:
        self.speeds: dict[tuple[int, str], float] = {}  # (actor id, method) -> work units per second

    def run(
        self,
        pool: WorkerPool,
        submit: Callable[[Any, list[tuple[int, np.ndarray]]], Any],
        groups: list[np.ndarray],
        group_work: Sequence[float],
        kind: str,
        on_groups_done: Callable[[list[int]], None] | None = None,
    ) -> list:
        """Each group's result of ``submit(actor, [(index, ids), ...])`` (which returns one
        result per group it was given, in order), in group order. ``on_groups_done`` hears
        the indices of the groups of each task as it finishes (progress)."""
        actors = list(pool.actors)
        split = balanced_shares(group_work, self._speeds(actors, kind))
        heads, tail = held_back(split, group_work) if len(actors) > 1 else (split, [])
        shares = [(actor, share) for actor, share in zip(actors, heads, strict=True) if share]
        shares += [(None, [g]) for g in tail]
        tasks = [[(g, groups[g]) for g in share] for _, share in shares]
        work = [sum(group_work[g] for g in share) for _, share in shares]

        def measured(actor: Any, index: int, seconds: float) -> None:
            self._measured(actor, kind, work[index], seconds)
            if on_groups_done is not None:
                on_groups_done([g for g, _ in tasks[index]])

        by_group: list[Any] = [None] * len(groups)
        placed = [actor for actor, _ in shares]
        answers = pool.imap(submit, tasks, placed_on=placed, on_done=measured)
        for task, task_results in zip(tasks, answers, strict=True):
            for (group, _), result in zip(task, task_results, strict=True):
                by_group[group] = result
        return by_group

    def _speeds(self, actors: list[Any], kind: str) -> list[float]:
        known = [self.speeds[(id(a), kind)] for a in actors if (id(a), kind) in self.speeds]
        default = float(np.median(known)) if known else 1.0  # a new worker: like the others
        return [self.speeds.get((id(a), kind), default) for a in actors]

    def _measured(self, actor: Any, kind: str, work: float, seconds: float) -> None:
        if work <= 0 or seconds <= 0:
            return
        key, speed = (id(actor), kind), work / seconds
        old = self.speeds.get(key)
        self.speeds[key] = speed if old is None else (1 - self.SMOOTHING) * old + self.SMOOTHING * speed


@dataclass(frozen=True)
class GroupCall:
    """A worker method to run on every reduction group: ``method(params, task, *args,
    *task_args(task's client ids))``, the groups balanced by ``client_work`` (num_clients,),
    else by client count."""

    method: str
    args: tuple = ()
    client_work: np.ndarray | None = None
    task_args: Callable[[np.ndarray], tuple] | None = None


def map_groups(
    pool: WorkerPool, params: np.ndarray, clients: np.ndarray, groups: int, call: GroupCall
) -> list:
    """Every reduction group's result of ``call`` over ``clients`` cut into ``groups``
    groups, in group order (whichever worker ran it); ``params`` goes into the object
    store once."""
    params_ref = ray.put(params)
    cut = reduction_groups(clients, groups)
    work = [float(len(g)) if call.client_work is None else float(call.client_work[g].sum()) for g in cut]

    def submit(actor, task):
        extra = () if call.task_args is None else call.task_args(np.concatenate([ids for _, ids in task]))
        return getattr(actor, call.method).remote(params_ref, task, *call.args, *extra)

    return pool.scheduler.run(pool, submit, cut, work, call.method)
