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
from clients.training import ClientResult, ClientTask, LocalTrainingConfig, train_client


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
    task: ClientTask,
    state: dict[str, np.ndarray],
    personal_rng: np.random.Generator,
) -> tuple[ClientResult, dict[str, np.ndarray]]:
    """One client's round under ``plan``: (its result, whose update carries only what is
    shared, and its new personal state). ``task``: its pass from the global model as
    ``train_client`` takes it (``task.cfg``: its optimiser settings, which the personal
    passes vary); ``personal_rng``: their data order."""
    global_params = task.start
    if plan.method == "ditto":
        result = train_client(task)
        start = plan.personal_model(global_params, state)
        personal_cfg = dataclasses.replace(task.cfg, epochs=plan.ditto_epochs, prox_mu=plan.ditto_lambda)
        whole = np.ones(global_params.size, bool)
        own = _own_pass(task, start, personal_cfg, personal_rng, anchor=global_params, keep=whole)
        return result, {"personal": _kept_after(own)}
    personal = plan.personal
    assert personal is not None  # FedPer, FedRep and FedBN name their entries (PersonalPlan)
    start = plan.personal_model(global_params, state)
    if plan.method == "fedrep":
        head_cfg = dataclasses.replace(task.cfg, epochs=plan.head_epochs)
        own = _own_pass(task, start, head_cfg, personal_rng, trainable=personal, keep=personal)
        kept = _kept_after(own)
        start = np.array(start, copy=True)
        start[personal] = kept
        result = train_client(dataclasses.replace(task, start=start, trainable=~personal))
    else:  # fedper, fedbn: everything trains together
        result = train_client(dataclasses.replace(task, start=start, keep=personal))
        assert result.kept is not None  # asked for with keep
        kept = result.kept
    update = np.array(result.update, copy=True)
    update[personal] = 0.0  # the head's change stays on the client
    return dataclasses.replace(result, update=update, kept=None), {"personal": kept}


def _own_pass(
    task: ClientTask,
    start: np.ndarray,
    cfg: LocalTrainingConfig,
    rng: np.random.Generator,
    *,
    keep: np.ndarray,
    anchor: np.ndarray | None = None,
    trainable: np.ndarray | None = None,
) -> ClientTask:
    """A pass that trains the client's own model: the task's data and pruning mask, none
    of its other options (the global pass's augmentation and correction stay with it).
    ``keep``, ``anchor``, ``trainable``: as ``ClientTask``'s."""
    return ClientTask(
        model=task.model, start=start, x=task.x, y=task.y, shard=task.shard, cfg=cfg, rng=rng,
        client_id=task.client_id, mask=task.mask, anchor=anchor, keep=keep, trainable=trainable,
    )  # fmt: skip


def finetuned(task: ClientTask, steps: int) -> np.ndarray:
    """The model after ``steps`` local SGD steps (the client's optimiser settings, no
    proximal term) on its own training rows from the task's start point; (n,) float32."""
    per_epoch = max(1, -(-len(task.shard) // task.cfg.batch_size))
    tune_cfg = dataclasses.replace(task.cfg, epochs=-(-steps // per_epoch), prox_mu=0.0)
    keep = np.ones(task.start.size, bool)
    return _kept_after(dataclasses.replace(task, cfg=tune_cfg, keep=keep, max_steps=steps))


def _kept_after(task: ClientTask) -> np.ndarray:
    """The entries under ``task.keep`` once ``task`` has trained."""
    kept = train_client(task).kept
    assert kept is not None  # train_client returns them whenever keep is set
    return kept
