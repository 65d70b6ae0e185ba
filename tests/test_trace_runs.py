"""Device traces through the user's path (issue 23): a hand-made three-device trace in a
YAML config, run with ``fedsim run``; every expected number is worked out here from the
trace's numbers and the run's own rows (bytes), never by fedsim's functions.

The time model (server/system.py's docstring): a client trains 1000 / (backward_factor x
compute_ms) samples a simulated second; a trip is its samples over that speed plus the
bytes it downloads and uploads, x 8 / 1000 over its bandwidth in kbps; it is online when
the round starts (the simulated clock: the previous rows' simulated_elapsed) by its
windows, periodic in the trace's period, and lost when offline at its trip's end."""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from simulator.cli import main

FEATURES = 40  # logreg on 40 features and 2 classes: 82 float32 parameters, 328 bytes
SIZES = {"a": 100, "b": 200, "c": 50}  # training rows of natural clients 0, 1, 2 (sorted ids)
BACKWARD = 3.0  # trace.backward_factor's default: a training sample costs 3 inferences

# Three device profiles in file order p0, p1, p2: (compute ms per sample, bandwidth kbps).
# mapping fedscale gives client n the profile (n + 1) mod 3: client 0 -> p1, 1 -> p2, 2 -> p0.
CAPACITY = {"p0": (2.0, 1.0), "p1": (1.0, 2.0), "p2": (4.0, 8.0)}
PROFILE_OF_CLIENT = ["p1", "p2", "p0"]
# Online windows, periodic in PERIOD s (edges included), two sets. With this model's
# 656-byte trips (82 float32 parameters each way) the trips take 2.924 s (client 0), 3.056 s
# (client 1) and 5.548 s (client 2), so, worked out by hand:
# STALLS: round 1 starts at 0 with everyone online; client 0's window closes at 2 s, before
#   its trip ends: lost; the round lasts client 2's trip. Round 2 starts at 5.548 s: only
#   client 2 ([0, 6]) is online; its trip ends at 11.096 s, outside its window: lost too,
#   and the round again lasts its trip. Round 3 finds nobody online at 11.096 s: it starts
#   when the first window opens, at 20 s (the next period), with all three online, and its
#   length counts the wait: 20 - 11.096 + 5.548 s; as in round 1, client 0 is lost.
# LIVELY: all three finish round 1 (ends 5.548 s); in round 2 (5.548 s) client 1 is offline;
#   in round 3 (11.096 s) client 0; round 4 (16.644 s) has all three, and client 2's trip
#   ends at 22.192 s, in the next period's first window ([0, 6]): it counts.
PERIOD = 20.0
STALLS = {"p0": ([0.0], [6.0]), "p1": ([0.0], [2.0]), "p2": ([0.0], [4.0])}
LIVELY = {
    "p0": ([0.0, 7.0], [6.0, 19.0]),
    "p1": ([0.0, 5.0, 14.0], [3.5, 10.0, 20.0]),
    "p2": ([0.0, 9.0], [4.0, 20.0]),
}
HAND_TIMELINES = {  # per round: (num_online, clients that count)
    "stalls": (STALLS, [(3, [1, 2]), (1, []), (3, [1, 2])]),
    "lively": (LIVELY, [(3, [0, 1, 2]), (2, [0, 2]), (2, [1, 2]), (3, [0, 1, 2])]),
}


