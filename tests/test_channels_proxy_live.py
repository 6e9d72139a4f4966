"""The channels handler's Centrifugo HTTP proxy through a real backend and a real wsgate process.

The backend is an aiohttp app on 127.0.0.1 in a thread of its own (it outlives each test's
event loop, so one wsgate process serves the module). It answers by what the request
carries (the connect ``data``, the channel name, the rpc method), so tests need no shared
state, and records every request: path, headers and JSON body, in Centrifugo's shape
(internal/proxyproto/proxy.proto in centrifugal/centrifugo).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from channels_kit import RawClient
from conftest import WsgateProcess, serve_app
from websockets.asyncio.client import connect

API_KEY = "key-" + uuid.uuid4().hex
PATH = "/connection/websocket"
TIMEOUT = 0.5  # the proxy timeout, seconds
WAIT = 3.0
COOKIE = "session=" + uuid.uuid4().hex


@dataclass
class Seen:
    event: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Backend:
    """The team's backend: answers each proxied event by what the request carries."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        event = request.match_info["event"]
        body = await request.json()
        self.seen.append(Seen(event, dict(request.headers), body))
        return await getattr(self, event)(body)

    async def connect(self, body: dict[str, Any]) -> web.StreamResponse:
        data = body.get("data") or {}
        act = data.get("act", "ok")
        if act == "error":
            return web.json_response({"error": {"code": 1000, "message": "custom refusal", "temporary": False}})
        if act == "disconnect":
            return web.json_response({"disconnect": {"code": 4501, "reason": "go away"}})
        if act == "sleep":
            await asyncio.sleep(TIMEOUT * 4)
        if act == "garbage":
            return web.Response(text="{not json", content_type="application/json")
        if act == "status":
            return web.json_response({"result": {"user": "x"}}, status=500)
        if act == "null":
            return web.json_response({"result": None})
        user = data.get("user", "proxied")
        result = {"user": user, "data": {"welcome": user}, "info": {"via": "proxy"},
                  "channels": data.get("channels", [])}
        if act == "short":  # expires soon: the refresh proxy decides what then
            result["expire_at"] = int(time.time()) + 2
        return web.json_response({"result": result})

    async def subscribe(self, body: dict[str, Any]) -> web.StreamResponse:
        channel = body["channel"]
        if channel.startswith("px:deny"):
            return web.json_response({"error": {"code": 1001, "message": "no entry"}})
        if channel.startswith("px:drop"):
            return web.json_response({"disconnect": {"code": 4502, "reason": "dropped"}})
        result: dict[str, Any] = {"data": {"granted": channel}, "info": {"seat": 7}}
        if channel.startswith("px:short"):  # expires soon: the sub_refresh proxy decides what then
            result["expire_at"] = int(time.time()) + 2
        return web.json_response({"result": result})

    async def publish(self, body: dict[str, Any]) -> web.StreamResponse:
        data = body.get("data")
        if isinstance(data, dict) and data.get("act") == "deny":
            return web.json_response({"error": {"code": 1002, "message": "not you"}})
        if isinstance(data, dict) and data.get("act") == "keep":
            return web.json_response({"result": {}})
        return web.json_response({"result": {"data": {"rewritten": data, "by": body.get("user")}}})

    async def rpc(self, body: dict[str, Any]) -> web.StreamResponse:
        method = body.get("method")
        if method == "fail":
            return web.json_response({"error": {"code": 1003, "message": "rpc refused", "temporary": True}})
        if method == "garbage":
            return web.Response(text="[]", content_type="application/json")
        return web.json_response({"result": {"data": {"echo": body.get("data"), "user": body.get("user")}}})

    async def refresh(self, body: dict[str, Any]) -> web.StreamResponse:
        if body.get("user") == "ends":
            return web.json_response({"result": {"expired": True}})
        return web.json_response({"result": {"expire_at": int(time.time()) + 60}})

    async def sub_refresh(self, body: dict[str, Any]) -> web.StreamResponse:
        if body.get("channel", "").startswith("px:short-end"):
            return web.json_response({"result": {"expired": True}})
        return web.json_response({"result": {"expire_at": int(time.time()) + 60, "info": {"seat": 8}}})

    def requests(self, event: str, client: str | None = None) -> list[Seen]:
        return [s for s in list(self.seen) if s.event == event and (client is None or s.body.get("client") == client)]


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    backend = Backend()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/centrifugo/{event}", backend.handle)
        async with serve_app(app, shutdown_timeout=1) as url:
            backend.url = url
            ready.set()
            await stop.wait()
        # A handler still asleep (the timeout case) ends here, not in a closed loop.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the backend did not start"
    yield backend
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


