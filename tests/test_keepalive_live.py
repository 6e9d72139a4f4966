"""Heartbeat pings, dead-client detection and the idle timeout, with short real intervals."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import WSMsgType
from wsgate.builtins.echo import Echo

from wsgate import Connection
from wsgate.testing import GatewayServer, wait_until

Start = Callable[..., Awaitable[GatewayServer]]
INTERVAL, TIMEOUT = 0.2, 0.2
HEARTBEAT = {"heartbeat": {"interval": INTERVAL, "timeout": TIMEOUT}}
MARGIN = 1.5  # generous: this checks that a dead client is freed, not how fast


class Recording(Echo):
    closed: list[int] = []

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        Recording.closed.append(code)


@pytest.fixture(autouse=True)
def _reset() -> None:
    Recording.closed.clear()


async def metrics(gw: GatewayServer) -> str:
    async with gw.get("/metrics") as resp:
        return await resp.text()


async def assert_freed(gw: GatewayServer, path: str) -> None:
    await wait_until(lambda: not gw.gateway.sessions and gw.stats.endpoints[path].open == 0)
    assert f'wsgate_open_connections{{endpoint="{path}"}} 0.0' in await metrics(gw)


async def test_server_pings_at_the_interval(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": {"handler": Recording, **HEARTBEAT}})
    loop = asyncio.get_running_loop()
    async with gw.connect("/ws", autoping=False) as ws:
        opened = loop.time()
        pings = []
        async with asyncio.timeout(5):
            while len(pings) < 3:
                msg = await ws.receive()
                assert msg.type is WSMsgType.PING, msg
                pings.append(loop.time())
                await ws.pong(msg.data)
        first_gap = pings[0] - opened
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        # the first ping waits one interval, later ones follow one interval apart
        assert first_gap >= INTERVAL * 0.8
        assert all(gap >= INTERVAL * 0.8 for gap in gaps), gaps
        assert not ws.closed
        await ws.send_str("alive")
        assert await ws.receive_str(timeout=5) == "alive"
    assert gw.stats.endpoints["/ws"].heartbeat_timeouts == 0


async def test_client_that_never_answers_is_dropped_and_freed(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": {"handler": Recording, **HEARTBEAT}})
    loop = asyncio.get_running_loop()
    async with gw.connect("/ws", autoping=False) as ws:
        opened = loop.time()
        await wait_until(lambda: gw.gateway.sessions)
        # never read, never answer: the server must give up on its own
        await wait_until(lambda: not gw.gateway.sessions, within=INTERVAL + TIMEOUT + MARGIN)
        elapsed = loop.time() - opened
        assert elapsed >= INTERVAL + TIMEOUT - 0.05
        kinds = []
        async with asyncio.timeout(5):
            while (msg := await ws.receive()).type is WSMsgType.PING:
                kinds.append(msg.type)
        assert kinds  # it was pinged before being dropped
        assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR, WSMsgType.CLOSE)
    stats = gw.stats.endpoints["/ws"]
    assert stats.heartbeat_timeouts == 1
    assert stats.close_codes[1006] == 1
    assert Recording.closed == [1006]
    await assert_freed(gw, "/ws")
    assert 'wsgate_heartbeat_timeouts_total{endpoint="/ws"} 1.0' in await metrics(gw)


async def test_raw_socket_that_never_reads_is_dropped(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": {"handler": Recording, **HEARTBEAT}})
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    try:
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        await wait_until(lambda: gw.gateway.sessions)
        await wait_until(lambda: not gw.gateway.sessions, within=INTERVAL + TIMEOUT + MARGIN)
        async with asyncio.timeout(5):
            rest = await reader.read()
        assert rest.startswith(b"\x89\x00")  # an empty PING, then the server hung up
    finally:
        writer.close()
    assert gw.stats.endpoints["/ws"].heartbeat_timeouts == 1
    assert Recording.closed == [1006]
    await assert_freed(gw, "/ws")


async def test_client_that_answers_stays_open(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": {"handler": Recording, **HEARTBEAT}})
    async with gw.connect("/ws") as ws:  # aiohttp answers pings while receiving
        with pytest.raises(TimeoutError):  # nothing but pings for several rounds
            await asyncio.wait_for(ws.receive(), (INTERVAL + TIMEOUT) * 3)
        assert not ws.closed
        await ws.send_str("still here")
        assert await ws.receive_str(timeout=5) == "still here"
        assert len(gw.gateway.sessions) == 1
    assert gw.stats.endpoints["/ws"].heartbeat_timeouts == 0
    await wait_until(lambda: Recording.closed)
    assert Recording.closed == [1000]


async def test_idle_timeout_closes_silent_client(wsgate_gateway: Start) -> None:
    # pings are answered (autoping) but do not count as activity
    gw = await wsgate_gateway(
        {"/ws": {"handler": Recording, "idle_timeout": 0.4, "heartbeat": {"interval": 0.1, "timeout": 1}}},
    )
    loop = asyncio.get_running_loop()
    async with gw.connect("/ws") as silent:
        opened = loop.time()
        msg = await silent.receive(timeout=0.4 + MARGIN)
        assert msg.type is WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (1001, "idle timeout")
        assert loop.time() - opened >= 0.35
    await wait_until(lambda: Recording.closed)
    assert Recording.closed == [1001]
    await assert_freed(gw, "/ws")


async def test_idle_timeout_spares_active_client(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": {"handler": Recording, "idle_timeout": 0.3}})
    async with gw.connect("/ws") as chatty:
        for i in range(10):  # 1 s of traffic, well past the idle timeout
            await chatty.send_str(f"tick {i}")
            assert await chatty.receive_str(timeout=5) == f"tick {i}"
            await asyncio.sleep(0.1)
        assert not chatty.closed
        assert Recording.closed == []
        msg = await chatty.receive(timeout=0.3 + MARGIN)  # now it goes quiet
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)


async def test_zero_disables_heartbeat_and_idle(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": {"handler": Recording, "heartbeat": {"interval": 0, "timeout": 0.1},
                                       "idle_timeout": 0}})
    async with gw.connect("/ws", autoping=False) as ws:
        with pytest.raises(TimeoutError):  # no ping, no close
            await asyncio.wait_for(ws.receive(), 1.0)
        assert not ws.closed
        await ws.send_str("still open")
        assert await ws.receive_str(timeout=5) == "still open"
    assert gw.stats.endpoints["/ws"].heartbeat_timeouts == 0


async def test_heartbeat_timeout_zero_pings_but_never_drops(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": {"handler": Recording, "heartbeat": {"interval": 0.1, "timeout": 0}}})
    async with gw.connect("/ws", autoping=False) as ws:
        async with asyncio.timeout(5):
            for _ in range(6):  # pings keep coming though none is answered
                assert (await ws.receive()).type is WSMsgType.PING
        assert not ws.closed
        await ws.send_str("still open")
        async with asyncio.timeout(5):
            while (msg := await ws.receive()).type is WSMsgType.PING:
                pass
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "still open")
    assert gw.stats.endpoints["/ws"].heartbeat_timeouts == 0


async def test_client_ping_is_answered_with_pong(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"})
    async with gw.connect("/ws", autoping=False) as ws:
        await ws.ping(b"are you there")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"are you there")
