"""The gateway's close frame reaches a client that closes while that frame still waits.

When the gateway begins a close, its close frame goes out after the data queued before
it, at the pace the client reads. If the client's own close frame arrives first, the
gateway has queued a close frame but not sent one, and must still send it (RFC 6455
section 5.5.1): it goes out at once, with the code the gateway began with, after what
the transport already holds. A gateway that closed TCP there instead would leave the
client with no close frame: 1006.

The client is the `websockets` library on a socket with a small receive buffer, and
the gateway's socket gets a small send buffer: loopback TCP would otherwise autotune
both to megabytes and absorb everything queued before the gateway's queue is involved.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from wsgate import Connection, Handler, Message
from wsgate.gateway.session import Session
from wsgate.testing import GatewayServer, run_gateway, wait_until

MESSAGE = "x" * 1024
SEND_QUEUE = 256 * 1024  # over the 64 KiB the transport takes, so the close frame waits in the queue
CLOSE_TIMEOUT = 10  # seconds: far longer than the test, so that nothing here is a timeout
RUNS = 5


class QueueThenClose(Handler):
    """On "go": queues 200 KiB, then closes with 4000 "done"."""

    async def on_message(self, conn: Connection, message: Message) -> None:
        for _ in range(200):
            await conn.send(MESSAGE)
        await conn.close(4000, "done")


class Overflow(Handler):
    """On "go": queues more than the send queue holds, so the slow-client policy closes."""

    async def on_message(self, conn: Connection, message: Message) -> None:
        for _ in range(2 * SEND_QUEUE // len(MESSAGE)):
            if conn.closed:
                return
            await conn.send(MESSAGE)


class QueueOnGo(Handler):
    """On "go": queues 200 KiB; the endpoint's rate limit closes on the messages after it."""

    async def on_message(self, conn: Connection, message: Message) -> None:
        if message == "go":
            for _ in range(200):
                await conn.send(MESSAGE)


def _session_of(gw: GatewayServer, client: ClientConnection | socket.socket) -> Session | None:
    local = client.getsockname()[:2] if isinstance(client, socket.socket) else client.local_address[:2]
    for session in gw.gateway.sessions:
        if session.transport.get_extra_info("peername")[:2] == local:
            return session
    return None


def _close_waits(session: Session) -> bool:
    """The gateway began a close whose frame still waits behind queued data."""
    return not session.core.handshake.open and session.core.writer.queue.pending > 0


async def _read_slowly(client: ClientConnection) -> tuple[int, ConnectionClosed]:
    """Read as a slow client does, until the connection ends: how many messages arrived, and how it ended."""
    count = 0
    try:
        while True:
            await client.recv()
            count += 1
            await asyncio.sleep(0.002)
    except ConnectionClosed as closed:
        return count, closed


async def _small_socket(gw: GatewayServer) -> socket.socket:
    """A client socket with a small receive buffer, connected to the gateway."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(gw.url.rsplit(":", 1)[1])))
    return sock


async def _small_send_buffer(gw: GatewayServer, client: ClientConnection | socket.socket) -> Session:
    """The client's session, its socket given a small send buffer."""
    await wait_until(lambda: _session_of(gw, client) is not None)
    session = _session_of(gw, client)
    assert session is not None
    session.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    return session


async def _close_behind_queued_data(gw: GatewayServer, path: str, trigger: list[str],
                                    patience: float = CLOSE_TIMEOUT) -> str:
    """Fill the queue and make the gateway close, then close from the client while its
    close frame still waits: ``"CODE reason"`` of the close frame the client read.

    ``patience``: the client's own close_timeout; the whole exchange gets half of it.
    """
    sock = await _small_socket(gw)
    async with asyncio.timeout(patience / 2):
        async with connect(gw.ws_url + path, sock=sock, compression=None, close_timeout=patience) as client:
            session = await _small_send_buffer(gw, client)
            for message in trigger:
                await client.send(message)
            await wait_until(lambda: _close_waits(session))
            reader = asyncio.create_task(_read_slowly(client))
            await client.close(1000, "bye")
            received, closed = await reader
        assert received > 0, "the client read nothing before the close frame"
        if closed.rcvd is None:
            return f"no close frame ({type(closed).__name__}: {closed})"
        return f"{closed.rcvd.code} {closed.rcvd.reason}"


