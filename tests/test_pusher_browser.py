"""pusher-js 8.6.0 and Laravel Echo 2.5.0 (its ``pusher`` broadcaster) in a real Chromium
against a real ``python -m wsgate`` ``pusher`` endpoint.

A small aiohttp app plays the web application: it serves the page and the two libraries'
browser builds from tests/node/node_modules, and authorizes private and presence channels
at ``/broadcasting/auth`` with the ``pusher`` Python SDK's own ``authenticate``, knowing the
user by a cookie the page set (as a Laravel or Django session does). The gateway allows
only that app's origin. The SDK triggers events through the gateway's HTTP API; each page
records what its library handed to the application, and the test reads that record.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pusher
import pytest
import pytest_asyncio
from aiohttp import web
from conftest import NODE_DIR, WsgateProcess, serve_app
from playwright.async_api import Browser, Page
from test_browser import launched_chromium

pytestmark = pytest.mark.asyncio(loop_scope="module")

APP_ID, KEY, SECRET = "5150", "browser-key", "browser-secret-0123456789abcdef"
WAIT_MS = 10_000
LIBRARIES = {
    "pusher.js": NODE_DIR / "node_modules" / "pusher-js" / "dist" / "web" / "pusher.js",
    "echo.js": NODE_DIR / "node_modules" / "laravel-echo" / "dist" / "echo.iife.js",
}

# The page: both libraries, a record of what they delivered, and one constructor each with
# the settings docs/pusher.md gives (only the host and port differ from Pusher's service).
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsgate pusher page</title>
<script src="/js/pusher.js"></script>
<script src="/js/echo.js"></script>
<script>
const CONFIG = __CONFIG__;
window.received = [];
function record(entry) { window.received.push(JSON.parse(JSON.stringify(entry))); }
const common = {
  wsHost: CONFIG.wsHost, wsPort: CONFIG.wsPort, forceTLS: false, enabledTransports: ["ws"],
  disableStats: true, cluster: "mt1",
};
function makePusher() {
  const client = new Pusher(CONFIG.key, {
    ...common, channelAuthorization: { endpoint: "/broadcasting/auth", transport: "ajax" },
  });
  client.connection.bind("state_change", (s) => record({ state: s.current }));
  return client;
}
function makeEcho() {
  const echo = new Echo.default({ broadcaster: "pusher", key: CONFIG.key, ...common,
                                  authEndpoint: "/broadcasting/auth" });
  echo.connector.pusher.connection.bind("state_change", (s) => record({ state: s.current }));
  return echo;
}
</script></head>
<body><h1>wsgate pusher page</h1></body></html>
"""

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]


def web_app(sdk_box: list[pusher.Pusher], gateway: dict[str, Any]) -> web.Application:
    """The application: the page, the libraries, and the channel authorization endpoint."""

    async def page(request: web.Request) -> web.Response:
        user = request.query["user"]
        config = {"key": KEY, "wsHost": gateway["host"], "wsPort": gateway["port"]}
        response = web.Response(text=PAGE.replace("__CONFIG__", json.dumps(config)), content_type="text/html")
        response.set_cookie("user", user)  # the "session": whom /broadcasting/auth signs for
        return response

    async def library(request: web.Request) -> web.FileResponse:
        return web.FileResponse(LIBRARIES[request.match_info["name"]])

    async def authorize(request: web.Request) -> web.Response:
        user = request.cookies.get("user")
        form = parse_qs((await request.read()).decode())
        channel, socket_id = form["channel_name"][0], form["socket_id"][0]
        if user is None:
            return web.json_response({"error": "not signed in"}, status=403)
        # private-orders-<user> and private-orders.<user> (Echo's dotted names) belong to <user>
        owner = channel.removeprefix("private-orders").lstrip("-.")
        if channel.startswith("private-orders") and owner != user:
            return web.json_response({"error": "forbidden"}, status=403)
        custom = None
        if channel.startswith("presence-"):
            custom = {"user_id": user, "user_info": {"id": user, "name": user.title()}}
        return web.json_response(sdk_box[0].authenticate(channel=channel, socket_id=socket_id, custom_data=custom))

    app = web.Application()
    app.router.add_get("/page", page)
    app.router.add_get("/js/{name}", library)
    app.router.add_post("/broadcasting/auth", authorize)
    return app


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    for path in LIBRARIES.values():
        if not path.is_file():
            pytest.fail(f"{path} is missing: run the README's test command (bash scripts/test)")
    async with launched_chromium() as chromium:
        yield chromium


