"""The page's auto-reconnect and chat resume (web/static/wsgate.js) in a real Chromium.

Against real ``python -m wsgate`` processes on fixed ports: a TCP proxy between the
browser and the gateway cuts the page's connection (the browser sees the network drop,
no close frame); the gateway is restarted with a Redis broker (the room's history is
kept: the page resumes with no gap and no duplicate) and with the memory broker (the
history is lost: the page says so). wsgate.js's own rules (backoff, close codes, the
since/epoch parameters, its events) are also driven in the page with a scripted
WebSocket stand-in, where every step can be checked exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import pytest_asyncio
from conftest import RedisServer, WsgateProcess, free_port
from playwright.async_api import Browser, Locator, Page, expect
from test_browser import (
    RECORD_CLOSES,
    launched_chromium,
    logged,
    open_page,
    send,
)
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import WebSocketException

pytestmark = pytest.mark.asyncio(loop_scope="module")

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]
# A reconnect waits up to 2^n * 0.5 s (30 s at most), with jitter, for a server to come back;
# n goes on growing across a connection that was open for less than 5 s.
RECONNECT_MS = 45_000

# Every WebSocket the page makes: its URL and offered subprotocols (after RECORD_CLOSES).
RECORD_SOCKETS = """
window.__sockets = [];
const RecordedWebSocket = window.WebSocket;
window.WebSocket = class extends RecordedWebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    window.__sockets.push({ url: this.url, protocols: [].concat(protocols ?? []) });
  }
};
"""


def chat_config(broker: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "policy": {"heartbeat": {"interval": "1s", "timeout": "5s"}},
        "endpoints": [{"path": "/chat", "handler": "chat", "options": {"history": 500}}],
    }
    if broker is not None:
        config["broker"] = broker
    return config


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium() -> AsyncIterator[Browser]:
    async with launched_chromium() as browser:
        yield browser


def resume_page(browser: Browser, url: str) -> contextlib.AbstractAsyncContextManager[Page]:
    """A page in a fresh context that records its closes, frames and sockets; fails on a page error."""
    return open_page(browser, url, RECORD_CLOSES + RECORD_SOCKETS)


async def join(page: Page, room: str, name: str) -> None:
    await page.select_option("#endpointPicker", "/chat")
    await page.fill("#room", room)
    await page.fill("#name", name)
    await page.click("#connectButton")
    await expect(page.locator("body")).to_have_attribute("data-socket-state", "open")


def state(page: Page) -> Locator:
    return page.locator("body")


def chat_rows(page: Page) -> Locator:
    """The rows of numbered chat messages, live or from a history."""
    return page.locator('#commsLogBody tr[data-kind="received"][data-id]')


async def log_rows(page: Page) -> list[dict[str, str]]:
    """Every row of the log: kind, type, id and text."""
    return await page.locator("#commsLogBody tr").evaluate_all(
        """(trs) => trs.map((tr) => ({ kind: tr.dataset.kind, type: tr.dataset.type || "",
                                       id: tr.dataset.id || "", text: tr.cells[2].textContent }))""")


async def statuses(page: Page) -> list[str]:
    return await logged(page, "status").all_text_contents()


async def restart(start: Start, gw: WsgateProcess, config: Path) -> WsgateProcess:
    """Stop ``gw`` (SIGTERM: its clients get 1001) and start it again on its port."""
    port = gw.port
    await asyncio.to_thread(gw.stop)
    await asyncio.sleep(0.5)  # the page's first retries find nothing listening
    return await asyncio.to_thread(start, config, port=port)


class CuttableProxy:
    """A TCP proxy from 127.0.0.1:``port`` to 127.0.0.1:``upstream``.

    ``cut()`` resets every connection through it and stops listening (new connections
    are refused) until ``resume()``. A connection it cannot pass on is reset too.
    """

    def __init__(self, upstream: int) -> None:
        self.port = free_port()
        self.upstream = upstream
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.BaseTransport] = set()
        self.cuts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.transports.add(writer.transport)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            self.transports.discard(writer.transport)
            return
        self.transports.add(up_writer.transport)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.transports.difference_update({writer.transport, up_writer.transport})

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for transport in list(self.transports):
            transport.abort()  # no FIN, no close frame: a reset
        self.cuts += 1

    async def resume(self) -> None:
        await self.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for transport in list(self.transports):
            transport.abort()


class NumberedSender:
    """A `websockets` chat client that sends n1, n2, ... every ``interval`` seconds and
    reconnects whenever its connection ends (it goes straight to the gateway)."""

    def __init__(self, url: str, interval: float = 0.1) -> None:
        self.url = url
        self.interval = interval
        self.sent: list[str] = []
        self.connections = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(15):
            while len(self.sent) < count:
                await asyncio.sleep(0.02)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                async with ws_connect(self.url, open_timeout=2, close_timeout=1) as ws:
                    self.connections += 1
                    drain = asyncio.create_task(self._drain(ws))
                    try:
                        while not self._stop.is_set():
                            text = f"n{len(self.sent) + 1}"
                            await ws.send(text)
                            self.sent.append(text)
                            await asyncio.sleep(self.interval)
                    finally:
                        drain.cancel()
            except (OSError, TimeoutError, WebSocketException):
                await asyncio.sleep(0.1)

    @staticmethod
    async def _drain(ws: ClientConnection) -> None:
        with contextlib.suppress(WebSocketException):
            async for _ in ws:
                pass


async def room_messages(ws_url: str, room: str) -> list[dict[str, Any]]:
    """What a fresh client of ``room`` gets as its history: the room's messages, as stored."""
    async with asyncio.timeout(10), ws_connect(f"{ws_url}/chat?room={room}&name=auditor") as ws:
        welcome = json.loads(await ws.recv())
        history = json.loads(await ws.recv())
    assert welcome["type"] == "welcome"
    assert history["type"] == "history"
    messages: list[dict[str, Any]] = history["messages"]
    return messages


