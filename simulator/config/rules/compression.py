"""Update compression's rules (what DP refuses of it is with DP's rules)."""

from __future__ import annotations

from simulator.config.rules import require
from simulator.config.schema import Config


def check_compression(cfg: Config) -> None:
    z = cfg.server.compression
    require(0 < z.fraction <= 1, "server.compression.fraction", z.fraction, "in (0, 1]")
