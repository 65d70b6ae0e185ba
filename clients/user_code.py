"""A user's own code, named in a config by import path: ``package.module:callable``.

The config only names the code; ``check_target`` reads the name (no import, so
``fedsim validate`` without ``--data`` never runs user code) and ``resolve``
imports the module and returns the attribute when the run starts. Either is one
``ConfigError`` naming the key.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from clients.errors import ConfigError

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_target(target: str, key: str) -> tuple[str, str]:
    """(module, attribute path) of ``target`` = "package.module:callable", read without importing."""
    module, sep, attribute = target.partition(":")
    if not sep or not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(attribute):
        raise ConfigError(
            f"{key}: {target!r} is not an import path; write it as 'package.module:callable' "
            "(a module importable from the run's Python path, a colon, then the callable's name)"
        )
    return module, attribute


def resolve(target: str, key: str) -> Any:
    """Import ``target``'s module and return its callable; one error when it is not there."""
    module_name, attribute = check_target(target, key)
    try:
        value: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{key}: {target!r}: no module named {exc.name or module_name!r} on the Python path "
            "(run from the folder that holds it, or install it)"
        ) from exc
    except Exception as exc:  # the user's module raised while being imported
        raise ConfigError(
            f"{key}: {target!r}: importing {module_name} raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"{key}: {target!r}: {module_name} has no attribute {attribute!r}")
        value = getattr(value, part)
    if not callable(value):
        raise ConfigError(f"{key}: {target!r} is a {type(value).__name__}, not a callable")
    return value