def write_data(folder: Path) -> Path:
    """train.csv with natural clients a, b, c of SIZES rows, test.csv of 30 rows."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, owners in (("train", [c for c, n in SIZES.items() for _ in range(n)]), ("test", ["a"] * 30)):
        with (folder / f"{name}.csv").open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow([*(f"f{j}" for j in range(FEATURES)), "label", "device"])
            for i, owner in enumerate(owners):
                out.writerow([*(f"{v:.4f}" for v in rng.normal(size=FEATURES)), i % 2, owner])
    return folder


def write_jsonl_traces(folder: Path, capacity=CAPACITY, windows=LIVELY, period=PERIOD) -> tuple[Path, Path]:
    folder.mkdir(exist_ok=True)
    cap, avail = folder / "capacity.jsonl", folder / "availability.jsonl"
    cap.write_text(
        "".join(
            json.dumps({"id": k, "compute_ms_per_sample": c, "bandwidth_kbps": b}) + "\n"
            for k, (c, b) in capacity.items()
        )
    )
    avail.write_text(
        "".join(
            json.dumps({"id": k, "active": a, "inactive": i, "period": period}) + "\n"
            for k, (a, i) in windows.items()
        )
    )
    return cap, avail


def write_fedscale_traces(folder: Path) -> tuple[Path, Path]:
    """The same trace as FedScale's pickled dicts (plain data only)."""
    folder.mkdir(exist_ok=True)
    cap, avail = folder / "client_device_capacity", folder / "client_behave_trace"
    capacity = {k: {"computation": c, "communication": b} for k, (c, b) in CAPACITY.items()}
    behave = {k: {"active": a, "inactive": i, "finish_time": PERIOD} for k, (a, i) in LIVELY.items()}
    cap.write_bytes(pickle.dumps(capacity))
    avail.write_bytes(pickle.dumps(behave))
    return cap, avail


def write_config(tmp_path: Path, capacity: Path | None, availability: Path | None, rounds: int = 3) -> Path:
    """tmp_path/traced.yaml: logreg on write_data's three natural clients, all three asked
    for each round, the trace files given (None: that trace is not used), FedScale's mapping."""
    data = tmp_path / "data" if (tmp_path / "data").exists() else write_data(tmp_path / "data")
    trace = "".join(
        f"      {key}: {json.dumps(str(path))}\n"
        for key, path in (("capacity", capacity), ("availability", availability))
        if path is not None
    )
    config = tmp_path / "traced.yaml"
    config.write_text(
        f"""name: traced
seed: 3
rounds: {rounds}
data:
  dataset: csv
  root: {json.dumps(str(data))}
  label: label
  client_column: device
  partition: natural
  num_clients: 3
model:
  name: logreg
client:
  lr: 0.1
  epochs: 1
  batch_size: 10
  system:
    trace:
      mapping: fedscale
{trace}server:
  clients_per_round: 3
  eval_every: 100
runtime:
  workers: 2
  cpus_per_worker: 0.5  # the shape of tests/conftest.py's small runs: their workers are reused
  reduction_groups: 2
  checkpoint_every: 1
"""
    )
    return config


def run(config: Path, out: Path, *sets: str) -> int:
    args = ["run", str(config), "--out", str(out), "--quiet"]
    for item in sets:
        args += ["--set", item]
    return main(args)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def without_seconds(table: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in table]


def trip_seconds(client: int, trip_bytes: float) -> float:
    """Client's trip by hand: its samples at 1000 / (3 x ms) a second, then the bytes both ways."""
    compute_ms, kbps = CAPACITY[PROFILE_OF_CLIENT[client]]
    samples = SIZES["abc"[client]]
    return samples * BACKWARD * compute_ms / 1000 + trip_bytes * 8 / 1000 / kbps


def online(windows: dict, client: int, t: float) -> bool:
    """Is client online at simulated time t by windows, periodic in PERIOD, edges included."""
    starts, ends = windows[PROFILE_OF_CLIENT[client]]
    phase = t % PERIOD
    return any(s <= phase <= e for s, e in zip(starts, ends, strict=True))


def round_start(windows: dict, t: float) -> float:
    """When a round asked for at t starts: t, or with nobody online then, the next opening of
    any window (each window's start comes round again every PERIOD)."""
    if any(online(windows, c, t) for c in range(3)):
        return t
    return min(t + (s - t % PERIOD) % PERIOD for starts, _ in windows.values() for s in starts)


