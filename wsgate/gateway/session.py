"""One accepted WebSocket: the receive loop, keepalive, and the close handshake's I/O."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import EofStream, WebSocketError, WSMsgType, web

from ..auth.identity import Identity
from ..closecode import CloseCode
from ..connection import Connection
from ..errors import ConnectionClosed
from ..policy.keepalive import Action, KeepAlive
from ..policy.limits import TokenBucket
from .aiohttp_seam import frame_queue, inflated_limit
from .closing import CloseHandshake
from .endpoint import LiveEndpoint
from .sendqueue import SendQueue
from .timers import TimerWheel
from .writer import Deflate, Flusher, Writer

__all__ = ["Services", "Session"]

log = logging.getLogger("wsgate.gateway")
access_log = logging.getLogger("wsgate.access")

_LINGER_POLL = 0.02


@dataclass(frozen=True, slots=True)
class Services:
    """What every session of one gateway shares."""

    flusher: Flusher
    timers: TimerWheel


def _byte_length(data: str | bytes) -> int:
    return len(data.encode()) if isinstance(data, str) else len(data)


def _deflate(ws: web.WebSocketResponse) -> Deflate | None:
    """Our compressor for the permessage-deflate parameters aiohttp negotiated, if any."""
    if not ws.compress:
        return None
    offer = ws.headers.get("Sec-WebSocket-Extensions", "")
    return Deflate(int(ws.compress), takeover="server_no_context_takeover" not in offer)


class Session:
    """One accepted WebSocket: its Connection, writer, timers and close handshake."""

    __slots__ = ("_close_timer", "_expiry", "_request", "_slot", "auth", "bucket", "conn", "handshake", "incoming",
                 "keepalive", "live", "loop", "messages_in", "services", "started", "task", "writer", "ws")

    def __init__(self, services: Services, live: LiveEndpoint, ws: web.WebSocketResponse,
                 request: web.Request, remote: str, conn_id: str, identity: Identity | None = None,
                 auth: str | None = None) -> None:
        policy = live.endpoint.policy
        self.loop = asyncio.get_running_loop()
        self.services = services
        self.live = live
        self.ws = ws
        self.task = asyncio.current_task()
        self.started = time.monotonic()
        self.handshake = CloseHandshake()
        self._slot: int | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._request = request  # aiohttp keeps it for the connection's life anyway
        transport = request.transport
        assert transport is not None
        self.incoming = frame_queue(ws)
        queue = SendQueue(policy.send_queue, drop=policy.slow_client == "drop")
        self.writer = Writer(transport, services.flusher, queue, live.stats, self._overflow, self.handshake.sent,
                             _deflate(ws))
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

    # --- what Connection asks of us ---

    @property
    def closing(self) -> bool:
        return not self.handshake.open

    def handshake_query(self) -> Mapping[str, str]:
        return self._request.query

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

    # --- the receive loop ---

    async def run(self) -> None:
        live, conn = self.live, self.conn
        live.attach(conn)
        if self.keepalive.enabled:
            self.on_timer()
        try:
            try:
                await live.handler.on_connect(conn)
            except ConnectionClosed:
                pass  # the handler sent to a connection that is closing: not its fault
            except Exception:
                self._crashed("on_connect")
            live.connected(conn)
            await self._receive()
        finally:
            await self._finish()

    def _crashed(self, hook: str) -> None:
        """Log the running exception once and close this connection with 1011."""
        self.live.stats.handler_errors += 1
        log.exception("handler %s raised in %s on connection %s (%s)",
                      self.live.endpoint.handler_ref, hook, self.conn.id, self.live.path)
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    async def _receive(self) -> None:
        live, conn, handshake, writer = self.live, self.conn, self.handshake, self.writer
        on_message = live.handler.on_message
        stats = live.stats
        accepts = live.handler.accepts
        keepalive, bucket, loop = self.keepalive, self.bucket, self.loop
        track_time = keepalive.enabled or bucket is not None
        size_limit = inflated_limit(self.ws, live.endpoint.policy.max_message_size)
        read = self.incoming.read
        while True:
            try:
                msg = await read()
            except EofStream:
                handshake.lost()
                return
            except WebSocketError as exc:
                await self._fail(exc.code, self._explain(exc))
                return
            except Exception as exc:  # a corrupt deflate stream, for one
                await self._fail(CloseCode.PROTOCOL_ERROR, f"bad frame: {type(exc).__name__}")
                return
            kind = msg.type
            if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                if not handshake.open:
                    continue  # closing: data is read and discarded until the client's close frame
                data = msg.data
                self.messages_in += 1
                stats.messages_in += 1
                stats.bytes_in += len(data)
                if track_time:
                    now = loop.time()
                    keepalive.last_seen = keepalive.last_message = now
                    if bucket is not None and not bucket.take(now):
                        stats.limit_rejections["rate"] += 1
                        self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
                        continue
                if size_limit and _byte_length(data) > size_limit:
                    self.close(CloseCode.MESSAGE_TOO_BIG, self._too_big())
                elif accepts != "any" and (kind is WSMsgType.TEXT) != (accepts == "text"):
                    self.close(CloseCode.UNSUPPORTED_DATA, f"this endpoint accepts only {accepts} messages")
                else:
                    try:
                        await on_message(conn, data)
                    except ConnectionClosed:
                        pass
                    except Exception:
                        self._crashed("on_message")
            elif kind is WSMsgType.PING:
                now = loop.time()
                keepalive.last_seen = now
                if not handshake.open:
                    continue
                # Pings cost a pong each: they draw on the same budget as messages.
                if bucket is not None and not bucket.take(now):
                    stats.limit_rejections["rate"] += 1
                    self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
                    continue
                writer.pong(msg.data)
            elif kind is WSMsgType.PONG:
                keepalive.last_seen = loop.time()
            elif kind is WSMsgType.CLOSE:
                answer = handshake.received(msg.data or None, msg.extra or "")
                if answer is not None:
                    writer.answer_close(answer.code, answer.reason, drop_queued=answer.drop_queued)
                writer.close()
                return

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

