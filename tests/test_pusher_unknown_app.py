"""A key no ``pusher`` endpoint serves: ``pusher:error`` 4001, then close 4001, as Pusher
answers an unknown app, so that pusher-js stops instead of retrying an HTTP refusal.

Two apps share the gateway (``/app/key-one``, ``/app/key-two``); both claim ``/app/``, the
first in the config answers the handshakes under it that neither path is. pusher-js's side
is tests/node/pusher_unknown_app.js.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
from conftest import run_node
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from wsgate.testing import GatewayServer, run_gateway

TIMEOUT = 10
ONE, TWO = "key-one", "key-two"
WATCH_MS = 1500  # pusher-js retries a refused handshake after 0 s ("retry") or 1 s ("backoff")
UNKNOWN_APP = {"event": "pusher:error", "data": {"code": 4001, "message": "App key wrong not in this cluster"}}


def app(app_id: str, key: str) -> dict[str, object]:
    return {"handler": "pusher", "origins": "*",
            "options": {"app_id": app_id, "key": key, "secret": f"{key}-secret-0123456789"}}


@asynccontextmanager
async def two_apps() -> AsyncIterator[GatewayServer]:
    async with run_gateway({f"/app/{ONE}": app("1", ONE), f"/app/{TWO}": app("2", TWO)}) as gw:
        yield gw


def closes(gw: GatewayServer) -> dict[str, dict[int, int]]:
    return {path: dict(s.handshake_closes) for path, s in gw.stats.endpoints.items()}


async def test_pusher_js_with_a_wrong_key_reports_4001_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wsgate.app")
    async with two_apps() as gw:
        parts = urlsplit(gw.url)
        report = await run_node("pusher_unknown_app.js", str(parts.hostname), str(parts.port), "wrong", ONE, TWO,
                                str(WATCH_MS), within=30)
        assert report["error"] is None, report
        assert report["stage"] == "done", report
        wrong = report["wrong"]
        # pusher-js takes 4000-4099 as "refused": it emits the error and disconnects, for good.
        assert wrong["initialState"] == "connecting"
        assert [s["state"] for s in wrong["states"]] == ["disconnected"], wrong
        assert wrong["finalState"] == "disconnected"
        assert [e["error"] for e in wrong["errors"]] == [
            {"type": "WebSocketError", "error": {"type": "PusherError", "data": UNKNOWN_APP["data"]}}]
        assert report["right"]["state"] == report["other"]["state"] == "connected"
        # One attempt only: one handshake closed at once, counted on the first app, which answers /app/.
        assert closes(gw) == {f"/app/{ONE}": {4001: 1}, f"/app/{TWO}": {}}
        async with gw.get("/metrics") as r:
            lines = (await r.text()).splitlines()
        assert f'wsgate_handshake_closes_total{{code="4001",endpoint="/app/{ONE}"}} 1.0' in lines
        assert not [line for line in lines if line.startswith("wsgate_handshake_closes") and f"/app/{TWO}" in line]
    logged = [r for r in caplog.records if r.name == "wsgate.app" and "closed at once" in r.getMessage()]
    assert [r.levelno for r in logged] == [logging.INFO]
    assert "/app/wrong" in logged[0].getMessage()
    assert "4001 Application does not exist" in logged[0].getMessage()


async def test_a_websocket_client_reads_the_error_then_close_4001() -> None:
    async with asyncio.timeout(TIMEOUT), two_apps() as gw:
        async with connect(gw.ws_url + "/app/wrong?protocol=7&client=js&version=8.6.0") as ws:
            assert json.loads(await ws.recv()) == UNKNOWN_APP
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "Application does not exist")
        # Pusher echoes the key it was given; a long one is cut, not sent whole.
        async with connect(gw.ws_url + "/app/" + "k" * 5000 + "?protocol=7") as ws:
            message = json.loads(await ws.recv())["data"]["message"]
            assert message == "App key " + "k" * 100 + "... not in this cluster"
        # The apps' own paths are theirs.
        for key in (ONE, TWO):
            async with connect(f"{gw.ws_url}/app/{key}?protocol=7") as ws:
                assert json.loads(await ws.recv())["event"] == "pusher:connection_established"
        assert closes(gw)[f"/app/{ONE}"] == {4001: 2}


async def test_plain_requests_under_app_get_404_with_the_reason() -> None:
    async with asyncio.timeout(TIMEOUT), two_apps() as gw:
        async with gw.get("/app/wrong") as r:
            assert (r.status, r.content_type, await r.text()) == (404, "text/plain", "Application does not exist\n")
        async with gw.session.post(gw.url + "/app/wrong", data=b"{}") as r:
            assert (r.status, await r.text()) == (404, "Application does not exist\n")
        async with gw.get("/app/") as r:  # no key at all: nobody's prefix answers, the gateway's 404
            assert r.status == 404
        async with gw.get(f"/app/{ONE}") as r:  # an app's own path stays a WebSocket endpoint
            assert r.status == 400
        assert closes(gw) == {f"/app/{ONE}": {}, f"/app/{TWO}": {}}  # only handshakes are counted
