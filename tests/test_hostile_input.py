"""Bad input never crashes, hangs or corrupts: a regression test for each hostile input
found by trying fedsim as a hostile or careless user would (tests/test_fuzz.py runs
hundreds more). Refused input is one line on stderr and exit 2; nothing already
written is lost."""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from clients.data import vision
from clients.errors import ConfigError, DataError, FedsimError, RunDiverged
from simulator import Simulation
from simulator.cli import main
from simulator.config.loading import dump_yaml, load_config
from simulator.config.schema import Config
from simulator.driver.divergence import DivergenceWatch, LossGrowth
from simulator.rundir.directory import RunLock
from tests.conftest import ROOT, SHARED_DATA, small_overrides
from tests.key_effects import validate_keys

DEFAULT = ROOT / "configs" / "default.yaml"


def cli(*argv: str) -> tuple[int, str, str]:
    """``fedsim ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def assert_refused(result: tuple[int, str, str], fragment: str) -> None:
    """Exit 2, one error line that says ``fragment``, no traceback."""
    code, _out, err = result
    lines = [line for line in err.splitlines() if line.startswith("fedsim: error")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# ---------------------------------------------------------------- YAML


def alias_bomb(kind: str, width: int = 10, depth: int = 10) -> str:
    if kind == "list":
        lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, depth)]
    else:
        lines = ["a0: &a0 {" + ", ".join(f"k{j}: lol" for j in range(width)) + "}"]
        lines += [
            f"a{i}: &a{i} {{" + ", ".join(f"k{j}: *a{i - 1}" for j in range(width)) + "}"
            for i in range(1, depth)
        ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (alias_bomb("list"), "more than 100000 values or"),
        (alias_bomb("map"), "more than 100000 values or"),
        ("data: " + "[" * 1000 + "]" * 1000 + "\n", "nested deeper than 32 levels"),
        ("data: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", "nested deeper than 32 levels"),
        ("rounds: " + "7" * 5000 + "\n", "an integer of 5000 characters"),
        ("rounds: 5\nrounds: 7\n", "line 2: key 'rounds' appears twice in one mapping (first on line 1)"),
        ("client: {lr: 0.1}\nclient: {epochs: 2}\n", "key 'client' appears twice"),
    ],
    ids=[
        "list-bomb",
        "map-bomb",
        "deep-list",
        "deep-map",
        "5000-digits",
        "duplicate-key",
        "duplicate-section",
    ],
)
def test_hostile_yaml_is_refused_before_it_is_built(tmp_path, text, fragment):
    assert_refused(cli("validate", write(tmp_path / "c.yaml", text)), fragment)


def test_a_fifo_or_a_device_is_not_read_as_a_config(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # nobody writes to it: reading would block forever
    assert_refused(cli("validate", fifo), "is not a regular file")
    assert_refused(cli("validate", "/dev/zero"), "is not a regular file")


FLOAT_KEYS = [
    key
    for key in validate_keys(dump_yaml(Config()))
    if isinstance(functools.reduce(dict.__getitem__, key.split("."), Config().to_dict()), float)
]


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_every_float_key_refuses_non_finite_values(value):
    assert len(FLOAT_KEYS) > 30
    for key in FLOAT_KEYS:
        with pytest.raises(ConfigError, match=f"{key}: .* expected a finite number"):
            load_config(DEFAULT, [f"{key}={value}"])


def test_exponents_without_a_dot_are_numbers_as_in_yaml_1_2():
    cfg = load_config(DEFAULT, ["client.lr=1e-3", "server.lr=1E4", "client.system.speed=2.5e+3"])
    assert (cfg.client.lr, cfg.server.lr, cfg.client.system.speed) == (0.001, 10000.0, 2500.0)
    with pytest.raises(ConfigError, match=r"rounds: 10000.0 is not allowed; expected int \(write 10000\)"):
        load_config(DEFAULT, ["rounds=1e4"])


def test_an_error_line_is_one_line_and_cut(tmp_path):
    config = write(tmp_path / "c.yaml", 'data: {dataset: "mni\\nst' + "z" * 1_000_000 + '"}\n')
    code, _, err = cli("validate", config)
    assert_refused((code, "", err), "data.dataset: 'mni\\nst")
    assert len(err) < 400 and err.count("\n") == 1


# ---------------------------------------------------------------- values that passed validation, then crashed


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["client.system.over_selection=.inf"], "client.system.over_selection: inf is not allowed"),
        (["client.system.over_selection=1e308"],
         "over_selection: 1e+308 is not allowed; must be in [0, 1e6]"),
        (["data.synthetic.num_classes=1e30"], "num_classes: 1e+30 is not allowed; expected int"),
        (["data.synthetic.num_classes=100000000000000000000000000000"], "no setting takes so large a"),
        (["data.synthetic.num_classes=1000000"], "num_classes: 1000000 is not allowed; must be <="),
        (["runtime.cpus_per_worker=0.00001"], "runtime.cpus_per_worker: 1e-05 is not allowed; must be in"),
        (["runtime.reduction_groups=1000000000"], "runtime.reduction_groups: 1000000000 is not allowed"),
        (["data.num_clients=100000000"], "data.num_clients: 100000000 is not allowed; must be <="),
    ],
)  # fmt: skip
def test_values_that_crashed_a_run_are_refused_by_validate(overrides, fragment):
    args = [a for o in overrides for a in ("--set", o)]
    assert_refused(cli("validate", DEFAULT, *args), fragment)


PERSONAL = ROOT / "configs" / "personalization.yaml"  # fedrep, mlp [200, 200]: fc1, fc2, fc3
FEDBUFF = ROOT / "configs" / "fedbuff.yaml"  # async, concurrency 10, buffer 5, 120 steps


@pytest.mark.parametrize(
    ("config", "overrides", "fragment"),
    [
        (PERSONAL, ["client.personalization.personal_layers=[fc9]"],
         "client.personalization.personal_layers: 'fc9' is not a layer of mlp; its layers with parameters: "
         "fc1, fc2, fc3"),
        (PERSONAL, ["client.personalization.method=fedper", "client.personalization.personal_layers=['']"],
         "personal_layers: '' is not a layer of mlp"),
        (PERSONAL, ["model.hidden=[]"], "every layer would stay on the clients (model.hidden: [] leaves"),
        (PERSONAL, ["client.personalization.method=fedbn", "model.batchnorm=true", "model.hidden=[]"],
         "client.personalization.method: 'fedbn' keeps the batch-norm layers local; the model has none"),
        (DEFAULT, ["model.batchnorm=true", "client.batch_size=1"],
         "client.batch_size: 1 is not allowed with model.batchnorm: true; batch norm trains"),
        (DEFAULT, ["server.async.staleness=hinge"],
         "server.async.staleness: 'hinge' is not allowed with server.mode: sync; server.async acts in"),
        (FEDBUFF, ["server.mode=sync"], "server.async.concurrency: 10 is not allowed with server.mode: sync"),
        (DEFAULT, ["client.personalization.personal_layers=[fc1]"],
         "client.personalization.personal_layers: ['fc1'] is for fedper and fedrep; "
         "client.personalization.method 'none' does not read it"),
        (PERSONAL, ["client.personalization.method=fedper", "client.personalization.head_epochs=3"],
         "client.personalization.head_epochs: 3 is for fedrep; client.personalization.method 'fedper'"),
        (PERSONAL, ["client.personalization.ditto_lambda=0.5"], "ditto_lambda: 0.5 is for ditto; "),
        (DEFAULT, ["client.personalization.ditto_epochs=2"], "ditto_epochs: 2 is for ditto; "),
    ],
)  # fmt: skip
def test_settings_that_could_not_act_are_refused_by_plain_validate(config, overrides, fragment):
    assert_refused(cli("validate", config, *[a for o in overrides for a in ("--set", o)]), fragment)


METHOD = "client.personalization.method"


def test_what_a_sync_baseline_or_another_method_needs_still_validates(tmp_path):
    # Keys at their defaults are no settings: a run's resolved config.yaml holds them all.
    assert cli("validate", FEDBUFF, "--set", "server.mode=sync", "--set", "server.async={}")[0] == 0
    for method in ("none", "fedper", "ditto", "fedbn"):
        extra = ("--set", "model.batchnorm=true") if method == "fedbn" else ()
        code, resolved, err = cli("validate", PERSONAL, "--set", f"{METHOD}={method}", *extra)
        assert code == 0, err
        assert cli("validate", write(tmp_path / f"{method}.yaml", resolved))[0] == 0


@pytest.mark.parametrize(
    ("config", "overrides", "fragment"),
    [
        (FEDBUFF, ["server.async.buffer_size=10000000"],
         "server.async.buffer_size=10000000 asks for 1.2e9 client trips (10,000,000 a round over 120 "
         "steps); at most 1e8 are allowed"),
        (DEFAULT, ["rounds=1000000000"],
         "rounds=1000000000 asks for 1e10 client trips (10 a round over 1,000,000,000 rounds); at most 1e8"),
        (PERSONAL, ["client.personalization.head_epochs=1000000"],
         "client.personalization.head_epochs=1000000 asks for 3e7 local steps a round (10 clients x "
         "1,000,002 epochs x ~3 batches + 50 evaluated clients x 5 fine-tuning steps); at most 1e6 are"),
        (DEFAULT, ["server.federated_eval.every=1", "server.federated_eval.finetune_steps=1000000"],
         "server.federated_eval.finetune_steps=1000000 asks for 5e6 local steps a round (10 clients x 2 "
         "epochs x ~3 batches + 5 evaluated clients x 1,000,000 fine-tuning steps)"),
        (DEFAULT, ["rounds=1000000", "client.epochs=50"],
         "rounds=1000000 asks for 1.5e9 local steps (1,000,000 rounds x 10 clients x 50 epochs x ~3 "
         "batches); at most 1e9 are allowed"),
    ],
)  # fmt: skip
def test_runs_that_could_not_finish_are_refused_with_the_work_they_ask_for(config, overrides, fragment):
    assert_refused(cli("validate", config, *[a for o in overrides for a in ("--set", o)]), fragment)


def test_a_model_too_large_for_memory_is_refused_before_allocation():
    wide = (
        "--set",
        "model.name=cnn",
        "--set",
        "model.fc_width=1048576",
        "--set",
        "model.conv_channels=[64,64]",
    )
    assert_refused(
        cli("validate", DEFAULT, "--data", *wide),
        "has 280,073,930 parameters (1.0 GiB a copy); at most 268,435,456",
    )


def test_reduction_groups_beyond_the_clients_of_a_round_change_nothing(ray_cluster, tmp_path):
    # 10^6 groups for 6 clients would have meant a million (empty) groups a round; now each
    # client is its own group, exactly as with 6 groups.
    runs = []
    for groups in (6, 1_000_000):
        overrides = small_overrides(rounds=2, **{"runtime.reduction_groups": groups})
        runs.append(Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / str(groups)).run())
    assert runs[0].final_params.tobytes() == runs[1].final_params.tobytes()


# ---------------------------------------------------------------- data files


# A LEAF root's first natural client, alone.
LEAF = (
    "--set",
    "data.partition=natural",
    "--set",
    "data.num_clients=1",
    "--set",
    "server.clients_per_round=1",
)


def digits_with(tmp_path: Path, dataset: str, root: Path, *extra: str) -> tuple[int, str, str]:
    return cli(
        "validate", DEFAULT, "--data", "--set", f"data.dataset={dataset}", "--set", f"data.root={root}",
        "--set", "data.partition=iid", "--set", "data.download=false", *extra,
    )  # fmt: skip


def test_an_empty_server_test_set_is_refused_before_training(tmp_path):
    root = tmp_path / "leaf"
    shard = {"users": ["a"], "num_samples": [3], "user_data": {"a": {"x": [[0.5] * 784] * 3, "y": [1, 2, 3]}}}
    write(root / "femnist" / "data" / "train" / "0.json", json.dumps(shard))
    other = {"users": ["b"], "num_samples": [1], "user_data": {"b": {"x": [[0.5] * 784], "y": [1]}}}
    write(root / "femnist" / "data" / "test" / "0.json", json.dumps(other))
    assert_refused(digits_with(tmp_path, "femnist", root, *LEAF), "the server's test set of femnist is empty")


def npy(shape: tuple[int, ...], dtype: str, body: bytes) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


def test_an_npz_header_claiming_a_trillion_rows_is_refused_unallocated(tmp_path):
    with zipfile.ZipFile(tmp_path / "mnist.npz", "w") as archive:
        for name in ("x_train", "x_test"):
            archive.writestr(f"{name}.npy", npy((10**12, 28, 28), "|u1", bytes(784)))
        for name in ("y_train", "y_test"):
            archive.writestr(f"{name}.npy", npy((1,), "|u1", bytes(1)))
    assert_refused(
        digits_with(tmp_path, "mnist", tmp_path), "x_train's header declares (1000000000000, 28, 28)"
    )


def test_a_gzip_stream_is_read_no_further_than_its_header_says(tmp_path):
    """An IDX .gz that would expand without bound: fed from a FIFO that never ends, the
    reader must stop one byte past what the header declares (reading to the end would hang)."""
    fifo = tmp_path / "train-images-idx3-ubyte.gz"
    os.mkfifo(fifo)
    stop = threading.Event()

    def endless_gzip():
        # The reader closes its end after what the header declares: the point of the test.
        with (
            contextlib.suppress(BrokenPipeError),
            open(fifo, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb") as stream,
        ):
            stream.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28))
            while not stop.is_set():
                stream.write(bytes(1 << 16))  # zeros for ever

    writer = threading.Thread(target=endless_gzip, daemon=True)
    writer.start()
    try:
        with pytest.raises(DataError, match=r"has trailing bytes: its header \(2, 28, 28\) needs 1584 bytes"):
            vision._read_idx(fifo, 3)
    finally:
        stop.set()


def test_a_data_root_that_is_a_file_or_a_symlink_loop_is_one_error(tmp_path):
    assert_refused(digits_with(tmp_path, "mnist", write(tmp_path / "file", "x")), "is a file, not a folder")
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    for dataset in ("mnist", "cifar10", "femnist"):
        code, _, err = digits_with(tmp_path, dataset, loop)
        assert code == 2 and "Traceback" not in err and "not found" in err, err


def test_a_data_root_under_the_home_of_no_user_is_one_error(ray_cluster, tmp_path):
    fragment = "data.root: '~nosuchuser/x' starts with '~nosuchuser', but this machine has no home"
    assert_refused(digits_with(tmp_path, "mnist", "~nosuchuser/x"), fragment)
    root = ("--set", "data.dataset=mnist", "--set", "data.root=~nosuchuser/x", "--set", "rounds=1")
    assert_refused(cli("run", DEFAULT, *root, "--out", tmp_path / "run", "--quiet"), fragment)


def test_leaf_json_nested_thousands_deep_or_with_string_pixels_is_refused(tmp_path):
    deep = '{"users": ["u"], "num_samples": [1], "user_data": {"u": {"x": ' + "[" * 5000 + "]" * 5000 + "}}}"
    for split in ("train", "test"):
        write(tmp_path / "deep" / "femnist" / "data" / split / "0.json", deep)
    assert_refused(
        digits_with(tmp_path, "femnist", tmp_path / "deep", *LEAF), "nested thousands of levels deep"
    )
    strings = {"users": ["u"], "num_samples": [1], "user_data": {"u": {"x": [["0.5"] * 784], "y": [1]}}}
    for split in ("train", "test"):
        write(tmp_path / "str" / "femnist" / "data" / split / "0.json", json.dumps(strings))
    assert_refused(
        digits_with(tmp_path, "femnist", tmp_path / "str", *LEAF), "each x row must hold 784 numbers"
    )


def fake_mnist(folder: Path) -> None:
    """Well-formed IDX files that are not the published MNIST."""
    labels = bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + bytes(range(10))
    images = bytes([0, 0, 8, 3]) + struct.pack(">3I", 10, 28, 28) + bytes(10 * 784)
    for prefix in ("train", "t10k"):
        write(folder / f"{prefix}-images-idx3-ubyte", images)
        write(folder / f"{prefix}-labels-idx1-ubyte", labels)


def test_files_on_disk_are_checked_against_the_published_md5s(tmp_path):
    fake_mnist(tmp_path)
    assert_refused(
        digits_with(tmp_path, "mnist", tmp_path),
        "mnist's train-images-idx3-ubyte has md5 ",
    )
    small = ("--set", "data.num_clients=5", "--set", "server.clients_per_round=2")  # 10 images
    code, _, err = digits_with(tmp_path, "mnist", tmp_path, "--set", "data.verify=false", *small)
    assert code == 0, err  # the user's own MNIST-format data, knowingly


@pytest.mark.skipif(
    not (SHARED_DATA / "mnist" / "mnist.npz").is_file(), reason="no ../shared/data/mnist/mnist.npz"
)
def test_the_published_mnist_passes_and_is_hashed_once(tmp_path):
    npz = tmp_path / "mnist.npz"
    npz.write_bytes((SHARED_DATA / "mnist" / "mnist.npz").read_bytes())
    vision.load_mnist(tmp_path, download=False)
    record = json.loads((tmp_path / ".fedsim-checked.json").read_text())
    assert sorted(record) == [f"mnist.npz#{name}" for name in sorted(vision.IDX_FILES)]
    # The record is what a second load trusts while the file is unchanged: falsify it and the
    # load fails without hashing; touch the file and it is hashed again, and passes.
    falsified = {key: [size, mtime, "0" * 32] for key, (size, mtime, _) in record.items()}
    (tmp_path / ".fedsim-checked.json").write_text(json.dumps(falsified))
    with pytest.raises(DataError, match="has md5 00000000000000000000000000000000"):
        vision.load_mnist(tmp_path, download=False)
    os.utime(npz, ns=(time.time_ns(), time.time_ns()))
    assert vision.load_mnist(tmp_path, download=False).name == "mnist"


# ---------------------------------------------------------------- checkpoints and the run directory


def run(tmp_path: Path, name: str, rounds: int, **extra):
    overrides = small_overrides(rounds=rounds, **{"runtime.checkpoint_every": 1, **extra})
    return Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / name).run()


def timeless(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def flip_byte(path: Path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_the_latest_checkpoint_falls_back_to_the_previous_one(
    ray_cluster, tmp_path, caplog
):
    straight = run(tmp_path, "straight", 4)
    run(tmp_path, "damaged", 3)
    flip_byte(tmp_path / "damaged" / "checkpoints" / "round_000003.safetensors")
    with caplog.at_level("WARNING", logger="fedsim"):
        resumed = Simulation.resume_from(tmp_path / "damaged", {"rounds": 4}).run()
    assert "skipping a damaged checkpoint" in caplog.text and "round_000003" in caplog.text
    assert resumed.final_params.tobytes() == straight.final_params.tobytes()
    assert timeless(resumed.rows) == timeless(straight.rows)


def test_when_every_checkpoint_is_damaged_resume_stops_with_one_error(ray_cluster, tmp_path):
    run(tmp_path, "damaged", 2)
    metrics = (tmp_path / "damaged" / "metrics.jsonl").read_bytes()
    for path in (tmp_path / "damaged" / "checkpoints").iterdir():
        flip_byte(path, 8)
    with pytest.raises(FedsimError, match="no intact checkpoint at or before round 2"):
        Simulation.resume_from(tmp_path / "damaged", {"rounds": 4}).run()
    assert (tmp_path / "damaged" / "metrics.jsonl").read_bytes() == metrics  # nothing lost


def test_rows_cut_from_metrics_are_rebuilt_bit_for_bit(ray_cluster, tmp_path):
    straight = run(tmp_path, "straight", 4)
    run(tmp_path, "cut", 3)
    log = tmp_path / "cut" / "metrics.jsonl"
    text = log.read_text()
    log.write_text(text[: text.index('{"round": 2') + 40])  # mid-file: round 1 whole, round 2 torn
    resumed = Simulation.resume_from(tmp_path / "cut", {"rounds": 4}).run()
    written = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["round"] for r in written] == [1, 2, 3, 4]
    assert timeless(written) == timeless(straight.rows)
    assert resumed.final_params.tobytes() == straight.final_params.tobytes()


def test_a_config_edited_in_place_is_refused_on_resume(ray_cluster, tmp_path):
    run(tmp_path, "edited", 2)
    config = tmp_path / "edited" / "config.yaml"
    config.write_text(config.read_text().replace("  lr: 0.1\n", "  lr: 0.5\n", 1))
    with pytest.raises(
        ConfigError,
        match=r"differs from the config checkpoint round 2 was trained with \(client.lr: 0.1 -> 0.5\)",
    ):
        Simulation.resume_from(tmp_path / "edited", {"rounds": 4}).run()


def test_a_run_directory_in_use_cannot_be_resumed_twice(ray_cluster, tmp_path):
    run(tmp_path, "busy", 1)
    holder = RunLock(tmp_path / "busy")
    holder.acquire()  # as a first `fedsim run --resume` would hold it
    try:
        rows = (tmp_path / "busy" / "metrics.jsonl").read_text()
        with pytest.raises(FedsimError, match=f"is in use by another fedsim run \\(pid {os.getpid()}\\)"):
            Simulation.resume_from(tmp_path / "busy", {"rounds": 3}).run()
        assert (tmp_path / "busy" / "metrics.jsonl").read_text() == rows
        code, out, _ = cli("report", tmp_path / "busy", "--out", tmp_path / "report")
        assert code == 0 and f"is still running (pid {os.getpid()})" in out
    finally:
        holder.release()


@pytest.mark.parametrize("name", ["../escape", "/tmp/absolute", "n" * 300, ".hidden", "a/b"])
def test_a_run_name_cannot_leave_the_output_folder(tmp_path, name):
    assert_refused(cli("run", DEFAULT, "--name", name, "--set", f"runtime.out_dir={tmp_path}"), "name: ")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_paths_are_one_error(ray_cluster, tmp_path):
    assert_refused(cli("run", DEFAULT, "--out", "/proc/fedsim-run", "--set", "rounds=1"), "/proc/fedsim-run")
    run(tmp_path, "done", 1)
    assert_refused(cli("report", tmp_path / "done", "--out", "/proc/fedsim-report"), "/proc/fedsim-report")


KILL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from simulator.cli import main
from simulator.driver.divergence import DivergenceWatch
sys.exit(main(["run", {config!r}, "--set", "rounds=100000", "--out", {out!r}, "--quiet"]))
"""