def model_sha256(out: Path) -> str:
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("timeline", sorted(HAND_TIMELINES))
def test_a_hand_made_trace_times_each_round_and_loses_who_goes_offline(ray_cluster, tmp_path, timeline):
    windows, hand = HAND_TIMELINES[timeline]
    cap, avail = write_jsonl_traces(tmp_path / "traces", windows=windows)
    out = tmp_path / "run"
    assert run(write_config(tmp_path, cap, avail, rounds=len(hand)), out) == 0
    table = rows(out)
    first = table[0]
    per_client = first["bytes_down"] / first["num_selected"] + first["bytes_up"] / first["num_clients"]
    assert per_client == 2 * 82 * 4  # logreg's float32 model down, its update up
    trips = [trip_seconds(c, per_client) for c in range(3)]
    clock = 0.0
    for row in table:
        start = round_start(windows, clock)
        up = [c for c in range(3) if online(windows, c, start)]
        assert row["num_online"] == len(up) and row["selected"] == up  # all the online ones (3 a round)
        kept = [c for c in up if online(windows, c, start + trips[c])]
        assert row["clients"] == kept, (row["round"], clock)
        expected = start - clock + max(trips[c] for c in up)  # k = 3: the last of the selected
        # 1e-9: fedsim divides by a speed where this multiplies by ms; a few float64 ulps apart.
        assert row["simulated_seconds"] == pytest.approx(expected, rel=1e-9, abs=0)
        clock += row["simulated_seconds"]
        assert row["simulated_elapsed"] == pytest.approx(clock, rel=1e-12, abs=0)
    # And the timeline of the comment above PERIOD, literally.
    assert [(r["num_online"], r["clients"]) for r in table] == hand


def test_over_selection_and_a_deadline_on_traced_trips(ray_cluster, tmp_path):
    """k = 2 of ceil(2 x 1.5) = 3 selected, a 5 s deadline, LIVELY's windows, by hand:
    round 1 (t 0): all online; clients 0 and 1 finish first: the round ends with client 1's
    trip (3.056 s). Round 2 (3.056 s): all online; client 1's trip ends at 6.112 s, offline:
    lost; client 2's 5.548 s trip passes the deadline; one finisher, so the round lasts the
    deadline. Round 3 (8.056 s): client 1 offline; client 0's trip ends at 10.98 s, offline:
    lost; client 2 late: nobody counts. Round 4 (13.056 s): client 0 offline; client 1 counts."""
    cap, avail = write_jsonl_traces(tmp_path / "traces")
    sets = ("server.clients_per_round=2", "client.system.over_selection=0.5", "client.system.deadline=5.0")
    out = tmp_path / "run"
    assert run(write_config(tmp_path, cap, avail, rounds=4), out, *sets) == 0
    table = rows(out)
    assert [(r["num_online"], r["selected"], r["clients"]) for r in table] == [
        (3, [0, 1, 2], [0, 1]),
        (3, [0, 1, 2], [0]),
        (2, [0, 2], []),
        (2, [1, 2], [1]),
    ]
    per_client = table[0]["bytes_down"] / 3 + table[0]["bytes_up"] / 2
    assert table[0]["simulated_seconds"] == pytest.approx(trip_seconds(1, per_client), rel=1e-9, abs=0)
    assert [r["simulated_seconds"] for r in table[1:]] == [5.0, 5.0, 5.0]  # the deadline, exactly


def test_a_round_with_nobody_online_waits_for_the_first_device(ray_cluster, tmp_path):
    """STALLS reaches 11.096 s with everyone offline; everyone is online again at 20 s: the
    third round starts then, its length counting the wait, and training goes on."""
    cap, avail = write_jsonl_traces(tmp_path / "traces", windows=STALLS)
    out = tmp_path / "run"
    assert run(write_config(tmp_path, cap, avail, rounds=4), out) == 0
    table = rows(out)
    assert [r["num_online"] for r in table] == [3, 1, 3, 1]
    assert table[1]["simulated_elapsed"] < PERIOD < table[2]["simulated_elapsed"]
    assert table[2]["simulated_elapsed"] == pytest.approx(PERIOD + table[0]["simulated_seconds"], rel=1e-12)
    assert table[2]["clients"] == [1, 2]