class Site:
    """The application and the gateway that serves its pages' sockets."""

    def __init__(self, url: str, gw: WsgateProcess, sdk: pusher.Pusher) -> None:
        self.url, self.gw, self.sdk = url, gw, sdk

    async def trigger(self, channels: str | list[str], event: str, data: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self.sdk.trigger, channels, event, data, **kwargs)


@asynccontextmanager
async def running_site(wsgate_process: Start, write_config: WriteConfig) -> AsyncIterator[Site]:
    sdk_box: list[pusher.Pusher] = []
    gateway: dict[str, Any] = {}
    async with serve_app(web_app(sdk_box, gateway)) as url:
        config = {"server": {"host": "127.0.0.1"},
                  "endpoints": [{"path": f"/app/{KEY}", "handler": "pusher", "origins": [url],
                                 "options": {"app_id": APP_ID, "key": KEY, "secret": SECRET,
                                             "client_events": True}}]}
        gw = wsgate_process(write_config(config))
        gateway.update(host=gw.host, port=gw.port)
        sdk_box.append(pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host=gw.host, port=gw.port,
                                     ssl=False))
        yield Site(url, gw, sdk_box[0])


@asynccontextmanager
async def opened(browser: Browser, site: Site, user: str) -> AsyncIterator[Page]:
    """``user``'s page in a context (cookies) of its own; fails if the page's script threw."""
    context = await browser.new_context()
    errors: list[str] = []
    try:
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        response = await page.goto(f"{site.url}/page?user={user}")
        assert response is not None
        assert response.status == 200
        yield page
        assert errors == [], f"uncaught errors in {user}'s page: {errors}"
    finally:
        await context.close()


async def until(page: Page, predicate: str, what: str) -> None:
    """Wait until ``predicate`` (a JS function of ``window.received``) holds in ``page``."""
    try:
        await page.wait_for_function(f"() => ({predicate})(window.received)", timeout=WAIT_MS)
    except Exception as exc:
        received = await page.evaluate("window.received")
        raise AssertionError(f"not within {WAIT_MS} ms: {what}; the page received {received}") from exc


async def received(page: Page) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = await page.evaluate("window.received")
    return entries


def events(entries: list[dict[str, Any]], channel: str, event: str | None = None) -> list[dict[str, Any]]:
    return [e for e in entries if e.get("channel") == channel and (event is None or e.get("event") == event)]


# pusher-js: every event a channel delivers, with the members a presence channel knows and
# a client event's sender (pusher-js gives bind_global no metadata: client-typing is bound).
SUBSCRIBE = """(name) => {
  const channel = window.client.subscribe(name);
  channel.bind("client-typing", (data, meta) => {
    record({ channel: name, event: "client-typing", data, user_id: meta && meta.user_id });
  });
  channel.bind_global((event, data) => {
    if (event === "client-typing") return;
    const entry = { channel: name, event, data: data === undefined ? null : data };
    if (event === "pusher:subscription_succeeded" && channel.members) {
      entry.data = { count: channel.members.count, me: channel.members.me,
                     ids: Object.keys(channel.members.members).sort() };
    }
    record(entry);
  });
}"""


def succeeded(*channels: str) -> str:
    names = json.dumps(list(channels))
    return (f"(r) => {names}.every((c) => r.some((e) => e.channel === c "
            f"&& e.event === 'pusher:subscription_succeeded'))")


