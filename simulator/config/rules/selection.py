"""Client selection's and device traces' rules: server.selection's settings (Oort's and
power-of-choice's sections act only under their policy), client.system.trace's values,
and what selection other than uniform cannot go with (DP's sampling, async dispatch)."""

from __future__ import annotations

import dataclasses
import math

from clients.errors import ConfigError
from simulator.config.rules import refuse, require
from simulator.config.schema import (
    Config,
    OortConfig,
    PowerOfChoiceConfig,
    SystemConfig,
    TraceConfig,
    yaml_key,
)
from simulator.config.yaml_input import show

# A section that acts only under one server.selection policy.
POLICY_SECTIONS = (("oort", OortConfig), ("power_of_choice", PowerOfChoiceConfig))


def check_values(cfg: Config) -> None:
    t = cfg.client.system.trace
    for key in ("capacity", "availability"):
        path = getattr(t, key)
        require(path is None or (isinstance(path, str) and path.strip() != ""), f"client.system.trace.{key}",
                path, "null or the path of a trace file")  # fmt: skip
    require(
        math.isfinite(t.backward_factor) and 0 < t.backward_factor <= 1e6,
        "client.system.trace.backward_factor", t.backward_factor, "in (0, 1e6]",
    )  # fmt: skip
    _check_oort(cfg.server.oort)
    d = cfg.server.power_of_choice.candidates
    require(d is None or d >= 1, "server.power_of_choice.candidates", d, "null or a count >= 1")


def _check_oort(o: OortConfig) -> None:
    require(0 <= o.exploration <= 1, "server.oort.exploration", o.exploration, "in [0, 1]")
    require(0 < o.exploration_decay <= 1, "server.oort.exploration_decay", o.exploration_decay, "in (0, 1]")
    require(
        0 <= o.exploration_min <= o.exploration, "server.oort.exploration_min", o.exploration_min,
        f"in [0, server.oort.exploration={o.exploration:g}]",
    )  # fmt: skip
    require(0 <= o.alpha <= 100, "server.oort.alpha", o.alpha, "in [0, 100]")
    require(o.pacer_step >= 1, "server.oort.pacer_step", o.pacer_step, ">= 1")
    require(0 <= o.pacer_delta <= 100, "server.oort.pacer_delta", o.pacer_delta, "in [0, 100]")
    require(0 <= o.cutoff_utility < 1, "server.oort.cutoff_utility", o.cutoff_utility, "in [0, 1)")
    require(1 <= o.sample_window <= 1e6, "server.oort.sample_window", o.sample_window, "in [1, 1e6]")
    require(0 <= o.round_threshold <= 100, "server.oort.round_threshold", o.round_threshold, "in [0, 100]")
    require(0 <= o.clip_bound <= 1, "server.oort.clip_bound", o.clip_bound, "in [0, 1]")
    require(
        0 <= o.blacklist_max_share <= 1, "server.oort.blacklist_max_share", o.blacklist_max_share, "in [0, 1]"
    )
    require(
        o.blacklist_rounds >= -1, "server.oort.blacklist_rounds", o.blacklist_rounds, "-1 (never) or >= 0"
    )


def check_combinations(cfg: Config) -> None:
    _check_trace(cfg.client.system)
    s = cfg.server
    for section, settings in POLICY_SECTIONS:
        if s.selection == section:
            continue
        for f in dataclasses.fields(settings):
            value = getattr(getattr(s, section), f.name)
            if value != f.default:
                raise ConfigError(
                    f"server.{section}.{yaml_key(f)}: {show(value)} is not allowed with server.selection: "
                    f"{s.selection}; server.{section} acts under server.selection: {section} only"
                )
    if s.selection == "uniform":
        return
    if s.mode == "async":
        refuse(
            "server.selection", s.selection,
            "asynchronous dispatch samples idle clients uniformly; selection policies are for sync rounds",
        )  # fmt: skip
    method = cfg.client.personalization.method
    if s.selection == "power_of_choice" and method != "none":
        refuse(
            "server.selection", s.selection,
            f"power-of-choice ranks candidates by the global model's loss, and a {method} client trains "
            "a model of its own (client.personalization.method)",
        )  # fmt: skip
    if s.privacy.noise_multiplier > 0:
        refuse(
            "server.selection", s.selection,
            "DP accounting assumes uniform (or Poisson) sampling of clients; use server.selection: uniform",
        )  # fmt: skip


def _check_trace(y: SystemConfig) -> None:
    """A trace replaces the parametric settings it measures; its settings need a trace."""
    t = y.trace
    if t.capacity is not None:
        for key in ("speed", "speed_sigma"):
            if getattr(y, key) != getattr(SystemConfig, key):
                refuse(
                    f"client.system.{key}", getattr(y, key),
                    "client.system.trace.capacity gives each client its speed (leave speed, speed_sigma out)",
                )  # fmt: skip
    elif t.backward_factor != TraceConfig.backward_factor:
        refuse(
            "client.system.trace.backward_factor", t.backward_factor,
            "it scales a capacity trace's compute times; set client.system.trace.capacity",
        )  # fmt: skip
    if t.availability is not None and y.availability != SystemConfig.availability:
        refuse(
            "client.system.availability", y.availability,
            "client.system.trace.availability says when each client is online (leave availability out)",
        )  # fmt: skip
    if t.capacity is None and t.availability is None and t.mapping != TraceConfig.mapping:
        refuse(
            "client.system.trace.mapping", t.mapping, "it maps trace profiles to clients; set a trace file"
        )