@pytest.fixture(scope="module")
def server(backend: Backend, module_wsgate: Callable[..., WsgateProcess]) -> WsgateProcess:
    proxy = {event: f"{backend.url}/centrifugo/{event}"
             for event in ("connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc")}
    config = {"endpoints": [{
        "path": PATH, "handler": "channels", "origins": "*",
        "options": {"api_key": API_KEY, "proxy": {**proxy, "timeout": f"{TIMEOUT}s"}, "namespaces": {
            "": {"subscribe": "anyone", "publish": "subscribers"},
            "px": {"subscribe": "proxy", "publish": "proxy"},
        }},
    }]}
    return module_wsgate(config, "channels-proxy-live")


@contextlib.asynccontextmanager
async def client(server: WsgateProcess) -> AsyncIterator[RawClient]:
    async with connect(server.ws_url + PATH, open_timeout=WAIT, close_timeout=1,
                       additional_headers={"Cookie": COOKIE}) as ws:
        c = RawClient(ws, wait=WAIT)
        try:
            yield c
        finally:
            await c.stop()


@contextlib.asynccontextmanager
async def connected(server: WsgateProcess, **data: Any) -> AsyncIterator[tuple[RawClient, dict[str, Any]]]:
    async with client(server) as c:
        reply = await c.call("connect", {"data": data, "name": "py", "version": "1.2"})
        assert "connect" in reply, reply
        yield c, reply["connect"]


async def api_publish(server: WsgateProcess, channel: str, data: Any) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session, \
            session.post(f"{server.url}{PATH}/api/publish", json={"channel": channel, "data": data},
                         headers={"X-API-Key": API_KEY}) as resp:
        text = await resp.text()
    assert resp.status == 200, text
    assert "error" not in json.loads(text), text


BASE = {"transport": "websocket", "protocol": "json", "encoding": "json"}


# --- connect ----------------------------------------------------------------------------------

async def test_the_connect_proxy_authenticates_a_client_without_a_token(server: WsgateProcess,
                                                                         backend: Backend) -> None:
    channel = "srv-" + uuid.uuid4().hex[:8]
    async with connected(server, user="alice", channels=[channel]) as (c, result):
        assert result["data"] == {"welcome": "alice"}, result
        assert channel in result.get("subs", {}), result  # a server-side subscription
        [seen] = backend.requests("connect", result["client"])
        assert seen.body == {"client": result["client"], **BASE, "name": "py", "version": "1.2",
                             "data": {"user": "alice", "channels": [channel]}}, seen.body
        assert seen.headers.get("Cookie") == COOKIE, seen.headers
        assert seen.headers.get("Content-Type", "").startswith("application/json"), seen.headers
        await api_publish(server, channel, {"to": "alice"})
        assert (await c.pub(channel))["data"] == {"to": "alice"}
        presence_user = await c.call("subscribe", {"channel": "px:allow-" + uuid.uuid4().hex[:6]})
        assert "subscribe" in presence_user, presence_user
        assert backend.requests("subscribe", result["client"])[-1].body["user"] == "alice"


