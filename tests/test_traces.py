"""Device traces (server/traces.py) as a user hands them to fedsim: FedScale's pickles and
fedsim's JSON Lines, read safely; availability on the simulated clock; profiles mapped to
clients; and ``fedsim traces make|describe`` through the command line's main()."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import pickletools

import numpy as np
import pytest

import server.traces as traces
from clients.errors import DataError
from server.traces import assign_profiles, online_by_hour, read_availability, read_capacity
from simulator.cli import main

# Three devices by hand. Periods 100, 8 and 1000 s; windows (edges included):
# a: [0, 10] and [40, 60]          -> online share 30/100
# b: [2, 4]                        -> 2/8
# c: [0, 250], [250, 500], [750, 1000] (the first two touch) -> 750/1000
HAND = {
    "a": ([0.0, 40.0], [10.0, 60.0], 100.0),
    "b": ([2.0], [4.0], 8.0),
    "c": ([0.0, 250.0, 750.0], [250.0, 500.0, 1000.0], 1000.0),
}
HAND_CAPACITY = {"a": (10.0, 1000.0), "b": (50.5, 20_000.0), "c": (200.0, 350_000.0)}
# (device, simulated time, online?) worked out by hand from the windows above
HAND_ONLINE = [
    ("a", 0.0, True), ("a", 10.0, True), ("a", 10.5, False), ("a", 40.0, True), ("a", 60.0, True),
    ("a", 60.25, False), ("a", 100.0, True), ("a", 205.0, True), ("a", 139.75, False),
    ("b", 2.0, True), ("b", 4.0, True), ("b", 4.5, False), ("b", 1.5, False), ("b", 10.0, True),
    ("b", 8.0, False), ("b", 12.0, True),
    ("c", 250.0, True), ("c", 600.0, False), ("c", 750.0, True), ("c", 1000.0, True),
    ("c", 999.5, True), ("c", 500.5, False), ("c", 3250.0, True),
]  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def fedscale_availability(keys=(1, 2, 3)):
    return {
        key: {"active": list(a), "inactive": list(i), "finish_time": p, "duration": p, "model": "x"}
        for key, (a, i, p) in zip(keys, HAND.values(), strict=True)
    }


def fedscale_capacity(keys=(1, 2, 3)):
    return {
        key: {"computation": c, "communication": b}
        for key, (c, b) in zip(keys, HAND_CAPACITY.values(), strict=True)
    }


def hand_files(tmp_path):
    """The hand-made trace in both formats: {format: (capacity path, availability path)}."""
    jsonl = (
        write_jsonl(
            tmp_path / "capacity.jsonl",
            [
                {"id": k, "compute_ms_per_sample": c, "bandwidth_kbps": b}
                for k, (c, b) in HAND_CAPACITY.items()
            ],
        ),
        write_jsonl(
            tmp_path / "availability.jsonl",
            [{"id": k, "active": a, "inactive": i, "period": p} for k, (a, i, p) in HAND.items()],
        ),
    )
    pickled = (tmp_path / "client_device_capacity", tmp_path / "client_behave_trace")
    pickled[0].write_bytes(pickle.dumps(fedscale_capacity(keys=tuple(HAND))))
    pickled[1].write_bytes(pickle.dumps(fedscale_availability(keys=tuple(HAND))))
    return {"jsonl": jsonl, "fedscale": pickled}


@pytest.mark.parametrize("fmt", ["jsonl", "fedscale"])
def test_a_hand_made_trace_is_online_exactly_when_computed_by_hand(tmp_path, fmt):
    capacity_path, availability_path = hand_files(tmp_path)[fmt]
    capacity = read_capacity(capacity_path)
    assert capacity.ids == ("a", "b", "c")
    assert np.array_equal(capacity.compute_ms, [10.0, 50.5, 200.0])
    assert np.array_equal(capacity.bandwidth_kbps, [1000.0, 20_000.0, 350_000.0])
    assert capacity.sha256 == hashlib.sha256(capacity_path.read_bytes()).hexdigest()

    trace = read_availability(availability_path)
    assert trace.ids == ("a", "b", "c")
    assert np.array_equal(trace.offsets, [0, 2, 3, 6]) and np.array_equal(trace.period, [100.0, 8.0, 1000.0])
    profiles = np.array([trace.ids.index(d) for d, _, _ in HAND_ONLINE])
    times = np.array([t for _, t, _ in HAND_ONLINE])
    expected = np.array([online for _, _, online in HAND_ONLINE])
    assert np.array_equal(trace.online(profiles, times), expected)  # a time per profile
    for time in (0.0, 10.0, 250.0, 1000.0):  # one time for all
        each = [trace.online(np.array([p]), np.array([time]))[0] for p in range(3)]
        assert np.array_equal(trace.online(np.arange(3), time), each)
    assert np.array_equal(trace.online_fraction(np.array([0, 1, 2, 2])), [0.3, 0.25, 0.75, 0.75])


def test_next_online_is_the_next_window_opening_by_hand(tmp_path):
    trace = read_availability(hand_files(tmp_path)["jsonl"][1])
    a, b = np.array([0]), np.array([1])
    assert trace.next_online(a, 5.0) == 5.0  # online already
    assert trace.next_online(a, 10.5) == 40.0 and trace.next_online(a, 61.0) == 100.0  # wraps
    assert trace.next_online(b, 4.5) == 10.0 and trace.next_online(b, 1001.0) == 1002.0  # 125 x 8 + 2
    assert trace.next_online(np.array([0, 1]), 61.0) == 66.0  # b's window opens first (8 x 8 + 2)
    for devices, t in ((a, 0.1 + 123.4 * 7), (b, 1e6 + 0.3)):
        assert trace.online(devices, trace.next_online(devices, t)).all()  # exactly at the edge


def test_online_by_hour_averages_each_devices_share_of_each_24th(tmp_path):
    trace = read_availability(hand_files(tmp_path)["jsonl"][1])
    by_hour = online_by_hour(trace)
    # Hour 0 ([0, 1/24] of each period): a and c online throughout, b not; hour 23: only c.
    assert abs(by_hour[0] - 2 / 3) < 1e-12 and abs(by_hour[23] - 1 / 3) < 1e-12  # float division only
    assert abs(by_hour.mean() - trace.online_fraction(np.arange(3)).mean()) < 1e-12


def test_a_fedscale_pickle_reads_back_what_was_pickled(tmp_path):
    keys = (7, 8, 9)
    path = tmp_path / "client_behave_trace"
    path.write_bytes(pickle.dumps(fedscale_availability(keys), protocol=2))
    trace = read_availability(path)
    assert trace.ids == ("7", "8", "9")
    assert np.array_equal(trace.starts, [0.0, 40.0, 2.0, 0.0, 250.0, 750.0])
    assert np.array_equal(trace.ends, [10.0, 60.0, 4.0, 250.0, 500.0, 1000.0])
    capacity = tmp_path / "client_device_capacity"
    capacity.write_bytes(pickle.dumps(fedscale_capacity(keys), protocol=5))
    assert read_capacity(capacity).ids == ("7", "8", "9")


class RunsAShellCommand:
    """What a hostile trace pickles: unpickling it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layers", ["both", "unpickler alone"])
