"""A user's own code, named in a config by import path: ``package.module:callable``.

The config only names the code; ``check_target`` reads the name (no import, so
``fedsim validate`` without ``--data`` never runs user code) and ``resolve``
imports the module and returns the attribute when the run starts. Either is one
``ConfigError`` naming the key.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import site
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clients.errors import ConfigError

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def check_target(target: str, key: str) -> tuple[str, str]:
    """(module, attribute path) of ``target`` = "package.module:callable", read without importing."""
    module, sep, attribute = target.partition(":")
    if not sep or not _DOTTED.fullmatch(module) or not _DOTTED.fullmatch(attribute):
        raise ConfigError(
            f"{key}: {target!r} is not an import path; write it as 'package.module:callable' "
            "(a module importable from the run's Python path, a colon, then the callable's name)"
        )
    return module, attribute


def resolve(target: str, key: str, search_path: str | None = None) -> Any:
    """Import ``target``'s module and return its callable; one error when it is not there.
    ``search_path`` (the driver's: the folder fedsim runs in) goes last on sys.path first,
    when given and not there yet."""
    module_name, attribute = check_target(target, key)
    if search_path and search_path not in sys.path:
        sys.path.append(search_path)
    try:
        value: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{key}: {target!r}: no module named {exc.name or module_name!r} on the Python path "
            "(run from the folder that holds it, or install it)"
        ) from exc
    except Exception as exc:  # the user's module raised while being imported
        raise ConfigError(
            f"{key}: {target!r}: importing {module_name} raised {type(exc).__name__}: {exc}"
        ) from exc
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ConfigError(f"{key}: {target!r}: {module_name} has no attribute {attribute!r}")
        value = getattr(value, part)
    if not callable(value):
        raise ConfigError(f"{key}: {target!r} is a {type(value).__name__}, not a callable")
    return value


# --- shipping user code to Ray workers (runtime.py_modules) ------------------


def is_path_entry(entry: str) -> bool:
    """A ``runtime.py_modules`` entry with a ``/`` is a path (``./mypkg``); any other, a module name."""
    return "/" in entry


def check_py_module_entry(entry: str, key: str = "runtime.py_modules") -> None:
    """The entry's form, read without importing or touching the file system."""
    if is_path_entry(entry):
        if "\x00" in entry:
            raise ConfigError(f"{key}: {entry!r} is not a path")
    elif not _DOTTED.fullmatch(entry):
        raise ConfigError(
            f"{key}: {entry!r} is neither a module name (a dotted name such as mypkg) nor a path "
            "(a folder or .py file, with a '/': ./mypkg)"
        )


def path_entry_location(entry: str, key: str = "runtime.py_modules") -> str:
    """The absolute folder or ``.py`` file a path entry names (relative: from the folder fedsim
    runs in, where model.factory is looked up too)."""
    path = Path(entry).expanduser().resolve()  # "pkg/.." is the folder above, shipped as such
    if not (path.is_dir() or (path.is_file() and path.suffix == ".py")):
        raise ConfigError(f"{key}: {entry!r} is not a folder or a .py file (looked at {path})")
    home = Path.home().resolve()
    if path == Path(path.anchor) or path == home or home.is_relative_to(path):
        raise ConfigError(
            f"{key}: {entry!r} is {path}, which would ship a whole tree to every worker; "
            "name the package's own folder (./mypkg) or .py file"
        )
    return str(path)


def put_on_driver_path(folder: str) -> None:
    """Let this process import what a path entry ships (``./src/mypkg`` makes ``mypkg``
    importable), as the workers will: its folder goes last on the Python path, shadowing nothing."""
    if folder not in sys.path:
        sys.path.append(folder)


def module_locations(name: str) -> list[str] | None:
    """Where the top-level package of module ``name`` lives on this machine: its folder(s),
    or its .py file for a single-file module; None when it is not on the Python path (plus
    the folder fedsim runs in, as for model.factory). Found without importing anything:
    ``find_spec`` of a top-level name runs no code of the package."""
    top = name.split(".", 1)[0]
    if top in sys.modules:
        spec = getattr(sys.modules[top], "__spec__", None)
    else:
        with _cwd_on_path():
            try:
                spec = importlib.util.find_spec(top)
            except (ImportError, ValueError):
                spec = None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return [str(Path(p).absolute()) for p in spec.submodule_search_locations]
    return [str(Path(spec.origin).absolute())] if spec.has_location and spec.origin else []


def installed(locations: list[str]) -> bool:
    """Whether code at ``locations`` comes with the Python installation (site-packages,
    the standard library): it is on every node that runs the same environment. A folder
    elsewhere, editable installs included, is the user's own and travels."""
    roots = {Path(p).absolute() for p in _installation_dirs()}
    return all(any(Path(loc).is_relative_to(root) for root in roots) for loc in locations)


def _installation_dirs() -> list[str]:
    paths = sysconfig.get_paths()
    found = [paths[k] for k in ("purelib", "platlib", "stdlib", "platstdlib") if k in paths]
    found += getattr(site, "getsitepackages", list)() + [site.getusersitepackages()]
    return [p for p in found if p]


@contextmanager
def _cwd_on_path() -> Iterator[None]:
    """The folder fedsim runs in on the search path while looking, as the driver imports user code."""
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.append(here)
    try:
        yield
    finally:
        if added and here in sys.path:
            sys.path.remove(here)


def import_here(target: str) -> str | None:
    """Import ``target`` ("package.module:callable") in this process; None when it imports
    and its attribute is there, else why not, in one line (TYPE: message)."""
    module_name, attribute = check_target(target, "target")
    try:
        value: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
    except Exception as exc:  # anything the user's module raises while it is imported
        text = " ".join(str(exc).split())
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return None