async def test_the_page_resumes_its_room_across_a_network_cut_and_a_server_restart(
    chromium: Browser, wsgate_process: Start, write_config: WriteConfig, redis_server: RedisServer,
    artifacts: Path,
) -> None:
    """Another client keeps talking in the room while (a) the page's connection is reset
    and refused for a while, and (b) the gateway restarts (Redis keeps the room). The page
    shows every message id once, in order, and says what each resume recovered."""
    config = write_config(chat_config(broker=redis_server.url))
    gw = wsgate_process(config, port=free_port())
    proxy = CuttableProxy(gw.port)
    await proxy.start()
    sender = NumberedSender(f"{gw.ws_url}/chat?room=relay&name=sender")
    try:
        async with resume_page(chromium, proxy.url + "/") as page:
            await expect(page.get_by_role("checkbox", name="Auto-reconnect")).to_be_checked()
            await join(page, "relay", "pat")
            await expect(logged(page, "received", "history")).to_have_text(["history: 0 messages"])
            sender.start()
            await expect(chat_rows(page).nth(4)).to_be_attached(timeout=10_000)

            # (a) the network drops: reset, and refused for 1.5 s while the room goes on
            proxy.cut()
            await expect(state(page)).to_have_attribute("data-socket-state", "reconnecting")
            await sender.wait_for(len(sender.sent) + 15)
            await proxy.resume()
            await expect(logged(page, "status", "recovered")).to_have_count(1, timeout=RECONNECT_MS)
            await expect(state(page)).to_have_attribute("data-socket-state", "open")

            # (b) the gateway restarts on its port (the room lives in Redis); the page is
            # held off for a while once it is back, so that it has missed messages sent to it
            await sender.wait_for(len(sender.sent) + 5)
            await asyncio.to_thread(gw.stop)
            proxy.cut()
            gw = await asyncio.to_thread(wsgate_process, config, port=gw.port)
            await sender.wait_for(len(sender.sent) + 10)
            await proxy.resume()
            await expect(logged(page, "status", "recovered")).to_have_count(2, timeout=RECONNECT_MS)
            await expect(state(page)).to_have_attribute("data-socket-state", "open")
            await sender.wait_for(len(sender.sent) + 5)
            await sender.stop()

            stored = await room_messages(gw.ws_url, "relay")
            await expect(chat_rows(page)).to_have_count(len(stored), timeout=10_000)
            await page.screenshot(path=artifacts / "browser-resume.png", full_page=True)
            rows = await log_rows(page)
            sockets = await page.evaluate("window.__sockets")
    finally:
        await sender.stop()
        proxy.stop()

    ids = [int(r["id"]) for r in rows if r["id"]]
    assert ids == list(range(1, len(stored) + 1)), f"not every id once and in order: {ids}"
    assert [m["id"] for m in stored] == ids
    shown = [r["text"] for r in rows if r["id"]]
    assert shown == [f"[relay] {m['from']}: {m['text']}" for m in stored]
    assert len(stored) >= 30
    assert sender.connections >= 2  # the sender was cut by the restart too

    # each "recovered N" counts the messages of the history just before it, and N > 0:
    # messages were sent while the page was away
    recovered = [i for i, r in enumerate(rows) if r["type"] == "recovered"]
    assert len(recovered) == 2
    for i in recovered:
        history = max(j for j in range(i) if rows[j]["type"] == "history")
        count = sum(1 for r in rows[history:i] if r["type"] == "history-message")
        assert rows[i]["text"] == f"reconnected, recovered {count} messages"
        assert count > 0
    assert not [r for r in rows if r["type"] == "notrecovered"]
    closes = [r["text"] for r in rows if r["kind"] == "close"]
    assert "Connection closed. Code: 1001. Reason: server shutting down" in closes  # the restart
    assert "Connection closed. Code: 1006. Reason: (none)" in closes  # the cut
    assert any(r["type"] == "reconnecting" for r in rows)

    # the reconnects asked for exactly that: since=<the last id shown>, in the room's epoch
    assert len(sockets) >= 3
    first, resumes = sockets[0], [urlsplit(s["url"]) for s in sockets[1:]]
    assert "since" not in first["url"]
    for url in resumes:
        query = parse_qs(url.query)
        assert query["room"] == ["relay"]
        assert query["name"] == ["pat"]
        assert len(query["since"]) == 1
        assert len(query["epoch"]) == 1
        assert int(query["since"][0]) > 0


