"""Connection churn: many short connections, clean and abrupt, leave nothing behind."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable
from typing import ClassVar

from wsgate.builtins.echo import Echo

from wsgate import Connection
from wsgate.testing import GatewayServer, run_gateway

CYCLES = 1000
CONCURRENCY = 20


class CountingEcho(Echo):
    connects: ClassVar[int] = 0
    disconnects: ClassVar[int] = 0

    async def on_connect(self, conn: Connection) -> None:
        CountingEcho.connects += 1

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        CountingEcho.disconnects += 1


async def wait_until(predicate: Callable[[], object], within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def raw_handshake(gw: GatewayServer, path: str) -> tuple[socket.socket, bytearray]:
    loop = asyncio.get_running_loop()
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(sock, (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            chunk = await loop.sock_recv(sock, 4096)
            assert chunk, "closed during the handshake"
            buf += chunk
    except BaseException:
        sock.close()
        raise
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, bytearray(rest)


def masked_text(text: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes((0x81, 0x80 | len(text))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text))


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, no close frame, no FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def cycle(gw: GatewayServer, i: int, kinds: Counter[str]) -> None:
    loop = asyncio.get_running_loop()
    kind = ("clean", "reset", "reset-after-echo", "fin", "client-abort")[i % 5]
    kinds[kind] += 1
    if kind == "clean":
        async with gw.connect("/echo") as ws:
            await ws.send_str(f"m{i}")
            assert await ws.receive_str() == f"m{i}"
        assert ws.close_code == 1000
    elif kind == "client-abort":
        ws = await gw.connect("/echo").__aenter__()
        await ws.send_str(f"m{i}")
        assert await ws.receive_str() == f"m{i}"
        transport = ws._response.connection.transport  # type: ignore[union-attr]
        assert transport is not None
        transport.abort()
        await ws.close()
    else:
        sock, buf = await raw_handshake(gw, "/echo")
        if kind == "reset":
            reset(sock)
        elif kind == "reset-after-echo":
            await loop.sock_sendall(sock, masked_text(f"m{i}".encode()))
            while len(buf) < 2 + len(f"m{i}"):
                chunk = await loop.sock_recv(sock, 4096)
                assert chunk
                buf += chunk
            assert bytes(buf[2:]) == f"m{i}".encode()
            reset(sock)
        else:
            sock.close()  # FIN without a close frame


async def test_connect_disconnect_churn_leaves_no_leftovers() -> None:
    async with run_gateway({"/echo": {"handler": CountingEcho, "heartbeat": {"interval": 0}}}) as gw:
        # warm up once, so that lazily created objects are part of the baseline
        async with gw.connect("/echo") as ws:
            await ws.send_str("warm")
            assert await ws.receive_str(timeout=5) == "warm"
        await wait_until(lambda: not gw.gateway.sessions, 5)
        await asyncio.sleep(0.1)
        tasks_before = len(asyncio.all_tasks())
        fds_before = open_fds()
        stats = gw.stats.endpoints["/echo"]
        connections_before = stats.connections

        kinds: Counter[str] = Counter()
        indexes = iter(range(CYCLES))

        async def worker() -> None:
            for i in indexes:
                await cycle(gw, i, kinds)

        async with asyncio.timeout(25):
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        await wait_until(lambda: not gw.gateway.sessions and not stats.open, 5)
        assert sum(kinds.values()) == CYCLES

        # let closing transports and finished handler tasks be collected
        await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before and open_fds() <= fds_before + 2, 5)

        assert not gw.gateway.sessions
        assert stats.open == 0
        assert stats.connections - connections_before == CYCLES
        assert CountingEcho.connects == CountingEcho.disconnects == CYCLES + 1
        assert sum(stats.close_codes.values()) == CYCLES + 1
        # clean closes (and the warm-up) are 1000; every abrupt end is 1006
        assert stats.close_codes[1000] == kinds["clean"] + 1
        assert stats.close_codes[1006] == CYCLES - kinds["clean"]
        admission = gw.gateway.admission
        assert admission.total == 0
        assert +admission.per_endpoint == Counter()
        assert not admission.per_ip
        assert not gw.gateway.routes["/echo"].connections
        assert len(asyncio.all_tasks()) <= tasks_before
        assert open_fds() <= fds_before + 2
