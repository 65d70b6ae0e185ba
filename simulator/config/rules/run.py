"""The run's own keys: rounds, seed, and the name, which names the run directory."""

from __future__ import annotations

import re
import unicodedata

from simulator.config.rules import require
from simulator.config.schema import Config

RUN_NAME = re.compile(r"[^./\\\s\x00-\x1f\x7f][^/\\\x00-\x1f\x7f]{0,99}")


def check_run(cfg: Config) -> None:
    require(cfg.rounds >= 1, "rounds", cfg.rounds, ">= 1")
    require(cfg.seed >= 0, "seed", cfg.seed, ">= 0")
    require(
        _is_run_name(cfg.name),
        "name",
        cfg.name,
        "1-100 characters, no '/', '\\' or control characters, not starting with '.' or a space "
        "(it names the run directory)",
    )


def _is_run_name(name: str) -> bool:
    """One path component: no separators, no control, format or line-separator characters
    (bidi overrides, U+2028), not hidden, at most 100 characters and 200 bytes."""
    return (
        RUN_NAME.fullmatch(name) is not None
        and len(name.encode("utf-8", "surrogatepass")) <= 200
        and not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") for ch in name)
    )