def has(channel: str, event: str) -> str:
    return f"(r) => r.some((e) => e.channel === {json.dumps(channel)} && e.event === {json.dumps(event)})"


async def test_pusher_js_in_chromium_public_private_presence_and_client_events(
        browser: Browser, wsgate_process: Start, write_config: WriteConfig) -> None:
    async with running_site(wsgate_process, write_config) as site, \
            opened(browser, site, "alice") as alice:
        await alice.evaluate("window.client = makePusher()")
        for channel in ("news", "private-orders-alice", "presence-room"):
            await alice.evaluate(SUBSCRIBE, channel)
        await until(alice, succeeded("news", "private-orders-alice", "presence-room"), "alice subscribed")

        async with opened(browser, site, "bob") as bob:
            await bob.evaluate("window.client = makePusher()")
            for channel in ("presence-room", "private-orders-alice"):  # the second is alice's, not his
                await bob.evaluate(SUBSCRIBE, channel)
            await until(bob, succeeded("presence-room"), "bob joined presence-room")
            await until(bob, has("private-orders-alice", "pusher:subscription_error"), "bob refused")
            await until(alice, has("presence-room", "pusher:member_added"), "alice sees bob join")

            assert await site.trigger("news", "headline", {"title": "wsgate"}) == {}
            await site.trigger("private-orders-alice", "shipped", {"order": 7})
            await site.trigger("presence-room", "greet", {"from": "sdk"})
            await until(bob, has("presence-room", "greet"), "bob gets the presence event")
            await until(alice, has("presence-room", "greet"), "alice gets the presence event")

            # a client event from bob reaches alice (with his user_id), not bob himself
            assert await bob.evaluate(
                "window.client.channel('presence-room').trigger('client-typing', { who: 'bob' })") is True
            await until(alice, has("presence-room", "client-typing"), "alice gets bob's client event")
            bob_saw = await received(bob)
        # bob's page is gone: his only connection, so he leaves the channel
        await until(alice, has("presence-room", "pusher:member_removed"), "alice sees bob leave")
        seen = await received(alice)

    assert events(seen, "presence-room", "pusher:subscription_succeeded")[0]["data"] == {
        "count": 1, "me": {"id": "alice", "info": {"id": "alice", "name": "Alice"}}, "ids": ["alice"]}
    assert [e["data"] for e in events(seen, "news", "headline")] == [{"title": "wsgate"}]
    assert [e["data"] for e in events(seen, "private-orders-alice", "shipped")] == [{"order": 7}]
    assert [e["data"] for e in events(seen, "presence-room", "greet")] == [{"from": "sdk"}]
    assert events(seen, "presence-room", "client-typing") == [
        {"channel": "presence-room", "event": "client-typing", "data": {"who": "bob"}, "user_id": "bob"}]
    assert [e["data"] for e in events(seen, "presence-room", "pusher:member_added")] == [
        {"id": "bob", "info": {"id": "bob", "name": "Bob"}}]
    assert [e["data"] for e in events(seen, "presence-room", "pusher:member_removed")] == [
        {"id": "bob", "info": {"id": "bob", "name": "Bob"}}]
    assert [e["state"] for e in seen if "state" in e] == ["connected"]  # and never lost

    assert events(bob_saw, "presence-room", "pusher:subscription_succeeded")[0]["data"]["ids"] == ["alice", "bob"]
    refused = events(bob_saw, "private-orders-alice", "pusher:subscription_error")
    assert [(e["data"]["type"], e["data"]["status"]) for e in refused] == [("AuthError", 403)]
    assert events(bob_saw, "private-orders-alice", "shipped") == []
    assert [e["data"] for e in events(bob_saw, "presence-room", "greet")] == [{"from": "sdk"}]
    assert events(bob_saw, "presence-room", "client-typing") == []  # not echoed to its sender
    assert events(bob_saw, "news") == []