def test_power_of_choice_polls_on_the_clock_and_in_the_bytes(ray_cluster, tmp_path):
    """1 of the 3 clients a round, all 3 candidates asked for their loss: the round first
    waits for the slowest candidate to download the model (328 bytes) and compute its loss
    over its rows (a forward pass: the trace's ms per sample), then the selected one trains
    and uploads (it holds the model already). By hand from CAPACITY and SIZES."""
    cap, _ = write_jsonl_traces(tmp_path / "traces")
    sets = (
        "server.clients_per_round=1",
        "server.selection=power_of_choice",
        "server.power_of_choice.candidates=3",
    )
    out = tmp_path / "run"
    assert run(write_config(tmp_path, cap, None, rounds=2), out, *sets) == 0
    model_bytes, down_bits = 82 * 4, 82 * 4 * 8 / 1000  # kbit
    queries = [
        SIZES["abc"[c]] * CAPACITY[PROFILE_OF_CLIENT[c]][0] / 1000
        + down_bits / CAPACITY[PROFILE_OF_CLIENT[c]][1]
        for c in range(3)
    ]  # 0.1 + 1.312, 0.8 + 0.328, 0.1 + 2.624 s: client 2 answers last
    for row in rows(out):
        assert row["candidates_measured"] == 3 and len(row["selected"]) == 1
        assert row["poll_seconds"] == pytest.approx(max(queries), rel=1e-9, abs=0)
        (chosen,) = row["selected"]
        compute_ms, kbps = CAPACITY[PROFILE_OF_CLIENT[chosen]]
        training = SIZES["abc"[chosen]] * BACKWARD * compute_ms / 1000 + model_bytes * 8 / 1000 / kbps
        assert row["simulated_seconds"] == pytest.approx(max(queries) + training, rel=1e-9, abs=0)
        assert row["bytes_down"] == 3 * model_bytes and row["bytes_up"] == model_bytes + 3 * 8


def test_fedscale_pickles_of_the_trace_give_the_jsonl_runs_bits(ray_cluster, tmp_path):
    out = {}
    for fmt, write in (("jsonl", write_jsonl_traces), ("fedscale", write_fedscale_traces)):
        cap, avail = write(tmp_path / fmt)
        out[fmt] = tmp_path / f"run-{fmt}"
        assert run(write_config(tmp_path, cap, avail, rounds=4), out[fmt]) == 0
    assert without_seconds(rows(out["jsonl"])) == without_seconds(rows(out["fedscale"]))
    assert model_sha256(out["jsonl"]) == model_sha256(out["fedscale"])
    assert [r["num_online"] for r in rows(out["fedscale"])] == [3, 2, 2, 3]  # the trace was read


