"""Reading YAML that a user (or anyone) wrote: configs and --set values.

PyYAML's safe loader runs no code, but it will still wait forever on a FIFO,
read /dev/zero until memory runs out, expand an alias bomb ("billion laughs")
into exponentially large structures for whatever walks them next, recurse
until RecursionError on deep nesting, raise ValueError on a 5,000-digit
integer and silently keep the last of two equal keys. Here:

- only a regular file of at most MAX_FILE_BYTES is read;
- the event stream is scanned first (PyYAML's parser is iterative): nesting
  deeper than MAX_DEPTH or more than MAX_NODES nodes once aliases are
  expanded is refused before anything is built;
- a mapping with a repeated key is refused, naming both lines;
- integers longer than MAX_INT_DIGITS digits are refused;
- numbers follow YAML 1.2: ``1e-3`` and ``1e4`` are floats (YAML 1.1 read
  them as strings).

Every failure is one ConfigError naming the source and, where known, the line.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from clients.errors import ConfigError

MAX_FILE_BYTES = 1 << 20  # a config is a few kB
MAX_DEPTH = 32  # sections nest three deep; lists of lists one more
MAX_NODES = 100_000  # after expanding aliases; a full config has ~150
MAX_INT_DIGITS = 30

# YAML 1.2 core schema floats: an exponent needs no dot (1e-3, 1E4, -2.5e+3).
_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2 floats, refused duplicate keys and bounded integers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(
                    f"line {line}: key {show(key)} appears twice in one mapping (first on line "
                    f"{seen[key]}); keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(ch.isdigit() for ch in node.value)
        if digits > MAX_INT_DIGITS:
            raise ConfigError(
                f"line {node.start_mark.line + 1}: an integer of {digits} digits; no setting takes one "
                f"of more than {MAX_INT_DIGITS}"
            )
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def read_text(path: Path, what: str = "config file") -> str:
    """The text of a regular file of at most MAX_FILE_BYTES; a FIFO, a device, a folder
    or a larger file is refused without reading it."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file")
    if info.st_size > MAX_FILE_BYTES:
        raise ConfigError(f"{what} {path} is {info.st_size} bytes; at most {MAX_FILE_BYTES} are read")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # it may have grown since the stat
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{what} {path} is over {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load(text: str, source: str) -> Any:
    """The YAML document in ``text``; ``source`` names it in errors (a path, ``--set k=v``)."""
    try:
        _check_shape(text)
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: malformed YAML{where}: {one_line(problem)}") from None


def _check_shape(text: str) -> None:
    """Refuse deep nesting and alias bombs from the event stream, before building anything."""
    depth, nodes = 0, 0
    sizes: dict[str, int] = {}  # anchor -> nodes it expands to
    open_anchors: list[tuple[str | None, int]] = []  # per open collection: (anchor, nodes before it)
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                line = event.start_mark.line + 1
                raise ConfigError(f"line {line}: alias *{one_line(event.anchor, 60)} before its anchor")
            nodes += sizes[event.anchor]
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"line {event.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
            open_anchors.append((event.anchor, nodes))
            nodes += 1
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            anchor, before = open_anchors.pop()
            if anchor is not None:
                sizes[anchor] = nodes - before
        elif isinstance(event, yaml.ScalarEvent):
            nodes += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        if nodes > MAX_NODES:
            raise ConfigError(
                f"more than {MAX_NODES} values once aliases are expanded (an alias bomb?); "
                "a config has a few hundred"
            )


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to about ``limit`` characters: safe to put in an error."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` with line breaks escaped and cut to ``limit`` characters."""
    flat = text.replace("\r", "\\r").replace("\n", "\\n")
    return flat if len(flat) <= limit else f"{flat[: limit - 1]}…"
