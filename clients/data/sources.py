"""Locating and downloading dataset files: checked downloads and one clear "files missing" error.

A download goes to a temporary file next to its destination, is checked
against a published md5, and only then renamed into place, so an
interrupted or corrupted download never leaves a file that looks complete.
"""

import contextlib
import hashlib
import http.client
import json
import os
import sys
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from clients.errors import DataError

DOWNLOAD_TIMEOUT_S = 30.0  # per connection attempt and per read; a stalled mirror fails, the next is tried
CHUNK_BYTES = 1 << 20
MAX_RECORD_BYTES = 1 << 20  # a checksum record holds a few lines


@dataclass(frozen=True)
class RemoteFile:
    """A published file: its name on disk, mirrors tried in order, and its md5 (hex)."""

    name: str
    urls: tuple[str, ...]
    md5: str


def file_md5(path: Path) -> str:
    """Hex md5 of a file, read in chunks (the published checksums are md5: integrity, not security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CheckedFiles:
    """Checksums of a folder's dataset files, computed once and recorded beside them in
    ``.fedsim-checked.json`` ({key: [size, mtime_ns, md5]}), so a file is hashed again only
    when it changed. A folder that cannot be written (a read-only mount) is simply hashed
    each time. A record is a cache, never trusted over a changed file."""

    RECORD = ".fedsim-checked.json"

    def __init__(self, folder: Path):
        self.path = folder / self.RECORD
        self.entries = self._read()
        self.changed = False

    def _read(self) -> dict:
        """The record, or {} when there is none or it is not one (it is only a cache)."""
        try:
            if not self.path.is_file() or self.path.stat().st_size > MAX_RECORD_BYTES:
                return {}
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def md5(self, file: Path, key: str, compute: Callable[[], str]) -> str:
        """The md5 recorded under ``key`` for ``file`` as it is now, else ``compute()``."""
        info = file.stat()
        stamp = [info.st_size, info.st_mtime_ns]
        entry = self.entries.get(key)
        if isinstance(entry, list) and len(entry) == 3 and entry[:2] == stamp and isinstance(entry[2], str):
            return entry[2]
        digest = compute()
        self.entries[key] = [*stamp, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        """Record what was verified (best effort: a read-only folder keeps no record)."""
        if not self.changed:
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f"{self.RECORD}.", suffix=".tmp")
        except OSError:
            return
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.entries, f, sort_keys=True)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a shared data folder's users all read it
            os.replace(tmp, self.path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)


def checksum_mismatch(what: str, where: Path, got: str, expected: str) -> DataError:
    return DataError(
        f"{where}: {what} has md5 {got}, but the published one is {expected}: the file is damaged or "
        "not the original; delete it to download it again, or set data.verify: false to use it as it is"
    )


def fetch(remote: RemoteFile, dest_dir: Path, progress: bool = True) -> Path:
    """Download remote into dest_dir/remote.name unless a copy with the right md5 is there.

    Mirrors are tried in order; a mirror that fails or serves bytes with the
    wrong md5 is skipped. Raises DataError naming every mirror's failure
    (for a checksum mismatch: the file, the expected and the received md5).
    """
    target = dest_dir / remote.name
    if target.is_file() and file_md5(target) == remote.md5:
        return target
    dest_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in remote.urls:
        try:
            _download_checked(url, remote, target, progress)
            return target
        except _MirrorFailed as failure:
            failures.append(f"{url}: {failure}")
    raise DataError(f"could not download {remote.name}: " + "; ".join(failures))


class _MirrorFailed(Exception):
    """One mirror could not deliver the file; fetch moves on to the next."""


def _download_checked(url: str, remote: RemoteFile, target: Path, progress: bool) -> None:
    """Stream url into a temporary file beside target, check its md5, then rename it onto target."""
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{remote.name}.", suffix=".part", delete=False
    ) as partial:
        partial_path = Path(partial.name)
    try:
        shown = progress and sys.stderr.isatty()
        got = _stream_to(url, partial_path, remote.name, shown)
        if got != remote.md5:
            raise _MirrorFailed(f"md5 mismatch for {remote.name}: expected {remote.md5}, got {got}")
        partial_path.replace(target)  # atomic on one filesystem: target is whole or absent
    finally:
        partial_path.unlink(missing_ok=True)


def _stream_to(url: str, path: Path, label: str, show_progress: bool) -> str:
    """Write url's body to path and return its md5; network errors become _MirrorFailed."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, path.open("wb") as out:
            total = response.headers.get("Content-Length")
            with _progress_bar(label, int(total) if total else None, show_progress) as advance:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
    except (OSError, ValueError, http.client.HTTPException) as error:  # URLError and timeouts are OSError
        raise _MirrorFailed(str(error) or type(error).__name__) from error
    return digest.hexdigest()


@contextlib.contextmanager
def _progress_bar(label: str, total: int | None, shown: bool) -> Iterator[Callable[[int], None]]:
    """Yield advance(nbytes): it moves a rich bytes/total bar on stderr when shown, else does nothing."""
    if not shown:
        yield lambda _nbytes: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"downloading {label}", total=total)
        yield lambda nbytes: bar.advance(task, nbytes)


def missing_files_error(
    dataset: str,
    expected: list[str],
    searched: list[Path],
    hint: str,
    download_error: str | None = None,
) -> DataError:
    """The one error a user sees when a dataset's files are not on disk.

    hint says where to put the files (e.g. "put them in /data/MNIST/raw/");
    download_error, when a download was tried, says why it failed.
    """
    folders = ", ".join(str(folder) for folder in searched)
    message = f"{dataset} files not found: expected {', '.join(expected)} in one of: {folders}; {hint}"
    if download_error is None:
        message += "; or set data.download: true to fetch them (needs network access)"
    else:
        message += f"; download failed: {download_error}"
    return DataError(message)
