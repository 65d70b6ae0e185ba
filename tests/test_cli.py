"""The command line as a user meets it: exit codes, one-line errors, run + report, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

DEFAULT = ROOT / "configs" / "default.yaml"


def fedsim(*args, timeout=240):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "simulator", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_validate_prints_the_resolved_config():
    result = fedsim("validate", DEFAULT, "--set", "client.lr=0.05")
    assert result.returncode == 0, result.stderr
    assert "lr: 0.05" in result.stdout and "reduction_groups: 8" in result.stdout


def test_malformed_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: 3\nclient: {lr: [\n")
    assert_one_line_error(fedsim("validate", bad), "bad.yaml", "malformed YAML")


def test_missing_config_file(tmp_path):
    assert_one_line_error(fedsim("run", tmp_path / "none.yaml"), "config file not found", "none.yaml")


def test_unknown_dataset():
    result = fedsim("run", DEFAULT, "--set", "data.dataset=mnits")
    assert_one_line_error(result, "data.dataset", "'mnits'", "digits, synthetic")


def test_unknown_key_suggests():
    assert_one_line_error(
        fedsim("validate", DEFAULT, "--set", "client.epoch=3"), "did you mean 'client.epochs'"
    )


def test_a_second_moment_decay_for_adagrad_is_refused():
    """FedAdagrad (Reddi et al. 2021) sums squared steps without decay: beta2 could not act."""
    result = fedsim("validate", DEFAULT, "--set", "server.optimizer=adagrad", "--set", "server.beta2=0.5")
    assert_one_line_error(result, "server.beta2: 0.5 is not allowed here", "adam and yogi")


def test_debug_shows_the_traceback():
    result = fedsim("--debug", "validate", DEFAULT, "--set", "client.lr=-1")
    assert result.returncode == 2 and "Traceback" in result.stderr


@pytest.mark.slow
def test_run_then_report_end_to_end(tmp_path):
    run_dir = tmp_path / "default"
    result = fedsim("run", DEFAULT, "--out", run_dir)
    assert result.returncode == 0, result.stderr
    assert "round 80/80" in result.stdout  # one progress line per round when not a terminal
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_test_accuracy"] >= 0.90
    # The closing table repeats summary.json's figures.
    assert f"│ final test accuracy │ {summary['final_test_accuracy']:.4f}" in result.stdout
    assert "│ rounds              │ 80 of 80" in result.stdout
    # The start-up breakdown: data and Ray come up side by side, the workers after both.
    startup = summary["startup_seconds"]
    assert 0 <= startup["data"] <= startup["workers"] and 0 < startup["ray"] <= startup["workers"]
    assert startup["before_run"] > 0 and "ready for round 1" in result.stdout
    quiet = fedsim("run", DEFAULT, "--out", tmp_path / "quiet", "--set", "rounds=2", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == ""
    report = fedsim("report", run_dir, "--out", tmp_path / "report", "--target", "0.9")
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "default" in html
    assert (tmp_path / "report" / "accuracy_vs_round.png").stat().st_size > 5000


def test_validate_and_a_plain_run_import_nothing_they_do_not_need():
    """torch, Ray and scikit-learn are seconds of a start: validate needs none of them, and
    a run imports dp_accounting (with scipy) only when it accounts for privacy."""
    probe = (
        "import sys; from pathlib import Path; from simulator.config.loading import load_config; "
        "load_config(Path('configs/default.yaml'), []); heavy = {'torch', 'ray', 'sklearn'}; "
        "print(sorted(heavy & set(sys.modules))); import simulator.driver.simulation; "
        "from simulator.config.build import build_run; "
        "build_run(load_config(Path('configs/default.yaml'), [])); "
        "print(sorted({'sklearn', 'dp_accounting', 'matplotlib'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "[]"]


def test_existing_run_directory_is_not_overwritten(tmp_path):
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("keep me")
    assert_one_line_error(fedsim("run", DEFAULT, "--out", run_dir), "already exists")
    assert (run_dir / "notes.txt").read_text() == "keep me"


def wait_for_rows(path, count, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.2)
    pytest.fail(f"{path} never reached {count} rows")


@pytest.mark.slow
def test_ctrl_c_leaves_a_resumable_run(tmp_path):
    run_dir = tmp_path / "interrupted"
    args = [sys.executable, "-m", "simulator", "run", DEFAULT, "--out", run_dir, "--quiet"]
    args += ["--set", "rounds=100000", "--set", "runtime.checkpoint_every=5"]
    proc = subprocess.Popen(list(map(str, args)), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(run_dir / "metrics.jsonl", 3)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert f"fedsim run --resume {run_dir}" in stderr
    rows_before = (run_dir / "metrics.jsonl").read_text()
    done = len(rows_before.splitlines())
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"

    result = fedsim("run", "--resume", run_dir, "--set", f"rounds={done + 2}", "--quiet")
    assert result.returncode == 0, result.stderr
    text = (run_dir / "metrics.jsonl").read_text()
    assert text.startswith(rows_before)
    assert [json.loads(line)["round"] for line in text.splitlines()] == list(range(1, done + 3))


def test_unreachable_cluster_fails_fast_without_a_run_directory(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "never"
    result = fedsim("run", DEFAULT, "--address", f"127.0.0.1:{port}", "--out", run_dir, timeout=60)
    assert_one_line_error(result, "no Ray cluster answers", str(port))
    assert not run_dir.exists()


def test_report_on_a_missing_run_does_not_create_it(tmp_path):
    missing = tmp_path / "typo"
    assert_one_line_error(fedsim("report", missing), "not found")
    assert not missing.exists()


def test_resume_with_a_config_too_is_refused(tmp_path):
    assert_one_line_error(fedsim("run", DEFAULT, "--resume", tmp_path), "drop CONFIG")


def test_a_run_name_is_the_string_typed_not_yaml(ray_cluster, tmp_path):
    # --name went in as the YAML override name=VALUE: 2024 became an int, yes a bool.
    from simulator.cli import main  # in this process, on the session's Ray: argparse is what counts

    for name in ("2024", "yes"):
        out = tmp_path / name
        args = ["run", str(DEFAULT), "--name", name, "--out", str(out), "--set", "rounds=1", "--quiet"]
        assert main(args) == 0
        assert f"name: '{name}'" in (out / "config.yaml").read_text()


def test_report_on_a_file_blames_the_file_not_out(tmp_path):
    stray = tmp_path / "metrics.jsonl"
    stray.write_text("{}\n")
    result = fedsim("report", stray)
    assert_one_line_error(result, f"report {stray}: a file, not a run directory")
    assert "--out" not in result.stderr


def test_validate_with_data_says_valid_only_once_the_data_load(tmp_path):
    result = fedsim(
        "validate", DEFAULT, "--data", "--set", "data.dataset=mnist", "--set", f"data.root={tmp_path}",
        "--set", "data.download=false",
    )  # fmt: skip
    assert_one_line_error(result, "mnist files not found")  # and no "# valid" line before it
    assert result.stdout == ""