async def test_a_restart_that_loses_the_history_says_so(
    chromium: Browser, wsgate_process: Start, write_config: WriteConfig, artifacts: Path,
) -> None:
    """The memory broker forgets the room on restart: the page asks to resume, the new
    gateway cannot (a new epoch), and the page says so before the reloaded history."""
    config = write_config(chat_config())
    gw = wsgate_process(config, port=free_port())
    async with resume_page(chromium, gw.url + "/") as page:
        await join(page, "attic", "ida")
        for text in ("one", "two"):
            await send(page, text)
        await expect(logged(page, "received", "message")).to_have_text(["[attic] ida: one", "[attic] ida: two"])
        gw = await restart(wsgate_process, gw, config)
        await expect(logged(page, "status", "notrecovered")).to_have_text(
            ["history lost, reloaded"], timeout=RECONNECT_MS)
        await expect(state(page)).to_have_attribute("data-socket-state", "open")
        await send(page, "three")
        await expect(logged(page, "received", "message")).to_have_count(3)
        await page.screenshot(path=artifacts / "browser-history-lost.png", full_page=True)
        rows = await log_rows(page)
        frames = [json.loads(f) for f in await page.evaluate("window.__frames")]
        sockets = await page.evaluate("window.__sockets")

    welcomes = [f for f in frames if f["type"] == "welcome"]
    assert len(welcomes) == 2
    assert [w["recovered"] for w in welcomes] == [False, False]
    assert isinstance(welcomes[0]["epoch"], str)
    assert welcomes[1]["epoch"] != welcomes[0]["epoch"]
    resumed = parse_qs(urlsplit(sockets[-1]["url"]).query)
    assert resumed["since"] == ["2"]
    assert resumed["epoch"] == [welcomes[0]["epoch"]]
    assert resumed["room"] == ["attic"]

    kinds = [(r["kind"], r["type"]) for r in rows]
    assert ("status", "recovered") not in kinds
    after = kinds.index(("status", "notrecovered"))
    assert kinds[after - 1] == ("received", "welcome")
    assert kinds[after + 1] == ("received", "history")
    assert rows[after + 1]["text"] == "history: 0 messages"
    # the new gateway numbers the room from 1 again: the page shows that, not a merge
    assert [r["id"] for r in rows if r["id"]] == ["1", "2", "1"]


async def test_with_auto_reconnect_off_the_page_connects_once(
    chromium: Browser, wsgate_process: Start, write_config: WriteConfig,
) -> None:
    """The switch is on by default and remembered off; off, a restart ends the session."""
    config = write_config(chat_config())
    gw = wsgate_process(config, port=free_port())
    async with resume_page(chromium, gw.url + "/") as page:
        switch = page.get_by_role("checkbox", name="Auto-reconnect")
        await expect(switch).to_be_checked()
        await switch.uncheck()
        await page.reload()
        await expect(state(page)).to_have_attribute("data-socket-state", "idle")
        await expect(switch).not_to_be_checked()

        await join(page, "porch", "lou")
        gw = await restart(wsgate_process, gw, config)
        await expect(state(page)).to_have_attribute("data-socket-state", "closed")
        await expect(page.locator("#stateLabel")).to_have_text("Closed. Code: 1001, Reason: server shutting down")
        await asyncio.sleep(2)  # a retry would have come by now: the first waits at most 0.5 s
        assert len(await page.evaluate("window.__sockets")) == 1
        await expect(logged(page, "status")).to_have_count(0)
        await expect(page.locator("#connectButton")).to_be_enabled()

        # switched on again (and remembered), a dropped connection comes back by itself
        await switch.check()
        await page.reload()
        await expect(switch).to_be_checked()
        await join(page, "porch", "lou")
        gw = await restart(wsgate_process, gw, config)
        await expect(logged(page, "status", "notrecovered")).to_have_count(1, timeout=RECONNECT_MS)
        await expect(logged(page, "status", "reconnecting").first).to_have_text(
            re.compile(r"^reconnecting in \d+\.\d s…$"))


