"""The only place where bytes reach a client's transport.

Writing each message with its own ``transport.write`` costs a syscall per message.
Instead each connection's ``SendQueue`` holds pre-framed bytes and one ``Flusher``
per event loop writes every dirty connection's queue with a single ``write`` on the
next loop pass. The first frame of a pass goes out at once, so that a peer waiting
for an answer gets it while the rest of the pass is processed.

The transport is given at most ``TRANSPORT_HIGH_WATER`` bytes to hold; the rest stays
in the ``SendQueue``, where its byte bound and the slow-client policy apply. So what a
client that stops reading costs is bounded by ``send_queue`` plus that mark.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Protocol

from ..observe.stats import EndpointStats
from .frames import CLOSE, PING, PONG, RSV1, close_payload, encode_frame, split_frame
from .sendqueue import Push, SendQueue

__all__ = ["TRANSPORT_HIGH_WATER", "Deflate", "Flusher", "Wire", "Writer"]

TRANSPORT_HIGH_WATER = 64 * 1024
_QUEUED = Push.QUEUED  # a module constant: this comparison runs once per frame
_RETRY_DELAY = 0.01
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


class Wire(Protocol):
    """What a connection's bytes go to: its asyncio transport, or a recorder in tests."""

    def write(self, data: bytes) -> None: ...

    def write_eof(self) -> None: ...

    def can_write_eof(self) -> bool: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def is_closing(self) -> bool: ...

    def get_write_buffer_size(self) -> int: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Flusher:
    """Writes every writer that got frames during this loop pass, once, on the next."""

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[Writer] = []
        self._scheduled = False

    def mark(self, writer: Writer) -> None:
        self._dirty.append(writer)
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

    def later(self, writer: Writer) -> None:
        self._loop.call_later(_RETRY_DELAY, self.mark, writer)

    def _run(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for writer in dirty:
            writer.flush()


class Deflate:
    """permessage-deflate for one connection's outgoing messages (RFC 7692)."""

    __slots__ = ("_compressor", "_flush_mode")

    def __init__(self, wbits: int, *, takeover: bool) -> None:
        self._compressor = zlib.compressobj(zlib.Z_BEST_SPEED, zlib.DEFLATED, -wbits)
        # A full flush also forgets the window, which server_no_context_takeover asks for.
        self._flush_mode = zlib.Z_SYNC_FLUSH if takeover else zlib.Z_FULL_FLUSH

    def frame(self, frame: bytes) -> bytes:
        """``frame`` (a data frame from ``encode``) with its payload compressed."""
        payload, opcode = split_frame(frame)
        if opcode >= CLOSE:
            return frame  # control frames are never compressed
        compressor = self._compressor
        data = compressor.compress(payload) + compressor.flush(self._flush_mode)
        return encode_frame(data.removesuffix(_DEFLATE_TAIL), opcode, RSV1)


class Writer:
    """One connection's queue and transport: queued frames in, bytes out, in order."""

    __slots__ = ("_deflate", "_eof_after_last", "_flusher", "_last", "_on_close_sent", "_on_overflow", "_scheduled",
                 "_stats", "_transport", "frames", "queue")

    def __init__(self, transport: Wire, flusher: Flusher, queue: SendQueue, stats: EndpointStats,
                 on_overflow: Callable[[], None], on_close_sent: Callable[[], None],
                 deflate: Deflate | None = None) -> None:
        self._transport = transport
        self._flusher = flusher
        self._stats = stats
        self._on_overflow = on_overflow
        self._on_close_sent = on_close_sent  # the close frame has left the queue for the transport
        self._deflate = deflate
        self._scheduled = False
        self._last: bytes | None = None  # the close frame, waiting behind queued data
        self._eof_after_last = False
        self.queue = queue
        self.frames = 0  # data frames accepted, for the access log

    def send(self, frame: bytes) -> bool:
        """Queue a data frame, or write it now if it is the first of this loop pass.

        False if it was refused: the connection is closing, or the queue overflowed
        (``on_overflow`` has then been called).
        """
        queue = self.queue
        if (
            not queue.pending and not self._scheduled and not queue.sealed and self._deflate is None
            and self._flusher.first_of_pass() and self._writable()
        ):
            self._transport.write(frame)
        else:
            outcome = queue.push(frame)
            if outcome is not _QUEUED:
                if outcome is Push.OVERFLOW:
                    self._on_overflow()
                return False
            if not self._scheduled:
                self._scheduled = True
                self._flusher.mark(self)
        self.frames += 1
        stats = self._stats
        stats.messages_out += 1
        stats.bytes_out += len(frame)
        return True

    def ping(self, payload: bytes = b"") -> None:
        self.queue.push_ping(encode_frame(payload, PING))
        self._schedule()

    def pong(self, payload: bytes) -> None:
        self.queue.push_pong(encode_frame(payload, PONG))
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._flusher.mark(self)

    def _writable(self) -> bool:
        return not self._transport.is_closing() and self._transport.get_write_buffer_size() <= TRANSPORT_HIGH_WATER

    def flush(self) -> None:
        self._scheduled = False
        if not self.queue.pending and self._last is None:
            return
        if self._transport.is_closing():
            self.queue.clear()
            return
        room = TRANSPORT_HIGH_WATER - self._transport.get_write_buffer_size()
        wrote = room > 0 and self.queue.pending > 0
        if wrote:
            self._write(self.queue.take(room))
        if self.queue.pending:
            # The transport took some: it is draining, so try again on the next pass.
            # It took nothing: the client is not reading; look again a little later.
            self._scheduled = True
            if wrote:
                self._flusher.mark(self)
            else:
                self._flusher.later(self)
        elif self._last is not None:
            self._write([self._last])
            self._last = None
            self._on_close_sent()
            if self._eof_after_last:
                self.finish_writing()

    def _write(self, frames: list[bytes]) -> None:
        if self._deflate is not None:
            frames = [self._deflate.frame(f) for f in frames]
        self._transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def close_frame(self, code: int, reason: str) -> None:
        """The close frame, after everything queued; nothing after it.

        It waits behind the queued data, which keeps going out at the transport's pace,
        so a client that does not read still costs no more than the queue's bound.
        ``on_close_sent`` is called when it reaches the transport.
        """
        self.queue.seal()
        if self._transport.is_closing():
            return
        self._last = encode_frame(close_payload(code, reason), CLOSE)
        self.flush()

    def answer_close(self, code: int, reason: str, *, drop_queued: bool = False) -> None:
        """Write the answer to the client's close frame at once, after which the connection ends.

        The queued data goes first, unless ``drop_queued``: then the close frame follows
        only what the transport already holds, and replaces one still waiting.
        """
        frames = [] if drop_queued else self.queue.take()
        self.queue.clear()
        self._last = None
        self._eof_after_last = False
        if self._transport.is_closing():
            return
        self._write([*frames, encode_frame(close_payload(code, reason), CLOSE)])
        self._on_close_sent()

    def finish_writing(self) -> None:
        """Half-close (TCP FIN) after the close frame: the peer sees the end, and may still send."""
        if self._last is not None:
            self._eof_after_last = True
        elif not self._transport.is_closing() and self._transport.can_write_eof():
            self._transport.write_eof()

    @property
    def closed(self) -> bool:
        return self._transport.is_closing()

    @property
    def draining(self) -> bool:
        """Closed, but the transport still holds bytes the peer has not read."""
        return self._transport.is_closing() and self._transport.get_write_buffer_size() > 0

    def close(self) -> None:
        """Close TCP once written data is out (the peer has nothing more to send)."""
        self.queue.clear()
        self._transport.close()

    def abort(self) -> None:
        """Drop TCP now, discarding anything unwritten (the peer is gone or unresponsive)."""
        self.queue.clear()
        # A close that has drained is complete, and asyncio (3.11) fails an abort after it.
        if not self._transport.is_closing() or self._transport.get_write_buffer_size():
            self._transport.abort()
