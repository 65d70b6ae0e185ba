"""Driver memory against population size: peak RSS of the driver process for
1k, 10k and 100k registered clients (data generated on the workers), 1,000
clients per round (all of them for 1k), 2 rounds each, each in a fresh process.

    python bench/population.py [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(num_clients: int) -> None:
    sys.path.insert(0, str(ROOT))
    from simulator import Simulation

    overrides = {
        "data.num_clients": num_clients,
        "rounds": 2,
        "server.clients_per_round": min(1000, num_clients),
    }
    config = ROOT / "configs" / "population_100k.yaml"
    before = _current_rss_kib()
    with tempfile.TemporaryDirectory() as tmp:
        Simulation.from_yaml(config, overrides, run_dir=Path(tmp) / "r").run()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _current_rss_kib() - before)  # KiB on Linux


def _current_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one_run(args.one)
        return
    print(f"{'clients':>8} {'driver peak RSS (MiB)':>22} {'RSS growth over the run (MiB)':>30}")
    for size in (int(s) for s in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size)], capture_output=True, text=True, check=True
        )
        peak, growth = (int(v) for v in out.stdout.split()[-2:])
        print(f"{size:>8} {peak / 1024:>22.1f} {growth / 1024:>30.1f}")


if __name__ == "__main__":
    main()
