"""The run directory: config.yaml, metrics.jsonl, summary.json, model.safetensors, checkpoints/.

Metrics are appended one line per round and never rewritten; checkpoints and
the model are safetensors (no pickle on any load path); every file that is
replaced is written to a temporary name first and moved into place.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from clients.errors import FedsimError
from clients.models.layout import Layout

CHECKPOINT_PATTERN = re.compile(r"^round_(\d{6})\.safetensors$")
KEEP_CHECKPOINTS = 3


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; run files are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def create_run_dir(path: Path) -> Path:
    """Make a fresh run directory; refuse one that already holds files."""
    if path.exists() and not path.is_dir():
        raise FedsimError(f"run directory {path} is an existing file; pick another --out")
    if path.exists() and any(path.iterdir()):
        raise FedsimError(f"run directory {path} already exists and is not empty; pick another --out")
    (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    return path


class MetricsLog:
    """Append-only metrics.jsonl: one JSON object per round."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists():
            _drop_torn_tail(path)
        self.rows = read_metrics(path) if path.exists() else []
        if any(not isinstance(r, dict) or not isinstance(r.get("round"), int) for r in self.rows):
            raise FedsimError(f"{path}: every row must be a JSON object with an integer 'round'")

    def last_round(self) -> int:
        return self.rows[-1]["round"] if self.rows else 0

    def append(self, row: dict[str, Any]) -> None:
        _append_lines(self.path, [row])
        self.rows.append(row)


class ClientEvalLog:
    """Append-only clients.jsonl: one row per client evaluation, in round order.

    Opened for a run at checkpoint ``completed_round``, it keeps only the rows of
    rounds up to that one: later rounds are re-run on resume (with the same
    results), and a crash may have left one of them half-written. The file is
    scanned line by line and nothing is kept in memory, so the driver stays small
    however many clients report."""

    def __init__(self, path: Path, completed_round: int):
        self.path = path
        if path.exists():
            _truncate_after_round(path, completed_round)

    def append(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            _append_lines(self.path, rows)


def _truncate_after_round(path: Path, completed_round: int) -> None:
    """Cut a torn last line and every row of a round after ``completed_round``; a
    damaged complete line is an error, not something to cut away."""
    keep = 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise FedsimError(f"{path}:{number}: not valid JSON") from None
            if not isinstance(row, dict) or not isinstance(row.get("round"), int):
                raise FedsimError(f"{path}:{number}: not a JSON object with an integer 'round'")
            if row["round"] > completed_round:
                break
            keep += len(line)
    if keep < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(keep)


def _append_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, allow_nan=True) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline: it is not a row, and
    appending after it would glue the next row onto it. Complete rows are never touched."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a truncated last line (a crash mid-write) is skipped."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise FedsimError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise FedsimError(f"{path}:{number}: not valid JSON") from None
    return rows


def save_model(path: Path, layout: Layout, params: np.ndarray, metadata: dict[str, str]) -> None:
    """Global parameters by layer name, as safetensors."""
    tensors = {name: np.ascontiguousarray(view) for name, view in layout.views(params).items()}
    _atomic_save(path, tensors, metadata)


def _atomic_save(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    # One metadata key: safetensors stores metadata in a hash map whose order varies
    # between writes, and identical runs must give identical files.
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"fedsim": json.dumps(metadata, sort_keys=True)})
    tmp.chmod(0o644)
    os.replace(tmp, path)


def save_checkpoint(
    run_dir: Path, round_: int, params: np.ndarray, server_state: dict[str, np.ndarray]
) -> Path:
    """checkpoints/round_NNNNNN.safetensors: global params + server optimiser state."""
    tensors = {"global_params": params, **{f"server.{k}": v for k, v in server_state.items()}}
    path = run_dir / "checkpoints" / f"round_{round_:06d}.safetensors"
    _atomic_save(path, tensors, {"round": str(round_), "format": "fedsim-checkpoint-1"})
    for old in list_checkpoints(run_dir)[:-KEEP_CHECKPOINTS]:
        old.unlink()
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def load_latest_checkpoint(run_dir: Path) -> tuple[int, np.ndarray, dict[str, np.ndarray]]:
    """(round, global params, server state) of the newest checkpoint in ``run_dir``."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise FedsimError(
            f"{run_dir}: no checkpoint to resume from (expected checkpoints/round_*.safetensors)"
        )
    path = checkpoints[-1]
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise FedsimError(f"{path}: unreadable checkpoint: {exc}") from exc
    if "global_params" not in tensors:
        raise FedsimError(f"{path}: not a fedsim checkpoint (no 'global_params' tensor)")
    round_ = int(CHECKPOINT_PATTERN.match(path.name).group(1))
    state = {k.removeprefix("server."): v for k, v in tensors.items() if k.startswith("server.")}
    return round_, tensors["global_params"], state


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
