"""``POST /api/publish``: server-side messages to a room, on every instance, behind a bearer token."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import RedisServer, WsgateProcess

from wsgate.testing import GatewayServer, eventually, run_gateway

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]
LISTENING = re.compile(r"wsgate listening on http://(\S+?):(\d+)/")
TOKEN = "s3cret-token"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post(session: aiohttp.ClientSession, base_url: str, body: Any, token: str | None = TOKEN,
               *, raw: bytes | None = None, scheme: str = "Bearer") -> tuple[int, dict[str, Any]]:
    """POST ``body`` as JSON (or ``raw`` bytes); the status and the decoded JSON answer."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"{scheme} {token}"
    data = raw if raw is not None else json.dumps(body).encode()
    async with asyncio.timeout(5), session.post(f"{base_url}/api/publish", data=data, headers=headers) as r:
        text = await r.text()
        if r.status == 404:
            return r.status, {"text": text}
        if r.status == 401:
            assert r.headers.get("WWW-Authenticate") == "Bearer"
        return r.status, json.loads(text)


class Member:
    """A chat user over a real WebSocket, joined up to its own join announcement."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    @classmethod
    async def join(cls, session: aiohttp.ClientSession, ws_url: str, name: str, room: str) -> Member:
        member = cls(await session.ws_connect(f"{ws_url}/chat?room={room}&name={name}"))
        assert (await member.next())["type"] == "welcome"
        assert (await member.next())["type"] == "history"
        joined = await member.next()
        assert (joined["type"], joined["name"]) == ("join", name)
        return member

    async def next(self) -> dict[str, Any]:
        async with asyncio.timeout(5):
            event: dict[str, Any] = json.loads(await self.ws.receive_str())
        return event

    async def next_published(self) -> dict[str, Any]:
        """The next ``publish`` event, passing over other users' joins."""
        while True:
            event = await self.next()
            if event["type"] != "join":
                assert event["type"] == "publish", event
                return event


def published(room: str, data: Any) -> dict[str, Any]:
    return {"type": "publish", "room": room, "data": data}


# --- two instances over Redis ------------------------------------------------------


async def test_publish_reaches_the_room_on_every_instance(
        redis_server: RedisServer, wsgate_process: Start, write_config: WriteConfig,
        session: aiohttp.ClientSession) -> None:
    """A takes the token from its config; B's config token is overridden by WSGATE_API_TOKEN."""
    endpoints = [{"path": "/chat", "handler": "chat"}]
    server = {"host": "127.0.0.1", "port": 0, "shutdown_timeout": "2s"}
    a_cfg = write_config({"server": server, "broker": redis_server.url, "api": {"token": TOKEN},
                          "endpoints": endpoints}, "a.yaml")
    b_cfg = write_config({"server": server, "broker": redis_server.url, "api": {"token": "from-the-file"},
                          "endpoints": endpoints}, "b.yaml")
    handles = [wsgate_process(a_cfg, wait=False), wsgate_process(b_cfg, wait=False,
                                                                 env={"WSGATE_API_TOKEN": "from-env"})]
    for handle in handles:
        m = handle.wait_for_line(LISTENING.pattern, timeout=20)
        handle.host, handle.port = m.group(1).strip("[]"), int(m.group(2))
    a, b = handles

    alice = await Member.join(session, a.ws_url, "alice", "lobby")
    bob = await Member.join(session, b.ws_url, "bob", "lobby")
    carol = await Member.join(session, b.ws_url, "carol", "other")

    data = {"title": "deploy", "n": 3, "tags": ["a", "ü"]}
    assert await post(session, a.url, {"endpoint": "/chat", "room": "lobby", "data": data}) == \
        (200, {"published": True})
    for member in (alice, bob):
        assert await member.next_published() == published("lobby", data)

    assert (await post(session, b.url, {"endpoint": "/chat", "room": "other", "data": 1}, "from-the-file"))[0] == 401
    assert await post(session, b.url, {"endpoint": "/chat", "room": "other", "data": 1}, "from-env") == \
        (200, {"published": True})
    # carol's first event is the publish to her room: the earlier one to lobby never reached her.
    assert await carol.next_published() == published("other", 1)

    assert await post(session, b.url, {"endpoint": "/chat", "room": "lobby"}, "from-env") == \
        (200, {"published": True})
    # ... and alice and bob go straight from the first lobby publish to this one.
    for member in (alice, bob):
        assert await member.next_published() == published("lobby", None)


# --- one instance, in process ------------------------------------------------------