async def test_a_close_that_means_do_not_retry_is_not_retried(
    chromium: Browser, wsgate_process: Start, write_config: WriteConfig,
) -> None:
    """The chat closes a bad room name with 1008 after the socket opened: no reconnect."""
    gw = wsgate_process(write_config(chat_config()))
    async with resume_page(chromium, gw.url + "/") as page:
        await page.select_option("#endpointPicker", "/chat")
        await page.fill("#room", "no room!")
        await page.click("#connectButton")
        await expect(state(page)).to_have_attribute("data-socket-state", "closed")
        await expect(logged(page, "close")).to_have_text(["Connection closed. Code: 1008. Reason: bad room name"])
        await asyncio.sleep(1.5)
        assert len(await page.evaluate("window.__sockets")) == 1
        await expect(logged(page, "status")).to_have_count(0)
        await expect(page.locator("#connectButton")).to_be_enabled()


SLAM = """
from pydantic import BaseModel

from wsgate import Connection, Handler


class SlamOptions(BaseModel):
    code: int = 1011


class Slam(Handler):
    \"\"\"Accepts every connection, then closes it at once with ``code``.\"\"\"

    Options = SlamOptions

    async def on_connect(self, conn: Connection) -> None:
        await conn.close(self.options.code, "go away")
"""
STORM_CODES = (1011, 1013, 3000)
WINDOW_S = 6.0


async def test_a_server_that_accepts_and_closes_at_once_is_retried_ever_more_slowly(
    chromium: Browser, wsgate_process: Start, write_config: WriteConfig, tmp_path: Path,
) -> None:
    """wsgate.js against a gateway whose endpoints accept and then close with 1011, 1013 or
    3000: connections in a window, counted by the gateway, stay few (they grew without
    bound when every open reset the backoff)."""
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "slam.py").write_text(SLAM)
    gw = wsgate_process(write_config({
        "server": {"host": "127.0.0.1"},
        "endpoints": [{"path": f"/c{code}", "handler": "handlers.slam:Slam", "options": {"code": code}}
                      for code in STORM_CODES],
    }))
    async with resume_page(chromium, gw.url + "/") as page:
        events = await page.evaluate("""async ([base, codes, windowMs]) => {
            const { connect } = await import("/static/wsgate.js");
            Math.random = () => 0.5;  // this page is the test's own: the median wait, every time
            const conns = codes.map((code) => connect(`${base}/c${code}`));
            const events = Object.fromEntries(codes.map((code) => [code, []]));
            conns.forEach((conn, i) => {
              for (const type of ["open", "reconnecting"]) {
                conn.addEventListener(type, (e) => events[codes[i]].push({ type, delay: e.delay ?? null }));
              }
            });
            await new Promise((r) => setTimeout(r, windowMs));
            conns.forEach((conn) => conn.close());
            return events;
        }""", [gw.ws_url, list(STORM_CODES), WINDOW_S * 1000])
    accepted = {code: await gw.metric("wsgate_connections_total", f"/c{code}") for code in STORM_CODES}
    opens = {code: sum(e["type"] == "open" for e in events[str(code)]) for code in STORM_CODES}
    delays = {code: [e["delay"] for e in events[str(code)] if e["type"] == "reconnecting"] for code in STORM_CODES}
    # waits of 250, 500, 1000, 2000 ms (half of 0.5 s * 2^n): 5 connections in 6 s, not 24
    for code in (1011, 3000):
        assert delays[code][:4] == [250, 500, 1000, 2000], delays
        assert 4 <= opens[code] <= 5, opens
    # 1013: the floor (5 s) plus the jitter before the one retry
    assert delays[1013][0] == 5000 + 250, delays
    assert 1 <= opens[1013] <= 2, opens
    assert accepted == {code: float(n) for code, n in opens.items()}


AUTH_SECRET = "resume-auth-secret-0123456789abcdef"


