"""Slow readers: bounded send queues, the slow-client policies, close after queued data."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any, ClassVar

import aiohttp
from aiohttp import WSMsgType

from wsgate import Connection, Handler, Message
from wsgate.gateway.session import Session
from wsgate.testing import GatewayServer, run_gateway, wait_until

COUNT = 1000
PAD = "x" * 1019  # "NNNN:" + PAD = 1024 bytes of text
FRAME_WIRE = 4 + 1024  # a 16-bit length header plus the payload
SEND_QUEUE = 128 * 1024
NORMAL_CLIENTS = 10


def numbered(i: int) -> str:
    return f"{i:04d}:{PAD}"


class Blaster(Handler):
    """On the text "go": broadcasts COUNT numbered 1 KiB messages, yielding between them.

    After every broadcast it records the largest send queue (in bytes) of any connection.
    """

    peak_pending: ClassVar[int] = 0
    done: ClassVar[asyncio.Event | None] = None

    async def on_message(self, conn: Connection, message: Message) -> None:
        if message != "go":
            return
        for i in range(COUNT):
            self.context.broadcast(numbered(i))
            for other in self.context.connections:
                Blaster.peak_pending = max(Blaster.peak_pending, other._link.core.writer.queue.pending)
            await asyncio.sleep(0)
        assert Blaster.done is not None
        Blaster.done.set()


class HundredThenClose(Handler):
    """Queues 100 messages, then asks for a close with 4000 "done"."""

    async def on_connect(self, conn: Connection) -> None:
        for i in range(100):
            await conn.send(numbered(i))
        await conn.close(4000, "done")


class RawClient:
    """A WebSocket client on a bare non-blocking socket: it reads only when told to."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, gw: GatewayServer, path: str, *, rcvbuf: int | None = None) -> RawClient:
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        client = cls(sock)
        await client.loop.sock_connect(sock, (host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await client.loop.sock_sendall(sock, request.encode())
        while b"\r\n\r\n" not in client.buf:
            chunk = await client.loop.sock_recv(sock, 4096)
            assert chunk, "connection closed during the handshake"
            client.buf += chunk
        head, _, rest = bytes(client.buf).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        client.buf = bytearray(rest)
        return client

    async def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = await self.loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionError("EOF")
            self.buf += chunk

    async def read_frame(self) -> tuple[int, bytes]:
        """The next (unfragmented, unmasked) server frame: (opcode, payload)."""
        await self._fill(2)
        opcode, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        start = 2
        if n == 126:
            await self._fill(4)
            n, start = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            await self._fill(10)
            n, start = struct.unpack("!Q", self.buf[2:10])[0], 10
        await self._fill(start + n)
        payload = bytes(self.buf[start:start + n])
        del self.buf[:start + n]
        return opcode, payload

    async def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes((0x80 | opcode,)) + (bytes((0x80 | n,)) if n < 126 else struct.pack("!BH", 0x80 | 126, n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await self.loop.sock_sendall(self.sock, head + mask + masked)

    def close(self) -> None:
        self.sock.close()


async def read_numbered(ws: aiohttp.ClientWebSocketResponse[Any], count: int) -> list[int]:
    got = []
    async with asyncio.timeout(30):
        for _ in range(count):
            msg = await ws.receive()
            assert msg.type is WSMsgType.TEXT, msg
            assert msg.data.endswith(PAD)
            got.append(int(msg.data[:4]))
    return got


async def _blast(gw: GatewayServer, slow: RawClient) -> list[list[int]]:
    """Open the normal clients, trigger the broadcast, read everything on each of them."""
    Blaster.peak_pending = 0
    Blaster.done = asyncio.Event()
    await wait_until(lambda: _slow_session(gw, slow) is not None)
    # A slow link: loopback TCP would otherwise autotune the server's kernel send buffer
    # to megabytes and absorb the whole broadcast before the gateway's queue is involved.
    session = _slow_session(gw, slow)
    assert session is not None
    server_sock = session.transport.get_extra_info("socket")
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    normal = [await gw.session.ws_connect(gw.url + "/blast") for _ in range(NORMAL_CLIENTS)]
    try:
        await wait_until(lambda: len(gw.gateway.sessions) == NORMAL_CLIENTS + 1)
        await normal[0].send_str("go")
        results = await asyncio.gather(*(read_numbered(ws, COUNT) for ws in normal))
        async with asyncio.timeout(10):
            await Blaster.done.wait()
        return list(results)
    finally:
        for ws in normal:
            await ws.close()


def _slow_session(gw: GatewayServer, slow: RawClient) -> Session | None:
    local = slow.sock.getsockname()
    for session in gw.gateway.sessions:
        if session.transport.get_extra_info("peername") == local:
            return session
    return None


async def test_slow_reader_is_closed_and_others_get_everything() -> None:
    async with run_gateway({"/blast": {"handler": Blaster, "send_queue": SEND_QUEUE, "slow_client": "close",
                                       "close_timeout": 1, "heartbeat": {"interval": 0}}}) as gw:
        slow = await RawClient.connect(gw, "/blast", rcvbuf=4096)
        try:
            results = await _blast(gw, slow)
            for got in results:
                assert got == list(range(COUNT))
            stats = gw.stats.endpoints["/blast"]
            assert stats.slow_client_closes == 1
            # the queue really filled up, and never beyond its bound plus the frame that overflowed it
            assert SEND_QUEUE // 2 < Blaster.peak_pending <= SEND_QUEUE + FRAME_WIRE
            # the server gives up on the slow client even though it never reads its close frame
            await wait_until(lambda: _slow_session(gw, slow) is None and not gw.gateway.sessions, within=5)
            assert stats.open == 0
            assert stats.close_codes[1008] == 1
        finally:
            slow.close()


async def test_slow_reader_with_drop_policy_gets_a_dropped_notice_then_the_latest() -> None:
    async with run_gateway({"/blast": {"handler": Blaster, "send_queue": SEND_QUEUE, "slow_client": "drop",
                                       "heartbeat": {"interval": 0}}}) as gw:
        slow = await RawClient.connect(gw, "/blast", rcvbuf=4096)
        try:
            results = await _blast(gw, slow)
            for got in results:
                assert got == list(range(COUNT))
            stats = gw.stats.endpoints["/blast"]
            assert stats.slow_client_closes == 0
            assert Blaster.peak_pending <= SEND_QUEUE + FRAME_WIRE
            assert _slow_session(gw, slow) is not None  # still open
            data: list[int] = []
            notices: list[int] = []
            order: list[str] = []
            async with asyncio.timeout(20):
                while not data or data[-1] != COUNT - 1:
                    opcode, payload = await slow.read_frame()
                    assert opcode == 0x1
                    text = payload.decode()
                    if text.startswith("{"):
                        notice = json.loads(text)
                        assert notice["type"] == "dropped"
                        notices.append(notice["count"])
                        order.append("notice")
                    else:
                        assert text.endswith(PAD)
                        data.append(int(text[:4]))
                        order.append("data")
            assert notices
            assert all(n > 0 for n in notices)
            assert sum(notices) + len(data) == COUNT  # every message was either delivered or counted
            assert data == sorted(set(data))
            # after the last notice come the most recent messages, contiguous up to the last one
            last_notice = max(i for i, kind in enumerate(order) if kind == "notice")
            tail = order[last_notice + 1:]
            assert tail
            assert set(tail) == {"data"}
            assert data[-len(tail):] == list(range(COUNT - len(tail), COUNT))
            # and the connection still works
            await slow.send_frame(0x1, b"still here")
            await wait_until(lambda: stats.messages_in == 2)
        finally:
            slow.close()


async def test_close_frame_comes_after_queued_data() -> None:
    async with run_gateway({"/hundred": HundredThenClose}) as gw:
        async with gw.connect("/hundred") as ws:
            got = await read_numbered(ws, 100)
            msg = await ws.receive(timeout=5)
        assert got == list(range(100))
        assert msg.type is WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (4000, "done")
        # the same through a raw socket that reads only after everything was queued
        raw = await RawClient.connect(gw, "/hundred")
        try:
            await asyncio.sleep(0.2)
            frames = [await raw.read_frame() for _ in range(101)]
        finally:
            raw.close()
        assert [int(p[:4]) for op, p in frames[:100]] == list(range(100))
        opcode, payload = frames[100]
        assert opcode == 0x8
        assert (struct.unpack("!H", payload[:2])[0], payload[2:]) == (4000, b"done")
