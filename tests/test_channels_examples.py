"""The example apps of examples/django_app and examples/fastapi_app, each beside a real wsgate.

Each test starts ``python -m wsgate`` with a ``channels`` endpoint whose subscribe and rpc
proxies point at the app, starts the app under its own server (gunicorn for Django, uvicorn
for FastAPI) on a free loopback port, and drives real Chromium through the app's page:
log in, connect with a token from the app, get the app's cent publications, be refused by
the app's subscribe proxy, and show the app's RPC answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import ROOT, WsgateProcess, free_port
from playwright.async_api import Browser, Page, expect
from test_browser import WAIT_MS, launched_chromium

pytestmark = pytest.mark.asyncio(loop_scope="module")

CENTRIFUGE_JS = ROOT / "tests" / "node" / "node_modules" / "centrifuge" / "dist" / "centrifuge.js"
EXAMPLES = ROOT / "examples"
SECRET = secrets.token_hex(32)
API_KEY = secrets.token_hex(16)
README_APP_URL = "http://127.0.0.1:8000"

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]


def app_command(app: str, port: int) -> tuple[list[str], Path]:
    """How the app's README runs it, on ``port``; and the folder to run it in."""
    if app == "django":
        folder = EXAMPLES / "django_app"
        return [sys.executable, "-m", "gunicorn", "shop.wsgi:application", "--bind", f"127.0.0.1:{port}",
                "--workers", "1", "--threads", "4", "--access-logfile", "-"], folder
    folder = EXAMPLES / "fastapi_app"
    return [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)], folder


def gateway_config(app: str, app_url: str) -> str:
    """The wsgate config of the app's README, with the app on ``app_url`` (wsgate gets ``--port 0``)."""
    readme = (app_command(app, 0)[1] / "README.md").read_text()
    blocks = re.findall(r"^```yaml\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "the README shows one wsgate config"
    assert README_APP_URL in blocks[0]
    return blocks[0].replace(README_APP_URL, app_url)


@pytest.fixture
def app_server(tmp_path: Path) -> Iterator[Callable[[str, int, str], None]]:
    """Factory: start an example app on ``port``, talking to the gateway at ``gateway_url``."""
    started: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(app: str, port: int, gateway_url: str) -> None:
        command, folder = app_command(app, port)
        log = tmp_path / f"{app}.log"
        logs.append(log)
        env = {**os.environ, "WSGATE_URL": gateway_url, "WSGATE_TOKEN_SECRET": SECRET,
               "WSGATE_API_KEY": API_KEY, "CENTRIFUGE_JS": str(CENTRIFUGE_JS), "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            started.append(subprocess.Popen(command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT))
        # gunicorn listens before its worker has imported Django: wait for a page, not a port.
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    assert resp.status == 200
                    return
            except OSError:
                if time.monotonic() > deadline or started[-1].poll() is not None:
                    raise AssertionError(f"{app} did not start:\n{log.read_text()}") from None
                time.sleep(0.1)

    yield start
    for proc in started:
        # Both servers take SIGINT as "stop now"; gunicorn's graceful SIGTERM idles for seconds.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launched_chromium() as chromium:
        yield chromium


@asynccontextmanager
async def logged_in(browser: Browser, app_url: str, user: str) -> AsyncIterator[Page]:
    """A fresh browser context logged in to the app as ``user``; fails if the page's script threw."""
    context = await browser.new_context()
    errors: list[str] = []
    try:
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        response = await page.goto(app_url + "/")
        assert response is not None
        assert response.status == 200
        await page.select_option("#user", user)
        await page.click("#login")
        await expect(page.locator("#user")).to_have_text(user)
        yield page
        assert errors == [], f"uncaught errors in the page: {errors}"
    finally:
        await context.close()


def items(page: Page, list_id: str) -> Any:
    return page.locator(f"#{list_id} li")


@pytest.mark.parametrize("app", ["django", "fastapi"])
async def test_the_example_shop_in_chromium(
    app: str, browser: Browser, wsgate_process: Start, write_config: WriteConfig, app_server: Any
) -> None:
    if not CENTRIFUGE_JS.is_file():
        pytest.fail(f"{CENTRIFUGE_JS} is missing: npm install --prefix tests/node centrifuge (see the app's README)")
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    gw = wsgate_process(write_config(gateway_config(app, app_url)),
                        env={"WSGATE_TOKEN_SECRET": SECRET, "WSGATE_API_KEY": API_KEY})
    await asyncio.to_thread(app_server, app, port, gw.url)

    async with logged_in(browser, app_url, "alice") as alice, logged_in(browser, app_url, "bob") as bob:
        # Connected with the app's token; `news` let in by the subscribe proxy, `orders#alice`
        # by its user limit, and `staff` refused by the subscribe proxy.
        for page in (alice, bob):
            await expect(page.locator("body")).to_have_attribute("data-state", "connected")
            await expect(page.locator("#news-state")).to_have_text("subscribed")
            await expect(page.locator("#orders-state")).to_have_text("subscribed")
        await expect(alice.locator("#staff-state")).to_have_text("unsubscribed: 103 permission denied")
        await expect(bob.locator("#staff-state")).to_have_text("subscribed")

        # A channel limited to another user is refused by wsgate before any proxy is asked.
        refused = await bob.evaluate("""() => new Promise((resolve) => {
            const sub = centrifuge.newSubscription("orders#alice");
            sub.on("unsubscribed", (ctx) => resolve([ctx.code, ctx.reason]));
            sub.subscribe();
        })""")
        assert refused == [103, "permission denied"]

        # The app's view saves the order and publishes it with cent.
        await alice.fill("#item", "teapot")
        await alice.click("#order")
        await expect(items(alice, "orders")).to_have_text(["#1 teapot: placed"])
        for page in (alice, bob):
            await expect(items(page, "news")).to_have_text(["order #1 placed"])
        await expect(items(bob, "orders")).to_have_count(0)

        # RPCs are answered by the app's rpc proxy view, with the user wsgate verified.
        await alice.click("#whoami")
        await expect(alice.locator("#rpc")).not_to_be_empty()
        assert json.loads(await alice.locator("#rpc").text_content() or "") == \
            {"user": "alice", "staff": False, "orders": 1}
        await bob.click("#whoami")
        await expect(bob.locator("#rpc")).not_to_be_empty()
        assert json.loads(await bob.locator("#rpc").text_content() or "") == \
            {"user": "bob", "staff": True, "orders": 0}
        # The proxy's error answer reaches the caller as the RPC's error.
        failed = await bob.evaluate("""() => centrifuge.rpc("nope", {}).then(
            () => null, (err) => [err.code, err.message])""")
        assert failed == [104, "method not found"]

    assert "Traceback" not in gw.output
