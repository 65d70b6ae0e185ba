"""MkDocs hook: builds the configuration reference page from the schema, so the table
cannot fall behind the code. A key without a help sentence, or a reference page that
lost its marker, stops the build."""

from __future__ import annotations

from typing import Any

from mkdocs.exceptions import PluginError

from simulator.config.reference import UndocumentedKeyError, reference_markdown

REFERENCE_PAGE = "configuration/reference.md"
MARKER = "<!-- generated: config reference -->"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != REFERENCE_PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{REFERENCE_PAGE} lost its marker {MARKER!r}: the generated table has no place")
    try:
        return markdown.replace(MARKER, reference_markdown())
    except UndocumentedKeyError as e:
        raise PluginError(str(e)) from e
