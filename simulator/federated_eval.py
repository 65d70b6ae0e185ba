"""Federated evaluation: the global model on sampled clients' own held-out data.

Central evaluation on the server's test set says how good the average model
is; federated evaluation says for whom. Every ``server.federated_eval.every``
rounds (and the last) a seeded ``fraction`` of all clients evaluates the
global model on the samples it held out from its training
(``server.federated_eval.holdout`` of its shard; generated populations use
each device's own test rows). One row per client goes to ``clients.jsonl``;
the round's metrics get the sample-weighted federated accuracy and loss, the
spread of client accuracies and the mean of the worst 10%.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from simulator.config import Config
from simulator.pool import map_groups

PURPOSE_FEDERATED_EVAL = 15
WORST_SHARE = 0.1


def federated_eval_due(cfg: Config, round_: int) -> bool:
    every = cfg.server.federated_eval.every
    return every > 0 and (round_ % every == 0 or round_ == cfg.rounds)


def clients_to_evaluate(cfg: Config, round_: int) -> np.ndarray:
    """Sorted ids of this round's evaluated clients: a seeded draw, independent of training's."""
    count = max(1, round(cfg.server.federated_eval.fraction * cfg.data.num_clients))
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, round_, PURPOSE_FEDERATED_EVAL]))
    return np.sort(rng.choice(cfg.data.num_clients, size=count, replace=False))


def evaluate_clients(pool, params: np.ndarray, clients: np.ndarray, cfg: Config, held_out: np.ndarray | None):
    """Run the evaluation on the workers: (client ids, held-out counts, summed losses,
    correct counts), each (k,) in client order. ``held_out``: every client's held-out
    sample count, which balances the workers (None: generated clients, all alike)."""
    groups, batch = cfg.runtime.reduction_groups, cfg.server.eval_batch_size
    parts = map_groups(pool, params, clients, groups, "evaluate_groups", batch, client_work=held_out)
    if not parts:
        return (np.zeros(0, np.int64),) * 4
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(1, 5))


def client_rows(round_: int, ids, counts, loss_sums, correct) -> list[dict[str, Any]]:
    """clients.jsonl rows; clients with no held-out sample have nothing to report."""
    return [
        {
            "round": round_,
            "client": int(cid),
            "num_samples": int(n),
            "accuracy": float(c / n),
            "loss": float(loss / n),
        }
        for cid, n, loss, c in zip(ids, counts, loss_sums, correct, strict=True)
        if n > 0
    ]


def round_metrics(counts, loss_sums, correct) -> dict[str, Any]:
    """Sample-weighted accuracy and loss over the evaluated clients, the (unweighted)
    spread of their accuracies and the mean accuracy of the worst 10% (at least one)."""
    has_data = counts > 0
    total = int(counts.sum())
    if not total:
        return {"federated_clients": 0}
    accuracies = np.sort(correct[has_data] / counts[has_data])
    worst = max(1, math.ceil(WORST_SHARE * len(accuracies)))
    return {
        "federated_clients": int(has_data.sum()),
        "federated_accuracy": float(correct.sum() / total),
        "federated_loss": float(loss_sums.sum() / total),
        "federated_accuracy_std": float(accuracies.std()),
        "federated_accuracy_worst10": float(accuracies[:worst].mean()),
    }
