"""The HTML shell of fedsim's self-contained pages (a run report, a sweep's comparison):
one document with its style sheet inline and its charts embedded as PNG data, so the
file can be mailed or opened from anywhere."""

from __future__ import annotations

import base64
import html

BASE_CSS = """body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f2f2f2}img{max-width:100%}"""


def document(title: str, css: str, body: str) -> str:
    """A whole page: ``title`` is text (escaped here), ``body`` is HTML."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{css}\n</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def png_image(png: bytes, alt: str) -> str:
    """An ``<img>`` that carries its PNG inline; ``alt`` is text (escaped here)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
