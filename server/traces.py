"""Device traces: each device's compute speed and bandwidth, and when it is online.

Two formats are read, told apart by content (docs/traces.md describes both):

- FedScale's (``client_device_capacity``, ``client_behave_trace``): pickled dicts. Every
  opcode is checked first (PLAIN_OPCODES: those that build dicts, lists, numbers, strings,
  bytes, booleans and None); then the file is read by an unpickler whose ``find_class``
  refuses every global and which has no persistent ids or out-of-band buffers, so even
  past the check nothing but plain data could be built (REDUCE, BUILD and NEWOBJ need a
  callable, which only a global gives). Anything else is one DataError before anything
  runs. This is the one place fedsim unpickles a file, as issue 23 asks.
- fedsim's own: JSON Lines, one device an object a line.

Availability is periodic: a device is online at time t when t mod period lies in one of
its windows, edges included (FedScale's ``ClientMetadata.is_active``).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import io
import json
import math
import os
import pickle
import pickletools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from clients.errors import ConfigError, DataError, FedsimError
from clients.files import read_regular
from clients.streams import Stream

MAX_TRACE_BYTES = 2 << 30  # FedScale's largest file is a few hundred MB
# What a trace may expand into (a pickle's aliases can make a small file describe much):
# FedScale's traces hold about 500,000 profiles and a few windows each.
MAX_PROFILES = 5_000_000
MAX_WINDOWS = 100_000_000
# Ranges that keep every trip time finite: a sample at most 10^7 ms (almost three hours),
# a link of at least 1 bit a second, a period of at most 10^12 s.
COMPUTE_MS_RANGE = (0.0, 1e7)
BANDWIDTH_KBPS_RANGE = (1e-3, 1e12)
PERIOD_RANGE = (0.0, 1e12)
PICKLE_PROTOCOL_BYTE = 0x80  # the first byte of every pickle of protocol 2 and later
HOURS = 24  # describe's buckets of a period
QUANTILES = (5, 25, 50, 75, 95)
WINDOW_CHUNK = 1 << 20  # windows at a time when describe spreads them over the hours

# (format, kind) -> the record's fields: (compute, bandwidth) or (active, inactive, period).
FIELDS = {
    ("fedscale", "capacity"): ("computation", "communication"),
    ("fedscale", "availability"): ("active", "inactive", "finish_time"),
    ("jsonl", "capacity"): ("compute_ms_per_sample", "bandwidth_kbps"),
    ("jsonl", "availability"): ("active", "inactive", "period"),
}
FORMAT_NAMES = {"fedscale": "FedScale pickle", "jsonl": "fedsim JSON Lines"}


@dataclass(frozen=True, eq=False)
class CapacityTrace:
    """Each profile's speed: compute_ms and bandwidth_kbps are (P,) float64, all finite > 0."""

    ids: tuple[str, ...]  # profile keys as str, in file order
    compute_ms: np.ndarray  # (P,) inference milliseconds per sample
    bandwidth_kbps: np.ndarray  # (P,) kilobits (1000 bits) per second
    sha256: str  # of the file's bytes


