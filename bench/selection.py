"""Client selection policies on the simulated clock: time to a target accuracy.

    python bench/selection.py [CONFIG] [--target 0.85] [--seeds 0,1,2] [--out DIR] [--set KEY=VALUE ...]

Runs CONFIG (default configs/oort.yaml) once per policy -- server.selection uniform,
power_of_choice and oort -- and seed, and prints a markdown table per policy: final and
best test accuracy, simulated seconds and rounds to the target (the first evaluation at or
above it), the mean round length on the simulated clock, and the speed-up in time to
target over uniform selection, all averaged over the seeds that reached it. The numbers
come from each run's metrics.jsonl, as `fedsim report --target` computes them; wall-clock
time plays no part. The run directories are kept under --out for `fedsim report`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import yaml

from simulator import Simulation
from simulator.report.runs import rounds_to_target, simulated_time_to_target
from simulator.rundir.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("uniform", "power_of_choice", "oort")


def run_policy(config: Path, policy: str, seed: int, out: Path, overrides: dict) -> list[dict]:
    run_dir = out / f"{policy}-seed{seed}"
    sim = Simulation.from_yaml(
        config,
        {**overrides, "server.selection": policy, "seed": seed, "name": f"{config.stem}-{policy}"},
        run_dir=run_dir,
        quiet=True,
    )
    sim.run()
    return read_metrics(run_dir / "metrics.jsonl")


def summary(rows: list[dict], target: float) -> dict:
    evaluated = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None]
    return {
        "final": evaluated[-1],
        "best": max(evaluated),
        "seconds": simulated_time_to_target(rows, target),
        "rounds": rounds_to_target(rows, target),
        "round_seconds": statistics.fmean(r["simulated_seconds"] for r in rows),
    }


def _mean(values: list) -> float | None:
    reached = [v for v in values if v is not None]
    return statistics.fmean(reached) if reached else None


def _shown(value: float | None, spec: str) -> str:
    return "not reached" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?", type=Path, default=ROOT / "configs" / "oort.yaml")
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, help="folder for the run directories (default: a temporary one)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out or Path(tempfile.mkdtemp(prefix="fedsim-selection-"))
    results = {}
    for policy in POLICIES:
        results[policy] = [
            summary(run_policy(args.config, policy, s, out, overrides), args.target) for s in seeds
        ]
    base = _mean([r["seconds"] for r in results["uniform"]])
    print(f"{args.config.name}, target {args.target:.0%}, seeds {args.seeds}; run directories in {out}\n")
    print("| selection | final accuracy | best accuracy | simulated s to target | rounds to target | "
          "mean round (simulated s) | time-to-target speed-up vs uniform |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for policy, runs in results.items():
        seconds = _mean([r["seconds"] for r in runs])
        speedup = None if seconds is None or base is None else base / seconds
        final, best = _mean([r["final"] for r in runs]), _mean([r["best"] for r in runs])
        print(
            f"| {policy} | {final:.4f} | {best:.4f} | "
            f"{_shown(seconds, '.1f')} | {_shown(_mean([r['rounds'] for r in runs]), '.1f')} | "
            f"{_mean([r['round_seconds'] for r in runs]):.2f} | {_shown(speedup, '.2f')}x |"
        )


if __name__ == "__main__":
    main()
