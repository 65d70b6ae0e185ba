"""A run directory cannot be tricked: links, FIFOs and devices in it are refused, a
checkpoint renamed, copied or taken from another run is never resumed from, broken or
edited metrics rows are moved aside and their rounds re-run, and a tampered final
model is refused by prune and report. Each case goes through the CLI (in this
process, on the session's Ray), and each resume that goes on is checked bit for bit
against a run that was never touched."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from simulator.rundir.metrics import MAX_ROW_BYTES
from tests.conftest import ROOT, small_overrides
from tests.test_hostile_input import assert_refused, cli, flip_byte

DEFAULT = ROOT / "configs" / "default.yaml"
ROUNDS = 3


def sets(**extra) -> list[str]:
    overrides = small_overrides(**{"rounds": ROUNDS, "runtime.checkpoint_every": 1, **extra})
    return [a for key, value in overrides.items() for a in ("--set", f"{key}={json.dumps(value)}")]


@pytest.fixture(scope="module")
def runs(ray_cluster, tmp_path_factory):
    """A finished 3-round run to copy and tamper with, and the straight 4-round run that
    resuming it to 4 rounds must reproduce bit for bit."""
    base = tmp_path_factory.mktemp("runs")
    for name, extra in (("done", {}), ("straight", {"rounds": ROUNDS + 1}), ("other", {"seed": 7})):
        code, _, err = cli("run", DEFAULT, *sets(**extra), "--out", base / name, "--quiet")
        assert code == 0, err
    return base


def copy_of(runs: Path, tmp_path: Path, name: str = "done") -> Path:
    shutil.copytree(runs / name, tmp_path / name, symlinks=True)
    return tmp_path / name


def resume(run_dir: Path) -> tuple[int, str, str]:
    with deadline(120):  # a FIFO that blocked an open would hang here, not pass
        return cli("run", "--resume", run_dir, "--set", f"rounds={ROUNDS + 1}", "--quiet")


@contextlib.contextmanager
def deadline(seconds: int):
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    before = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def rounds_of(run_dir: Path) -> list[int]:
    return [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def timeless_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_resumed_as_straight(result: tuple[int, str, str], run_dir: Path, runs: Path) -> None:
    code, _, err = result
    assert code == 0, err
    assert rounds_of(run_dir) == list(range(1, ROUNDS + 2))
    assert timeless_rows(run_dir) == timeless_rows(runs / "straight")
    model = (run_dir / "model.safetensors").read_bytes()
    assert model == (runs / "straight" / "model.safetensors").read_bytes()


# ---------------------------------------------------------------- links, FIFOs, devices


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl", "clients.jsonl", "run.json", "config.yaml"])
def test_a_file_of_the_run_that_is_a_link_is_refused_and_its_target_untouched(runs, tmp_path, name):
    run_dir = copy_of(runs, tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("not fedsim's\n")
    (run_dir / name).unlink(missing_ok=True)
    (run_dir / name).symlink_to(outside)
    assert_refused(resume(run_dir), "is a symbolic link")
    assert outside.read_text() == "not fedsim's\n"


def test_metrics_linked_to_dev_zero_is_refused_at_once(runs, tmp_path):
    run_dir = copy_of(runs, tmp_path)
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").symlink_to("/dev/zero")
    assert_refused(resume(run_dir), "metrics.jsonl: is a symbolic link")
    assert_refused(cli("report", run_dir, "--out", tmp_path / "report"), "is a symbolic link")


def test_a_checkpoints_folder_that_links_out_of_the_run_is_refused(runs, tmp_path):
    run_dir = copy_of(runs, tmp_path)
    shutil.move(run_dir / "checkpoints", tmp_path / "elsewhere")
    (run_dir / "checkpoints").symlink_to(tmp_path / "elsewhere")
    assert_refused(resume(run_dir), "checkpoints: is a symbolic link")


def test_metrics_that_is_a_fifo_is_refused_without_hanging(runs, tmp_path):
    run_dir = copy_of(runs, tmp_path)
    (run_dir / "metrics.jsonl").unlink()
    os.mkfifo(run_dir / "metrics.jsonl")
    assert_refused(resume(run_dir), "metrics.jsonl: is a FIFO, not a regular file")
    assert_refused(cli("report", run_dir, "--out", tmp_path / "report"), "is a FIFO")


def test_a_fifo_as_the_newest_checkpoint_is_skipped_and_the_run_goes_on_bit_for_bit(runs, tmp_path):
    run_dir = copy_of(runs, tmp_path)
    newest = run_dir / "checkpoints" / f"round_{ROUNDS:06d}.safetensors"
    newest.unlink()
    os.mkfifo(newest)
    assert_resumed_as_straight(resume(run_dir), run_dir, runs)


# ---------------------------------------------------------------- checkpoints that lie


def checkpoint(run_dir: Path, round_: int) -> Path:
    return run_dir / "checkpoints" / f"round_{round_:06d}.safetensors"


def test_a_checkpoint_renamed_to_a_later_round_is_refused(runs, tmp_path, caplog):
    run_dir = copy_of(runs, tmp_path)
    checkpoint(run_dir, ROUNDS).unlink()
    checkpoint(run_dir, ROUNDS - 1).rename(checkpoint(run_dir, ROUNDS))
    with caplog.at_level("WARNING", logger="fedsim"):
        result = resume(run_dir)
    assert f"holds round '{ROUNDS - 1}', not the round {ROUNDS} its name says" in caplog.text
    assert_resumed_as_straight(result, run_dir, runs)


def test_a_checkpoint_copied_over_another_is_refused(runs, tmp_path, caplog):
    run_dir = copy_of(runs, tmp_path)
    shutil.copyfile(checkpoint(run_dir, 1), checkpoint(run_dir, ROUNDS))
    with caplog.at_level("WARNING", logger="fedsim"):
        result = resume(run_dir)
    assert "renamed or copied over another" in caplog.text
    assert_resumed_as_straight(result, run_dir, runs)


def test_a_checkpoint_of_another_run_is_refused(runs, tmp_path, caplog):
    run_dir = copy_of(runs, tmp_path)
    shutil.copyfile(checkpoint(runs / "other", ROUNDS), checkpoint(run_dir, ROUNDS))
    with caplog.at_level("WARNING", logger="fedsim"):
        result = resume(run_dir)
    assert "belongs to another run" in caplog.text
    assert_resumed_as_straight(result, run_dir, runs)


def test_a_whole_run_copied_keeps_resuming(runs, tmp_path):
    """A run directory copied elsewhere is the same run: its id travels with it."""
    run_dir = copy_of(runs, tmp_path)
    assert_resumed_as_straight(resume(run_dir), run_dir, runs)


def test_without_run_json_no_checkpoint_is_trusted(runs, tmp_path):
    run_dir = copy_of(runs, tmp_path)
    (run_dir / "run.json").unlink()
    rows = (run_dir / "metrics.jsonl").read_bytes()
    assert_refused(resume(run_dir), "no intact checkpoint at or before round 3")
    assert (run_dir / "metrics.jsonl").read_bytes() == rows


# ---------------------------------------------------------------- metrics.jsonl


def deep_list() -> bytes:
    return b"[" * 100_000 + b"]" * 100_000 + b"\n"


def row_line(run_dir: Path, round_: int) -> bytes:
    return (run_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)[round_ - 1]


BROKEN_TAILS = {
    "garbage": lambda d: b"{not json}\n",
    "deep list": lambda d: deep_list(),
    "5000-digit round": lambda d: b'{"round": ' + b"9" * 5000 + b"}\n",
    "foreign row": lambda d: b'{"round": 99}\n',
    "huge row": lambda d: b'{"round": 4, "pad": "' + b"x" * (MAX_ROW_BYTES + 10) + b'"}\n',
    "duplicated row": lambda d: row_line(d, ROUNDS),
}


@pytest.mark.parametrize("kind", BROKEN_TAILS)
def test_a_broken_last_row_is_moved_aside_and_nothing_is_appended_after_it(runs, tmp_path, kind):
    run_dir = copy_of(runs, tmp_path)
    bad = BROKEN_TAILS[kind](run_dir)
    with open(run_dir / "metrics.jsonl", "ab") as f:
        f.write(bad)
    assert_resumed_as_straight(resume(run_dir), run_dir, runs)
    assert (run_dir / "metrics.jsonl.cut-1").read_bytes() == bad
    assert_resumed_as_straight(resume(run_dir), run_dir, runs)  # and it stays resumable


def test_swapped_rows_are_moved_aside_and_their_rounds_re_run(runs, tmp_path):
    run_dir = copy_of(runs, tmp_path)
    lines = (run_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    (run_dir / "metrics.jsonl").write_bytes(b"".join(lines))
    assert_resumed_as_straight(resume(run_dir), run_dir, runs)
    assert (run_dir / "metrics.jsonl.cut-1").read_bytes() == lines[1] + lines[2]


def test_a_row_edited_in_place_is_caught_by_the_checkpoints_and_rebuilt(runs, tmp_path, caplog):
    run_dir = copy_of(runs, tmp_path)
    lines = (run_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    row = json.loads(lines[1])
    row["test_accuracy"] = 0.999  # a plausible row, schema and order intact
    lines[1] = (json.dumps(row) + "\n").encode()
    (run_dir / "metrics.jsonl").write_bytes(b"".join(lines))
    with caplog.at_level("WARNING", logger="fedsim"):
        result = resume(run_dir)
    assert "are not those checkpoint round 3 was written after" in caplog.text
    assert_resumed_as_straight(result, run_dir, runs)
    assert (run_dir / "metrics.jsonl.cut-1").read_bytes() == lines[1] + lines[2]


# ---------------------------------------------------------------- the final model


def test_a_tampered_final_model_is_refused_by_prune_and_report(runs, tmp_path):
    run_dir = copy_of(runs, tmp_path)
    flip_byte(run_dir / "model.safetensors", 4)
    assert_refused(
        cli("prune", run_dir, "--sparsity", "0.5", "--out", tmp_path / "pruned"),
        "model.safetensors: altered since fedsim wrote it",
    )
    assert_refused(cli("report", run_dir, "--out", tmp_path / "report"), "altered since fedsim wrote it")
    assert not (tmp_path / "pruned" / "prune.json").exists()


def test_an_untouched_final_model_is_reported(runs, tmp_path):
    code, _, err = cli("report", runs / "done", "--out", tmp_path / "report")
    assert code == 0, err
    assert (tmp_path / "report" / "report.html").is_file()


def test_a_row_edited_after_the_last_checkpoint_is_caught_by_its_re_run(runs, tmp_path, caplog):
    """No checkpoint vouches for round 3's row once checkpoint 3 is gone; re-running
    round 3 from checkpoint 2 gives the row it must be, and the edited one is moved aside."""
    run_dir = copy_of(runs, tmp_path)
    checkpoint(run_dir, ROUNDS).unlink()
    lines = (run_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    row = json.loads(lines[ROUNDS - 1])
    row["train_loss"] = 0.0
    lines[ROUNDS - 1] = (json.dumps(row) + "\n").encode()
    (run_dir / "metrics.jsonl").write_bytes(b"".join(lines))
    with caplog.at_level("WARNING", logger="fedsim"):
        result = resume(run_dir)
    assert f"round {ROUNDS}'s row is not what re-running round {ROUNDS} gives" in caplog.text
    assert_resumed_as_straight(result, run_dir, runs)
    assert (run_dir / "metrics.jsonl.cut-1").read_bytes() == lines[ROUNDS - 1]


def test_rows_after_the_checkpoint_that_re_run_the_same_are_kept_as_written(runs, tmp_path):
    run_dir = copy_of(runs, tmp_path)
    checkpoint(run_dir, ROUNDS).unlink()
    written = (run_dir / "metrics.jsonl").read_bytes()
    assert_resumed_as_straight(resume(run_dir), run_dir, runs)
    assert (run_dir / "metrics.jsonl").read_bytes().startswith(written)  # seconds and all, untouched
    assert not (run_dir / "metrics.jsonl.cut-1").exists()


def test_a_refused_resume_changes_nothing_in_the_log(runs, tmp_path):
    run_dir = copy_of(runs, tmp_path)
    with open(run_dir / "metrics.jsonl", "ab") as f:
        f.write(b"{not json}\n")
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("  lr: 0.1\n", "  lr: 0.5\n", 1))
    before = (run_dir / "metrics.jsonl").read_bytes()
    assert_refused(resume(run_dir), "differs from the config checkpoint round")
    assert (run_dir / "metrics.jsonl").read_bytes() == before
    assert not (run_dir / "metrics.jsonl.cut-1").exists()


def test_a_folder_planted_under_a_checkpoint_name_is_one_error_or_ignored(runs, tmp_path):
    run_dir = copy_of(runs, tmp_path)
    checkpoint(run_dir, 1).unlink()
    checkpoint(run_dir, 1).mkdir()  # an old name: not a checkpoint, passed over
    checkpoint(run_dir, ROUNDS + 1).mkdir()  # the name the resumed run must write
    assert_refused(resume(run_dir), f"cannot write {checkpoint(run_dir, ROUNDS + 1)}")
    checkpoint(run_dir, ROUNDS + 1).rmdir()
    assert_resumed_as_straight(resume(run_dir), run_dir, runs)


def test_keys_an_older_fedsim_accepted_without_acting_do_not_block_resume(runs, tmp_path, caplog):
    """Before issue 25, server.async.* under sync was accepted and ignored (the README's
    own sync baseline of fedbuff.yaml wrote one); such a run directory still resumes."""
    run_dir = copy_of(runs, tmp_path)
    config = run_dir / "config.yaml"
    text = config.read_text()
    assert "  async:\n    concurrency: null\n" in text
    config.write_text(text.replace("  async:\n    concurrency: null\n", "  async:\n    concurrency: 10\n"))
    with caplog.at_level("WARNING", logger="fedsim"):
        result = resume(run_dir)
    assert "server.async.concurrency: None (the run's 10 never acted)" in caplog.text
    assert_resumed_as_straight(result, run_dir, runs)
