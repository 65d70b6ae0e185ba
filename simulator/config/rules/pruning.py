"""Pruning's rules: the schedule's sparsities and rounds, and that it runs in sync rounds."""

from __future__ import annotations

from simulator.config.rules import require
from simulator.config.schema import Config

# Pruning in an async run, one of the async refusals (simulator.config.rules.asynchronous).
ASYNC_REFUSAL = (
    "server.pruning.method",
    lambda c, s: s.pruning.method != "none",
    "pruning steps run in sync rounds",
)


def check_pruning(cfg: Config) -> None:
    pr = cfg.server.pruning
    require(
        0 <= pr.initial_sparsity <= pr.sparsity,
        "server.pruning.initial_sparsity",
        pr.initial_sparsity,
        "in [0, sparsity]",
    )
    require(0 <= pr.sparsity < 1, "server.pruning.sparsity", pr.sparsity, "in [0, 1)")
    require(pr.start_round >= 1, "server.pruning.start_round", pr.start_round, ">= 1")
    require(pr.end_round >= pr.start_round, "server.pruning.end_round", pr.end_round, ">= start_round")
    require(pr.every >= 1, "server.pruning.every", pr.every, ">= 1")
