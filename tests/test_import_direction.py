"""Which part of wsgate may import which: no import cycle anywhere in the package;
``wsgate.config`` is the schema and imports neither ``wsgate.auth`` nor ``wsgate.tls``
(what is built from a config, the authenticators and the TLS context, is built by the
app: ``wsgate.prepare``); the built-in handlers use only what a plugin can, ``wsgate``."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import wsgate
from wsgate import ConfigError
from wsgate.app import GATEWAY, build_app
from wsgate.config import Registry, load_config, parse_config
from wsgate.prepare import prepare
from wsgate.testing import run_gateway

PACKAGE_DIR = Path(wsgate.__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
TEMPLATES = PACKAGE_DIR / "project"  # files `wsgate init` copies into a new project, not modules


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE_DIR.rglob("*.py") if TEMPLATES not in p.parents}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(body: list[ast.stmt], *, runtime: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of ``body``. ``runtime``: only those run when the module is
    imported (not under ``if TYPE_CHECKING:``, not inside functions or classes)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not (runtime and _is_type_checking(node.test)):
                yield from _statements(node.body, runtime=runtime)
            yield from _statements(node.orelse, runtime=runtime)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _statements(block, runtime=runtime)
        elif not runtime and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
                                        | ast.With | ast.AsyncWith | ast.For | ast.While):
            yield from _statements(node.body, runtime=runtime)


def imported(module: str, *, runtime: bool) -> set[str]:
    """The wsgate modules that ``module`` imports, by absolute name.

    ``from .a.b import c`` imports ``a``, ``a.b`` and, if it is a module, ``a.b.c``:
    importing a submodule runs its packages' ``__init__`` first. A package the importing
    module lives in is left out, since Python has begun it already.
    """
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _statements(ast.parse(path.read_text(encoding="utf-8")).body, runtime=runtime):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            targets = [source, *(f"{source}.{alias.name}" for alias in node.names)]
        for target in targets:
            parts = target.split(".")
            for end in range(1, len(parts) + 1):
                name = ".".join(parts[:end])
                if name in MODULES and name != module and not f"{module}.".startswith(f"{name}."):
                    found.add(name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> the modules it imports), or None."""
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> list[str] | None:
        if module in stack:
            return [*stack[stack.index(module):], module]
        if module in done:
            return None
        for dep in sorted(graph.get(module, ())):
            if cycle := visit(dep, [*stack, module]):
                return cycle
        done.add(module)
        return None

    return next((cycle for module in sorted(graph) if (cycle := visit(module, []))), None)


def test_the_package_has_no_import_cycle() -> None:
    graph = {module: imported(module, runtime=True) for module in MODULES}
    assert {"wsgate.gateway.router", "wsgate.config.models", "wsgate.auth.jwt", "wsgate.tls"} <= set(graph)
    assert {"wsgate.config", "wsgate.config.auth"} <= graph["wsgate.auth.authenticator"]  # packages count too
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_finder_finds_one() -> None:
    """The check above can fail: config -> auth -> config, as the package once had."""
    graph = {"wsgate.config.load": {"wsgate.auth.authenticator", "wsgate.config.models"},
             "wsgate.auth.authenticator": {"wsgate.config", "wsgate.config.auth"},
             "wsgate.config": {"wsgate.config.load"}, "wsgate.config.auth": set()}
    assert find_cycle(graph) == ["wsgate.auth.authenticator", "wsgate.config", "wsgate.config.load",
                                 "wsgate.auth.authenticator"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


CONFIG_MODULES = sorted(m for m in MODULES if m == "wsgate.config" or m.startswith("wsgate.config."))


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_config_imports_neither_auth_nor_tls(module: str) -> None:
    """Not at run time, not for type checking, not inside a function."""
    found = imported(module, runtime=False)
    assert not {m for m in found if m.split(".")[:2] in (["wsgate", "auth"], ["wsgate", "tls"])}, found


# What reading a config must not load: the authenticators and what they bring, and TLS.
BUILT_BY_THE_APP = ("joserfc", "jwt", "cryptography", "aiohttp.client", "wsgate.auth.authenticator", "wsgate.auth.jwt",
                    "wsgate.auth.backend", "wsgate.auth.hook", "wsgate.tls", "wsgate.prepare")


def test_loading_a_config_reads_no_file_it_names_and_loads_no_authenticator(tmp_path: Path) -> None:
    code = f"""
import json, sys
from wsgate.config import Registry, parse_config
settings = parse_config('''{CONFIG}''', {str(tmp_path / "config.yaml")!r}, Registry(plugins=False))
print(json.dumps([settings.config.server.tls is not None, sorted(settings.config.auth),
                  sorted(m for m in sys.modules if m.startswith({BUILT_BY_THE_APP!r}))]))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, ["hook", "users"], []]


CONFIG = """\
server: {tls: {cert: tls/missing.pem, key: tls/missing.key}}
auth:
  users: {jwt: {algorithms: [RS256], public_key: keys/missing.pem}}
  hook: {python: "surely_no_such_module_here:check"}
endpoints:
  - {path: /ws, handler: echo, auth: users}
"""


async def test_the_app_builds_what_the_config_names_and_reports_it_located(tmp_path: Path) -> None:
    settings = parse_config(CONFIG, str(tmp_path / "config.yaml"), Registry(plugins=False))
    expected = [(3, "auth.users.jwt"), (4, "auth.hook.python"), (1, "server.tls.cert"), (1, "server.tls.key")]
    with pytest.raises(ConfigError) as prepared:
        prepare(settings)  # what `check` and `serve` run before binding
    assert [(p.line, p.key) for p in prepared.value.problems] == expected
    assert "cannot read" in prepared.value.problems[0].message
    with pytest.raises(ConfigError) as built:
        build_app(settings)
    assert [(p.line, p.key) for p in built.value.problems] == expected


@pytest.mark.parametrize(("broken", "key"), [
    ("server: {tls: {cert: missing.pem, key: missing.key}}\n", "server.tls.cert"),
    ("auth: {users: {jwt: {algorithms: [RS256], public_key: missing.pem}}}\n", "auth.users.jwt"),
])
async def test_a_reload_to_a_config_whose_files_do_not_load_keeps_the_old_one(
        tmp_path: Path, broken: str, key: str) -> None:
    config = tmp_path / "config.yaml"
    good = "api: {token: t0ken}\nendpoints:\n  - {path: /ws, handler: echo}\n"
    config.write_text(good)
    registry = Registry(plugins=False)
    async with run_gateway(load_config(config, registry), registry=registry) as gw:
        config.write_text(broken + good.replace("/ws", "/new"))
        async with gw.session.post(gw.url + "/api/reload", headers={"Authorization": "Bearer t0ken"}) as response:
            assert response.status == 400
            errors = (await response.json())["errors"]
        assert any(re.search(rf"config\.yaml:1:\d+: {re.escape(key)}: ", error) for error in errors), errors
        assert list(gw.app[GATEWAY].routes) == ["/ws"]


HANDLERS = sorted((ROOT / "handlers").glob("*.py"))


@pytest.mark.parametrize("path", HANDLERS, ids=[p.stem for p in HANDLERS])
def test_the_built_in_handlers_use_only_the_plugin_api(path: Path) -> None:
    """A built-in imports from ``wsgate`` what any third-party plugin can, and nothing deeper."""
    deeper = [
        node.module if isinstance(node, ast.ImportFrom) else ", ".join(a.name for a in node.names)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wsgate."))
        or (isinstance(node, ast.Import) and any(a.name.startswith("wsgate.") for a in node.names))
    ]
    assert deeper == []