@dataclass(frozen=True, eq=False)
class AvailabilityTrace:
    """Each profile's online windows within its period, packed: profile p's windows are
    starts[offsets[p]:offsets[p + 1]] to ends[...], sorted, not overlapping, within [0, period[p]]."""

    ids: tuple[str, ...]
    starts: np.ndarray  # (W,) float64
    ends: np.ndarray  # (W,) float64
    offsets: np.ndarray  # (P + 1,) int64
    period: np.ndarray  # (P,) float64 (FedScale's finish_time)
    sha256: str

    def online(self, profiles: np.ndarray, t: float | np.ndarray) -> np.ndarray:
        """(k,) bool: is each profile online at simulated time t (scalar, or (k,) per profile)."""
        profiles = np.asarray(profiles, dtype=np.int64)
        phase = np.mod(np.asarray(t, dtype=np.float64), self.period[profiles]) + 0.0  # -0.0 -> 0.0
        # The last window starting at or before the phase is the only one that can hold it.
        rank = np.searchsorted(self._distinct_starts, phase, side="right")  # 0: before every start
        last = np.searchsorted(self._window_keys, profiles * self._key_stride + rank, side="right") - 1
        mine = last >= self.offsets[profiles]
        return mine & (phase <= self.ends[np.maximum(last, 0)])

    def next_online(self, profiles: np.ndarray, t: float) -> float:
        """The earliest simulated time >= ``t`` at which one of ``profiles`` is online: the
        next opening of one of their windows, periodic in each profile's period."""
        profiles = np.unique(np.asarray(profiles, dtype=np.int64))
        if self.online(profiles, t).any():
            return float(t)
        windows = np.isin(self.window_profile, profiles)
        period = self.period[self.window_profile[windows]]
        ahead = np.mod(self.starts[windows] - np.mod(t, period), period)  # to each window's next start
        when = float(t + ahead.min())
        for _ in range(4):  # the sum may round to just before the window's edge
            if self.online(profiles, when).any():
                break
            when = float(np.nextafter(when, np.inf))
        return when

    def online_fraction(self, profiles: np.ndarray) -> np.ndarray:
        """(k,) float64: share of its period each profile is online."""
        profiles = np.asarray(profiles, dtype=np.int64)
        return self._online_seconds[profiles] / self.period[profiles]

    @functools.cached_property
    def window_profile(self) -> np.ndarray:
        """(W,) int64: the profile each window belongs to."""
        return np.repeat(np.arange(len(self.ids), dtype=np.int64), np.diff(self.offsets))

    @functools.cached_property
    def _distinct_starts(self) -> np.ndarray:
        return np.unique(self.starts)

    @property
    def _key_stride(self) -> int:
        return len(self._distinct_starts) + 1

    @functools.cached_property
    def _window_keys(self) -> np.ndarray:
        """(W,) int64, ascending: (profile, start) as one exact integer, profile * stride +
        1-based rank of the start among all starts; a query's key uses the rank of its phase
        the same way, so one searchsorted finds every query's window with exact comparisons."""
        rank = np.searchsorted(self._distinct_starts, self.starts, side="left") + 1
        return self.window_profile * self._key_stride + rank

    @functools.cached_property
    def _online_seconds(self) -> np.ndarray:
        return np.bincount(self.window_profile, weights=self.ends - self.starts, minlength=len(self.ids))


# ------------------------------------------------------------------ reading


def read_capacity(path: Path) -> CapacityTrace:
    """A capacity trace (FedScale's pickle or fedsim's JSON Lines); one DataError if malformed."""
    return _capacity(_load(Path(path), "capacity"))


def read_availability(path: Path) -> AvailabilityTrace:
    """An availability trace (FedScale's pickle or fedsim's JSON Lines); one DataError if malformed."""
    return _availability(_load(Path(path), "availability"))


@dataclass(frozen=True)
class _Record:
    id: str
    fields: dict
    line: int | None  # fedsim's format: the line it is on
    key: Any = None  # FedScale's: its key in the dict

    @property
    def where(self) -> str:
        """For errors: "line 5" or "profile 17" (made only when needed: 500,000 profiles)."""
        return f"line {self.line}" if self.line is not None else f"profile {_short(self.key)}"


@dataclass(frozen=True)
class _Loaded:
    path: Path
    fmt: str  # "fedscale" | "jsonl"
    kind: str  # "capacity" | "availability"
    records: list[_Record]
    sha256: str


def _load(path: Path, kind: str | None) -> _Loaded:
    """The file's records, checked for shape and duplicate ids; ``kind`` None: told by content."""
    data = _read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    if data[:1] == bytes([PICKLE_PROTOCOL_BYTE]):
        fmt, records = "fedscale", _pickle_records(path, data)
    else:
        fmt, records = "jsonl", _jsonl_records(path, data)
    if not records:
        raise DataError(f"{path}: holds no devices; a trace needs at least one")
    found = _kind_of(path, fmt, records[0])
    if kind is not None and found != kind:
        raise DataError(f"{path}: is a{'n' if found[0] == 'a' else ''} {found} trace, not a {kind} trace")
    if fmt == "jsonl":
        _check_keys(path, records, FIELDS[fmt, found])
    seen: dict[str, _Record] = {}
    for record in records:
        if record.id in seen:
            raise DataError(f"{path}: {record.where}: id {record.id!r} repeats {seen[record.id].where}'s")
        seen[record.id] = record
    return _Loaded(path, fmt, found, records, digest)


