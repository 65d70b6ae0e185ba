"""The ``fedsim`` command line: run, validate, report.

Exit codes: 0 done; 1 a sweep with failed runs, or failed gradient checks; 2 bad
input (one clear line, a traceback only with ``--debug``); 3 a run that diverged
(stopped learning anything finite); 130 Ctrl-C, which leaves a resumable run
directory.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.errors import FedsimError, RunDiverged
from server.pruning import PRUNING_SCORES, SCOPES
from simulator.config.yaml_input import one_line, show
from simulator.traces_cmd import arguments as traces_arguments
from simulator.traces_cmd import cmd_traces

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3  # nothing finite learned, or the loss exploded (server.stop_after_* rules)
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsim", description="Federated training simulator on Ray.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and Ray's own logs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command_parser = sub.add_parser(name, help=command.help)
        for argument in command.arguments:  # a copy each: --set's default [] is every parse's own
            command_parser.add_argument(*argument.flags, **copy.deepcopy(argument.options))
        # --debug after the command works as before it; added last, so that argparse names
        # it after the command's own options (in "--d could match --data, --debug").
        command_parser.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser


@dataclass(frozen=True)
class Argument:
    """One ``add_argument`` call: its flags (or positional name) and options."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def _arg(*flags: str, **options: Any) -> Argument:
    return Argument(flags, options)


@dataclass(frozen=True)
class Command:
    """A subcommand: its line in ``fedsim --help``, what runs it, and its arguments."""

    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: tuple[Argument, ...]


OVERRIDES = _arg(
    "--set",
    dest="overrides",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a config value by dotted key, e.g. client.lr=0.05 (repeatable)",
)


def _run_overrides(args: argparse.Namespace) -> list[str | tuple[str, str]]:
    overrides: list[str | tuple[str, str]] = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"runtime.workers={args.workers}")
    if args.address is not None:
        overrides.append(f"runtime.address={args.address}")
    if args.name is not None:  # a name is a string as typed ("2024", "yes"), not YAML
        overrides.append(("name", args.name))
    return overrides


def cmd_run(args: argparse.Namespace) -> int:
    from simulator.config.loading import load_config

    overrides = _run_overrides(args)
    options = {"quiet": args.quiet, "debug": args.debug}
    if args.resume is not None:
        if args.config is not None or args.out is not None:
            raise FedsimError(
                "fedsim run --resume RUN_DIR takes its config and directory from RUN_DIR; drop CONFIG/--out"
            )
        from simulator.driver.simulation import Simulation

        return _run(Simulation.resume_from(args.resume, overrides, **options), args.quiet)
    if args.config is None:
        raise FedsimError("fedsim run: give a CONFIG file (or --resume RUN_DIR)")
    cfg = load_config(args.config, overrides)
    if args.out is not None:  # a taken --out is one error before Ray starts
        from simulator.rundir.directory import check_new_run_dir

        check_new_run_dir(args.out)
    from simulator.driver.cluster import ray_starting, user_py_modules

    # Ray's processes come up while this process imports torch and the simulator (seconds each).
    with ray_starting(cfg.runtime.address, args.debug, user_py_modules(cfg)):
        from simulator.driver.simulation import Simulation

        return _run(Simulation(cfg, args.out, **options), args.quiet)