# Laravel Echo: what an application's Echo code hands its callbacks.
ECHO = """(user) => {
  window.echo = makeEcho();
  window.echo.channel("news").listen("HeadlineCreated", (e) => record({ on: "news", e }));
  window.echo.private(`orders.${user}`).listen(".shipped", (e) => record({ on: "orders", e }));
  window.echo.join("chat")
    .here((users) => record({ on: "here", users: users.map((u) => u.id).sort() }))
    .joining((u) => record({ on: "joining", user: u }))
    .leaving((u) => record({ on: "leaving", user: u }))
    .listen("MessagePosted", (e) => record({ on: "chat", e }))
    .listenForWhisper("typing", (e) => record({ on: "whisper", e }));
}"""


def on(kind: str, extra: str = "true") -> str:
    return f"(r) => r.some((e) => e.on === {json.dumps(kind)} && ({extra}))"


async def test_laravel_echo_in_chromium_listen_here_joining_leaving_and_whisper(
        browser: Browser, wsgate_process: Start, write_config: WriteConfig) -> None:
    async with running_site(wsgate_process, write_config) as site, \
            opened(browser, site, "alice") as alice:
        await alice.evaluate(ECHO, "alice")
        await until(alice, on("here"), "alice's here()")
        async with opened(browser, site, "bob") as bob:
            await bob.evaluate(ECHO, "bob")
            await until(bob, on("here"), "bob's here()")
            await until(alice, on("joining"), "alice's joining(bob)")
            # Echo's private channels subscribe once authorized; both are, when this is answered
            info = await asyncio.to_thread(site.sdk.channels_info, "private-", [])
            assert set(info["channels"]) == {"private-orders.alice", "private-orders.bob"}

            # Laravel broadcasts an event by its class name; Echo's listen() adds App\Events\
            await site.trigger("news", "App\\Events\\HeadlineCreated", {"title": "wsgate"})
            await site.trigger("private-orders.alice", "shipped", {"order": 7})
            await site.trigger("presence-chat", "App\\Events\\MessagePosted", {"text": "hi"})
            for page in (alice, bob):
                await until(page, on("news"), "the public event")
                await until(page, on("chat"), "the presence channel's event")
            await until(alice, on("orders"), "alice's private event")

            await bob.evaluate("window.echo.join('chat').whisper('typing', { name: 'bob' })")
            await until(alice, on("whisper"), "bob's whisper")
            await alice.evaluate("window.echo.join('chat').whisper('typing', { name: 'alice' })")
            await until(bob, on("whisper"), "alice's whisper")
            await bob.evaluate("window.echo.leave('chat')")
            await until(alice, on("leaving"), "alice's leaving(bob)")
            bob_saw = await received(bob)
        seen = await received(alice)

    def of(entries: list[dict[str, Any]], kind: str) -> list[Any]:
        return [{k: v for k, v in e.items() if k != "on"} for e in entries if e.get("on") == kind]

    assert of(seen, "here") == [{"users": ["alice"]}]
    assert of(seen, "joining") == [{"user": {"id": "bob", "name": "Bob"}}]
    assert of(seen, "leaving") == [{"user": {"id": "bob", "name": "Bob"}}]
    assert of(seen, "news") == [{"e": {"title": "wsgate"}}]
    assert of(seen, "orders") == [{"e": {"order": 7}}]
    assert of(seen, "chat") == [{"e": {"text": "hi"}}]
    assert of(seen, "whisper") == [{"e": {"name": "bob"}}]
    assert [e["state"] for e in seen if "state" in e] == ["connected"]  # and never lost

    assert of(bob_saw, "here") == [{"users": ["alice", "bob"]}]
    assert of(bob_saw, "joining") == []
    assert of(bob_saw, "orders") == []  # alice's private event is hers alone
    assert of(bob_saw, "news") == [{"e": {"title": "wsgate"}}]
    assert of(bob_saw, "whisper") == [{"e": {"name": "alice"}}]  # not his own
