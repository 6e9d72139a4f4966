"""aiohttp's internals are read in one module, ``wsgate/gateway/aiohttp_seam.py``: no other
module of wsgate or of the built-in handlers touches an aiohttp name that starts with
``_``; setup.cfg bounds aiohttp to the releases the seam was checked on; and an aiohttp
outside them, or one that moved what the seam reads, stops the gateway before it binds,
saying what to install."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import wsgate
from wsgate import cli
from wsgate.errors import DependencyError
from wsgate.gateway import aiohttp_seam

ROOT = Path(wsgate.__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "wsgate").rglob("*.py"), *(ROOT / "handlers").rglob("*.py")])
SEAM = ROOT / "wsgate" / "gateway" / "aiohttp_seam.py"
PRIVATE = re.compile(r"_[A-Za-z0-9]\w*")  # _name, not __dunder__


def _private_names(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, attributes, class fields, slots."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                for t in node.targets):
            names.update(c.value for c in ast.walk(node.value)
                         if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return {name for name in names if PRIVATE.fullmatch(name)}


AIOHTTP_PRIVATE = frozenset().union(*(_private_names(ast.parse(path.read_text()))
                                      for path in Path(aiohttp.__file__).parent.rglob("*.py")))


def foreign_private_names(sources: dict[str, str]) -> list[str]:
    """``file:line: name`` for each private name that aiohttp defines and the sources do not,
    and each import of a private module or name of aiohttp."""
    trees = {name: ast.parse(text) for name, text in sources.items()}
    foreign = AIOHTTP_PRIVATE - set().union(*map(_private_names, trees.values()))
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in foreign:
                found.append(f"{name}:{node.lineno}: {node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "aiohttp":
                parts = [*(node.module or "").split("."), *(alias.name for alias in node.names)]
                found += [f"{name}:{node.lineno}: {part}" for part in parts if PRIVATE.fullmatch(part)]
            elif isinstance(node, ast.Import):
                found += [f"{name}:{node.lineno}: {alias.name}" for alias in node.names
                          if alias.name.split(".")[0] == "aiohttp"
                          and any(PRIVATE.fullmatch(part) for part in alias.name.split("."))]
    return found


def test_only_the_seam_touches_aiohttp_internals() -> None:
    sources = {str(path.relative_to(ROOT)): path.read_text() for path in SOURCES}
    seam = str(SEAM.relative_to(ROOT))
    assert any(hit.startswith(seam + ":") for hit in foreign_private_names(sources)), "the seam should be found"
    assert [hit for hit in foreign_private_names(sources) if not hit.startswith(seam + ":")] == []


@pytest.mark.parametrize("snippet", [
    "def f(ws):\n    return ws._reader\n",
    "from aiohttp._websocket.reader import WebSocketReader\n",
    "from aiohttp.client import _RequestContextManager\n",
    "import aiohttp._websocket.reader\n",
])
def test_the_checker_finds_each_kind_of_private_use(snippet: str) -> None:
    assert foreign_private_names({"m.py": snippet}), snippet


def test_the_checker_leaves_a_class_s_own_private_names_alone() -> None:
    code = ("class C:\n    def __init__(self):\n        self._reader = None\n"
            "    def go(self):\n        return self._reader\n")
    assert foreign_private_names({"m.py": code}) == []


def test_setup_cfg_bounds_aiohttp_as_the_seam_says() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    (requirement,) = [line.strip() for line in setup["options"]["install_requires"].splitlines()
                      if re.match(r"aiohttp\b(?!-)", line.strip())]
    (low, high) = aiohttp_seam.SUPPORTED
    assert requirement == f"aiohttp>={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    installed = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
    assert low <= installed < high, "the pinned aiohttp is outside the bound"


def test_the_installed_aiohttp_passes() -> None:
    aiohttp_seam.check()


@pytest.mark.parametrize("version", ["3.13.3", "3.15.0", "4.0.0a1", "garbage"])
def test_an_aiohttp_outside_the_bound_is_refused_with_what_to_install(
        version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiohttp, "__version__", version)
    with pytest.raises(DependencyError, match=rf"aiohttp {re.escape(version)} is installed.*"
                                              r"pip install 'aiohttp>=3\.14,<3\.15'"):
        aiohttp_seam.check()


def test_an_aiohttp_that_moved_the_hook_the_takeover_uses_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(web.WebSocketResponse, "_post_start")
    with pytest.raises(DependencyError, match=r"no longer has WebSocketResponse\._post_start"):
        aiohttp_seam.check()


def test_the_command_stops_before_binding_and_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("endpoints:\n  - {path: /ws, handler: echo}\n")
    monkeypatch.setattr(aiohttp, "__version__", "3.99.0")
    assert cli.main(["--config", str(config), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "aiohttp 3.99.0 is installed" in err, err
    assert "pip install 'aiohttp>=3.14,<3.15'" in err, err
