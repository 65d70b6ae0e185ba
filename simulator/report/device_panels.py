"""The device panels: whom the server selected and whose updates counted, by device speed
and by availability; how evenly selections spread over the clients; how long rounds took
on the simulated clock.

Speeds and online shares come from the run's ``devices.json`` (written when a run starts
with devices: a system model, a trace or a selection policy), the picks from the
``selected`` and ``clients`` lists of its metrics rows. ``devices.json`` is read as data a
user may have edited or been handed: at most ``MAX_DEVICES_BYTES``, every list checked for
type, length and finite values. A file that fails is one logged warning and the panels
that need it are skipped; the report is still written.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from clients.errors import FedsimError
from simulator.config.yaml_input import one_line
from simulator.report.charts import Axis, Line, finish_axes, new_axes, rounds_chart, run_colour, runs_with
from simulator.report.runs import RunRecord
from simulator.report.settings import config_value
from simulator.rundir.devices import DEVICES_FORMAT, DEVICES_NAME, MAX_DEVICES_BYTES
from simulator.rundir.files import read_json

log = logging.getLogger("fedsim")

SPEED_DECILES = 10
AVAILABILITY_BINS = 5  # online share in [0, 0.2), [0.2, 0.4), ..., [0.8, 1]
PICKS = (("selected", "selected", "-"), ("clients", "counted", "--"))  # row key, legend word, line


@dataclass(frozen=True)
class DeviceRecord:
    """What the device panels read from one run, checked once per report.

    ``picks`` maps "selected" and "clients" to one (k,) id array per row that logged the
    list (absent when no row did, or a row names a client outside the population).
    ``speed`` (N,) samples per simulated second and ``online_share`` (N,) in [0, 1] are
    devices.json's, None without a readable one."""

    population: int
    picks: dict[str, list[np.ndarray]]
    speed: np.ndarray | None = None
    online_share: np.ndarray | None = None


_records: dict[int, DeviceRecord | None] = {}  # by id(run), for as long as the run object lives


def device_record(run: RunRecord) -> DeviceRecord | None:
    """The run's DeviceRecord (None without a known population), read once per RunRecord:
    the four panels share it, so a damaged file is one warning, not four."""
    key = id(run)
    if key not in _records:
        _records[key] = _read_record(run)
        weakref.finalize(run, _records.pop, key, None)
    return _records[key]


@dataclass(frozen=True)
class DeviceFile:
    """devices.json's numbers the panels chart: speed (N,) and online_share (N,) or None."""

    speed: np.ndarray
    online_share: np.ndarray | None


def _read_record(run: RunRecord) -> DeviceRecord | None:
    devices = _read_devices(run)
    population = len(devices.speed) if devices else config_value(run.config, "data.num_clients")
    if not isinstance(population, int) or isinstance(population, bool) or population < 1:
        return None
    try:
        picks = {key: ids for key, _, _ in PICKS if (ids := _picked_ids(run, key, population))}
    except ValueError as exc:
        log.warning("%s: %s; the device panels are skipped for this run", run.run_dir, exc)
        return None
    if devices is None:
        return DeviceRecord(population, picks)
    return DeviceRecord(population, picks, devices.speed, devices.online_share)


def _read_devices(run: RunRecord) -> DeviceFile | None:
    path = run.run_dir / DEVICES_NAME
    if not os.path.lexists(path):
        return None
    try:
        devices = parse_devices(read_json(path, limit=MAX_DEVICES_BYTES))
        expected = config_value(run.config, "data.num_clients")
        if isinstance(expected, int) and expected != len(devices.speed):
            raise ValueError(f"lists {len(devices.speed)} clients where config.yaml has {expected}")
    except (FedsimError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        log.warning("%s: unreadable (%s); its device panels are skipped", path, one_line(str(exc), 200))
        return None
    return devices


def parse_devices(data: Any) -> DeviceFile:
    """devices.json's parsed JSON, checked; ValueError naming what is wrong (format, a
    list's type or length, a value that is not finite or out of range)."""
    if not isinstance(data, dict) or data.get("format") != DEVICES_FORMAT:
        raise ValueError(f"not a JSON object with format {DEVICES_FORMAT!r}")
    n = data.get("num_clients")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"num_clients is {one_line(repr(n), 40)}, not a positive integer")
    speed = _numbers(data, "speed", n, low=0.0, high=math.inf, low_open=True)
    for key in ("compute_ms_per_sample", "bandwidth_kbps"):
        if data.get(key) is not None:  # not charted, checked so that a damaged file shows
            _numbers(data, key, n, low=0.0, high=math.inf)
    share = None
    if data.get("online_share") is not None:
        share = _numbers(data, "online_share", n, low=0.0, high=1.0)
    return DeviceFile(speed, share)


