"""When a run stops as diverged: rounds that learned nothing finite (NaN/Inf updates, an
overflowing server step, a non-finite test loss) or a finite test loss that exploded;
the round loop hands each round's row to a DivergenceWatch, which raises RunDiverged
naming the setting most likely at fault."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from clients.errors import RunDiverged
from simulator.config.schema import Config

HUGE_WEIGHT = 1e15  # no trained model has such weights: the server step must have blown them up


class LossGrowth:
    """Counts evaluations in a row whose test loss is finite and above ``factor`` times a
    scale: a run that explodes while staying finite (a NaN or Inf loss is DivergenceWatch's
    own cause). Rounds without an evaluation leave the count as it is. The scale is
    ``initial``, the initial model's loss, floored for a classifier of ``classes`` classes
    at chance level ln(classes), the cross-entropy of a uniform prediction: a pretrained
    model may start at 0.005, and a healthy fine-tune of it sit above 100 x that. None
    (regression): the initial loss alone, as a regression loss has no chance level; its
    scale is the targets'."""

    def __init__(self, factor: float, evals: int, initial: float, classes: int | None = None):
        self.factor, self.evals, self.initial, self.classes = factor, evals, initial, classes
        chance = None if classes is None else math.log(max(classes, 1))
        self.scale = initial if chance is None else max(initial, chance)
        self.streak = 0
        self.loss = math.nan  # the last evaluated loss

    def count(self, loss: float | None) -> bool:
        """Count an evaluation's ``loss`` (None: not evaluated); whether the run diverged."""
        if loss is not None:
            grown = math.isfinite(loss) and loss > self.factor * self.scale
            self.streak, self.loss = (self.streak + 1 if grown else 0), loss
        return self.streak >= self.evals

    def describe(self) -> str:
        scale = f"the initial model's {self.initial:.4g}"
        if self.scale != self.initial:
            scale = f"chance level ln({self.classes})={self.scale:.4g} ({scale} is below it)"
        return (
            f"the test loss {self.loss:.4g} stayed above server.stop_after_loss_growth={self.factor:g} x "
            f"{scale} for {self.streak} evaluations in a row"
        )


