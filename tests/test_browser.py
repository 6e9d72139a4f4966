"""The client page in a real Chromium against a real ``python -m wsgate`` process.

One browser per module; every test opens its own contexts and a gateway of its own.
Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio
from conftest import WsgateProcess, free_port
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WAIT_MS = 5000

# Records what the browser itself reports for every close event (the page shows the code
# and reason the user asked for, so this is how the test sees what the server sent back),
# and every text frame exactly as the browser received it (for the page's raw view).
RECORD_CLOSES = """
window.__closes = [];
window.__frames = [];
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("close", (e) =>
      window.__closes.push({ code: e.code, reason: e.reason, wasClean: e.wasClean }));
    this.addEventListener("message", (e) => {
      if (typeof e.data === "string") window.__frames.push(e.data);
    });
  }
};
"""

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]


def gateway_config(**endpoint_overrides: Any) -> dict[str, Any]:
    ws = {"path": "/ws", "handler": "echo", **endpoint_overrides}
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "policy": {"heartbeat": {"interval": "1s", "timeout": "5s"}},
        "endpoints": [ws, {"path": "/chat", "handler": "chat", "options": {"history": 10}}],
    }


def require_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run the README's test command (bash scripts/test)")


@asynccontextmanager
async def launched_chromium() -> AsyncIterator[Browser]:
    """The system Chromium under Playwright, with CHROMIUM_ARGS; closed on the way out."""
    require_chromium()
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launched_chromium() as chromium:
        yield chromium


@asynccontextmanager
async def open_page(browser: Browser, url: str, init_script: str = RECORD_CLOSES,
                    **context_options: Any) -> AsyncIterator[Page]:
    """A page in a fresh context, loaded from ``url``; fails if the page's script threw."""
    context = await browser.new_context(**context_options)
    errors: list[str] = []
    try:
        await context.add_init_script(init_script)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        response = await page.goto(url)
        assert response is not None
        assert response.status == 200
        await expect(page.locator("body")).to_have_attribute("data-socket-state", "idle")
        yield page
        assert errors == [], f"uncaught errors in the page: {errors}"
    finally:
        await context.close()


def rows(page: Page, kind: str, chat_type: str | None = None) -> Locator:
    """Log rows of one kind (and chat message type)."""
    selector = f'#commsLogBody tr[data-kind="{kind}"]'
    if chat_type is not None:
        selector += f'[data-type="{chat_type}"]'
    return page.locator(selector)


def logged(page: Page, kind: str, chat_type: str | None = None) -> Locator:
    """The Data cells of those rows."""
    return rows(page, kind, chat_type).locator("td:nth-child(3)")


async def connect(page: Page, endpoint: str | None = None, **fields: str) -> None:
    if endpoint is not None:
        await page.select_option("#endpointPicker", endpoint)
    for field, value in fields.items():
        await page.fill(f"#{field}", value)
    await page.click("#connectButton")
    await expect(page.locator("body")).to_have_attribute("data-socket-state", "open")
    await expect(page.locator("#stateLabel")).to_have_text("Open")


async def send(page: Page, text: str) -> None:
    await page.fill("#sendMessage", text)
    await page.click("#sendButton")


