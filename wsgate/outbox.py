"""Outgoing frames: encoded once, queued per connection, written once per loop pass.

Writing each message with its own ``transport.write`` costs a syscall per message.
Instead every connection queues pre-framed bytes and one ``Flusher`` per event loop
writes each dirty connection's queue with a single ``write`` on the next loop pass.
The queue is bounded in bytes; when a client stops reading, its queue fills and the
slow-client policy applies (close, or drop the oldest frames).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable

__all__ = ["BINARY", "PING", "PONG", "TEXT", "Flusher", "Frame", "Outbox"]

TEXT, BINARY, PING, PONG = 0x1, 0x2, 0x9, 0xA
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack
# Above this many bytes waiting in the kernel-side transport buffer, stop writing and
# keep frames in the outbox, where the byte bound and slow-client policy apply.
TRANSPORT_HIGH_WATER = 64 * 1024
_RETRY_DELAY = 0.01


class Frame:
    """One unfragmented server frame (RFC 6455 section 5.2, servers do not mask)."""

    __slots__ = ("opcode", "payload", "wire")

    def __init__(self, payload: bytes, opcode: int) -> None:
        self.payload = payload
        self.opcode = opcode
        n = len(payload)
        first = 0x80 | opcode
        if n < 126:
            self.wire = bytes((first, n)) + payload
        elif n < 65536:
            self.wire = _HEAD_16(first, 126, n) + payload
        else:
            self.wire = _HEAD_64(first, 127, n) + payload

    @classmethod
    def of(cls, message: str | bytes) -> Frame:
        if isinstance(message, str):
            return cls(message.encode(), TEXT)
        return cls(bytes(message), BINARY)


class Flusher:
    """Writes every outbox that got frames during this loop pass, once, on the next."""

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Outbox] = []
        self._scheduled = False

    def mark(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def later(self, outbox: Outbox) -> None:
        self._loop.call_later(_RETRY_DELAY, self.mark, outbox)

    def _run(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            outbox.flush()


SendFrame = Callable[[bytes, int], Awaitable[None]]


class Outbox:
    """The bounded send queue of one connection.

    ``limit`` bounds the queued bytes. When a frame does not fit: with ``drop`` the
    oldest frames are discarded (and the client is told how many, in a
    ``{"type": "dropped", "count": N}`` text frame sent before the next data); without,
    ``on_overflow`` is called once and the frame is refused. A frame is always accepted
    into an empty queue, so one message larger than the limit still goes out.

    ``send_compressed`` is set for connections that negotiated permessage-deflate: the
    compressor state is per connection, so frames go through it one at a time instead
    of as pre-encoded bytes.
    """

    __slots__ = (
        "_closed", "_flusher", "_on_overflow", "_queue", "_scheduled", "_send_compressed",
        "_transport", "_writer_task", "drop", "dropped", "frames", "limit", "pending",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        flusher: Flusher,
        *,
        limit: int,
        drop: bool,
        on_overflow: Callable[[], None],
        send_compressed: SendFrame | None = None,
    ) -> None:
        self._transport = transport
        self._flusher = flusher
        self._queue: list[Frame] = []  # a list: an empty deque costs ~600 bytes per connection
        self._scheduled = False
        self._closed = False
        self._on_overflow = on_overflow
        self._send_compressed = send_compressed
        self._writer_task: asyncio.Task[None] | None = None
        self.limit = limit
        self.drop = drop
        self.pending = 0
        self.dropped = 0
        self.frames = 0

    def push(self, frame: Frame) -> bool:
        """Queue ``frame``; False if the connection is closing or the queue overflowed."""
        if self._closed:
            return False
        size = len(frame.wire)
        if self.pending + size > self.limit and self._queue:
            if not self.drop:
                self._closed = True
                self._on_overflow()
                return False
            queue, cut = self._queue, 0
            while cut < len(queue) and self.pending + size > self.limit:
                self.pending -= len(queue[cut].wire)
                cut += 1
            del queue[:cut]
            self.dropped += cut
        self._queue.append(frame)
        self.pending += size
        self.frames += 1
        if not self._scheduled:
            self._scheduled = True
            self._flusher.mark(self)
        return True

    def push_control(self, frame: Frame) -> None:
        """Queue a ping or pong: never refused, never dropped."""
        if not self._closed:
            self._queue.append(frame)
            self.pending += len(frame.wire)
            if not self._scheduled:
                self._scheduled = True
                self._flusher.mark(self)

    def flush(self) -> None:
        self._scheduled = False
        if self._closed or not self._queue:
            return
        if self._send_compressed is not None:
            if self._writer_task is None:
                self._writer_task = asyncio.ensure_future(self._write_compressed())
            return
        if self._transport.is_closing():
            self._discard()
            return
        if self._transport.get_write_buffer_size() > TRANSPORT_HIGH_WATER:
            self._scheduled = True
            self._flusher.later(self)
            return
        self._write_all()

    def _write_all(self) -> None:
        queue = self._queue
        if self.dropped:
            notice = json.dumps({"type": "dropped", "count": self.dropped})
            queue.insert(0, Frame.of(notice))
            self.dropped = 0
        data = queue[0].wire if len(queue) == 1 else b"".join([f.wire for f in queue])
        queue.clear()
        self.pending = 0
        self._transport.write(data)

    async def _write_compressed(self) -> None:
        assert self._send_compressed is not None
        try:
            while self._queue and not self._closed:
                frame = self._queue.pop(0)
                self.pending -= len(frame.wire)
                await self._send_compressed(frame.payload, frame.opcode)
        except (ConnectionError, RuntimeError):
            self._discard()
        finally:
            self._writer_task = None

    async def drain(self) -> None:
        """Write everything queued now, ignoring the high-water mark; then refuse more.

        Called before the close frame so that it follows all data (RFC 6455 5.5.1).
        """
        if self._send_compressed is not None:
            if self._writer_task is not None:
                await asyncio.shield(self._writer_task)
            if self._queue:
                await self._write_compressed()
        elif self._queue and not self._transport.is_closing():
            self._write_all()
        self._closed = True

    def close(self) -> None:
        """Refuse further frames and forget queued ones (the peer is gone)."""
        self._closed = True
        self._discard()

    def _discard(self) -> None:
        self._queue.clear()
        self.pending = 0