def _numbers(data: dict, key: str, n: int, low: float, high: float, low_open: bool = False) -> np.ndarray:
    """data[key] as a float64 (n,) array, every value finite and in [low, high] (low
    excluded with ``low_open``)."""
    values = data.get(key)
    if not isinstance(values, list) or len(values) != n:
        length = f"{len(values)} values" if isinstance(values, list) else type(values).__name__
        raise ValueError(f"{key} must be a list of num_clients = {n} numbers, not {length}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{key} holds something that is not a number")
    try:
        array = np.array(values, dtype=np.float64)
    except OverflowError:  # an integer past float64's range
        raise ValueError(f"{key} holds a number too large for a float") from None
    bad = ~np.isfinite(array) | (array < low) | (array > high) | ((array == low) & low_open)
    if bad.any():
        i = int(np.argmax(bad))
        allowed = f"{'above' if low_open else 'at least'} {low:g}"
        allowed += "" if high == math.inf else f", at most {high:g}"
        raise ValueError(f"{key}[{i}] is {values[i]!r}; each must be finite and {allowed}")
    return array


def _picked_ids(run: RunRecord, key: str, population: int) -> list[np.ndarray]:
    """One int64 id array per row that logged ``key``; ValueError for an id that is not
    one of the population's."""
    picked = []
    for row in run.rows:
        ids = row.get(key)
        if not isinstance(ids, list):
            continue
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < population for c in ids):
            raise ValueError(
                f"metrics.jsonl round {row['round']}: {key!r} names a client that is not one of "
                f"the {population} clients (ids 0 to {population - 1})"
            )
        picked.append(np.array(ids, dtype=np.int64))
    return picked


def group_rates(groups: np.ndarray, num_groups: int, rounds: list[np.ndarray]) -> np.ndarray:
    """(num_groups,) each group's share of all the rounds' picks over its share of the
    clients: 1 where a group is picked in proportion to its size (uniform selection, on
    average), nan for a group without clients. groups: (N,) each client's group."""
    picked = np.concatenate(rounds) if rounds else np.zeros(0, np.int64)
    per_client = np.bincount(picked, minlength=len(groups))
    picks = np.bincount(groups, weights=per_client, minlength=num_groups)
    sizes = np.bincount(groups, minlength=num_groups)
    total = picks.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sizes > 0, (picks / total) / (sizes / len(groups)), np.nan)


def speed_deciles(speed: np.ndarray) -> np.ndarray:
    """(N,) each client's speed decile, 0 = the slowest tenth: ranked by speed (ties by
    id), the client at rank r is in decile floor(10 r / N), so deciles differ in size by
    at most one client."""
    ranks = np.empty(len(speed), dtype=np.int64)
    ranks[np.argsort(speed, kind="stable")] = np.arange(len(speed))
    return ranks * SPEED_DECILES // len(speed)


def availability_bins(share: np.ndarray) -> np.ndarray:
    """(N,) each client's bin of online share: 0 for [0, 0.2), ..., 4 for [0.8, 1]."""
    return np.minimum(np.floor(share * AVAILABILITY_BINS), AVAILABILITY_BINS - 1).astype(np.int64)


def speed_decile_rates(run: RunRecord) -> dict[str, np.ndarray]:
    """{"selected" | "clients": (10,) group_rates by speed decile} for what the run logged;
    {} without readable speeds."""
    record = device_record(run)
    if record is None or record.speed is None:
        return {}
    deciles = speed_deciles(record.speed)
    return {key: group_rates(deciles, SPEED_DECILES, ids) for key, ids in record.picks.items()}


def availability_rates(run: RunRecord) -> dict[str, np.ndarray]:
    """{"selected" | "clients": (5,) group_rates by online-share bin}; {} unless the
    clients' online shares are known and differ."""
    record = device_record(run)
    if record is None or record.online_share is None or np.ptp(record.online_share) == 0:
        return {}
    bins = availability_bins(record.online_share)
    return {key: group_rates(bins, AVAILABILITY_BINS, ids) for key, ids in record.picks.items()}