async def test_a_connect_proxy_error_is_passed_on(server: WsgateProcess) -> None:
    async with client(server) as c:
        reply = await c.call("connect", {"data": {"act": "error"}})
        assert reply["error"] == {"code": 1000, "message": "custom refusal"}, reply


async def test_a_connect_proxy_disconnect_closes_with_its_code(server: WsgateProcess) -> None:
    async with client(server) as c:
        await c.ws.send(json.dumps({"connect": {"data": {"act": "disconnect"}}, "id": 1}))
        assert await c.closed() == (4501, "go away")


@pytest.mark.parametrize("act", ["garbage", "status", "null"])
async def test_a_broken_connect_answer_is_error_100_or_no_credentials(server: WsgateProcess, act: str) -> None:
    """Not JSON or not 200: internal error, temporary. A null result: no credentials, 3501."""
    async with client(server) as c:
        if act == "null":
            await c.ws.send(json.dumps({"connect": {"data": {"act": act}}, "id": 1}))
            async with asyncio.timeout(WAIT):
                first = await c.queue.get()
            assert first is None, f"answered {first} instead of closing"
            assert c.close == (3501, "bad request")
            return
        reply = await c.call("connect", {"data": {"act": act}})
        assert reply["error"] == {"code": 100, "message": "internal server error", "temporary": True}, reply


async def test_a_connect_proxy_timeout_is_error_100_and_the_server_goes_on(server: WsgateProcess) -> None:
    async with client(server) as slow:
        started = time.monotonic()
        await slow.ws.send(json.dumps({"connect": {"data": {"act": "sleep"}}, "id": 1}))
        # Meanwhile another client is served.
        async with connected(server, user="bob") as (_, result):
            assert result["data"] == {"welcome": "bob"}
        async with asyncio.timeout(WAIT):
            reply = await slow.queue.get()
        elapsed = time.monotonic() - started
        assert reply == {"id": 1, "error": {"code": 100, "message": "internal server error", "temporary": True}}
        assert TIMEOUT * 0.8 <= elapsed <= TIMEOUT + 1.0, elapsed


# --- subscribe --------------------------------------------------------------------------------

async def test_the_subscribe_proxy_allows_with_data_and_refuses(server: WsgateProcess, backend: Backend) -> None:
    channel = "px:allow-" + uuid.uuid4().hex[:8]
    async with connected(server, user="carol") as (c, result):
        reply = await c.call("subscribe", {"channel": channel, "data": {"why": "curious"}})
        assert reply["subscribe"].get("data") == {"granted": channel}, reply
        [seen] = backend.requests("subscribe", result["client"])
        assert seen.body == {"client": result["client"], **BASE, "user": "carol", "channel": channel,
                             "data": {"why": "curious"}}, seen.body
        assert seen.headers.get("Cookie") == COOKIE
        await api_publish(server, channel, "hello")
        assert (await c.pub(channel))["data"] == "hello"
        refused = await c.call("subscribe", {"channel": "px:deny-" + uuid.uuid4().hex[:8]})
        assert refused["error"] == {"code": 1001, "message": "no entry"}, refused
        assert "presence" not in await c.call("unsubscribe", {"channel": channel})  # still served


async def test_a_subscribe_proxy_disconnect_closes(server: WsgateProcess) -> None:
    async with connected(server) as (c, _):
        await c.ws.send(json.dumps({"subscribe": {"channel": "px:drop"}, "id": 9}))
        assert await c.closed() == (4502, "dropped")


async def test_a_channel_outside_proxy_namespaces_never_reaches_the_proxy(server: WsgateProcess,
                                                                          backend: Backend) -> None:
    async with connected(server) as (c, result):
        assert "subscribe" in await c.call("subscribe", {"channel": "plain"})
        assert backend.requests("subscribe", result["client"]) == []


# --- publish ----------------------------------------------------------------------------------