async def test_a_token_that_expires_is_fetched_anew_and_the_room_resumed(
    chromium: Browser, wsgate_process: Start, write_config: WriteConfig,
) -> None:
    """wsgate.js on its own, against a chat with JWT auth: the gateway closes with 3000
    when the first token expires; the module asks its token function again, reconnects
    with the new token in the subprotocol pair, and resumes the room (nothing missed)."""
    config = chat_config()
    config["auth"] = {"users": {"jwt": {"algorithms": ["HS256"], "secret": AUTH_SECRET}}}
    config["endpoints"][0]["auth"] = "users"
    gw = wsgate_process(write_config(config))
    async with resume_page(chromium, gw.url + "/") as page:
        # Made once the page is up: a slow page load must not outlast the short-lived token.
        tokens = [jwt.encode({"sub": "u1", "name": "Ann", "exp": int(time.time()) + 2}, AUTH_SECRET,
                             algorithm="HS256"),
                  jwt.encode({"sub": "u1", "name": "Ann", "exp": int(time.time()) + 600}, AUTH_SECRET,
                             algorithm="HS256")]
        await page.evaluate("""async ([url, tokens]) => {
            const { connect } = await import("/static/wsgate.js");
            window.__events = [];
            window.__tokenCalls = 0;
            const conn = connect(url, { token: async () => tokens[Math.min(window.__tokenCalls++, 1)] });
            for (const type of ["open", "close", "recovered", "notrecovered", "reconnecting"]) {
              conn.addEventListener(type, (e) => window.__events.push(
                { type, code: e.code ?? null, willReconnect: e.willReconnect ?? null, count: e.count ?? null }));
            }
            conn.addEventListener("message", (e) => window.__events.push({ type: "message", data: e.data }));
            window.__conn = conn;
        }""", [f"{gw.ws_url}/chat?room=vault", tokens])
        await page.wait_for_function("window.__events.filter((e) => e.type === 'open').length === 2", timeout=10_000)
        await page.wait_for_function("window.__events.some((e) => e.type === 'recovered')")
        await page.evaluate("window.__conn.close(1000, 'done')")
        await page.wait_for_function("window.__conn.state === 'closed'")
        events = await page.evaluate("window.__events")
        calls = await page.evaluate("window.__tokenCalls")
        sockets = await page.evaluate("window.__sockets")

    lifecycle = [(e["type"], e["code"], e["willReconnect"]) for e in events if e["type"] != "message"]
    assert lifecycle[:2] == [("open", None, None), ("close", 3000, True)]
    assert lifecycle[2][0] == "reconnecting"
    assert lifecycle[3:] == [("open", None, None), ("recovered", None, None), ("close", 1000, False)]
    assert [e["count"] for e in events if e["type"] == "recovered"] == [0]
    assert calls == 2
    assert [s["protocols"] for s in sockets] == [["wsgate.auth", f"wsgate.bearer.{t}"] for t in tokens]
    welcomes = [json.loads(e["data"]) for e in events if e["type"] == "message" and '"welcome"' in e["data"]]
    assert [(w["name"], w["recovered"]) for w in welcomes] == [("Ann", False), ("Ann", True)]
    assert parse_qs(urlsplit(sockets[1]["url"]).query)["epoch"] == [welcomes[0]["epoch"]]
    assert all(t not in s["url"] for s in sockets for t in tokens)


# A WebSocket stand-in the test scripts: open(), msg(frame), drop(code) happen when told.
FAKE_SOCKET = """() => {
window.FakeSocket = class FakeSocket extends EventTarget {
  static made = [];
  constructor(url, protocols) {
    super();
    Object.assign(this, { url, protocols: [...protocols], readyState: 0, protocol: "", sent: [] });
    FakeSocket.made.push(this);
  }
  send(data) { this.sent.push(data); }
  close(code, reason) { this.readyState = 2; setTimeout(() => this.drop(code ?? 1005, reason ?? "", true)); }
  open() { this.readyState = 1; this.dispatchEvent(new Event("open")); }
  msg(frame) {
    const data = typeof frame === "string" ? frame : JSON.stringify(frame);
    this.dispatchEvent(new MessageEvent("message", { data }));
  }
  drop(code = 1006, reason = "", wasClean = false) {
    this.readyState = 3;
    this.dispatchEvent(new CloseEvent("close", { code, reason, wasClean }));
  }
};
window.socketNumber = async (n) => {
  for (let i = 0; i < 300 && FakeSocket.made.length < n; i++) await new Promise((r) => setTimeout(r, 10));
  if (FakeSocket.made.length < n) throw new Error(`no socket #${n}`);
  return FakeSocket.made[n - 1];
};
window.record = (conn) => {
  const events = [];
  for (const type of ["connecting", "open", "message", "recovered", "notrecovered", "close", "reconnecting",
                      "error"]) {
    conn.addEventListener(type, (e) => events.push(Object.fromEntries(Object.entries({
      type, code: e.code, willReconnect: e.willReconnect, count: e.count, delay: e.delay, attempt: e.attempt,
      epoch: e.epoch, previousEpoch: e.previousEpoch, data: e.data,
    }).filter(([, v]) => v !== undefined))));
  }
  return events;
};
}"""


