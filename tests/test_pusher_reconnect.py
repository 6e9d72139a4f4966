"""pusher-js (its Node build, tests/node/pusher_reconnect.js) loses its connection to a real
``python -m wsgate`` ``pusher`` endpoint and comes back by itself: after a gateway restart
on the same port, and after its TCP connection was cut (a reset, no close frame). Either way it reconnects without
help, subscribes again to its public, private and presence channels (asking the app's
auth endpoint again) and receives, once each, the events the ``pusher`` SDK triggers after.

A draining gateway closes with 4200 (handlers/pusher, ``Pusher.shutdown_close``), which
Pusher documents as "reconnect at once": pusher-js does, instead of its 1 s back-off. On a
lone instance that attempt finds nothing listening, and pusher-js's next one comes when its
15 s WebSocket timeout ends: behind a load balancer with other instances it lands at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pusher
from aiohttp import web
from conftest import WsgateProcess, run_node, serve_app

APP_ID, KEY, SECRET = "8080", "reconnect-key", "reconnect-secret-0123456789abcdef"
CHANNELS = ["news", "private-feed", "presence-room"]

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]


def gateway_config() -> dict[str, Any]:
    return {"server": {"host": "127.0.0.1"},
            "endpoints": [{"path": f"/app/{KEY}", "handler": "pusher", "origins": "*",
                           "options": {"app_id": APP_ID, "key": KEY, "secret": SECRET}}]}


class Backend:
    """The app: signs subscriptions (and counts them), and runs the script's steps."""

    def __init__(self, drop: Callable[[], Awaitable[dict[str, Any]]], gateway: Callable[[], WsgateProcess]) -> None:
        self.drop, self.gateway = drop, gateway
        self.authorized: dict[str, int] = {}

    def sdk(self) -> pusher.Pusher:
        gw = self.gateway()
        return pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host=gw.host, port=gw.port, ssl=False)

    def app(self) -> web.Application:
        async def auth(request: web.Request) -> web.Response:
            form = parse_qs((await request.read()).decode())
            channel, socket_id, user = form["channel_name"][0], form["socket_id"][0], form["user"][0]
            self.authorized[channel] = self.authorized.get(channel, 0) + 1
            custom = {"user_id": user, "user_info": {"name": user}} if channel.startswith("presence-") else None
            return web.json_response(self.sdk().authenticate(channel=channel, socket_id=socket_id, custom_data=custom))

        async def drop(request: web.Request) -> web.Response:
            return web.json_response(await self.drop())

        async def trigger(request: web.Request) -> web.Response:
            sdk = self.sdk()
            # what the gateway holds now: the new connection's subscriptions, none of the old one's
            news = await asyncio.to_thread(sdk.channel_info, "news", ["subscription_count"])
            users = await asyncio.to_thread(sdk.users_info, "presence-room")
            sent = await asyncio.to_thread(sdk.trigger, CHANNELS, "after", {"n": 1})
            return web.json_response({"sent": sent, "news": news, "users": users})

        app = web.Application()
        app.router.add_post("/pusher/auth", auth)
        app.router.add_post("/step/drop", drop)
        app.router.add_post("/step/trigger", trigger)
        return app


def check_came_back(report: dict[str, Any], backend: Backend) -> None:
    """What both ways of losing the connection must end in."""
    assert report["error"] is None, report
    assert report["stage"] == "done", report
    assert len(report["socketIds"]) == 2, report  # one reconnection, a new socket
    assert report["subscribed"] == dict.fromkeys(CHANNELS, 2), report
    assert backend.authorized == {"private-feed": 2, "presence-room": 2}  # authorized again
    assert report["triggered"] == {"sent": {}, "news": {"occupied": True, "subscription_count": 1},
                                   "users": {"users": [{"id": "alice"}]}}
    assert sorted(e["channel"] for e in report["events"]) == sorted(CHANNELS), report  # each once
    states = [s["state"] for s in report["states"]]
    assert not {"failed", "disconnected"} & set(states[:-1]), report  # never gave up
    assert states[-1] == "disconnected", report  # the script's own goodbye


async def test_pusher_js_comes_back_by_itself_after_a_gateway_restart_on_the_same_port(
        wsgate_process: Start, write_config: WriteConfig) -> None:
    config = write_config(gateway_config())
    current = [wsgate_process(config)]

    async def restart() -> dict[str, Any]:
        port = current[0].port
        exit_code = await asyncio.to_thread(current[0].stop)
        current.append(await asyncio.to_thread(wsgate_process, config, port=port))
        return {"exit": exit_code, "port": current[-1].port}

    backend = Backend(restart, lambda: current[-1])
    async with serve_app(backend.app()) as url:
        report = await run_node("pusher_reconnect.js", current[0].host, str(current[0].port), url, KEY, within=60)
    check_came_back(report, backend)
    assert report["dropped"] == {"exit": 0, "port": current[0].port}
    # The draining gateway said 4200 ("reconnect at once"), and pusher-js did: its next
    # attempt came at once, not after the 1 s it waits when a connection just closes.
    closes = [e for e in report["errors"] if e["code"] == 4200]
    assert closes, report
    retry = next(s for s in report["states"] if s["state"] == "connecting" and s["at"] >= closes[0]["at"])
    assert retry["at"] - closes[0]["at"] < 500, report
    # That attempt finds no gateway (the new one is still starting); pusher-js makes its
    # next one when its 15 s WebSocket timeout ends, and the new gateway takes it.
    back = next(s for s in report["states"] if s["state"] == "connected" and s["at"] > retry["at"])
    assert back["at"] - retry["at"] < 15_000 + 5_000, report


class CuttingProxy:
    """A TCP proxy to the gateway that can cut every connection through it (RST, no close frame)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [client_writer, upstream_writer]
        await asyncio.gather(self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer))

    def cut(self) -> int:
        """Reset every open connection, both ways; how many connections that was."""
        cut = 0
        for writer in self.writers:
            sock = writer.get_extra_info("socket")
            if sock is not None and not writer.is_closing():
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
                writer.transport.abort()
                cut += 1
        self.writers.clear()
        return cut // 2

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[CuttingProxy]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self
            self.cut()


async def test_pusher_js_comes_back_by_itself_after_its_connection_was_cut(
        wsgate_process: Start, write_config: WriteConfig) -> None:
    gw = wsgate_process(write_config(gateway_config()))
    async with CuttingProxy(gw.port).serving() as proxy:

        async def cut() -> dict[str, Any]:
            return {"cut": proxy.cut()}

        backend = Backend(cut, lambda: gw)
        async with serve_app(backend.app()) as url:
            report = await run_node("pusher_reconnect.js", "127.0.0.1", str(proxy.port), url, KEY, within=60)
    check_came_back(report, backend)
    assert report["dropped"] == {"cut": 1}
    assert "unavailable" not in [s["state"] for s in report["states"]], report
    # pusher-js waits 1 s after a connection that closed without a Pusher code, then connects
    assert report["resubscribedAt"] - report["droppedAt"] < 5000, report
