"""One WebSocket connection after the handshake, free of I/O: the connection core.

What goes in: the bytes the client sent (``receive``), the end of its stream
(``receive_eof``), timer ticks (``on_timer``, from the gateway's ``TimerWheel``), frames
to send (``writer.send``) and close requests (``close``, ``abort``), with the time from
an injected clock. What comes out: the client's messages, one at a time and in order
(``next``), the end of the session (``END``), and calls on the connection's ``Wire``:
write these bytes, half-close, close TCP, abort, stop or resume reading. In the gateway
the wire is the asyncio transport itself; in tests it is a recorder, and a connection's
whole life runs in microseconds without a socket or an event loop.

The core owns the close handshake (``CloseHandshake``, which keeps "our close frame is
queued" and "it was sent" apart), the send queue and slow-client policy, permessage-deflate
(``Writer``), keepalive and idle timeouts (``KeepAlive``), the message limits (size, type,
rate), token expiry, and when TCP closes. It does not call the handler: the session, which
drives it, hands each message from ``next`` to the handler and waits while the handler
waits, so messages are handled in the order they came and control frames (pings, the
close frame) take effect in that order too.

Frames are parsed by aiohttp's compiled reader (``aiohttp_seam.frame_reader``): it calls
back with each message, which waits in ``_backlog`` until ``next`` takes it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

from aiohttp import WebSocketError, WSMsgType

from ..closecode import CloseCode
from ..config.models import Policy
from ..observe.stats import EndpointStats
from ..policy.keepalive import Action, KeepAlive
from ..policy.limits import TokenBucket
from .aiohttp_seam import Frame, FrameSink
from .closing import CloseHandshake
from .sendqueue import SendQueue
from .timers import Timed
from .writer import Deflate, Flusher, Wire, Writer

__all__ = ["BACKLOG_BYTES", "END", "Core", "Timers"]

# Past this many bytes of unhandled messages the wire stops reading until the handler
# catches up: a client cannot grow memory faster than its handler runs.
BACKLOG_BYTES = 64 * 1024


class _End:
    """The end of the session: the stream ended, or the close handshake is complete."""

    def __repr__(self) -> str:
        return "END"


END = _End()

_TEXT, _BINARY, _PING, _PONG, _CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG, WSMsgType.CLOSE


class Timers(Protocol):
    """Where the core asks to be ticked: the gateway's ``TimerWheel``."""

    def schedule(self, when: float, target: Timed) -> int: ...

    def cancel(self, slot: int, target: Timed) -> None: ...


class _Parser(Protocol):
    def feed_data(self, data: bytes) -> Any: ...


def _size(frame: Frame) -> int:
    data = frame.data  # type: ignore[union-attr]
    return len(data) if isinstance(data, str | bytes | bytearray) else 0


def _byte_length(data: str | bytes) -> int:
    return len(data.encode()) if isinstance(data, str) else len(data)


