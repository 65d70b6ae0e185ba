"""Hostile and careless inputs for ``fedsim validate CONFIG --data``, generated from a seed.

Run as a script by tests/test_fuzz.py, in its own process with an address-space limit:
``python tests/fuzz_inputs.py OUT_DIR SEED MUTATIONS``. Each case is a config file (and
for data cases, files under a data root); each goes through ``simulator.cli.main``
in-process with a per-case timer, and one JSON line per case records the exit code,
the error line, whether an exception escaped, and whether the timer fired.

Kinds of case (``kind`` in the record; ``must_refuse`` when exit 2 is the only answer):
yaml (bombs, nesting, duplicate keys, huge numbers, bad encodings, odd files),
value (a valid config with one to three keys set to hostile values), data (dataset
files that lie about their shape, expand without bound, nest deeply, hold strings).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import resource
import signal
import struct
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASE_SECONDS = 10.0
MEMORY_BYTES = 8 << 30  # address space: torch alone maps about 2 GiB

BASE = {
    "name": "fuzz",
    "rounds": 2,
    "data": {"dataset": "digits", "num_clients": 8, "partition": "dirichlet", "alpha": 0.5},
    "model": {"name": "mlp", "hidden": [16]},
    "client": {"lr": 0.05, "epochs": 1, "batch_size": 10},
    "server": {"clients_per_round": 4},
    "runtime": {"workers": 1, "reduction_groups": 2},
}
HOSTILE_VALUES = [
    float("inf"), float("-inf"), float("nan"), 0, -1, 1e308, -1e308, 1e-320, 10**25, -(10**25),
    2**63, 2**31, 10**9, 0.0, -0.5, 0.5, 1.5, 3, "", "x" * 5000, "a\nb", "..", "/", "../..",
    None, [], {}, [1, 2], [0], [-5], [10**8], True, False, "nan", "inf", "1e4", "adam", "uniform",
    {"nested": {"deeper": 1}}, [[1, 2], [3]], "\u202e\u0000evil", "éàü", 7, 100000, 1e-4, 0.0001,
]  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    must_refuse: bool
    argv: list[str]


def _leaf_keys() -> list[str]:
    """Every dotted key of the resolved config (what ``fedsim validate`` prints)."""
    from simulator.config.loading import dump_yaml
    from simulator.config.schema import Config
    from tests.key_effects import validate_keys

    return validate_keys(dump_yaml(Config()))


def _set(config: dict, key: str, value) -> None:
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return
    node[parts[-1]] = value


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _validate(config: Path, *extra: str) -> list[str]:
    return ["validate", str(config), "--data", *extra]


def yaml_cases(out: Path) -> list[Case]:
    cases = []

    def add(name: str, text: str | bytes, must_refuse: bool = True, *extra: str) -> None:
        cases.append(Case(name, "yaml", must_refuse, _validate(_write(out / f"{name}.yaml", text), *extra)))

    for width, depth in ((10, 9), (10, 12), (100, 4), (2, 40)):
        lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, depth)]
        add(f"list_bomb_{width}x{depth}", "\n".join(lines) + "\nname: bomb\n")
        maps = ["m0: &m0 {" + ", ".join(f"k{j}: {j}" for j in range(width)) + "}"]
        maps += [
            f"m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(width)) + "}"
            for i in range(1, depth)
        ]
        add(f"map_bomb_{width}x{depth}", "\n".join(maps) + "\n")
    for depth in (33, 100, 1000, 5000, 50000):
        add(f"nest_list_{depth}", "data: " + "[" * depth + "]" * depth + "\n")
        add(f"nest_map_{depth}", "data: " + "{a: " * depth + "1" + "}" * depth + "\n")
    for digits in (31, 100, 5000, 100000):
        add(f"int_{digits}_digits", f"rounds: {'9' * digits}\n")
        add(f"float_{digits}_digits", f"client: {{lr: 0.{'1' * digits}}}\n", False)
    add("dup_top", "rounds: 5\nrounds: 7\n")
    add("dup_section", "client: {lr: 0.1}\nclient: {epochs: 2}\n")
    add("dup_nested", "client:\n  lr: 0.1\n  lr: 0.2\n")
    for value in (".inf", "-.inf", ".nan", ".NaN", "+.inf", "1e999", "-1e999"):
        add(f"nonfinite_lr_{value}", f"client: {{lr: {value}}}\n")
        add(f"nonfinite_over_{value}", f"client: {{system: {{over_selection: {value}}}}}\n")
    add("exponent_lr", "client: {lr: 1e-3}\n", False)
    add("exponent_rounds", "rounds: 1e4\n")
    add("newline_value", 'data: {dataset: "digits\\nrm -rf /"}\n')
    add("megabyte_value", "data: {dataset: " + "z" * 900_000 + "}\n")
    add("megabyte_key", "z" * 900_000 + ": 1\n")
    add("over_a_megabyte", "name: x\n" + "#" * (1 << 20) + "\n")
    add("top_level_list", "- 1\n- 2\n")
    add("top_level_scalar", "just a string\n")
    add("binary", bytes(range(256)) * 50)
    add("latin1", "name: caf\xe9\n".encode("latin-1"))
    add("tabs", "client:\n\tlr: 0.1\n")
    add("undefined_alias", "client: *nothing\n")
    add("merge_key", "base: &b {lr: 0.1}\nclient: {<<: *b, epochs: 2}\n")
    add("key_is_a_list", "[1, 2]: 3\n")
    add("key_is_null", "null: 3\n")
    add("unknown_everywhere", "clinet: {lr: 0.1}\n")
    add("section_as_scalar", "client: 5\n")
    add("python_tag", "client: !!python/object/apply:os.system ['true']\n")
    for tag, value in (
        ("float", "abc"),
        ("int", "abc"),
        ("bool", "maybe"),
        ("timestamp", "abc"),
        ("binary", "!!"),
    ):
        add(f"tag_{tag}", f"client: {{lr: !!{tag} {value}}}\n")
    add("hex_digits", "rounds: 0x" + "f" * 5000 + "\n")
    add("date_name", "name: 2020-13-45\n", False)
    add("sexagesimal", "rounds: 1:30\n")
    add(
        "aliased_long_string",
        "runtime: {out_dir: &x " + "a" * 600_000 + "}\nname: [" + ", ".join(["*x"] * 90_000) + "]\n",
    )
    add("set_deep_key", "", True, "--set", "name" + ".a" * 20_000 + "=x")
    add("set_long_key", "", True, "--set", "x" * 100_000 + "=1")
    add("empty", "", False)
    add("comments_only", "# nothing\n", False)
    add("set_newline", "", False, "--set", "name=a\nb")  # YAML folds it: name "a b"
    add("set_no_equals", "", True, "--set", "client.lr")
    add("set_section_value", "", True, "--set", "client=3")
    add("set_bomb", "", True, "--set", "client.lr=[&a [1,1,1,1,1,1,1,1,1,1], *a, *a, *a, *a, *a, *a]")
    add("set_huge_int", "", True, "--set", "rounds=" + "9" * 5000)
    add("set_exponent", "", False, "--set", "client.lr=1e-3")
    add("set_path_name", "", True, "--set", "name=../../etc")
    add("set_long_name", "", True, "--set", "name=" + "n" * 300)
    # Settings that could not act, or work no run could finish (refused before any data).
    add("async_key_in_sync_run", "server: {async: {buffer_size: 5}}\n")
    add("async_buffer_of_millions", "server: {mode: async, async: {buffer_size: 10000000}}\n")
    add("unknown_personal_layer", "client: {personalization: {method: fedper, personal_layers: [fc9]}}\n")
    add("head_epochs_without_fedrep", "client: {personalization: {head_epochs: 3}}\n")
    add("million_head_epochs", "client: {personalization: {method: fedrep, head_epochs: 1000000}}\n")
    add("million_finetune_steps", "server: {federated_eval: {every: 1, finetune_steps: 1000000}}\n")
    add("batchnorm_batch_of_one", "model: {batchnorm: true}\nclient: {batch_size: 1}\n")
    # Batch norm evaluates with the whole evaluated set's statistics: any eval batch serves.
    add("batchnorm_eval_batch_of_one", "model: {batchnorm: true}\nserver: {eval_batch_size: 1}\n", False)
    fedbn = "model: {batchnorm: true, hidden: []}\nclient: {personalization: {method: fedbn}}\n"
    add("fedbn_without_hidden_layers", fedbn)
    add("data_root_of_no_user", "data: {dataset: mnist, root: ~nosuchuser/x, download: false}\n")
    cases.append(Case("config_is_a_folder", "yaml", True, _validate(out)))
    cases.append(Case("config_missing", "yaml", True, _validate(out / "missing.yaml")))
    cases.append(Case("config_dev_zero", "yaml", True, _validate(Path("/dev/zero"))))
    fifo = out / "fifo.yaml"
    with contextlib.suppress(FileExistsError):
        os.mkfifo(fifo)
    cases.append(Case("config_fifo", "yaml", True, _validate(fifo)))
    loop = out / "loop.yaml"
    with contextlib.suppress(FileExistsError):
        os.symlink(loop, loop)
    cases.append(Case("config_symlink_loop", "yaml", True, _validate(loop)))
    return cases


# The valid configs the value cases start from: digits, Synthetic(α, β), a CNN.
BASES = [
    BASE,
    {**BASE, "data": {"dataset": "synthetic", "num_clients": 8, "partition": "natural",
                      "synthetic": {"samples_per_device": 30}}},
    {**BASE, "model": {"name": "cnn", "conv_channels": [2, 2], "fc_width": 8}},
]  # fmt: skip


def value_cases(out: Path, rng: random.Random, count: int) -> list[Case]:
    keys = _leaf_keys()
    cases = []
    for i in range(count):
        config = json.loads(json.dumps(BASES[i % len(BASES)]))
        for key in rng.sample(keys, rng.randint(1, 3)):
            _set(config, key, rng.choice(HOSTILE_VALUES))
        path = _write(out / f"value_{i:04d}.yaml", yaml.safe_dump(config, allow_unicode=True))
        cases.append(Case(f"value_{i:04d}", "value", False, _validate(path)))
    return cases


def _idx(shape: tuple[int, ...], body: bytes) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + body


def _mnist_root(root: Path, images: bytes, labels: bytes, gz: bool = False) -> None:
    names = {
        "train-images-idx3-ubyte": images,
        "train-labels-idx1-ubyte": labels,
        "t10k-images-idx3-ubyte": images,
        "t10k-labels-idx1-ubyte": labels,
    }
    for name, content in names.items():
        _write(root / (name + ".gz" if gz else name), gzip.compress(content) if gz else content)


def _npz(path: Path, headers: dict[str, bytes]) -> None:
    """An .npz whose members are raw .npy bytes (headers may lie)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in headers.items():
            archive.writestr(f"{name}.npy", content)


