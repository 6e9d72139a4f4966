"""Test kit: start a real gateway on a loopback port and talk to it.

::

    from wsgate.testing import run_gateway

    async def test_shout() -> None:
        async with run_gateway({"/shout": Shout}) as gw, gw.connect("/shout") as ws:
            await ws.send_str("hi")
            assert await ws.receive_str() == "HI"

With ``pip install 'wsgate[testing]'``, pytest loads wsgate's plugin by itself
(``wsgate.pytest_plugin``): in a wsgate project, async tests run without
configuration; anywhere, the ``wsgate_gateway`` fixture is there:
``gw = await wsgate_gateway({...})``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from .app import GATEWAY, STATS, build_app, make_runner
from .config import Registry, Settings, load_config, parse_config
from .gateway.router import Gateway
from .handler import Handler
from .observe.stats import GatewayStats

__all__ = ["GatewayServer", "eventually", "run_gateway", "wait_until"]

EndpointTable = Mapping[str, "type[Handler] | str | Mapping[str, Any]"]


class GatewayServer:
    """A running gateway: its base URL, its app, and a client session to reach it."""

    def __init__(self, app: web.Application, url: str, session: aiohttp.ClientSession) -> None:
        self.app = app
        self.url = url
        self.session = session

    @property
    def gateway(self) -> Gateway:
        return self.app[GATEWAY]

    @property
    def stats(self) -> GatewayStats:
        return self.app[STATS]

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def connect(self, path: str, **kwargs: Any) -> AbstractAsyncContextManager[aiohttp.ClientWebSocketResponse]:
        """Open a WebSocket with aiohttp's client (kwargs go to ``ws_connect``)."""
        return self.session.ws_connect(self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return self.session.get(self.url + path, **kwargs)


async def wait_until(predicate: Callable[[], object], within: float = 5.0) -> None:
    """Poll ``predicate`` every 10 ms until it is true; TimeoutError after ``within`` s."""
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.01)


async def eventually(probe: Callable[[], Awaitable[Any]], wanted: Any, within: float) -> None:
    """Await ``probe()`` every 50 ms until it returns ``wanted``; AssertionError after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        last = await probe()
        if last == wanted:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still {last!r}, not {wanted!r}, after {within}s")
        await asyncio.sleep(0.05)


def _config_text(endpoints: EndpointTable, registry: Registry, extra: Mapping[str, Any]) -> str:
    entries = []
    for path, spec in endpoints.items():
        if isinstance(spec, type):
            name = f"{spec.__module__}:{spec.__qualname__}"
            registry.register(name, spec)
            entries.append({"path": path, "handler": name})
        elif isinstance(spec, str):
            entries.append({"path": path, "handler": spec})
        else:
            entry = dict(spec)
            if isinstance(entry.get("handler"), type):
                cls = entry["handler"]
                entry["handler"] = f"{cls.__module__}:{cls.__qualname__}"
                registry.register(entry["handler"], cls)
            entries.append({"path": path, **entry})
    return yaml.safe_dump({"server": {"host": "127.0.0.1", "port": 0}, **extra, "endpoints": entries})


@contextlib.asynccontextmanager
async def run_gateway(
    endpoints: EndpointTable | os.PathLike[str] | Settings,
    *,
    policy: Mapping[str, Any] | None = None,
    registry: Registry | None = None,
    **config: Any,
) -> AsyncIterator[GatewayServer]:
    """Serve ``endpoints`` (path -> Handler class, handler name, or endpoint mapping).

    ``policy`` and any other keyword become top-level config keys. The config goes
    through the same validation as config.yaml, and a mistake raises ``ConfigError``.
    ``endpoints`` may also be the path of a config file, whose endpoints, policy and
    broker are served as they are. Either way the server listens on 127.0.0.1 on a
    free port and is shut down (connections closed with 1001) on exit.
    """
    registry = registry or Registry()
    if isinstance(endpoints, os.PathLike):
        if policy is not None or config:
            raise TypeError("policy= and other config keywords go with an endpoint table; "
                            f"a config file ({os.fspath(endpoints)}) says them itself")
        settings = load_config(Path(endpoints), registry)
    elif isinstance(endpoints, Settings):
        settings = endpoints
    else:
        extra = {**config, **({"policy": dict(policy)} if policy is not None else {})}
        settings = parse_config(_config_text(endpoints, registry, extra), "<run_gateway>", registry)
    app = build_app(settings, registry)
    runner = make_runner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        try:
            yield GatewayServer(app, f"http://{host}:{port}", session)
        finally:
            await runner.cleanup()

