"""Federated evaluation: the global model on sampled clients' own held-out data.

Central evaluation on the server's test set says how good the average model
is; federated evaluation says for whom. Every ``server.federated_eval.every``
rounds (and the last) a seeded ``fraction`` of all clients evaluates the
global model on the samples it held out from its training
(``server.federated_eval.holdout`` of its shard; generated populations use
each device's own test rows). One row per client goes to ``clients.jsonl``;
the round's metrics get the sample-weighted federated accuracy and loss, the
spread of client accuracies and the mean of the worst 10%. A regression run has no
accuracy: its rows carry the loss, the spread of client losses and the mean of the
worst (highest) 10%.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.protocol import EvalRequest
from clients.streams import Stream
from simulator.config.schema import Config
from simulator.driver.pool import GroupCall, map_groups
from simulator.report.fairness import worst_share_mean


@dataclass(frozen=True)
class EvaluatedModel:
    """What the sampled clients evaluate: the global model and, where clients keep their
    own, each one's state."""

    params: np.ndarray
    buffers: np.ndarray | None = None  # the global model's buffers (a module model's, when it has any)
    states: dict[int, dict[str, np.ndarray]] | None = None  # personal state / own buffers, by client


@dataclass(frozen=True)
class FederatedEvalPlan:
    """When federated evaluation runs, whom it samples and how the workers evaluate, as
    server.federated_eval (with the run's seed, clients, rounds and groups) sets it."""

    every: int
    last_round: int
    fraction: float
    num_clients: int
    seed: int
    finetune_steps: int
    batch_size: int
    groups: int

    @classmethod
    def of(cls, cfg: Config) -> FederatedEvalPlan:
        fe = cfg.server.federated_eval
        return cls(
            fe.every, cfg.rounds, fe.fraction, cfg.data.num_clients, cfg.seed, fe.finetune_steps,
            cfg.server.eval_batch_size, cfg.runtime.reduction_groups,
        )  # fmt: skip

    def due(self, round_: int) -> bool:
        return self.every > 0 and (round_ % self.every == 0 or round_ == self.last_round)

    def clients(self, round_: int) -> np.ndarray:
        """Sorted ids of this round's evaluated clients: a seeded draw, independent of training's."""
        count = max(1, round(self.fraction * self.num_clients))
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, round_, Stream.FEDERATED_EVAL]))
        return np.sort(rng.choice(self.num_clients, size=count, replace=False))

    def evaluate(
        self, pool, round_: int, clients: np.ndarray, model: EvaluatedModel, held_out: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """Run the evaluation on the workers: the columns of ``ClientWorker.evaluate_groups``
        over ``clients``, each (k,) in client order. ``held_out``: every client's held-out
        sample count, which balances the workers (None: generated clients, all alike)."""
        states = model.states or {}

        def request(ids: np.ndarray) -> tuple[EvalRequest]:  # a task carries its own clients' state only
            own = {int(c): states[int(c)] for c in ids if int(c) in states}
            asked = EvalRequest(
                batch_size=self.batch_size, states=own, finetune_steps=self.finetune_steps,
                round=round_, buffers=model.buffers,
            )  # fmt: skip
            return (asked,)

        call = GroupCall("evaluate_groups", client_work=held_out, task_args=request)
        parts = map_groups(pool, model.params, clients, self.groups, call)
        if not parts:
            return {"client": np.zeros(0, np.int64), "num_samples": np.zeros(0, np.int64)}
        return {key: np.concatenate([columns[key] for _, columns in parts]) for key in parts[0][1]}


MODELS = ("", "personal_", "finetuned_")  # the global model, each client's own, the fine-tuned global


def client_rows(round_: int, columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """clients.jsonl rows; clients with no held-out sample have nothing to report. A
    personalized run adds ``personal_accuracy`` / ``personal_loss`` for clients that hold
    personal state; fine-tuning adds ``finetuned_accuracy`` / ``finetuned_loss``."""
    rows = []
    for i, (cid, n) in enumerate(zip(columns["client"], columns["num_samples"], strict=True)):
        if n <= 0:
            continue
        row: dict[str, Any] = {"round": round_, "client": int(cid), "num_samples": int(n)}
        for prefix in MODELS:
            if f"{prefix}correct" in columns and columns[f"{prefix}correct"][i] >= 0:
                row[f"{prefix}accuracy"] = float(columns[f"{prefix}correct"][i] / n)
                row[f"{prefix}loss"] = float(columns[f"{prefix}loss"][i] / n)
            elif f"{prefix}evaluated" in columns and columns[f"{prefix}evaluated"][i]:
                row[f"{prefix}loss"] = float(columns[f"{prefix}loss"][i] / n)
        rows.append(row)
    return rows


def round_metrics(columns: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per model evaluated: sample-weighted accuracy and loss over the evaluated clients,
    the (unweighted) spread of their accuracies and the mean accuracy of the worst 10%
    (at least one): ``federated_*`` for the global model, ``personal_*`` and
    ``finetuned_*`` for the clients' own and fine-tuned models."""
    counts = columns["num_samples"]
    if not int(counts.sum()):
        return {"federated_clients": 0}
    out: dict[str, Any] = {}
    for prefix, name in zip(MODELS, ("federated", "personal", "finetuned"), strict=True):
        if f"{prefix}correct" in columns:
            out.update(_spread(name, counts, columns[f"{prefix}loss"], columns[f"{prefix}correct"]))
        elif f"{prefix}evaluated" in columns:
            out.update(_loss_spread(name, counts, columns[f"{prefix}loss"], columns[f"{prefix}evaluated"]))
    return out


def _loss_spread(name: str, counts, loss_sums, evaluated) -> dict[str, Any]:
    """A regression run's: sample-weighted loss, the spread of client losses and the mean
    loss of the worst (highest-loss) 10%, at least one client."""
    has = (counts > 0) & evaluated
    total = int(counts[has].sum())
    if not total:
        return {f"{name}_clients": 0}
    losses = np.sort(loss_sums[has] / counts[has])[::-1]
    return {
        f"{name}_clients": int(has.sum()),
        f"{name}_loss": float(loss_sums[has].sum() / total),
        f"{name}_loss_std": float(losses.std()),
        f"{name}_loss_worst10": worst_share_mean(losses, highest=True),
    }


def _spread(name: str, counts, loss_sums, correct) -> dict[str, Any]:
    has = (counts > 0) & (correct >= 0)
    total = int(counts[has].sum())
    if not total:
        return {f"{name}_clients": 0}
    accuracies = np.sort(correct[has] / counts[has])
    return {
        f"{name}_clients": int(has.sum()),
        f"{name}_accuracy": float(correct[has].sum() / total),
        f"{name}_loss": float(loss_sums[has].sum() / total),
        f"{name}_accuracy_std": float(accuracies.std()),
        f"{name}_accuracy_worst10": worst_share_mean(accuracies),
    }
