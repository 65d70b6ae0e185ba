"""``validate``: a Config's value ranges and cross-field rules, checked in a fixed order.

The rules live with their feature, one module each under simulator/config/rules/ (run, data,
model, client, server, privacy, compression, pruning, asynchronous, personalization,
federated_eval, runtime, work); this module holds only the order they run in. The first
rule a config breaks is the one error it gets, so the order is part of what a user sees:
a new rule goes into its feature's module and, where it runs, into RULES.
"""

from __future__ import annotations

from collections.abc import Callable

from simulator.config.rules import (
    asynchronous,
    client,
    compression,
    data,
    federated_eval,
    model,
    personalization,
    privacy,
    pruning,
    run,
    runtime,
    selection,
    server,
    work,
)
from simulator.config.schema import Config

RULES: tuple[Callable[[Config], None], ...] = (
    run.check_run,
    data.check_data,
    model.check_model,
    client.check_training,
    server.check_round,
    federated_eval.check_sampling,
    server.check_eval_batch_size,
    asynchronous.check_values,
    selection.check_values,
    federated_eval.check_finetune,
    client.check_local_steps,
    server.check_optimizer_and_aggregator,
    privacy.check_values,
    server.check_attack,
    compression.check_compression,
    pruning.check_pruning,
    client.check_combinations,
    server.check_combinations,
    privacy.check_combinations,
    asynchronous.check_combinations,
    selection.check_combinations,
    personalization.check_personalization,
    model.check_batch_norm_batches,
    runtime.check_runtime,
    work.check_work,
)


def validate(cfg: Config) -> Config:
    """Check value ranges and cross-field rules; return ``cfg`` unchanged."""
    for rule in RULES:
        rule(cfg)
    return cfg
