"""The public surface of the package: exports, __all__, py.typed, exceptions, docstrings,
and no aiohttp type leaking into the plugin API."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import re
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from aiohttp import web

import wsgate
from wsgate import errors

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(wsgate.__file__).resolve().parent

PUBLIC = {
    "CloseCode",
    "Handler",
    "Connection",
    "Context",
    "Duration",
    "Message",
    "NoOptions",
    "WsgateError",
    "ConfigError",
    "ConfigProblem",
    "HandlerLoadError",
    "BrokerError",
    "DependencyError",
    "ConnectionClosed",
    "Handshake",
    "Identity",
    "Recovery",
    "Refuse",
    "Size",
    "HttpCall",
    "HttpAnswer",
    "TokenRejected",
}
ERRORS = {"WsgateError", "ConfigError", "HandlerLoadError", "BrokerError", "ConnectionClosed", "Refuse",
          "TokenRejected", "DependencyError"}
SCRIPTS = {"wsgate.__main__"}  # runs the CLI when imported; not a library module


def _module_names() -> list[str]:
    names = ["wsgate"]
    for info in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="wsgate."):
        if info.name not in SCRIPTS:
            names.append(info.name)
    return sorted(names)


MODULES = _module_names()


TEMPLATES = PACKAGE_DIR / "project"  # files `wsgate init` copies into a new project, not modules


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if p.name != "__main__.py" and TEMPLATES not in p.parents)


def test_the_package_has_the_modules_we_expect() -> None:
    # guards the parametrisations below against finding nothing
    assert {"wsgate.config", "wsgate.handler", "wsgate.connection", "wsgate.broker.memory"} <= set(MODULES)
    assert len(_sources()) == len(MODULES)


def test_top_level_exports_exactly_the_public_api() -> None:
    assert set(wsgate.__all__) == PUBLIC
    assert len(wsgate.__all__) == len(set(wsgate.__all__))


def test_public_names_are_importable_from_the_package() -> None:
    namespace: dict[str, object] = {}
    exec("from wsgate import *", namespace)
    assert set(namespace) >= PUBLIC


def test_public_names_are_documented() -> None:
    """The README sends plugin authors to docs/handlers.md for "the whole API"."""
    text = (ROOT / "docs" / "handlers.md").read_text()
    missing = sorted(name for name in PUBLIC if not re.search(rf"\b{name}\b", text))
    assert missing == [], f"exported by wsgate but never mentioned in docs/handlers.md: {missing}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_every_module_defines_all(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    assigned = [
        node for node in tree.body
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets))
        or (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "__all__")
    ]
    assert assigned, f"{path.relative_to(ROOT)} has no module-level __all__"


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list | tuple), f"{name}.__all__ missing"
    assert all(isinstance(item, str) for item in exported)
    assert len(exported) == len(set(exported)), f"duplicates in {name}.__all__"
    missing = [item for item in exported if not hasattr(module, item)]
    assert missing == [], f"{name}.__all__ names what it does not define: {missing}"
    private = [item for item in exported if item.startswith("_")]
    assert private == []


def test_package_ships_py_typed() -> None:
    assert (PACKAGE_DIR / "py.typed").is_file()
    setup = (ROOT / "setup.cfg").read_text()
    section = setup.split("[options.package_data]", 1)[1].split("\n[", 1)[0]
    assert "py.typed" in section


# --- exceptions ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_every_error_is_a_wsgate_error(name: str) -> None:
    cls = getattr(wsgate, name)
    assert issubclass(cls, Exception)
    assert issubclass(cls, wsgate.WsgateError)
    assert cls.__module__ == "wsgate.errors"


def test_errors_module_defines_only_wsgate_errors() -> None:
    classes = [obj for _, obj in inspect.getmembers(errors, inspect.isclass) if obj.__module__ == "wsgate.errors"]
    exceptions = {c.__name__ for c in classes if issubclass(c, BaseException)}
    assert exceptions == ERRORS
    assert all(issubclass(getattr(errors, n), errors.WsgateError) for n in exceptions)


def _public_exceptions() -> Iterator[tuple[str, type[BaseException]]]:
    for name in MODULES:
        module: ModuleType = importlib.import_module(name)
        for item in getattr(module, "__all__", []):
            obj = getattr(module, item, None)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                yield f"{name}.{item}", obj


def test_every_exported_exception_anywhere_is_a_wsgate_error() -> None:
    found = dict(_public_exceptions())
    assert "wsgate.errors.ConfigError" in found
    strays = [name for name, cls in found.items() if not issubclass(cls, wsgate.WsgateError)]
    assert strays == []


def test_wsgate_error_is_not_a_catch_all_of_builtins() -> None:
    assert wsgate.WsgateError.__bases__ == (Exception,)
    for name in ERRORS - {"WsgateError"}:
        assert getattr(wsgate, name).__bases__ == (wsgate.WsgateError,), name


def test_config_error_carries_its_problems() -> None:
    first = wsgate.ConfigProblem("c.yaml", 3, 5, "endpoints[0].path", "bad")
    second = wsgate.ConfigProblem("c.yaml", 1, 1, "", "worse")
    error = wsgate.ConfigError([first, second])
    assert error.problems == [first, second]
    assert str(error) == "c.yaml:3:5: endpoints[0].path: bad\nc.yaml:1:1: worse"
    assert not issubclass(wsgate.ConfigProblem, BaseException)
    with pytest.raises(AttributeError):
        first.line = 4  # type: ignore[misc]


# --- docstrings ------------------------------------------------------------------------------


def _public_members(cls: type) -> dict[str, object]:
    return {
        name: member for name, member in vars(cls).items()
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property))
    }


HOOKS = ["startup", "shutdown", "on_connect", "on_message", "on_disconnect"]
CONNECTION_API = ["send", "send_json", "close", "closed"]
CONTEXT_API = ["connections", "broadcast", "subscribe", "unsubscribe", "publish", "publish_numbered",
               "history", "claim", "release", "members", "spawn"]


@pytest.mark.parametrize(
    ("cls", "required"),
    [(wsgate.Handler, HOOKS), (wsgate.Connection, CONNECTION_API), (wsgate.Context, CONTEXT_API)],
    ids=["Handler", "Connection", "Context"],
)
def test_plugin_api_has_docstrings(cls: type, required: list[str]) -> None:
    members = _public_members(cls)
    assert set(required) <= set(members), f"{cls.__name__} lacks {set(required) - set(members)}"
    undocumented = [name for name, member in members.items() if not (inspect.getdoc(member) or "").strip()]
    assert undocumented == [], f"{cls.__name__} methods without a docstring: {undocumented}"
    assert (cls.__doc__ or "").strip()


@pytest.mark.parametrize("name", sorted(PUBLIC - {"Message"}))
def test_public_classes_have_docstrings(name: str) -> None:
    assert (getattr(wsgate, name).__doc__ or "").strip()


def test_hooks_are_coroutines() -> None:
    for hook in HOOKS:
        assert inspect.iscoroutinefunction(getattr(wsgate.Handler, hook)), hook


# --- no aiohttp in the plugin API ------------------------------------------------------------


def _types_in(hint: object) -> Iterator[object]:
    yield hint
    for arg in typing.get_args(hint):
        yield from _types_in(arg)


def _aiohttp_types(obj: object) -> list[str]:
    # wsgate's names, not its submodules: wsgate.web must not hide aiohttp's `web` in annotations.
    names = {k: v for k, v in vars(wsgate).items() if not isinstance(v, ModuleType)}
    hints = typing.get_type_hints(obj, localns=names)
    leaks = []
    for where, hint in hints.items():
        for t in _types_in(hint):
            module = getattr(t, "__module__", "") or ""
            if module.split(".")[0] == "aiohttp" or "aiohttp" in repr(t):
                leaks.append(f"{where}: {t!r}")
    return leaks


@pytest.mark.parametrize("cls", [wsgate.Handler, wsgate.Connection, wsgate.Context], ids=lambda c: c.__name__)
def test_no_aiohttp_type_in_public_signatures(cls: type) -> None:
    checked = 0
    leaks = _aiohttp_types(cls)  # class-level annotations
    for name, member in _public_members(cls).items():
        function = member.fget if isinstance(member, property) else member
        leaks += [f"{name}.{leak}" for leak in _aiohttp_types(function)]
        checked += 1
    assert checked >= 3
    assert leaks == []


def _leaky(request: web.Request) -> web.WebSocketResponse | None:
    raise NotImplementedError


def test_the_hint_walker_does_see_aiohttp() -> None:
    """The check above would catch a leak: a function annotated with aiohttp types is found."""
    assert len(_aiohttp_types(_leaky)) >= 2


def test_a_plain_import_does_not_load_prometheus_or_the_gateway() -> None:
    """Plugin authors import wsgate for its API; metrics and sockets load only when serving."""
    code = ("import sys, wsgate; import wsgate.builtins.chat; "
            "print(sorted(m for m in sys.modules if m.startswith(('prometheus_client', 'wsgate.gateway.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['wsgate.gateway.frames']"


def test_only_the_writer_writes_to_a_transport() -> None:
    """One writer per socket: bytes reach a transport in gateway/writer.py and nowhere else."""
    writers = sorted(
        str(path.relative_to(PACKAGE_DIR)) for path in _sources()
        if re.search(r"\.(write|writelines|write_eof|send_frame)\(", path.read_text())
        and "transport" in path.read_text()
    )
    assert writers == ["gateway/writer.py"]


def test_the_gateway_has_no_import_cycle() -> None:
    imports: dict[str, set[str]] = {}
    for path in (PACKAGE_DIR / "gateway").glob("*.py"):
        tree = ast.parse(path.read_text())
        imports[path.stem] = {
            node.module for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        }
    seen: set[str] = set()

    def visit(module: str, stack: tuple[str, ...]) -> None:
        assert module not in stack, f"import cycle: {' -> '.join((*stack, module))}"
        if module in seen:
            return
        seen.add(module)
        for dep in imports.get(module, ()):
            visit(dep, (*stack, module))

    for module in imports:
        visit(module, ())
    assert {"router", "session", "writer", "closing", "sendqueue"} <= seen


# --- what `import wsgate` costs ----------------------------------------------------------------

# What the plugin API is made of: Handler's options are pydantic models.
PLUGIN_API_PACKAGES = {"pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection"}
PLUGIN_API_MODULES = {
    "wsgate", "wsgate.handler", "wsgate.connection", "wsgate.closecode", "wsgate.errors",
    "wsgate.auth", "wsgate.auth.identity", "wsgate.gateway", "wsgate.gateway.frames",
    "wsgate.config", "wsgate.config.base", "wsgate.config.units",  # Duration and Size
    "wsgate.observe", "wsgate.observe.redact",  # how auth.identity shows a URL: pure, stdlib only
    "wsgate.lazy",  # what makes auth and config load their parts when first named
}


def _loaded_by(statement: str) -> set[str]:
    code = ("import json, sys; before = set(sys.modules); " + statement +
            "; print(json.dumps(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def test_importing_wsgate_loads_only_what_the_plugin_api_needs() -> None:
    """A plugin module imports wsgate for the API: aiohttp's client, joserfc, cryptography,
    YAML and the config models load only when a gateway is configured or served."""
    loaded = _loaded_by("import wsgate")
    # "_sysconfigdata_..." and the like are the interpreter's own, whatever their names.
    packages = {m.split(".")[0] for m in loaded if not m.startswith("_")} - set(sys.stdlib_module_names) - {"wsgate"}
    assert packages <= PLUGIN_API_PACKAGES, sorted(packages - PLUGIN_API_PACKAGES)
    own = {m for m in loaded if m.split(".")[0] == "wsgate"}
    assert own <= PLUGIN_API_MODULES, sorted(own - PLUGIN_API_MODULES)
    assert {"wsgate.handler", "wsgate.connection"} <= own


def test_the_lazy_packages_still_export_everything() -> None:
    """wsgate.auth and wsgate.config load their parts when a name is first asked for."""
    loaded = _loaded_by("from wsgate.auth import JwtVerifier; from wsgate.config import parse_config")
    assert {"joserfc", "wsgate.auth.jwt", "wsgate.config.load"} <= loaded
    for name in ("wsgate.auth", "wsgate.config"):
        module = importlib.import_module(name)
        assert all(getattr(module, item) is not None for item in module.__all__)
        with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
            module.nothing_here  # noqa: B018


# --- what the docs, the built-ins and the examples use --------------------------------------

# The public modules: the plugin API, and the test kit.
PUBLIC_MODULES = {"wsgate": PUBLIC, "wsgate.testing": {"GatewayServer", "eventually", "run_gateway", "wait_until"}}
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.md"))]
PLUGIN_CODE = [
    *sorted((ROOT / "handlers").glob("*.py")),
    *sorted(p for p in (ROOT / "examples").rglob("*.py") if ".egg-info" not in str(p)),
    *sorted(TEMPLATES.rglob("*.py")),
]
_INLINE_CODE = re.compile(r"`+([^`]+)`+")
_DOTTED = re.compile(r"\bwsgate((?:\.\w+)+)")


def _dotted_uses(tree: ast.AST) -> Iterator[tuple[str, str]]:
    """(module, name) for every ``from wsgate... import name`` and ``wsgate.x.y`` in ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "wsgate":
            for alias in node.names:
                yield str(node.module), alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("wsgate."):
                    module, _, name = alias.name.rpartition(".")
                    yield module, name
        elif isinstance(node, ast.Attribute):
            yield from _dotted_text(ast.unparse(node))