def test_a_hostile_pickle_is_refused_without_running(tmp_path, monkeypatch, layers):
    marker = tmp_path / "pwned"
    path = tmp_path / "client_device_capacity"
    path.write_bytes(pickle.dumps({1: {"computation": RunsAShellCommand(marker), "communication": 1.0}}))
    if layers == "unpickler alone":  # the opcode check waved through: find_class still refuses
        monkeypatch.setattr(traces, "PLAIN_OPCODES", frozenset(op.name for op in pickletools.opcodes))
    with pytest.raises(DataError, match="holds something other than plain data") as error:
        read_capacity(path)
    assert str(error.value).startswith(f"{path}: holds something other than plain data (")
    assert ".system)" in str(error.value)  # the function it names, whichever layer refused
    assert not marker.exists()


def test_aliased_containers_are_refused_without_being_expanded(tmp_path):
    nested: list = [1.0]
    for _ in range(80):  # 2**80 numbers once expanded; the file is small
        nested = [nested, nested]
    path = tmp_path / "behave"
    path.write_bytes(pickle.dumps({1: {"active": nested, "inactive": nested, "finish_time": 10.0}}))
    with pytest.raises(DataError, match=r"profile 1: active\[0\] is a list; must be a finite number >= 0"):
        read_availability(path)
    # A dict key of tuples aliasing each other would take 2**80 steps to hash: tuples are refused.
    key = ()
    for _ in range(80):
        key = (key, key)
    body = pickle.dumps(key, protocol=2)[2:-1]  # without PROTO and STOP
    path.write_bytes(b"\x80\x02}" + body + b"Ns.")  # {key: None}
    with pytest.raises(DataError, match=r"holds something other than plain data \(opcode (EMPTY_)?TUPLE"):
        read_availability(path)


