"""Handshake policy and routing: which endpoint, and whether this client may connect."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from typing import Any

from aiohttp import web

from ..config import Endpoint, Settings
from ..hub import Hub
from ..limits import Admission
from ..metrics import GatewayStats
from ..outbox import Flusher
from ..proxies import client_address, client_scheme
from ..runtime import EndpointRuntime
from ..timers import TimerWheel
from .session import GOING_AWAY, SERVICE_RESTART, Session, access_log, redact_query

__all__ = ["Gateway"]

log = logging.getLogger("wsgate.gateway")


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
