"""Simulated malicious clients, so robustness can be measured.

A seeded subset of ``fraction`` of the population is malicious for the whole
run. Kinds:
- ``sign_flip``: sends -scale x its honest update (Damaskinos et al. 2018's
  reversed-gradient attack; a large scale overwhelms a plain mean);
- ``scale``: sends scale x its honest update (model-replacement boosting,
  Bagdasaryan et al. 2020, arXiv:1807.00459);
- ``gaussian``: sends N(0, noise_std^2) noise instead of an update;
- ``label_flip``: trains honestly on labels y -> C - 1 - y (Fang et al. 2020,
  arXiv:1911.11815).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clients.streams import Stream

ATTACKS = ("none", "sign_flip", "scale", "gaussian", "label_flip")


@dataclass(frozen=True)
class Attack:
    """The run's attackers and what they do: ``kind`` (one of ATTACKS but none),
    ``scale`` (sign_flip / scale), ``noise_std`` (gaussian), ``malicious`` client ids."""

    kind: str
    scale: float
    noise_std: float
    malicious: frozenset[int]

    def flips_labels_of(self, client_id: int) -> bool:
        return self.kind == "label_flip" and client_id in self.malicious

    def sent_update(self, update: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """What a malicious client sends for its honest ``update`` (n,)."""
        return attack_update(update, self.kind, self.scale, self.noise_std, rng)


def malicious_clients(seed: int, num_clients: int, fraction: float) -> np.ndarray:
    """Sorted ids of the round(fraction x num_clients) malicious clients (fixed for the run)."""
    count = int(round(fraction * num_clients))
    rng = np.random.default_rng(np.random.SeedSequence([seed, Stream.ATTACKERS]))
    return np.sort(rng.choice(num_clients, size=count, replace=False)).astype(np.int64)


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """(m,) int labels -> C - 1 - y."""
    return (num_classes - 1 - y).astype(y.dtype)


def attack_update(update: np.ndarray, kind: str, scale: float, noise_std: float, rng: np.random.Generator):
    """What a malicious client sends instead of ``update`` (n,) (a new array)."""
    if kind == "sign_flip":
        return (-scale * update).astype(np.float32)
    if kind == "scale":
        return (scale * update).astype(np.float32)
    if kind == "gaussian":
        return rng.normal(0.0, noise_std, size=update.shape).astype(np.float32)
    return update  # label_flip acts on the training data, none sends the honest update
