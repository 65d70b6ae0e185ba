"""Numbers as people read them, for the terminal summary, the report's table and a
sweep's comparison: one formatter per kind of number, each place choosing its precision
and how it shows a missing value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# A missing value: the report's HTML table has always shown an em dash, the terminal
# summary and a sweep's text table a hyphen. They differ on purpose: one dash would change
# what `fedsim run`, `fedsim sweep` or report.html print.
MISSING = "—"
TEXT_MISSING = "-"
BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def shown(value: Any, text: Callable[[Any], str], missing: str = MISSING) -> str:
    """``text(value)`` for a number; ``missing`` for None; anything else (a value a user
    wrote into summary.json, say) as it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return missing if value is None else str(value)
    return text(value)


def plain(value: Any, missing: str = MISSING) -> str:
    return missing if value is None else str(value)


def fixed(value: float | None, digits: int = 4, missing: str = TEXT_MISSING) -> str:
    return missing if value is None else f"{value:.{digits}f}"


def percent(value: float, sign: str = "%") -> str:
    """A fraction in [0, 1] as a percentage with two decimals."""
    return f"{100.0 * value:.2f}{sign}"


def binary_size(count: float, decimals: int = 2, largest: str = "TiB") -> str:
    """Bytes in binary units, at most ``largest``: 512 B, 1.50 KiB, 3.20 MiB, ..."""
    size, i = float(count), 0
    while abs(size) >= 1024.0 and i < BINARY_UNITS.index(largest):
        size, i = size / 1024.0, i + 1
    return f"{int(count)} B" if i == 0 else f"{size:.{decimals}f} {BINARY_UNITS[i]}"


def seconds(value: float) -> str:
    return f"{value:.1f} s"


def loss(value: float) -> str:
    return f"{value:.4g} (loss)"