@pytest_asyncio.fixture(loop_scope="module")
async def scripted(chromium: Browser, wsgate_process: Start, write_config: WriteConfig) -> AsyncIterator[Page]:
    """A page of a gateway (for /static/wsgate.js) with FakeSocket and helpers loaded."""
    gw = wsgate_process(write_config(chat_config()))
    async with resume_page(chromium, gw.url + "/") as page:
        await page.evaluate(FAKE_SOCKET)
        yield page


async def test_wsgate_js_resume_parameters_and_events(scripted: Page) -> None:
    """since/epoch replace the URL's own, keep the rest; a new epoch forgets the id; events
    say what each reconnect recovered; 3000 reconnects with a fresh token, 4001 does not."""
    result = await scripted.evaluate("""async () => {
        const { connect } = await import("/static/wsgate.js");
        let calls = 0;
        const conn = connect("ws://gw.test/chat?room=r&since=77&epoch=stale&name=a", {
          WebSocket: FakeSocket, minDelay: 5, maxDelay: 20, protocols: ["chat.v1"],
          token: () => Promise.resolve(`t${++calls}`),
        });
        const events = record(conn);
        const seen = [];
        const s1 = await socketNumber(1);
        s1.open();
        s1.msg({ type: "welcome", name: "a", epoch: "E1", recovered: false });
        s1.msg({ type: "history", messages: [{ type: "message", id: 1 }, { type: "message", id: 2 }],
                 recovered: false });
        s1.msg({ type: "message", id: 3, text: "live" });
        s1.msg("not json");
        s1.msg({ type: "join", name: "b" });
        seen.push([conn.epoch, conn.lastId, conn.state]);
        s1.drop(1006);
        const s2 = await socketNumber(2);
        s2.open();
        s2.msg({ type: "welcome", epoch: "E1", recovered: true });
        s2.msg({ type: "history", messages: [{ id: 4 }, { id: 5 }], recovered: true });
        s2.drop(1012, "service restart", true);
        const s3 = await socketNumber(3);
        s3.open();
        s3.msg({ type: "welcome", epoch: "E2", recovered: false });
        s3.msg({ type: "history", messages: [], recovered: false });
        seen.push([conn.epoch, conn.lastId, conn.state]);
        s3.drop(3000, "token expired", true);
        const s4 = await socketNumber(4);
        s4.open();
        s4.msg({ type: "welcome", epoch: "E2", recovered: true });
        s4.msg({ type: "history", messages: [], recovered: true });
        s4.drop(4001, "kicked", true);
        await new Promise((r) => setTimeout(r, 150));
        seen.push([conn.epoch, conn.lastId, conn.state]);
        return { events, seen, calls, made: FakeSocket.made.map((s) => ({ url: s.url, protocols: s.protocols })) };
    }""")
    urls = [urlsplit(s["url"]) for s in result["made"]]
    queries = [parse_qs(u.query) for u in urls]
    assert len(urls) == 4  # nothing after 4001
    assert queries[0] == {"room": ["r"], "since": ["77"], "epoch": ["stale"], "name": ["a"]}  # the first: as given
    assert queries[1] == {"room": ["r"], "since": ["3"], "epoch": ["E1"], "name": ["a"]}
    assert queries[2] == {"room": ["r"], "since": ["5"], "epoch": ["E1"], "name": ["a"]}
    assert queries[3] == {"room": ["r"], "since": ["0"], "epoch": ["E2"], "name": ["a"]}  # a new epoch: no id yet
    assert all(u.netloc == "gw.test" for u in urls)
    assert all(u.path == "/chat" for u in urls)
    assert [s["protocols"] for s in result["made"]] == [
        ["chat.v1", "wsgate.auth", f"wsgate.bearer.t{n}"] for n in (1, 2, 3, 4)]
    assert result["calls"] == 4
    assert result["seen"] == [["E1", 3, "open"], ["E2", None, "open"], ["E2", None, "closed"]]

    events = result["events"]
    assert sum(1 for e in events if e["type"] == "message") == 5 + 2 + 2 + 2  # every frame, as received
    assert [e["data"] for e in events if e["type"] == "message"][3] == "not json"
    story = [(e["type"], e.get("code", e.get("count", e.get("epoch"))), e.get("willReconnect"))
             for e in events if e["type"] in ("close", "recovered", "notrecovered")]
    assert story == [
        ("close", 1006, True), ("recovered", 2, None), ("close", 1012, True),
        ("notrecovered", "E2", None), ("close", 3000, True), ("recovered", 0, None), ("close", 4001, False),
    ]
    lost = next(e for e in events if e["type"] == "notrecovered")
    assert lost["previousEpoch"] == "E1"
    # "recovered" comes after the history frame it counts; "notrecovered" right after the welcome
    types = [e["type"] for e in events]
    assert types[types.index("recovered") - 1] == "message"
    assert json.loads(events[types.index("recovered") - 1]["data"])["type"] == "history"
    assert json.loads(events[types.index("notrecovered") - 1]["data"])["type"] == "welcome"
    assert [e["attempt"] for e in events if e["type"] == "connecting"] == [0, 1, 1, 1]


