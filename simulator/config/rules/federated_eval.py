"""Federated evaluation's rules (server.federated_eval): how often, on what share of the
clients and their rows, and fine-tuning before it."""

from __future__ import annotations

from simulator.config.rules import require
from simulator.config.schema import Config


def check_sampling(cfg: Config) -> None:
    fe = cfg.server.federated_eval
    require(fe.every >= 0, "server.federated_eval.every", fe.every, ">= 0 (0 = off)")
    require(0 < fe.fraction <= 1, "server.federated_eval.fraction", fe.fraction, "in (0, 1]")
    require(0 < fe.holdout < 1, "server.federated_eval.holdout", fe.holdout, "in (0, 1)")


def check_finetune(cfg: Config) -> None:
    fe = cfg.server.federated_eval
    require(
        fe.finetune_steps >= 0, "server.federated_eval.finetune_steps", fe.finetune_steps, ">= 0 (0 = off)"
    )
