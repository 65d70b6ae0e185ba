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
- integers longer than MAX_INT_DIGITS characters are refused;
- numbers follow YAML 1.2's core schema: ``1e-3`` is a float (YAML 1.1 read a
  string), ``0123`` is 123 (not octal 83), ``1:30`` and ``2020-01-01`` are
  strings (not 90 and a date); booleans keep YAML 1.1's yes/no/on/off;
- a value YAML cannot build (``!!int abc``) is an error, not a traceback.

Every failure is one ConfigError naming the source and, where known, the line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Any

import yaml

from clients.errors import ConfigError

MAX_FILE_BYTES = 1 << 20  # a config is a few kB
MAX_DEPTH = 32  # sections nest three deep; lists of lists one more
MAX_NODES = 100_000  # after expanding aliases; a full config has ~150
MAX_CHARS = 4 << 20  # characters of all scalars after expanding aliases
MAX_INT_DIGITS = 30

# YAML 1.2's core schema for numbers (PyYAML implements YAML 1.1, where 0123 is octal 83,
# 1:30 is 90, 2020-01-01 is a date and 1e-3 a string). Booleans keep 1.1's yes/no/on/off.
_INT_12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_YAML11_ONLY = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")


def _core_schema_resolvers() -> dict:
    """PyYAML's implicit resolvers without YAML 1.1's numbers and timestamps, plus 1.2's."""
    resolvers = {
        first: [(tag, regexp) for tag, regexp in entries if tag not in _YAML11_ONLY]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for first in "-+0123456789.":
        resolvers.setdefault(first, [])
        if first not in ".":
            resolvers[first].append(("tag:yaml.org,2002:int", _INT_12))
        resolvers[first].append(("tag:yaml.org,2002:float", _FLOAT_12))
    return resolvers


class _Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2 numbers, refused duplicate keys and bounded integers."""

    yaml_implicit_resolvers = _core_schema_resolvers()

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
        """YAML 1.2 integers: decimal (leading zeros too), 0o octal, 0x hex; bounded in length."""
        text = str(self.construct_scalar(node))
        if len(text) > MAX_INT_DIGITS:
            raise ConfigError(
                f"line {node.start_mark.line + 1}: an integer of {len(text)} characters; no setting takes "
                f"one of more than {MAX_INT_DIGITS}"
            )
        sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.removeprefix("+"))
        base = {"0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
        return sign * int(digits[2:] if base != 10 else digits, base)


class _Dumper(yaml.SafeDumper):
    """Writes what _Loader reads back equal: a string that would resolve to a number under
    YAML 1.2 (``"1e3"``, ``"0o17"``) is quoted."""

    yaml_implicit_resolvers = _core_schema_resolvers()


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def flow_text(value: Any) -> str:
    """A config value on one line as a user writes it in YAML: true, null, 0.1, [32], {}
    (a one-line form for messages, names and tables; ``dump`` writes whole configs)."""
    return json.dumps(value) if isinstance(value, (bool, type(None), list, dict)) else str(value)


def read_text(path: Path, what: str = "config file", follow_links: bool = True) -> str:
    """The text of a regular file of at most MAX_FILE_BYTES; a FIFO, a device, a folder,
    a larger file or (``follow_links`` off: a run directory's) a link is refused without
    reading it. What is checked is the open descriptor, so nothing swapped in after the
    check is read."""
    no_follow = 0 if follow_links else os.O_NOFOLLOW
    try:  # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | no_follow)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links and os.path.islink(path):
            raise ConfigError(
                f"{what} {path} is a symbolic link; fedsim follows no links inside a run directory"
            ) from None
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{what} {path} is {info.st_size} bytes; at most {MAX_FILE_BYTES} are read")
        os.set_blocking(fd, True)
        try:
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
        raise ConfigError(f"{source}: malformed YAML{where}: {one_line(problem, 300)}") from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        # A scalar YAML cannot make into its (explicit) type: !!int abc, !!bool maybe, ...
        raise ConfigError(f"{source}: a value YAML cannot build: {one_line(str(exc), 200)}") from None


def _check_shape(text: str) -> None:
    """Refuse deep nesting and alias bombs (many nodes, or a long string repeated) from the
    event stream, before building anything."""
    depth, nodes, chars = 0, 0, 0
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, characters) it expands to
    open_anchors: list[tuple[str | None, int, int]] = []  # per open collection: anchor, counts before
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                line = event.start_mark.line + 1
                raise ConfigError(f"line {line}: alias *{one_line(event.anchor, 60)} before its anchor")
            nodes, chars = nodes + sizes[event.anchor][0], chars + sizes[event.anchor][1]
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(f"line {event.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
            open_anchors.append((event.anchor, nodes, chars))
            nodes += 1
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            anchor, nodes_before, chars_before = open_anchors.pop()
            if anchor is not None:
                sizes[anchor] = (nodes - nodes_before, chars - chars_before)
        elif isinstance(event, yaml.ScalarEvent):
            nodes, chars = nodes + 1, chars + len(event.value)
            if event.anchor is not None:
                sizes[event.anchor] = (1, len(event.value))
        if nodes > MAX_NODES or chars > MAX_CHARS:
            raise ConfigError(
                f"more than {MAX_NODES} values or {MAX_CHARS} characters once aliases are expanded "
                "(an alias bomb?); a config has a few hundred values"
            )


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = _SHORT.maxset = 6
_SHORT.maxlevel = 3


def show(value: Any, limit: int = 60) -> str:
    """A short ``repr(value)`` on one line: safe to put in an error whatever ``value`` is
    (a megabyte string, a list aliased 100,000 times, a 20,000-deep dict, a huge int)."""
    try:
        text = _SHORT.repr(value).replace("\n", "\\n")
    except (ValueError, RecursionError):  # an int past Python's 4,300-digit str limit
        text = f"<a {type(value).__name__} too large to print>"
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def one_line(text: str, limit: int = 2000) -> str:
    """``text`` with line breaks escaped and cut to ``limit`` characters."""
    flat = text.replace("\r", "\\r").replace("\n", "\\n")
    return flat if len(flat) <= limit else f"{flat[: limit - 1]}…"
