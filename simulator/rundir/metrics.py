"""The run's logs: metrics.jsonl (one row per round, appended and never rewritten; a
damaged tail is moved aside, never lost) and clients.jsonl (one row per client
evaluation), and reading either back for a report."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clients.errors import FedsimError
from clients.files import open_regular
from simulator.config.yaml_input import show

log = logging.getLogger("fedsim")

MAX_ROW_BYTES = 1 << 20  # a round's metrics row is a few kB; a longer line is not fedsim's
# What every metrics row holds (DESIGN.md), and which values may be null.
ROW_INTEGERS = ("num_clients", "bytes_up", "bytes_down")
ROW_NUMBERS = ("seconds",)
ROW_OPTIONAL_NUMBERS = ("test_accuracy", "test_loss", "train_loss")


class MetricsLog:
    """Append-only metrics.jsonl: one JSON object per round, rounds 1, 2, 3, ... in order.

    Opening an existing log reads its longest valid beginning and changes nothing: a
    line that is not a complete row of the next round (not JSON, over MAX_ROW_BYTES,
    missing a field, a round out of order, duplicated or foreign) ends it. ``settle``
    (called by the first ``append``, or once the run knows it can go on) then moves
    those lines and all after them to ``metrics.jsonl.cut-N`` beside it, never lost, so
    nothing is appended after them; their rounds are re-run from a checkpoint. A last
    line a crash left without its newline is a torn write and is dropped."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self._ends: list[int] = []  # byte offset just after each row
        self._prefixes = [hashlib.sha256().hexdigest()]  # sha256 of the log up to each row
        self._digest = hashlib.sha256()
        self._beyond: str | None = None  # why the bytes after the rows must go ("" for a torn line)
        if os.path.lexists(path):
            self._read_valid_prefix()

    def last_round(self) -> int:
        return len(self.rows)

    def append(self, row: dict[str, Any]) -> None:
        if row["round"] != len(self.rows) + 1:
            raise FedsimError(f"{self.path}: round {row['round']} would follow round {len(self.rows)}")
        self.settle()
        self._add(row, _append_lines(self.path, [row]))

    def record(self, row: dict[str, Any]) -> None:
        """Append a round's row, or, for a round re-run on resume whose row the log
        already holds, check that row: one that differs from the re-run (beyond its
        wall-clock ``seconds``) was not written by this run, and is moved aside with
        all after it before the re-run's row is appended."""
        round_ = row["round"]
        if round_ <= len(self.rows):
            if _comparable(self.rows[round_ - 1]) == _comparable(row):
                return
            self.cut_after(round_ - 1, f"round {round_}'s row is not what re-running round {round_} gives")
        self.append(row)

    def prefix_digest(self, round_: int) -> str:
        """sha256 of the log's bytes up to the end of round ``round_``'s row."""
        if not 0 <= round_ <= len(self.rows):
            raise FedsimError(f"{self.path}: no row for round {round_} (the log ends at {len(self.rows)})")
        return self._prefixes[round_]

    def cut_after(self, round_: int, reason: str) -> None:
        """Drop the rows after round ``round_``, so those rounds are run again; the file
        follows at ``settle``."""
        if round_ >= len(self.rows):
            return
        del self.rows[round_:], self._ends[round_:], self._prefixes[round_ + 1 :]
        with os.fdopen(open_regular(self.path), "rb") as f:
            self._digest = hashlib.sha256(f.read(self._size()))
        self._beyond = reason

    def settle(self) -> None:
        """Make the file hold exactly the rows kept: a torn last line is cut, anything
        else past them is moved to a new ``.cut-N`` file first."""
        if self._beyond is None:
            return
        size, reason, self._beyond = self._size(), self._beyond, None
        with os.fdopen(open_regular(self.path, os.O_RDWR), "r+b") as f:
            if reason:
                kept = _copy_from(f, size, _free_name(self.path.with_name(f"{self.path.name}.cut")))
                log.warning(
                    "%s: %s; its rows from round %d on were moved to %s and those rounds are run again",
                    self.path, reason, len(self.rows) + 1, kept.name,
                )  # fmt: skip
            f.truncate(size)

    def _size(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _add(self, row: dict[str, Any], line: bytes) -> None:
        self._ends.append(self._size() + len(line))
        self.rows.append(row)
        self._digest.update(line)
        self._prefixes.append(self._digest.hexdigest())

    def _read_valid_prefix(self) -> None:
        with os.fdopen(open_regular(self.path), "rb") as f:
            for number, line in enumerate(_bounded_lines(f), start=1):
                if not line.endswith(b"\n") and len(line) <= MAX_ROW_BYTES:
                    self._beyond = ""  # a torn last write
                    return
                row, problem = _parse_row(line, len(self.rows) + 1)
                if problem:
                    self._beyond = f"line {number}: {problem}"
                    return
                self._add(row, line)


def _bounded_lines(f) -> Iterator[bytes]:
    """``f``'s lines, each cut at MAX_ROW_BYTES + 1 bytes so that no line fills memory."""
    return iter(lambda: f.readline(MAX_ROW_BYTES + 1), b"")


def _copy_from(f, offset: int, target: Path) -> Path:
    """Copy ``f``'s bytes from ``offset`` on into the new file ``target``."""
    f.seek(offset)
    with os.fdopen(open_regular(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as out:
        while chunk := f.read(1 << 20):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return target


def _comparable(row: dict[str, Any]) -> str:
    """A row as JSON text without its wall-clock time (text: NaN equals NaN there)."""
    return json.dumps({k: v for k, v in row.items() if k != "seconds"}, sort_keys=True, allow_nan=True)


def _parse_row(line: bytes, expected_round: int) -> tuple[dict[str, Any], str | None]:
    """``line`` as round ``expected_round``'s metrics row, and why it is not one (None if it is)."""
    if len(line) > MAX_ROW_BYTES:
        return {}, f"over {MAX_ROW_BYTES:,} bytes"
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested absurdly deep, huge ints
        return {}, "not valid JSON"
    if not isinstance(row, dict):
        return {}, "not a JSON object"
    if not _is_int(row.get("round")):
        return row, "no integer 'round'"
    if row["round"] != expected_round:
        return row, f"round {show(row['round'])} where round {expected_round} was due"
    for key in ROW_INTEGERS:
        if not _is_int(row.get(key)) or row[key] < 0:
            return row, f"'{key}' is {show(row.get(key))}, not a count"
    for key in ROW_NUMBERS + ROW_OPTIONAL_NUMBERS:
        value = row.get(key)
        if not (_is_number(value) or (value is None and key in ROW_OPTIONAL_NUMBERS)):
            return row, f"'{key}' is {show(value)}, not a number"
    return row, None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _free_name(stem: Path) -> Path:
    """``stem``-1, -2, ...: the first name not taken."""
    number = 1
    while os.path.lexists(f"{stem}-{number}"):
        number += 1
    return Path(f"{stem}-{number}")


class ClientEvalLog:
    """Append-only clients.jsonl: one row per client evaluation, in round order.

    Opened for a run at checkpoint ``completed_round``, it keeps only the rows of
    rounds up to that one: later rounds are re-run on resume (with the same
    results), and a crash may have left one of them half-written. The file is
    scanned line by line and nothing is kept in memory, so the driver stays small
    however many clients report."""

    def __init__(self, path: Path, completed_round: int):
        self.path = path
        if os.path.lexists(path):
            _truncate_after_round(path, completed_round)

    def append(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            _append_lines(self.path, rows)


def _truncate_after_round(path: Path, completed_round: int) -> None:
    """Cut a torn last line and every row of a round after ``completed_round``; a
    damaged complete line is an error, not something to cut away."""
    keep = 0
    with os.fdopen(open_regular(path, os.O_RDWR), "r+b") as f:
        for number, line in enumerate(_bounded_lines(f), start=1):
            if len(line) > MAX_ROW_BYTES:
                raise FedsimError(f"{path}:{number}: a line over {MAX_ROW_BYTES:,} bytes")
            if not line.endswith(b"\n"):
                break
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):  # not JSON, not UTF-8, nested absurdly deep
                raise FedsimError(f"{path}:{number}: not valid JSON") from None
            if not isinstance(row, dict) or not _is_int(row.get("round")):
                raise FedsimError(f"{path}:{number}: not a JSON object with an integer 'round'")
            if row["round"] > completed_round:
                break
            keep += len(line)
        f.truncate(keep)


def _append_lines(path: Path, rows: list[dict[str, Any]]) -> bytes:
    """Append one JSON line per row; the bytes written."""
    data = "".join(json.dumps(row, allow_nan=True) + "\n" for row in rows).encode("utf-8")
    with os.fdopen(open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl (or clients.jsonl) for reading, as a report does; a
    truncated last line (a crash mid-write) is skipped, any other bad line is an error."""
    rows = []
    with os.fdopen(open_regular(path), "rb") as f:
        for number, line in enumerate(_bounded_lines(f), start=1):
            if len(line) > MAX_ROW_BYTES:
                raise FedsimError(f"{path}:{number}: a line over {MAX_ROW_BYTES:,} bytes")
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except (ValueError, RecursionError):
                if not line.endswith(b"\n"):
                    break  # torn by a crash
                raise FedsimError(f"{path}:{number}: not valid JSON") from None
    return rows