async def test_wsgate_js_backoff_is_full_jitter_capped_and_reset_only_by_a_healthy_connection(
    scripted: Page,
) -> None:
    result = await scripted.evaluate("""async () => {
        const { connect, backoffDelay } = await import("/static/wsgate.js");
        const realRandom = Math.random;
        Math.random = () => 0.999;
        try {
          const conn = connect("ws://gw.test/ws", { WebSocket: FakeSocket, minDelay: 10, maxDelay: 80,
                                                    healthyAfter: 100 });
          const events = record(conn);
          (await socketNumber(1)).open();
          FakeSocket.made[0].drop(1006);
          for (let n = 2; n <= 6; n++) (await socketNumber(n)).drop(1006);  // five attempts that never open
          (await socketNumber(7)).open();
          FakeSocket.made[6].drop(1011);  // accepted, then closed at once: not healthy
          (await socketNumber(8)).open();
          await new Promise((r) => setTimeout(r, 150));  // open for longer than healthyAfter
          FakeSocket.made[7].drop(1001);
          await new Promise((r) => setTimeout(r, 0));
          const waiting = conn.state;
          conn.close(4100, "bye");  // while waiting to retry
          await new Promise((r) => setTimeout(r, 150));
          const low = [0, 1, 2, 3].map((n) => backoffDelay(n, 500, 30000, () => 0));
          const high = [0, 1, 2, 3, 4, 5, 6, 7, 30].map((n) => backoffDelay(n, 500, 30000, () => 0.999999));
          return { events, waiting, state: conn.state, made: FakeSocket.made.length, low, high };
        } finally {
          Math.random = realRandom;
        }
    }""")
    retries = [(e["delay"], e["attempt"]) for e in result["events"] if e["type"] == "reconnecting"]
    # ceilings 10, 20, 40, 80 (maxDelay), 80, 80; still 80 after a socket that opened and
    # closed at once (attempt counts from that open); back to 10 after one that stayed open
    assert retries == [(9, 1), (19, 2), (39, 3), (79, 4), (79, 5), (79, 6), (79, 1), (9, 1)]
    assert result["waiting"] == "reconnecting"
    assert result["state"] == "closed"
    assert result["made"] == 8  # close() cancelled the pending retry
    last = result["events"][-1]
    assert (last["type"], last["code"], last["willReconnect"]) == ("close", 4100, False)
    assert result["low"] == [0, 0, 0, 0]
    assert result["high"] == [499, 999, 1999, 3999, 7999, 15999, 29999, 29999, 29999]


async def test_wsgate_js_waits_at_least_try_again_delay_after_1013(scripted: Page) -> None:
    """1013 "try again later": the floor plus the usual jitter, and "online" does not cut it short."""
    result = await scripted.evaluate("""async () => {
        const { connect } = await import("/static/wsgate.js");
        const realRandom = Math.random;
        Math.random = () => 0;  // no jitter at all
        try {
          const first = FakeSocket.made.length;
          const conn = connect("ws://gw.test/ws", { WebSocket: FakeSocket, tryAgainDelay: 300 });
          const events = record(conn);
          (await socketNumber(first + 1)).open();
          FakeSocket.made[first].drop(1013);
          await new Promise((r) => setTimeout(r, 50));
          window.dispatchEvent(new Event("online"));
          await new Promise((r) => setTimeout(r, 100));
          const early = FakeSocket.made.length - first;
          (await socketNumber(first + 2)).open();
          FakeSocket.made[first + 1].drop(1011);  // another code: no floor
          await new Promise((r) => setTimeout(r, 0));
          conn.close();
          return { early, delays: events.filter((e) => e.type === "reconnecting").map((e) => e.delay) };
        } finally {
          Math.random = realRandom;
        }
    }""")
    assert result["delays"] == [300, 0]
    assert result["early"] == 1