async def test_the_publish_proxy_rewrites_and_refuses(server: WsgateProcess, backend: Backend) -> None:
    channel = "px:allow-" + uuid.uuid4().hex[:8]
    async with connected(server, user="dan") as (pub, result), connected(server, user="eve") as (sub, _):
        assert "subscribe" in await sub.call("subscribe", {"channel": channel})
        refused = await pub.call("publish", {"channel": channel, "data": {"act": "deny"}})
        assert refused["error"] == {"code": 1002, "message": "not you"}, refused
        assert (await pub.call("publish", {"channel": channel, "data": {"n": 1}}))["publish"] == {}
        # The refused one never went out: the first publication is the rewritten second one.
        assert (await sub.pub(channel))["data"] == {"rewritten": {"n": 1}, "by": "dan"}
        assert (await pub.call("publish", {"channel": channel, "data": {"act": "keep"}}))["publish"] == {}
        assert (await sub.pub(channel))["data"] == {"act": "keep"}  # no data in the result: the original
        seen = backend.requests("publish", result["client"])
        assert [s.body for s in seen] == [{"client": result["client"], **BASE, "user": "dan", "channel": channel,
                                           "data": d} for d in ({"act": "deny"}, {"n": 1}, {"act": "keep"})]


# --- rpc --------------------------------------------------------------------------------------

async def test_rpc_answers_data_and_errors(server: WsgateProcess, backend: Backend) -> None:
    async with connected(server, user="fay") as (c, result):
        reply = await c.call("rpc", {"method": "echo", "data": {"q": [1, 2]}})
        assert reply["rpc"] == {"data": {"echo": {"q": [1, 2]}, "user": "fay"}}, reply
        failed = await c.call("rpc", {"method": "fail", "data": None})
        assert failed["error"] == {"code": 1003, "message": "rpc refused", "temporary": True}, failed
        broken = await c.call("rpc", {"method": "garbage"})
        assert broken["error"] == {"code": 100, "message": "internal server error", "temporary": True}, broken
        seen = backend.requests("rpc", result["client"])
        assert seen[0].body == {"client": result["client"], **BASE, "user": "fay", "method": "echo",
                                "data": {"q": [1, 2]}}, seen[0].body
        assert seen[0].headers.get("Cookie") == COOKIE


# --- refresh and sub_refresh: the backend extends what it granted -----------------------------

async def test_the_refresh_proxy_extends_or_ends_a_proxied_connection(server: WsgateProcess,
                                                                      backend: Backend) -> None:
    async with connected(server, act="short", user="stays") as (stays, granted), \
            connected(server, act="short", user="ends") as (ends, _):
        assert "expires" not in granted, granted  # the server refreshes it, not the client
        assert await ends.closed(within=WAIT + 3) == (3005, "connection expired")
        reply = await stays.call("subscribe", {"channel": "after-" + uuid.uuid4().hex[:6]})
        assert "subscribe" in reply, reply  # still connected past its first expiry
        [seen] = backend.requests("refresh", granted["client"])
        assert seen.body == {"client": granted["client"], **BASE, "user": "stays"}, seen.body


async def test_the_sub_refresh_proxy_extends_or_ends_a_subscription(server: WsgateProcess,
                                                                    backend: Backend) -> None:
    stay, end = "px:short-stay-" + uuid.uuid4().hex[:6], "px:short-end-" + uuid.uuid4().hex[:6]
    async with connected(server, user="dave") as (c, result):
        for channel in (stay, end):
            reply = await c.call("subscribe", {"channel": channel})
            assert "expires" not in reply["subscribe"], reply
        async with asyncio.timeout(WAIT + 3):
            while True:
                msg = await c.queue.get()
                assert msg is not None, f"closed by the server: {c.close}"
                if "unsubscribe" in msg.get("push", {}):
                    break
        assert msg["push"] == {"channel": end, "unsubscribe": {"code": 2501, "reason": "subscription expired"}}
        await api_publish(server, stay, "still here")
        assert (await c.pub(stay))["data"] == "still here"
        assert {s.body["channel"] for s in backend.requests("sub_refresh", result["client"])} == {stay, end}
