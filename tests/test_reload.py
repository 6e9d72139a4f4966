"""Hot reload of a real process: SIGHUP and POST /api/reload, valid and invalid configs."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

Start = Callable[..., Any]
TOKEN = "reload-token-123"

BEFORE = f"""\
server: {{host: 127.0.0.1}}
api: {{token: {TOKEN}}}
policy: {{heartbeat: {{interval: 0}}}}
endpoints:
  - {{path: /echo, handler: echo, max_message_size: 4096}}
  - {{path: /old, handler: echo}}
"""

AFTER = f"""\
server: {{host: 127.0.0.1}}
api: {{token: {TOKEN}}}
policy: {{heartbeat: {{interval: 0}}}}
endpoints:
  - {{path: /echo, handler: echo, max_message_size: 1024}}
  - {{path: /new, handler: echo}}
"""

# line 5, column 34 (the send_queue key): a negative size
INVALID = f"""\
server: {{host: 127.0.0.1}}
api: {{token: {TOKEN}}}
policy: {{heartbeat: {{interval: 0}}}}
endpoints:
  - {{path: /echo, handler: echo, send_queue: -5}}
  - {{path: /gone-if-applied, handler: echo}}
"""
INVALID_AT = (5, 34)


async def echoes(ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
    await ws.send_str(text)
    assert await ws.receive_str(timeout=5) == text


async def handshake_status(session: aiohttp.ClientSession, url: str) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with asyncio.timeout(5):
            await session.ws_connect(url)
    return info.value.status


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def check_after_valid_reload(session: aiohttp.ClientSession, base: str, ws_base: str,
                                   old_echo: aiohttp.ClientWebSocketResponse,
                                   old_removed: aiohttp.ClientWebSocketResponse) -> None:
    # the new endpoint accepts connections
    async with session.ws_connect(ws_base + "/new") as ws:
        await echoes(ws, "new endpoint")
    # the removed endpoint refuses new handshakes but its open connection still works
    assert await handshake_status(session, ws_base + "/old") == 404
    await echoes(old_removed, "still on the removed endpoint")
    # the lowered max_message_size applies to new connections only
    big = "b" * 2000
    await echoes(old_echo, big)
    async with session.ws_connect(ws_base + "/echo") as ws:
        await echoes(ws, "small")
        await ws.send_str(big)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
    await echoes(old_echo, "old connection unaffected")


async def test_sighup_applies_a_valid_config_to_new_connections(
    wsgate_process: Start, write_config: Callable[..., Path]
) -> None:
    config = write_config(BEFORE)
    proc = wsgate_process(config)
    async with aiohttp.ClientSession() as session:
        old_echo = await session.ws_connect(proc.ws_url + "/echo")
        old_removed = await session.ws_connect(proc.ws_url + "/old")
        await echoes(old_removed, "before")
        assert await handshake_status(session, proc.ws_url + "/new") == 404

        config.write_text(AFTER)
        proc.signal(signal.SIGHUP)
        await asyncio.to_thread(proc.wait_for_line, r"reloaded .*endpoints /echo, /new")
        await check_after_valid_reload(session, proc.url, proc.ws_url, old_echo, old_removed)
        await old_echo.close()
        await old_removed.close()
    assert proc.proc.poll() is None


async def test_sighup_with_an_invalid_config_keeps_the_old_one_and_logs_where(
    wsgate_process: Start, write_config: Callable[..., Path]
) -> None:
    config = write_config(BEFORE)
    proc = wsgate_process(config)
    async with aiohttp.ClientSession() as session:
        open_ws = await session.ws_connect(proc.ws_url + "/old")
        config.write_text(INVALID)
        proc.signal(signal.SIGHUP)
        m = await asyncio.to_thread(proc.wait_for_line, re.escape(str(config)) + r":(\d+):(\d+): (.*)")
        assert (int(m.group(1)), int(m.group(2))) == INVALID_AT
        assert "send_queue" in m.group(3)
        assert "reload failed" in proc.output
        assert proc.proc.poll() is None
        # still the old config: /old works, old policy on /echo, the invalid one's endpoint absent
        await echoes(open_ws, "still here")
        async with session.ws_connect(proc.ws_url + "/old") as ws:
            await echoes(ws, "old endpoint still served")
        async with session.ws_connect(proc.ws_url + "/echo") as ws:
            await echoes(ws, "c" * 3000)
        assert await handshake_status(session, proc.ws_url + "/gone-if-applied") == 404
        await open_ws.close()


async def test_api_reload_with_token(wsgate_process: Start, write_config: Callable[..., Path]) -> None:
    config = write_config(BEFORE)
    proc = wsgate_process(config)
    async with aiohttp.ClientSession() as session:
        old_echo = await session.ws_connect(proc.ws_url + "/echo")
        old_removed = await session.ws_connect(proc.ws_url + "/old")

        async with session.post(proc.url + "/api/reload") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"] == "Bearer"
        async with session.post(proc.url + "/api/reload", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401

        config.write_text(INVALID)
        async with session.post(proc.url + "/api/reload", headers=auth()) as response:
            assert response.status == 400
            body = await response.json()
        assert body["reloaded"] is False
        assert len(body["errors"]) == 1
        line, col = INVALID_AT
        assert body["errors"][0].startswith(f"{config}:{line}:{col}: ")
        assert "send_queue" in body["errors"][0]
        await echoes(old_removed, "the invalid config changed nothing")
        async with session.ws_connect(proc.ws_url + "/old") as ws:
            await echoes(ws, "old still served")

        config.write_text(AFTER)
        async with session.post(proc.url + "/api/reload", headers=auth()) as response:
            assert response.status == 200
            body = await response.json()
        assert body == {"reloaded": True, "endpoints": ["/echo", "/new"]}
        await check_after_valid_reload(session, proc.url, proc.ws_url, old_echo, old_removed)
        await old_echo.close()
        await old_removed.close()


async def test_api_reload_is_absent_without_a_token(wsgate_process: Start, write_config: Callable[..., Path]) -> None:
    config = write_config(BEFORE.replace(f"api: {{token: {TOKEN}}}\n", ""))
    proc = wsgate_process(config, env={"WSGATE_API_TOKEN": ""})
    async with aiohttp.ClientSession() as session:
        for headers in ({}, auth()):
            async with session.post(proc.url + "/api/reload", headers=headers) as response:
                assert response.status == 404
        async with session.ws_connect(proc.ws_url + "/old") as ws:
            await echoes(ws, "nothing was reloaded")