def test_what_a_trace_expands_into_and_its_numbers_are_bounded(tmp_path, monkeypatch):
    path = tmp_path / "trace"
    path.write_bytes(pickle.dumps({10**20000: {"computation": 1.0, "communication": 1.0}}))  # LONG4
    with pytest.raises(DataError, match="a key must be a string or an int of at most 64 bits"):
        read_capacity(path)
    path.write_bytes(pickle.dumps({1: {"computation": 1.0, "communication": 1e-320}}))
    with pytest.raises(DataError, match=r"communication is 1e-320; must be a number in \[0.001, 1e\+12\]"):
        read_capacity(path)  # a trip over it would take infinitely long
    monkeypatch.setattr(traces, "MAX_WINDOWS", 1000)
    windows = [float(t) for t in range(600)]  # one list, aliased by every profile
    profile = {"active": windows, "inactive": windows, "finish_time": 1e6}
    path.write_bytes(pickle.dumps({1: profile, 2: profile}))
    with pytest.raises(DataError, match="over 1,000 online windows"):
        read_availability(path)
    monkeypatch.setattr(traces, "MAX_PROFILES", 1)
    with pytest.raises(DataError, match="2 profiles; at most 1 are read"):
        read_availability(path)


def availability_with(**changes):
    trace = fedscale_availability()
    trace[2] = {**trace[2], **changes}
    return trace