class Hostile:
    """Unpickling this opens (creates) ``path``: a __reduce__ payload, as an attacker writes it."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def assert_refused(capsys, code: int, *fragments: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("fedsim: error: "), err
    assert all(f in err[0] for f in fragments), err
    assert "Traceback" not in err[0]


def test_a_hostile_truncated_or_negative_trace_is_one_line_and_runs_nothing(ray_cluster, tmp_path, capsys):
    traces = tmp_path / "traces"
    traces.mkdir()
    marker = tmp_path / "pwned"
    hostile = traces / "client_device_capacity"
    hostile.write_bytes(pickle.dumps({1: {"computation": 1.0, "communication": Hostile(marker)}}))
    out = tmp_path / "run"
    code = run(write_config(tmp_path, hostile, None), out)
    assert_refused(capsys, code, str(hostile), "other than plain data", "io.open")
    assert not marker.exists()
    # The traces are read while the run is built, before its directory is made: nothing of
    # docs/run-directory.md's files (config.yaml, run.json, ...) is half-written, --out is free.
    assert not out.exists()

    truncated = traces / "client_behave_trace"
    whole = pickle.dumps({"p0": {"active": [0.0], "inactive": [6.0], "finish_time": PERIOD}})
    truncated.write_bytes(whole[:-9])
    code = run(write_config(tmp_path, None, truncated), tmp_path / "run2")
    assert_refused(capsys, code, str(truncated), "not a readable pickle")

    negative = {**CAPACITY, "p1": (1.0, -2.0)}
    cap, _ = write_jsonl_traces(tmp_path / "negative", capacity=negative)
    code = run(write_config(tmp_path, cap, None), tmp_path / "run3")
    assert_refused(capsys, code, str(cap), "line 2", "bandwidth_kbps")

    missing = write_config(tmp_path, Path("no-such-folder/capacity.jsonl"), None)
    code = run(missing, tmp_path / "run4")
    assert_refused(capsys, code, "no-such-folder/capacity.jsonl not found", "read from the working directory")


def test_compression_shortens_the_trips_by_the_bytes_it_saves(ray_cluster, tmp_path):
    cap, _ = write_jsonl_traces(tmp_path / "traces")
    config = write_config(tmp_path, cap, None, rounds=2)  # capacity only: everyone counts
    dense, topk = tmp_path / "dense", tmp_path / "topk"
    assert run(config, dense) == 0
    assert run(config, topk, "server.compression.method=topk", "server.compression.fraction=0.1") == 0
    for d, t in zip(rows(dense), rows(topk), strict=True):
        assert d["clients"] == t["clients"] == [0, 1, 2]
        assert t["bytes_up"] < d["bytes_up"] / 2 and t["bytes_down"] == d["bytes_down"]
        # The round lasts its slowest trip, timed with the bytes the clients were measured
        # to send: the trip model's planned upload is the measured one.
        for r in (d, t):
            per_client = r["bytes_down"] / 3 + r["bytes_up"] / 3
            expected = max(trip_seconds(c, per_client) for c in range(3))
            assert r["simulated_seconds"] == pytest.approx(expected, rel=1e-9, abs=0)
        # Client 2 (1 kbps) is the slowest and its link most of its trip: the saved upload shows.
        assert t["simulated_seconds"] < 0.75 * d["simulated_seconds"]


def test_pruning_shortens_the_trips_by_the_bytes_it_saves(ray_cluster, tmp_path):
    cap, _ = write_jsonl_traces(tmp_path / "traces")
    config = write_config(tmp_path, cap, None, rounds=3)
    out = tmp_path / "pruned"
    sets = ("server.pruning.method=magnitude", "server.pruning.schedule=one_shot")
    assert run(config, out, *sets, "server.pruning.start_round=1", "server.pruning.sparsity=0.9") == 0
    dense, *pruned = rows(out)  # pruned after round 1's step: rounds 2 and 3 send the sparse model
    for r in (dense, *pruned):
        per_client = r["bytes_down"] / 3 + r["bytes_up"] / 3
        expected = max(trip_seconds(c, per_client) for c in range(3))
        assert r["simulated_seconds"] == pytest.approx(expected, rel=1e-9, abs=0), r["round"]
    for r in pruned:
        assert r["bytes_down"] < dense["bytes_down"] and r["bytes_up"] < dense["bytes_up"]
        assert r["simulated_seconds"] < dense["simulated_seconds"]


# Asynchronous rounds, one arrival a step: client 0 always online, client 1 in the first half
# of each period, client 2 in the second half.
ASYNC_WINDOWS = {"p0": ([10.0], [20.0]), "p1": ([0.0], [20.0]), "p2": ([0.0], [10.0])}


def test_async_dispatches_only_to_clients_online_then(ray_cluster, tmp_path):
    cap, avail = write_jsonl_traces(tmp_path / "traces", windows=ASYNC_WINDOWS)
    out = tmp_path / "run"
    sets = ("server.mode=async", "server.async.concurrency=2", "server.async.buffer_size=1")
    assert run(write_config(tmp_path, cap, avail, rounds=10), out, *sets) == 0
    table = rows(out)
    trip_bytes = 2 * 82 * 4  # the dense model down and up, as in the synchronous runs
    trips = [trip_seconds(c, trip_bytes) for c in range(3)]
    arrived = []
    for row in table:
        (client,) = row["clients"]  # buffer_size 1: the step is its one arrival, at its end
        end = row["simulated_elapsed"]
        start = end - trips[client]  # the dispatch, to an ulp: a window's edge may be either side
        at_dispatch = online(ASYNC_WINDOWS, client, start - 1e-9) or online(
            ASYNC_WINDOWS, client, start + 1e-9
        )
        assert at_dispatch and online(ASYNC_WINDOWS, client, end), row
        arrived.append(client)
    assert set(arrived) == {0, 1, 2}, arrived  # each half of the period had its client
    assert sum(r["dropped_clients"] for r in table) > 0  # trips past a window's end were lost


def test_worker_counts_give_the_same_traced_run(ray_cluster, tmp_path):
    cap, avail = write_jsonl_traces(tmp_path / "traces")
    config = write_config(tmp_path, cap, avail, rounds=4)
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(config, one, "runtime.workers=1") == 0
    assert run(config, two, "runtime.workers=2") == 0
    assert without_seconds(rows(one)) == without_seconds(rows(two))
    assert model_sha256(one) == model_sha256(two)


def stopped_after(config: Path, run_dir: Path, round_: int, overrides: dict) -> None:
    """Run config into run_dir and stop it after round_ as Ctrl-C does."""
    from simulator import Simulation

    def interrupt(row):
        if row["round"] == round_:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Simulation.from_yaml(config, overrides, run_dir=run_dir, on_round_end=interrupt).run()


def test_a_traced_run_resumes_bit_for_bit_and_refuses_an_edited_trace(ray_cluster, tmp_path, capsys):
    cap, avail = write_jsonl_traces(tmp_path / "traces")
    config = write_config(tmp_path, cap, avail, rounds=4)
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    # One worker: an interrupted run stops its workers (they may be mid-task), and
    # starting one is most of this test's time.
    assert run(config, full, "runtime.workers=1") == 0
    stopped_after(config, stopped, 2, {"runtime.workers": 1})
    edited = tmp_path / "edited"
    edited.mkdir()
    for item in stopped.iterdir():  # a copy of the stopped run resumes against an edited trace
        if item.is_file():
            (edited / item.name).write_bytes(item.read_bytes())
    (edited / "checkpoints").mkdir()
    for item in (stopped / "checkpoints").iterdir():
        (edited / "checkpoints" / item.name).write_bytes(item.read_bytes())

    assert main(["run", "--resume", str(stopped), "--quiet"]) == 0
    assert without_seconds(rows(stopped)) == without_seconds(rows(full))
    assert model_sha256(stopped) == model_sha256(full)

    original = avail.read_bytes()
    avail.write_text(avail.read_text().replace("19.0", "18.0"))
    try:
        code = main(["run", "--resume", str(edited), "--quiet"])
    finally:
        avail.write_bytes(original)
    assert_refused(capsys, code, "client.system.trace.availability", str(avail), "devices.json")
    assert len(rows(edited)) == 2  # nothing was run or rewritten
    # Without the record of its traces a run cannot show it resumes on the same ones.
    (edited / "devices.json").unlink()
    assert_refused(capsys, main(["run", "--resume", str(edited), "--quiet"]), "devices.json", "records the")
    (edited / "devices.json").symlink_to(stopped / "devices.json")  # a link out of the run: refused too
    assert_refused(capsys, main(["run", "--resume", str(edited), "--quiet"]), "symbolic link")
    assert len(rows(edited)) == 2


def test_an_async_traced_run_resumes_bit_for_bit(ray_cluster, tmp_path):
    """The schedule's trips, dispatched by the windows, are replayed from the checkpoint."""
    cap, avail = write_jsonl_traces(tmp_path / "traces", windows=ASYNC_WINDOWS)
    config = write_config(tmp_path, cap, avail, rounds=8)
    overrides = {
        "server.mode": "async", "server.async.concurrency": 2, "server.async.buffer_size": 1,
        "runtime.workers": 1,
    }  # fmt: skip
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert run(config, full, *(f"{k}={v}" for k, v in overrides.items())) == 0
    stopped_after(config, stopped, 3, overrides)
    assert main(["run", "--resume", str(stopped), "--quiet"]) == 0
    assert without_seconds(rows(stopped)) == without_seconds(rows(full))
    assert model_sha256(stopped) == model_sha256(full)
