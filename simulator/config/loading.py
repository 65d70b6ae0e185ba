"""The edge: YAML files, --set overrides and plain dicts become a typed, validated Config."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

from clients.errors import ConfigError
from simulator.config import yaml_input
from simulator.config.rules.personalization import PERSONALIZATION_READERS
from simulator.config.schema import (
    INT64_MAX,
    AsyncConfig,
    Config,
    PersonalizationConfig,
    ServerConfig,
    log,
    yaml_key,
)
from simulator.config.validation import validate
from simulator.config.yaml_input import show

# --- building typed objects from plain dicts -------------------------------


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``path``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if float in typing.get_args(tp) and isinstance(value, float) and not math.isfinite(value):
            raise _not_finite(path, value)  # a float, but not one any setting takes
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, path)
            except ConfigError:
                continue
        raise _bad_type(path, value, tp)
    if tp is type(None):
        if value is None:
            return None
        raise _bad_type(path, value, tp)
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) and k.isidentifier() for k in value):
            raise ConfigError(f"{path}: {show(value)} is not allowed; expected a mapping of keyword names")
        return dict(value)
    if typing.get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            raise _bad_type(path, value, tp)
        item_tp = typing.get_args(tp)[0]
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad_type(path, value, tp)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > INT64_MAX:
                raise ConfigError(f"{path}: {show(value)} is not allowed; no setting takes so large a number")
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) <= INT64_MAX:
            raise ConfigError(f"{path}: {show(value)} is not allowed; expected int (write {int(value)})")
        raise _bad_type(path, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _not_finite(path, value)
            return float(value)
        raise _bad_type(path, value, tp)
    if tp is str:
        if isinstance(value, str):
            if "\x00" in value:
                raise ConfigError(f"{path}: {show(value)} is not allowed; it holds a NUL character")
            return value
        raise _bad_type(path, value, tp)
    raise AssertionError(f"unsupported config type {tp!r} at {path}")


def _not_finite(path: str, value: float) -> ConfigError:
    return ConfigError(f"{path}: {show(value)} is not allowed; expected a finite number")


def _bad_type(path: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(f"{path}: {show(value)} is not allowed; expected {_type_name(tp)}")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{where}: expected a mapping of keys, got {show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {yaml_key(f): f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(_unknown_key_message(path, str(key), list(fields), prefix))
        name = fields[key].name
        tp = hints[name]
        if _is_dataclass_type(tp):
            kwargs[name] = _build(tp, value, f"{path}.")
        else:
            kwargs[name] = _coerce(value, tp, path)
            _check_choice(fields[key], kwargs[name], path)
            _check_bound(fields[key], kwargs[name], path)
    return cls(**kwargs)


def _check_bound(f: dataclasses.Field, value: Any, path: str) -> None:
    limit = f.metadata.get("at_most")
    values = value if isinstance(value, list) else [value]
    if limit is not None and any(isinstance(v, int) and v > limit for v in values):
        raise ConfigError(f"{path}: {show(value)} is not allowed; must be <= {limit:,}")


def _check_choice(f: dataclasses.Field, value: Any, path: str) -> None:
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{path}: {show(value)} is not allowed; choose one of {', '.join(choices)}{hint}")


def _unknown_key_message(path: str, key: str, valid: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
    return f"unknown key {show(path)}: {hint}valid keys here: {', '.join(valid)}"


# --- the edge: YAML files and --set overrides -------------------------------

# Overrides in the order they apply: "a.b=v" strings (v is YAML), (dotted key, value)
# pairs taken as they are, or a dict of such pairs. A list or tuple, not any Sequence: a
# bare str is a Sequence of one-letter strings and would pass as overrides.
Override = str | tuple[str, Any]
Overrides = list[Override] | tuple[Override, ...] | dict[str, Any]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=v`` into (["a", "b"], YAML-parsed v)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {show(text)}: expected KEY=VALUE with a dotted key, e.g. client.lr=0.05")
    keys = key.strip().split(".")
    if len(keys) > yaml_input.MAX_DEPTH or len(key) > 1000:
        raise ConfigError(f"--set {show(key)}: a dotted key of at most {yaml_input.MAX_DEPTH} parts, please")
    value = yaml_input.load(raw, f"--set {show(key.strip())}") if raw.strip() else None
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted overrides applied, in order: strings ``a.b=v``
    (v is YAML), ``(dotted key, value)`` pairs taken as they are, or a dict of the pairs."""
    items = (
        [(k.split("."), v) for k, v in overrides.items()]
        if isinstance(overrides, dict)
        else [parse_override(o) if isinstance(o, str) else (o[0].split("."), o[1]) for o in overrides]
    )
    merged = _deep_copy(raw)
    for keys, value in items:
        node = merged
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"--set {show('.'.join(keys))}: {show(where)} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return merged


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def read_yaml(path: Path, follow_links: bool = True) -> dict[str, Any]:
    """Read a config file into a dict; every failure is a ConfigError naming the file
    (see simulator.config.yaml_input for what is refused and why; a run directory's config.yaml
    is read with ``follow_links`` off)."""
    raw = yaml_input.load(yaml_input.read_text(Path(path), follow_links=follow_links), str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(raw).__name__}")
    return raw