def _npy(shape: tuple[int, ...], dtype: str, body: bytes) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + body


def _leaf(root: Path, name: str, shard: str | bytes) -> None:
    for split in ("train", "test"):
        _write(root / name / "data" / split / "0.json", shard)


def _leaf_shard(users: dict, counts: dict | None = None) -> str:
    names = list(users)
    return json.dumps(
        {
            "users": names,
            "num_samples": [(counts or {}).get(u, len(users[u]["y"])) for u in names],
            "user_data": users,
        }
    )


def data_cases(out: Path) -> list[Case]:
    cases = []

    def add(name: str, dataset: str, root: Path, partition: str = "iid", extra: dict | None = None) -> None:
        config = {
            **BASE,
            "data": {
                **BASE["data"],
                "dataset": dataset,
                "root": str(root),
                "partition": partition,
                "download": False,
            },
            **(extra or {}),
        }
        if dataset in ("femnist",):
            config["model"] = {"name": "mlp", "hidden": [8]}
        if dataset == "shakespeare":
            config["model"] = {"name": "charlstm", "embedding_dim": 2, "lstm_hidden": 4, "lstm_layers": 1}
        path = _write(out / f"data_{name}.yaml", yaml.safe_dump(config))
        cases.append(Case(f"data_{name}", "data", True, _validate(path)))

    labels = _idx((10,), bytes(range(10)))
    image_body = bytes(10 * 28 * 28)
    root = out / "mnist_huge_header"
    _mnist_root(root, _idx((4_000_000_000, 28, 28), image_body), labels)
    add("mnist_header_claims_4e9_rows", "mnist", root)
    root = out / "mnist_huge_header_gz"
    _mnist_root(root, _idx((10**9, 28, 28), image_body), labels, gz=True)
    add("mnist_gz_header_claims_1e9_rows", "mnist", root)
    root = out / "mnist_gzip_bomb"
    bomb = gzip.compress(_idx((10, 28, 28), image_body) + bytes(200 << 20), compresslevel=9)
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte"):
        _write(root / (name + ".gz"), bomb)
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        _write(root / name, labels)
    add("mnist_gzip_bomb", "mnist", root)
    root = out / "mnist_truncated"
    _mnist_root(root, _idx((10, 28, 28), image_body[:100]), labels)
    add("mnist_truncated", "mnist", root)
    root = out / "mnist_garbage"
    _mnist_root(root, os.urandom(3000), os.urandom(50))
    add("mnist_garbage", "mnist", root)
    root = out / "mnist_bad_labels"
    _mnist_root(root, _idx((10, 28, 28), image_body), _idx((10,), bytes([200] * 10)))
    add("mnist_labels_out_of_range", "mnist", root)
    root = out / "mnist_fake_but_wellformed"
    _mnist_root(root, _idx((10, 28, 28), image_body), labels)
    add("mnist_not_the_published_data", "mnist", root)
    root = out / "npz_huge"
    _npz(
        root / "mnist.npz",
        {k: _npy((10**12, 28, 28), "|u1", b"\0" * 100) for k in ("x_train", "x_test")}
        | {k: _npy((10,), "|u1", bytes(10)) for k in ("y_train", "y_test")},
    )
    add("npz_header_claims_1e12_rows", "mnist", root)
    root = out / "npz_object"
    _npz(
        root / "mnist.npz",
        {k: _npy((1,), "|O", b"\x80\x04N.") for k in ("x_train", "y_train", "x_test", "y_test")},
    )
    add("npz_object_arrays", "mnist", root)
    root = out / "npz_garbage"
    _write(root / "mnist.npz", os.urandom(5000))
    add("npz_not_a_zip", "mnist", root)
    root = out / "cifar_garbage" / "cifar-10-batches-py"
    for name in (
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ):
        _write(root / name, b"\x80\x04" + os.urandom(2000))
    add("cifar_random_pickles", "cifar10", root.parent)
    add("root_is_a_file", "mnist", _write(out / "a_file", b"x"))
    loop = out / "root_loop"
    with contextlib.suppress(FileExistsError):
        os.symlink(loop, loop)
    add("root_symlink_loop", "mnist", loop)
    add("root_missing", "femnist", out / "nowhere", "natural")
    add("root_proc", "cifar10", Path("/proc/self"))
    deep = (
        '{"users": ["u"], "num_samples": [1], "user_data": {"u": {"x": '
        + "[" * 5000
        + "]" * 5000
        + ', "y": [1]}}}'
    )
    for name, make in (("leaf_fifo", os.mkfifo), ("leaf_dev_zero", lambda p: os.symlink("/dev/zero", p))):
        for split in ("train", "test"):
            (out / name / "femnist" / "data" / split).mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                make(out / name / "femnist" / "data" / split / "0.json")
        add(f"{name}_shard", "femnist", out / name, "natural")
    root = out / "leaf_deep"
    _leaf(root, "femnist", deep)
    add("leaf_nested_5000_deep", "femnist", root, "natural")
    root = out / "leaf_string_pixels"
    _leaf(root, "femnist", _leaf_shard({f"w{u}": {"x": [["0.5"] * 784], "y": [1]} for u in range(8)}))
    add("leaf_pixels_as_strings", "femnist", root, "natural")
    root = out / "leaf_bool_pixels"
    _leaf(root, "femnist", _leaf_shard({f"w{u}": {"x": [[True] * 784], "y": [1]} for u in range(8)}))
    add("leaf_pixels_as_booleans", "femnist", root, "natural")
    root = out / "leaf_nan_pixels"
    _leaf(root, "femnist", _leaf_shard({f"w{u}": {"x": [[float("nan")] * 784], "y": [1]} for u in range(8)}))
    add("leaf_nan_pixels", "femnist", root, "natural")
    root = out / "leaf_ragged_labels"
    _leaf(root, "femnist", _leaf_shard({f"w{u}": {"x": [[0.5] * 784], "y": [[1, 2]]} for u in range(8)}))
    add("leaf_ragged_labels", "femnist", root, "natural")
    root = out / "leaf_huge_label"
    _leaf(root, "femnist", _leaf_shard({f"w{u}": {"x": [[0.5] * 784], "y": [10**30]} for u in range(8)}))
    add("leaf_label_1e30", "femnist", root, "natural")
    root = out / "leaf_counts_lie"
    _leaf(
        root,
        "femnist",
        _leaf_shard(
            {f"w{u}": {"x": [[0.5] * 784], "y": [1]} for u in range(8)}, {f"w{u}": 10**12 for u in range(8)}
        ),
    )
    add("leaf_num_samples_1e12", "femnist", root, "natural")
    root = out / "leaf_not_json"
    _leaf(root, "femnist", os.urandom(500))
    add("leaf_random_bytes", "femnist", root, "natural")
    root = out / "leaf_wrong_types"
    _leaf(root, "shakespeare", json.dumps({"users": [1], "num_samples": ["x"], "user_data": []}))
    add("leaf_wrong_types", "shakespeare", root, "natural")
    root = out / "leaf_empty_test"
    (root / "femnist" / "data" / "test").mkdir(parents=True, exist_ok=True)
    _write(
        root / "femnist" / "data" / "train" / "0.json",
        _leaf_shard({f"w{u}": {"x": [[0.5] * 784] * 3, "y": [1, 2, 3]} for u in range(8)}),
    )
    _write(
        root / "femnist" / "data" / "test" / "0.json", _leaf_shard({"other": {"x": [[0.5] * 784], "y": [1]}})
    )
    add("leaf_no_test_rows_for_the_clients", "femnist", root, "natural")
    return cases


