"""The only module that touches a WebSocket: handshake policy, receive loop, close codes.

Policy runs before any handler code: 404 for unknown paths, 400 for a plain GET,
403 for a refused origin, 503/429 over the connection caps. After the upgrade the
gateway owns the receive loop: it answers pings, pings on the heartbeat, applies the
idle timeout and the rate limit, and turns every failure into the right close code
(RFC 6455 section 7.4.1): 1002 protocol error, 1003 wrong message kind, 1007 invalid
UTF-8, 1008 policy (rate limit, slow consumer), 1009 too big, 1011 handler error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import struct
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import WebSocketError, WSMsgType, web

from .config import Endpoint, Settings
from .connection import Connection
from .errors import ConnectionClosed
from .hub import Hub
from .keepalive import Action, KeepAlive
from .limits import Admission, TokenBucket
from .metrics import GatewayStats
from .outbox import CLOSE, PING, PONG, Flusher, Outbox, encode_frame
from .proxies import client_address, client_scheme
from .runtime import EndpointRuntime
from .timers import TimerWheel

__all__ = ["Gateway"]

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


class Gateway:
    """Routes WebSocket handshakes to endpoint runtimes and applies central policy."""

    def __init__(self, settings: Settings, hub: Hub, stats: GatewayStats) -> None:
        self.settings = settings
        self.hub = hub
        self.stats = stats
        self.routes: dict[str, EndpointRuntime] = {}
        self.admission = Admission(max_total=settings.config.server.max_connections)
        self.sessions: set[Session] = set()
        self.draining = False
        self.shutdown_code = GOING_AWAY
        self._stopped = False
        self.flusher: Flusher
        self.timers: TimerWheel
        self._ids = itertools.count(1)
        self._retired: set[EndpointRuntime] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._all_closed = asyncio.Event()

    async def start(self) -> None:
        self.flusher = Flusher(asyncio.get_running_loop())
        self.timers = TimerWheel(asyncio.get_running_loop())
        for endpoint in self.settings.endpoints:
            self.routes[endpoint.path] = await self._start_runtime(endpoint)

    async def _start_runtime(self, endpoint: Endpoint) -> EndpointRuntime:
        runtime = EndpointRuntime(endpoint, self.hub, self.stats.endpoint(endpoint.path))
        await runtime.handler.startup()
        return runtime

    async def reload(self, settings: Settings) -> None:
        """Apply a new config to new connections; open connections keep their runtime."""
        new: dict[str, EndpointRuntime] = {}
        for endpoint in settings.endpoints:
            current = self.routes.get(endpoint.path)
            if current is not None and current.endpoint.same_handler(endpoint):
                current.update(endpoint)
                new[endpoint.path] = current
            else:
                new[endpoint.path] = await self._start_runtime(endpoint)
        for path, runtime in self.routes.items():
            if new.get(path) is not runtime:
                self._retire(runtime)
        self.routes = new
        self.settings = settings
        self.admission.max_total = settings.config.server.max_connections

    def _retire(self, runtime: EndpointRuntime) -> None:
        async def stop_when_idle() -> None:
            await runtime.wait_idle()
            await runtime.stop()
            self._retired.discard(runtime)

        self._retired.add(runtime)
        task = asyncio.get_running_loop().create_task(stop_when_idle())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The route of every WebSocket path: refuse, or accept and serve until closed."""
        checked = self._admit(request)
        if isinstance(checked, web.Response):
            return checked
        runtime, remote, origin = checked
        try:
            policy = runtime.endpoint.policy
            ws = web.WebSocketResponse(
                autoping=False, autoclose=False, protocols=policy.subprotocols,
                # aiohttp refuses a message of exactly max_msg_size; ours is the largest allowed.
                compress=policy.compression, max_msg_size=policy.max_message_size + 1,
                timeout=policy.close_timeout,
            )
            await ws.prepare(request)
            session = Session(self, runtime, ws, request, remote, f"c{next(self._ids)}")
            runtime.stats.open += 1
            runtime.stats.connections += 1
            self.sessions.add(session)
            self._all_closed.clear()
            access_log.info(
                "connection open",
                extra={"event": "open", "conn": session.conn.id, "endpoint": runtime.path, "remote": remote,
                       "origin": origin, "subprotocol": ws.ws_protocol, "query": redact_query(request.query)},
            )
            try:
                await session.run()
            finally:
                self.sessions.discard(session)
                runtime.stats.open -= 1
                if not self.sessions:
                    self._all_closed.set()
            return ws
        finally:
            self.admission.release(request.path, remote)

    def _admit(self, request: web.Request) -> web.Response | tuple[EndpointRuntime, str, str | None]:
        """Handshake policy: a refusal, or the endpoint, client address and origin (a slot booked)."""
        runtime = self.routes.get(request.path)
        if runtime is None:
            return web.Response(status=404, text=f"no endpoint at {request.path}\n")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(
                status=400,
                text=f"{request.path} is a WebSocket endpoint: connect with a WebSocket client "
                     "(the request needs 'Upgrade: websocket'). The test page is at /.\n",
            )
        if self.draining:
            return web.Response(status=503, text="the server is shutting down\n")
        stats = runtime.stats
        origin = request.headers.get("Origin")
        peer = request.remote or "?"
        proxies = self.settings.config.server.trusted_proxies
        remote = client_address(peer, request.headers.get("X-Forwarded-For"), proxies)
        scheme = client_scheme(peer, request.headers.get("X-Forwarded-Proto"), proxies, request.scheme)
        if not runtime.origin_policy.allows(origin, request.host, scheme):
            stats.origin_rejections += 1
            log.warning("origin refused: %r on %s from %s (allowed: %s)",
                        origin, request.path, remote, runtime.origin_policy.describe())
            return web.Response(status=403, text="origin not allowed\n")
        policy = runtime.endpoint.policy
        refusal = self.admission.admit(request.path, remote, policy.max_connections, policy.max_connections_per_ip)
        if refusal is not None:
            stats.limit_rejections[str(refusal.status)] += 1
            return web.Response(status=refusal.status, text=refusal.reason + "\n")
        return runtime, remote, origin

    async def publish(self, path: str, room: str, data: Any) -> None:
        """Send ``{"type": "publish", "room", "data"}`` to ``room`` subscribers on every instance.

        Raises BrokerError when the broker did not take it (nothing was delivered).
        """
        message = json.dumps({"type": "publish", "room": room, "data": data}, separators=(",", ":"))
        await self.hub.publish(path, room, message, strict=True)

    async def shutdown(self, code: int, grace: float) -> None:
        """Close every connection with ``code``, wait up to ``grace`` seconds, stop handlers."""
        if self._stopped:
            return
        self._stopped = True
        self.draining = True
        for session in list(self.sessions):
            session.close(code, "service restart" if code == SERVICE_RESTART else "server shutting down")
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._all_closed.wait()
        for session in list(self.sessions):
            session.abort(code, "shutdown timeout")
        runtimes = set(self.routes.values()) | self._retired
        await asyncio.gather(*(r.stop() for r in runtimes))
        self.timers.close()
