"""Clipping and differential privacy (DP-FedAvg): every rule DP sets, in sync and in
async runs. Clipping's ranges live here too: DP is what clips."""

from __future__ import annotations

from simulator.config.rules import refuse, require
from simulator.config.schema import Config, SystemConfig

# DP in an async run, one of the async refusals (simulator.config.rules.asynchronous).
ASYNC_REFUSAL = (
    "server.privacy.noise_multiplier", lambda c, s: s.privacy.noise_multiplier > 0,
    "DP accounting assumes synchronous rounds of sampled clients",
)  # fmt: skip


def check_values(cfg: Config) -> None:
    cl, p = cfg.server.clipping, cfg.server.privacy
    for key in ("norm", "initial_norm", "learning_rate"):
        require(getattr(cl, key) > 0, f"server.clipping.{key}", getattr(cl, key), "> 0")
    require(0 < cl.target_quantile < 1, "server.clipping.target_quantile", cl.target_quantile, "in (0, 1)")
    require(p.noise_multiplier >= 0, "server.privacy.noise_multiplier", p.noise_multiplier, ">= 0")
    require(0 < p.delta < 1, "server.privacy.delta", p.delta, "in (0, 1)")


def check_combinations(cfg: Config) -> None:
    """What DP's noise calibration and accounting assume of the rest of the run; Poisson
    sampling only with DP."""
    c, s = cfg.client, cfg.server
    if s.privacy.noise_multiplier > 0:
        if s.clipping.kind == "none":
            refuse(
                "server.privacy.noise_multiplier",
                s.privacy.noise_multiplier,
                "DP needs server.clipping.kind fixed or adaptive",
            )
        if s.aggregator != "mean":
            refuse("server.aggregator", s.aggregator, "DP-FedAvg's noise calibration needs the mean")
        if s.compression.method != "none":
            refuse(
                "server.compression.method",
                s.compression.method,
                "compressed updates (with error feedback) can exceed the clip norm DP relies on",
            )
        if s.clipping.kind == "adaptive":
            refuse(
                "server.clipping.kind",
                "adaptive",
                "the adaptive norm follows an un-noised quantile of client norms; use fixed clipping with DP",
            )
        if c.algorithm == "scaffold":
            refuse(
                "client.algorithm", "scaffold", "SCAFFOLD's control variates would reach the server un-noised"
            )
        if c.system != SystemConfig():
            refuse(
                "client.system", "(set)", "DP accounting assumes the configured sampling; drop client.system"
            )
        if s.weighting != "uniform":
            refuse(
                "server.weighting",
                s.weighting,
                "DP-FedAvg sums clipped updates unweighted over a fixed denominator; "
                "set server.weighting: uniform",
            )
    elif s.privacy.sampling == "poisson":
        refuse(
            "server.privacy.sampling",
            "poisson",
            "Poisson sampling is for DP runs (set server.privacy.noise_multiplier)",
        )
