"""wsgate's pytest plugin, loaded by pytest through the ``pytest11`` entry point.

With ``pip install 'wsgate[testing]'`` and nothing else:

- ``async def test_...`` functions run in an event loop. pytest-asyncio's default
  (strict) mode would skip an unmarked one with only a warning, so the plugin marks
  them ``asyncio``; tests already marked for asyncio, anyio or trio are left alone.
- pytest-asyncio's loop scope for fixtures, when the project sets none, is
  "function" (its announced default) instead of a deprecation warning on every run;
- the project folder (pytest's rootdir) is importable when it holds ``config.yaml``
  or ``handlers/``, so ``from handlers.shout import Shout`` works in ``tests/`` just
  as ``handler: handlers.shout:Shout`` works in config.yaml;
- the ``wsgate_gateway`` fixture starts gateways and stops them after the test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # the gateway is imported when a test uses it, not at every pytest start
    from .testing import EndpointTable, GatewayServer

# Without [testing] the plugin is still loaded, and must not break anyone's pytest.
_PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None

__all__ = ["wsgate_gateway"]

_ASYNC_MARKS = ("asyncio", "anyio", "trio")
_LOOP_SCOPE = "asyncio_default_fixture_loop_scope"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if _PYTEST_ASYNCIO and not config.getini(_LOOP_SCOPE):
        # Unset, pytest-asyncio warns on every run that its default will become
        # "function"; a project that never chose gets that default now, quietly.
        cache = getattr(config, "_inicache", None)
        if isinstance(cache, dict):
            cache[_LOOP_SCOPE] = "function"
    root = config.rootpath
    if ((root / "config.yaml").is_file() or (root / "handlers").is_dir()) and str(root) not in sys.path:
        sys.path.insert(0, str(root))


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
        and not any(collector.get_closest_marker(m) for m in _ASYNC_MARKS)
        and not any(mark.name in _ASYNC_MARKS for mark in getattr(obj, "pytestmark", []))
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
