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

__all__ = ["BINARY", "CLOSE", "PING", "PONG", "TEXT", "Flusher", "Outbox", "encode", "encode_frame", "split_frame"]

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA
_HEAD_16 = struct.Struct("!BBH").pack
_HEAD_64 = struct.Struct("!BBQ").pack
# Above this many bytes waiting in the kernel-side transport buffer, stop writing and
# keep frames in the outbox, where the byte bound and slow-client policy apply.
TRANSPORT_HIGH_WATER = 64 * 1024
_RETRY_DELAY = 0.01


def encode_frame(payload: bytes, opcode: int) -> bytes:
    """One unfragmented, unmasked server frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        return _SMALL_HEADS[opcode][n] + payload
    if n < 65536:
        return _HEAD_16(0x80 | opcode, 126, n) + payload
    return _HEAD_64(0x80 | opcode, 127, n) + payload


def encode(message: str | bytes) -> bytes:
    """A text frame for ``str``, a binary frame for ``bytes``."""
    if isinstance(message, str):
        payload = message.encode()
        if len(payload) < 126:
            return _SMALL_TEXT[len(payload)] + payload
        return encode_frame(payload, TEXT)
    return encode_frame(bytes(message), BINARY)


def split_frame(wire: bytes) -> tuple[bytes, int]:
    """Payload and opcode of a frame made by ``encode_frame``."""
    n = wire[1] & 0x7F
    start = 2 if n < 126 else (4 if n == 126 else 10)
    return wire[start:], wire[0] & 0x0F


# Headers of short frames, precomputed: most messages are short and this is per message.
_SMALL_HEADS = {op: [bytes((0x80 | op, n)) for n in range(126)] for op in (TEXT, BINARY, CLOSE, PING, PONG)}
_SMALL_TEXT = _SMALL_HEADS[TEXT]


class Flusher:
    """Writes every outbox that got frames during this loop pass, once, on the next.

    The very first frame of a pass is written at once instead (see ``Outbox.push``):
    one extra write per pass, which keeps a single pipelining client busy.
    """

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

    def first_of_pass(self) -> bool:
        """True for the first frame of a loop pass (and makes later ones batch)."""
        if self._scheduled:
            return False
        self._scheduled = True
        self._loop.call_soon(self._run)
        return True

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
        self._queue: list[bytes] = []  # a list: an empty deque costs ~600 bytes per connection
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

    def push(self, frame: bytes) -> bool:
        """Queue an encoded frame; False if the connection is closing or the queue overflowed."""
        if self._closed:
            return False
        size = len(frame)
        if self.pending + size > self.limit and self._queue:
            if not self.drop:
                self._closed = True
                self._on_overflow()
                return False
            queue, cut = self._queue, 0
            while cut < len(queue) and self.pending + size > self.limit:
                self.pending -= len(queue[cut])
                cut += 1
            del queue[:cut]
            self.dropped += cut
        self.frames += 1
        if (
            not self._queue and not self._scheduled and self._send_compressed is None
            and self._flusher.first_of_pass()
            and not self._transport.is_closing()
            and self._transport.get_write_buffer_size() <= TRANSPORT_HIGH_WATER
        ):
            # The first frame of a pass goes out at once, so that the peer can answer
            # while the rest of the pass is processed; the rest batch behind it.
            self._transport.write(frame)
            return True
        self._queue.append(frame)
        self.pending += size
        if not self._scheduled:
            self._scheduled = True
            self._flusher.mark(self)
        return True

    def push_control(self, frame: bytes) -> None:
        """Queue a ping or pong: never refused, never dropped."""
        if not self._closed:
            self._queue.append(frame)
            self.pending += len(frame)
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
            queue.insert(0, encode(notice))
            self.dropped = 0
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        queue.clear()
        self.pending = 0
        self._transport.write(data)

    async def _write_compressed(self) -> None:
        assert self._send_compressed is not None
        try:
            while self._queue:
                frame = self._queue.pop(0)
                self.pending -= len(frame)
                await self._send_compressed(*split_frame(frame))
        except (ConnectionError, RuntimeError):
            self._discard()
        finally:
            self._writer_task = None

    def seal(self) -> None:
        """Refuse new frames from now on; ``drain`` still writes the queued ones."""
        self._closed = True

    async def drain(self) -> None:
        """Write everything queued now, ignoring the high-water mark, and refuse more.

        Called before the close frame so that it follows all data (RFC 6455 5.5.1).
        """
        self._closed = True
        if self._send_compressed is not None:
            if self._writer_task is not None:
                await asyncio.shield(self._writer_task)
            if self._queue:
                await self._write_compressed()
        elif self._queue and not self._transport.is_closing():
            self._write_all()

    def close(self) -> None:
        """Refuse further frames and forget queued ones (the peer is gone)."""
        self._closed = True
        self._discard()

    def _discard(self) -> None:
        self._queue.clear()
        self.pending = 0