async def test_echo_round_trip_and_close_code_and_reason(
    browser: Browser, wsgate_process: Start, write_config: WriteConfig, artifacts: Path
) -> None:
    gw = wsgate_process(write_config(gateway_config()))
    async with open_page(browser, gw.url + "/") as page:
        await expect(page.locator("#connectionUrl")).to_have_value(f"{gw.ws_url}/ws")
        await connect(page)
        await expect(logged(page, "open")).to_have_text([re.compile("Connection opened")])

        await send(page, "hello from chromium")
        await page.fill("#sendMessage", "héllo ✓ again")
        await page.press("#sendMessage", "Enter")
        await expect(logged(page, "sent")).to_have_text(
            ["hello from chromium", "héllo ✓ again"])
        await expect(logged(page, "received")).to_have_text(["hello from chromium", "héllo ✓ again"])
        await expect(rows(page, "received").first.locator("td")).to_have_text(
            ["Server", "Client", "hello from chromium"])

        await page.fill("#closeCode", "1000")
        await page.fill("#closeReason", "bye")
        await page.click("#closeButton")
        await expect(page.locator("body")).to_have_attribute("data-socket-state", "closed")
        await expect(page.locator("#stateLabel")).to_have_text("Closed. Code: 1000, Reason: bye")
        await expect(logged(page, "close")).to_have_text(["Connection closed. Code: 1000. Reason: bye"])
        # what the browser got in the server's close frame: the client's own code and reason
        assert await page.evaluate("window.__closes") == [{"code": 1000, "reason": "bye", "wasClean": True}]
        await expect(page.locator("#connectButton")).to_be_enabled()
        await expect(page.locator("#sendButton")).to_be_disabled()
        await expect(rows(page, "error")).to_have_count(0)
        await page.screenshot(path=artifacts / "browser-echo.png", full_page=True)
    assert await gw.metric("wsgate_messages_received_total", "/ws") == 2


async def test_two_pages_in_one_chat_room(
    browser: Browser, wsgate_process: Start, write_config: WriteConfig, artifacts: Path
) -> None:
    gw = wsgate_process(write_config(gateway_config()))
    async with open_page(browser, gw.url + "/") as alice, open_page(browser, gw.url + "/") as bob:
        await alice.select_option("#endpointPicker", "/chat")
        await expect(alice.locator("#room")).to_be_visible()
        await alice.fill("#room", "garden")
        await alice.fill("#name", "alice")
        await expect(alice.locator("#connectionUrl")).to_have_value(f"{gw.ws_url}/chat?room=garden&name=alice")
        await connect(alice)
        await expect(logged(alice, "received", "welcome")).to_have_text(["welcome alice to garden (users: alice)"])
        await expect(logged(alice, "received", "history")).to_have_text(["history: 0 messages"])

        await connect(bob, "/chat", room="garden", name="bob")
        await expect(logged(bob, "received", "welcome")).to_have_text(["welcome bob to garden (users: alice, bob)"])
        await expect(logged(alice, "received", "join")).to_have_text(
            ["alice joined (users: alice)", "bob joined (users: alice, bob)"])

        await send(bob, "hi alice")
        await expect(logged(alice, "received", "message")).to_have_text(["[garden] bob: hi alice"])
        await send(alice, "hi bob")
        await expect(logged(bob, "received", "message")).to_have_text(
            ["[garden] bob: hi alice", "[garden] alice: hi bob"])
        await expect(logged(alice, "received", "message")).to_have_text(
            ["[garden] bob: hi alice", "[garden] alice: hi bob"])

        await bob.screenshot(path=artifacts / "browser-chat-bob.png", full_page=True)
        await bob.click("#closeButton")
        await expect(bob.locator("body")).to_have_attribute("data-socket-state", "closed")
        await expect(logged(alice, "received", "leave")).to_have_text(["bob left (users: alice)"])
        await alice.screenshot(path=artifacts / "browser-chat-alice.png", full_page=True)


