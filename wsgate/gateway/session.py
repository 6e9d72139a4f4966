"""One accepted WebSocket: the receive loop, keepalive, close handshake and close codes."""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import WebSocketError, WSMsgType, web

from ..connection import Connection
from ..errors import ConnectionClosed
from ..keepalive import Action, KeepAlive
from ..limits import TokenBucket
from ..outbox import CLOSE, PING, PONG, Outbox, encode_frame
from ..runtime import EndpointRuntime

if TYPE_CHECKING:
    from .router import Gateway

__all__ = ["GOING_AWAY", "SERVICE_RESTART", "Session", "redact_query"]

log = logging.getLogger("wsgate.gateway")
access_log = logging.getLogger("wsgate.access")

GOING_AWAY, SERVICE_RESTART = 1001, 1012
_SECRET = re.compile(r"token|secret|passw|auth|key|sig", re.IGNORECASE)
# Close codes a peer may not put on the wire (RFC 6455 section 7.4.1).
_NOT_SENDABLE = {0, 1005, 1006, 1015}
_CLOSE_CODE = struct.Struct("!H").pack


def _byte_length(data: str | bytes) -> int:
    return len(data.encode()) if isinstance(data, str) else len(data)


def redact_query(query: Mapping[str, str]) -> str:
    """``query`` for logs, with the values of secret-looking keys replaced by ``***``."""
    return "&".join(f"{k}={'***' if _SECRET.search(k) else v}" for k, v in query.items())


