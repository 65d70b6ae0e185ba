"""A small pool of worker actors that knows nothing of their methods.

Work items are submitted as ``fn(actor, item) -> ObjectRef``; results come
back in item order. An actor that dies (killed process, lost node) is evicted,
a replacement is started when a ``respawn`` factory is given, and its items
re-run elsewhere: every result depends only on the item, so nothing changes.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from clients.errors import ClusterError, FedsimError
from server.sampling import reduction_groups

log = logging.getLogger("fedsim")
TASKS_PER_WORKER = 1


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

    def map(self, submit: Callable[[Any, Any], Any], items: Sequence[Any], max_retries: int = 3) -> list:
        """Run ``submit(actor, item)`` for every item; return results in item order."""
        return list(self.imap(submit, items, max_retries))

    def imap(self, submit: Callable[[Any, Any], Any], items: Sequence[Any], max_retries: int = 3):
        """Like ``map`` but yields each result as soon as it and all before it are done,
        so the caller's in-order work overlaps with the workers'."""
        results: dict[int, Any] = {}
        next_out = 0
        queue = deque(range(len(items)))
        attempts = [0] * len(items)
        running: dict[Any, tuple[Any, int]] = {}
        load = {id(a): 0 for a in self.actors}
        while queue or running:
            self._fill(submit, items, queue, running, load)
            done, _ = ray.wait(list(running), num_returns=1)
            actor, index = running.pop(done[0])
            load[id(actor)] -= 1
            try:
                results[index] = ray.get(done[0])
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

    def _fill(self, submit, items, queue, running, load) -> None:
        if not self.actors:
            raise ClusterError("every worker actor died; no worker is left to run the round")
        while queue:
            actor = min(self.actors, key=lambda a: load[id(a)])
            if load[id(actor)] >= self.depth:
                return
            index = queue.popleft()
            running[submit(actor, items[index])] = (actor, index)
            load[id(actor)] += 1

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


def tasks_of_groups(groups: list[np.ndarray], workers: int) -> list[list[tuple[int, np.ndarray]]]:
    """Consecutive reduction groups batched into TASKS_PER_WORKER tasks per worker.

    Each Ray call and each returned object costs milliseconds (measured with
    bench/overhead.py), so fewer, larger tasks win on small models. Only who
    carries a group depends on this, never a bit of the result."""
    indexed = list(enumerate(groups))
    if not indexed:
        return []
    count = min(len(indexed), TASKS_PER_WORKER * workers)
    bounds = [round(i * len(indexed) / count) for i in range(count + 1)]
    return [indexed[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def map_groups(
    pool: WorkerPool, params: np.ndarray, clients: np.ndarray, groups: int, method: str, *args
) -> list:
    """Every reduction group's result of the workers' ``method(params, task, *args)`` over
    ``clients`` cut into ``groups`` groups, in group order (whichever worker ran it);
    ``params`` goes into the object store once."""
    params_ref = ray.put(params)
    tasks = tasks_of_groups(reduction_groups(clients, groups), pool.size)
    results = []
    for task_results in pool.imap(
        lambda actor, task: getattr(actor, method).remote(params_ref, task, *args), tasks
    ):
        results.extend(task_results)
    return results