class Core:
    """One connection's WebSocket state after the handshake, and every decision about it."""

    __slots__ = ("_accepts", "_backlog", "_backlog_bytes", "_clock", "_close_by", "_done", "_expires", "_head",
                 "_parser", "_paused", "_policy", "_reading", "_sink", "_skip", "_slot", "_stats", "_timers", "_wire",
                 "bucket", "handshake", "keepalive", "messages_in", "size_limit", "writer")

    def __init__(self, policy: Policy, wire: Wire, reader: tuple[FrameSink, _Parser], *, flusher: Flusher,
                 timers: Timers, clock: Callable[[], float], stats: EndpointStats,
                 accepts: Literal["text", "binary", "any"] = "any", deflate: Deflate | None = None,
                 size_limit: int = 0, expires: float | None = None) -> None:
        """``reader``: the sink and parser from ``aiohttp_seam.frame_reader``; messages
        the sink kept before this (sent with the handshake) come first. ``size_limit``:
        what an inflated message is checked against (0: the parser's own limit holds).
        ``expires``: when the client's credentials run out, in ``clock`` time."""
        self._policy = policy
        self._wire = wire
        self._sink, self._parser = reader
        self._timers = timers
        self._clock = clock
        self._stats = stats
        self._accepts = accepts
        self.size_limit = size_limit
        self._expires = expires
        self.handshake = CloseHandshake()
        queue = SendQueue(policy.send_queue, drop=policy.slow_client == "drop")
        self.writer = Writer(wire, flusher, queue, stats, self._overflow, self.handshake.sent, deflate)
        now = clock()
        hb = policy.heartbeat
        self.keepalive = KeepAlive(hb.interval, hb.timeout, policy.idle_timeout, now)
        rate = policy.rate_limit
        self.bucket = TokenBucket(rate.messages / rate.per, float(rate.burst or rate.messages), now) if rate else None
        self.messages_in = 0
        self._backlog: deque[Frame | _End] | None = None  # made when a message comes: most connections idle
        self._backlog_bytes = 0
        self._paused = False
        self._reading = True  # False once a frame could not be parsed: the rest is discarded
        self._skip = 0  # bytes of the frame being received that are still to come
        self._head = b""  # the start of a frame header that a read cut in two
        self._done = False
        self._slot: int | None = None
        self._close_by: float | None = None  # when TCP is dropped if the client has not ended it

    def start(self) -> bool:
        """Take the messages the sink kept and arm the timers; True if any is waiting."""
        sink = self._sink
        for frame in sink.early:  # what came with the handshake's bytes
            self._frame(frame)
        sink.early = []
        sink.deliver = self._frame
        if self._slot is None:  # none yet, unless a close began before the start
            self.on_timer()
        return bool(self._backlog)

    # --- in: the client ---

    def receive(self, data: bytes) -> bool:
        """Bytes from the client; True if a message (or the end) waits for ``next``."""
        if self._reading:
            unmasked = self._first_unmasked(data)
            if unmasked < 0:
                self._parser.feed_data(data)  # its messages come back to _frame
            else:
                if unmasked:
                    self._parser.feed_data(data[:unmasked])
                self._reading = False
                # RFC 6455 section 5.1: the server must close; queued after the frames before it.
                self._frame(WebSocketError(CloseCode.PROTOCOL_ERROR, "client frames must be masked"))
        return bool(self._backlog)

    def _first_unmasked(self, data: bytes) -> int:
        """Where in ``data`` the first frame without a mask starts (0 if its header began
        in an earlier read), or -1. aiohttp's reader accepts such frames; only the frame
        headers are looked at here, the payloads are skipped."""
        head = self._head
        if head:
            data, pos, offset = head + data, 0, len(head)
        else:
            pos, offset = self._skip, 0
        n = len(data)
        while n - pos >= 2:
            second = data[pos + 1]
            if not second & 0x80:
                return max(0, pos - offset)
            length = second & 0x7F
            if length < 126:
                pos += 6 + length
            elif length == 126:
                if n - pos < 4:
                    break
                pos += 8 + int.from_bytes(data[pos + 2:pos + 4])
            else:
                if n - pos < 10:
                    break
                pos += 14 + int.from_bytes(data[pos + 2:pos + 10])
        if pos < n:
            self._head, self._skip = data[pos:], 0
        else:
            self._head, self._skip = b"", pos - n
        return -1

    def receive_eof(self) -> None:
        """The client's stream ended (or TCP is gone): ``next`` returns ``END`` after what came before."""
        self._frame(END)

    def _frame(self, frame: Frame | _End) -> None:
        if self._done:
            return
        backlog = self._backlog
        if not backlog:
            if not isinstance(frame, _End | BaseException) and frame.type is _PONG:
                # Nothing waits to be handled before it, so a heartbeat's answer is taken
                # here: an idle connection's pong makes no backlog and no pump.
                self.keepalive.last_seen = self._clock()
                return
            if backlog is None:
                backlog = self._backlog = deque()
        elif backlog[-1] is END:
            return  # nothing comes after the end
        backlog.append(frame)
        if frame is not END and not isinstance(frame, BaseException):
            self._backlog_bytes += _size(frame)  # type: ignore[arg-type]
            if self._backlog_bytes > BACKLOG_BYTES and not self._paused and not self._wire.is_closing():
                self._paused = True
                self._wire.pause_reading()

    def next(self) -> str | bytes | _End | None:
        """The next message for the handler, ``END``, or None while nothing waits.

        Control frames, messages over a limit and data after a close are dealt with here
        and never returned. After ``END`` the session calls ``finish``.
        """
        backlog = self._backlog
        handshake, stats = self.handshake, self._stats
        while backlog:
            frame = backlog.popleft()
            if frame is END:
                handshake.lost()
                return END
            if isinstance(frame, BaseException):
                self._unparseable(frame)
                continue
            assert not isinstance(frame, _End)
            self._backlog_bytes -= _size(frame)
            if self._paused and self._backlog_bytes <= BACKLOG_BYTES // 2:
                self._paused = False
                if not self._wire.is_closing():
                    self._wire.resume_reading()
            kind = frame.type
            if kind is _TEXT or kind is _BINARY:
                if not handshake.open:
                    continue  # closing: data is read and discarded until the client's close frame
                data: str | bytes = frame.data
                self.messages_in += 1
                stats.messages_in += 1
                stats.bytes_in += len(data)
                keepalive, bucket = self.keepalive, self.bucket
                if keepalive.enabled or bucket is not None:
                    now = self._clock()
                    keepalive.last_seen = keepalive.last_message = now
                    if bucket is not None and not bucket.take(now):
                        self._over_rate()
                        continue
                accepts = self._accepts
                if self.size_limit and _byte_length(data) > self.size_limit:
                    self.close(CloseCode.MESSAGE_TOO_BIG, self._too_big())
                elif accepts != "any" and (kind is _TEXT) != (accepts == "text"):
                    self.close(CloseCode.UNSUPPORTED_DATA, f"this endpoint accepts only {accepts} messages")
                else:
                    return data
            elif kind is _PING:
                now = self._clock()
                self.keepalive.last_seen = now
                if not handshake.open:
                    continue
                # Pings cost a pong each: they draw on the same budget as messages.
                if self.bucket is not None and not self.bucket.take(now):
                    self._over_rate()
                    continue
                self.writer.pong(frame.data)
            elif kind is _PONG:
                self.keepalive.last_seen = self._clock()
            elif kind is _CLOSE:
                answer = handshake.received(frame.data or None, frame.extra or "")
                if answer is not None:
                    self.writer.answer_close(answer.code, answer.reason, drop_queued=answer.drop_queued)
                self.writer.close()
                return END
        self._backlog = None  # an idle connection keeps no deque
        return None

    def _over_rate(self) -> None:
        self._stats.limit_rejections["rate"] += 1
        self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")

    def _too_big(self) -> str:
        return f"message too big: the limit is {self._policy.max_message_size} bytes"

    def _unparseable(self, exc: BaseException) -> None:
        """A frame could not be parsed: close frame, FIN, then wait for the client to hang up.

        Nothing more can be parsed; the wire still reads (and discards) until the client
        closes its side, so that the close frame is not lost to a reset, or until
        close_timeout.
        """
        if isinstance(exc, WebSocketError):
            code, reason = exc.code, str(exc)
            if code == CloseCode.MESSAGE_TOO_BIG:
                reason = self._too_big()  # aiohttp names its own limit, ours plus one
            elif code == CloseCode.INVALID_DATA:
                reason = "invalid UTF-8 in a text message"
        else:  # a corrupt deflate stream, for one
            code, reason = CloseCode.PROTOCOL_ERROR, f"bad frame: {type(exc).__name__}"
        self._reading = False
        backlog = self._backlog
        if backlog is not None:
            ended = bool(backlog) and backlog[-1] is END
            backlog.clear()  # what the parser made before it failed is not handled
            if ended:
                backlog.append(END)
        if self.handshake.failed(code, reason):
            self.writer.close_frame(code, reason)
        self.writer.finish_writing()
        self._close_after_timeout()

    # --- in: the gateway and the handler ---

    @property
    def closing(self) -> bool:
        return not self.handshake.open

    def close(self, code: int, reason: str) -> None:
        """Queue the close frame after queued data; TCP closes on the client's answer or at close_timeout.

        Should the client's own close frame come first, ours goes out at once (see ``CloseHandshake``).
        """
        if self.handshake.start(code, reason):
            self.writer.close_frame(code, reason)
            self._close_after_timeout()

    def abort(self, code: int, reason: str) -> None:
        """Drop TCP without a close handshake (the peer is gone); ``code`` is what the session ended with."""
        self.handshake.lost(code, reason)
        self.writer.abort()

    def _overflow(self) -> None:
        self._stats.slow_client_closes += 1
        self.close(CloseCode.POLICY_VIOLATION, "slow consumer")

    def finish(self) -> None:
        """The session has ended: drop TCP unless the close handshake closed it.

        The handshake done, TCP closes once the client has read what came before our
        close frame; one that stops reading is dropped at close_timeout, so that it
        cannot hold those bytes (up to send_queue) after the session has ended.
        """
        self._done = True
        self._backlog = None
        self.handshake.lost()
        writer = self.writer
        if not writer.closed:
            self._disarm()
            writer.abort()
        elif writer.draining:
            self._close_after_timeout()
        else:
            self._disarm()

    # --- in: time ---

    def on_timer(self) -> None:
        """A tick at (or after) the deadline last asked for: ping, drop, close or wait."""
        self._slot = None
        now = self._clock()
        if self._close_by is not None:
            if now >= self._close_by:
                self.writer.abort()  # the client neither answered nor hung up: connection_lost follows
            else:
                self._slot = self._timers.schedule(self._close_by, self)
            return
        expires = self._expires
        if expires is not None and now >= expires:
            # The wall clock, as exp is; 3000 is IANA's "Unauthorized": reconnect with a new token.
            self.close(CloseCode.UNAUTHORIZED, "token expired")
            return
        deadline = None
        keepalive = self.keepalive
        if keepalive.enabled:
            action, deadline = keepalive.due(now)
            if action is Action.PING:
                self.writer.ping()
            elif action is Action.DEAD:
                self._stats.heartbeat_timeouts += 1
                self.abort(CloseCode.ABNORMAL, "heartbeat timeout")
                return
            elif action is Action.IDLE:
                self.close(CloseCode.GOING_AWAY, "idle timeout")
                return
        if expires is not None and (deadline is None or expires < deadline):
            deadline = expires
        if deadline is not None:
            self._slot = self._timers.schedule(deadline, self)

    def _close_after_timeout(self) -> None:
        self._disarm()
        self._close_by = self._clock() + self._policy.close_timeout
        self._slot = self._timers.schedule(self._close_by, self)

    def _disarm(self) -> None:
        if self._slot is not None:
            self._timers.cancel(self._slot, self)
            self._slot = None
