"""What a hostile client can no longer do: grow memory, lock others out of a room, mint
metric series, fill the log, or hang the publish API. Each seen from the client side."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType
from conftest import WsgateProcess

from wsgate.broker import MemoryBroker
from wsgate.testing import GatewayServer, wait_until

Start = Callable[..., Awaitable[GatewayServer]]
StartProcess = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]
PING, TEXT = 0x9, 0x1


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """A masked client frame with a zero mask key (the payload goes as is)."""
    n = len(payload)
    head = struct.pack("!BB", 0x80 | opcode, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
    return head + b"\0\0\0\0" + payload


def handshake(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# --- memory ---


def test_a_client_that_never_reads_cannot_grow_server_memory(
    wsgate_process: StartProcess, write_config: WriteConfig,
) -> None:
    """Pings and messages for 10 s from a socket that never reads: RSS grows less than
    send_queue + 1 MiB. Pongs wait in a bounded list; echoes fill the send queue, which
    overflows into a close, after which the gateway reads and discards."""
    send_queue = 1 << 20
    proc = wsgate_process(write_config({
        "policy": {"heartbeat": {"interval": 0}, "send_queue": send_queue, "close_timeout": "1m"},
        "endpoints": [{"path": "/ws", "handler": "echo"}],
    }))
    burst = (frame(PING, b"p" * 125) * 32 + frame(TEXT, b"m" * 1000)) * 4
    with handshake(proc.port, "/ws") as warm:
        # The same traffic from a client that reads, for a second first: the process's
        # one-off costs and allocator arenas are then in the baseline.
        warm.settimeout(0.001)
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            warm.sendall(burst)
            with contextlib.suppress(TimeoutError):
                while warm.recv(1 << 20):
                    pass
    hostile = handshake(proc.port, "/ws", rcvbuf=4096)
    before = peak = rss(proc.proc.pid)
    sent = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        hostile.sendall(burst)
        sent += len(burst)
        peak = max(peak, rss(proc.proc.pid))
    hostile.close()
    growth = peak - before
    print(f"RSS growth {growth >> 10} KiB while {sent >> 20} MiB were sent")
    assert sent > 50 << 20, f"only {sent} bytes went out: the test proves nothing"
    assert growth < send_queue + (1 << 20), f"RSS grew by {growth} bytes while {sent} bytes were sent"


async def test_pings_count_against_the_rate_limit(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    async with gw.connect("/chat", autoping=False) as ws:
        for _ in range(200):
            await ws.ping(b"x")
        async with asyncio.timeout(5):
            while (msg := await ws.receive()).type is not WSMsgType.CLOSE:
                pass
    assert (msg.data, msg.extra) == (1008, "rate limit exceeded")


# --- chat rooms ---


async def test_a_room_full_of_emoji_stays_joinable(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": {"handler": "chat", "rate_limit": None}})
    emoji = "\U0001f600" * 2000
    async with gw.connect("/chat?room=big&name=filler") as ws:
        for _ in range(3):
            await ws.receive_str(timeout=5)  # welcome, history, own join
        for _ in range(50):
            await ws.send_str(emoji)
        for _ in range(50):
            assert json.loads(await ws.receive_str(timeout=5))["type"] == "message"
    for _ in range(3):
        async with gw.connect("/chat?room=big&name=late") as late:
            assert json.loads(await late.receive_str(timeout=5))["type"] == "welcome"
            raw = await late.receive_str(timeout=5)
            history = json.loads(raw)
            assert history["type"] == "history"
            assert "\\u" not in raw, "JSON must be UTF-8, not \\u escapes"
            assert len(raw.encode()) <= 256 * 1024  # history_bytes
            assert 0 < len(history["messages"]) < 50
            assert history["messages"][-1]["id"] == 50  # the newest are the ones kept
            assert json.loads(await late.receive_str(timeout=5))["type"] == "join"
    stats = gw.stats.endpoints["/chat"]
    assert stats.handler_errors == 0
    assert stats.slow_client_closes == 0


async def test_joins_reuse_the_history_until_the_room_changes(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    broker = gw.gateway.hub.broker
    calls = 0
    original = broker.replay

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await original(*args, **kwargs)

    broker.replay = counting  # type: ignore[method-assign]
    async with gw.connect("/chat?room=r&name=host") as host:
        for _ in range(3):
            await host.receive_str(timeout=5)
        await host.send_str("one")
        await host.receive_str(timeout=5)
        histories = []
        for i in range(5):
            async with gw.connect(f"/chat?room=r&name=guest{i}") as guest:
                await guest.receive_str(timeout=5)
                histories.append(await guest.receive_str(timeout=5))
        assert calls == 2  # the host's join, then the first guest's; the other four reused it
        assert len(set(histories)) == 1
        await host.send_str("two")
        async with gw.connect("/chat?room=r&name=after") as guest:
            await guest.receive_str(timeout=5)
            after = json.loads(await guest.receive_str(timeout=5))
        assert [m["text"] for m in after["messages"]] == ["one", "two"]
        assert calls == 3


async def test_max_rooms_refuses_one_more_room(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": {"handler": "chat", "options": {"max_rooms": 2}}})
    async with contextlib.AsyncExitStack() as stack:
        for room in ("a", "b"):
            ws = await stack.enter_async_context(gw.connect(f"/chat?room={room}"))
            assert json.loads(await ws.receive_str(timeout=5))["type"] == "welcome"
        extra = await stack.enter_async_context(gw.connect("/chat?room=c"))
        assert json.loads(await extra.receive_str(timeout=5))["error"].startswith("too many rooms")
        msg = await extra.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1013, "too many rooms")
        again = await stack.enter_async_context(gw.connect("/chat?room=a"))  # an open room is fine
        assert json.loads(await again.receive_str(timeout=5))["type"] == "welcome"
    await wait_until(lambda: gw.stats.endpoints["/chat"].open == 0)
    async with gw.connect("/chat?room=c") as ws:  # the rooms emptied: a new one opens
        assert json.loads(await ws.receive_str(timeout=5))["type"] == "welcome"


async def test_an_idle_room_is_forgotten_after_keep_for() -> None:
    now = [1000.0]
    broker = MemoryBroker(clock=lambda: now[0])
    for _ in range(3):
        await broker.publish_numbered("room", b"#", b".", 50, keep_for=60)
    await broker.publish_numbered("forever", b"#", b".", 50)
    now[0] += 59
    assert await broker.history("room", 10) == [b"#1.", b"#2.", b"#3."]
    now[0] += 2
    assert await broker.history("room", 10) == []
    assert await broker.publish_numbered("room", b"#", b".", 50, keep_for=60) == 1
    assert await broker.history("forever", 10) == [b"#1."]


async def test_redis_history_keys_expire(redis_server: Any) -> None:
    from redis.asyncio import Redis

    from wsgate.broker.redis import RedisBroker

    broker = RedisBroker(redis_server.url)
    await broker.start()
    rds = Redis.from_url(redis_server.url)
    try:
        await broker.publish_numbered("ch", b"#", b".", 5, keep_for=30)
        for key in ("ch:seq", "ch:history"):
            assert 25_000 < await rds.pttl(key) <= 30_000
        await broker.publish_numbered("ch", b"#", b".", 5)
        assert await rds.pttl("ch:history") == -1  # keep_for 0: kept
    finally:
        await rds.aclose()
        await broker.close()


async def test_look_alike_names_and_rooms(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    names = []
    async with contextlib.AsyncExitStack() as stack:
        for requested in ("admin", "admin%E2%80%8B", "%EF%BD%81%EF%BD%84%EF%BD%8D%EF%BD%89%EF%BD%8E", "ad%1Bmin"):
            ws = await stack.enter_async_context(gw.connect(f"/chat?room=r&name={requested}"))
            names.append(json.loads(await ws.receive_str(timeout=5))["name"])
    assert names == ["admin", "admin-2", "admin-3", "admin-4"]
    async with gw.connect("/chat?room=lobby%0A") as ws:
        assert json.loads(await ws.receive_str(timeout=5))["type"] == "error"
        msg = await ws.receive(timeout=5)
        assert (msg.data, msg.extra) == (1008, "bad room name")


# --- metrics, logs, the publish API ---


async def test_application_close_codes_share_a_metric_series(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"})
    for code in (4001, 4002, 4999, 3001):  # 3000 and 3003 are wsgate's own: labelled as such
        async with gw.connect("/ws") as ws:
            await ws.close(code=code)
    await wait_until(lambda: sum(gw.stats.endpoints["/ws"].close_codes.values()) == 4)
    async with gw.get("/metrics") as resp:
        body = await resp.text()
    assert 'wsgate_closes_total{code="4xxx",endpoint="/ws"} 3.0' in body
    assert 'wsgate_closes_total{code="3xxx",endpoint="/ws"} 1.0' in body
    assert 'code="4001"' not in body


def test_malformed_requests_log_one_short_line_not_tracebacks(
    wsgate_process: StartProcess, write_config: WriteConfig,
) -> None:
    proc = wsgate_process(write_config({"endpoints": [{"path": "/ws", "handler": "echo"}]}))
    for i in range(50):
        with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header %d\r\n\r\n" % i)
            assert sock.recv(100).startswith(b"HTTP/1.0 400")
    with socket.create_connection(("127.0.0.1", proc.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b" 200 " in sock.recv(100)
    out = proc.output
    assert "Traceback" not in out
    assert "Bad Header" not in out  # the request's bytes are never logged
    lines = [line for line in out.splitlines() if "malformed HTTP request from 127.0.0.1: BadHttpMessage 400" in line]
    assert 1 <= len(lines) <= 3, out


async def test_publish_api_refuses_nan_and_bounds_a_slow_body(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"}, api={"token": "t"},
                              server={"host": "127.0.0.1", "port": 0, "handshake_timeout": 1})
    headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}
    async with gw.session.post(gw.url + "/api/publish", headers=headers,
                               data=b'{"endpoint": "/chat", "room": "r", "data": NaN}') as resp:
        assert resp.status == 400
        assert "NaN" in (await resp.json())["error"]
    host, port = gw.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"endpoint\":")
    async with asyncio.timeout(5):
        status = await reader.readline()
    writer.close()
    assert b" 408 " in status
    assert time.monotonic() - started < 3