BAD_PICKLES = [
    (b"\x80", "not a readable pickle"),  # the protocol byte alone
    (pickle.dumps(fedscale_availability())[:-7], "not a readable pickle"),
    (pickle.dumps([1, 2]), "holds a pickled list; a FedScale trace is a dict of dicts"),
    (pickle.dumps({}), "holds no devices"),
    (pickle.dumps({1: [1.0]}), "profile 1: holds a list; each profile is a dict"),
    (pickle.dumps({1.5: {"active": []}}), "key 1.5: a key must be a string or an int"),
    (pickle.dumps({1, 2}), r"holds something other than plain data \(opcode EMPTY_SET\)"),
    (
        pickle.dumps(availability_with(finish_time=0.0)),
        "profile 2: finish_time is 0.0; must be a number > 0",
    ),
    (pickle.dumps(availability_with(finish_time=float("inf"))), "profile 2: finish_time is inf"),
    (pickle.dumps(availability_with(active=[2.0, 5.0])), "profile 2: active has 2 times, inactive 1"),
    (pickle.dumps(availability_with(active=[], inactive=[])), "profile 2: active is empty"),
    (pickle.dumps(availability_with(active=[float("nan")])), r"profile 2: active\[0\] is nan"),
    (
        pickle.dumps(availability_with(active=["2"])),
        r"profile 2: active\[0\] is '2'; must be a finite number",
    ),
    (
        pickle.dumps(availability_with(active=[-1.0])),
        r"profile 2: active\[0\] is -1.0; must be a finite number >= 0",
    ),
    (
        pickle.dumps(availability_with(active=[5.0], inactive=[4.0])),
        "profile 2: window 0 ends .* before it starts",
    ),
    (
        pickle.dumps(availability_with(active=[0.0, 3.0], inactive=[4.0, 5.0])),
        "profile 2: window 1 starts at 3.0, before",
    ),
    (
        pickle.dumps(availability_with(active=[4.0, 0.0], inactive=[5.0, 1.0])),
        "profile 2: window 1 starts at 0.0, before",
    ),
    (
        pickle.dumps(availability_with(inactive=[9.0])),
        "profile 2: window 0 ends at 9.0, past finish_time 8.0",
    ),
    (
        pickle.dumps({**fedscale_availability(), 2: {"active": [1.0], "finish_time": 8.0}}),
        "profile 2: no 'inactive' field",
    ),
    (
        pickle.dumps({1: {"active": [1.0], "inactive": [2.0], "finish_time": 3.0}, "1": {}}),
        "id '1' repeats profile 1's",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_PICKLES)
def test_a_malformed_availability_pickle_is_one_error_naming_the_file(tmp_path, data, message):
    path = tmp_path / "client_behave_trace"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message) as error:
        read_availability(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("capacity", "message"),
    [
        (
            {"computation": -3.0, "communication": 10.0},
            "profile 2: computation is -3.0; must be a number > 0",
        ),
        ({"computation": 3.0, "communication": 0}, "profile 2: communication is 0"),
        ({"computation": True, "communication": 1.0}, "profile 2: computation is True"),
        ({"computation": 10**400, "communication": 1.0}, "profile 2: computation is 1000"),
        ({"computation": 3.0}, "profile 2: no 'communication' field"),
        (
            {"computation": 10**5000, "communication": 1.0},
            "profile 2: computation is an integer of 16,610 bits",
        ),
    ],
)
def test_a_malformed_capacity_pickle_names_the_profile_and_field(tmp_path, capacity, message):
    path = tmp_path / "client_device_capacity"
    path.write_bytes(pickle.dumps({**fedscale_capacity(), 2: capacity}))
    with pytest.raises(DataError, match=message):
        read_capacity(path)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"id": 1, "compute_ms_per_sample": 1.0, "bandwith_kbps": 2.0}'],
            "line 1: unknown key 'bandwith_kbps' .did you mean 'bandwidth_kbps'..",
        ),
        (
            [
                '{"id": 1, "compute_ms_per_sample": 1, "bandwidth_kbps": 2}',
                "",
                '{"id": 1, "compute_ms_per_sample": 1, "bandwidth_kbps": 2}',
            ],
            "line 3: id '1' repeats line 1's",
        ),
        (
            ['{"id": 1, "compute_ms_per_sample": NaN, "bandwidth_kbps": 2}'],
            "line 1: not a JSON object .NaN is not",
        ),
        (['{"id": 1, "compute_ms_per_sample": 1, "bandwidth_kbps": 2', ""], "line 1: not a JSON object"),
        (["[1, 2]"], "line 1: holds a JSON list"),
        (
            ['{"id": 1, "id": 2, "compute_ms_per_sample": 1, "bandwidth_kbps": 2}'],
            "line 1: .*key 'id' appears twice",
        ),
        (['{"compute_ms_per_sample": 1, "bandwidth_kbps": 2}'], 'line 1: no "id"'),
        (['{"id": [1], "compute_ms_per_sample": 1, "bandwidth_kbps": 2}'], "line 1: id a list is not"),
        (['{"id": 1, "compute_ms_per_sample": 1}'], "line 1: no 'bandwidth_kbps' field"),
        (['{"id": 1, "speed": 1}'], "line 1: has no 'compute_ms_per_sample' or 'active' field"),
        (
            ['{"id": 1, "active": [1], "inactive": [2], "period": 3}'],
            "is an availability trace, not a capacity trace",
        ),
    ],
)
def test_a_malformed_jsonl_trace_is_one_error_naming_the_line(tmp_path, lines, message):
    path = tmp_path / "capacity.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(DataError, match=message) as error:
        read_capacity(path)
    assert str(error.value).startswith(f"{path}: ")


def test_jsonl_ids_keep_their_order_and_blank_lines_are_skipped(tmp_path):
    rows = [
        '{"id": "phone-9", "active": [0, 1], "inactive": [1, 2], "period": 2}',
        "  ",
        '{"id": 3, "active": [0.5], "inactive": [0.5], "period": 1}',
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(rows))
    trace = read_availability(tmp_path / "a.jsonl")
    assert trace.ids == ("phone-9", "3")
    assert np.array_equal(trace.online(np.array([0, 0, 1, 1]), np.array([1.0, 2.0, 0.5, 0.75])), [1, 1, 1, 0])
    assert np.array_equal(trace.online_fraction(np.array([0, 1])), [1.0, 0.0])


def test_a_missing_file_or_a_folder_is_one_error(tmp_path):
    with pytest.raises(DataError, match="No such file or directory"):
        read_capacity(tmp_path / "none.jsonl")
    with pytest.raises(DataError, match="is a folder, not a regular file"):
        read_capacity(tmp_path)


def test_fedscale_mapping_gives_client_n_profile_n_plus_1_mod_count():
    assert np.array_equal(assign_profiles(7, 3, "fedscale", seed=5), [1, 2, 0, 1, 2, 0, 1])
    assert assign_profiles(7, 3, "fedscale", seed=5).dtype == np.int64


