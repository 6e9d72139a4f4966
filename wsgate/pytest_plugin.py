"""wsgate's pytest plugin, loaded by pytest through the ``pytest11`` entry point.

Installed with ``wsgate[testing]``, it is loaded by every project in the environment,
so it acts only where wsgate is in use; elsewhere pytest runs exactly as without it.

In a wsgate project (pytest's rootdir holds a ``config.yaml`` with ``endpoints:``, or
a ``handlers/`` folder whose modules import wsgate):

- unmarked ``async def`` tests run in an event loop: pytest-asyncio's default (strict)
  mode would not run them, so the plugin marks them ``asyncio``;
  tests marked for asyncio, anyio or trio are left alone;
- pytest-asyncio's warning that ``asyncio_default_fixture_loop_scope`` is unset is
  not shown (its default, "function", is what wsgate's fixtures expect);
- the project folder is importable, so ``from handlers.shout import Shout`` works in
  ``tests/`` just as ``handler: handlers.shout:Shout`` works in config.yaml.

Anywhere, the ``wsgate_gateway`` fixture starts gateways and stops them after the test,
and an unmarked ``async def`` test that asks for it is marked ``asyncio`` too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import re
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the gateway is imported when a test uses it, not at every pytest start
    from .testing import EndpointTable, GatewayServer

# Without [testing] the plugin is still loaded, and must not break anyone's pytest.
_PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None

__all__ = ["wsgate_gateway"]

_FIXTURE = "wsgate_gateway"
_ASYNC_MARKS = ("asyncio", "anyio", "trio")
_IN_PROJECT = pytest.StashKey[bool]()
_ENDPOINTS = re.compile(r"^endpoints\s*:", re.MULTILINE)
_IMPORTS_WSGATE = re.compile(r"^\s*(from|import)\s+wsgate\b", re.MULTILINE)
_LOOP_SCOPE_UNSET = r'The configuration option "asyncio_default_fixture_loop_scope" is unset'


def _is_wsgate_project(root: Path) -> bool:
    """True if ``root`` holds a wsgate ``config.yaml`` or a ``handlers/`` folder of wsgate handlers.

    A ``config.yaml`` or a ``handlers`` package alone is common in other projects too.
    """
    config = root / "config.yaml"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if config.is_file() and _ENDPOINTS.search(config.read_text(encoding="utf-8")):
            return True
    handlers = root / "handlers"
    if not handlers.is_dir():
        return False
    for module in sorted(handlers.glob("*.py")):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if _IMPORTS_WSGATE.search(module.read_text(encoding="utf-8")):
                return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    root = config.rootpath
    in_project = _is_wsgate_project(root)
    config.stash[_IN_PROJECT] = in_project
    if not in_project:
        return
    if _PYTEST_ASYNCIO and not config.getini("asyncio_default_fixture_loop_scope"):
        # pytest-asyncio warns from its own pytest_configure, which runs after this one,
        # inside the filters pytest keeps for the whole run.
        warnings.filterwarnings("ignore", _LOOP_SCOPE_UNSET, pytest.PytestDeprecationWarning)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


def _asks_for_the_fixture(collector: pytest.Module | pytest.Class, obj: Callable[..., Any]) -> bool:
    with contextlib.suppress(TypeError, ValueError):
        if _FIXTURE in inspect.signature(obj).parameters:
            return True
    marks = [*collector.iter_markers("usefixtures"), *getattr(obj, "pytestmark", [])]
    return any(mark.name == "usefixtures" and _FIXTURE in mark.args for mark in marks)


def _marked_async(collector: pytest.Module | pytest.Class, obj: object) -> bool:
    return any(collector.get_closest_marker(m) for m in _ASYNC_MARKS) or any(
        mark.name in _ASYNC_MARKS for mark in getattr(obj, "pytestmark", [])
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, Any, None]:
    # Marked on the function before any collector builds an item from it, so that
    # pytest-asyncio sees the mark whatever order the plugins' hooks run in.
    if (
        _PYTEST_ASYNCIO
        and inspect.iscoroutinefunction(obj)
        and collector.funcnamefilter(name)
        and not _marked_async(collector, obj)
        and (collector.config.stash.get(_IN_PROJECT, False) or _asks_for_the_fixture(collector, obj))
    ):
        pytest.mark.asyncio(obj)
    yield


async def wsgate_gateway() -> AsyncIterator[Callable[..., Awaitable[GatewayServer]]]:
    """Factory fixture: ``gw = await wsgate_gateway({"/path": MyHandler})``.

    Takes what ``wsgate.testing.run_gateway`` takes; every gateway it started is shut
    down (connections closed with 1001) when the test ends.
    """
    async with contextlib.AsyncExitStack() as stack:

        async def start(endpoints: EndpointTable, **kwargs: Any) -> GatewayServer:
            from .testing import run_gateway

            return await stack.enter_async_context(run_gateway(endpoints, **kwargs))

        yield start


if _PYTEST_ASYNCIO:
    import pytest_asyncio

    wsgate_gateway = pytest_asyncio.fixture(wsgate_gateway)
