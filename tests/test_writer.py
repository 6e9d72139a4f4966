"""The writer on a real TCP socket: when its close frame counts as sent, and what an answer to
the peer's close frame writes.

The peer is a plain socket that reads only when told to; both ends get small kernel
buffers, so that what the writer queues stays in its queue instead of in the kernel.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from wsgate.gateway.frames import CLOSE, TEXT, encode
from wsgate.gateway.sendqueue import SendQueue
from wsgate.gateway.writer import TRANSPORT_HIGH_WATER, Flusher, Writer
from wsgate.observe.stats import EndpointStats

MESSAGE = "x" * 1024
COUNT = 200  # 200 KiB: well over what the transport and both kernel buffers hold
KERNEL_SLACK = 64 * 1024  # more than the two small kernel buffers hold (about 16 KiB here)


@dataclass
class Peer:
    """The client's end: reads server frames when asked."""

    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)

    async def _fill(self, n: int) -> bool:
        loop = asyncio.get_running_loop()
        while len(self.buf) < n:
            chunk = await loop.sock_recv(self.sock, 65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    async def frame(self) -> tuple[int, bytes] | None:
        """The next frame as (opcode, payload); None at the end of the stream."""
        if not await self._fill(2):
            return None
        opcode, n, start = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
        if n == 126:
            await self._fill(4)
            n, start = struct.unpack("!H", self.buf[2:4])[0], 4
        await self._fill(start + n)
        payload = bytes(self.buf[start:start + n])
        del self.buf[:start + n]
        return opcode, payload

    async def until_close(self) -> tuple[int, bytes]:
        """How many data frames come before the close frame, and its payload."""
        count = 0
        while (got := await self.frame()) is not None:
            opcode, payload = got
            if opcode == CLOSE:
                return count, payload
            assert (opcode, payload) == (TEXT, MESSAGE.encode())
            count += 1
        raise AssertionError(f"the stream ended after {count} data frames and no close frame")


@dataclass
class Setup:
    writer: Writer
    peer: Peer
    sent: list[None]  # one entry per on_close_sent call


@asynccontextmanager
async def connected() -> AsyncIterator[Setup]:
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await loop.sock_connect(client, listener.getsockname())
        accepted, _ = listener.accept()
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, accepted)
    sent: list[None] = []

    def overflow() -> None:
        raise AssertionError("the queue overflowed")

    writer = Writer(transport, Flusher(loop), SendQueue(1 << 20, drop=False), EndpointStats(), overflow,
                    lambda: sent.append(None))
    try:
        yield Setup(writer, Peer(client), sent)
    finally:
        if not transport.is_closing():  # Python 3.11 fails an abort after a close that has completed
            transport.abort()
        client.close()


def _queue(writer: Writer) -> None:
    frame = encode(MESSAGE)
    for _ in range(COUNT):
        assert writer.send(frame)


async def test_close_frame_counts_as_sent_when_it_reaches_the_transport_after_the_queued_data() -> None:
    async with connected() as s:
        _queue(s.writer)
        s.writer.close_frame(4000, "done")
        await asyncio.sleep(0.1)  # flush passes run; the peer reads nothing
        assert s.writer.queue.pending > 0
        assert s.sent == []  # queued, not sent
        count, payload = await s.peer.until_close()
        assert (count, payload) == (COUNT, struct.pack("!H", 4000) + b"done")
        assert len(s.sent) == 1


async def test_answer_while_the_close_frame_waits_drops_the_queue_and_follows_the_transport() -> None:
    async with connected() as s:
        _queue(s.writer)
        s.writer.close_frame(4000, "done")
        await asyncio.sleep(0.1)
        assert s.writer.queue.pending > 0
        assert s.sent == []
        s.writer.answer_close(4000, "done", drop_queued=True)
        assert len(s.sent) == 1
        assert s.writer.queue.pending == 0
        s.writer.close()
        count, payload = await s.peer.until_close()
        assert payload == struct.pack("!H", 4000) + b"done"
        # what the transport held, plus the small kernel buffers; the rest of the queue was dropped
        assert 0 < count * (len(MESSAGE) + 4) <= TRANSPORT_HIGH_WATER + KERNEL_SLACK, count
        assert await s.peer.frame() is None  # only one close frame, then the end of TCP
        assert len(s.sent) == 1


async def test_answer_to_the_first_close_writes_the_queued_data_first() -> None:
    async with connected() as s:
        _queue(s.writer)
        await asyncio.sleep(0.1)
        assert s.writer.queue.pending > 0
        s.writer.answer_close(1000, "")
        assert len(s.sent) == 1
        s.writer.close()
        assert await s.peer.until_close() == (COUNT, struct.pack("!H", 1000))
        assert await s.peer.frame() is None
