"""Cross-site WebSocket hijacking, tried from a hostile page's side over real sockets.

A browser sends a site's cookies with every WebSocket handshake to it, whichever page
opens the socket. So a credential from a cookie must count only on an endpoint that
names the origins it trusts. ``check`` refuses ``cookie:`` with ``origins: "*"``
(tests/test_auth_live.py, through the CLI); here a cookie-session application behind
an ``http:`` authenticator, which reads the forwarded ``Cookie`` header itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from conftest import serve_app
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from wsgate.testing import GatewayServer, run_gateway

APP = "https://app.example"
EVIL = "https://evil.example"


@dataclass
class SessionApp:
    """Admits the handshake whose forwarded cookies hold ``session=good``."""

    url: str = ""
    cookies: list[str | None] = field(default_factory=list)

    async def check(self, request: web.Request) -> web.Response:
        cookie = (await request.json())["headers"].get("cookie")
        self.cookies.append(cookie)
        if cookie is not None and "session=good" in cookie.split("; "):
            return web.json_response({"user": "ann"})
        return web.Response(status=401)


@contextlib.asynccontextmanager
async def session_gateway() -> AsyncIterator[tuple[GatewayServer, SessionApp]]:
    backend = SessionApp()
    app = web.Application()
    app.router.add_post("/check", backend.check)
    endpoints: dict[str, Any] = {
        "/open": {"handler": "echo", "auth": "sessions", "origins": "*"},
        "/listed": {"handler": "echo", "auth": "sessions", "origins": [APP]},
    }
    async with serve_app(app) as url:
        backend.url = url + "/check"
        auth = {"sessions": {"http": {"url": backend.url}}}
        async with run_gateway(endpoints, auth=auth, policy={"heartbeat": {"interval": 0}}) as gw:
            yield gw, backend


async def status(gw: GatewayServer, path: str, origin: str) -> int:
    headers = {"Origin": origin, "Cookie": "theme=dark; session=good"}
    try:
        async with connect(gw.ws_url + path, additional_headers=headers, open_timeout=5):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def test_a_session_cookie_counts_only_where_the_origins_are_named() -> None:
    async with session_gateway() as (gw, backend):
        # origins "*": a hostile page's handshake carries the cookie, and it vouches for nobody
        assert await status(gw, "/open", EVIL) == 401
        assert backend.cookies == [None]  # the backend never saw it
        # a listed origin: the cookie works; another site is refused before any backend call
        assert await status(gw, "/listed", APP) == 101
        assert await status(gw, "/listed", EVIL) == 403
        assert backend.cookies == [None, "theme=dark; session=good"]
