"""A run's settings as dotted keys: flattening a config, reading one setting, and what
differs from fedsim's defaults (the summary table's last column).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from simulator.config.schema import Config

# Settings every run sets to its own value: listing them would hide the interesting ones.
NOT_COMPARED = frozenset({"name", "runtime.out_dir"})
_ABSENT = object()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, keys in the tree's order."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@functools.cache
def default_settings() -> dict[str, Any]:
    """fedsim's defaults by dotted key; tuples become lists, as they come back from YAML."""
    flat = flatten(Config().to_dict())
    return {key: list(value) if isinstance(value, tuple) else value for key, value in flat.items()}


def config_differences(config: dict[str, Any]) -> list[str]:
    """``key=value`` for each setting in `config` whose value is not fedsim's default."""
    defaults = default_settings()
    return [
        f"{key}={value if isinstance(value, str) else json.dumps(value)}"
        for key, value in flatten(config).items()
        if key not in NOT_COMPARED and defaults.get(key, _ABSENT) != value
    ]


def config_value(config: dict[str, Any], dotted: str) -> Any:
    """config["a"]["b"] for "a.b"; the fedsim default when the run's config lacks it."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default_settings().get(dotted)
        node = node[part]
    return node