async def test_disallowed_origin_cannot_connect_and_the_page_says_why(
    browser: Browser, wsgate_process: Start, write_config: WriteConfig, artifacts: Path
) -> None:
    """The page comes from gateway A; gateway B's endpoint only admits http://example.test."""
    page_gw = wsgate_process(write_config(gateway_config(), "a.yaml"))
    locked = wsgate_process(write_config(gateway_config(origins=["http://example.test"]), "b.yaml"))
    async with open_page(browser, page_gw.url + "/") as page:
        await page.fill("#connectionUrl", f"{locked.ws_url}/ws")
        await page.click("#connectButton")
        await expect(page.locator("body")).to_have_attribute("data-socket-state", "failed")
        await expect(logged(page, "error")).to_have_text([re.compile(r"^Could not connect: .*allowed origins")])
        await expect(page.locator("#stateLabel")).to_have_text(re.compile(r"^Closed\. Code: 1006, .*could not connect"))
        await expect(page.locator("#sendButton")).to_be_disabled()
        await page.screenshot(path=artifacts / "browser-origin-refused.png", full_page=True)

        # the browser did send the page's origin, and B refused it by policy
        locked.wait_for_line(re.escape(f"origin refused: '{page_gw.url}' on /ws"))
        assert await locked.metric("wsgate_origin_rejections_total", "/ws") == 1
        assert await locked.metric("wsgate_connections_total", "/ws") == 0

        # the same page still connects to its own gateway (same origin)
        await page.select_option("#endpointPicker", "/ws")
        await expect(page.locator("#connectionUrl")).to_have_value(f"{page_gw.ws_url}/ws")
        await connect(page)
        await send(page, "still works")
        await expect(logged(page, "received")).to_have_text([re.compile("still works")])
    assert await page_gw.metric("wsgate_origin_rejections_total", "/ws") == 0


async def test_page_is_usable_on_a_phone_viewport(
    browser: Browser, wsgate_process: Start, write_config: WriteConfig, artifacts: Path
) -> None:
    gw = wsgate_process(write_config(gateway_config()))
    phone = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2,
             "is_mobile": True, "has_touch": True}

    async def assert_fits(page: Page) -> None:
        sizes = await page.evaluate("""() => ({
            scroll: document.documentElement.scrollWidth,
            inner: window.innerWidth,
            table: document.getElementById("commsLog").scrollWidth,
            log: document.querySelector(".log-scroll").clientWidth,
        })""")
        assert sizes["inner"] == 390
        assert sizes["scroll"] <= sizes["inner"], f"horizontal scrolling: {sizes}"
        assert sizes["table"] <= sizes["log"], f"log table wider than its box: {sizes}"

    async def assert_on_screen(page: Page, selector: str) -> None:
        button = page.locator(selector)
        await expect(button).to_be_visible()
        box = await button.bounding_box()
        assert box is not None
        assert box["x"] >= 0, f"{selector} is off screen: {box}"
        assert box["x"] + box["width"] <= 390, f"{selector} is off screen: {box}"
        assert box["height"] >= 32, f"{selector} is too small to tap: {box}"

    async with open_page(browser, gw.url + "/", **phone) as page:
        await assert_fits(page)
        for selector in ("#connectButton", "#sendButton", "#closeButton"):
            await assert_on_screen(page, selector)

        await page.tap("#connectButton")
        await expect(page.locator("body")).to_have_attribute("data-socket-state", "open")
        long_word = "x" * 300
        for text in ("hello phone", long_word):
            await page.fill("#sendMessage", text)
            await page.tap("#sendButton")
        await expect(logged(page, "received")).to_have_text(["hello phone", long_word])
        await assert_fits(page)
        await page.screenshot(path=artifacts / "browser-phone-open.png", full_page=True)

        await page.fill("#closeReason", "done on the phone")
        await page.tap("#closeButton")
        await expect(page.locator("#stateLabel")).to_have_text("Closed. Code: 1000, Reason: done on the phone")
        assert await page.evaluate("window.__closes") == [
            {"code": 1000, "reason": "done on the phone", "wasClean": True}]
        await assert_fits(page)
        for selector in ("#connectButton", "#sendButton", "#closeButton"):
            await assert_on_screen(page, selector)
        await page.screenshot(path=artifacts / "browser-phone-closed.png", full_page=True)