def _rates_chart(
    runs: list[RunRecord],
    labels: list[str],
    rates_of: Callable[[RunRecord], dict[str, np.ndarray]],
    ticks: list[str],
    title: str,
    xlabel: str,
) -> Figure | None:
    """Per run, selected (solid) and counted (dashed) picks per group, relative to the
    groups' sizes; None when no run has rates."""
    tracked = [(rates, label) for run, label in zip(runs, labels, strict=True) if (rates := rates_of(run))]
    if not tracked:
        return None
    fig, ax = new_axes()
    ax.axhline(1.0, color="grey", linewidth=1, linestyle=":", label="in proportion to the clients")
    xs = np.arange(1, len(ticks) + 1)
    for i, (rates, label) in enumerate(tracked):
        for key, word, style in PICKS:
            if key in rates:
                colour, caption = run_colour(i, len(tracked)), f"{label}: {word}"
                ax.plot(xs, rates[key], style, marker="o", markersize=4, color=colour, label=caption)
    ax.set_xticks(xs, ticks, fontsize=9)
    ax.set_ylim(bottom=0)
    finish_axes(ax, title, xlabel, "Picks per client of the group\n(relative to the average client)")
    return fig


participation_by_speed = functools.partial(
    _rates_chart,
    rates_of=speed_decile_rates,
    ticks=[str(d) for d in range(1, SPEED_DECILES + 1)],
    title="Participation by device speed (selected solid, counted dashed)",
    xlabel="Speed decile (1 = slowest tenth of the clients)",
)


participation_by_availability = functools.partial(
    _rates_chart,
    rates_of=availability_rates,
    ticks=[
        f"{b / AVAILABILITY_BINS:.1f}–{(b + 1) / AVAILABILITY_BINS:.1f}" for b in range(AVAILABILITY_BINS)
    ],
    title="Participation by availability (selected solid, counted dashed)",
    xlabel="Share of the time the client is online",
)


def selection_counts(run: RunRecord) -> tuple[np.ndarray, str] | None:
    """((N,) picks of each client over the rounds, never-picked clients 0; which picks) for
    a run with devices: its selections ("selected"), or where it logged none (uniform
    selection on parametric devices, where every selected client trains unless a deadline,
    dropout or over-selection cuts it) its counted participations ("clients"); else None."""
    record = device_record(run)
    if record is None or not os.path.lexists(run.run_dir / DEVICES_NAME):
        return None
    key = next((key for key, _, _ in PICKS if key in record.picks), None)
    if key is None:
        return None
    counts = np.bincount(np.concatenate(record.picks[key]), minlength=record.population)
    return counts, key


def jain_index(counts: np.ndarray) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2) of counts (n,): 1 when every client
    is picked equally often, 1/n when one client takes every pick; nan for no picks."""
    x = np.asarray(counts, dtype=np.float64)
    squares = float(np.dot(x, x))
    return float(x.sum() ** 2 / (len(x) * squares)) if squares > 0 else math.nan


def _lorenz(ax: Axes, counts: np.ndarray, colour: str, label: str) -> None:
    shares = np.concatenate(([0.0], np.cumsum(np.sort(counts)) / counts.sum()))
    ax.plot(np.linspace(0.0, 100.0, len(shares)), 100.0 * shares, color=colour, linewidth=1.8, label=label)


def selection_fairness(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Lorenz curve per run of selections (or counted participations) per client, Jain's
    index in the legend."""
    picked = [(selection_counts(run), label) for run, label in zip(runs, labels, strict=True)]
    tracked = [(found, label) for found, label in picked if found is not None and found[0].sum() > 0]
    if not tracked:
        return None
    fig, ax = new_axes()
    ax.plot([0, 100], [0, 100], color="grey", linewidth=1, linestyle=":", label="every client equally often")
    for i, ((counts, key), label) in enumerate(tracked):
        what = "selections" if key == "selected" else "participations"
        spread = f"Jain {jain_index(counts):.3f}, {counts.min()}–{counts.max()} {what} per client"
        _lorenz(ax, counts, run_colour(i, len(tracked)), f"{label}: {spread}")
    title = "Fairness of selection: Lorenz curve of selections per client"
    xlabel = "Clients, least picked first (%)"
    finish_axes(ax, title, xlabel, "Share of the run's picks (%)")
    return fig


_round_length_chart = functools.partial(
    rounds_chart,
    title="Round length on the simulated clock",
    axes=(Axis("Simulated seconds (async: per server step)", (Line("simulated_seconds"),)),),
)


def round_length(runs: list[RunRecord], labels: list[str]) -> Figure | None:
    """Simulated seconds per round of the runs with devices (a devices.json, readable or
    not): without them every client has the same speed and the chart says little."""
    tracked = runs_with(runs, labels, lambda run: os.path.lexists(run.run_dir / DEVICES_NAME))
    return _round_length_chart([r for r, _ in tracked], [lab for _, lab in tracked]) if tracked else None