def _read_bytes(path: Path) -> bytes:
    """A regular file's bytes (a link to one is followed: the user named it); a FIFO or
    device is refused without waiting on it, a file over MAX_TRACE_BYTES before it is read."""
    return read_regular(path, MAX_TRACE_BYTES, follow_links=True, error=DataError)


class _NotPlainData(Exception):
    """What the unpickler met that is not plain data (a global, a persistent id)."""


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, numbers, strings, bytes, booleans and None, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        raise _NotPlainData(f"a reference to {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _NotPlainData("a persistent id")


# The opcodes that build dicts, lists, numbers, strings, bytes, booleans and None: all a
# FedScale trace needs. Everything else is refused before the unpickler starts: globals
# and calls, persistent ids, buffers, sets, and tuples too, since a dict key made of
# tuples that alias each other takes exponential time to hash while the dict is built.
PLAIN_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "EMPTY_DICT", "DICT", "EMPTY_LIST",
    "LIST", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "INT", "BININT", "BININT1", "BININT2", "LONG",
    "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE",
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "NONE",
    "NEWTRUE", "NEWFALSE", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
})  # fmt: skip


def _check_opcodes(data: bytes) -> None:
    """Refuse a pickle with an opcode outside PLAIN_OPCODES; ValueError if it is malformed."""
    strings: list[str] = []  # the last two pushed: STACK_GLOBAL's module and name
    for opcode, argument, _ in pickletools.genops(data):
        if opcode.name not in PLAIN_OPCODES:
            raise _NotPlainData(_what_opcode_does(opcode.name, argument, strings))
        if isinstance(argument, str):
            strings = [*strings[-1:], argument]


def _what_opcode_does(name: str, argument: Any, strings: list[str]) -> str:
    if name == "GLOBAL" and isinstance(argument, str):
        return f"a reference to {_plain(argument.replace(' ', '.'))}"
    if name == "STACK_GLOBAL" and len(strings) == 2:
        return f"a reference to {_plain('.'.join(strings))}"
    return f"opcode {name}"


