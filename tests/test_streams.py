"""The table of random streams (clients/streams.py): every purpose unique among keys of
its length, the values pinned, and no module keeping a purpose of its own."""

from __future__ import annotations

import ast
import itertools
from collections import defaultdict
from pathlib import Path

import numpy as np

from clients.streams import EVENT_KEY_SUFFIX, Key, Stream

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("clients", "server", "simulator")

# The values runs and run directories were made with: a change here changes results.
PINNED = {
    "INIT": 0x1A17, "PARTITION": 3, "ATTACKERS": 5, "PRUNING": 8, "HOLDOUT": 10, "TEST_SPLIT": 18,
    "SAMPLING": 2, "SERVER_NOISE": 7, "FEDERATED_EVAL": 15, "SYNTHETIC_DEVICE": 0x5E,
    "DATA_ORDER": 1, "LOCAL_DROPOUT": 4, "ATTACK_NOISE": 6, "COMPRESSION": 7, "SCORES": 9,
    "PERSONAL": 16, "FINETUNE": 17, "FINETUNE_DROPOUT": 117, "AUGMENT": 19,
    "SPEED": 11, "AVAILABLE": 12, "SYSTEM_DROPOUT": 13, "STRAGGLERS": 20, "STRAGGLER_EPOCHS": 21,
    "TRACE_PROFILES": 22, "SYNTHETIC_TRACE": 24, "SELECTION": 23,
}  # fmt: skip
FEDBUFF_EVENT_STREAMS = {Stream.AVAILABLE, Stream.SYSTEM_DROPOUT}  # also keyed per event


def test_values_are_the_ones_results_were_made_with():
    assert {s.name: int(s) for s in Stream} == PINNED
    assert EVENT_KEY_SUFFIX == 1


def test_purposes_are_unique_among_keys_of_one_length_and_never_zero():
    by_length: dict[int, list[int]] = defaultdict(list)
    for stream in Stream:
        by_length[stream.key.length].append(int(stream))
    for length, purposes in by_length.items():
        assert len(purposes) == len(set(purposes)), f"a purpose repeats among {length}-word keys"
    assert all(int(s) > 0 for s in Stream)  # a trailing 0 would make a key equal a shorter one


def test_the_one_number_two_streams_share_is_documented():
    counts = defaultdict(list)
    for stream in Stream:
        counts[int(stream)].append(stream.name)
    shared = {value: names for value, names in counts.items() if len(names) > 1}
    assert shared == {7: ["SERVER_NOISE", "COMPRESSION"]}
    assert Stream.SERVER_NOISE.key.length != Stream.COMPRESSION.key.length


def _keys(stream: Stream, seed: int, coords: range) -> list[list[int]]:
    """The stream's SeedSequence keys over a grid of coordinates, as the code builds them."""
    if stream.key is Key.RUN:
        return [[seed, stream]]
    if stream.key in (Key.ROUND, Key.DEVICE):
        return [[seed, c, stream] for c in coords]
    clients = coords if stream.key is Key.CLIENT else [c + 1 for c in (-1, *coords)]
    keys = [[seed, r, c, stream] for r, c in itertools.product(coords, clients)]
    if stream in FEDBUFF_EVENT_STREAMS:
        keys += [[seed, e, c, stream, EVENT_KEY_SUFFIX] for e, c in itertools.product(coords, clients)]
    return keys


def test_no_two_streams_ever_draw_from_the_same_key():
    seed, coords = 3, range(8)
    owner: dict[tuple[int, ...], str] = {}
    dataset_key = tuple(np.random.SeedSequence(seed).generate_state(4))  # the datasets' splits
    owner[dataset_key] = "dataset"
    for stream in Stream:
        for key in _keys(stream, seed, coords):
            state = tuple(np.random.SeedSequence(key).generate_state(4))
            assert owner.setdefault(state, stream.name) == stream.name, (key, owner[state])


def _modules():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT), ast.parse(path.read_text(), str(path))


def _is_stream(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Stream"


def _is_int_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) is int


def _callee(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")


def _purpose_positions() -> dict[str, int]:
    """Functions (anywhere in the packages) that take a ``purpose``: name -> its position."""
    positions = {}
    for _, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("__"):  # Stream.__new__
                continue
            if "purpose" in (names := [a.arg for a in node.args.args]):
                positions[node.name] = names.index("purpose")
    return positions


def _purpose_problems(call: ast.Call, positions: dict[str, int]) -> list[str]:
    name = _callee(call)
    if name == "SeedSequence" and call.args and isinstance(call.args[0], (ast.List, ast.Tuple)):
        words = call.args[0].elts
        if any(_is_int_literal(w) for w in words):
            return ["an integer literal in a SeedSequence key"]
        if not any(_is_stream(w) or isinstance(w, ast.Name) and w.id == "purpose" for w in words):
            return ["a SeedSequence key without a Stream purpose"]
    if name in positions:
        keywords = [k.value for k in call.keywords if k.arg == "purpose"]
        purpose = call.args[positions[name]] if positions[name] < len(call.args) else keywords[0]
        if not _is_stream(purpose) and not (isinstance(purpose, ast.Name) and purpose.id == "purpose"):
            return [f"{name} called with purpose {ast.unparse(purpose)}"]
    return []


def test_purposes_come_only_from_the_table():
    """No module names a purpose of its own, keys no stream with a bare number, or offsets
    a purpose (``Stream.X + 1``): each stream is one entry of clients/streams.py."""
    positions, problems = _purpose_positions(), []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id.startswith("PURPOSE"):
                problems.append(f"{path}:{node.lineno}: {node.id}")
            if isinstance(node, ast.BinOp) and (_is_stream(node.left) or _is_stream(node.right)):
                problems.append(f"{path}:{node.lineno}: arithmetic on a purpose")
            if isinstance(node, ast.Call):
                problems += [f"{path}:{node.lineno}: {p}" for p in _purpose_problems(node, positions)]
    assert not problems, problems
    assert {"client_rng", "_rng", "_draws", "_event_rng"} <= set(positions)
