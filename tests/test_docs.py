"""The documentation: the generated configuration reference covers every key, the README
stays short with its two set-up commands first, and no relative link points nowhere."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from simulator.config.reference import UndocumentedKeyError, reference_markdown, reference_sections
from simulator.config.schema import Config, _field, yaml_key

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _schema_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{yaml_key(f)}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += _schema_keys(type(default), f"{key}.")
        else:
            keys.append(key)
    return keys


def test_reference_documents_every_schema_key():
    rows = {row.key: row for section in reference_sections() for row in section.rows}
    keys = _schema_keys()
    assert sorted(rows) == sorted(keys)
    markdown = reference_markdown()
    for key in keys:
        assert rows[key].help.strip(), key
        line = next(ln for ln in markdown.splitlines() if ln.startswith(f"| `{key}` |"))
        assert line.endswith(" | " + " ".join(rows[key].help.split()).replace("|", "\\|") + " |"), key
    assert "server.async.buffer_size" in rows  # the YAML key, not the field name async_


def test_reference_shows_defaults_and_allowed_values():
    rows = {row.key: row for section in reference_sections() for row in section.rows}
    assert rows["data.partition"].default == "dirichlet"
    assert "`shards`" in rows["data.partition"].allowed
    assert rows["runtime.workers"].default == "null"
    assert rows["runtime.workers"].type == "int or null"
    assert rows["model.hidden"].default == "[200, 200]"
    assert rows["data.num_clients"].allowed == "≤ 10,000,000"


def test_a_key_without_help_stops_the_reference():
    @dataclass(frozen=True)
    class Inner:
        documented: int = _field(1, "a documented key")
        silent: int = _field(2, "  ")

    @dataclass(frozen=True)
    class Outer:
        inner: Inner = _field(Inner(), "a section")

    with pytest.raises(UndocumentedKeyError, match=r"inner\.silent"):
        reference_markdown(Outer)


def test_a_section_without_help_stops_the_reference():
    @dataclass(frozen=True)
    class Inner:
        documented: int = _field(1, "a documented key")

    @dataclass(frozen=True)
    class Outer:
        inner: Inner = _field(Inner(), "")

    with pytest.raises(UndocumentedKeyError, match="'inner'"):
        reference_markdown(Outer)


def test_readme_is_short_and_starts_with_the_two_setup_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250
    first_screen = "\n".join(lines[:40])
    commands = re.findall(r"^make \S+", first_screen, flags=re.MULTILINE)
    assert commands == ["make run", "make test"]


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        assert (page.parent / path).exists(), f"{page.relative_to(ROOT)} links to {target}"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_mkdocs_build_is_strict_clean(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reference = (tmp_path / "site" / "configuration" / "reference" / "index.html").read_text()
    for key in _schema_keys():
        assert f"<code>{key}</code>" in reference, key


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_the_hook_fills_the_reference_page_and_refuses_one_without_its_marker():
    from mkdocs.exceptions import PluginError

    spec = importlib.util.spec_from_file_location("fedsim_docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)

    @dataclass
    class Page:
        src_uri: str

        @property
        def file(self):
            return self

    page = (DOCS / hooks.REFERENCE_PAGE).read_text(encoding="utf-8")
    built = hooks.on_page_markdown(page, page=Page(hooks.REFERENCE_PAGE))
    assert hooks.MARKER not in built and "| `server.async.staleness` |" in built
    assert hooks.on_page_markdown("no marker", page=Page("index.md")) == "no marker"
    with pytest.raises(PluginError, match="marker"):
        hooks.on_page_markdown("no marker", page=Page(hooks.REFERENCE_PAGE))


REPO_PATH = re.compile(r"`((?:simulator|server|clients|tests|bench|configs|examples|deploy|docs)/[^`\s]*)`")


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_named_in_the_docs_exist(page: Path):
    """A file the docs name (`simulator/driver/reaper.py`) is where they say: moving code
    moves its mentions too."""
    for path in REPO_PATH.findall(page.read_text(encoding="utf-8")):
        assert list(ROOT.glob(path.rstrip("/"))), f"{page.relative_to(ROOT)} names {path}"


PYTHON_NAME = re.compile(r"`(simulator(?:\.\w+)+)")
FROM_IMPORT = re.compile(r"^\s*from ((?:simulator|server|clients)(?:\.\w+)*) import ([\w, ]+)$", re.MULTILINE)


def _defines(module: str, name: str) -> bool:
    """Whether ``module`` (a file in this repository, read without importing it) defines
    or imports ``name`` at its top level, or is a package holding a module ``name``."""
    base = ROOT / module.replace(".", "/")
    if (base / f"{name}.py").exists() or (base / name / "__init__.py").exists():
        return True
    source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    if not source.exists():
        return False
    tree = ast.parse(source.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return name in names or ("__all__" in names and name in source.read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_names_in_the_docs_exist(page: Path):
    """`simulator.driver.workers.stop_idle_workers()` and `from simulator... import` lines
    in the docs name what the code defines."""
    text = page.read_text(encoding="utf-8")
    named = [tuple(dotted.rsplit(".", 1)) for dotted in PYTHON_NAME.findall(text)]
    for module, names in FROM_IMPORT.findall(text):
        named += [(module, name.strip()) for name in names.split(",")]
    for module, name in named:
        assert _defines(module, name), f"{page.relative_to(ROOT)} names {module}.{name}"
