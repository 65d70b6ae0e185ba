"""The client section's rules: the local optimiser, epochs and batches, FedProx, local
gradient clipping and FedSGD's local steps, SCAFFOLD, and system heterogeneity
(client.system). Personalization has its own module."""

from __future__ import annotations

from server.system import active_count
from simulator.config.rules import refuse, require
from simulator.config.schema import Config, SystemConfig, selected_per_round
from simulator.config.yaml_input import show


def check_training(cfg: Config) -> None:
    c = cfg.client
    require(c.lr > 0, "client.lr", c.lr, "> 0")
    require(0 <= c.momentum < 1, "client.momentum", c.momentum, "in [0, 1)")
    require(c.weight_decay >= 0, "client.weight_decay", c.weight_decay, ">= 0")
    require(c.epochs >= 1, "client.epochs", c.epochs, ">= 1")
    require(c.batch_size >= 1, "client.batch_size", c.batch_size, ">= 1")


def check_local_steps(cfg: Config) -> None:
    """What acts on each local step, then the simulated system's settings."""
    c = cfg.client
    require(c.prox_mu >= 0, "client.prox_mu", c.prox_mu, ">= 0")
    require(
        c.max_grad_norm is None or c.max_grad_norm > 0, "client.max_grad_norm", c.max_grad_norm, "null or > 0"
    )
    require(c.local_steps is None or c.local_steps >= 1, "client.local_steps", c.local_steps, "null or >= 1")
    _check_system(c.system)


def _check_system(y: SystemConfig) -> None:
    require(y.speed > 0, "client.system.speed", y.speed, "> 0")
    require(0 <= y.speed_sigma <= 20, "client.system.speed_sigma", y.speed_sigma, "in [0, 20]")
    require(0 < y.availability <= 1, "client.system.availability", y.availability, "in (0, 1]")
    require(0 <= y.dropout < 1, "client.system.dropout", y.dropout, "in [0, 1)")
    require(y.deadline is None or y.deadline > 0, "client.system.deadline", y.deadline, "null or > 0")
    # Beyond a million times the round's clients, every online client is selected anyway.
    require(0 <= y.over_selection <= 1e6, "client.system.over_selection", y.over_selection, "in [0, 1e6]")
    require(0 <= y.stragglers < 1, "client.system.stragglers", y.stragglers, "in [0, 1)")


def check_combinations(cfg: Config) -> None:
    """SCAFFOLD's and FedSGD's needs, and adam's missing momentum."""
    c, s = cfg.client, cfg.server
    if c.algorithm == "scaffold":
        if s.update != "weights":
            refuse("client.algorithm", "scaffold", "SCAFFOLD needs server.update: weights")
        if c.optimizer != "sgd" or c.momentum:
            refuse(
                "client.algorithm",
                "scaffold",
                "option II's control variate assumes plain local SGD (optimizer sgd, momentum 0)",
            )
    if s.update == "weights" and c.local_steps is not None:
        refuse(
            "client.local_steps",
            c.local_steps,
            "it sets FedSGD's batches (server.update: gradients); local training runs client.epochs passes",
        )
    if s.update == "gradients":
        for key, off in (("prox_mu", 0.0), ("max_grad_norm", None)):
            if getattr(c, key) != off:
                refuse(
                    f"client.{key}",
                    getattr(c, key),
                    "FedSGD (server.update: gradients) sends the gradient at the global model: "
                    "there are no local steps for it to act on",
                )
    if c.optimizer == "adam" and c.momentum:
        refuse("client.momentum", c.momentum, "the local adam optimiser has no momentum setting; set it to 0")
    _check_partial_work(cfg)
    _check_dropped_stragglers(cfg)


# Personalization methods whose local training is more than client.epochs plain passes.
SEVERAL_PASSES = ("fedrep", "ditto")


def _check_partial_work(cfg: Config) -> None:
    """Stragglers and partial work cut a client's local epochs and steps: they need some."""
    c, y = cfg.client, cfg.client.system
    if y.drop_stragglers and not y.stragglers:
        refuse("client.system.drop_stragglers", True, "it drops stragglers; set client.system.stragglers > 0")
    if y.partial_work and y.deadline is None:
        refuse(
            "client.system.partial_work", True,
            "it keeps the steps a client finished by client.system.deadline; set a deadline",
        )  # fmt: skip
    for key, value in (("stragglers", y.stragglers), ("partial_work", y.partial_work)):
        if not value:
            continue
        if cfg.server.update == "gradients":
            refuse(
                f"client.system.{key}", value,
                "FedSGD (server.update: gradients) sends one gradient: no local epochs or steps to cut",
            )  # fmt: skip
        if c.personalization.method in SEVERAL_PASSES:
            refuse(
                f"client.system.{key}", value,
                f"client.personalization.method: {c.personalization.method} trains several passes a round; "
                "partial work is defined for plain local epochs (fedavg, fedprox, scaffold, fedper, fedbn)",
            )  # fmt: skip
    if y.stragglers and c.epochs < 2:
        refuse(
            "client.system.stragglers", y.stragglers,
            f"a straggler trains 1..E-1 local epochs (FedProx's reference code): needs client.epochs >= 2, "
            f"got {c.epochs}",
        )  # fmt: skip


def _check_dropped_stragglers(cfg: Config) -> None:
    """Dropping stragglers must leave a round someone to train: of its selected clients,
    round(selected x (1 - stragglers)) stay active (FedProx's reference count)."""
    y = cfg.client.system
    if not y.drop_stragglers:
        return
    selected = selected_per_round(cfg)
    if active_count(selected, y.stragglers) == 0:
        clients = f"server.clients_per_round={show(cfg.server.clients_per_round)}"
        if y.over_selection:
            clients += f" with client.system.over_selection={y.over_selection:g}"
        refuse(
            "client.system.stragglers", y.stragglers,
            f"with client.system.drop_stragglers: true every client of a round would be dropped: "
            f"round({selected} x (1 - {y.stragglers:g})) = 0 of its {selected} selected ({clients}) stay "
            "active and the model never trains; lower the share, or keep their partial work "
            "(drop_stragglers: false)",
        )  # fmt: skip
