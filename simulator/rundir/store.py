"""The run directory: config.yaml, run.json, metrics.jsonl, summary.json, model.safetensors,
checkpoints/.

Metrics are appended one line per round and never rewritten; checkpoints and
the model are safetensors (no pickle on any load path); every file that is
replaced is written to a temporary name first and moved into place. Every file
opened here must be a regular file (no link followed, no FIFO or device:
simulator/files.py). Each checkpoint carries the run's identity
(run.json), its round, a checksum and a digest of the metrics rows up to its
round, and the final model its round and a checksum, so a checkpoint renamed, copied from
another round or another run, or rows edited since, are found out.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import stat
import struct
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from clients.errors import FedsimError
from clients.models.layout import Layout
from simulator.config.yaml_input import one_line, show
from simulator.rundir.files import check_folder, open_regular, read_regular

log = logging.getLogger("fedsim")

CHECKPOINT_PATTERN = re.compile(r"^round_(\d{6})\.safetensors$")
KEEP_CHECKPOINTS = 3
LOCK_NAME = ".lock"
LOCK_ATTEMPTS = 5
CHECKPOINT_FORMAT = "fedsim-checkpoint-3"
# 1: before the checksum and the recorded config; 2: before the run id and the metrics digest
OLD_CHECKPOINT_FORMATS = ("fedsim-checkpoint-1", "fedsim-checkpoint-2")
MODEL_FORMAT = "fedsim-model-2"
OLD_MODEL_FORMAT = "fedsim-model-1"  # before the checksum
RUN_FILE = "run.json"
RUN_FORMAT = "fedsim-run-1"
MAX_ROW_BYTES = 1 << 20  # a round's metrics row is a few kB; a longer line is not fedsim's
MAX_SMALL_FILE_BYTES = 1 << 20  # run.json, summary.json
MAX_TENSOR_FILE_BYTES = 1 << 40  # a bound for reads only: a regular file is finite anyway
# What every metrics row holds (DESIGN.md), and which values may be null.
ROW_INTEGERS = ("num_clients", "bytes_up", "bytes_down")
ROW_NUMBERS = ("seconds",)
ROW_OPTIONAL_NUMBERS = ("test_accuracy", "test_loss", "train_loss")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a fresh temporary file beside ``path`` (written through its own
    descriptor: a link planted at a temporary name is never written through), then
    rename it into place; a folder in the way is one error."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are for sharing
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise FedsimError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def check_new_run_dir(path: Path) -> None:
    """Refuse, before anything starts, a run directory that holds files or could not be
    made (its nearest existing parent is not a folder we may write to)."""
    try:
        if path.exists() and not path.is_dir():
            raise FedsimError(f"run directory {path} is an existing file; pick another --out")
        if path.exists() and any(path.iterdir()):
            raise FedsimError(f"run directory {path} already exists and is not empty; pick another --out")
        parent = next(p for p in (path, *path.absolute().parents) if p.exists())
    except OSError as exc:
        raise FedsimError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    try:  # the only sure test of a folder we may write to (root, /proc, read-only mounts)
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".fedsim-probe-"))
    except OSError as exc:
        raise FedsimError(f"cannot create run directory {path}: {parent}: {exc.strerror or exc}") from None


def create_run_dir(path: Path) -> str:
    """Make a fresh run directory with its identity (run.json), and return that id;
    refuse one that already holds files or cannot be made."""
    check_new_run_dir(path)
    try:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedsimError(f"cannot create run directory {path}: {exc.strerror or exc}") from None
    run_id = uuid.uuid4().hex
    write_json(path / RUN_FILE, {"format": RUN_FORMAT, "run_id": run_id})
    return run_id


def read_run_id(run_dir: Path) -> str | None:
    """The run's identity from run.json; None for a run directory made before fedsim kept
    one (its checkpoints carry none either)."""
    path = run_dir / RUN_FILE
    if not os.path.lexists(path):
        return None
    try:
        record = json.loads(read_regular(path, MAX_SMALL_FILE_BYTES))
    except (ValueError, RecursionError):
        record = None
    run_id = record.get("run_id") if isinstance(record, dict) else None
    if not isinstance(run_id, str) or not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise FedsimError(f"{path}: damaged (expected a JSON object with a 32-hex-digit 'run_id')")
    return run_id


class RunLock:
    """An exclusive lock on a run directory (``RUN_DIR/.lock``, an flock the kernel drops
    when the process ends, however it ends) held while a run writes to it, so a second
    ``--resume`` of the same run cannot interleave rows with the first."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = _open_lock_file(self.path, os.O_RDWR | os.O_CREAT)
        for attempt in range(LOCK_ATTEMPTS):  # `fedsim report` probes the lock for a moment
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if attempt == LOCK_ATTEMPTS - 1:
                    holder = _lock_holder(fd)
                    os.close(fd)
                    raise FedsimError(
                        f"run directory {self.path.parent} is in use by another fedsim run (pid {holder}); "
                        "wait for it to end or stop it first"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _open_lock_file(path: Path, flags: int) -> int:
    """The lock file's descriptor; a link, FIFO or anything but a regular file is refused."""
    try:
        return open_regular(path, flags)
    except FedsimError as exc:
        raise FedsimError(f"cannot lock run directory {path.parent}: {exc}") from None


def running_pid(run_dir: Path) -> int | None:
    """The pid of the fedsim run that holds ``run_dir``'s lock now, else None."""
    try:
        fd = _open_lock_file(run_dir / LOCK_NAME, os.O_RDONLY)
    except FedsimError:
        return None  # no lock file (or not one fedsim made): nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _lock_holder(fd) or -1
    finally:
        os.close(fd)
    return None


def _lock_holder(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


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


def read_json(path: Path, limit: int = MAX_SMALL_FILE_BYTES) -> Any:
    """A JSON file of the run directory (summary.json, prune.json); ValueError if it is not JSON."""
    return json.loads(read_regular(path, limit))


def save_model(path: Path, layout: Layout, params: np.ndarray, round_: int, name: str) -> None:
    """Global parameters by layer name, as safetensors, with the round and a sha256 of the
    tensors (checked by ``load_model``). No run id: identical runs give identical files."""
    tensors = {name_: np.ascontiguousarray(view) for name_, view in layout.views(params).items()}
    metadata = {
        "format": MODEL_FORMAT,
        "round": str(round_),
        "name": name,
        "sha256": _tensors_sha256(tensors),
    }
    _atomic_save(path, tensors, metadata)


def load_model(path: Path) -> dict[str, np.ndarray]:
    """A run's model.safetensors by layer name, verified against its checksum; a model of
    fedsim before 0.2 (no checksum) loads with a warning."""
    tensors, metadata = _load_safetensors(path, "model")
    fmt = metadata.get("format")
    if fmt == OLD_MODEL_FORMAT:
        log.warning("%s: written before fedsim kept a checksum for it; it cannot be verified", path)
    elif fmt != MODEL_FORMAT:
        raise FedsimError(f"{path}: not a fedsim model (format {show(fmt)})")
    elif metadata.get("sha256") != _tensors_sha256(tensors):
        raise FedsimError(f"{path}: altered since fedsim wrote it: its tensors do not match their checksum")
    return tensors


def _load_safetensors(path: Path, what: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors and fedsim metadata of a safetensors file that must be a regular file."""
    data = read_regular(path, MAX_TENSOR_FILE_BYTES)
    try:
        tensors = load(data)
        metadata = json.loads(_safetensors_metadata(data).get("fedsim", "{}"))
    except (SafetensorError, ValueError, RecursionError, TypeError, struct.error) as exc:
        raise FedsimError(f"{path}: unreadable {what}: {one_line(str(exc), 200)}") from None
    if not isinstance(metadata, dict):
        raise FedsimError(f"{path}: unreadable {what}: its fedsim metadata is not an object")
    return tensors, metadata


def _safetensors_metadata(data: bytes) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file's header (an 8-byte length, then JSON);
    ``load`` has already checked that the header is well formed."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    metadata = header.get("__metadata__") or {} if isinstance(header, dict) else {}
    return metadata if isinstance(metadata, dict) else {}


def _atomic_save(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    # One metadata key: safetensors stores metadata in a hash map whose order varies
    # between writes, and identical runs must give identical files.
    atomic_write_bytes(path, save(tensors, metadata={"fedsim": json.dumps(metadata, sort_keys=True)}))


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: the global parameters and server state after ``round``, and the
    training config it was made with (None in checkpoints of fedsim before 0.2).
    ``metrics_sha256`` is the digest of metrics.jsonl up to this round's row (None in
    checkpoints made before fedsim recorded it)."""

    round: int
    params: np.ndarray
    server_state: dict[str, np.ndarray]
    config: dict[str, Any] | None
    path: Path
    metrics_sha256: str | None = None


def save_checkpoint(
    run_dir: Path,
    round_: int,
    params: np.ndarray,
    server_state: dict[str, np.ndarray],
    config: dict[str, Any],
    identity: dict[str, str],
) -> Path:
    """checkpoints/round_NNNNNN.safetensors: global params + server state, with a sha256 of
    every tensor, the training config and ``identity`` (run_id, metrics_sha256) in its
    metadata (checked when it is loaded)."""
    check_folder(run_dir / "checkpoints")  # a real folder, not a link out of the run
    tensors = {"global_params": params, **{f"server.{k}": v for k, v in server_state.items()}}
    path = run_dir / "checkpoints" / f"round_{round_:06d}.safetensors"
    metadata = {"round": str(round_), "format": CHECKPOINT_FORMAT, "sha256": _tensors_sha256(tensors)}
    _atomic_save(path, tensors, {**metadata, **identity, "config": json.dumps(config, sort_keys=True)})
    for old in list_checkpoints(run_dir)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def _tensors_sha256(tensors: dict[str, np.ndarray]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_PATTERN.match(p.name) and not _is_real_folder(p)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def _is_real_folder(path: Path) -> bool:
    return stat.S_ISDIR(os.lstat(path).st_mode)


def load_checkpoint(path: Path, run_id: str | None = None) -> Checkpoint:
    """A checkpoint, verified against its recorded sha256, its file name's round and the
    run's identity; FedsimError if it is unreadable, not fedsim's, altered, renamed, or
    another run's."""
    tensors, metadata = _load_safetensors(path, "checkpoint")
    if "global_params" not in tensors:
        raise FedsimError(f"{path}: not a fedsim checkpoint (no 'global_params' tensor)")
    fmt, checksum = metadata.get("format"), metadata.get("sha256")
    if fmt != CHECKPOINT_FORMAT and fmt not in OLD_CHECKPOINT_FORMATS:
        raise FedsimError(f"{path}: corrupt checkpoint: unknown format {show(fmt)}")
    if (fmt != OLD_CHECKPOINT_FORMATS[0] or checksum is not None) and checksum != _tensors_sha256(tensors):
        raise FedsimError(
            f"{path}: corrupt checkpoint: its tensors do not match the checksum written with them"
        )
    round_ = int(CHECKPOINT_PATTERN.match(path.name).group(1))
    if "round" in metadata and metadata["round"] != str(round_):
        raise FedsimError(
            f"{path}: holds round {show(metadata['round'])}, not the round {round_} its name says "
            "(renamed or copied over another)"
        )
    if metadata.get("run_id") != run_id:
        raise FedsimError(
            f"{path}: belongs to another run (run id {show(metadata.get('run_id'))}, this run's is "
            f"{show(run_id)} in {RUN_FILE})"
        )
    try:
        config = json.loads(metadata["config"]) if "config" in metadata else None
    except (TypeError, ValueError, RecursionError):
        raise FedsimError(f"{path}: corrupt checkpoint: its recorded config is not JSON") from None
    state = {k.removeprefix("server."): v for k, v in tensors.items() if k.startswith("server.")}
    digest = metadata.get("metrics_sha256")
    return Checkpoint(round_, tensors["global_params"], state, config, path, digest)


def intact_checkpoints(run_dir: Path, run_id: str | None) -> Iterator[Checkpoint]:
    """The run's checkpoints that load and verify, newest first; each one that does not is
    logged and skipped. FedsimError when there is none at all."""
    check_folder(run_dir / "checkpoints")  # a real folder, not a link out of the run
    paths = list_checkpoints(run_dir)
    if not paths:
        raise FedsimError(
            f"{run_dir}: no checkpoint to resume from (expected checkpoints/round_*.safetensors)"
        )
    for path in reversed(paths):
        try:
            yield load_checkpoint(path, run_id)
        except FedsimError as exc:
            log.warning("skipping a damaged checkpoint: %s", exc)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
