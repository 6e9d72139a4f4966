"""The session owns a connection after the handshake: aiohttp keeps nothing of it, an idle
connection has no task, messages are handled one at a time and in order even when the
handler waits, a client that sends faster than its handler runs stops being read, and
frames that came in the same packet as the handshake are not lost.

Clients are raw sockets, so that what is on the wire is exactly what each test says.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import socket
import struct

from aiohttp import web

from wsgate import Connection, Handler, Message
from wsgate.gateway.core import BACKLOG_BYTES
from wsgate.gateway.session import Session
from wsgate.testing import GatewayServer, run_gateway, wait_until

POLICY = {"heartbeat": {"interval": 0}, "rate_limit": None}


def handshake(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def frame(text: str, opcode: int = 0x1) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
    else:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    return head + mask + masked


async def open_raw(gw: GatewayServer, path: str, first: bytes = b""
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(gw.url.rsplit(":", 1)[1].rstrip("/")))
    writer.write(handshake(path) + first)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_text(reader: asyncio.StreamReader) -> str:
    first, length = await asyncio.wait_for(reader.readexactly(2), 5)
    assert first == 0x81, first
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    return (await reader.readexactly(length)).decode()


def sessions(gw: GatewayServer) -> list[Session]:
    return list(gw.gateway.sessions)


class Echo(Handler):
    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(message)


class Slow(Handler):
    """Waits before each echo, so that messages pile up behind the one being handled."""

    async def on_message(self, conn: Connection, message: Message) -> None:
        await asyncio.sleep(0.01)
        await conn.send(message)


class Stalled(Handler):
    """Holds the first message until released, so that nothing more is handled meanwhile."""

    release: asyncio.Event

    async def startup(self) -> None:
        Stalled.release = asyncio.Event()

    async def on_message(self, conn: Connection, message: Message) -> None:
        await Stalled.release.wait()


async def test_an_idle_connection_keeps_no_aiohttp_request_protocol_or_task() -> None:
    async with run_gateway({"/echo": Echo}, policy=POLICY) as gw:
        reader, writer = await open_raw(gw, "/echo")
        writer.write(frame("hi"))
        assert await read_text(reader) == "hi"
        (session,) = sessions(gw)
        await wait_until(lambda: session.task is None)
        gc.collect()
        alive = [type(o).__name__ for o in gc.get_objects()
                 if isinstance(o, web.BaseRequest | web.RequestHandler | web.WebSocketResponse)]
        assert alive == [], alive
        # ... and it still serves.
        writer.write(frame("again"))
        assert await read_text(reader) == "again"
        writer.close()


async def test_messages_are_handled_in_order_while_the_handler_waits() -> None:
    async with run_gateway({"/slow": Slow}, policy=POLICY) as gw:
        reader, writer = await open_raw(gw, "/slow")
        writer.write(b"".join(frame(f"m{i}") for i in range(30)))
        assert [await read_text(reader) for _ in range(30)] == [f"m{i}" for i in range(30)]
        writer.close()


async def test_frames_sent_with_the_handshake_are_handled_after_on_connect() -> None:
    async with run_gateway({"/echo": Echo}, policy=POLICY) as gw:
        reader, writer = await open_raw(gw, "/echo", first=frame("early") + frame("bird"))
        assert [await read_text(reader), await read_text(reader)] == ["early", "bird"]
        writer.close()


async def test_a_client_that_outruns_its_handler_stops_being_read() -> None:
    """What a flooding client has sent waits in the kernel, not in the gateway: past
    BACKLOG_BYTES of unhandled messages the transport stops reading."""
    async with run_gateway({"/stalled": Stalled}, policy={**POLICY, "max_message_size": "64KiB"}) as gw:
        _, writer = await open_raw(gw, "/stalled")
        (session,) = sessions(gw)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        chunk = frame("x" * 16_000)
        sent = 0
        # Write until the kernel buffers on both sides are full: the gateway stopped reading.
        writer.transport.set_write_buffer_limits(high=0)
        for _ in range(2_000):
            writer.write(chunk)
            sent += len(chunk)
            await asyncio.sleep(0)
            if writer.transport.get_write_buffer_size() > 1_000_000:
                break
        await asyncio.sleep(0.2)
        assert writer.transport.get_write_buffer_size() > 0, "the gateway read everything"
        assert session.core._backlog_bytes <= BACKLOG_BYTES + 256 * 1024 + 64 * 1024, session.core._backlog_bytes
        Stalled.release.set()
        writer.close()