async def test_wsgate_js_which_closes_reconnect(scripted: Page) -> None:
    table = await scripted.evaluate("""async () => {
        const { shouldReconnect } = await import("/static/wsgate.js");
        const codes = [1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015,
                       3000, 3003, 3008, 4000, 4001, 4999];
        return Object.fromEntries(codes.map((c) => [c, shouldReconnect(c)]));
    }""")
    retry = {int(code) for code, again in table.items() if again}
    assert retry == {1001, 1005, 1006, 1011, 1012, 1013, 1014, 3000, 3008}


async def test_wsgate_js_gives_up_when_told_to(scripted: Page) -> None:
    """No retry: a first socket that never opened (unless retryFirst), reconnect: false,
    the user's own close(); and a token function that fails is an attempt that failed."""
    result = await scripted.evaluate("""async () => {
        const { connect } = await import("/static/wsgate.js");
        const closes = (conn) => record(conn);
        const pause = () => new Promise((r) => setTimeout(r, 100));
        const out = {};

        const first = connect("ws://gw.test/a", { WebSocket: FakeSocket, minDelay: 5 });
        const a = closes(first);
        (await socketNumber(1)).drop(1006);
        await pause();
        out.first = { made: FakeSocket.made.length, events: a };

        const eager = connect("ws://gw.test/b",
                              { WebSocket: FakeSocket, minDelay: 5, retryFirst: true, maxRetries: 2 });
        const b = closes(eager);
        (await socketNumber(2)).drop(1006);
        (await socketNumber(3)).drop(1006);
        await pause();
        out.eager = { made: FakeSocket.made.length, events: b, state: eager.state };

        const off = connect("ws://gw.test/c", { WebSocket: FakeSocket, minDelay: 5, reconnect: false });
        const c = closes(off);
        (await socketNumber(4)).open();
        FakeSocket.made[3].drop(1012);
        await pause();
        out.off = { made: FakeSocket.made.length, events: c };

        const mine = connect("ws://gw.test/d", { WebSocket: FakeSocket, minDelay: 5 });
        const d = closes(mine);
        (await socketNumber(5)).open();
        mine.close(1000, "bye");
        await pause();
        out.mine = { made: FakeSocket.made.length, events: d };

        let tries = 0;
        const broken = connect("ws://gw.test/e", { WebSocket: FakeSocket, minDelay: 5, retryFirst: true, maxRetries: 3,
          token: () => { tries += 1; throw new Error("no token today"); } });
        const e = closes(broken);
        await new Promise((r) => setTimeout(r, 400));
        out.broken = { made: FakeSocket.made.length, tries, events: e, state: broken.state };
        return out;
    }""")

    def story(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(e["type"], e.get("code"), e.get("willReconnect")) for e in events if e["type"] in ("close", "error")]

    assert result["first"]["made"] == 1
    assert story(result["first"]["events"]) == [("close", 1006, False)]
    assert result["eager"]["made"] == 3
    assert story(result["eager"]["events"]) == [("close", 1006, True), ("close", 1006, False)]
    assert result["eager"]["state"] == "closed"
    assert result["off"]["made"] == 4
    assert story(result["off"]["events"]) == [("close", 1012, False)]
    assert result["mine"]["made"] == 5
    assert story(result["mine"]["events"]) == [("close", 1000, False)]
    assert result["broken"]["made"] == 5  # no socket without a token
    assert result["broken"]["tries"] == 3
    assert story(result["broken"]["events"]) == [
        ("error", None, None), ("close", 1006, True), ("error", None, None), ("close", 1006, True),
        ("error", None, None), ("close", 1006, False)]
    assert result["broken"]["state"] == "closed"


async def test_wsgate_js_retries_at_once_when_the_browser_is_back_online(scripted: Page) -> None:
    """A retry that waits (here a minute) goes as soon as the window fires "online"."""
    result = await scripted.evaluate("""async () => {
        const { connect } = await import("/static/wsgate.js");
        const conn = connect("ws://gw.test/ws", { WebSocket: FakeSocket, minDelay: 60000, maxDelay: 60000 });
        Math.random = () => 0.5;  // this page is the test's own: a wait of 30 s, not a lucky 0
        const events = record(conn);
        (await socketNumber(1)).open();
        FakeSocket.made[0].drop(1006);
        await new Promise((r) => setTimeout(r, 100));
        const before = FakeSocket.made.length;
        window.dispatchEvent(new Event("online"));
        (await socketNumber(2)).open();
        conn.close();
        await new Promise((r) => setTimeout(r, 50));
        window.dispatchEvent(new Event("online"));  // closed: nothing happens
        await new Promise((r) => setTimeout(r, 50));
        return { before, after: FakeSocket.made.length, state: conn.state, delay: events.find((e) => e.delay)?.delay };
    }""")
    assert result["delay"] == 30000
    assert result["before"] == 1
    assert result["after"] == 2
    assert result["state"] == "closed"