def _run(sim, quiet: bool) -> int:
    try:
        history = sim.run()
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: fedsim run --resume {sim.run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunDiverged as exc:
        print(f"fedsim: run {sim.run_dir} {one_line(str(exc))}", file=sys.stderr)
        return EXIT_DIVERGED
    _print_summary(history.summary, history.run_dir, quiet)
    return 0


def _print_summary(summary: dict, run_dir: Path, quiet: bool) -> None:
    if quiet:
        return
    from simulator.report.progress import summary_table

    summary_table(summary, run_dir)


def cmd_validate(args: argparse.Namespace) -> int:
    from simulator.config.loading import dump_yaml, load_config

    cfg = load_config(args.config, args.overrides)
    data = _data_summary(cfg) if args.data else None  # nothing is called valid before the data are
    print(dump_yaml(cfg), end="")
    print(f"# valid; {cfg.sampled_per_round()} of {cfg.data.num_clients} clients per round", file=sys.stderr)
    if data is not None:
        print(f"# {data}", file=sys.stderr)
    return 0


def _data_summary(cfg) -> str:
    """What a run of ``cfg`` would train on, built as the run builds it (without Ray)."""
    import numpy as np

    from simulator.config.build import build_run
    from simulator.driver.cluster import user_py_modules

    user_py_modules(cfg)  # a path entry's code is imported from where the run would ship it
    setup = build_run(cfg)
    model = f"model: {setup.spec.layout().size:,} parameters"
    test = f"{len(setup.dataset.y_test):,} test rows"
    if setup.population is not None:
        per_client = setup.population.train_size()
        return f"data: generated on the workers, {per_client} training rows per client, {test}; {model}"
    low, mid, high = (int(v) for v in np.percentile(setup.shards.sizes(), [0, 50, 100]))
    return (
        f"data: {setup.dataset.name}, {len(setup.dataset.y_train):,} training rows over "
        f"{cfg.data.num_clients:,} clients (min/median/max {low}/{mid}/{high}), {test}; {model}"
    )


def cmd_report(args: argparse.Namespace) -> int:
    from simulator.report.page import write_report
    from simulator.rundir.directory import running_pid

    for run_dir in args.run_dirs:
        if run_dir.exists() and not run_dir.is_dir():
            raise FedsimError(f"report {run_dir}: a file, not a run directory; give the folder a run wrote")
    out = args.out or args.run_dirs[0]
    if out.exists() and not out.is_dir():
        raise FedsimError(f"report --out {out} is an existing file; give a folder")
    path = write_report(list(args.run_dirs), out, target_accuracy=args.target)
    for run_dir in args.run_dirs:
        pid = running_pid(run_dir)
        if pid is not None:
            print(f"fedsim: {run_dir} is still running (pid {pid}); the report shows its rounds so far")
    print(f"wrote {path}")
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from clients.numpy_engine.gradcheck import MODEL_CASES, run_checks

    if args.model is not None and args.model not in MODEL_CASES:
        raise FedsimError(
            f"--model: {args.model!r} is not a built-in model; choose one of {', '.join(MODEL_CASES)}"
        )
    results = run_checks(args.engine, args.model)
    print(f"{'target':<24} {'kind':<6} {'check':<19} {'rel. error':>10} {'tolerance':>9}  result")
    for r in results:
        verdict = "ok" if r.passed else "FAIL"
        print(f"{r.target:<24} {r.kind:<6} {r.check:<19} {r.error:>10.2e} {r.tolerance:>9.0e}  {verdict}")
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FedsimError(f"{flag}: {show(text)} is not a comma-separated list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise FedsimError(f"{flag}: {show(text)} holds a value that is not a finite number")
    return values


def cmd_prune(args: argparse.Namespace) -> int:
    from simulator.driver.prune import PruneRequest, prune_run

    if not (args.run_dir / "config.yaml").is_file():
        raise FedsimError(f"{args.run_dir}: not a run directory (no config.yaml)")
    if args.finetune_rounds < 0:
        raise FedsimError(f"--finetune-rounds: {args.finetune_rounds} is not allowed; must be >= 0")
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    sparsities = _floats(args.sparsity, "--sparsity")
    if not methods or not sparsities:
        flag, value = ("--method", args.method) if not methods else ("--sparsity", args.sparsity)
        raise FedsimError(f"{flag}: {show(value)} names nothing; give a comma-separated list")
    request = PruneRequest(
        run_dir=args.run_dir,
        methods=methods,
        sparsities=sparsities,
        finetune_rounds=args.finetune_rounds,
        scope=args.scope,
        out_dir=args.out,
        quiet=False,
    )
    path = prune_run(request)
    _print_prune_table(path)
    return 0


def _print_prune_table(path: Path) -> None:
    from simulator.rundir.files import read_json

    prune = read_json(path, limit=64 << 20)
    tuned = prune["finetune_rounds"] > 0
    score = "accuracy" if "test_accuracy" in prune["baseline"] else "loss"  # regression: loss only
    print(f"unpruned test {score} {prune['baseline'][f'test_{score}']:.4f}")
    print(f"{'method':<18} {'sparsity':>8} {score:>9}" + (f" {'fine-tuned':>10}" if tuned else ""))
    for r in prune["results"]:
        extra = f" {r[f'finetuned_test_{score}']:>10.4f}" if tuned else ""
        print(f"{r['method']:<18} {r['sparsity']:>8.2f} {r[f'test_{score}']:>9.4f}{extra}")
    print(f"wrote {path}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from simulator.driver.sweep import SweepInterrupted, SweepRequest, run_sweep

    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise FedsimError(f"--max-concurrent: {args.max_concurrent} is not allowed; must be >= 1")
    request = SweepRequest(
        config=args.config,
        grid=args.grid,
        repeat_seeds=args.repeat_seeds,
        overrides=args.overrides,
        out=args.out,
        quiet=args.quiet,
        debug=args.debug,
        max_concurrent=args.max_concurrent,
        on_run_end=None if args.quiet else _print_sweep_run,
    )
    try:
        result = run_sweep(request)
    except SweepInterrupted as stopped:
        print(f"\ninterrupted; {stopped.sweep_dir / 'sweep.json'} lists the finished runs", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(result.table())
    print(f"sweep directory {result.sweep_dir} (comparison.html, sweep.json)")
    if result.failed:
        print(
            f"fedsim: {len(result.failed)} of {len(result.runs)} runs failed; see sweep.json", file=sys.stderr
        )
        return 1
    return 0


def _print_sweep_run(run) -> None:
    error = f": {run.error}" if run.error else ""
    if run.final_test_accuracy is None and run.final_test_loss is not None:  # a regression run
        print(f"{run.status}: {run.directory} (final test loss {run.final_test_loss:.4f}){error}", flush=True)
        return
    acc = "-" if run.final_test_accuracy is None else f"{run.final_test_accuracy:.4f}"
    print(f"{run.status}: {run.directory} (final test accuracy {acc}){error}", flush=True)


# In the order ``fedsim --help`` lists them.
COMMANDS = {
    "run": Command("train a config", cmd_run, (
        _arg("config", nargs="?", type=Path, help="YAML config (optional with --resume)"),
        OVERRIDES,
        _arg("--workers", type=int, help="worker actors (overrides runtime.workers)"),
        _arg("--address", help="Ray cluster address: auto, HOST:PORT or ray://HOST:PORT"),
        _arg("--out", type=Path, help="run directory to create (default: runtime.out_dir/NAME-TIME)"),
        _arg("--name", help="run name (overrides name)"),
        _arg("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint"),
        _arg("--quiet", action="store_true", help="no progress output"),
    )),
    "validate": Command("check a config and print it resolved", cmd_validate, (
        _arg("config", type=Path),
        OVERRIDES,
        _arg(
            "--data", action="store_true",
            help="also load the dataset, partition it and build the model (no Ray); print their sizes",
        ),
    )),
    "report": Command("charts and report.html for run directories", cmd_report, (
        _arg("run_dirs", nargs="+", type=Path),
        _arg("--out", type=Path, help="output folder (default: the first run directory)"),
        _arg("--target", type=float, help="accuracy whose rounds-to-target is reported, e.g. 0.9"),
    )),
    "prune": Command("which weights matter: prune a run's model and evaluate", cmd_prune, (
        _arg("run_dir", type=Path),
        _arg(
            "--method", default=",".join(PRUNING_SCORES), help=f"comma-separated: {', '.join(PRUNING_SCORES)}"
        ),
        _arg("--sparsity", default="0.5,0.8,0.9,0.95,0.99", help="comma-separated fractions pruned"),
        _arg("--finetune-rounds", type=int, default=0, help="federated rounds under each mask"),
        _arg("--scope", choices=SCOPES, default="global"),
        _arg("--out", type=Path, help="output folder (default: the run directory)"),
    )),
    "sweep": Command("run a grid of overrides (x seeds) and compare the runs", cmd_sweep, (
        _arg("config", type=Path),
        _arg(
            "--grid", action="append", required=True, metavar="KEY=V1,V2,...",
            help="a dotted key and its values (YAML scalars; no commas inside a value); repeatable: "
            "the grid is the Cartesian product",
        ),
        _arg("--repeat-seeds", type=int, default=1, metavar="N", help="seeds seed..seed+N-1 per point"),
        OVERRIDES,
        _arg("--out", type=Path, help="sweep directory to create (default: runtime.out_dir/NAME-sweep-TIME)"),
        _arg("--max-concurrent", type=int, metavar="N", help="at most N runs at once (default: what fits)"),
        _arg("--quiet", action="store_true", help="no per-run progress; the final table is still printed"),
    )),
    "gradcheck": Command("check every layer's and model's gradients", cmd_gradcheck, (
        _arg("--model", help="check only this built-in model (default: every layer and model)"),
        _arg("--engine", choices=("numpy", "torch"), default="numpy", help="engine whose gradients to check"),
    )),
    "traces": Command(
        "device traces: make synthetic ones (make OUT_DIR), summarise files (describe FILE [FILE])",
        cmd_traces, traces_arguments(_arg),
    ),
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.debug:
        # Stopping at the first failed work item leaves its siblings' copies of the same
        # error unread; Ray would print each as a traceback under the one-line error.
        os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    try:
        return COMMANDS[args.command].run(args)
    except FedsimError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"fedsim: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a path the system refuses (/proc, read-only, full disk): the user's to fix
        if args.debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"fedsim: error: {one_line(where + (exc.strerror or str(exc)))}", file=sys.stderr)
        return EXIT_BAD_INPUT


def entry_point() -> None:
    sys.exit(main())
