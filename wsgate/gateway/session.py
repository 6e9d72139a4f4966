"""One accepted WebSocket after the handshake: the transport's protocol, the message
pump, keepalive, and the close handshake's I/O.

aiohttp parses and answers the opening handshake; then the session is the transport's
``asyncio.Protocol`` (``aiohttp_seam.take_over``) and aiohttp keeps nothing of the
connection. Bytes in go to aiohttp's compiled frame reader, whose messages come back to
``_frame``; they queue in ``_backlog`` and a pump task, which exists only while there
is something to handle, runs the handler on them one at a time, in order. An idle
connection therefore has no task, no request and no aiohttp objects.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import WebSocketError, WSMsgType, web

from ..auth.identity import Identity
from ..closecode import CloseCode
from ..connection import Connection
from ..errors import ConnectionClosed
from ..policy.keepalive import Action, KeepAlive
from ..policy.limits import TokenBucket
from .aiohttp_seam import Frame, OwnedWebSocket, inflated_limit, take_over
from .closing import CloseHandshake
from .endpoint import LiveEndpoint
from .sendqueue import SendQueue
from .timers import TimerWheel
from .writer import Deflate, Flusher, Writer

__all__ = ["Services", "Session"]

log = logging.getLogger("wsgate.gateway")
access_log = logging.getLogger("wsgate.access")

_LINGER_POLL = 0.02
# Past this many bytes of unhandled messages the transport stops reading until the
# handler catches up: a client cannot grow memory faster than its handler runs.
_BACKLOG_BYTES = 64 * 1024
_EAGER = sys.version_info >= (3, 12)  # the pump's first step runs in the callback that made it


@dataclass(frozen=True, slots=True)
class Services:
    """What every session of one gateway shares."""

    flusher: Flusher
    timers: TimerWheel


def _byte_length(data: str | bytes) -> int:
    return len(data.encode()) if isinstance(data, str) else len(data)


class _End:
    """The end of the stream, queued behind the messages that came before it."""


_EOF = _End()


def _size(frame: Frame) -> int:
    data = frame.data  # type: ignore[union-attr]
    return len(data) if isinstance(data, str | bytes | bytearray) else 0


def _deflate(ws: web.WebSocketResponse) -> Deflate | None:
    """Our compressor for the permessage-deflate parameters aiohttp negotiated, if any."""
    if not ws.compress:
        return None
    offer = ws.headers.get("Sec-WebSocket-Extensions", "")
    return Deflate(int(ws.compress), takeover="server_no_context_takeover" not in offer)


class Session(asyncio.Protocol):
    """One accepted WebSocket: its Connection, writer, timers and close handshake."""

    __slots__ = ("_backlog", "_backlog_bytes", "_close_timer", "_ended", "_expiry", "_on_end", "_paused", "_slot",
                 "_url", "auth", "bucket", "conn", "handshake", "keepalive", "live", "loop", "messages_in", "parser",
                 "services", "size_limit", "started", "task", "transport", "writer")

    def __init__(self, services: Services, live: LiveEndpoint, ws: OwnedWebSocket,
                 request: web.Request, remote: str, conn_id: str, identity: Identity | None = None,
                 auth: str | None = None) -> None:
        policy = live.endpoint.policy
        self.loop = asyncio.get_running_loop()
        self.services = services
        self.live = live
        self.task: asyncio.Task[None] | None = None  # the pump, while there is something to handle
        self.started = time.monotonic()
        self.handshake = CloseHandshake()
        self._slot: int | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._url = request.rel_url  # for the query, parsed only if a handler asks
        self.parser = ws.parser
        self.size_limit = inflated_limit(ws, policy.max_message_size)
        self._backlog: deque[Frame | _End] | None = None  # made when a message comes: most connections idle
        self._backlog_bytes = 0
        self._paused = False
        self._ended = False
        self._on_end: Callable[[Session], None] | None = None
        transport = request.transport
        assert transport is not None
        self.transport: asyncio.Transport = transport
        queue = SendQueue(policy.send_queue, drop=policy.slow_client == "drop")
        self.writer = Writer(self.transport, services.flusher, queue, live.stats, self._overflow,
                             self.handshake.sent, _deflate(ws))
        self.conn = Connection._open(self, self.writer.send, id=conn_id, path=live.path, remote=remote,
                                     headers=request.headers, subprotocol=ws.ws_protocol, identity=identity)
        self.auth = auth  # the authenticator that admitted the client, by name
        self._expiry: asyncio.TimerHandle | None = None
        if identity is not None and identity.expires_at is not None:
            # The wall clock, as exp is; 3000 is IANA's "Unauthorized": reconnect with a new token.
            self._expiry = self.loop.call_later(max(0.0, identity.expires_at - time.time()),
                                                self.close, CloseCode.UNAUTHORIZED, "token expired")
        now = self.loop.time()
        hb = policy.heartbeat
        self.keepalive = KeepAlive(hb.interval, hb.timeout, policy.idle_timeout, now)
        rate = policy.rate_limit
        self.bucket = TokenBucket(rate.messages / rate.per, float(rate.burst or rate.messages), now) if rate else None
        self.messages_in = 0

    def start(self, request: web.Request, ws: OwnedWebSocket, on_end: Callable[[Session], None]) -> None:
        """Own the transport from now on; ``on_connect``, then each message, run in the pump.

        ``on_end`` is called once the session has ended and ``on_disconnect`` has run.
        """
        self._on_end = on_end
        take_over(request, self)
        self.live.attach(self.conn)
        if self.keepalive.enabled:
            self.on_timer()
        self._pump_soon(first=True)
        sink = ws.sink
        assert sink is not None
        for frame in sink.early:  # what came with the handshake's bytes
            self._frame(frame)
        sink.early = []
        sink.deliver = self._frame

    # --- what Connection asks of us ---

    @property
    def closing(self) -> bool:
        return not self.handshake.open

    def handshake_query(self) -> Mapping[str, str]:
        return self._url.query

    def _overflow(self) -> None:
        self.live.stats.slow_client_closes += 1
        self.close(CloseCode.POLICY_VIOLATION, "slow consumer")

    def close(self, code: int, reason: str) -> None:
        """Queue the close frame after queued data; TCP closes on the client's answer or at close_timeout.

        Should the client's own close frame come first, ours goes out at once (see ``CloseHandshake``).
        """
        if self.handshake.start(code, reason):
            self.writer.close_frame(code, reason)
            self._close_timer = self.loop.call_later(self.live.endpoint.policy.close_timeout, self.writer.abort)

    def abort(self, code: int, reason: str) -> None:
        """Drop TCP without a close handshake (the peer is gone)."""
        self.handshake.lost(code, reason)
        self.writer.abort()

    # --- timers ---

    def on_timer(self) -> None:
        self._slot = None
        action, deadline = self.keepalive.due(self.loop.time())
        if action is Action.PING:
            self.writer.ping()
        elif action is Action.DEAD:
            self.live.stats.heartbeat_timeouts += 1
            self.abort(CloseCode.ABNORMAL, "heartbeat timeout")
        elif action is Action.IDLE:
            self.close(CloseCode.GOING_AWAY, "idle timeout")
        if deadline is not None and action not in (Action.DEAD, Action.IDLE):
            self._slot = self.services.timers.schedule(deadline, self)

    # --- the transport's protocol ---

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)  # its messages come back to _frame

    def eof_received(self) -> bool | None:
        self._frame(_EOF)
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._frame(_EOF)

    def _frame(self, frame: Frame | _End) -> None:
        """Queue a message (or the end, or a parse error) for the pump."""
        if self._ended:
            return
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = deque()
        elif backlog and backlog[-1] is _EOF:
            return  # nothing comes after the end
        backlog.append(frame)
        if not isinstance(frame, BaseException | _End):
            self._backlog_bytes += _size(frame)
            if self._backlog_bytes > _BACKLOG_BYTES and not self._paused and not self.transport.is_closing():
                self._paused = True
                self.transport.pause_reading()
        if self.task is None:
            self._pump_soon()

    def _pump_soon(self, first: bool = False) -> None:
        pump = self._pump(first)
        if _EAGER:
            self.task = asyncio.Task(pump, loop=self.loop, eager_start=True)  # type: ignore[call-arg]
            if self.task.done():
                self.task = None
        else:
            self.task = self.loop.create_task(pump)

    # --- the pump ---

    async def _pump(self, first: bool) -> None:
        """Handle what is queued, in order, then end; a new pump starts with the next message."""
        try:
            if first:
                await self._connect()
            while self._backlog:
                frame = self._backlog.popleft()
                if frame is _EOF:
                    self.handshake.lost()
                    await self._end()
                    return
                if isinstance(frame, BaseException):
                    if isinstance(frame, WebSocketError):
                        await self._fail(frame.code, self._explain(frame))
                    else:  # a corrupt deflate stream, for one
                        await self._fail(CloseCode.PROTOCOL_ERROR, f"bad frame: {type(frame).__name__}")
                    await self._end()
                    return
                assert not isinstance(frame, _End)
                self._backlog_bytes -= _size(frame)
                if self._paused and self._backlog_bytes <= _BACKLOG_BYTES // 2:
                    self._paused = False
                    if not self.transport.is_closing():
                        self.transport.resume_reading()
                if await self._message(frame):
                    await self._end()
                    return
        finally:
            if asyncio.current_task() is self.task:
                self.task = None
            if not self._backlog:
                self._backlog = None

    async def _connect(self) -> None:
        live, conn = self.live, self.conn
        try:
            await live.handler.on_connect(conn)
        except ConnectionClosed:
            pass  # the handler sent to a connection that is closing: not its fault
        except Exception:
            self._crashed("on_connect")
        live.connected(conn)

    def _crashed(self, hook: str) -> None:
        """Log the running exception once and close this connection with 1011."""
        self.live.stats.handler_errors += 1
        log.exception("handler %s raised in %s on connection %s (%s)",
                      self.live.endpoint.handler_ref, hook, self.conn.id, self.live.path)
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    async def _message(self, msg: Frame) -> bool:
        """Handle one message; True once the client's close frame has ended the session."""
        live, handshake, writer, stats = self.live, self.handshake, self.writer, self.live.stats
        keepalive, bucket, loop = self.keepalive, self.bucket, self.loop
        kind = msg.type  # type: ignore[union-attr]
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if not handshake.open:
                return False  # closing: data is read and discarded until the client's close frame
            data = msg.data  # type: ignore[union-attr]
            self.messages_in += 1
            stats.messages_in += 1
            stats.bytes_in += len(data)
            if keepalive.enabled or bucket is not None:
                now = loop.time()
                keepalive.last_seen = keepalive.last_message = now
                if bucket is not None and not bucket.take(now):
                    stats.limit_rejections["rate"] += 1
                    self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
                    return False
            accepts = live.handler.accepts
            if self.size_limit and _byte_length(data) > self.size_limit:
                self.close(CloseCode.MESSAGE_TOO_BIG, self._too_big())
            elif accepts != "any" and (kind is WSMsgType.TEXT) != (accepts == "text"):
                self.close(CloseCode.UNSUPPORTED_DATA, f"this endpoint accepts only {accepts} messages")
            else:
                try:
                    await live.handler.on_message(self.conn, data)
                except ConnectionClosed:
                    pass
                except Exception:
                    self._crashed("on_message")
        elif kind is WSMsgType.PING:
            now = loop.time()
            keepalive.last_seen = now
            if not handshake.open:
                return False
            # Pings cost a pong each: they draw on the same budget as messages.
            if bucket is not None and not bucket.take(now):
                stats.limit_rejections["rate"] += 1
                self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
                return False
            writer.pong(msg.data)  # type: ignore[union-attr]
        elif kind is WSMsgType.PONG:
            keepalive.last_seen = loop.time()
        elif kind is WSMsgType.CLOSE:
            answer = handshake.received(msg.data or None, msg.extra or "")  # type: ignore[union-attr]
            if answer is not None:
                writer.answer_close(answer.code, answer.reason, drop_queued=answer.drop_queued)
            writer.close()
            return True
        return False

    def _too_big(self) -> str:
        return f"message too big: the limit is {self.live.endpoint.policy.max_message_size} bytes"

    def _explain(self, exc: WebSocketError) -> str:
        """The close reason for a frame aiohttp could not parse, in our words where aiohttp's mislead."""
        if exc.code == CloseCode.MESSAGE_TOO_BIG:
            return self._too_big()  # aiohttp names its own limit, ours plus one
        if exc.code == CloseCode.INVALID_DATA:
            return "invalid UTF-8 in a text message"
        return str(exc)

    async def _fail(self, code: int, reason: str) -> None:
        """A frame could not be parsed: close frame, FIN, then wait for the client to hang up."""
        if self.handshake.failed(code, reason):
            self.writer.close_frame(code, reason)
        self.writer.finish_writing()
        # Nothing more can be parsed; the transport still reads (and discards) until
        # the client closes its side, so the close frame is not lost to a reset.
        deadline = self.loop.time() + self.live.endpoint.policy.close_timeout
        while not self.writer.closed and self.loop.time() < deadline:
            await asyncio.sleep(_LINGER_POLL)
        if not self.writer.closed:
            self.writer.abort()

    async def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._backlog = None
        try:
            await self._finish()
        finally:
            if self._on_end is not None:
                self._on_end(self)

    async def _finish(self) -> None:
        if self._slot is not None:
            self.services.timers.cancel(self._slot, self)
            self._slot = None
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        self.handshake.lost()
        if not self.writer.closed:
            self.writer.abort()
        elif self.writer.draining:
            # The handshake is done; TCP closes once the client has read what came before
            # our close frame. One that stops reading is dropped at close_timeout, so that
            # it cannot hold those bytes (up to send_queue) after the session has ended.
            self.loop.call_later(self.live.endpoint.policy.close_timeout, self.writer.abort)
        live, conn = self.live, self.conn
        code = self.handshake.code or CloseCode.ABNORMAL
        await live.detach(conn)
        try:
            await live.handler.on_disconnect(conn, code)
        except Exception:
            live.stats.handler_errors += 1
            log.exception("handler %s raised in on_disconnect on connection %s (%s)",
                          live.endpoint.handler_ref, conn.id, live.path)
        finally:
            live.stats.close_codes[int(code)] += 1
            access_log.info(
                "connection closed",
                extra={"event": "close", "conn": conn.id, "endpoint": live.path, "remote": conn.remote,
                       "code": int(code), "reason": self.handshake.reason,
                       "duration": round(time.monotonic() - self.started, 3),
                       "messages_in": self.messages_in, "messages_out": self.writer.frames},
            )

