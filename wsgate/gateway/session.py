"""One accepted WebSocket after the handshake: the driver of its ``Core``.

aiohttp parses and answers the opening handshake; then the session is the transport's
``asyncio.Protocol`` (``aiohttp_seam.take_over``) and aiohttp keeps nothing of the
connection. The session feeds the transport's bytes and end to the connection core,
which decides everything a WebSocket is (frames, limits, keepalive, the close
handshake, what is written and when TCP closes) and writes to the transport itself.
What the session adds is the handler: a pump task, which exists only while messages
wait, takes each from ``core.next()`` and awaits the handler on it, one at a time, in
order. An idle connection therefore has no task, no request and no aiohttp objects.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from ..auth.identity import Identity
from ..closecode import CloseCode
from ..connection import Connection
from ..errors import ConnectionClosed
from .aiohttp_seam import OwnedWebSocket, inflated_limit, take_over
from .core import END, Core
from .endpoint import LiveEndpoint
from .timers import TimerWheel
from .writer import Deflate, Flusher

__all__ = ["Services", "Session"]

log = logging.getLogger("wsgate.gateway")
access_log = logging.getLogger("wsgate.access")

_EAGER = sys.version_info >= (3, 12)  # the pump's first step runs in the callback that made it


@dataclass(frozen=True, slots=True)
class Services:
    """What every session of one gateway shares."""

    flusher: Flusher
    timers: TimerWheel


def _deflate(ws: web.WebSocketResponse) -> Deflate | None:
    """Our compressor for the permessage-deflate parameters aiohttp negotiated, if any."""
    if not ws.compress:
        return None
    offer = ws.headers.get("Sec-WebSocket-Extensions", "")
    return Deflate(int(ws.compress), takeover="server_no_context_takeover" not in offer)


class Session(asyncio.Protocol):
    """One accepted WebSocket: its Connection, its core, and the task that runs its handler."""

    __slots__ = ("_ended", "_on_end", "_url", "auth", "conn", "core", "live", "loop", "started", "task", "transport")

    def __init__(self, services: Services, live: LiveEndpoint, ws: OwnedWebSocket,
                 request: web.Request, remote: str, conn_id: str, identity: Identity | None = None,
                 auth: str | None = None) -> None:
        policy = live.endpoint.policy
        self.loop = loop = asyncio.get_running_loop()
        self.live = live
        self.task: asyncio.Task[None] | None = None  # the pump, while there is something to handle
        self.started = time.monotonic()
        self._url = request.rel_url  # for the query, parsed only if a handler asks
        self._ended = False
        self._on_end: Callable[[Session], None] | None = None
        transport = request.transport
        assert transport is not None
        assert ws.sink is not None
        self.transport: asyncio.Transport = transport
        expires = None
        if identity is not None and identity.expires_at is not None:
            expires = loop.time() + max(0.0, identity.expires_at - time.time())  # exp is wall-clock time
        self.core = Core(policy, transport, (ws.sink, ws.parser), flusher=services.flusher, timers=services.timers,
                         clock=loop.time, stats=live.stats, accepts=live.handler.accepts, deflate=_deflate(ws),
                         size_limit=inflated_limit(ws, policy.max_message_size), expires=expires)
        self.conn = Connection._open(self, self.core.writer.send, id=conn_id, path=live.path, remote=remote,
                                     headers=request.headers, subprotocol=ws.ws_protocol, identity=identity)
        self.auth = auth  # the authenticator that admitted the client, by name

    def start(self, request: web.Request, on_end: Callable[[Session], None]) -> None:
        """Own the transport from now on; ``on_connect``, then each message, run in the pump.

        ``on_end`` is called once the session has ended and ``on_disconnect`` has run.
        """
        self._on_end = on_end
        take_over(request, self)
        self.live.attach(self.conn)
        self.core.start()
        self._pump_soon(first=True)

    # --- what Connection and the router ask of us ---

    @property
    def closing(self) -> bool:
        return not self.core.handshake.open

    def handshake_query(self) -> Mapping[str, str]:
        return self._url.query

    def close(self, code: int, reason: str) -> None:
        """Close with ``code``: see ``Core.close``."""
        self.core.close(code, reason)

    def abort(self, code: int, reason: str) -> None:
        """Drop TCP without a close handshake (the peer is gone)."""
        self.core.abort(code, reason)

    # --- the transport's protocol ---

    def data_received(self, data: bytes) -> None:
        if self.core.receive(data) and self.task is None:
            self._pump_soon()

    def eof_received(self) -> bool | None:
        self._end_of_stream()
        return None  # the transport closes itself; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_of_stream()

    def _end_of_stream(self) -> None:
        if self._ended:
            return
        self.core.receive_eof()
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
        core, live, conn = self.core, self.live, self.conn
        try:
            if first:
                await self._connect()
            while (message := core.next()) is not None:
                if message is END:
                    await self._end()
                    return
                try:
                    await live.handler.on_message(conn, message)  # type: ignore[arg-type]
                except ConnectionClosed:
                    pass  # the handler sent to a connection that is closing: not its fault
                except Exception:
                    self._crashed("on_message")
        finally:
            if asyncio.current_task() is self.task:
                self.task = None

    async def _connect(self) -> None:
        live, conn = self.live, self.conn
        try:
            await live.handler.on_connect(conn)
        except ConnectionClosed:
            pass
        except Exception:
            self._crashed("on_connect")
        live.connected(conn)

    def _crashed(self, hook: str) -> None:
        """Log the running exception once and close this connection with 1011."""
        self.live.stats.handler_errors += 1
        log.exception("handler %s raised in %s on connection %s (%s)",
                      self.live.endpoint.handler_ref, hook, self.conn.id, self.live.path)
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    async def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        core, live, conn = self.core, self.live, self.conn
        core.finish()
        try:
            await live.detach(conn)
            code = core.handshake.code or CloseCode.ABNORMAL
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
                           "code": int(code), "reason": core.handshake.reason,
                           "duration": round(time.monotonic() - self.started, 3),
                           "messages_in": core.messages_in, "messages_out": core.writer.frames},
                )
        finally:
            if self._on_end is not None:
                self._on_end(self)
