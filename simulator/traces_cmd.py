"""``fedsim traces make|describe``: synthetic device traces, and a summary of any trace file.

``make OUT_DIR`` writes OUT_DIR/capacity.jsonl and OUT_DIR/availability.jsonl (fedsim's
format, docs/traces.md) drawn from the distributions of server.traces.SyntheticDistribution;
``describe FILE [FILE]`` prints quantiles of speed and bandwidth or the fraction of devices
online by hour, and with ``--png`` draws them.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from clients.errors import FedsimError
from server.traces import SyntheticDistribution, describe_files, make_traces

ACTIONS = ("make", "describe")
DEFAULT_DEVICES = 1000

# make's distribution flags: --compute-median sets SyntheticDistribution.compute_median, ...
DISTRIBUTION_HELP = {
    "compute_median": "median inference ms per sample",
    "compute_sigma": "sigma of log compute ms",
    "bandwidth_median": "median bandwidth, kbps",
    "bandwidth_sigma": "sigma of log bandwidth",
    "period": "seconds of one availability period",
    "online_mean": "mean share of the period a device is online (Beta)",
    "online_concentration": "Beta's a + b: larger, shares closer to the mean",
    "peak_hour": "hour of the period (0-24) when most devices are online",
    "peak_spread_hours": "standard deviation of the devices' peak hours",
}


def flag(name: str) -> str:
    """The option that sets a SyntheticDistribution field: compute_median -> --compute-median."""
    return "--" + name.replace("_", "-")


def cmd_traces(args: argparse.Namespace) -> int:
    distribution = {
        item.name: getattr(args, item.name)
        for item in fields(SyntheticDistribution)
        if getattr(args, item.name) is not None
    }
    if args.action == "make":
        if len(args.paths) != 1 or args.png is not None:
            extra = "--png" if args.png is not None else " ".join(map(str, args.paths[1:]))
            raise FedsimError(f"traces make takes one OUT_DIR and make's options; {extra} is not one of them")
        devices = DEFAULT_DEVICES if args.devices is None else args.devices
        seed = 0 if args.seed is None else args.seed
        for path in make_traces(args.paths[0], devices, seed, **distribution):
            print(f"wrote {path}")
        return 0
    used = [flag(name) for name in ("devices", "seed", *distribution) if getattr(args, name) is not None]
    if used or len(args.paths) > 2:
        extra = ", ".join(used) or f"{len(args.paths)} files"
        raise FedsimError(f"traces describe takes one or two trace FILEs and --png; not {extra}")
    print(describe_files(list(args.paths), args.png))
    return 0


def arguments(arg) -> tuple:
    """The ``traces`` command's arguments, built with cli's ``_arg``."""
    return (
        arg("action", choices=ACTIONS, help="make: write synthetic traces; describe: summarise trace files"),
        arg("paths", nargs="+", type=Path, metavar="PATH", help="make: OUT_DIR; describe: FILE [FILE]"),
        arg("--png", type=Path, help="describe: also draw the distributions into this PNG"),
        arg("--devices", type=int, help=f"make: devices to generate (default {DEFAULT_DEVICES})"),
        arg("--seed", type=int, help="make: seed of the draws (default 0)"),
        *(
            arg(
                flag(f.name),
                type=float,
                metavar="X",
                help=f"make: {DISTRIBUTION_HELP[f.name]} (default {f.default})",
            )
            for f in fields(SyntheticDistribution)
        ),
    )
