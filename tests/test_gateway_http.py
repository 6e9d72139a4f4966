"""The HTTP side of the gateway, over real sockets: routing, handshake refusals, page, health."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSServerHandshakeError

from wsgate import Connection, Handler, Message
from wsgate.testing import GatewayServer, wait_until

Start = Callable[..., Awaitable[GatewayServer]]
WS_HEADERS = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


class Recorder(Handler):
    """Records every hook call on the class, so a refused handshake can show none ran."""

    instances: list[Recorder] = []
    calls: list[tuple[str, str]] = []

    def __init__(self, options: Any, context: Any) -> None:
        super().__init__(options, context)
        Recorder.instances.append(self)

    async def on_connect(self, conn: Connection) -> None:
        Recorder.calls.append(("connect", conn.id))
        await conn.send("hello")

    async def on_message(self, conn: Connection, message: Message) -> None:
        Recorder.calls.append(("message", conn.id))

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        Recorder.calls.append(("disconnect", conn.id))


@pytest.fixture(autouse=True)
def _reset_recorder() -> None:
    Recorder.instances.clear()
    Recorder.calls.clear()


async def raw_get(gw: GatewayServer, target: str) -> tuple[int, str]:
    """GET ``target`` byte for byte (no client-side path normalisation); status and body."""
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(5):
            data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode("utf-8", "replace")


async def handshake_status(gw: GatewayServer, path: str, origin: str | None, host: str | None = None) -> int:
    """Status of a WebSocket handshake (101 on success) sent with ``origin`` and ``host``."""
    headers = {}
    if host is not None:
        headers["Host"] = host
    try:
        async with asyncio.timeout(5), gw.connect(path, origin=origin, headers=headers) as ws:
            assert not ws.closed
            return 101
    except WSServerHandshakeError as exc:
        return exc.status


async def test_unknown_path_is_404(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"})
    async with gw.get("/nope") as resp:
        assert resp.status == 404
        assert "/nope" in await resp.text()
    assert await handshake_status(gw, "/nope", None) == 404


async def test_plain_get_on_websocket_path_is_400_with_explanation(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": Recorder})
    async with gw.get("/ws") as resp:
        assert resp.status == 400
        body = await resp.text()
    assert "/ws is a WebSocket endpoint" in body
    assert "Upgrade: websocket" in body
    assert Recorder.calls == []


async def test_refused_origin_is_403_before_handler_code(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": Recorder})
    assert len(Recorder.instances) == 1  # one instance per endpoint, made at startup
    assert await handshake_status(gw, "/ws", "https://evil.example") == 403
    async with gw.session.get(gw.url + "/ws", headers={**WS_HEADERS, "Origin": "https://evil.example"}) as resp:
        assert resp.status == 403
        assert "origin not allowed" in await resp.text()
    assert Recorder.calls == []
    assert len(Recorder.instances) == 1
    stats = gw.stats.endpoints["/ws"]
    assert stats.origin_rejections == 2
    assert stats.connections == 0
    assert not gw.gateway.sessions


async def test_allowed_origins_list_with_port_wildcard(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway(
        {"/ws": "echo"}, policy={"origins": ["http://localhost:*", "https://app.example.com"]},
    )
    assert await handshake_status(gw, "/ws", "http://localhost:5173") == 101
    assert await handshake_status(gw, "/ws", "http://localhost") == 101
    assert await handshake_status(gw, "/ws", "https://app.example.com") == 101
    assert await handshake_status(gw, "/ws", "https://app.example.com:443") == 101
    assert await handshake_status(gw, "/ws", "https://app.example.com:8443") == 403
    assert await handshake_status(gw, "/ws", "https://localhost:5173") == 403
    assert await handshake_status(gw, "/ws", "http://localhost.evil.net:5173") == 403
    assert await handshake_status(gw, "/ws", "https://app.example.com.evil.net") == 403
    assert await handshake_status(gw, "/ws", "null") == 403
    # a list replaces same-origin: the gateway's own origin is not in the list
    assert await handshake_status(gw, "/ws", gw.url) == 403


async def test_same_origin_compares_with_host_header(wsgate_gateway: Start) -> None:
    # origins default: same-origin; the site's name must be an allowed host of a loopback gateway
    allowed = ["chat.example.test", "127.0.0.1"]
    gw = await wsgate_gateway({"/ws": "echo"}, server={"host": "127.0.0.1", "port": 0, "allowed_hosts": allowed})
    port = gw.url.rsplit(":", 1)[1]
    assert await handshake_status(gw, "/ws", gw.url) == 101
    assert await handshake_status(gw, "/ws", f"http://127.0.0.1:{int(port) + 1}") == 403
    assert await handshake_status(gw, "/ws", f"https://127.0.0.1:{port}") == 403
    assert await handshake_status(gw, "/ws", f"http://localhost:{port}") == 403
    # what counts is the Host the client asked for, not the socket address
    assert await handshake_status(gw, "/ws", "http://chat.example.test:8443", host="chat.example.test:8443") == 101
    assert await handshake_status(gw, "/ws", "http://chat.example.test", host="chat.example.test") == 101
    assert await handshake_status(gw, "/ws", "http://chat.example.test:8443", host="chat.example.test") == 403


async def test_missing_origin(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway(
        {"/strict": {"handler": Recorder, "allow_missing_origin": False}, "/lax": "echo"},
    )
    assert await handshake_status(gw, "/strict", None) == 403
    assert Recorder.calls == []
    assert await handshake_status(gw, "/strict", gw.url) == 101
    assert await handshake_status(gw, "/lax", None) == 101


async def test_page_lists_every_endpoint_escaped(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo", "/chat": "chat", "/a&b": "echo", "/it's": "echo"})
    async with gw.get("/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    for path in ("/ws", "/chat"):
        assert f'value="{path}"' in page
    assert html.escape("/a&b") in page
    assert "/a&b" not in page
    assert "/it&#39;s" in page
    assert "/it's" not in page
    assert "/static/app.js" in page


async def test_static_files_and_traversal(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"})
    async with gw.get("/static/app.js") as resp:
        assert resp.status == 200
        assert "javascript" in resp.content_type
        assert "WebSocket" in await resp.text()
    for target in (
        "/static/../setup.cfg",
        "/static/%2e%2e/setup.cfg",
        "/static/%2e%2e%2fsetup.cfg",
        "/static/..%2f..%2fsetup.cfg",
        "/static/../../setup.cfg",
        "/static/nothing.js",
    ):
        status, body = await raw_get(gw, target)
        assert status == 404, (target, status, body[:200])
        assert "[metadata]" not in body


async def test_health_ready_metrics(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"})
    async with gw.get("/healthz") as resp:
        assert resp.status == 200
        assert (await resp.text()).strip() == "ok"
    async with gw.get("/readyz") as resp:
        assert resp.status == 200
        assert (await resp.text()).strip() == "ready"
    async with gw.connect("/ws") as ws:
        await ws.send_str("x")
        assert await ws.receive_str(timeout=5) == "x"
        async with gw.get("/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            metrics = await resp.text()
        assert 'wsgate_open_connections{endpoint="/ws"} 1.0' in metrics
        assert 'wsgate_messages_received_total{endpoint="/ws"} 1.0' in metrics
    await wait_until(lambda: gw.stats.endpoints["/ws"].open == 0)
    async with gw.get("/metrics") as resp:
        assert 'wsgate_open_connections{endpoint="/ws"} 0.0' in await resp.text()


async def test_handshake_then_close_runs_hooks(wsgate_gateway: Start) -> None:
    """The counterpart of the refusal tests: an allowed handshake does reach the handler."""
    gw = await wsgate_gateway({"/ws": Recorder})
    async with gw.connect("/ws", origin=gw.url) as ws:
        assert await ws.receive_str(timeout=5) == "hello"
    await wait_until(lambda: len(Recorder.calls) == 2)
    assert [kind for kind, _ in Recorder.calls] == ["connect", "disconnect"]


async def test_client_session_without_origin_header(wsgate_gateway: Start) -> None:
    """aiohttp sends no Origin unless asked: the request reaches the server without one."""
    seen: list[str | None] = []

    class Peek(Handler):
        async def on_connect(self, conn: Connection) -> None:
            seen.append(conn.headers.get("Origin"))

    gw = await wsgate_gateway({"/ws": Peek})
    async with aiohttp.ClientSession() as session, session.ws_connect(gw.ws_url + "/ws") as ws:
        await ws.close()
    await wait_until(lambda: seen)
    assert seen == [None]
