"""Personalization's rules (client.personalization): its ranges, the keys each method
reads, what a method needs of the run, and the layers fedper / fedrep / fedbn keep.

A module model's layers are known only once its code has run, so its checks
(``module_personal_entries``) run when the run is built: simulator/config/build.py
calls them with the built model spec; ``fedsim validate`` without --data cannot.
"""

from __future__ import annotations

import numpy as np

from clients.errors import ConfigError
from clients.models.spec import MODULE_MODEL, ModelSpec
from simulator.config.rules import require
from simulator.config.rules.model import layer_spec
from simulator.config.schema import Config, PersonalizationConfig
from simulator.config.yaml_input import show

# The personalization keys each method reads: set away from its default under another
# method, a key could not act, and is refused.
PERSONALIZATION_READERS = {
    "personal_layers": ("fedper", "fedrep"),
    "head_epochs": ("fedrep",),
    "ditto_lambda": ("ditto",),
    "ditto_epochs": ("ditto",),
}


def check_personalization(cfg: Config) -> None:
    c, s, p = cfg.client, cfg.server, cfg.client.personalization
    require(p.head_epochs >= 1, "client.personalization.head_epochs", p.head_epochs, ">= 1")
    require(0 <= p.ditto_lambda <= 1e6, "client.personalization.ditto_lambda", p.ditto_lambda, "in [0, 1e6]")
    require(
        p.ditto_epochs is None or p.ditto_epochs >= 1, "client.personalization.ditto_epochs", p.ditto_epochs,
        "null or >= 1",
    )  # fmt: skip
    for name, readers in PERSONALIZATION_READERS.items():
        value = getattr(p, name)
        if p.method not in readers and value != getattr(PersonalizationConfig(), name):
            raise ConfigError(
                f"client.personalization.{name}: {show(value)} is for {' and '.join(readers)}; "
                f"client.personalization.method {show(p.method)} does not read it"
            )
    if p.method == "none":
        return
    key = "client.personalization.method"
    if s.update != "weights":
        raise ConfigError(f"{key}: {show(p.method)} needs local training (server.update: weights)")
    if c.algorithm != "fedavg":
        raise ConfigError(
            f"{key}: {show(p.method)} with client.algorithm {show(c.algorithm)} is not supported"
        )
    if p.method in ("fedper", "fedrep", "fedbn") and cfg.model.name != MODULE_MODEL:
        # A module model's layers are known once its code runs: checked when the run is built.
        personal_layer_names(layer_spec(cfg.model), p.method, p.personal_layers)


def personal_layer_names(spec: ModelSpec, method: str, names: list[str]) -> list[str]:
    """The layers a fedper / fedrep / fedbn client keeps: every batch-norm layer (fedbn), or
    ``names`` (default: the output layer). Refused: a name that is not a layer of ``spec``
    with parameters, nothing to keep, or nothing left to share."""
    layers = spec.tracked_layers()
    key = "client.personalization.personal_layers"
    if method == "fedbn":
        names = [layer.name for layer in spec.layers if layer.kind == "batchnorm"]
        if not names:
            raise ConfigError(
                "client.personalization.method: 'fedbn' keeps the batch-norm layers local; the model has "
                "none (model.batchnorm: true puts one after each hidden layer of the mlp)"
            )
    elif not names:
        names = layers[-1:]
    if unknown := [n for n in names if n not in layers]:
        raise ConfigError(
            f"{key}: {show(unknown[0])} is not a layer of {spec.name}; its layers with parameters: "
            f"{', '.join(layers)}"
        )
    if set(names) == set(layers):
        hint = " (model.hidden: [] leaves the output layer alone)" if len(layers) == 1 else ""
        raise ConfigError(
            f"{key}: every layer would stay on the clients{hint}; nothing would be shared "
            "(use fewer layers, or method ditto)"
        )
    return names


def module_personal_entries(spec: ModelSpec, method: str, names: list[str]) -> np.ndarray:
    """(n,) bool: the parameters a client keeps on a module model: its batch-norm layers'
    (fedbn), or those under ``names`` (default: its last top-level module with parameters)."""
    keep = np.zeros(spec.layout().size, bool)
    if method == "fedbn":
        return _module_norm_entries(spec, keep)
    return _module_prefix_entries(spec, names or spec.tracked_layers()[-1:], keep)


def _module_prefix_entries(spec: ModelSpec, prefixes: list[str], keep: np.ndarray) -> np.ndarray:
    """fedper / fedrep on a module model: the parameters whose torch names start with one of
    ``prefixes`` (a submodule's dotted path, e.g. ``layer4.1`` or ``fc``, or a parameter's
    name); refused when one matches nothing, or when nothing would be shared."""
    key = "client.personalization.personal_layers"
    for prefix in prefixes:
        slots = [s for s in spec.layout() if s.name == prefix or s.name.startswith(prefix + ".")]
        if not slots:
            raise ConfigError(
                f"{key}: {show(prefix)} names no parameter of the model; its top-level modules with "
                f"parameters: {', '.join(spec.tracked_layers())}"
            )
        for slot in slots:
            keep[slot.offset : slot.stop] = True
    if keep.all():
        raise ConfigError(f"{key}: every parameter would stay on the clients; nothing would be shared")
    return keep


def _module_norm_entries(spec: ModelSpec, keep: np.ndarray) -> np.ndarray:
    """fedbn on a module model: the parameters of its batch-norm layers, wherever they sit."""
    norm = {name for layer in spec.layers for name in layer.args["norm_params"]}
    if not norm:
        raise ConfigError(
            "client.personalization.method: 'fedbn' keeps batch-norm layers local; the model has none"
        )
    for slot in spec.layout():
        keep[slot.offset : slot.stop] |= slot.name in norm
    return keep
