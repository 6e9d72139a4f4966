"""WebSocket traffic through the gateway: echo, close handshakes, subprotocols, compression."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import WSMsgType
from websockets.asyncio.client import connect as ws_connect
from wsgate.builtins.echo import Echo

from wsgate import Connection, Handler
from wsgate.testing import GatewayServer, wait_until

Start = Callable[..., Awaitable[GatewayServer]]


class RecordingEcho(Echo):
    """Echo that records the code each connection closed with."""

    closed: list[int] = []

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        RecordingEcho.closed.append(code)


class ProtocolReporter(Handler):
    """Tells the client which subprotocol the handler sees, then echoes."""

    async def on_connect(self, conn: Connection) -> None:
        await conn.send_json({"subprotocol": conn.subprotocol})

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        await conn.send(message)


@pytest.fixture(autouse=True)
def _reset() -> None:
    RecordingEcho.closed.clear()


async def test_text_stays_text_and_binary_stays_binary(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"})
    async with gw.connect("/ws") as ws:
        await ws.send_str("héllo ✓")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "héllo ✓")
        await ws.send_bytes(b"\x00\xffbin")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.BINARY, b"\x00\xffbin")
        # bytes that happen to be valid UTF-8 stay binary, text that looks like bytes stays text
        await ws.send_bytes(b"plain")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.BINARY, b"plain")
        await ws.send_str("")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "")


async def test_many_messages_arrive_in_order(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"})
    async with gw.connect("/ws") as ws:
        for i in range(500):
            if i % 2:
                await ws.send_bytes(i.to_bytes(2, "big"))
            else:
                await ws.send_str(f"m{i}")
        got = []
        async with asyncio.timeout(10):
            for _ in range(500):
                msg = await ws.receive()
                got.append(msg.data)
    assert got == [i.to_bytes(2, "big") if i % 2 else f"m{i}" for i in range(500)]
    assert gw.stats.endpoints["/ws"].messages_in == 500
    assert gw.stats.endpoints["/ws"].messages_out == 500


async def test_large_messages(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"})
    blob = os.urandom(512 * 1024)
    text = "ü" * (256 * 1024)  # 512 KiB of UTF-8
    async with gw.connect("/ws") as ws:
        await ws.send_bytes(blob)
        assert await ws.receive_bytes(timeout=10) == blob
        await ws.send_str(text)
        assert await ws.receive_str(timeout=10) == text
        await ws.send_str("after")
        assert await ws.receive_str(timeout=5) == "after"


async def test_client_close_code_and_reason_are_echoed(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": RecordingEcho})
    async with gw.connect("/ws") as ws:
        await ws.send_str("x")
        assert await ws.receive_str(timeout=5) == "x"
        async with asyncio.timeout(5):
            await ws.close(code=4001, message=b"bye")
        assert ws.close_code == 4001
    async with asyncio.timeout(5), ws_connect(gw.ws_url + "/ws") as conn:
        await conn.send("y")
        assert await conn.recv() == "y"
        await conn.close(4001, "bye")
    assert conn.protocol.close_rcvd is not None
    assert (conn.protocol.close_rcvd.code, conn.protocol.close_rcvd.reason) == (4001, "bye")
    assert (conn.close_code, conn.close_reason) == (4001, "bye")
    await wait_until(lambda: len(RecordingEcho.closed) == 2)
    assert RecordingEcho.closed == [4001, 4001]
    assert gw.stats.endpoints["/ws"].close_codes[4001] == 2


async def test_normal_close(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": RecordingEcho})
    async with gw.connect("/ws") as ws:
        await ws.close()
        assert ws.close_code == 1000
    async with asyncio.timeout(5), ws_connect(gw.ws_url + "/ws") as conn:
        await conn.close(1001, "")
    assert conn.protocol.close_rcvd is not None
    assert (conn.protocol.close_rcvd.code, conn.protocol.close_rcvd.reason) == (1001, "")
    await wait_until(lambda: len(RecordingEcho.closed) == 2)
    assert RecordingEcho.closed == [1000, 1001]
    assert not gw.gateway.sessions


async def test_server_shutdown_closes_with_1001(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": RecordingEcho})
    async with gw.connect("/ws") as ws:
        await gw.gateway.shutdown(1001, 5)
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (1001, "server shutting down")
    assert RecordingEcho.closed == [1001]


async def test_subprotocol_negotiation(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/proto": {"handler": ProtocolReporter, "subprotocols": ["v2.chat", "v1.chat"]}})
    for offered in (["v1.chat"], ["v2.chat"], ["v3.chat", "v1.chat"], ["v1.chat", "v2.chat"]):
        async with gw.connect("/proto", protocols=offered) as ws:
            seen = json.loads(await ws.receive_str(timeout=5))["subprotocol"]
            assert seen in offered
            assert seen in ("v1.chat", "v2.chat")
            assert ws.protocol == seen
            await ws.send_str("still echoing")
            assert await ws.receive_str(timeout=5) == "still echoing"
    async with gw.connect("/proto", protocols=["v3.chat"]) as ws:
        assert json.loads(await ws.receive_str(timeout=5)) == {"subprotocol": None}
        assert ws.protocol is None
    async with gw.connect("/proto") as ws:
        assert json.loads(await ws.receive_str(timeout=5)) == {"subprotocol": None}
    async with asyncio.timeout(5), ws_connect(gw.ws_url + "/proto", subprotocols=["v2.chat"]) as conn:  # type: ignore[list-item]
        assert conn.subprotocol == "v2.chat"
        assert json.loads(await conn.recv()) == {"subprotocol": "v2.chat"}


async def test_compression_negotiated_when_enabled(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/z": {"handler": "echo", "compression": True}})
    text = "compressible " * 40_000
    blob = bytes(range(256)) * 2048
    async with gw.connect("/z", compress=15) as ws:  # offer permessage-deflate
        assert ws.compress == 15
        for i in range(50):
            await ws.send_str(f"{i}:{text[:i * 100]}")
        async with asyncio.timeout(10):
            for i in range(50):
                assert await ws.receive_str() == f"{i}:{text[:i * 100]}"
        await ws.send_str(text)
        assert await ws.receive_str(timeout=10) == text
        await ws.send_bytes(blob)
        assert await ws.receive_bytes(timeout=10) == blob
        await ws.close(code=4001, message=b"bye")
        assert ws.close_code == 4001
    async with asyncio.timeout(5), ws_connect(gw.ws_url + "/z") as conn:
        assert "permessage-deflate" in conn.response.headers.get("Sec-WebSocket-Extensions", "")
        await conn.send(text)
        assert await conn.recv() == text
        await conn.send(blob)
        assert await conn.recv() == blob


async def test_compression_not_negotiated_when_disabled(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": {"handler": "echo", "compression": False}})
    async with gw.connect("/ws", compress=15) as ws:
        assert ws.compress == 0
        await ws.send_str("plain" * 1000)
        assert await ws.receive_str(timeout=5) == "plain" * 1000
    async with asyncio.timeout(5), ws_connect(gw.ws_url + "/ws") as conn:
        assert "Sec-WebSocket-Extensions" not in conn.response.headers
        await conn.send("plain")
        assert await conn.recv() == "plain"