async def test_a_server_that_is_not_running_is_reported_as_such(
    browser: Browser, wsgate_process: Start, write_config: WriteConfig,
) -> None:
    page_gw = wsgate_process(write_config(gateway_config()))
    async with open_page(browser, page_gw.url + "/") as page:
        await page.fill("#connectionUrl", f"ws://127.0.0.1:{free_port()}/ws")  # nothing listens there
        await page.click("#connectButton")
        await expect(page.locator("body")).to_have_attribute("data-socket-state", "failed")
        unreachable = re.compile(r"^Could not connect: the server does not answer")
        await expect(logged(page, "error")).to_have_text([unreachable])


async def test_raw_json_toggle_shows_frames_as_received_and_is_remembered(
    browser: Browser, wsgate_process: Start, write_config: WriteConfig, artifacts: Path
) -> None:
    gw = wsgate_process(write_config(gateway_config()))

    async def frames(page: Page) -> list[str]:
        return await page.evaluate("window.__frames")

    async def cells(page: Page, kind: str, chat_type: str | None = None) -> list[str]:
        return await logged(page, kind, chat_type).evaluate_all("(tds) => tds.map((td) => td.textContent)")

    async with open_page(browser, gw.url + "/") as page:
        toggle = page.get_by_role("checkbox", name="Raw JSON")  # found by its accessible name
        await expect(toggle).not_to_be_checked()
        await connect(page, "/chat", room="den", name="ann")
        await send(page, "friendly hi")
        await expect(logged(page, "received", "message")).to_have_text(["[den] ann: friendly hi"])
        await expect(logged(page, "received", "welcome")).to_have_text(["welcome ann to den (users: ann)"])
        received = await cells(page, "received")
        raw_first = [f for f in await frames(page) if json.loads(f)["type"] == "message"]
        assert len(raw_first) == 1
        assert json.loads(raw_first[0])["text"] == "friendly hi"
        assert raw_first[0] not in received, f"raw JSON shown while the toggle is off: {received}"
        assert not any(text.lstrip().startswith("{") for text in received), received

        await toggle.check()
        # the log is re-rendered: every line already there is now the frame as received
        await expect(logged(page, "received", "message")).to_have_text(raw_first)
        assert await cells(page, "received") == await frames(page)

        await send(page, "raw hí ✓")
        await expect(logged(page, "sent")).to_have_text(["friendly hi", "raw hí ✓"])
        await expect(logged(page, "received", "message")).to_have_count(2)
        shown = (await cells(page, "received", "message"))[-1]
        event = json.loads(shown)
        assert event["type"] == "message"
        assert event["text"] == "raw hí ✓"
        assert event["from"] == "ann"
        assert shown == (await frames(page))[-1], "not the text frame exactly as received"
        assert await cells(page, "received") == await frames(page)
        await page.screenshot(path=artifacts / "browser-raw-json.png", full_page=True)

        # remembered across a reload; new lines are raw from the first frame on
        await page.reload()
        await expect(page.locator("body")).to_have_attribute("data-socket-state", "idle")
        await expect(toggle).to_be_checked()
        await connect(page, "/chat", room="den", name="bea")
        await expect(logged(page, "received", "history")).to_have_count(1)
        history = json.loads((await cells(page, "received", "history"))[0])
        assert [m["text"] for m in history["messages"]] == ["friendly hi", "raw hí ✓"]
        assert await cells(page, "received") == await frames(page)

        # switching back re-renders the friendly view, and that is remembered too
        await toggle.uncheck()
        await expect(logged(page, "received", "history")).to_have_text(["history: 2 messages"])
        await expect(logged(page, "received", "history-message")).to_have_text(
            ["[den] ann: friendly hi", "[den] ann: raw hí ✓"])
        await page.reload()
        await expect(page.locator("body")).to_have_attribute("data-socket-state", "idle")
        await expect(toggle).not_to_be_checked()


