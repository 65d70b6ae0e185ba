"""Terminal progress: a live bar on a terminal, one plain line per round otherwise."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from simulator.report.formatting import TEXT_MISSING, binary_size, fixed


class RoundProgress:
    """Shows round i/N, test accuracy (a classification run's), losses, seconds per round and ETA."""

    def __init__(self, total_rounds: int, first_round: int, name: str, quiet: bool = False):
        self.quiet = quiet
        self.total = total_rounds
        self.console = Console(stderr=False)
        self.live = self.console.is_terminal and not quiet
        self._start = time.perf_counter()
        self._done_here = 0
        self._progress = None
        if self.live:
            self._progress = _bar(self.console)
            self._task = self._progress.add_task(
                name, total=total_rounds, completed=first_round - 1, stats=""
            )
            self._progress.start()

    def update(self, row: dict) -> None:
        if self.quiet:
            return
        self._done_here += 1
        per_round = (time.perf_counter() - self._start) / self._done_here
        eta = per_round * (self.total - row["round"])
        accuracy = f"acc {fixed(row['test_accuracy'])}  " if "test_accuracy" in row else ""
        stats = (
            f"{accuracy}test loss {fixed(row['test_loss'])}  "
            f"train loss {fixed(row['train_loss'])}  {row['seconds']:.2f}s/round"
        )
        if row.get("rejected_updates"):  # train loss is over the accepted updates only
            stats += f"  {row['rejected_updates']}/{row['num_clients']} updates rejected"
        if self._progress is not None:
            self._progress.update(self._task, completed=row["round"], stats=stats)
        else:
            print(f"round {row['round']}/{self.total}  {stats}  eta {eta:.0f}s", flush=True)

    def working(self, text: str) -> None:
        """What the round in progress waits for, e.g. ``step 12: 3/5 arrivals``: the live
        line moves. Nothing off a terminal, where each round prints its own line."""
        if self._progress is not None:
            self._progress.update(self._task, stats=text, refresh=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()

    def message(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stdout, flush=True)


class StepProgress:
    """Progress through a known number of steps that are not rounds (validating a sweep's
    runs, prune's masks and fine-tune rounds): a live bar on a terminal, as rounds have;
    otherwise a plain line at every tenth of the way."""

    PLAIN_LINES = 10

    def __init__(self, total: int, name: str, quiet: bool = False):
        self.total, self.name, self.quiet = max(total, 1), name, quiet
        self.done = 0
        self._tenths = 0  # plain lines printed
        console = Console(stderr=False)
        self._progress = None
        if console.is_terminal and not quiet:
            self._progress = _bar(console)
            self._task = self._progress.add_task(name, total=self.total, stats="")
            self._progress.start()

    def advance(self, note: str = "", steps: int = 1) -> None:
        """``steps`` more done; ``note`` says what the latest was."""
        self.done += steps
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, stats=note)
        elif not self.quiet and self.done * self.PLAIN_LINES // self.total > self._tenths:
            self._tenths = self.done * self.PLAIN_LINES // self.total
            print(f"{self.name} {self.done:,}/{self.total:,}  {note}".rstrip(), flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _traffic(count: int) -> str:
    return binary_size(count, decimals=1, largest="GiB")


def _best_text(best: float | None, summary: dict) -> str:
    """The best score and the round it was reached in."""
    return TEXT_MISSING if best is None else f"{best:.4f} (round {summary['best_round']})"


def summary_table(summary: dict, run_dir: Path) -> None:
    """The end-of-run table: outcome, accuracy (loss under regression), time, traffic,
    privacy, where it all is."""
    table = Table(title=f"{summary['name']}: {summary['status']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [("rounds", f"{summary['rounds_completed']} of {summary['rounds']}")]
    if "best_test_loss" in summary:  # regression: no accuracy
        rows.append(("best test loss", _best_text(summary["best_test_loss"], summary)))
    else:
        rows += [
            ("final test accuracy", fixed(summary.get("final_test_accuracy"))),
            ("best test accuracy", _best_text(summary.get("best_test_accuracy"), summary)),
        ]
    rows += [
        ("final test loss", fixed(summary.get("final_test_loss"))),
        ("wall-clock", f"{summary['total_seconds']:.1f} s"),
        (
            "bytes up / down",
            f"{_traffic(summary['total_bytes_up'])} / {_traffic(summary['total_bytes_down'])}",
        ),
    ]
    if "epsilon" in summary:
        rows.append(("privacy", f"ε = {summary['epsilon']:.3f}"))
    if summary.get("device"):
        rows.append(("device", summary["device"]))
    rows += [("run directory", str(run_dir)), ("report", f"fedsim report {run_dir}")]
    for key, value in rows:
        table.add_row(key, value)
    Console(stderr=False, soft_wrap=True).print(table)


def _bar(console: Console) -> Progress:
    """The live bar rounds and steps share: name, bar, done/total, stats, time left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeRemainingColumn(),
        console=console,
    )