def test_seeded_mapping_is_a_deterministic_permutation_of_the_profiles():
    first = assign_profiles(40, 50, "seeded", seed=1)
    assert np.array_equal(first, assign_profiles(40, 50, "seeded", seed=1)) and first.dtype == np.int64
    assert len(set(first.tolist())) == 40 and first.min() >= 0 and first.max() < 50  # distinct profiles
    assert not np.array_equal(first, assign_profiles(40, 50, "seeded", seed=2))
    wrapped = assign_profiles(120, 50, "seeded", seed=1)  # more clients than profiles: the cycle repeats
    assert np.array_equal(wrapped[:40], first) and np.array_equal(wrapped[50:100], wrapped[:50])


def test_make_then_describe_through_the_command_line(tmp_path, capsys):
    out = tmp_path / "traces"
    assert main(["traces", "make", str(out), "--devices", "300", "--seed", "4", "--online-mean", "0.5"]) == 0
    capacity, availability = out / "capacity.jsonl", out / "availability.jsonl"
    assert f"wrote {capacity}" in capsys.readouterr().out
    png = tmp_path / "traces.png"
    assert main(["traces", "describe", str(capacity), str(availability), "--png", str(png)]) == 0
    table = capsys.readouterr().out
    assert "capacity trace" in table and "compute ms/sample" in table and "bandwidth kbps" in table
    assert "availability trace" in table and "fraction of devices online by hour" in table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trace = read_availability(availability)
    share = trace.online_fraction(np.arange(300)).mean()
    assert f"mean online share {share:.4f}" in table
    assert abs(share - 0.5) < 0.05  # Beta(2, 2) mean 0.5, sd 0.22/sqrt(300) = 0.013: ~4 sd

    again = tmp_path / "again"
    assert (
        main(["traces", "make", str(again), "--devices", "300", "--seed", "4", "--online-mean", "0.5"]) == 0
    )
    for name in ("capacity.jsonl", "availability.jsonl"):  # the same seed, the same bytes
        assert (again / name).read_bytes() == (out / name).read_bytes()
    assert main(["traces", "make", str(tmp_path / "other"), "--devices", "300", "--seed", "5"]) == 0
    assert (tmp_path / "other" / "capacity.jsonl").read_bytes() != capacity.read_bytes()


def test_make_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "traces"
    out.mkdir()
    (out / "availability.jsonl").write_text("mine\n")
    assert main(["traces", "make", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "availability.jsonl exists" in err[0] and err[0].startswith("fedsim: error: ")
    assert (out / "availability.jsonl").read_text() == "mine\n" and not (out / "capacity.jsonl").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["make", "OUT", "--online-mean", "1.5"], "online_mean is 1.5; must be in (0, 1)"),
        (["make", "OUT", "--devices", "0"], "--devices 0 is not allowed"),
        (["make", "OUT", "--png", "x.png"], "--png is not one of them"),
        (["describe", "FILE", "--devices", "3"], "not --devices"),
    ],
)
def test_bad_traces_arguments_are_one_line(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / a) if a in ("OUT", "FILE") else a for a in argv]
    assert main(["traces", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "OUT").exists()


def test_describe_of_a_hostile_pickle_is_one_line_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "client_behave_trace"
    path.write_bytes(pickle.dumps({1: RunsAShellCommand(marker)}))
    assert main(["traces", "describe", str(path)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"fedsim: error: {path}: holds something other than plain data"
    )
    assert "Traceback" not in captured.err and captured.out == "" and not marker.exists()


def test_online_agrees_with_fedscales_rule_window_by_window(tmp_path):
    """online() (one vectorised lookup) against FedScale's is_active written as a loop, on a
    made trace at every window's edges, just outside them and a period later."""
    _, path = traces.make_traces(tmp_path, 200, seed=3, period=1000.0)
    trace = read_availability(path)
    profiles = trace.window_profile
    for t in (
        trace.starts,
        trace.ends,
        trace.starts - 0.5,
        trace.ends + 0.5,
        trace.ends + trace.period[profiles],
    ):
        phase = np.mod(t, trace.period[profiles])
        expected = [
            any(a <= x <= b for a, b in zip(trace.starts[lo:hi], trace.ends[lo:hi], strict=True))
            for x, lo, hi in zip(phase, trace.offsets[profiles], trace.offsets[profiles + 1], strict=True)
        ]
        assert np.array_equal(trace.online(profiles, t), expected)
