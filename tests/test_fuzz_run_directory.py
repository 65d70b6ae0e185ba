"""Run directories tampered with at random never crash, hang or resume to a wrong model.

Each case copies a finished 3-round run and applies one to three tamperings drawn from
a seed (links to a file outside or to /dev/zero, FIFOs, folders where files belong,
deleted, truncated or bit-flipped files, checkpoints renamed, copied over another
round or taken from another run, metrics rows broken, duplicated, swapped, edited or
foreign, a config.yaml with keys an older fedsim accepted without acting on them), then runs
``fedsim report`` and ``fedsim run --resume`` to 4 rounds on it through the CLI.
Every command ends with exit 0 or with exit 2 and one error line, under a timer; a
file outside the run is never written; and a resume that goes on ends with exactly
the model and rows of a run that was never touched. ``FEDSIM_FUZZ_RUN_DIRS`` sets
the number of cases (the closing counts of issue 25 used 300)."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from pathlib import Path

from tests.test_hostile_input import cli
from tests.test_run_directory import (  # noqa: F401  (runs is a fixture)
    ROUNDS,
    checkpoint,
    deadline,
    rounds_of,
    runs,
    timeless_rows,
)

CASES = int(os.environ.get("FEDSIM_FUZZ_RUN_DIRS", "20"))
OUTSIDE_TEXT = "a file outside the run\n"
FILES = [".lock", "metrics.jsonl", "clients.jsonl", "run.json", "config.yaml", "summary.json",
         "model.safetensors", *(f"checkpoints/round_{r:06d}.safetensors" for r in (1, 2, 3))]  # fmt: skip
ROW_GARBAGE = [
    b"{not json}\n", b"[" * 100_000 + b"]" * 100_000 + b"\n", b'{"round": ' + b"7" * 5000 + b"}\n",
    b'{"round": 99}\n', b"\xff\xfe\n", b"null\n", b'{"round": 4, "pad": "' + b"x" * (2 << 20) + b'"}\n',
    b'{"round": 4, "num_clients": -1, "bytes_up": 0, "bytes_down": 0, "seconds": 1}\n',
]  # fmt: skip


def link_out(run_dir: Path, rng: random.Random, outside: Path) -> str:
    name = rng.choice(FILES)
    target = rng.choice([outside, Path("/dev/zero")])
    _replace(run_dir / name, lambda p: p.symlink_to(target))
    return f"link {name} -> {target.name}"


def fifo(run_dir: Path, rng: random.Random, outside: Path) -> str:
    name = rng.choice(FILES)
    _replace(run_dir / name, os.mkfifo)
    return f"fifo {name}"


def damage(run_dir: Path, rng: random.Random, outside: Path) -> str:
    name = rng.choice(FILES)
    path = run_dir / name
    if not path.is_file() or path.is_symlink():
        return f"nothing to damage at {name}"
    data = bytearray(path.read_bytes())
    how = rng.choice(["delete", "truncate", "flip"])
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
    return f"{how} {name}"


def checkpoint_swap(run_dir: Path, rng: random.Random, outside: Path, other: Path | None = None) -> str:
    source_round, target_round = rng.sample(range(1, ROUNDS + 1), 2)
    how = rng.choice(["rename", "copy", "foreign"])
    source = checkpoint(other if how == "foreign" else run_dir, source_round)
    target = checkpoint(run_dir, target_round)
    if not source.is_file() or source.is_symlink():
        return f"no checkpoint {source_round} to {how}"
    target.unlink(missing_ok=True)
    (source.rename if how == "rename" else lambda t: shutil.copyfile(source, t))(target)
    return f"{how} checkpoint {source_round} -> {target_round}"


def rows(run_dir: Path, rng: random.Random, outside: Path) -> str:
    path = run_dir / "metrics.jsonl"
    if not path.is_file() or path.is_symlink():
        return "no metrics to edit"
    lines = path.read_bytes().splitlines(keepends=True)
    how = rng.choice(["append", "insert", "swap", "duplicate", "edit", "drop"])
    at = rng.randrange(len(lines)) if lines else 0
    if how in ("append", "insert"):
        lines.insert(len(lines) if how == "append" else at, rng.choice(ROW_GARBAGE))
    elif how == "swap" and len(lines) > 1:
        lines[at], lines[at - 1] = lines[at - 1], lines[at]
    elif how == "duplicate" and lines:
        lines.insert(at, lines[at])
    elif how == "edit" and lines:
        try:
            row = json.loads(lines[at])
            row["test_accuracy"] = rng.random()
            lines[at] = (json.dumps(row) + "\n").encode()
        except (ValueError, RecursionError, TypeError):  # an earlier tampering's garbage
            return "rows edit: nothing to edit"
    elif how == "drop" and lines:
        del lines[at]
    path.write_bytes(b"".join(lines))
    return f"rows {how} at {at}"


def folder(run_dir: Path, rng: random.Random, outside: Path) -> str:
    name = rng.choice([*FILES, f"checkpoints/round_{ROUNDS + 1:06d}.safetensors"])
    _replace(run_dir / name, Path.mkdir)
    return f"folder {name}"


def older_config(run_dir: Path, rng: random.Random, outside: Path) -> str:
    """Keys an older fedsim accepted without acting on them (a sync run's server.async)."""
    path = run_dir / "config.yaml"
    if not path.is_file() or path.is_symlink():
        return "no config to age"
    path.write_text(path.read_text().replace("    concurrency: null\n", "    concurrency: 7\n"))
    return "older config"


TAMPERINGS = {
    "link": link_out, "fifo": fifo, "damage": damage, "checkpoint": checkpoint_swap, "rows": rows,
    "folder": folder, "older config": older_config,
}  # fmt: skip


def _replace(path: Path, make) -> None:
    if path.is_dir() and not path.is_symlink():
        return
    path.unlink(missing_ok=True)
    make(path)


def tamper(run_dir: Path, rng: random.Random, outside: Path, other: Path) -> tuple[list[str], list[str]]:
    kinds = rng.sample(sorted(TAMPERINGS), rng.randint(1, 3))
    done = []
    for kind in kinds:
        if kind == "checkpoint":
            done.append(checkpoint_swap(run_dir, rng, outside, other))
        else:
            done.append(TAMPERINGS[kind](run_dir, rng, outside))
    return kinds, done


def outcome(result: tuple[int, str, str]) -> tuple[int, int, bool]:
    code, _, err = result
    errors = [line for line in err.splitlines() if line.startswith("fedsim: error")]
    return code, len(errors), "Traceback" in err


def test_tampered_run_directories_never_crash_hang_or_resume_wrong(runs, tmp_path):  # noqa: F811
    rng = random.Random(25)
    straight_model = (runs / "straight" / "model.safetensors").read_bytes()
    straight_rows = timeless_rows(runs / "straight")
    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE_TEXT)
    counts: Counter = Counter()
    problems = []
    for case in range(CASES):
        run_dir = tmp_path / f"case{case}"
        shutil.copytree(runs / "done", run_dir, symlinks=True)
        kinds, done = tamper(run_dir, rng, outside, runs / "other")
        with deadline(120):
            report = outcome(cli("report", run_dir, "--out", tmp_path / f"report{case}"))
            resume = outcome(cli("run", "--resume", run_dir, "--set", f"rounds={ROUNDS + 1}", "--quiet"))
        for command, (code, errors, traceback) in (("report", report), ("resume", resume)):
            counts[(command, code)] += 1
            if traceback or code not in (0, 2) or (code == 2 and errors != 1):
                problems.append(f"case {case} {done}: {command} exit {code}, {errors} error lines")
        if resume[0] == 0 and (
            (run_dir / "model.safetensors").read_bytes() != straight_model
            or rounds_of(run_dir) != list(range(1, ROUNDS + 2))
            or timeless_rows(run_dir) != straight_rows
        ):
            problems.append(f"case {case} {done}: resumed to another model or other rows")
        if outside.read_text() != OUTSIDE_TEXT:
            problems.append(f"case {case} {done}: wrote to a file outside the run")
            outside.write_text(OUTSIDE_TEXT)
        counts.update(f"{kind}:{'resumed' if resume[0] == 0 else 'refused'}" for kind in kinds)
    print(dict(counts))
    assert problems == [], "\n".join(problems)
    assert counts[("resume", 0)] > 0 and counts[("resume", 2)] > 0  # both outcomes were exercised
