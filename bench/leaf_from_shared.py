"""Write the offline LEAF archives in shared/data back out as LEAF JSON, for fedsim's LEAF loaders.

The archives (see shared/data/README.md sections 3-4) are lossless numpy copies
of LEAF output; this script rebuilds LEAF's own layout from them, so benchmarks
and tests exercise the real JSON loaders (clients/data/leaf.py):

    OUT/femnist/data/{train,test}/all_data_<k>.json       pixels as LEAF floats x / 255
    OUT/shakespeare/data/{train,test}/all_data_<k>.json   80-character strings, next character

Users are written in the archive's order, --users-per-shard to a file (LEAF also
shards its output, and the loaders must join a split over several files).
Shards are streamed user by user, so the JSON is never built whole in memory.

    python bench/leaf_from_shared.py --shared ../shared/data --out /tmp/leaf \
        [--users-per-shard 100] [--max-users N]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

FEMNIST_ARCHIVE = Path("femnist") / "femnist_leaf_300writers.npz"
SHAKESPEARE_ARCHIVE = Path("shakespeare") / "shakespeare_leaf_sample10.npz"
LEAF_MAX_PIXEL = 255.0  # the archive stores LEAF's float pixel p as round(p * 255), exactly

# One user's rows as LEAF's JSON lists: (x, y).
JsonRows = tuple[list, list]


def femnist_rows(x: np.ndarray, y: np.ndarray) -> JsonRows:
    """x: (n, 28, 28) uint8 -> n lists of 784 floats in [0, 1]; y: (n,) uint8 -> n ints."""
    return (x.reshape(len(x), -1) / LEAF_MAX_PIXEL).tolist(), y.astype(int).tolist()


def shakespeare_rows(x: np.ndarray, y: np.ndarray) -> JsonRows:
    """x: (n, 80) uint8 ASCII codes -> n strings; y: (n,) uint8 -> n one-character strings."""
    return [row.tobytes().decode("ascii") for row in x], [chr(code) for code in y]


def write_split(
    archive: np.lib.npyio.NpzFile,
    split: str,
    out_dir: Path,
    to_json: Callable[[np.ndarray, np.ndarray], JsonRows],
    users_per_shard: int,
    max_users: int | None = None,
) -> int:
    """Write archive's split ("train" or "test") as LEAF shards in out_dir, its first
    ``max_users`` users (None: all); returns rows written."""
    users = [str(user) for user in archive["users"]][:max_users]
    offsets, x, y = archive[f"{split}_offsets"], archive[f"x_{split}"], archive[f"y_{split}"]
    out_dir.mkdir(parents=True, exist_ok=True)
    for shard, first in enumerate(range(0, len(users), users_per_shard)):
        indices = range(first, min(first + users_per_shard, len(users)))
        with (out_dir / f"all_data_{shard}.json").open("w") as stream:
            write_shard(
                stream,
                [users[i] for i in indices],
                [(offsets[i], offsets[i + 1]) for i in indices],
                x,
                y,
                to_json,
            )
    return int(offsets[len(users)])


def write_shard(stream, users: list[str], spans: list[tuple[int, int]], x, y, to_json) -> None:
    """One LEAF JSON object, {"users", "num_samples", "user_data"}, written one user at a time."""
    counts = [int(stop - start) for start, stop in spans]
    stream.write(f'{{"users": {json.dumps(users)}, "num_samples": {json.dumps(counts)}, "user_data": {{')
    for index, (user, (start, stop)) in enumerate(zip(users, spans, strict=True)):
        rows_x, rows_y = to_json(x[start:stop], y[start:stop])
        separator = ", " if index else ""
        stream.write(f"{separator}{json.dumps(user)}: {json.dumps({'x': rows_x, 'y': rows_y})}")
    stream.write("}}")


def convert(shared: Path, out: Path, users_per_shard: int, max_users: int | None = None) -> None:
    """Write both datasets under out (each's first ``max_users`` users; None: all) and
    print the rows, users and seconds of each."""
    for name, archive_path, to_json in (
        ("femnist", FEMNIST_ARCHIVE, femnist_rows),
        ("shakespeare", SHAKESPEARE_ARCHIVE, shakespeare_rows),
    ):
        started = time.perf_counter()
        with np.load(shared / archive_path, allow_pickle=False) as archive:
            rows = {
                split: write_split(
                    archive, split, out / name / "data" / split, to_json, users_per_shard, max_users
                )
                for split in ("train", "test")
            }
            users = len(archive["users"][:max_users])
        seconds = time.perf_counter() - started
        print(f"{name}: {users} users, {rows['train']} train / {rows['test']} test rows, {seconds:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="the shared/data folder")
    parser.add_argument(
        "--out", type=Path, required=True, help="root to write <name>/data/{train,test} under"
    )
    parser.add_argument("--users-per-shard", type=int, default=100, help="users per JSON file (default 100)")
    parser.add_argument("--max-users", type=int, help="write only each archive's first N users")
    args = parser.parse_args()
    if args.users_per_shard < 1 or (args.max_users is not None and args.max_users < 1):
        parser.error("--users-per-shard and --max-users must be >= 1")
    convert(args.shared, args.out, args.users_per_shard, args.max_users)


if __name__ == "__main__":
    main()
