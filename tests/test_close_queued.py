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
import socket

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


def _session_of(gw: GatewayServer, client: ClientConnection) -> Session | None:
    local = client.local_address[:2]
    for session in gw.gateway.sessions:
        if session.ws.get_extra_info("peername")[:2] == local:
            return session
    return None


def _close_waits(session: Session) -> bool:
    """The gateway began a close whose frame still waits behind queued data."""
    return not session.handshake.open and session.writer.queue.pending > 0


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


async def _close_behind_queued_data(gw: GatewayServer, path: str, trigger: list[str]) -> str:
    """Fill the queue and make the gateway close, then close from the client while its
    close frame still waits: ``"CODE reason"`` of the close frame the client read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(gw.url.rsplit(":", 1)[1])))
    async with asyncio.timeout(CLOSE_TIMEOUT / 2):
        async with connect(gw.ws_url + path, sock=sock, compression=None, close_timeout=CLOSE_TIMEOUT) as client:
            await wait_until(lambda: _session_of(gw, client) is not None)
            session = _session_of(gw, client)
            assert session is not None
            session.ws.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
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