def ray_descendants(pid: int) -> list[int]:
    """PIDs under ``pid`` whose command line names Ray."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(stat[1]), (entry / "cmdline").read_bytes())
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        for child, (ppid, cmd) in table.items():
            if ppid == parent:
                stack.append(child)
                if b"ray" in cmd.lower():
                    found.append(child)
    return found


@pytest.mark.slow
def test_an_embedded_ray_does_not_outlive_a_killed_driver(tmp_path):
    script = KILL_SCRIPT.format(root=str(ROOT), config=str(DEFAULT), out=str(tmp_path / "run"))
    driver = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "run" / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # training has started: Ray, its agents and the workers are up
        ray_processes = ray_descendants(driver.pid)
        assert any(b"Agent" in Path(f"/proc/{p}/cmdline").read_bytes() for p in ray_processes)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    deadline = time.monotonic() + 30
    while [p for p in ray_processes if Path(f"/proc/{p}").exists()] and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in ray_processes if Path(f"/proc/{p}").exists()]
    for pid in left:  # never leave them running for the rest of the suite
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert left == []


# ---------------------------------------------------------------- numerical faults


def test_a_run_whose_every_update_is_non_finite_stops_as_diverged(ray_cluster, tmp_path):
    overrides = small_overrides(rounds=20, **{"client.lr": 1e38})
    with pytest.raises(
        RunDiverged,
        match=r"diverged at round 3: every client's update was NaN or Inf \(likely client.lr=1e\+38",
    ):
        Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "nan").run()
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["rounds_completed"] == 3
    assert "client.lr=1e+38" in summary["error"]
    code, _, err = cli("run", "--resume", tmp_path / "nan")  # the CLI's exit code for it
    assert code == 3 and "diverged at round" in err and "Traceback" not in err


def test_an_overflowing_server_step_stops_as_diverged_with_its_own_cause(ray_cluster, tmp_path):
    overrides = small_overrides(rounds=20, **{"server.lr": 1e38, "server.stop_after_nonfinite_rounds": 2})
    with pytest.raises(RunDiverged, match=r"\(likely server.lr=1e\+38 too large for sgd\)"):
        Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "server").run()


def test_zero_means_a_run_that_learns_nothing_still_runs_to_the_end(ray_cluster, tmp_path):
    overrides = small_overrides(rounds=4, **{"client.lr": 1e38, "server.stop_after_nonfinite_rounds": 0})
    history = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "on").run()
    assert history.summary["status"] == "completed" and len(history.rows) == 4


def test_a_finite_loss_that_explodes_stops_as_diverged_naming_the_growth(ray_cluster, tmp_path):
    """client.lr=1e4 takes the digits test loss from ~2.3 to thousands while it stays finite.
    Two evaluations above 100 x the initial model's loss are not yet the 3 in a row that stop
    a run; resumed to a third round (the count goes on from the rows it has), it stops as
    diverged, exit code 3. Off, it would say 'completed'
    (test_the_loss_growth_counts_evaluations_in_a_row_from_a_positive_initial_loss)."""
    overrides = small_overrides(rounds=2, **{"client.lr": 1e4})
    history = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "grows").run()
    assert history.summary["status"] == "completed"
    assert all(math.isfinite(row["test_loss"]) and row["test_loss"] > 230 for row in history.rows)
    code, _, err = cli("run", "--resume", tmp_path / "grows", "--set", "rounds=3")
    assert code == 3 and "Traceback" not in err
    assert re.search(
        r"diverged at round 3: the test loss \S+ stayed above server.stop_after_loss_growth=100 x chance "
        r"level ln\(10\)=2.303 \(the initial model's 2.\d+ is below it\) for 3 evaluations in a row "
        r"\(likely client.lr=10000 too large",
        err,
    ), err
    summary = json.loads((tmp_path / "grows" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["rounds_completed"] == 3
    assert "stop_after_loss_growth=100" in summary["error"]


def test_the_loss_growth_counts_evaluations_in_a_row_from_a_positive_initial_loss():
    cfg = load_config(DEFAULT, ["server.stop_after_loss_growth=10", "server.stop_after_loss_growth_evals=2"])
    params = np.zeros(4, np.float32)

    def row(round_: int, loss: float | None) -> dict:
        return {"round": round_, "num_clients": 4, "rejected_updates": 0, "test_loss": loss}

    watch = DivergenceWatch(cfg, initial_loss=lambda: 2.0)
    for round_, loss in enumerate([25.0, 19.0, 25.0, None], 1):  # 19 < 10 x 2 ends the count
        watch.check(row(round_, loss), params)  # not evaluated: the count stands
    with pytest.raises(RunDiverged, match=r"diverged at round 5: the test loss 21 stayed above .* 2 for 2"):
        watch.check(row(5, 21.0), params)
    for initial in (0.0, -1.0, math.nan):  # no scale to grow from (a loss that may be <= 0): off
        watch = DivergenceWatch(cfg, initial_loss=lambda value=initial: value)
        for round_ in range(1, 5):
            watch.check(row(round_, 1e30), params)
    off = load_config(DEFAULT, ["server.stop_after_loss_growth=null"])
    watch = DivergenceWatch(off, initial_loss=lambda: pytest.fail("off: nothing to measure"))
    for round_ in range(1, 5):
        watch.check(row(round_, 1e30), params)


def test_the_loss_growth_scale_is_floored_at_chance_level_for_a_classifier():
    """factor x max(initial, ln C) for classification; the initial loss alone for regression."""
    pretrained = LossGrowth(100, 3, initial=0.005, classes=10)
    assert pretrained.scale == math.log(10)
    assert not any(pretrained.count(loss) for loss in (1.0, 200.0, 230.2))  # 230.2 < 100 ln 10
    assert [pretrained.count(231.0) for _ in range(3)] == [False, False, True]
    assert (
        "x chance level ln(10)=2.303 (the initial model's 0.005 is below it) for 3" in pretrained.describe()
    )
    regression = LossGrowth(100, 3, initial=0.005, classes=None)  # no chance level to floor at
    assert [regression.count(0.6) for _ in range(3)] == [False, False, True]
    untrained = LossGrowth(100, 3, initial=2.5, classes=10)  # above chance: its own loss is the scale
    assert untrained.scale == 2.5 and not untrained.count(240.0)
    assert LossGrowth(100, 3, initial=0.005, classes=1).scale == 0.005  # ln 1 = 0


def test_a_pretrained_classifier_fine_tuned_above_100x_its_small_loss_is_not_stopped(
    ray_cluster, tmp_path, monkeypatch
):
    """A pretrained model's initial test loss can be 0.005: a healthy fine-tune whose
    loss sits above 100 x that, yet far below 100 x ln 10 (chance level), runs to the end.
    The measured initial loss is patched on the driver (the run itself is real): with the
    initial loss as the scale, evaluations above 0.5 would have stopped it."""
    monkeypatch.setattr("simulator.driver.simulation._initial_test_loss", lambda state: 0.005)
    overrides = small_overrides(rounds=2, **{"server.stop_after_loss_growth_evals": 1})
    history = Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / "fine_tune").run()
    assert history.summary["status"] == "completed" and len(history.rows) == 2
    assert all(0.5 < row["test_loss"] < 100 * math.log(10) for row in history.rows)


def test_a_divergence_under_a_simulated_attack_blames_the_attack_first():
    """configs/robust_attack.yaml with the mean: sign-flipped updates drive the loss up."""
    attacked = load_config(ROOT / "configs" / "robust_attack.yaml", ["server.aggregator=mean"])
    cause = DivergenceWatch(attacked).likely_cause()
    assert cause.startswith("server.attack.kind=sign_flip with server.aggregator=mean, or client.lr=0.1 ")


# ---------------------------------------------------------------- other commands


def test_prune_and_report_refuse_empty_and_unusable_arguments(ray_cluster, tmp_path):
    run(tmp_path, "done", 1)
    assert_refused(cli("prune", tmp_path / "done", "--method", ","), "--method: ',' names nothing")
    assert_refused(cli("prune", tmp_path / "done", "--sparsity", ",,"), "--sparsity: ',,' names nothing")
    assert_refused(cli("prune", tmp_path / "done", "--sparsity", "nan"), "not a finite number")


# ---------------------------------------------------------------- found by review: more of the same


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("client: {lr: !!float abc}\n", "a value YAML cannot build"),
        ("rounds: !!int abc\n", "a value YAML cannot build"),
        ("data: {download: !!bool maybe}\n", "a value YAML cannot build"),
        ("name: !!timestamp abc\n", "a value YAML cannot build"),
        ("rounds: 0x" + "f" * 5000 + "\n", "an integer of 5002 characters"),
        ("runtime: {out_dir: &x " + "a" * 600_000 + "}\nname: [" + ", ".join(["*x"] * 90_000) + "]\n",
         "characters once aliases are expanded"),
    ],
    ids=["float-tag", "int-tag", "bool-tag", "timestamp-tag", "hex-digits", "aliased-long-string"],
)  # fmt: skip
def test_values_yaml_cannot_build_or_that_expand_are_refused(tmp_path, text, fragment):
    assert_refused(cli("validate", write(tmp_path / "c.yaml", text)), fragment)


def test_numbers_and_dates_follow_the_yaml_1_2_core_schema(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", "name: 2020-01-01\nseed: 0123\n"), ["runtime.out_dir=1:30"])
    assert (cfg.name, cfg.seed, cfg.runtime.out_dir) == ("2020-01-01", 123, "1:30")  # not a date, 83, 90
    assert load_config(DEFAULT, ["seed=0o17", "rounds=0x10"]).seed == 15


def test_the_resolved_config_loads_back_equal_even_for_number_like_strings(tmp_path):
    cfg = load_config(DEFAULT, ['name="1e3"', 'runtime.out_dir="0o17"', 'data.root="2020-01-01"'])
    assert load_config(write(tmp_path / "resolved.yaml", dump_yaml(cfg))) == cfg


def test_a_deep_dotted_key_or_a_monstrous_address_is_one_error(tmp_path):
    assert_refused(cli("validate", DEFAULT, "--set", "name" + ".a" * 20_000 + "=x"), "at most 32 parts")
    # In a process of its own: this one's Ray is up, and a run would join it, address or not.
    address = "a" * 300 + ":80"
    argv = ["run", str(DEFAULT), "--address", address, "--out", str(tmp_path / "r")]
    result = subprocess.run(
        [sys.executable, "-m", "simulator", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert_refused((result.returncode, "", result.stderr), "no Ray cluster answers at 'aaaa")
    assert not (tmp_path / "r").exists()


def test_leaf_shards_that_are_not_regular_files_are_not_read(tmp_path):
    for name, make in (("fifo", os.mkfifo), ("zero", lambda p: os.symlink("/dev/zero", p))):
        root = tmp_path / name / "femnist" / "data"
        for split in ("train", "test"):
            (root / split).mkdir(parents=True)
            make(root / split / "0.json")
        assert_refused(digits_with(tmp_path, "femnist", tmp_path / name, *LEAF), "0.json: not a regular file")


def test_npz_members_zipfile_cannot_read_are_one_error(tmp_path):
    for name, offset, value in (("encrypted", 6, 0x01), ("method9", 8, 9)):  # flag bits; compression method
        with zipfile.ZipFile(tmp_path / "plain.zip", "w") as archive:
            for key in ("x_train", "y_train", "x_test", "y_test"):
                archive.writestr(f"{key}.npy", npy((1,), "|u1", bytes(1)))
        data = bytearray((tmp_path / "plain.zip").read_bytes())
        for header in (b"PK\x03\x04", b"PK\x01\x02"):  # local and central headers alike
            start = data.find(header)
            while start != -1:
                field = start + offset + (2 if header == b"PK\x01\x02" else 0)
                data[field] = value
                start = data.find(header, start + 4)
        write(tmp_path / name / "mnist.npz", bytes(data))
        assert_refused(digits_with(tmp_path, "mnist", tmp_path / name), "cannot read as an .npz archive")


PERSONALIZATION = ROOT / "configs" / "personalization.yaml"


def test_a_run_whose_most_updates_are_non_finite_stops_as_diverged(ray_cluster, tmp_path):
    """client.lr=1e30 with FedRep: 8-10 of 10 updates NaN every round, the rest zero."""
    overrides = {
        "client.lr": 1e30, "rounds": 4, "server.federated_eval.every": 0,
        "runtime.workers": 2, "runtime.cpus_per_worker": 0.5,
    }  # fmt: skip
    with pytest.raises(
        RunDiverged,
        match=r"diverged at round 3: \d+ of 10 updates were NaN or Inf, more than "
        r"server.stop_after_rejected_share=0.5 \(likely client.lr=1e\+30 too large\)",
    ):
        Simulation.from_yaml(PERSONALIZATION, overrides, run_dir=tmp_path / "most").run()
    assert json.loads((tmp_path / "most" / "summary.json").read_text())["status"] == "diverged"
    off = {**overrides, "server.stop_after_rejected_share": 1.0}  # only all-rejected rounds count
    history = Simulation.from_yaml(PERSONALIZATION, off, run_dir=tmp_path / "off").run()
    assert history.summary["status"] == "completed" and len(history.rows) == 4
    assert all(row["rejected_updates"] >= 8 for row in history.rows)


@pytest.mark.parametrize("key", ["weight_decay", "prox_mu"])
def test_a_divergence_from_weight_decay_or_prox_mu_names_that_key(ray_cluster, tmp_path, key):
    overrides = small_overrides(rounds=20, **{f"client.{key}": 1e300})
    with pytest.raises(RunDiverged, match=rf"\(likely client.{key}=1e\+300 too large for client.lr=0.1: "):
        Simulation.from_yaml(DEFAULT, overrides, run_dir=tmp_path / key).run()


def test_the_rejected_share_counts_rounds_where_more_than_it_was_rejected():
    watch = DivergenceWatch(load_config(DEFAULT, ["server.stop_after_nonfinite_rounds=2"]))
    params = np.zeros(4, np.float32)

    def row(round_: int, rejected: int) -> dict:
        return {"round": round_, "num_clients": 10, "rejected_updates": rejected, "test_loss": 2.3}

    watch.check(row(1, 6), params)
    watch.check(row(2, 5), params)  # exactly half is not more than 0.5: the streak ends
    watch.check(row(3, 6), params)
    with pytest.raises(RunDiverged, match="diverged at round 4: 9 of 10 updates were NaN or Inf"):
        watch.check(row(4, 9), params)


def test_a_sweep_of_too_many_runs_is_refused_before_any_is_built(tmp_path):
    out = tmp_path / "sweep"
    seeds = cli("sweep", DEFAULT, "--grid", "client.lr=0.1,0.2,0.3", "--repeat-seeds", 10**9, "--out", out)
    assert_refused(seeds, "sweep: 3 grid points x 1,000,000,000 seeds = 3,000,000,000 runs; at most 10,000")
    values = ",".join(str(b) for b in range(1, 15_001))
    axis = cli("sweep", DEFAULT, "--grid", f"client.batch_size={values}", "--out", out)
    assert_refused(axis, "--grid 'client.batch_size': 15,000 values; a sweep runs at most 10,000 runs")
    points = cli("sweep", DEFAULT, "--grid", "client.lr=0.1,0.2", "--grid", "client.epochs=1,2",
                 "--repeat-seeds", 2_501, "--out", out)  # fmt: skip
    assert_refused(points, "4 grid points x 2,501 seeds = 10,004 runs")
    assert not out.exists()


def test_prune_refuses_more_sparsities_or_fine_tuning_than_it_could_do(tmp_path):
    """Refused from the run's config.yaml alone, before its data or Ray load."""
    write(tmp_path / "done" / "config.yaml", dump_yaml(load_config(DEFAULT)))
    many = ",".join(f"{i / 30_000:.6f}" for i in range(25_000))
    refused = cli("prune", tmp_path / "done", "--sparsity", many)
    assert_refused(refused, "--sparsity: 25,000 values; at most 1,000")
    assert_refused(
        cli("prune", tmp_path / "done", "--finetune-rounds", 10**9),
        "--finetune-rounds 1,000,000,000: 4 methods x 5 sparsities x 1,000,000,000 rounds x 10 clients "
        "per round = 200,000,000,000 client trainings; at most 1,000,000",
    )
    assert_refused(cli("prune", tmp_path / "done", "--sparsity", "0.5,1.5"), "got 1.5")
    assert_refused(cli("prune", tmp_path / "done", "--method", "random,random"), "random is listed twice")