def _dotted_text(text: str, *, top: bool = True) -> Iterator[tuple[str, str]]:
    """(module, name) for every ``wsgate.a.b`` in ``text``, taking the longest module prefix.

    Without ``top``, names right under ``wsgate`` are left out: in prose ``wsgate.js`` or
    ``wsgate.service`` is a file and ``wsgate.handlers`` an entry-point group.
    """
    for match in _DOTTED.finditer(text):
        parts = ["wsgate", *match[1].lstrip(".").split(".")]
        for cut in range(len(parts) - 1, 0 if top else 1, -1):
            module = ".".join(parts[:cut])
            if module in MODULES:
                yield module, parts[cut]
                break


def _outside_the_public_api(uses: Iterator[tuple[str, str]]) -> set[str]:
    return {f"{module}.{name}" for module, name in uses
            if name not in PUBLIC_MODULES.get(module, set()) and not (module == "wsgate" and name == "testing")}


def test_the_public_modules_export_what_this_test_allows() -> None:
    import wsgate.testing

    assert set(wsgate.testing.__all__) == PUBLIC_MODULES["wsgate.testing"]


@pytest.mark.parametrize("path", PLUGIN_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_built_ins_examples_and_template_use_only_the_public_api(path: Path) -> None:
    """The built-in handlers, the example plugin and the project `wsgate init` writes
    are plugins like any other: what they import from wsgate is what __all__ offers."""
    assert _outside_the_public_api(_dotted_uses(ast.parse(path.read_text()))) == set()


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_docs_use_only_the_public_api(path: Path) -> None:
    from test_docs import code_blocks

    text = path.read_text()
    uses = [use for block in code_blocks(text) if block.lang in {"python", "py", "python3"}
            for use in _dotted_uses(ast.parse(block.code))]
    uses += [use for span in _INLINE_CODE.findall(text) for use in _dotted_text(span, top=False)]
    assert _outside_the_public_api(iter(uses)) == set()


def test_the_api_use_checks_see_a_private_name() -> None:
    tree = ast.parse("from wsgate.config import parse_config\nimport wsgate.app\nwsgate.app.GATEWAY\n"
                     "from wsgate import Handler\nfrom wsgate.testing import run_gateway\n")
    assert _outside_the_public_api(_dotted_uses(tree)) == {"wsgate.config.parse_config", "wsgate.app",
                                                           "wsgate.app.GATEWAY"}
    prose = "`await app[wsgate.app.GATEWAY].publish()` and `wsgate.js`"
    assert _outside_the_public_api(_dotted_text(prose, top=False)) == {"wsgate.app.GATEWAY"}