def _plain(text: str, limit: int = 60) -> str:
    """text from a file, for an error line: escaped to ASCII (no line breaks), at most limit chars."""
    text = ascii(text)[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pickle_records(path: Path, data: bytes) -> list[_Record]:
    try:
        _check_opcodes(data)
        obj = _PlainDataUnpickler(io.BytesIO(data), buffers=None).load()
    except _NotPlainData as exc:
        raise DataError(
            f"{path}: holds something other than plain data ({exc}); a FedScale trace is a pickled "
            "dict of dicts of numbers, strings and lists, and fedsim builds nothing else"
        ) from None
    except Exception as exc:  # truncated, or opcodes that do not fit together: the file is broken
        raise DataError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
    if type(obj) is not dict:
        raise DataError(f"{path}: holds a pickled {type(obj).__name__}; a FedScale trace is a dict of dicts")
    if len(obj) > MAX_PROFILES:
        raise DataError(f"{path}: {len(obj):,} profiles; at most {MAX_PROFILES:,} are read")
    records = []
    for key, value in obj.items():
        if type(key) not in (int, str) or (type(key) is int and key.bit_length() > 64):
            raise DataError(f"{path}: key {_short(key)}: a key must be a string or an int of at most 64 bits")
        record = _Record(str(key), value, line=None, key=key)
        if type(value) is not dict:
            raise DataError(f"{path}: {record.where}: holds a {type(value).__name__}; each profile is a dict")
        records.append(record)
    return records


def _jsonl_records(path: Path, data: bytes) -> list[_Record]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); fedsim's trace format is JSON Lines"
        ) from None
    records = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            obj = json.loads(line, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{path}: {where}: not a JSON object ({exc}); each line is one device") from None
        if type(obj) is not dict:
            raise DataError(
                f"{path}: {where}: holds a JSON {type(obj).__name__}; each line is one device's object"
            )
        if "id" not in obj:
            raise DataError(f'{path}: {where}: no "id"; each device needs one (a number or a string)')
        device = obj.pop("id")
        if type(device) not in (int, str):
            raise DataError(f"{path}: {where}: id {_short(device)} is not an integer or a string")
        if type(device) is int and device.bit_length() > 64:
            raise DataError(f"{path}: {where}: id {_short(device)} is not an integer of at most 64 bits")
        records.append(_Record(str(device), obj, line=number))
        if len(records) > MAX_PROFILES:
            raise DataError(f"{path}: over {MAX_PROFILES:,} devices; at most that many are read")
    return records


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a trace may hold")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose keys are all different (json keeps the last of two silently)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"key {_plain(key)!r} appears twice")
        obj[key] = value
    return obj


def _kind_of(path: Path, fmt: str, first: _Record) -> str:
    """capacity or availability, by the first record's fields."""
    for kind in ("capacity", "availability"):
        if FIELDS[fmt, kind][0] in first.fields:
            return kind
    wanted = " or ".join(repr(FIELDS[fmt, kind][0]) for kind in ("capacity", "availability"))
    raise DataError(f"{path}: {first.where}: has no {wanted} field; not a device trace")


def _check_keys(path: Path, records: list[_Record], allowed: tuple[str, ...]) -> None:
    """fedsim's format names every field: an unknown one is a typo, not data to skip."""
    valid = ("id", *allowed)
    for record in records:
        for key in record.fields:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise DataError(
                    f"{path}: {record.where}: unknown key {_short(key)}{hint}; valid keys: {', '.join(valid)}"
                )


def _capacity(loaded: _Loaded) -> CapacityTrace:
    compute_key, bandwidth_key = FIELDS[loaded.fmt, "capacity"]
    compute = np.empty(len(loaded.records))
    bandwidth = np.empty(len(loaded.records))
    for i, record in enumerate(loaded.records):
        compute[i] = _positive(loaded.path, record, compute_key, COMPUTE_MS_RANGE)
        bandwidth[i] = _positive(loaded.path, record, bandwidth_key, BANDWIDTH_KBPS_RANGE)
    return CapacityTrace(tuple(r.id for r in loaded.records), compute, bandwidth, loaded.sha256)


def _availability(loaded: _Loaded) -> AvailabilityTrace:
    active_key, inactive_key, period_key = FIELDS[loaded.fmt, "availability"]
    starts, ends, counts = [], [], np.zeros(len(loaded.records), dtype=np.int64)
    period = np.empty(len(loaded.records))
    total = 0
    for i, record in enumerate(loaded.records):
        period[i] = _positive(loaded.path, record, period_key, PERIOD_RANGE)
        total += _length(_field(loaded.path, record, active_key))
        if total > MAX_WINDOWS:  # before any list is copied: aliased lists stay unexpanded
            raise DataError(f"{loaded.path}: over {MAX_WINDOWS:,} online windows; at most that many are read")
        start = _times(loaded.path, record, active_key)
        end = _times(loaded.path, record, inactive_key)
        _check_windows(loaded.path, record, start, end, period[i], (active_key, inactive_key, period_key))
        starts.append(start)
        ends.append(end)
        counts[i] = len(start)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return AvailabilityTrace(
        tuple(r.id for r in loaded.records), np.concatenate(starts), np.concatenate(ends), offsets, period,
        loaded.sha256,
    )  # fmt: skip


def _field(path: Path, record: _Record, key: str) -> Any:
    if key not in record.fields:
        raise DataError(f"{path}: {record.where}: no {key!r} field")
    return record.fields[key]


def _positive(path: Path, record: _Record, key: str, bounds: tuple[float, float]) -> float:
    """A number in (low, high] (or [low, high] when low > 0)."""
    value = _field(path, record, key)
    number, (low, high) = _number(value), bounds
    if number is None or not (low < number <= high or number == low > 0):
        allowed = f"> 0 and <= {high:g}" if low == 0 else f"in [{low:g}, {high:g}]"
        raise DataError(f"{path}: {record.where}: {key} is {_short(value)}; must be a number {allowed}")
    return number


def _length(values: Any) -> int:
    return len(values) if type(values) is list else 0


def _number(value: Any) -> float | None:
    """value as a finite float, or None when it is not one (booleans are not numbers here)."""
    if type(value) not in (int, float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond float64
        return None
    return number if math.isfinite(number) else None


def _times(path: Path, record: _Record, key: str) -> np.ndarray:
    """A list of finite times >= 0. Walks the list once and stops at the first item that is
    not a number, so a list of aliased nested lists is refused without being expanded."""
    values = _field(path, record, key)
    if type(values) is not list:
        raise DataError(
            f"{path}: {record.where}: {key} is {_short(values)}; must be a list of times in seconds"
        )
    if all(type(value) is float for value in values):  # the usual list: one pass, stopped by a non-float
        times = np.array(values, dtype=np.float64)
        if np.isfinite(times).all() and (times >= 0).all():
            return times
    for index, value in enumerate(values):  # find what is wrong, or convert ints
        number = _number(value)
        if number is None or number < 0:
            raise DataError(
                f"{path}: {record.where}: {key}[{index}] is {_short(value)}; must be a finite number >= 0"
            )
    return np.array(values, dtype=np.float64)


def _check_windows(
    path: Path, record: _Record, start: np.ndarray, end: np.ndarray, period: float, keys: tuple[str, str, str]
) -> None:
    active, inactive, period_key = keys
    where = f"{path}: {record.where}"
    if len(start) != len(end):
        raise DataError(f"{where}: {active} has {len(start)} times, {inactive} {len(end)}; they pair up")
    if len(start) == 0:
        raise DataError(f"{where}: {active} is empty; a device needs at least one online window")
    if (bad := np.flatnonzero(end < start)).size:
        i = bad[0]
        raise DataError(
            f"{where}: window {i} ends ({inactive}[{i}] = {end[i]}) before it starts ({start[i]})"
        )
    if (bad := np.flatnonzero(start[1:] < end[:-1])).size:
        i = bad[0] + 1
        raise DataError(
            f"{where}: window {i} starts at {start[i]}, before window {i - 1} ends ({end[i - 1]}); "
            "windows must be sorted and not overlap"
        )
    if end[-1] > period:
        raise DataError(f"{where}: window {len(end) - 1} ends at {end[-1]}, past {period_key} {period}")


def _short(value: Any, limit: int = 60) -> str:
    """value for an error line; a container by its type alone (its repr could expand aliases)."""
    if type(value) not in (int, float, str, bool, type(None)):
        return f"a {type(value).__name__}"
    if type(value) is int and value.bit_length() > 10_000:  # repr refuses ints over 4300 digits
        return f"an integer of {value.bit_length():,} bits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------ mapping profiles to clients

MAPPINGS = ("seeded", "fedscale")


def assign_profiles(num_clients: int, count: int, mapping: str, seed: int) -> np.ndarray:
    """(num_clients,) int64 profile index of each client. "fedscale": client n (0-based)
    takes position (n + 1) mod count (FedScale's aggregator gives client id n+1 profile
    (n+1) mod count); "seeded": a permutation of the profiles drawn from (seed,
    Stream.TRACE_PROFILES); client n takes perm[n mod count] (distinct profiles while
    num_clients <= count)."""
    if mapping not in MAPPINGS:
        raise ConfigError(f"trace mapping {mapping!r} is not one of {', '.join(MAPPINGS)}")
    if count < 1:
        raise DataError("a trace with no profiles cannot be mapped to clients")
    clients = np.arange(num_clients, dtype=np.int64)
    if mapping == "fedscale":
        return (clients + 1) % count
    perm = np.random.default_rng(np.random.SeedSequence([seed, Stream.TRACE_PROFILES])).permutation(count)
    return perm[clients % count].astype(np.int64)


# ------------------------------------------------------------------ synthetic traces


@dataclass(frozen=True)
class SyntheticDistribution:
    """The distributions of ``fedsim traces make``. Compute and bandwidth are lognormal
    (median, sigma of the log). Each device is online in one daily window (two where it
    wraps past the period's end) centred at its phase: phase ~ Normal(peak_hour,
    peak_spread_hours) in hours of the period, wrapped; its length is the device's online
    share ~ Beta(online_mean * c, (1 - online_mean) * c), c = online_concentration,
    clipped to [0.01, 0.99], times the period."""

    compute_median: float = 40.0  # ms per sample of inference
    compute_sigma: float = 0.6
    bandwidth_median: float = 10_000.0  # kbps
    bandwidth_sigma: float = 1.0
    period: float = 86_400.0  # seconds: a day
    online_mean: float = 0.3  # mean share of the period a device is online
    online_concentration: float = 4.0  # Beta's a + b: larger, shares closer to online_mean
    peak_hour: float = 22.0  # hour of the period when most devices are online (night, charging)
    peak_spread_hours: float = 4.0  # standard deviation of the devices' phases

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if type(value) not in (int, float) or not math.isfinite(value):
                raise FedsimError(f"traces make: {item.name} is {value!r}; must be a finite number")
        positive = ("compute_median", "bandwidth_median", "period", "online_concentration")
        for name in positive:
            if not getattr(self, name) > 0:
                raise FedsimError(f"traces make: {name} is {getattr(self, name)}; must be > 0")
        for name in ("compute_sigma", "bandwidth_sigma", "peak_spread_hours"):
            if getattr(self, name) < 0:
                raise FedsimError(f"traces make: {name} is {getattr(self, name)}; must be >= 0")
        if not 0 < self.online_mean < 1:
            raise FedsimError(f"traces make: online_mean is {self.online_mean}; must be in (0, 1)")
        if not 0 <= self.peak_hour <= HOURS:
            raise FedsimError(f"traces make: peak_hour is {self.peak_hour}; must be in [0, 24]")


MIN_SHARE, MAX_SHARE = 0.01, 0.99
MAX_SYNTHETIC_DEVICES = 10_000_000


def make_traces(out_dir: Path, devices: int, seed: int, **distribution: float) -> tuple[Path, Path]:
    """Write out_dir/capacity.jsonl and out_dir/availability.jsonl for ``devices`` synthetic
    devices drawn from (seed, Stream.SYNTHETIC_TRACE); existing files are never overwritten."""
    try:
        dist = SyntheticDistribution(**distribution)
    except TypeError as exc:
        raise FedsimError(f"traces make: {exc}") from None
    if not 1 <= devices <= MAX_SYNTHETIC_DEVICES:
        raise FedsimError(
            f"traces make: --devices {devices} is not allowed; must be 1 to {MAX_SYNTHETIC_DEVICES:,}"
        )
    out_dir = Path(out_dir)
    paths = (out_dir / "capacity.jsonl", out_dir / "availability.jsonl")
    if taken := [str(p) for p in paths if os.path.lexists(p)]:
        raise FedsimError(
            f"traces make: {', '.join(taken)} exists; fedsim overwrites no trace, choose another folder"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise FedsimError(f"traces make: {out_dir} is a file, not a folder")
    capacity, availability = _synthetic_lines(devices, seed, dist)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, lines in zip(paths, (capacity, availability), strict=True):
        with open(path, "x", encoding="utf-8") as f:  # "x": a file created meanwhile is not overwritten
            f.writelines(line + "\n" for line in lines)
    return paths


def _synthetic_lines(devices: int, seed: int, dist: SyntheticDistribution) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, Stream.SYNTHETIC_TRACE]))
    compute = rng.lognormal(math.log(dist.compute_median), dist.compute_sigma, devices)
    bandwidth = rng.lognormal(math.log(dist.bandwidth_median), dist.bandwidth_sigma, devices)
    a = dist.online_mean * dist.online_concentration
    share = np.clip(rng.beta(a, dist.online_concentration - a, devices), MIN_SHARE, MAX_SHARE)
    phase_hours = rng.normal(dist.peak_hour, dist.peak_spread_hours, devices)
    length = share * dist.period
    start = np.mod(phase_hours / HOURS * dist.period - length / 2, dist.period)
    end = start + length
    capacity = [
        json.dumps({"id": i, "compute_ms_per_sample": float(c), "bandwidth_kbps": float(b)})
        for i, (c, b) in enumerate(zip(compute, bandwidth, strict=True))
    ]
    availability = []
    for i in range(devices):
        s, e = float(start[i]), float(end[i])
        windows = [(s, e)] if e <= dist.period else [(0.0, e - dist.period), (s, dist.period)]
        active, inactive = (list(t) for t in zip(*windows, strict=True))
        availability.append(
            json.dumps({"id": i, "active": active, "inactive": inactive, "period": dist.period})
        )
    return capacity, availability


