"""The page's channels panel in a real Chromium against a real ``python -m wsgate``.

The panel speaks the Centrifugo client protocol (JSON) itself; the test publishes from
the server API (as ``cent`` does) and listens with a second client over the websockets
library, so each side of the protocol is checked by something other than the page.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import pytest_asyncio
import websockets
from conftest import WsgateProcess
from playwright.async_api import Browser, Locator, Page, WebSocketRoute, expect
from test_browser import RECORD_CLOSES, launched_chromium, open_page

pytestmark = pytest.mark.asyncio(loop_scope="module")

PATH = "/connection/websocket"
API_KEY = "key-" + uuid.uuid4().hex
SECRET = "secret-" + uuid.uuid4().hex  # HS256 wants 32+ characters
WAIT_S = 5.0
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]


def config(**options: Any) -> dict[str, Any]:
    news = {"history": 10, "presence": True, "join_leave": True, "subscribe": "anyone",
            "publish": "subscribers", "presence_readers": "subscribers", "history_readers": "subscribers"}
    channels = {"path": PATH, "handler": "channels",
                "options": {"token_auth": "app-jwt", "anonymous": True, "api_key": API_KEY,
                            "namespaces": {"": {}, "news": news}, **options}}
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "auth": {"app-jwt": {"jwt": {"algorithms": ["HS256"], "secret": SECRET}}},
        "endpoints": [{"path": "/ws", "handler": "echo"}, channels],
    }


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launched_chromium() as chromium:
        yield chromium


async def api(gw: WsgateProcess, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A server API call as ``cent`` makes it; its ``result``."""
    url = f"{gw.url}{PATH}/api/{method}"
    async with aiohttp.ClientSession() as session, asyncio.timeout(WAIT_S), \
            session.post(url, json=params, headers={"X-API-Key": API_KEY}) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    assert "result" in body, body
    result: dict[str, Any] = body["result"]
    return result