@pytest.mark.parametrize(
    ("handler", "trigger", "policy", "expected"),
    [
        pytest.param(QueueThenClose, ["go"], {}, "4000 done", id="handler-close"),
        pytest.param(Overflow, ["go"], {"slow_client": "close"}, "1008 slow consumer", id="slow-consumer"),
        pytest.param(QueueOnGo, ["go", *["over"] * 5], {"rate_limit": {"messages": 2, "per": "1s"}},
                     "1008 rate limit exceeded", id="rate-limit"),
    ],
)
async def test_client_closing_first_still_reads_the_gateway_close_frame(
    handler: type[Handler], trigger: list[str], policy: dict[str, object], expected: str,
) -> None:
    """A handler's close, the slow-client policy and the rate limit: each time the client reads
    the close frame the gateway began with, and TCP ends (``close`` returns), not 1006."""
    endpoint = {"handler": handler, "send_queue": SEND_QUEUE, "close_timeout": CLOSE_TIMEOUT,
                "heartbeat": {"interval": 0}, **policy}
    async with run_gateway({"/q": endpoint}) as gw:
        seen = [await _close_behind_queued_data(gw, "/q", trigger) for _ in range(RUNS)]
        assert seen == [expected] * RUNS
        stats = gw.stats.endpoints["/q"]
        await wait_until(lambda: stats.open == 0)
        assert stats.close_codes[int(expected[:4])] == RUNS  # the code the close began with


# --- after the handshake, TCP waits for the client to read what came before the close frame ---

SHORT = 0.5  # close_timeout, seconds


def _frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (payload under 126 bytes)."""
    mask = os.urandom(4)
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _raw_open(gw: GatewayServer, path: str) -> socket.socket:
    """A WebSocket on a bare socket that reads nothing unless told to."""
    loop = asyncio.get_running_loop()
    sock = await _small_socket(gw)
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                                   "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:  # the gateway sends nothing before "go"
        chunk = await loop.sock_recv(sock, 4096)
        assert chunk, "connection closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


async def test_a_client_that_stops_reading_after_its_close_frame_is_dropped_at_close_timeout() -> None:
    """The client's close frame completes the handshake, and the gateway's answer waits behind
    what the transport holds. A client that never reads it is dropped at close_timeout, so it
    holds nothing once its session has ended; one that reads slowly to the end gets the close
    frame, and the drop that was due at close_timeout finds nothing left to do."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        endpoint = {"handler": QueueThenClose, "close_timeout": SHORT, "heartbeat": {"interval": 0}}
        async with run_gateway({"/q": endpoint}) as gw:
            sock = await _raw_open(gw, "/q")
            try:
                session = await _small_send_buffer(gw, sock)
                server_socket = session.transport.get_extra_info("socket")
                await loop.sock_sendall(sock, _frame(0x1, b"go"))
                await wait_until(lambda: _close_waits(session))
                await loop.sock_sendall(sock, _frame(0x8, struct.pack("!H", 1000)))
                start = time.monotonic()
                await wait_until(lambda: server_socket.fileno() == -1, within=10 * SHORT)
                assert 0.8 * SHORT <= time.monotonic() - start <= 3 * SHORT
            finally:
                sock.close()
            assert await _close_behind_queued_data(gw, "/q", ["go"], patience=20 * SHORT) == "4000 done"
            await asyncio.sleep(2 * SHORT)  # past close_timeout: the drop is due, and must not fail
            stats = gw.stats.endpoints["/q"]
            assert (stats.open, stats.close_codes[4000]) == (0, 2)
    finally:
        loop.set_exception_handler(None)
    assert errors == []
