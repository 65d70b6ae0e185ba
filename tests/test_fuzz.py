"""Hostile and careless input never crashes, hangs or eats memory: a few hundred generated
configs and data files (tests/fuzz_inputs.py) through ``fedsim validate CONFIG --data``,
in one process limited to 8 GiB of address space, each case under a 10 s timer."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

from tests.conftest import ROOT

MUTATIONS = 400  # random hostile values in valid configs, on top of the hand-made cases


def test_no_input_escapes_as_a_traceback_a_hang_or_a_crash(tmp_path):
    # Execute: one process for all cases (a fresh interpreter per case would take minutes).
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz_inputs.py"), str(tmp_path), "0", str(MUTATIONS)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]

    # Assert: every case ended with exit 0 (accepted) or 2 (refused with one line), in time.
    assert len(records) >= 300
    problems = [
        r for r in records
        if r.get("escaped") or r.get("timed_out") or r["traceback"] or r["code"] not in (0, 2)
        or (r["must_refuse"] and r["code"] != 2) or (r["code"] == 2 and r["error_lines"] != 1)
        or r["longest_line"] > 2100
    ]  # fmt: skip
    assert problems == [], "\n".join(json.dumps(p) for p in problems)
    outcomes = Counter((r["kind"], r["code"]) for r in records)
    assert outcomes[("yaml", 2)] >= 60 and outcomes[("data", 2)] >= 25 and outcomes[("value", 2)] >= 200
