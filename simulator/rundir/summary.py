"""Reading back the small JSON objects a run leaves: summary.json, mlflow_run.json.

A crash may cut one short and a user may have edited it; what reads it (a report, a
sweep's comparison, a resumed run, tracking) then goes on without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from simulator.rundir.files import read_json

SUMMARY_NAME = "summary.json"


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or {} when it is missing, cut short by a crash, not
    UTF-8, nested absurdly deep or not an object; FedsimError when it is not a regular
    file or too large to be fedsim's."""
    if not os.path.lexists(path):
        return {}
    try:
        content = read_json(path)
    except (ValueError, RecursionError):
        return {}
    return content if isinstance(content, dict) else {}


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The run's summary.json as ``read_json_object`` reads it ({} when there is none to use)."""
    return read_json_object(Path(run_dir) / SUMMARY_NAME)