class Session:
    """One accepted WebSocket: its Connection, timers and close bookkeeping."""

    __slots__ = ("_answered", "_close_task", "_receiving", "_slot", "bucket", "close_code", "close_reason", "conn",
                 "gateway", "keepalive", "loop", "messages_in", "outbox", "runtime", "started", "transport", "ws")

    def __init__(self, gateway: Gateway, runtime: EndpointRuntime, ws: web.WebSocketResponse,
                 request: web.Request, remote: str, conn_id: str) -> None:
        policy = runtime.endpoint.policy
        self.loop = asyncio.get_running_loop()
        self.gateway = gateway
        self.runtime = runtime
        self.ws = ws
        self.started = time.monotonic()
        self.close_code: int | None = None
        self.close_reason = ""
        self._close_task: asyncio.Task[None] | None = None
        self._slot: int | None = None
        transport = request.transport
        assert transport is not None
        self.transport = transport
        compressed = bool(ws.compress)
        self.outbox = Outbox(
            transport, gateway.flusher,
            limit=policy.send_queue, drop=policy.slow_client == "drop",
            on_overflow=self._overflow,
            send_compressed=(lambda payload, opcode: ws.send_frame(payload, WSMsgType(opcode)))
            if compressed else None,
        )
        self.conn = Connection(
            id=conn_id, path=runtime.path, remote=remote,
            headers=request.headers, query=request.query, subprotocol=ws.ws_protocol,
            outbox=self.outbox, closer=self.close, stats=runtime.stats,
        )
        now = self.loop.time()
        hb = policy.heartbeat
        self.keepalive = KeepAlive(hb.interval, hb.timeout, policy.idle_timeout, now)
        rate = policy.rate_limit
        self.bucket = (
            TokenBucket(rate.messages / rate.per, float(rate.burst or rate.messages), now) if rate else None
        )
        self.messages_in = 0
        self._receiving = False
        self._answered: asyncio.Event | None = None

    # --- closing ---

    def close(self, code: int, reason: str) -> None:
        """Start a clean close after queued data; later calls are ignored."""
        if self._close_task is not None or self.ws.closed:
            return
        self.close_code, self.close_reason = code, reason
        self.outbox.seal()
        if self._receiving:
            self._answered = asyncio.Event()
        self._close_task = self.loop.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        """Queued data, then the close frame, then the client's answer, within close_timeout."""
        message = reason.encode()[:123]
        try:
            async with asyncio.timeout(self.runtime.endpoint.policy.close_timeout):
                await self.outbox.drain()
                if self._answered is None:
                    # The receive loop has ended; aiohttp waits for the answer itself.
                    await self.ws.close(code=code, message=message)
                    return
                # The receive loop is still reading and will see the client's answer.
                # aiohttp's own close() would drop the connection right after its frame.
                self.transport.write(encode_frame(_CLOSE_CODE(code) + message, CLOSE))
                await self._answered.wait()
                self.transport.close()
        except TimeoutError:
            self.outbox.close()
            self.transport.abort()
        except (ConnectionError, RuntimeError):
            pass

    def abort(self, code: int, reason: str) -> None:
        """Drop the TCP connection without a close handshake (the peer is gone)."""
        self.close_code, self.close_reason = code, reason
        self.outbox.close()
        self.transport.abort()

    def _overflow(self) -> None:
        self.runtime.stats.slow_client_closes += 1
        self.close(1008, "slow consumer")

    # --- timers ---

    def arm(self) -> None:
        if self.keepalive.enabled:
            self.on_timer()

    def on_timer(self) -> None:
        self._slot = None
        action, deadline = self.keepalive.due(self.loop.time())
        if action is Action.PING:
            self.outbox.push_control(encode_frame(b"", PING))
        elif action is Action.DEAD:
            self.runtime.stats.heartbeat_timeouts += 1
            self.abort(1006, "heartbeat timeout")
        elif action is Action.IDLE:
            self.close(GOING_AWAY, "idle timeout")
        if deadline is not None and action not in (Action.DEAD, Action.IDLE):
            self._slot = self.gateway.timers.schedule(deadline, self)

    # --- the receive loop ---

    async def run(self) -> None:
        runtime, ws, conn = self.runtime, self.ws, self.conn
        handler = runtime.handler
        stats = runtime.stats
        accepts = handler.accepts
        keepalive, bucket, loop = self.keepalive, self.bucket, self.loop
        track_time = keepalive.enabled or bucket is not None
        inflated_limit = runtime.endpoint.policy.max_message_size if ws.compress else 0
        runtime.attach(conn)
        self._receiving = True
        self.arm()
        try:
            try:
                await handler.on_connect(conn)
            except Exception:
                self._crashed("on_connect")
                return
            on_message = handler.on_message
            while True:
                msg = await ws.receive()
                kind = msg.type
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    data = msg.data
                    self.messages_in += 1
                    stats.messages_in += 1
                    stats.bytes_in += len(data)
                    if track_time:
                        now = loop.time()
                        keepalive.last_seen = keepalive.last_message = now
                        if bucket is not None and not bucket.take(now):
                            stats.limit_rejections["rate"] += 1
                            self.close(1008, "rate limit exceeded")
                            break
                    if inflated_limit and _byte_length(data) > inflated_limit:
                        # aiohttp lets a decompressed message one byte over its limit through.
                        self.close(1009, "message too big")
                        break
                    if accepts != "any" and (kind is WSMsgType.TEXT) != (accepts == "text"):
                        self.close(1003, f"this endpoint accepts only {accepts} messages")
                        break
                    try:
                        await on_message(conn, data)
                    except ConnectionClosed:
                        break  # the handler sent to this connection after it began closing
                    except Exception:
                        self._crashed("on_message")
                        break
                elif kind is WSMsgType.PING:
                    keepalive.last_seen = loop.time()
                    self.outbox.push_control(encode_frame(msg.data, PONG))
                elif kind is WSMsgType.PONG:
                    keepalive.last_seen = loop.time()
                elif kind is WSMsgType.CLOSE:
                    if self._answered is not None:  # the answer to our close frame
                        break
                    # Answer with the client's own code and reason (RFC 6455 5.5.1).
                    code = msg.data if msg.data not in _NOT_SENDABLE else 1000
                    self.close(code, msg.extra or "")
                    self.close_code = msg.data or 1005
                    break
                else:  # ERROR (aiohttp already sent the close code), CLOSING, CLOSED
                    if self.close_code is None:
                        exc = msg.data if kind is WSMsgType.ERROR else ws.exception()
                        # The code sent for a bad frame, even if the client never answered it.
                        self.close_code = exc.code if isinstance(exc, WebSocketError) else ws.close_code or 1006
                        self.close_reason = str(exc) if exc else ""
                    break
        finally:
            self._receiving = False
            if self._answered is not None:
                self._answered.set()
            await self._finish()

    def _crashed(self, hook: str) -> None:
        """Log the running exception once and close this connection with 1011."""
        self.runtime.stats.handler_errors += 1
        log.exception("handler %s raised in %s on connection %s (%s)",
                      self.runtime.endpoint.handler_ref, hook, self.conn.id, self.runtime.path)
        self.close(1011, "internal error")

    async def _finish(self) -> None:
        if self._slot is not None:
            self.gateway.timers.cancel(self._slot, self)
            self._slot = None
        if self._close_task is not None:
            await self._close_task
        elif not self.ws.closed:
            await self.ws.close()
        self.outbox.close()
        code = self.close_code or self.ws.close_code or 1006
        runtime = self.runtime
        await runtime.detach(self.conn)
        try:
            await runtime.handler.on_disconnect(self.conn, code)
        except Exception:
            runtime.stats.handler_errors += 1
            log.exception("handler %s raised in on_disconnect on connection %s (%s)",
                          runtime.endpoint.handler_ref, self.conn.id, runtime.path)
        runtime.stats.close_codes[code] += 1
        access_log.info(
            "connection closed",
            extra={"event": "close", "conn": self.conn.id, "endpoint": runtime.path,
                   "remote": self.conn.remote, "code": code, "reason": self.close_reason,
                   "duration": round(time.monotonic() - self.started, 3),
                   "messages_in": self.messages_in, "messages_out": self.outbox.frames},
        )
