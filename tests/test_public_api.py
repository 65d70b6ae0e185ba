"""fedsim's modules use one another through public names only: no module of simulator/,
clients/ or server/ imports an underscore name from another fedsim module or reaches one
through a module it imported (``fedsim prune`` once drove the round loop through
``Simulation._round``).
And the Ray capacity arithmetic, written once (``Resources.fit_in``), counts as before."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from simulator.driver.cluster import Resources
from tests.conftest import ROOT

PACKAGES = ("simulator", "server", "clients")


def _defined_here(tree: ast.Module) -> set[str]:
    """Every name a module defines or assigns: functions, classes, variables, attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _other_libraries(tree: ast.Module) -> set[str]:
    """Names bound to modules of other libraries (``import argparse``): their private
    names are theirs to keep stable, not fedsim's."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {
                a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] not in PACKAGES
            }
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] not in PACKAGES:
            names |= {a.asname or a.name for a in node.names}
    return names


def _base(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _private_uses(path: Path) -> list[str]:
    """Underscore names ``path`` imports from fedsim, or reaches (``x._name``) without
    defining them itself: another module's private functions, methods or attributes."""
    tree = ast.parse(path.read_text())
    where, own, libraries = path.relative_to(ROOT), _defined_here(tree), _other_libraries(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            found += [
                f"{where}:{node.lineno} imports {node.module}.{a.name}"
                for a in node.names
                if a.name[0] == "_"
            ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr[0] == "_"
            and node.attr[:2] != "__"
            and node.attr not in own
            and _base(node) not in libraries
        ):
            found.append(f"{where}:{node.lineno} uses {ast.unparse(node)}")
    return found


def test_no_module_of_simulator_uses_another_modules_private_names():
    found = [use for path in sorted((ROOT / "simulator").rglob("*.py")) for use in _private_uses(path)]
    assert found == []


# Another library's private attribute on an object no import names (a Hugging Face
# dataset's index mapping, read to skip a copy): the check cannot tell it from fedsim's.
OTHER_LIBRARIES_PRIVATE = {"clients/data/formats.py uses split._indices"}


def test_no_module_of_clients_or_server_uses_another_modules_private_names():
    found = [
        use
        for package in ("clients", "server")
        for path in sorted((ROOT / package).rglob("*.py"))
        for use in _private_uses(path)
    ]
    assert [use for use in found if re.sub(r":\d+ ", " ", use) not in OTHER_LIBRARIES_PRIVATE] == []


@pytest.mark.parametrize(
    ("each", "available", "fit"),
    [
        (Resources(1.0), Resources(4.0), 4),
        (Resources(0.1), Resources(0.3), 3),  # 0.3 / 0.1 is 2.9999999999999996 in floats
        (Resources(1.0, 0.5), Resources(8.0, 1.0), 2),  # the GPUs decide
        (Resources(1.0, 0.0), Resources(8.0, 0.0), 8),  # no GPU asked: none needed
        (Resources(2.0), Resources(1.0, 4.0), 0),
    ],
)
def test_how_many_workers_or_runs_fit(each, available, fit):
    assert each.fit_in(available) == fit