def from_dict(raw: dict[str, Any]) -> Config:
    return validate(_build(Config, raw, ""))


def load_config(path: Path, overrides: Overrides | None = None) -> Config:
    """Read ``path``, apply overrides, and return the validated typed config."""
    raw = read_yaml(path)
    return from_dict(apply_overrides(raw, overrides or []))


def load_run_config(run_dir: Path, overrides: Overrides | None = None) -> Config:
    """A run directory's config.yaml as the run was trained, with ``overrides``.

    A run directory written before ``server.weighting`` existed was trained without
    client.prox_mu, client.max_grad_norm and client.local_steps (they never reached
    training then), without local adam momentum, and with DP's unweighted sums; it goes
    on as it was trained, and each value read differently is logged once."""
    raw, changes = as_trained(read_yaml(Path(run_dir) / "config.yaml", follow_links=False))
    for change in changes:
        log.warning("%s: written by an older fedsim; resuming as it trained: %s", run_dir, change)
    return from_dict(apply_overrides(raw, overrides or []))


def as_trained(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``raw`` (a run's config.yaml) with the values its training actually used, and what
    changed: keys that never acted are put back to their defaults (``inert_reset``), and
    configs from before server.weighting existed get what their training used."""
    raw, changes = inert_reset(raw)
    trained, weighting_changes = _as_trained_weighting(raw)
    return trained, changes + weighting_changes


def inert_reset(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``raw`` (a run's config, or the config a checkpoint recorded) with the keys an
    older fedsim accepted although they never acted -- server.async.* in a sync run,
    personalization keys their method does not read, server.beta2 under adagrad -- at
    their defaults, which ``validate`` now asks of them; and what changed."""
    server, client = raw.get("server"), raw.get("client")
    changes: list[str] = []
    sync = isinstance(server, dict) and server.get("mode", "sync") != "async"
    if sync and isinstance(server, dict) and isinstance(server.get("async"), dict):
        defaults = {yaml_key(f): f.default for f in dataclasses.fields(AsyncConfig)}
        server = {**server, "async": _defaults_for(server["async"], defaults, "server.async", changes)}
    if isinstance(server, dict) and server.get("optimizer") == "adagrad":  # FedAdagrad has no decay
        server = _defaults_for(server, {"beta2": ServerConfig.beta2}, "server", changes)
    personal = client.get("personalization") if isinstance(client, dict) else None
    if isinstance(personal, dict) and isinstance(client, dict):
        method = personal.get("method", "none")
        defaults = {
            name: getattr(PersonalizationConfig(), name)
            for name, readers in PERSONALIZATION_READERS.items() if method not in readers
        }  # fmt: skip
        where = "client.personalization"
        client = {**client, "personalization": _defaults_for(personal, defaults, where, changes)}
    return ({**raw, "server": server, "client": client} if changes else raw), changes


def _defaults_for(section: dict, defaults: dict[str, Any], where: str, changes: list[str]) -> dict:
    reset = {k: defaults.get(k, v) for k, v in section.items()}
    changes += [f"{where}.{k}: {defaults[k]!r} (the run's {v!r} never acted)" for k, v in section.items()
                if k in defaults and v != defaults[k]]  # fmt: skip
    return reset


def _as_trained_weighting(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    server, client = raw.get("server"), raw.get("client")
    if not isinstance(server, dict) or not isinstance(client, dict) or "weighting" in server:
        return raw, []
    trained = {**raw, "server": dict(server), "client": dict(client)}
    private = isinstance(server.get("privacy"), dict) and server["privacy"].get("noise_multiplier", 0) > 0
    trained["server"]["weighting"] = "uniform" if private else "samples"
    ignored = {"prox_mu": 0.0, "max_grad_norm": None, "local_steps": None}
    if client.get("optimizer") == "adam":
        ignored["momentum"] = 0.0
    changes = []
    for key, value in ignored.items():
        if key in client and client[key] != value:
            changes.append(f"client.{key}: {value!r} (the run's {client[key]!r} never reached its training)")
            trained["client"][key] = value
    return trained, changes


def dump_yaml(cfg: Config) -> str:
    """The resolved config, every default filled in, as YAML that loads back equal."""
    return yaml_input.dump(cfg.to_dict())