def _run_case(case: Case) -> dict:
    from simulator.cli import main

    record = {"name": case.name, "kind": case.kind, "must_refuse": case.must_refuse}
    stderr, stdout = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            code = main(case.argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    except _Timeout:
        code, record["timed_out"] = None, True
    except BaseException as exc:  # the defect this fuzzing hunts: an exception escaping the CLI
        code, record["escaped"] = None, f"{type(exc).__name__}: {str(exc)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    errors = [line for line in stderr.getvalue().splitlines() if line.startswith(("fedsim: error", "usage"))]
    record.update(
        code=code, seconds=round(time.perf_counter() - start, 3), error=errors[-1][:300] if errors else ""
    )
    record["error_lines"] = len(
        [ln for ln in stderr.getvalue().splitlines() if ln.startswith("fedsim: error")]
    )
    record["longest_line"] = max((len(ln) for ln in stderr.getvalue().splitlines()), default=0)
    record["traceback"] = "Traceback (most recent call last)" in stderr.getvalue()
    return record


class _Timeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Timeout


def main(out: Path, seed: int, mutations: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    signal.signal(signal.SIGALRM, _on_alarm)
    rng = random.Random(seed)
    cases = yaml_cases(out / "yaml") + value_cases(out / "values", rng, mutations) + data_cases(out / "data")
    with open(out / "results.jsonl", "w") as log:
        for case in cases:
            log.write(json.dumps(_run_case(case)) + "\n")
            log.flush()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
