"""The personalization methods by name (client.personalization.method), apart from
clients/personalization.py, which implements them, so that config validation reads
them without importing torch."""

from __future__ import annotations

PERSONALIZATION_METHODS = ("none", "fedper", "fedrep", "fedbn", "ditto")