def test_a_damaged_checksum_record_is_ignored_not_trusted(tmp_path):
    fake_mnist(tmp_path)
    write(tmp_path / ".fedsim-checked.json", "[" * 100_000 + "]" * 100_000)
    assert_refused(digits_with(tmp_path, "mnist", tmp_path), "has md5")  # hashed afresh, not a crash
    assert oct((tmp_path / ".fedsim-checked.json").stat().st_mode & 0o777) == "0o644"
    (tmp_path / ".fedsim-checked.json").unlink()
    os.mkfifo(tmp_path / ".fedsim-checked.json")
    assert_refused(digits_with(tmp_path, "mnist", tmp_path), "has md5")  # no hang on the FIFO


def test_a_gzip_declaring_far_more_than_it_could_hold_is_refused_unread(tmp_path):
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 60_000, 28, 28)  # 47 MB from a 40-byte file
    write(tmp_path / "bomb.gz", gzip.compress(header))
    with pytest.raises(DataError, match="over 100x the .* compressed bytes it could come from"):
        vision._read_idx(tmp_path / "bomb.gz", 3)


def test_synthetic_spreads_that_overflow_float32_are_refused():
    for key in ("alpha", "beta"):
        with pytest.raises(ConfigError, match=f"data.synthetic.{key}: 1e\\+80 is not allowed; must be in"):
            load_config(DEFAULT, ["data.dataset=synthetic", f"data.synthetic.{key}=1e80"])
    with pytest.raises(ConfigError, match=r"data.alpha: 1e\+300 is not allowed"):
        load_config(DEFAULT, ["data.alpha=1e300"])