class Listener:
    """A second client over the websockets library; it answers the server's pings."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send(json.dumps({method: params, "id": self.next_id}))
        reply = await self.until(lambda m: m.get("id") == self.next_id)
        assert "error" not in reply, reply
        result: dict[str, Any] = reply[method]
        return result

    async def until(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(WAIT_S):
            while True:
                frame = await self.ws.recv()
                assert isinstance(frame, str)
                for line in filter(None, frame.split("\n")):
                    message = json.loads(line)
                    if message == {}:
                        await self.ws.send("{}")
                    elif wanted(message):
                        return dict(message)


@asynccontextmanager
async def listener(gw: WsgateProcess) -> AsyncIterator[Listener]:
    async with websockets.connect(gw.ws_url + PATH, open_timeout=WAIT_S) as ws:
        client = Listener(ws)
        await client.call("connect", {})
        yield client


def area(page: Page, channel: str) -> Locator:
    return page.locator(f'#channelList article[data-channel="{channel}"]')


def sent(page: Page, method: str) -> Locator:
    return page.locator(f'#commsLogBody tr[data-kind="sent"][data-type="{method}"] td:nth-child(3)')


async def subscribe(page: Page, channel: str) -> None:
    await page.fill("#channelName", channel)
    await page.click("#subscribeButton")
    await expect(area(page, channel)).to_have_attribute("data-state", "subscribed")


async def test_channels_panel_against_the_server_api_and_another_client(
    browser: Browser, wsgate_process: Start, write_config: WriteConfig, artifacts: Path
) -> None:
    # Pings come for everyone at once, so one can reach a client just connected: 2 s to
    # answer is room for a loaded machine, and one comes every 3 s for the log to show.
    gw = wsgate_process(write_config(config(ping_interval="3s", pong_timeout="2s")))
    async with open_page(browser, gw.url + "/") as page:
        await expect(page.locator("#channelsPanel")).to_be_hidden()  # /ws (echo) comes first
        await page.select_option("#endpointPicker", PATH)
        await expect(page.locator("#channelsPanel")).to_be_visible()
        await page.fill("#channelsToken", token("alice"))
        await page.click("#channelsConnectButton")  # opens the socket, then sends connect
        await expect(page.locator("#channelsState")).to_have_text(
            re.compile(r"^Connected, expires in (59\d|600) s$"))
        await expect(page.locator("#channelsClientId")).to_have_text(UUID)
        client_id = await page.locator("#channelsClientId").inner_text()
        await expect(sent(page, "connect")).to_have_text([re.compile(r'^\{"connect":\{"token":"ey[^"]+"\},"id":1\}$')])

        await subscribe(page, "news:a")
        await subscribe(page, "news:b")
        await expect(page.locator("#channelList article")).to_have_count(2)
        await expect(area(page, "news:a").locator(".channel-state")).to_have_text(
            re.compile(r"^subscribed at offset 0, epoch \S+$"))

        published = await api(gw, "publish", {"channel": "news:b", "data": {"n": 1}})
        assert published["offset"] == 1
        pub = area(page, "news:b").locator('.publications li[data-kind="pub"]')
        await expect(pub).to_have_count(1)
        await expect(pub).to_have_attribute("data-offset", "1")
        await expect(pub.locator(".pub-offset")).to_have_text("offset 1")
        await expect(pub.locator(".pub-data")).to_have_text('{"n":1}')
        await expect(area(page, "news:a").locator('.publications li[data-kind="pub"]')).to_have_count(0)

        async with listener(gw) as bob:
            await bob.call("subscribe", {"channel": "news:a"})
            # its own join first (it is a subscriber by then), then the anonymous listener's
            await expect(area(page, "news:a").locator('.publications li[data-kind="join"]')).to_have_text(
                [f'join: client {client_id} (user "alice")', re.compile(r'^join: client \S+ \(user ""\)$')])

            await area(page, "news:a").locator(".publish-data").fill('{"text": "from the page"}')
            await area(page, "news:a").locator(".channel-publish-button").click()
            push = await bob.until(lambda m: "push" in m and "pub" in m["push"])
            assert push["push"]["channel"] == "news:a"
            assert push["push"]["pub"]["data"] == {"text": "from the page"}
            assert push["push"]["pub"]["offset"] == 1
            assert push["push"]["pub"]["info"]["user"] == "alice"
            mine = area(page, "news:a").locator('.publications li[data-kind="pub"]')
            await expect(mine).to_have_attribute("data-offset", "1")
            await expect(mine.locator(".pub-data")).to_have_text('{"text":"from the page"}')
            await expect(area(page, "news:a").locator(".channel-result")).to_have_text(
                'published {"text":"from the page"}')

            await area(page, "news:a").locator(".channel-presence").click()
            presence = area(page, "news:a").locator('.channel-result[data-kind="presence"]')
            await expect(presence).to_contain_text("presence: 2 clients")
            await expect(presence).to_contain_text(f'{client_id}  user "alice"')

            # the server's pings come every second here: both answer, so both stay
            await expect(sent(page, "pong").first).to_have_text("{}", timeout=4000)
            await bob.call("presence", {"channel": "news:a"})

        await area(page, "news:b").locator(".channel-history").click()
        await expect(area(page, "news:b").locator('.channel-result[data-kind="history"]')).to_have_text(
            re.compile(r'^history: 1 publication \(stream offset 1, epoch \S+\)\noffset 1: \{"n":1\}$'))

        await page.fill("#rpcMethod", "whoami")
        await page.fill("#rpcData", '{"q": 1}')
        await page.click("#rpcButton")
        await expect(page.locator('#rpcResult[data-kind="error"]')).to_have_text("rpc: error 104: method not found")
        await expect(sent(page, "rpc")).to_have_text([re.compile(r'^\{"rpc":\{"method":"whoami","data":\{"q":1\}\},')])

        # the raw frames are in the live log, replies and pushes alike
        received = page.locator('#commsLogBody tr[data-kind="received"] td:nth-child(3)')
        pushed = received.filter(has_text=re.compile(r'^\{"push":')).filter(has_text='"channel":"news:b"')
        await expect(pushed.filter(has_text='"data":{"n":1}')).to_have_count(1)
        await expect(received.filter(has_text=re.compile(r"^\{\}$")).first).to_be_attached()  # a ping
        await expect(received.filter(has_text=re.compile(r'^\{"id":1,"connect":'))).to_have_count(1)

        await area(page, "news:b").locator(".channel-unsubscribe").click()
        await expect(area(page, "news:b")).to_have_count(0)
        await expect(page.locator("#channelsNote")).to_have_text("unsubscribed from news:b")
        await page.screenshot(path=artifacts / "browser-channels.png", full_page=True)
    assert "3012" not in gw.output


async def test_errors_show_and_a_reconnect_resubscribes_and_recovers(
    browser: Browser, wsgate_process: Start, write_config: WriteConfig
) -> None:
    gw = wsgate_process(write_config(config()))
    async with open_page(browser, gw.url + "/", init_script=RECORD_CLOSES) as page:
        await page.select_option("#endpointPicker", PATH)
        await page.fill("#channelsToken", token("carol"))
        await page.click("#channelsConnectButton")
        await expect(page.locator("#channelsState")).to_have_text(re.compile("^Connected"))
        await subscribe(page, "news:c")

        # errors of the server go next to what asked
        await page.fill("#channelName", "nowhere:x")
        await page.click("#subscribeButton")
        await expect(page.locator("#channelsNote")).to_have_text("subscribe nowhere:x: error 102: unknown channel")
        await expect(area(page, "nowhere:x")).to_have_count(0)
        await page.fill("#channelName", "news:c")
        await page.click("#subscribeButton")
        await expect(page.locator("#channelsNote")).to_have_text("subscribe news:c: error 105: already subscribed")
        await expect(area(page, "news:c")).to_have_attribute("data-state", "subscribed")

        await api(gw, "publish", {"channel": "news:c", "data": "one"})
        await expect(area(page, "news:c").locator('li[data-offset="1"] .pub-data')).to_have_text('"one"')

        # The next socket waits at this gate, so that a publication surely comes while it is away.
        gate = asyncio.Event()

        async def held(route: WebSocketRoute) -> None:
            await gate.wait()
            route.connect_to_server()

        await page.route_web_socket(re.compile(re.escape(PATH) + "$"), held)
        # a disconnect in 3000-3499 is one the SDKs come back from, and so does the page
        client_id = await page.locator("#channelsClientId").inner_text()
        await api(gw, "disconnect", {"user": "carol", "disconnect": {"code": 3010, "reason": "go"}})
        await expect(page.locator("#channelsState")).to_have_text("Not connected (3010 go)")
        await expect(area(page, "news:c")).to_have_attribute("data-state", "closed")
        await api(gw, "publish", {"channel": "news:c", "data": "two"})
        gate.set()
        await expect(page.locator("#channelsState")).to_have_text(re.compile("^Connected"), timeout=10_000)
        await expect(page.locator("#channelsClientId")).not_to_have_text(client_id)
        state = area(page, "news:c").locator(".channel-state")
        await expect(state).to_have_text(re.compile(r"^subscribed at offset 2, epoch \S+; recovered 1 missed$"))
        await expect(area(page, "news:c").locator('li[data-kind="pub"] .pub-data')).to_have_text(['"one"', '"two"'])
        await expect(sent(page, "subscribe").last).to_have_text(
            re.compile(r'"recover":true,"offset":1,"epoch":"[^"]+"'))

        # a connection token that does not verify closes with 3500: final, no reconnect
        await page.click("#closeButton")
        await expect(page.locator("body")).to_have_attribute("data-socket-state", "closed")
        await page.fill("#channelsToken", "not-a-jwt")
        await page.click("#channelsConnectButton")
        await expect(page.locator("#channelsState")).to_have_text("Not connected (3500 invalid token)")
        await expect(page.locator("body")).to_have_attribute("data-socket-state", "closed")
        closes = await page.evaluate("window.__closes")
        assert closes[-1]["code"] == 3500
