"""Personalization: what a client keeps for itself between rounds, and how it trains it.

- FedPer (Arivazhagan et al. 2019, arXiv:1912.00818): the ``personal`` entries
  (by default the output layer, the "head") never leave the client. It trains
  the whole model from the global body and its own head; only the body's change
  is sent, and the head it ends with is its state.
- FedRep (Collins et al. 2021, arXiv:2102.07078, Algorithm 1): as FedPer, but
  local training alternates: ``head_epochs`` passes on the head with the body
  frozen, then ``epochs`` passes on the body with the head frozen.
- FedBN (Li et al. 2021, arXiv:2102.07623): FedPer with the batch-norm layers as
  the personal entries.
- Ditto (Li et al. 2021, arXiv:2012.04221, Algorithm 1): the global model trains
  as in FedAvg; each client also keeps a whole personal model v, trained for
  ``ditto_epochs`` passes on F_i(v) + λ/2 ||v - w||², w the round's global model.

A client that never trained has no state: its personal model is the global one.
Its state lives on the server's side (``ServerState.client_states``), goes to
whichever worker trains it, and into checkpoints, like SCAFFOLD's control
variates; only clients that took part hold any.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from clients.personalization_methods import PERSONALIZATION_METHODS
from clients.training import ClientResult, LocalTrainingConfig, train_client


@dataclass(frozen=True)
class PersonalPlan:
    """method: one of PERSONALIZATION_METHODS but "none"; personal: (n,) bool, the entries
    a client keeps (FedPer, FedRep, FedBN; None for Ditto, whose personal model is whole)."""

    method: str
    personal: np.ndarray | None = None
    head_epochs: int = 1
    ditto_lambda: float = 0.1
    ditto_epochs: int = 1

    def __post_init__(self) -> None:
        if self.method not in PERSONALIZATION_METHODS[1:]:
            raise ValueError(f"personalization method must be one of {PERSONALIZATION_METHODS[1:]}")
        if (self.personal is None) != (self.method == "ditto"):
            raise ValueError("FedPer, FedRep and FedBN need the personal entries; Ditto takes none")

    @property
    def kept_bytes(self) -> int:
        """Bytes of a dense update that stay on the client."""
        return 0 if self.personal is None else 4 * int(self.personal.sum())

    def personal_model(self, global_params: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
        """The client's own model: the global one with what it keeps (or the global one
        when it has no state yet)."""
        mine = state.get("personal")
        if mine is None:
            return global_params
        if self.personal is None:
            return mine
        model = np.array(global_params, copy=True)
        model[self.personal] = mine
        return model


def train_personalized(
    plan: PersonalPlan,
    args: tuple,
    cfg: LocalTrainingConfig,
    state: dict[str, np.ndarray],
    personal_rng: np.random.Generator,
    **extra,
) -> tuple[ClientResult, dict[str, np.ndarray]]:
    """One client's round under ``plan``: (its result, whose update carries only what is
    shared, and its new personal state). ``args``: ``train_client``'s positional
    arguments (model, global_params, x, y, shard, cfg, rng, client_id); ``extra``: its
    keyword arguments (mask, correction)."""
    model, global_params, x, y, shard, _, rng, client_id = args
    if plan.method == "ditto":
        result = train_client(*args, **extra)
        start = plan.personal_model(global_params, state)
        personal_cfg = dataclasses.replace(cfg, epochs=plan.ditto_epochs, prox_mu=plan.ditto_lambda)
        mine = train_client(
            model, start, x, y, shard, personal_cfg, personal_rng, client_id,
            anchor=global_params, keep=np.ones(global_params.size, bool), mask=extra.get("mask"),
        )  # fmt: skip
        return result, {"personal": mine.kept}
    start = plan.personal_model(global_params, state)
    if plan.method == "fedrep":
        head_cfg = dataclasses.replace(cfg, epochs=plan.head_epochs)
        head = train_client(
            model, start, x, y, shard, head_cfg, personal_rng, client_id,
            trainable=plan.personal, keep=plan.personal, mask=extra.get("mask"),
        )  # fmt: skip
        start = np.array(start, copy=True)
        start[plan.personal] = head.kept
        result = train_client(
            model, start, x, y, shard, cfg, rng, client_id, trainable=~plan.personal, **extra
        )
        kept = head.kept
    else:  # fedper, fedbn: everything trains together
        result = train_client(model, start, x, y, shard, cfg, rng, client_id, keep=plan.personal, **extra)
        kept = result.kept
    update = np.array(result.update, copy=True)
    update[plan.personal] = 0.0  # the head's change stays on the client
    return dataclasses.replace(result, update=update, kept=None), {"personal": kept}


def finetuned(
    args: tuple, cfg: LocalTrainingConfig, steps: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """The model after ``steps`` local SGD steps (the client's optimiser settings, no
    proximal term) on its own training rows from the start point in ``args``
    (``train_client``'s positional arguments); (n,) float32."""
    model, start, x, y, shard, _, rng, client_id = args
    per_epoch = max(1, -(-len(shard) // cfg.batch_size))
    tune_cfg = dataclasses.replace(cfg, epochs=-(-steps // per_epoch), prox_mu=0.0)
    keep = np.ones(start.size, bool)
    result = train_client(
        model, start, x, y, shard, tune_cfg, rng, client_id, mask=mask, keep=keep, max_steps=steps
    )
    return result.kept
