"""Chat on an endpoint with ``auth``: names from the identity, one member per user
however many tabs, and the ``rooms`` claim, over the memory broker and across two
instances sharing a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import jwt
import pytest
from conftest import RedisServer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from wsgate.testing import GatewayServer, run_gateway

SECRET = "chat-auth-test-secret-0123456789abcdef"
AUTH = {"users": {"jwt": {"algorithms": ["HS256"], "secret": SECRET}}}
TIMEOUT = 10


def token(user: str, **claims: Any) -> str:
    return jwt.encode({"sub": user, **claims}, SECRET, algorithm="HS256")


@asynccontextmanager
async def chat_gateway(**config: Any) -> AsyncIterator[GatewayServer]:
    endpoints = {"/chat": {"handler": "chat", "auth": "users"}}
    async with run_gateway(endpoints, auth=AUTH, policy={"heartbeat": {"interval": 0}}, **config) as gw:
        yield gw


async def join(gw: GatewayServer, tok: str, query: str = "room=lobby") -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(f"{gw.ws_url}/chat?{query}", subprotocols=["wsgate.auth", "wsgate.bearer." + tok])
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    assert json.loads(await ws.recv())["type"] == "history"
    return ws, welcome


async def next_event(ws: ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == kind:
                return event


async def no_event(ws: ClientConnection, kind: str, within: float = 0.3) -> None:
    try:
        async with asyncio.timeout(within):
            while True:
                event = json.loads(await ws.recv())
                assert event["type"] != kind, f"unexpected {event}"
    except TimeoutError:
        pass


async def test_the_name_comes_from_the_token_not_the_query() -> None:
    async with chat_gateway() as gw:
        ws, welcome = await join(gw, token("u-17", name="Ann"), "room=lobby&name=root")
        assert welcome["name"] == "Ann"
        ws2, welcome2 = await join(gw, token("u-18"), "room=lobby&name=Ann")
        assert welcome2["name"] == "u-18"  # no name claim: the user id
        assert welcome2["users"] == ["Ann", "u-18"]
        await ws.close()
        await ws2.close()


async def test_two_tabs_of_one_user_are_one_member() -> None:
    async with chat_gateway() as gw, AsyncExitStack() as stack:
        watcher, _ = await join(gw, token("w", name="watcher"))
        stack.push_async_callback(watcher.close)
        assert (await next_event(watcher, "join"))["name"] == "watcher"  # its own
        tab1, first = await join(gw, token("u1", name="Ann"))
        assert (await next_event(watcher, "join"))["name"] == "Ann"
        tab2, second = await join(gw, token("u1", name="Ann"))
        assert second["name"] == "Ann"
        assert second["users"] == ["Ann", "watcher"]
        await no_event(watcher, "join")  # the second tab is not a new member
        await tab1.send("from tab one")
        assert (await next_event(tab2, "message"))["text"] == "from tab one"
        await tab1.close()
        await no_event(watcher, "leave")  # still here in tab two
        await tab2.close()
        leave = await next_event(watcher, "leave")
        assert (leave["name"], leave["users"]) == ("Ann", ["watcher"])
        assert first["name"] == "Ann"


async def test_another_user_with_the_same_display_name_gets_a_suffix() -> None:
    async with chat_gateway() as gw:
        ann, _ = await join(gw, token("u1", name="Ann"))
        other, welcome = await join(gw, token("u2", name="Ann"))
        assert welcome["name"] == "Ann-2"
        tab, again = await join(gw, token("u2", name="Ann"))
        assert again["name"] == "Ann-2"  # the same user finds its own name
        for ws in (ann, other, tab):
            await ws.close()


@pytest.mark.parametrize(("rooms", "room", "allowed"), [
    (["lobby"], "lobby", True),
    (["team-*"], "team-red", True),
    (["team-*"], "lobby", False),
    ([], "lobby", False),
])
async def test_the_rooms_claim_limits_joins_before_the_upgrade(rooms: list[str], room: str, allowed: bool) -> None:
    async with chat_gateway() as gw:
        if allowed:
            ws, welcome = await join(gw, token("u1", rooms=rooms), f"room={room}")
            assert welcome["room"] == room
            await ws.close()
            return
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{gw.ws_url}/chat?room={room}", additional_headers={"Authorization": "Bearer "
                                                                               + token("u1", rooms=rooms)})
        assert refused.value.response.status_code == 403
        assert room in refused.value.response.body.decode()
        assert gw.stats.endpoints["/chat"].connections == 0


async def test_a_hostile_rooms_pattern_does_not_stall_the_gateway() -> None:
    """A claim pattern with many stars against the longest room name a client may pick:
    refused (or admitted) at once, and the event loop stays free for others meanwhile.
    As a regex (``.*`` per star) this took seconds of CPU per handshake; the bound is on
    this process's CPU time (gateway and client both), which other processes' load does
    not stretch."""
    hostile = token("u1", rooms=["*a" * 6 + "*b"])
    room = "a" * 64
    async with chat_gateway() as gw:
        started = time.process_time()
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{gw.ws_url}/chat?room={room}", additional_headers={"Authorization": "Bearer " + hostile},
                          open_timeout=TIMEOUT)
        assert refused.value.response.status_code == 403
        assert time.process_time() - started < 1.0
        ws, welcome = await join(gw, token("u2", rooms=["*a" * 6 + "*"]), f"room={room}")
        assert welcome["room"] == room
        await ws.close()


async def test_tabs_on_two_instances_sharing_redis_are_one_member(redis_server: RedisServer) -> None:
    async with chat_gateway(broker=redis_server.url) as one, chat_gateway(broker=redis_server.url) as two:
        watcher, _ = await join(one, token("w", name="watcher"))
        assert (await next_event(watcher, "join"))["name"] == "watcher"  # its own
        tab1, _ = await join(one, token("u1", name="Ann"))
        assert (await next_event(watcher, "join"))["name"] == "Ann"
        tab2, welcome = await join(two, token("u1", name="Ann"))
        assert welcome["name"] == "Ann"
        assert welcome["users"] == ["Ann", "watcher"]
        await no_event(watcher, "join")
        await tab2.close()
        await no_event(watcher, "leave")
        await tab1.close()
        assert (await next_event(watcher, "leave"))["users"] == ["watcher"]
        await watcher.close()
