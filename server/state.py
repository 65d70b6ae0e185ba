"""Everything the server carries from round to round, and one round's server step.

State: the global parameters, the server optimiser's moments, the adaptive
clip norm, SCAFFOLD's server control variate, per-client state (SCAFFOLD's
c_i, error-feedback residuals) and the privacy accountant. All of it goes into
checkpoints as named arrays, so a resumed run continues bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.models.layout import Layout
from clients.protocol import ClientPlan, RoundInput
from clients.streams import Stream
from server.pipeline import Aggregation
from server.privacy import PrivacyAccountant
from server.pruning import PruningSchedule, build_mask, density, layer_densities, prunable, sparse_bytes


@dataclass(frozen=True)
class ServerParts:
    """What a server is made of besides its parameters, fixed for the run: the seed of its
    noise, the clients' plan, the aggregation, the optimiser, the clip norm (FixedClipNorm,
    AdaptiveClipNorm or None), the privacy accountant, the pruning schedule and the
    population size N (SCAFFOLD's c moves by |S|/N of the mean control change). The
    optimiser, clip norm and accountant carry state the server updates."""

    seed: int
    plan: ClientPlan
    aggregation: Aggregation
    optimizer: Any
    clipper: Any = None
    accountant: PrivacyAccountant | None = None
    pruning: PruningSchedule | None = None
    num_clients: int = 1


class ServerState:
    """The server's state and step. Built by ``simulator.config.build.build_server_state`` from
    the config; it reads no config itself, so what shapes a round is what it was given."""

    def __init__(
        self, params: np.ndarray, layout: Layout, parts: ServerParts, buffers: np.ndarray | None = None
    ):
        self.params = params
        # (m,) a module model's global buffers (float32; empty when it has none): averaged
        # from the clients' by samples under model.buffers average, else the initial ones.
        self.buffers = np.zeros(0, np.float32) if buffers is None else buffers
        self.layout = layout
        self.seed = parts.seed
        self.plan = parts.plan
        self.aggregation = parts.aggregation
        self.optimizer = parts.optimizer
        self.clipper = parts.clipper
        self.accountant = parts.accountant
        self.pruning = parts.pruning
        self.num_clients = parts.num_clients
        self.prunable = prunable(layout)
        self.mask: np.ndarray | None = None  # bool (n,), set by the first pruning step
        self.server_control = np.zeros_like(params) if self.plan.scaffold else None
        self.client_states: dict[int, dict[str, np.ndarray]] = {}

    def clip_norm(self) -> float | None:
        return None if self.clipper is None else self.clipper.norm

    def round_input(self, round_: int, client_ids) -> RoundInput:
        states = {int(c): self.client_states[int(c)] for c in client_ids if int(c) in self.client_states}
        buffers = self.buffers if self.buffers.size else None
        return RoundInput(
            round=round_, clip_norm=self.clip_norm(), server_control=self.server_control,
            client_states=states, mask=self.mask, buffers=buffers,
        )  # fmt: skip

    def step(self, round_: int, results: list) -> dict[str, Any]:
        """Aggregate, add noise, step the optimiser and update all state; returns metrics."""
        clip_norm = self.clip_norm()
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, round_, Stream.SERVER_NOISE]))
        try:
            aggregate, metrics = self.aggregation.combine(results, self.params.size, clip_norm, rng)
        except ValueError as exc:  # e.g. dropouts left too few updates for Krum this round
            aggregate, metrics = None, {"aggregation_skipped": str(exc)}
        if aggregate is not None:
            self._apply(aggregate, metrics)
        self._update_client_state(results)
        self._average_buffers(results)
        metrics.update(self._clip_metrics(results, clip_norm))
        if self.accountant is not None:
            metrics["epsilon"] = self.accountant.epsilon(round_)
        return metrics

    def _apply(self, aggregate: np.ndarray, metrics: dict[str, Any]) -> None:
        """One server-optimiser step; an aggregate or step that is not finite is not
        applied, and the optimiser's state is rolled back so it cannot poison later rounds."""
        saved = {k: np.array(v, copy=True) for k, v in self.optimizer.state().items()}
        pseudo_grad = aggregate if self.plan.update_kind == "gradients" else -aggregate
        stepped = self.optimizer.step(self.params, pseudo_grad)
        metrics["rejected_aggregate"] = not bool(np.isfinite(stepped).all())
        if metrics["rejected_aggregate"]:
            self.optimizer.load_state(saved)
        else:
            # Server momentum may still carry a pruned weight's past: the mask wins.
            self.params = stepped if self.mask is None else stepped * self.mask

    def keep_client_states(self, results: list) -> None:
        """Take the new per-client state the results bring back."""
        for r in results:
            self.client_states.update(r.new_states)

    def _update_client_state(self, results: list) -> None:
        self.keep_client_states(results)
        if self.server_control is not None:
            deltas = [r.control_delta_sum for r in results if r.control_delta_sum is not None]
            if deltas:
                # c <- c + |S|/N * mean_i(dc_i) = c + sum_i(dc_i) / N
                self.server_control = (
                    self.server_control + np.sum(deltas, axis=0) / self.num_clients
                ).astype(np.float32)

    def _average_buffers(self, results: list) -> None:
        """model.buffers average: the global buffers become the sample-weighted mean of the
        accepted clients' (group sums added in group order); kept when none was accepted."""
        sums = [r.buffer_sum for r in results if getattr(r, "buffer_sum", None) is not None]
        weight = sum(r.buffer_weight for r in results if getattr(r, "buffer_sum", None) is not None)
        if sums and weight > 0:
            self.buffers = (np.sum(sums, axis=0, dtype=np.float64) / weight).astype(np.float32)

    def _clip_metrics(self, results: list, clip_norm: float | None) -> dict[str, Any]:
        if not results:
            return {}
        norms = np.concatenate([r.norms for r in results])
        norms = norms[np.isfinite(norms)]
        if not len(norms):
            return {}
        out = {"update_norm_mean": float(norms.mean()), "update_norm_max": float(norms.max())}
        if clip_norm is not None:
            out["clip_norm"] = clip_norm
            out["clipped_fraction"] = float((norms > clip_norm).mean())
            self.clipper.update(norms)
        return out

    # --- pruning ---------------------------------------------------------------

    def pruning_target(self, round_: int) -> float | None:
        """The sparsity to prune to at the end of ``round_``, or None when no step is due."""
        return None if self.pruning is None else self.pruning.target(round_)

    def prune(self, scores: np.ndarray, sparsity: float) -> None:
        """Prune to ``sparsity``; weights pruned before stay pruned (they rank lowest)."""
        ranked = scores.astype(np.float64, copy=True)
        if self.mask is not None:
            ranked[~self.mask] = -1.0  # below every score (all are >= 0): pruned stays pruned
        assert self.pruning is not None  # only a run with a pruning schedule prunes
        self.mask = build_mask(ranked, self.prunable, sparsity, self.layout, self.pruning.scope)
        self.params = self.params * self.mask

    def pruning_metrics(self) -> dict[str, Any]:
        if self.mask is None:
            return {}
        return {
            "density": density(self.mask, self.prunable),
            "layer_density": layer_densities(self.mask, self.layout),
        }

    def trip_bytes(self) -> int:
        """Bytes one client's trip moves this round, the model down and its update up:
        what a device trace's bandwidth times (the same counts as bytes_down / bytes_up)."""
        return self.bytes_down(1) + self.upload_bytes()

    def upload_bytes(self) -> int:
        """Bytes one client's update takes up this round (as the workers will count them)."""
        return self.plan.planned_upload_bytes(self.params.size, self.buffers.size, self.mask)

    def bytes_down(self, clients: int) -> int:
        per_client = self.params.nbytes
        if self.mask is not None:  # a sender picks the cheaper encoding
            per_client = min(per_client, sparse_bytes(self.params, self.mask))
        return clients * per_client

    # --- checkpoints ---------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """Every piece of server state as named arrays (checkpoint tensors)."""
        out = {f"optimizer.{k}": v for k, v in self.optimizer.state().items()}
        if self.clipper is not None:
            out.update({f"clipper.{k}": np.asarray(v) for k, v in self.clipper.state().items()})
        if self.server_control is not None:
            out["server_control"] = self.server_control
        if self.mask is not None:
            out["mask"] = self.mask.astype(np.uint8)
        if self.buffers.size:
            out["buffers"] = self.buffers
        for cid, state in self.client_states.items():
            out.update({f"client.{cid}.{key}": value for key, value in state.items()})
        return out

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        def section(prefix: str) -> dict[str, np.ndarray]:
            return {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}

        self.optimizer.load_state(section("optimizer."))
        if self.clipper is not None:
            self.clipper.load_state(section("clipper."))
        if "server_control" in arrays:
            self.server_control = arrays["server_control"]
        if "mask" in arrays:
            self.mask = arrays["mask"].astype(bool)
        if "buffers" in arrays:
            self.buffers = arrays["buffers"]
        for key, value in section("client.").items():
            cid, name = key.split(".", 1)
            self.client_states.setdefault(int(cid), {})[name] = value
