"""Asynchronous aggregation's rules (server.mode: async, FedBuff or FedAsync): server.async's
ranges, its keys only in async runs, and what an async server step cannot do."""

from __future__ import annotations

import dataclasses
from typing import Any

from clients.errors import ConfigError
from simulator.config.rules import privacy, pruning, require
from simulator.config.schema import AsyncConfig, ClientConfig, Config, ServerConfig, yaml_key
from simulator.config.yaml_input import show

# What an asynchronous server step cannot do: each names the key and why.
ASYNC_REFUSALS = (
    ("server.update", lambda c, s: s.update != "weights", "FedBuff buffers model deltas (update: weights)"),
    ("server.aggregator", lambda c, s: s.aggregator != "mean", "the buffer is averaged (aggregator: mean)"),
    privacy.ASYNC_REFUSAL,
    ("client.algorithm", lambda c, s: c.algorithm != "fedavg", "SCAFFOLD's control variates assume rounds"),
    pruning.ASYNC_REFUSAL,
    (
        "client.system.over_selection", lambda c, s: c.system.over_selection > 0,
        "async keeps server.async.concurrency clients busy; over-selection is for sync rounds",
    ),
    (
        "client.system.stragglers", lambda c, s: c.system.stragglers > 0,
        "stragglers are a share of each sync round's clients; an async client's trip is its whole work",
    ),
    (
        "client.system.partial_work", lambda c, s: c.system.partial_work,
        "an async trip past the deadline times out; partial work is for sync rounds",
    ),
)  # fmt: skip
# What FedAsync's mixing step has no place for: it mixes one arrival into the model with
# weight server.async.mixing x s(staleness), no buffer, no server optimiser or lr.
FEDASYNC_REFUSALS = (
    (
        "server.async.buffer_size", lambda c, s: s.async_.buffer_size not in (None, 1),
        "FedAsync mixes each arrival into the model at once (buffer_size 1 or null)",
    ),
    (
        "server.optimizer", lambda c, s: s.optimizer != "sgd",
        "FedAsync's step is the mixing x <- (1 - a_t) x + a_t x_new itself (optimizer: sgd)",
    ),
    ("server.lr", lambda c, s: s.lr != 1.0, "FedAsync's step size is server.async.mixing (lr: 1.0)"),
    (
        "server.weighting", lambda c, s: s.weighting != "samples",
        "FedAsync mixes one client's model at a time; there is no mean to weight (weighting: samples)",
    ),
)  # fmt: skip


def check_values(cfg: Config) -> None:
    a, num_clients = cfg.server.async_, cfg.data.num_clients
    require(
        a.concurrency is None or 1 <= a.concurrency <= num_clients,
        "server.async.concurrency",
        a.concurrency,
        f"null or a count in [1, data.num_clients={num_clients}]",
    )
    require(
        a.buffer_size is None or a.buffer_size >= 1, "server.async.buffer_size", a.buffer_size, "null or >= 1"
    )
    require(0 <= a.staleness_a <= 1e3, "server.async.staleness_a", a.staleness_a, "in [0, 1000]")
    require(a.staleness_b >= 0, "server.async.staleness_b", a.staleness_b, ">= 0")
    require(
        a.max_staleness is None or a.max_staleness >= 0, "server.async.max_staleness", a.max_staleness,
        "null or >= 0",
    )  # fmt: skip
    require(0 < a.mixing <= 1, "server.async.mixing", a.mixing, "in (0, 1]")


def check_combinations(cfg: Config) -> None:
    """server.async left at its defaults in a sync run; none of ASYNC_REFUSALS in an async one."""
    c, s = cfg.client, cfg.server
    if s.mode != "async":
        for f in dataclasses.fields(AsyncConfig):
            value = getattr(s.async_, f.name)
            if value != f.default:
                raise ConfigError(
                    f"server.async.{yaml_key(f)}: {show(value)} is not allowed with server.mode: sync; "
                    "server.async acts in async runs only (set server.mode: async, or reset the "
                    "section: --set server.async={})"
                )
        return
    _refuse_any(c, s, ASYNC_REFUSALS, "server.mode: async")
    if s.async_.rule == "fedasync":
        _refuse_any(c, s, FEDASYNC_REFUSALS, "server.async.rule: fedasync")
    elif s.async_.mixing != AsyncConfig.mixing:
        raise ConfigError(
            f"server.async.mixing: {show(s.async_.mixing)} is not allowed with server.async.rule: fedbuff; "
            "the mixing weight is FedAsync's (set server.async.rule: fedasync, or leave mixing out)"
        )


def _refuse_any(c: ClientConfig, s: ServerConfig, refusals: tuple, setting: str) -> None:
    for key, refused, why in refusals:
        if refused(c, s):
            value = _config_path_value(c, s, key)
            raise ConfigError(f"{key}: {show(value)} is not allowed with {setting}; {why}")


def _config_path_value(c: ClientConfig, s: ServerConfig, key: str) -> Any:
    section, *rest = key.split(".")
    node: Any = c if section == "client" else s
    for part in rest:
        node = getattr(node, "async_" if part == "async" else part)  # a Python keyword as a field
    return node
