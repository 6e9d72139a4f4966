"""The aiohttp application: the page, health, metrics, the HTTP API and the gateway."""

from __future__ import annotations

import asyncio
import hmac
import logging
import mimetypes
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .broker import Broker, create_broker
from .config import Registry, Settings, load_config
from .errors import BrokerError, ConfigError
from .gateway import aiohttp_seam
from .gateway.endpoint import LiveEndpoint
from .gateway.hub import Hub
from .gateway.router import Gateway, host_refusal
from .handler import Handler as PluginHandler
from .handler import HttpCall
from .observe.stats import GatewayStats
from .policy.probes import PROBE_EVERY
from .prepare import prepare

__all__ = ["BROKER", "GATEWAY", "STATS", "build_app", "make_runner", "reload_config"]

log = logging.getLogger("wsgate.app")

_HANDLER_GRACE = 0.5
_CLOSE_WAIT = 1.0  # how long a handshake closed at once waits for the client's close frame
_CLOSE_READ = 64 * 1024  # the largest message read (and dropped) while it waits
# Answer whatever Host they name: probes often use the pod's IP (see server.allowed_hosts).
_ANY_HOST = frozenset({"/healthz", "/readyz"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

GATEWAY = web.AppKey("gateway", Gateway)
BROKER = web.AppKey("broker", Broker)
STATS = web.AppKey("stats", GatewayStats)
REGISTRY = web.AppKey("registry", Registry)
# The page ships as package data (the repository's web/ installs as wsgate.web), so it
# is found however wsgate was installed: venv, --user, editable or zipapp.
WEB_PACKAGE = "wsgate.web"


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str
    room: str
    data: Any = None


class IdentityProbe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(max_length=8192)
    token: str | None = Field(default=None, max_length=16384)


def _authorized(request: web.Request) -> bool:
    """The API exists only with a token (404 otherwise) and wants it as a bearer."""
    token = request.app[GATEWAY].settings.config.api.token
    if token is None:
        raise web.HTTPNotFound()
    sent = request.headers.get("Authorization", "")
    return sent.startswith("Bearer ") and hmac.compare_digest(sent[7:].encode(), token.encode())


def _unauthorized() -> web.Response:
    return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                             headers={"WWW-Authenticate": "Bearer"})


@aiohttp_jinja2.template("index.html")
async def page(request: web.Request) -> dict[str, Any]:
    routes = request.app[GATEWAY].routes.values()
    return {
        "title": "wsgate",
        "endpoints": [
            {"path": r.path, "handler": r.endpoint.handler_ref, "subprotocols": r.endpoint.policy.subprotocols,
             "auth": r.endpoint.policy.auth}
            for r in routes
        ],
    }


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    if request.app[GATEWAY].draining:
        return web.Response(status=503, text="draining\n")
    if not request.app[BROKER].healthy:
        return web.Response(status=503, text="broker unavailable\n")
    return web.Response(text="ready\n")


async def metrics(request: web.Request) -> web.Response:
    from .observe.metrics import render_metrics  # prometheus_client: only for those who scrape

    body = render_metrics(request.app[STATS])
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _read_body(request: web.Request) -> bytes | web.Response:
    timeout = request.app[GATEWAY].settings.config.server.handshake_timeout
    try:
        # A body that never finishes would hold the connection (and a task) forever.
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        return web.json_response({"error": f"the request body did not arrive within {timeout:g}s"}, status=408)


async def probe_identity(request: web.Request) -> web.Response:
    """``POST /api/handshake-check``: how the endpoint would answer a handshake.

    404 unless ``api.handshake_check`` is on; 429 when the client asked too often.
    """
    gateway = request.app[GATEWAY]
    if not gateway.settings.config.api.handshake_check:
        return web.json_response({"error": "POST /api/handshake-check is off; it answers with "
                                  "api: {handshake_check: true} in the config"}, status=404)
    if not gateway.may_probe(request):
        return web.json_response({"error": "too many handshake checks from your address; retry in a minute"},
                                 status=429, headers={hdrs.RETRY_AFTER: f"{PROBE_EVERY:g}"})
    unread = request.clone()  # the handshake is made from it: aiohttp clones only unread requests
    raw = await _read_body(request)
    if isinstance(raw, web.Response):
        return raw
    try:
        body = IdentityProbe.model_validate_json(raw)
    except ValidationError:
        return web.json_response({"error": 'send {"path": "/endpoint?query", "token": "..." or null}'}, status=400)
    status, text = await gateway.probe_identity(unread, body.path, body.token)
    return web.json_response({"status": status, "text": text})


async def publish(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _unauthorized()
    raw = await _read_body(request)
    if isinstance(raw, web.Response):
        return raw
    try:
        body = PublishRequest.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return web.json_response({"error": f"bad publish request: {problems}"}, status=400)
    gateway = request.app[GATEWAY]
    if body.endpoint not in gateway.routes:
        return web.json_response({"error": f"no endpoint {body.endpoint!r}; "
                                  f"endpoints: {', '.join(gateway.routes)}"}, status=400)
    try:
        await gateway.publish(body.endpoint, body.room, body.data)
    except ValueError:
        return web.json_response({"error": "bad publish request: data: NaN and Infinity are not JSON"}, status=400)
    except BrokerError as exc:
        return web.json_response({"error": f"broker unavailable: {exc}"}, status=503)
    return web.json_response({"published": True})


async def endpoint_api(request: web.Request) -> web.StreamResponse:
    """``POST <endpoint path>/api/<method>``: the endpoint handler's own HTTP API."""
    gateway = request.app[GATEWAY]
    path, method = "/" + request.match_info["path"], request.match_info["method"]
    live = gateway.routes.get(path)
    if live is None or type(live.handler).on_http is PluginHandler.on_http:
        return web.json_response({"error": f"no endpoint {path!r} with an HTTP API"}, status=404)
    return await _call_handler(request, live, method)


async def prefixed_api(request: web.Request) -> web.StreamResponse | None:
    """A GET or POST under a handler's ``http_prefixes``, answered by its ``on_http``;
    None when no handler claims the path (the caller answers as it would have)."""
    if request.method not in ("GET", "POST"):
        return None
    gateway = request.app[GATEWAY]
    path = request.path
    for live in gateway.routes.values():
        for prefix in live.handler.http_prefixes:
            if path.startswith(prefix) and len(path) > len(prefix):
                refused = host_refusal(request, gateway.settings.config.server)
                if refused is not None:
                    return refused
                return await _call_handler(request, live, path[len(prefix):])
    return None


async def _call_handler(request: web.Request, live: LiveEndpoint, method: str) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    raw = await _read_body(request)
    if isinstance(raw, web.Response):
        return raw
    call = HttpCall(method, request.headers, raw, gateway.client(request)[0], request.method, request.path,
                    dict(request.query))
    try:
        answer = await live.handler.on_http(call)
    except Exception:
        live.stats.handler_errors += 1
        live.logger.exception("on_http(%r) of %s failed", method, live.path)
        return web.json_response({"error": "internal error"}, status=500)
    if answer.close is not None and _is_handshake(request):
        return await _close_at_once(request, live, answer.close, answer.close_message)
    return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)


def _is_handshake(request: web.Request) -> bool:
    return request.method == hdrs.METH_GET and request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"


async def _close_at_once(request: web.Request, live: LiveEndpoint, close: tuple[int, str],
                         message: str | None) -> web.StreamResponse:
    """``HttpAnswer.websocket_close``: upgrade, send ``message``, close with ``close``.

    The close waits _CLOSE_WAIT for the client's close frame, and the whole for at most the
    handshake timeout: a client that never reads nor answers cannot hold the task."""
    code, reason = close
    ws = web.WebSocketResponse(timeout=_CLOSE_WAIT, autoping=False, compress=False, max_msg_size=_CLOSE_READ)
    try:
        await ws.prepare(request)  # a handshake aiohttp finds malformed raises its 400 here
    except (UnicodeError, ValueError):
        return web.Response(status=400, text="malformed WebSocket handshake headers\n")
    except ConnectionError:
        return web.Response(status=400)  # the client left during the handshake; nobody reads this
    live.stats.handshake_closes[code] += 1
    log.info("handshake on %s closed at once by %s's handler: %d %s (from %s)", request.path, live.path, code,
             reason, request.app[GATEWAY].client(request)[0])
    try:
        async with asyncio.timeout(request.app[GATEWAY].settings.config.server.handshake_timeout):
            if message is not None:
                await ws.send_str(message)
            await ws.close(code=code, message=reason.encode())
    except (TimeoutError, ConnectionError):
        pass  # the client left, or would not read: aiohttp ends the connection when this returns
    return ws


async def reload(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _unauthorized()
    try:
        await reload_config(request.app)
    except ConfigError as exc:
        return web.json_response({"reloaded": False, "errors": [str(p) for p in exc.problems]}, status=400)
    return web.json_response({"reloaded": True, "endpoints": list(request.app[GATEWAY].routes)})


async def reload_config(app: web.Application) -> None:
    """Re-read the config file; on error keep the current one and raise ConfigError."""
    gateway = app[GATEWAY]
    settings = load_config(gateway.settings.file, app[REGISTRY])
    authenticators = prepare(settings)  # a broken TLS pair fails the reload too
    server = gateway.settings.config.server
    if settings.config.server != server or settings.config.broker != gateway.settings.config.broker:
        log.warning("reload: server and broker settings change only on restart; kept the current ones")
    config = settings.config.model_copy(update={"server": server, "broker": gateway.settings.config.broker})
    await gateway.reload(settings.model_copy(update={"config": config}), authenticators)
    log.info("reloaded %s: endpoints %s", settings.file, ", ".join(gateway.routes))


async def static(request: web.Request) -> web.Response:
    """A file of the page's static/ folder; any other name (traversal included) is 404."""
    parts = request.match_info["name"].split("/")
    if any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts):
        raise web.HTTPNotFound()
    target = files(WEB_PACKAGE).joinpath("static", *parts)
    if not target.is_file():
        raise web.HTTPNotFound()
    content_type = mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"
    return web.Response(body=target.read_bytes(), content_type=content_type,
                        headers={"Cache-Control": "no-cache"})


async def expect_continue(request: web.Request) -> None:
    """aiohttp's own handler, minus echoing the value: a non-ASCII one made it answer 500."""
    if request.version >= (1, 1) and request.headers.get("Expect"):
        if request.headers["Expect"].lower() != "100-continue":
            raise web.HTTPExpectationFailed(text="the only Expect this server knows is 100-continue\n")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


def make_runner(app: web.Application) -> web.AppRunner:
    """An AppRunner with wsgate's server settings applied."""
    server = app[GATEWAY].settings.config.server
    # aiohttp's keep-alive timer runs from TCP accept until a request is complete, so
    # it also drops clients that send nothing, or their headers a byte at a time.
    # Shutdown is bounded by the gateway's own drain (on_shutdown), which has ended every
    # WebSocket by the time aiohttp waits for its handlers: a second wait is not needed.
    return web.AppRunner(app, handle_signals=False, access_log=None,
                         shutdown_timeout=_HANDLER_GRACE, keepalive_timeout=server.handshake_timeout)


def build_app(settings: Settings, registry: Registry | None = None) -> web.Application:
    """The application for validated ``settings``; connects the broker on startup.

    Builds the authenticators (ConfigError if a file or hook the config names is
    unusable); the gateway holds them, and closes them when it stops. DependencyError
    if the installed aiohttp is not one the gateway can run on.
    """
    aiohttp_seam.check()
    authenticators = prepare(settings)
    app = web.Application()
    stats = GatewayStats()
    broker = create_broker(settings.config.broker)
    app[STATS] = stats
    app[BROKER] = broker
    app[REGISTRY] = registry or Registry()
    app[GATEWAY] = Gateway(settings, Hub(broker, stats), stats, authenticators)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await broker.start()
        await app[GATEWAY].start()
        yield  # on_shutdown (below) has drained the gateway and closed the broker by now

    async def close_sockets(app: web.Application) -> None:
        gateway = app[GATEWAY]
        await gateway.shutdown(gateway.shutdown_code, gateway.settings.config.server.shutdown_timeout)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_sockets)
    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader(WEB_PACKAGE, "templates"), autoescape=True)
    # Every route but the probes refuses a Host that server.allowed_hosts does not allow
    # (DNS rebinding). Not with a middleware: aiohttp would keep its coroutine, and the
    # one it adds with any middleware, alive for as long as each WebSocket stays open
    # (about 600 bytes a connection). The gateway's route checks in its handshake policy.
    for path, handler in (("/", page), ("/static/{name:.+}", static), ("/metrics", metrics)):
        app.router.add_get(path, _host_checked(handler), expect_handler=expect_continue)
    for path, handler in (("/healthz", healthz), ("/readyz", readyz)):
        app.router.add_get(path, handler, expect_handler=expect_continue)
    for path, handler in (("/api/publish", publish), ("/api/reload", reload), ("/api/handshake-check", probe_identity)):
        app.router.add_post(path, _host_checked(handler), expect_handler=expect_continue)
    app.router.add_post("/{path:.+}/api/{method:[A-Za-z_]+}", _host_checked(endpoint_api),
                        expect_handler=expect_continue)
    app[GATEWAY].prefixed_api = prefixed_api  # a GET under a handler's http_prefixes
    app.router.add_get("/{tail:.*}", app[GATEWAY].handle, expect_handler=expect_continue)
    # Any other method on any path: a handler's http_prefixes, or the Host check, then
    # the 405 aiohttp would give.
    app.router.add_route("*", "/{tail:.*}", _prefixed_or(_host_checked(_method_not_allowed)))
    return app


def _prefixed_or(handler: Handler) -> Handler:
    """A request under a handler's ``http_prefixes`` goes to it; any other to ``handler``."""

    async def route(request: web.Request) -> web.StreamResponse:
        answer = await prefixed_api(request)
        return answer if answer is not None else await handler(request)

    return route


def _host_checked(handler: Handler) -> Handler:
    """``handler`` behind the Host check; /healthz and /readyz answer any host (see _ANY_HOST)."""

    async def checked(request: web.Request) -> web.StreamResponse:
        if request.path not in _ANY_HOST:
            refused = host_refusal(request, request.app[GATEWAY].settings.config.server)
            if refused is not None:
                return refused
        return await handler(request)

    return checked


async def _method_not_allowed(request: web.Request) -> web.StreamResponse:
    """405 with the methods the routes of this path take, as aiohttp answers without this route."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        allowed |= (await resource.resolve(request))[1]
    allowed.discard(hdrs.METH_ANY)
    raise web.HTTPMethodNotAllowed(request.method, allowed)
