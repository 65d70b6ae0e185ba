"""The configuration reference, generated from the schema: one Markdown table row per
dotted key (key, type, default, allowed values, the field's help sentence), one table per
section. The docs site builds its reference page from this (docs/hooks.py), so the page
cannot fall behind the code, and a key without a help sentence stops the build.
Imports only the schema: no torch, no user code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from simulator.config.schema import Config, yaml_key
from simulator.config.yaml_input import flow_text


class UndocumentedKeyError(ValueError):
    """A config key whose field has no help sentence."""


@dataclass(frozen=True)
class ReferenceRow:
    """One documented config key, as the reference table shows it."""

    key: str
    type: str
    default: str
    allowed: str
    help: str


@dataclass(frozen=True)
class ReferenceSection:
    """A config section (``""`` for the top level), its help sentence and its keys."""

    key: str
    help: str
    rows: tuple[ReferenceRow, ...]


def reference_sections(root: type = Config) -> list[ReferenceSection]:
    """Every section of ``root``, depth first in declaration order, each with the rows of
    its own (non-section) keys. Raises UndocumentedKeyError for a field without help."""
    sections: list[ReferenceSection] = []
    _walk(root, "", "the run as a whole", sections)
    return sections


def _walk(cls: type, prefix: str, help_: str, out: list[ReferenceSection]) -> None:
    rows: list[ReferenceRow] = []
    nested: list[tuple[type, str, str]] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{yaml_key(f)}"
        text = _help(f, key)
        default = _default(f)
        if dataclasses.is_dataclass(default):
            nested.append((type(default), f"{key}.", text))
        else:
            rows.append(ReferenceRow(key, _type(f), flow_text(default), _allowed(f), text))
    # A section's own keys come before its subsections, so each table sits under its heading.
    out.append(ReferenceSection(prefix.rstrip("."), help_, tuple(rows)))
    for sub_cls, sub_prefix, sub_help in nested:
        _walk(sub_cls, sub_prefix, sub_help, out)


def _help(f: dataclasses.Field, key: str) -> str:
    text = str(f.metadata.get("help") or "").strip()
    if not text:
        raise UndocumentedKeyError(f"config key '{key}' has no help sentence in simulator/config/schema.py")
    return text


def _type(f: dataclasses.Field) -> str:
    """The field's annotation in YAML's words: ``int | None`` is ``int or null`` (a pipe
    would end a table cell)."""
    return str(f.type).replace(" | ", " or ").replace("None", "null")


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _allowed(f: dataclasses.Field) -> str:
    choices = f.metadata.get("choices")
    if choices:
        return ", ".join(f"`{c}`" for c in choices)
    at_most = f.metadata.get("at_most")
    if at_most is not None:
        return f"≤ {at_most:,}"
    return ""


def reference_markdown(root: type = Config) -> str:
    """The reference as Markdown: a heading and a table for each section."""
    parts: list[str] = []
    for section in reference_sections(root):
        if not section.rows:
            continue
        title = f"`{section.key}`" if section.key else "Top level"
        sentence = _cell(section.help)
        parts += [f"## {title}", "", f"{sentence[:1].upper()}{sentence[1:]}.", ""]
        parts += ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
        parts += [_table_row(row) for row in section.rows]
        parts.append("")
    return "\n".join(parts)


def _table_row(row: ReferenceRow) -> str:
    cells = (f"`{row.key}`", f"`{row.type}`", f"`{row.default}`", row.allowed, _cell(row.help))
    return "| " + " | ".join(cells) + " |"


def _cell(text: str) -> str:
    """Text made safe for one table cell: no pipe ends it, no newline breaks the row."""
    return " ".join(text.split()).replace("|", "\\|")
