"""Fingerprints of every config's results, to prove that a refactor changed none.

For each config in configs/ that runs offline: 2 rounds, then a resume of that run
directory to round 3. Prints (and with --out writes as JSON) the sha256 of
model.safetensors and of metrics.jsonl without its wall-clock field, for both.
With --keep DIR the 2-round run directories are copied there, and with --resume-from DIR
the resumes start from such copies instead: run directories written by the code before
a change, resumed by the code after it.

    python bench/fingerprint.py --out before.json --keep /tmp/kept     # on the old commit
    python bench/fingerprint.py --out after.json --resume-from /tmp/kept  # on the new one
    diff before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WALL_CLOCK_KEYS = {"seconds"}  # the only field of a row that differs between identical runs


def _digest(run_dir: Path) -> tuple[str, str]:
    model = hashlib.sha256((run_dir / "model.safetensors").read_bytes()).hexdigest()[:12]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timeless = [
        json.dumps({k: v for k, v in row.items() if k not in WALL_CLOCK_KEYS}, sort_keys=True) for row in rows
    ]
    return model, hashlib.sha256("\n".join(timeless).encode()).hexdigest()[:12]


def _fedsim(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "simulator", *args, "--quiet"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True)


def fingerprint(config: Path, work: Path, keep: Path | None, resume_from: Path | None) -> dict[str, object]:
    run_dir = work / config.stem
    if _fedsim("run", str(config), "--set", "rounds=2", "--out", str(run_dir)).returncode:
        return {"run": "not runnable here (its data are not on disk?)"}
    if keep is not None:
        shutil.copytree(run_dir, keep / config.stem, dirs_exist_ok=True)
    kept = (resume_from or work) / config.stem
    if not kept.is_dir():  # a config the old commit did not have
        return {"run": _digest(run_dir), "resumed": f"no run directory {kept} to resume (a new config?)"}
    resumed = work / f"{config.stem}-resumed"
    shutil.copytree(kept, resumed)
    outcome = _fedsim("run", "--resume", str(resumed), "--set", "rounds=3")
    return {
        "run": _digest(run_dir),
        "resumed": _digest(resumed) if not outcome.returncode else outcome.stderr,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path, help="configs (default: every one in configs/)")
    parser.add_argument("--out", type=Path, help="write the fingerprints here as JSON")
    parser.add_argument("--keep", type=Path, help="copy the 2-round run directories here")
    parser.add_argument("--resume-from", type=Path, help="resume copies of run directories kept here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for config in args.configs or sorted((ROOT / "configs").glob("*.yaml")):
            results[config.stem] = fingerprint(config, Path(work), args.keep, args.resume_from)
            print(config.stem, results[config.stem], flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
