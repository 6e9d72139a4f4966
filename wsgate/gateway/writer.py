"""The only place where bytes reach a client's transport.

Writing each message with its own ``transport.write`` costs a syscall per message.
Instead each connection's ``SendQueue`` holds pre-framed bytes and one ``Flusher``
per event loop writes every dirty connection's queue with a single ``write`` on the
next loop pass. The first frame of a pass goes out at once, so that a peer waiting
for an answer gets it while the rest of the pass is processed.

Above ``TRANSPORT_HIGH_WATER`` bytes waiting in the transport, frames stay in the
``SendQueue``, where its byte bound and the slow-client policy apply.
"""

from __future__ import annotations

import asyncio
import zlib

from .frames import CLOSE, PING, PONG, RSV1, close_payload, encode_frame, split_frame
from .sendqueue import Push, SendQueue

__all__ = ["TRANSPORT_HIGH_WATER", "Deflate", "Flusher", "Writer"]

TRANSPORT_HIGH_WATER = 64 * 1024
_RETRY_DELAY = 0.01
_DEFLATE_TAIL = b"\x00\x00\xff\xff"


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

    __slots__ = ("_deflate", "_flusher", "_scheduled", "_transport", "frames", "queue")

    def __init__(self, transport: asyncio.Transport, flusher: Flusher, queue: SendQueue,
                 deflate: Deflate | None = None) -> None:
        self._transport = transport
        self._flusher = flusher
        self._deflate = deflate
        self._scheduled = False
        self.queue = queue
        self.frames = 0  # data frames accepted, for the access log

    def send(self, frame: bytes) -> Push:
        """Queue a data frame, or write it now if it is the first of this loop pass."""
        queue = self.queue
        if (
            not queue and not queue.sealed and not self._scheduled and self._deflate is None
            and self._flusher.first_of_pass() and self._writable()
        ):
            self.frames += 1
            self._transport.write(frame)
            return Push.QUEUED
        outcome = queue.push(frame)
        if outcome is Push.QUEUED:
            self.frames += 1
            self._schedule()
        return outcome

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
        if not self.queue:
            return
        if self._transport.is_closing():
            self.queue.clear()
        elif self._transport.get_write_buffer_size() > TRANSPORT_HIGH_WATER:
            self._scheduled = True
            self._flusher.later(self)
        else:
            self._write_queued()

    def _write_queued(self) -> None:
        frames = self.queue.take()
        if self._deflate is not None:
            frames = [self._deflate.frame(f) for f in frames]
        self._transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def close_frame(self, code: int, reason: str) -> None:
        """Everything queued (past the high-water mark too), then the close frame, then nothing."""
        self.queue.seal()
        if self._transport.is_closing():
            return
        if self.queue:
            self._write_queued()
        self._transport.write(encode_frame(close_payload(code, reason), CLOSE))

    def finish_writing(self) -> None:
        """Half-close (TCP FIN) after what was written: the peer sees the end, and may still send."""
        if not self._transport.is_closing() and self._transport.can_write_eof():
            self._transport.write_eof()

    @property
    def closed(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        """Close TCP once written data is out (the peer has nothing more to send)."""
        self.queue.clear()
        self._transport.close()

    def abort(self) -> None:
        """Drop TCP now, discarding anything unwritten (the peer is gone or unresponsive)."""
        self.queue.clear()
        self._transport.abort()
