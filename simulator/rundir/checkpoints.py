"""The model and checkpoint files: model.safetensors and checkpoints/round_NNNNNN.safetensors.

Both are safetensors (no pickle on any load path). Each checkpoint carries the run's
identity (run.json), its round, a checksum and a digest of the metrics rows up to its
round, and the final model its round and a checksum, so a checkpoint renamed, copied
from another round or another run, or rows edited since, are found out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from clients.errors import FedsimError
from clients.files import read_regular
from clients.models.layout import Layout
from simulator.config.yaml_input import one_line, show
from simulator.rundir.directory import RUN_FILE
from simulator.rundir.files import atomic_write_bytes, check_folder

log = logging.getLogger("fedsim")

CHECKPOINT_PATTERN = re.compile(r"^round_(\d{6})\.safetensors$")
KEEP_CHECKPOINTS = 3
CHECKPOINT_FORMAT = "fedsim-checkpoint-3"
# 1: before the checksum and the recorded config; 2: before the run id and the metrics digest
OLD_CHECKPOINT_FORMATS = ("fedsim-checkpoint-1", "fedsim-checkpoint-2")
MODEL_FORMAT = "fedsim-model-2"
OLD_MODEL_FORMAT = "fedsim-model-1"  # before the checksum
MAX_TENSOR_FILE_BYTES = 1 << 40  # a bound for reads only: a regular file is finite anyway


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
    return sorted(found, key=_named_round)


def _named_round(path: Path) -> int:
    """The round in a checkpoint's file name (round_NNNNNN.safetensors)."""
    match = CHECKPOINT_PATTERN.match(path.name)
    if match is None:
        raise FedsimError(f"{path}: not a checkpoint's name (round_NNNNNN.safetensors)")
    return int(match.group(1))


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
    round_ = _named_round(path)
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
