"""The aiohttp application: the page, health, metrics, the HTTP API and the gateway."""

from __future__ import annotations

import hmac
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from .broker import Broker, create_broker
from .config import Settings, load_config
from .errors import BrokerError, ConfigError
from .gateway import Gateway
from .hub import Hub
from .metrics import GatewayStats, render_metrics
from .registry import Registry

__all__ = ["BROKER", "GATEWAY", "STATS", "build_app", "make_runner", "reload_config", "web_root"]

log = logging.getLogger("wsgate.app")

GATEWAY = web.AppKey("gateway", Gateway)
BROKER = web.AppKey("broker", Broker)
STATS = web.AppKey("stats", GatewayStats)
REGISTRY = web.AppKey("registry", Registry)
STATIC_ROOT = web.AppKey("static_root", Path)


def web_root() -> Path:
    """The ``web/`` folder: beside the package in a checkout, else under sys.prefix."""
    beside = Path(__file__).resolve().parent.parent / "web"
    return beside if beside.is_dir() else Path(sys.prefix) / "share" / "wsgate" / "web"


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str
    room: str
    data: Any = None


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
            {"path": r.path, "handler": r.endpoint.handler_ref, "subprotocols": r.endpoint.policy.subprotocols}
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
    body = render_metrics(request.app[STATS])
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def publish(request: web.Request) -> web.Response:
    if not _authorized(request):
        return _unauthorized()
    try:
        body = PublishRequest.model_validate_json(await request.read())
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
    except BrokerError as exc:
        return web.json_response({"error": f"broker unavailable: {exc}"}, status=503)
    return web.json_response({"published": True})


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
    server = gateway.settings.config.server
    if settings.config.server != server or settings.config.broker != gateway.settings.config.broker:
        log.warning("reload: server and broker settings change only on restart; kept the current ones")
    config = settings.config.model_copy(update={"server": server, "broker": gateway.settings.config.broker})
    await gateway.reload(settings.model_copy(update={"config": config}))
    log.info("reloaded %s: endpoints %s", settings.file, ", ".join(gateway.routes))


async def static(request: web.Request) -> web.FileResponse:
    """A file under web/static/; anything outside it (traversal included) is 404."""
    root = request.app[STATIC_ROOT]
    target = (root / request.match_info["name"]).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(target)


def make_runner(app: web.Application) -> web.AppRunner:
    """An AppRunner with wsgate's server settings applied."""
    server = app[GATEWAY].settings.config.server
    # aiohttp's keep-alive timer runs from TCP accept until a request is complete, so
    # it also drops clients that send nothing, or their headers a byte at a time.
    return web.AppRunner(app, handle_signals=False, access_log=None,
                         shutdown_timeout=server.shutdown_timeout, keepalive_timeout=server.handshake_timeout)


def build_app(settings: Settings, registry: Registry | None = None) -> web.Application:
    """The application for validated ``settings``; connects the broker on startup."""
    app = web.Application()
    stats = GatewayStats()
    broker = create_broker(settings.config.broker)
    app[STATS] = stats
    app[BROKER] = broker
    app[REGISTRY] = registry or Registry()
    app[GATEWAY] = Gateway(settings, Hub(broker, stats), stats)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await broker.start()
        await app[GATEWAY].start()
        yield  # on_shutdown (below) has closed every connection by now
        await broker.close()

    async def close_sockets(app: web.Application) -> None:
        gateway = app[GATEWAY]
        await gateway.shutdown(gateway.shutdown_code, gateway.settings.config.server.shutdown_timeout)

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(close_sockets)
    root = web_root()
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(root / "templates"), autoescape=True)
    app.router.add_get("/", page)
    app[STATIC_ROOT] = (root / "static").resolve()
    app.router.add_get("/static/{name:.+}", static)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/api/publish", publish)
    app.router.add_post("/api/reload", reload)
    app.router.add_get("/{tail:.*}", app[GATEWAY].handle)
    return app