class DivergenceWatch:
    """Stops a run that has learned nothing finite for ``server.stop_after_nonfinite_rounds``
    rounds in a row, rather than let it report 'completed' with a model that went nowhere.
    A round counts when every update, or more than ``server.stop_after_rejected_share`` of
    them, was NaN/Inf, when the server step overflowed, or when the test loss was not
    finite; a non-finite test loss stands until the next evaluation says otherwise, so
    rounds between evaluations (server.eval_every > 1) count too. Given ``initial_loss``,
    which measures the initial model's test loss, it also stops a run whose finite test
    loss grew past ``server.stop_after_loss_growth`` times it, or times chance level for a
    classifier of ``classes`` classes (None: regression) where that is higher (LossGrowth);
    it is measured at the first evaluation, so that a loss that fails fails in the clients'
    first round as without the rule. A loss that is not > 0 gives no scale to grow from:
    the rule is off."""

    def __init__(
        self, cfg: Config, initial_loss: Callable[[], float] | None = None, classes: int | None = None
    ):
        self.cfg = cfg
        self.limit = cfg.server.stop_after_nonfinite_rounds
        self.streak = 0
        self.loss_cause: str | None = None  # the last evaluation's, while its loss was not finite
        self.initial_loss = initial_loss if cfg.server.stop_after_loss_growth else None
        self.classes = classes
        self.growth: LossGrowth | None = None

    def replay(self, rows: list[dict[str, Any]]) -> None:
        """Count the loss growth of the rows a resumed run already has, as the run counted it."""
        for row in rows:
            self.grown(row.get("test_loss"))

    def grown(self, loss: float | None) -> bool:
        """Count an evaluation's test ``loss`` (None: not evaluated) towards LossGrowth;
        whether it stops the run."""
        s = self.cfg.server
        if loss is not None and self.initial_loss is not None:  # measured once
            initial, self.initial_loss = self.initial_loss(), None
            if s.stop_after_loss_growth and math.isfinite(initial) and initial > 0:
                self.growth = LossGrowth(
                    s.stop_after_loss_growth, s.stop_after_loss_growth_evals, initial, self.classes
                )
        return self.growth is not None and self.growth.count(loss)

    def check(self, row: dict[str, Any], params: np.ndarray) -> None:
        cause = self.cause(row, params)
        self.streak = self.streak + 1 if cause else 0
        if cause and self.limit and self.streak >= self.limit:
            raise RunDiverged(
                f"diverged at round {row['round']}: {cause} ({self.streak} rounds in a row); "
                "the run directory keeps the last finite model"
            )
        if self.grown(row.get("test_loss")):
            assert self.growth is not None  # grown only with a LossGrowth
            raise RunDiverged(
                f"diverged at round {row['round']}: {self.growth.describe()} (likely {self.likely_cause()}); "
                "the run directory keeps its last model"
            )

    def likely_cause(self) -> str:
        """The settings that most likely blew the model up: simulated attackers that the
        aggregator follows, a client's step or the server's."""
        s = self.cfg.server
        steps = f"{self.local_step_cause()} or {self.server_step_cause()}"
        if s.attack.kind == "none":
            return steps
        return f"server.attack.kind={s.attack.kind} with server.aggregator={s.aggregator}, or {steps}"

    def cause(self, row: dict[str, Any], params: np.ndarray) -> str | None:
        """Why this round learned nothing finite, naming the setting most likely at fault."""
        s = self.cfg.server
        server_step = self.server_step_cause()
        local_step = self.local_step_cause()
        loss = row.get("test_loss")
        if loss is not None:
            finite = math.isfinite(loss)
            self.loss_cause = (
                None if finite else f"the model's test loss is {loss} (likely {self.likely_cause()})"
            )
        if row.get("rejected_aggregate"):
            return f"the server step overflowed (likely {server_step})"
        if row["num_clients"] and row["rejected_updates"] == row["num_clients"]:
            largest = float(np.abs(params).max()) if params.size else 0.0
            if largest > HUGE_WEIGHT:  # the global model blew up: no local step could stay finite
                weights = f"weights of {largest:.3g}"
                return f"every client's update was NaN or Inf, from {weights} (likely {server_step})"
            return f"every client's update was NaN or Inf (likely {local_step})"
        clients, rejected = row["num_clients"], row["rejected_updates"]
        if clients and rejected > s.stop_after_rejected_share * clients:
            share = f"more than server.stop_after_rejected_share={s.stop_after_rejected_share:g}"
            return f"{rejected} of {clients} updates were NaN or Inf, {share} (likely {local_step})"
        return self.loss_cause

    def server_step_cause(self) -> str:
        s = self.cfg.server
        return f"server.lr={s.lr:g} too large for {s.optimizer}"

    def local_step_cause(self) -> str:
        """The setting most likely to blow up a client's local step, as 'KEY=VALUE too
        large...'. An SGD step scales the weights by (1 - lr * weight_decay) and the drift
        from the global model by (1 - lr * prox_mu); with heavy-ball momentum m the
        recurrence grows every step once lr times either is >= 2 (1 + m), whatever the
        learning rate alone. Adam normalises the whole gradient, decay and proximal pull
        included, so its step stays about lr long and only lr is to blame."""
        c, s = self.cfg.client, self.cfg.server
        if s.update != "weights":  # FedSGD: the clients take no step; the server's lr does
            return f"server.lr={s.lr:g} too large"
        limit = 2 * (1 + c.momentum)
        blamed = [
            f"client.{key}={value:g} too large for client.lr={c.lr:g}: lr x {key} = "
            f"{c.lr * value:.3g} >= {limit:g} grows the {grown} every local step"
            for key, value, grown in (
                ("weight_decay", c.weight_decay, "weights"),
                ("prox_mu", c.prox_mu, "distance to the global model"),
            )
            if c.optimizer == "sgd" and c.lr * value >= limit
        ]
        return " or ".join(blamed) or f"client.lr={c.lr:g} too large"