def test_tampered_checkpoint_metadata_is_a_damaged_checkpoint(ray_cluster, tmp_path, caplog):
    from safetensors.numpy import load_file, save_file

    straight = run(tmp_path, "straight", 3)
    run(tmp_path, "tampered", 2)
    path = tmp_path / "tampered" / "checkpoints" / "round_000002.safetensors"
    save_file(load_file(str(path)), str(path), metadata={"fedsim": "[" * 100_000 + "]" * 100_000})
    with caplog.at_level("WARNING", logger="fedsim"):
        resumed = Simulation.resume_from(tmp_path / "tampered", {"rounds": 3}).run()
    assert "round_000002" in caplog.text
    assert resumed.final_params.tobytes() == straight.final_params.tobytes()


def test_moving_the_data_is_not_editing_the_experiment(ray_cluster, tmp_path):
    run(tmp_path, "moved", 2)
    config = tmp_path / "moved" / "config.yaml"
    config.write_text(config.read_text().replace("  root: data\n", "  root: elsewhere\n"))
    assert Simulation.resume_from(tmp_path / "moved", {"rounds": 3}).run().rows[-1]["round"] == 3


def test_a_non_finite_test_loss_counts_until_an_evaluation_says_otherwise():
    watch = DivergenceWatch(load_config(DEFAULT, ["server.stop_after_nonfinite_rounds=3"]))
    params = np.zeros(4, np.float32)

    def row(round_: int, loss: float | None) -> dict:
        return {"round": round_, "num_clients": 4, "rejected_updates": 0, "test_loss": loss}

    watch.check(row(1, float("inf")), params)
    watch.check(row(2, None), params)  # not evaluated: the model is still known broken
    with pytest.raises(RunDiverged, match="diverged at round 3: the model's test loss is inf"):
        watch.check(row(3, None), params)
    watch = DivergenceWatch(load_config(DEFAULT, ["server.stop_after_nonfinite_rounds=2"]))
    watch.check(row(1, float("nan")), params)
    watch.check(row(2, 0.5), params)  # a finite evaluation ends it
    watch.check(row(3, None), params)


def test_a_lock_file_that_is_a_fifo_neither_blocks_nor_crashes(tmp_path):
    os.mkfifo(tmp_path / ".lock")
    with pytest.raises(FedsimError, match="is a FIFO, not a regular file"):
        RunLock(tmp_path).acquire()
    from simulator.rundir.directory import running_pid

    assert running_pid(tmp_path) is None