@pytest.fixture
async def gw() -> AsyncIterator[GatewayServer]:
    async with run_gateway({"/chat": "chat"}, api={"token": TOKEN}) as server:
        yield server


async def test_publish_with_the_memory_broker(gw: GatewayServer) -> None:
    alice = await Member.join(gw.session, gw.ws_url, "alice", "lobby")
    carol = await Member.join(gw.session, gw.ws_url, "carol", "other")
    assert await post(gw.session, gw.url, {"endpoint": "/chat", "room": "lobby", "data": "hi"}) == \
        (200, {"published": True})
    assert await alice.next_published() == published("lobby", "hi")
    assert await post(gw.session, gw.url, {"endpoint": "/chat", "room": "other", "data": [1]}) == \
        (200, {"published": True})
    assert await carol.next_published() == published("other", [1])
    assert gw.stats.endpoint("/chat").messages_out >= 2


async def test_no_token_configured_means_no_api() -> None:
    async with run_gateway({"/chat": "chat"}) as server:
        status, _ = await post(server.session, server.url, {"endpoint": "/chat", "room": "lobby"})
        assert status == 404
        status, _ = await post(server.session, server.url, {"endpoint": "/chat", "room": "lobby"}, None)
        assert status == 404


@pytest.mark.parametrize(("token", "scheme"), [(None, "Bearer"), ("wrong", "Bearer"), (TOKEN + "x", "Bearer"),
                                               (TOKEN[:-1], "Bearer"), (TOKEN, "Basic"), ("", "Bearer")])
async def test_missing_or_wrong_bearer_is_401(gw: GatewayServer, token: str | None, scheme: str) -> None:
    alice = await Member.join(gw.session, gw.ws_url, "alice", "lobby")
    status, body = await post(gw.session, gw.url, {"endpoint": "/chat", "room": "lobby", "data": "x"},
                              token, scheme=scheme)
    assert (status, body) == (401, {"error": "missing or wrong bearer token"})
    # Nothing was delivered: the next event alice sees is a later, authorised publish.
    assert (await post(gw.session, gw.url, {"endpoint": "/chat", "room": "lobby", "data": "ok"}))[0] == 200
    assert await alice.next_published() == published("lobby", "ok")


@pytest.mark.parametrize(("body", "raw", "wanted"), [
    (None, b"not json", "bad publish request: body: Invalid JSON"),
    (None, b"", "bad publish request: body: Invalid JSON"),
    ([1, 2], None, "bad publish request: body: Input should be an object"),
    ({"endpoint": "/chat"}, None, "bad publish request: room: Field required"),
    ({"room": "lobby"}, None, "bad publish request: endpoint: Field required"),
    ({"endpoint": "/chat", "room": 5}, None, "bad publish request: room: Input should be a valid string"),
    ({"endpoint": "/chat", "room": "lobby", "topic": "x"}, None, "topic: Extra inputs are not permitted"),
    ({"endpoint": "/nope", "room": "lobby"}, None, "no endpoint '/nope'; endpoints: /chat"),
])
async def test_bad_requests_are_400_saying_what_is_wrong(gw: GatewayServer, body: Any, raw: bytes | None,
                                                         wanted: str) -> None:
    status, answer = await post(gw.session, gw.url, body, raw=raw)
    assert status == 400
    assert wanted in answer["error"]


async def test_token_from_the_environment(wsgate_process: Start, write_config: WriteConfig,
                                          session: aiohttp.ClientSession) -> None:
    config = write_config({"endpoints": [{"path": "/chat", "handler": "chat"}]})
    instance = wsgate_process(config, env={"WSGATE_API_TOKEN": "env-only"})
    member = await Member.join(session, instance.ws_url, "alice", "lobby")
    assert (await post(session, instance.url, {"endpoint": "/chat", "room": "lobby"}, TOKEN))[0] == 401
    assert await post(session, instance.url, {"endpoint": "/chat", "room": "lobby", "data": 7}, "env-only") == \
        (200, {"published": True})
    assert await member.next_published() == published("lobby", 7)


async def test_publish_during_a_redis_outage_says_the_broker_is_unavailable(redis_server: RedisServer) -> None:
    """Other instances cannot get the message; the API must not answer "published"."""
    async with run_gateway({"/chat": "chat"}, broker=redis_server.url, api={"token": TOKEN}) as server:
        redis_server.kill()

        async def ready() -> int:
            async with server.get("/readyz") as response:
                return response.status

        await eventually(ready, 503, 5)
        status, body = await post(server.session, server.url, {"endpoint": "/chat", "room": "lobby", "data": 1})
        assert status == 503, body
        assert body["error"].startswith("broker unavailable")
