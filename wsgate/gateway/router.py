"""Handshake policy and routing: which endpoint, whether this client may connect, and
the gateway's life: start, reload, drain."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..auth.allow import allowed
from ..auth.authenticator import AuthenticatorImpl
from ..auth.identity import AuthFailure, Identity
from ..auth.tokens import AUTH_PROTOCOL
from ..closecode import CloseCode
from ..config import Endpoint, Settings
from ..config.models import Policy, ServerConfig
from ..connection import Connection
from ..observe.logs import redact_query
from ..observe.stats import GatewayStats
from ..policy.hosts import host_policy
from ..policy.limits import Admission
from ..policy.probes import ProbeLimit
from ..policy.proxies import client_address, client_scheme
from .aiohttp_seam import OwnedWebSocket
from .endpoint import LiveEndpoint
from .hub import Hub
from .identify import identify, refusal_response, strip_bearer
from .session import Services, Session, access_log
from .timers import TimerWheel
from .writer import Flusher

__all__ = ["Gateway", "host_refusal", "still_allowed"]

log = logging.getLogger("wsgate.gateway")

AUTHENTICATOR_GRACE = 30.0  # seconds a replaced authenticator keeps its sessions after a reload


def still_allowed(auth: str | None, conn: Connection, policy: Policy) -> bool:
    """Whether an open connection, admitted under authenticator ``auth``, passes ``policy`` now.

    A connection admitted by another authenticator (or by none) cannot be re-verified
    without its token, which is not kept, so it no longer passes.
    """
    if policy.auth is None:
        return True
    if policy.auth != auth:
        return False
    return policy.allow is None or allowed(conn.claims, policy.allow)


def _query(request: web.Request) -> Mapping[str, str]:
    """The request's query parsed afresh: ``request.query`` stays cached in the request,
    which lives as long as the connection, and most handlers never read it."""
    return URL.build(query_string=request.rel_url.raw_query_string, encoded=True).query


def host_refusal(request: web.Request, server: ServerConfig) -> web.Response | None:
    """400 if the request names a host ``server.allowed_hosts`` does not allow (DNS rebinding).

    Both the ``Host`` header lines and an absolute-form target's authority are checked:
    aiohttp takes the request's host from the latter, and same-origin compares with it.
    """
    hosts = list(request.headers.getall("Host", ()))
    if not request.raw_path.startswith("/") and (authority := urlsplit(request.raw_path).netloc):
        hosts.append(authority.rpartition("@")[2])  # userinfo is a credential, not a host
    policy = host_policy(None if server.allowed_hosts is None else tuple(server.allowed_hosts), server.host)
    refused = policy.refused(hosts)
    if refused is None:
        return None
    log.warning("host refused: %r for %s from %s (allowed: %s)",
                refused, request.path, request.remote, policy.describe())
    return web.Response(status=400, text=policy.refusal(refused))


class Gateway:
    """Routes WebSocket handshakes to live endpoints and applies central policy."""

    def __init__(self, settings: Settings, hub: Hub, stats: GatewayStats,
                 authenticators: Mapping[str, AuthenticatorImpl]) -> None:
        self.settings = settings
        self.authenticators = authenticators  # built from settings.config.auth (wsgate.prepare)
        self.hub = hub
        self.stats = stats
        self.routes: dict[str, LiveEndpoint] = {}
        self.admission = Admission(max_total=settings.config.server.max_connections)
        self.sessions: set[Session] = set()
        self.draining = False
        self.shutdown_code: int = CloseCode.GOING_AWAY
        self._stopped = False
        self._services: Services
        self._ids = itertools.count(1)
        self._retired: set[LiveEndpoint] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._retired_authenticators: set[AuthenticatorImpl] = set()  # replaced by a reload, not closed yet
        self._closers: set[asyncio.Task[None]] = set()
        self._all_closed = asyncio.Event()
        self.probes = ProbeLimit()  # POST /api/handshake-check, per client address
        # A GET on a path no endpoint has may be under a handler's http_prefixes (wsgate.app).
        self.prefixed_api: Callable[[web.Request], Awaitable[web.StreamResponse | None]] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._services = Services(Flusher(loop), TimerWheel(loop))
        for endpoint in self.settings.endpoints:
            self.routes[endpoint.path] = await self._start_endpoint(endpoint)

    async def _start_endpoint(self, endpoint: Endpoint) -> LiveEndpoint:
        live = LiveEndpoint(endpoint, self.hub, self.stats.endpoint(endpoint.path), lambda: self.authenticators)
        await live.handler.startup()
        return live

    async def reload(self, settings: Settings, authenticators: Mapping[str, AuthenticatorImpl]) -> None:
        """Apply a new config, and the authenticators built from it, to new connections.

        Open connections keep their endpoint."""
        new: dict[str, LiveEndpoint] = {}
        for endpoint in settings.endpoints:
            current = self.routes.get(endpoint.path)
            if current is not None and current.endpoint.same_handler(endpoint):
                current.update(endpoint)
                new[endpoint.path] = current
            else:
                new[endpoint.path] = await self._start_endpoint(endpoint)
        for path, live in self.routes.items():
            if new.get(path) is not live:
                self._retire(live)
        self.routes = new
        retired = list(self.authenticators.values())
        self._retired_authenticators.update(retired)
        self.settings = settings
        self.authenticators = authenticators
        self.admission.max_total = settings.config.server.max_connections
        for session in list(self.sessions):
            now = new.get(session.live.path)
            if now is not None and not still_allowed(session.auth, session.conn, now.endpoint.policy):
                session.close(CloseCode.FORBIDDEN, "forbidden")

        async def close_later() -> None:
            # Handshakes already inside an old authenticator finish with it first.
            await asyncio.sleep(AUTHENTICATOR_GRACE)
            for authenticator in retired:
                self._retired_authenticators.discard(authenticator)
                await authenticator.close()

        closer = self._spawn(close_later())
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    def _retire(self, live: LiveEndpoint) -> None:
        async def stop_when_idle() -> None:
            await live.wait_idle()
            await live.stop()
            self._retired.discard(live)

        self._retired.add(live)
        self._spawn(stop_when_idle())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The route of every WebSocket path: refuse, or accept and serve until closed."""
        if request.path not in self.routes and self.prefixed_api is not None:
            answer = await self.prefixed_api(request)
            if answer is not None:
                return answer
        checked = self._admit(request)
        if isinstance(checked, web.Response):
            return checked
        live, remote, origin = checked
        del checked
        accepted = False
        try:
            request, offered_token = strip_bearer(request, live.endpoint.policy.subprotocols)
            verdict = await self._identify(request, live, remote, offered_token)
            if isinstance(verdict, web.Response):
                return verdict
            policy, identity = verdict
            del verdict
            if self.draining:  # authentication may have taken a while
                return web.Response(status=503, text="the server is shutting down\n")
            ws = OwnedWebSocket((*policy.subprotocols, AUTH_PROTOCOL), policy.compression, policy.max_message_size)
            try:
                await ws.prepare(request)
            except (UnicodeError, ValueError):
                # A handshake header that is not ASCII (Sec-WebSocket-Key: \x80, ...).
                return web.Response(status=400, text="malformed WebSocket handshake headers\n")
            except ConnectionError:
                return web.Response(status=400)  # the client left during the handshake; nobody reads this
            session = Session(self._services, live, ws, request, remote, f"c{next(self._ids)}", identity, policy.auth)
            live.stats.open += 1
            live.stats.connections += 1
            self.sessions.add(session)
            now = live.endpoint.policy
            if now is not policy and not still_allowed(policy.auth, session.conn, now):
                session.close(CloseCode.FORBIDDEN, "forbidden")  # a reload came during the upgrade
            self._all_closed.clear()
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "connection open",
                    extra={"event": "open", "conn": session.conn.id, "endpoint": live.path, "remote": remote,
                           "origin": origin, "subprotocol": ws.ws_protocol, "query": redact_query(_query(request))},
                )
            session.start(request, self._ended)
            accepted = True
            return ws  # aiohttp is done with the request; the session owns the connection
        finally:
            if not accepted:
                self.admission.release(request.path, remote)

    def _ended(self, session: Session) -> None:
        self.sessions.discard(session)
        session.live.stats.open -= 1
        self.admission.release(session.live.path, session.conn.remote)
        if not self.sessions:
            self._all_closed.set()

    async def _identify(self, request: web.Request, live: LiveEndpoint, remote: str, offered_token: str | None
                        ) -> web.Response | tuple[Policy, Identity | None]:
        """The auth step (see identify.py): a refusal, or the policy it passed and the identity."""
        policy = live.endpoint.policy
        try:
            for _ in range(3):
                identity = await identify(request.headers, lambda: request.query, live, policy, remote, offered_token,
                                          self.authenticators)
                if live.endpoint.policy is policy:
                    return policy, identity
                # A reload changed the endpoint while we waited for the verdict: ask again
                # under the policy the connection will live under.
                policy = live.endpoint.policy
            raise AuthFailure(503, "backend_error", "the endpoint's policy kept changing during the handshake")
        except AuthFailure as failure:
            live.stats.auth_refusals[failure.reason] += 1
            log.warning("auth refused: %d %s on %s from %s: %s",
                        failure.status, failure.reason, live.path, remote, failure.detail)
            return refusal_response(failure)
        except Exception:
            live.stats.handler_errors += 1
            log.exception("%s.authorize raised on %s; answering 500", type(live.handler).__name__, live.path)
            return web.Response(status=500, text="the endpoint's handler failed\n")

    def _admit(self, request: web.Request) -> web.Response | tuple[LiveEndpoint, str, str | None]:
        """Handshake policy: a refusal, or the endpoint, client address and origin (a slot booked)."""
        refused = host_refusal(request, self.settings.config.server)
        if refused is not None:
            return refused
        live = self.routes.get(request.path)
        if live is None:
            return web.Response(status=404, text=f"no endpoint at {request.path}\n")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(
                status=400,
                text=f"{request.path} is a WebSocket endpoint: connect with a WebSocket client "
                     "(the request needs 'Upgrade: websocket'). The test page is at /.\n",
            )
        if request.method != "GET" or request.version < (1, 1):
            # RFC 6455 section 4.1: the opening handshake is an HTTP/1.1 (or later) GET.
            return web.Response(status=400, text="a WebSocket handshake is a GET over HTTP/1.1 or later\n")
        if self.draining:
            return web.Response(status=503, text="the server is shutting down\n")
        stats = live.stats
        origin = request.headers.get("Origin")
        remote, scheme = self.client(request)
        if not live.origin_policy.allows(origin, request.host, scheme):
            stats.origin_rejections += 1
            log.warning("origin refused: %r on %s from %s (allowed: %s)",
                        origin, request.path, remote, live.origin_policy.describe())
            return web.Response(status=403, text="origin not allowed\n")
        policy = live.endpoint.policy
        refusal = self.admission.admit(request.path, remote, policy.max_connections, policy.max_connections_per_ip)
        if refusal is not None:
            stats.limit_rejections[str(refusal.status)] += 1
            return web.Response(status=refusal.status, text=refusal.reason + "\n")
        return live, remote, origin

    def client(self, request: web.Request) -> tuple[str, str]:
        """The client's address and scheme, through ``server.trusted_proxies``."""
        peer = request.remote or "?"
        proxies = self.settings.config.server.trusted_proxies
        # Every header line, in order (RFC 9110 section 5.3): reading only the first would
        # believe a line the client sent ahead of its proxy's.
        remote = client_address(peer, ",".join(request.headers.getall("X-Forwarded-For", ())), proxies)
        scheme = client_scheme(peer, ",".join(request.headers.getall("X-Forwarded-Proto", ())), proxies,
                               request.scheme)
        return remote, scheme

    def may_probe(self, request: web.Request) -> bool:
        """Spend one handshake check of ``request``'s client; False when it is over its limit."""
        return self.probes.take(self.client(request)[0], asyncio.get_running_loop().time())

    async def probe_identity(self, request: web.Request, target: str, token: str | None) -> tuple[int, str]:
        """How a WebSocket handshake to ``target`` (a path with its query), carrying
        ``request``'s headers and ``token``, would be answered: (status, text); 101 admits.
        ``request`` is the check's request with its body unread (it is cloned).

        Browsers report every refused handshake as 1006, so the page asks this to tell
        the user 401 from 403. The question goes through the handshake's own policy
        (Host, origin, admission, the auth step, ``authorize``) and a refusal is counted
        and logged as the handshake's would be, never with the token: it must not be a
        cheaper way to try tokens than connecting.
        """
        url = URL(target)
        if url.is_absolute() or url.path not in self.routes:
            return 404, f"no endpoint at {url.path}"
        headers = CIMultiDict(request.headers)
        for name in (hdrs.AUTHORIZATION, hdrs.SEC_WEBSOCKET_PROTOCOL, hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH,
                     hdrs.TRANSFER_ENCODING, hdrs.EXPECT):
            headers.popall(name, None)
        headers.update({hdrs.UPGRADE: "websocket", hdrs.CONNECTION: "Upgrade"})
        if token:
            headers[hdrs.AUTHORIZATION] = f"Bearer {token}"
        handshake = request.clone(method=hdrs.METH_GET, rel_url=url, headers=CIMultiDictProxy(headers))
        checked = self._admit(handshake)
        if isinstance(checked, web.Response):
            return checked.status, (checked.text or "").strip()
        live, remote, _ = checked
        del checked
        try:
            verdict = await self._identify(handshake, live, remote, None)
        finally:
            self.admission.release(handshake.path, remote)
        if isinstance(verdict, web.Response):
            return verdict.status, (verdict.text or "").strip()
        return 101, "the endpoint's auth admits this handshake"

    async def publish(self, path: str, room: str, data: Any) -> None:
        """Send ``{"type": "publish", "room", "data"}`` to ``room`` subscribers on every instance.

        Raises BrokerError when the broker did not take it (nothing was delivered), and
        ValueError when ``data`` has no JSON form (NaN and infinities have none).
        """
        message = json.dumps({"type": "publish", "room": room, "data": data}, separators=(",", ":"),
                             ensure_ascii=False, allow_nan=False)
        await self.hub.publish(path, room, message, strict=True)

    async def shutdown(self, code: int, timeout: float) -> None:  # noqa: ASYNC109 - a drain budget, not a wait
        """Drain within ``timeout`` seconds: close every connection with ``code``, let
        ``on_disconnect`` run, stop every handler, close the broker. Whatever is still
        running at the deadline is cancelled and named in one log line."""
        if self._stopped:
            return
        self._stopped = True
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        reason = "service restart" if code == CloseCode.SERVICE_RESTART else "server shutting down"
        for session in list(self.sessions):
            own = session.live.handler.shutdown_close  # a protocol's own (Centrifugo's 3001)
            session.close(*(own or (code, reason)))
        # Keep the last second (a quarter of a short timeout) for the handlers and the broker.
        reserve = min(1.0, timeout / 4)
        stuck = []
        if not await self._drained(deadline - reserve):
            for session in list(self.sessions):
                session.abort(code, "shutdown timeout")
            if not await self._drained(deadline - reserve / 2):
                stuck = [f"on_disconnect of {s.conn.id} ({s.live.path})" for s in self.sessions]
                for session in list(self.sessions):
                    if session.task is not None:
                        session.task.cancel()
        endpoints = set(self.routes.values()) | self._retired
        stops = {loop.create_task(live.stop()): f"shutdown() of {live.path}" for live in endpoints}
        stops[loop.create_task(self.hub.broker.close())] = "the broker's close"
        for task in self._closers:
            task.cancel()  # their authenticators are closed right here
        for name, authenticator in self.authenticators.items():
            stops[loop.create_task(authenticator.close())] = f"authenticator {name}'s close"
        for authenticator in self._retired_authenticators:
            stops[loop.create_task(authenticator.close())] = f"replaced authenticator {authenticator.name}'s close"
        _, pending = await asyncio.wait(stops, timeout=max(0.0, deadline - loop.time()))
        for task in pending:
            task.cancel()
        stuck += [stops[task] for task in pending]
        if stuck:
            log.warning("shutdown timeout (%gs): cancelled %s", timeout, ", ".join(stuck))
        self._services.timers.close()

    async def _drained(self, deadline: float) -> bool:
        """Wait until every session has ended, or ``deadline`` (loop time); False if some remain."""
        if self.sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._all_closed.wait()
        return not self.sessions
