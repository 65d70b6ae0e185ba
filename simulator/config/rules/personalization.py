"""Personalization's rules (client.personalization): its ranges, the keys each method
reads, what a method needs of the run, and the layers fedper / fedrep / fedbn keep."""

from __future__ import annotations

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
