"""A config's rules by feature, one module each: the value ranges that types cannot
express and the combinations a run cannot do. ``simulator.config.validation.validate``
runs them in a fixed order; here are the two forms their errors take."""

from __future__ import annotations

from typing import Any

from clients.errors import ConfigError
from simulator.config.yaml_input import show


def require(ok: bool, path: str, value: Any, allowed: str) -> None:
    """A value out of its range: one error naming the key, the value and what is allowed."""
    if not ok:
        raise ConfigError(f"{path}: {show(value)} is not allowed; must be {allowed}")


def refuse(key: str, value: Any, why: str) -> None:
    """A value that cannot go with another setting, which ``why`` names."""
    raise ConfigError(f"{key}: {show(value)} is not allowed here; {why}")