async def test_raw_json_toggle_on_the_echo_endpoint(
    browser: Browser, wsgate_process: Start, write_config: WriteConfig,
) -> None:
    """Echo frames that look like chat events are rendered as such, unless the log is raw."""
    gw = wsgate_process(write_config(gateway_config()))
    looks_like_chat = '{"type": "message", "room": "r", "from": "f", "text": "t"}'  # spaced: not re-serialized
    async with open_page(browser, gw.url + "/") as page:
        await connect(page)
        for text in ("plain", looks_like_chat):
            await send(page, text)
        await expect(logged(page, "received")).to_have_text(["plain", "[r] f: t"])
        await page.get_by_label("Raw JSON").check()
        await expect(logged(page, "received")).to_have_text(["plain", looks_like_chat])
        await send(page, "after")
        await expect(logged(page, "received")).to_have_text(["plain", looks_like_chat, "after"])
        await expect(logged(page, "sent")).to_have_text(["plain", looks_like_chat, "after"])


AUTH_SECRET = "browser-auth-secret-0123456789abcdef"


def auth_config(*, handshake_check: bool = True) -> dict[str, Any]:
    config = gateway_config()
    config["auth"] = {"users": {"jwt": {"algorithms": ["HS256"], "secret": AUTH_SECRET}}}
    config["endpoints"][1].update({"auth": "users"})
    config["logging"] = {"level": "debug"}
    config["api"] = {"handshake_check": handshake_check}
    return config


async def test_the_page_sends_a_token_in_the_subprotocol_pair_and_shows_refusals(
    browser: Browser, wsgate_process: Start, write_config: WriteConfig, artifacts: Path
) -> None:
    """A chat endpoint with JWT auth: the token field appears only for it; a good token
    connects (the name comes from its claim, the token stays out of the URL); a bad one
    is reported as 401, a room outside the ``rooms`` claim as 403."""
    good = jwt.encode({"sub": "u1", "name": "Ann", "rooms": ["garden"]}, AUTH_SECRET, algorithm="HS256")
    gw = wsgate_process(write_config(auth_config()))
    async with open_page(browser, gw.url + "/") as page:
        await expect(page.locator("#token")).to_be_hidden()  # /ws has no auth
        await page.select_option("#endpointPicker", "/chat")
        await expect(page.locator("#token")).to_be_visible()

        await page.fill("#room", "garden")
        await page.fill("#name", "mallory")  # ignored: the name is the token's
        await connect(page, token=good)
        await expect(logged(page, "received", "welcome")).to_have_text(["welcome Ann to garden (users: Ann)"])
        await expect(logged(page, "open")).to_have_text([re.compile(r"subprotocol: wsgate\.auth\)")])
        assert good not in await page.input_value("#connectionUrl")
        await page.click("#closeButton")
        await expect(page.locator("body")).to_have_attribute("data-socket-state", "closed")

        for token, room, expected in [(good[:-4] + "AAAA", "garden", "401 Unauthorized: invalid token"),
                                      (good, "kitchen", "403 Forbidden: you may not join the room 'kitchen'")]:
            await page.fill("#token", token)
            await page.fill("#room", room)
            await page.click("#connectButton")
            await expect(page.locator("body")).to_have_attribute("data-socket-state", "failed")
            await expect(logged(page, "error").last).to_contain_text(expected)
        await page.screenshot(path=artifacts / "browser-auth.png", full_page=True)
    assert good not in gw.output
    assert AUTH_SECRET not in gw.output


async def test_without_the_handshake_check_the_page_still_says_the_server_refused(
    browser: Browser, wsgate_process: Start, write_config: WriteConfig
) -> None:
    """api.handshake_check off (the default): the check answers 404 and the page falls
    back to the general diagnosis instead of failing."""
    gw = wsgate_process(write_config(auth_config(handshake_check=False)))
    async with open_page(browser, gw.url + "/") as page:
        await page.select_option("#endpointPicker", "/chat")
        await page.fill("#token", "not-a-valid-token")
        await page.click("#connectButton")
        await expect(page.locator("body")).to_have_attribute("data-socket-state", "failed")
        await expect(logged(page, "error").last).to_contain_text("the server refused the WebSocket handshake")