# ------------------------------------------------------------------ describing a trace


def describe_files(paths: list[Path], out_png: Path | None) -> str:
    """Tables for each trace file (capacity or availability, told by content) and, with
    ``out_png``, one PNG with every file's charts."""
    summaries = [_summary(path) for path in paths]
    text = "\n\n".join(s.table for s in summaries)
    if out_png is not None:
        _write_figure(summaries, Path(out_png))
        text += f"\n\nwrote {out_png}"
    return text


@dataclass(frozen=True)
class _Summary:
    table: str
    series: dict[str, np.ndarray]  # what the charts draw


def _summary(path: Path) -> _Summary:
    loaded = _load(path, None)
    devices = f"{len(loaded.records):,} devices ({FORMAT_NAMES[loaded.fmt]})"
    head = f"{loaded.kind} trace {path}: {devices}, sha256 {loaded.sha256[:16]}"
    if loaded.kind == "capacity":
        capacity = _capacity(loaded)
        rows = [("compute ms/sample", capacity.compute_ms), ("bandwidth kbps", capacity.bandwidth_kbps)]
        table = [head, f"{'':<20}" + "".join(f"{f'{q}%':>12}" for q in QUANTILES)]
        table += [
            f"{name:<20}" + "".join(f"{v:>12.4g}" for v in np.percentile(x, QUANTILES)) for name, x in rows
        ]
        return _Summary(
            "\n".join(table), {"compute": capacity.compute_ms, "bandwidth": capacity.bandwidth_kbps}
        )
    trace = _availability(loaded)
    share = trace.online_fraction(np.arange(len(trace.ids)))
    by_hour = online_by_hour(trace)
    periods = np.unique(trace.period)
    period = f"{periods[0]:g} s" if len(periods) == 1 else f"{periods.min():g} to {periods.max():g} s"
    table = [
        head,
        f"{len(trace.starts):,} online windows, period {period}; mean online share {share.mean():.4f}",
        "fraction of devices online by hour of the period:",
        "hour   " + "".join(f"{h:>6}" for h in range(HOURS // 2)),
        "online " + "".join(f"{v:>6.3f}" for v in by_hour[: HOURS // 2]),
        "hour   " + "".join(f"{h:>6}" for h in range(HOURS // 2, HOURS)),
        "online " + "".join(f"{v:>6.3f}" for v in by_hour[HOURS // 2 :]),
    ]
    return _Summary("\n".join(table), {"share": share, "by_hour": by_hour})


def online_by_hour(trace: AvailabilityTrace) -> np.ndarray:
    """(24,) float64: the mean over devices of the share of each 24th of its period it is online."""
    totals = np.zeros(HOURS)
    edges = np.arange(HOURS + 1) / HOURS  # bucket edges as fractions of the period
    for first in range(0, len(trace.starts), WINDOW_CHUNK):
        chunk = slice(first, first + WINDOW_CHUNK)
        period = trace.period[trace.window_profile[chunk]][:, None]
        start, end = trace.starts[chunk, None] / period, trace.ends[chunk, None] / period
        overlap = np.clip(np.minimum(end, edges[1:]) - np.maximum(start, edges[:-1]), 0.0, None)
        totals += overlap.sum(axis=0) * HOURS
    return totals / len(trace.ids)


def _write_figure(summaries: list[_Summary], out_png: Path) -> None:
    from matplotlib.figure import Figure

    panels = [(s, name) for s in summaries for name in s.series]
    figure = Figure(figsize=(4.2 * len(panels), 3.4))
    for axes, (summary, name) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        values = summary.series[name]
        if name == "by_hour":
            axes.bar(np.arange(HOURS) + 0.5, values, width=0.9)
            axes.set(xlabel="hour of the period", ylabel="fraction of devices online", xlim=(0, HOURS))
        elif name == "share":
            axes.hist(values, bins=40, range=(0, 1))
            axes.set(xlabel="share of the period online", ylabel="devices")
        else:
            axes.hist(values, bins=np.geomspace(values.min(), values.max() * 1.0001 + 1e-12, 41))
            axes.set_xscale("log")
            unit = "compute ms per sample" if name == "compute" else "bandwidth kbps"
            axes.set(xlabel=unit, ylabel="devices")
    figure.tight_layout()
    try:
        figure.savefig(out_png, dpi=110, format="png")
    except OSError as exc:
        raise FedsimError(f"cannot write {out_png}: {exc.strerror or exc}") from None
