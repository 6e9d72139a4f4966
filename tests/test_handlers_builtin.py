"""The built-in chat handler over real WebSockets: message shapes, rooms, history, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from wsgate.testing import GatewayServer

Start = Callable[..., Awaitable[GatewayServer]]
WS = aiohttp.ClientWebSocketResponse


async def recv(ws: WS) -> dict[str, Any]:
    msg = await ws.receive(timeout=5)
    assert msg.type is WSMsgType.TEXT, msg
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def join(gw: GatewayServer, stack: Any, query: str = "", path: str = "/chat") -> tuple[WS, str]:
    """Connect, check welcome/history/own join, return the socket and the given name."""
    ws = await stack.enter_async_context(gw.connect(path + query))
    welcome = await recv(ws)
    assert welcome["type"] == "welcome", welcome
    assert (await recv(ws))["type"] == "history"
    own = await recv(ws)
    assert own == {"type": "join", "name": welcome["name"], "users": welcome["users"]}
    return ws, welcome["name"]


async def close_reason(ws: WS) -> tuple[int, str]:
    """Skip text frames until the server's close; its code and reason."""
    async with asyncio.timeout(5):
        while (msg := await ws.receive()).type is WSMsgType.TEXT:
            pass
    assert msg.type is WSMsgType.CLOSE, msg
    return msg.data, msg.extra


async def test_welcome_history_join_shapes(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    async with gw.connect("/chat?room=r1&name=alice") as alice:
        welcome = await recv(alice)
        epoch = welcome.pop("epoch")
        assert isinstance(epoch, str)
        assert welcome == {"type": "welcome", "name": "alice", "room": "r1", "users": ["alice"], "recovered": False}
        assert await recv(alice) == {"type": "history", "messages": [], "recovered": False}
        assert await recv(alice) == {"type": "join", "name": "alice", "users": ["alice"]}
        async with gw.connect("/chat?room=r1&name=bob") as bob:
            bob_welcome = await recv(bob)
            assert bob_welcome.pop("epoch") == epoch  # one room, one epoch
            assert bob_welcome == {"type": "welcome", "name": "bob", "room": "r1", "users": ["alice", "bob"],
                                   "recovered": False}
            assert await recv(bob) == {"type": "history", "messages": [], "recovered": False}
            assert await recv(bob) == {"type": "join", "name": "bob", "users": ["alice", "bob"]}
            assert await recv(alice) == {"type": "join", "name": "bob", "users": ["alice", "bob"]}
        assert await recv(alice) == {"type": "leave", "name": "bob", "users": ["alice"]}


async def test_message_shape_and_fan_out(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    async with asyncio.timeout(10), contextlib.AsyncExitStack() as stack:
        alice, _ = await join(gw, stack, "?room=r1&name=alice")
        bob, _ = await join(gw, stack, "?room=r1&name=bob")
        await recv(alice)  # bob's join
        before = time.time()
        await alice.send_str("hello there")
        for ws in (alice, bob):
            event = await recv(ws)
            assert set(event) == {"type", "id", "room", "from", "text", "ts"}
            assert {k: v for k, v in event.items() if k != "ts"} == {
                "type": "message", "id": 1, "room": "r1", "from": "alice", "text": "hello there"}
            assert isinstance(event["ts"], float)
            assert before - 1 <= event["ts"] <= time.time() + 1
        await bob.send_str(json.dumps({"type": "message", "text": "json form"}))
        for ws in (alice, bob):
            event = await recv(ws)
            assert (event["id"], event["from"], event["text"]) == (2, "bob", "json form")


async def test_ids_increase_per_room_independently(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    async with asyncio.timeout(10), contextlib.AsyncExitStack() as stack:
        a, _ = await join(gw, stack, "?room=one&name=a")
        b, _ = await join(gw, stack, "?room=two&name=b")
        seen: dict[str, list[int]] = {"one": [], "two": []}
        for i in range(6):
            ws, room = (a, "one") if i % 3 else (b, "two")
            await ws.send_str(f"msg {i}")
            event = await recv(ws)
            assert event["room"] == room
            assert event["text"] == f"msg {i}"
            seen[room].append(event["id"])
    assert seen == {"one": [1, 2, 3, 4], "two": [1, 2]}


async def test_history_is_limited_and_sent_to_late_joiner(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": {"handler": "chat", "options": {"history": 3}}})
    async with asyncio.timeout(10), contextlib.AsyncExitStack() as stack:
        alice, _ = await join(gw, stack, "?room=h&name=alice")
        for i in range(1, 6):
            await alice.send_str(f"m{i}")
            assert (await recv(alice))["id"] == i
        late = await stack.enter_async_context(gw.connect("/chat?room=h&name=late"))
        assert (await recv(late))["type"] == "welcome"
        history = await recv(late)
        assert history["type"] == "history"
        assert [(m["id"], m["text"], m["from"], m["type"]) for m in history["messages"]] == [
            (3, "m3", "alice", "message"), (4, "m4", "alice", "message"), (5, "m5", "alice", "message")]
        # other rooms have their own (empty) history
        other, _ = await join(gw, stack, "?room=elsewhere&name=x")
        assert not other.closed


async def test_overlong_text_is_an_error_and_connection_stays(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": {"handler": "chat", "options": {"max_text": 10}}})
    async with asyncio.timeout(10), contextlib.AsyncExitStack() as stack:
        alice, _ = await join(gw, stack, "?name=alice")
        await alice.send_str("x" * 11)
        error = await recv(alice)
        assert set(error) == {"type", "error"}
        assert error["type"] == "error"
        assert "too long" in error["error"]
        await alice.send_str(json.dumps({"type": "nonsense"}))
        assert (await recv(alice))["type"] == "error"
        await alice.send_str("x" * 10)
        event = await recv(alice)
        assert (event["type"], event["id"], event["text"]) == ("message", 1, "x" * 10)
        assert not alice.closed


async def test_names_unique_per_room(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    async with asyncio.timeout(10), contextlib.AsyncExitStack() as stack:
        _, first = await join(gw, stack, "?room=r&name=alice")
        second_ws, second = await join(gw, stack, "?room=r&name=alice")
        _, third = await join(gw, stack, "?room=r&name=alice")
        _, elsewhere = await join(gw, stack, "?room=s&name=alice")
        assert (first, second, third, elsewhere) == ("alice", "alice-2", "alice-3", "alice")
        await second_ws.send_str("who am i")
        while (event := await recv(second_ws))["type"] == "join":
            pass
        assert (event["type"], event["from"]) == ("message", "alice-2")


async def test_default_room_and_generated_name(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat", "/other": {"handler": "chat", "options": {"default_room": "hall"}}})
    async with gw.connect("/chat") as ws:
        welcome = await recv(ws)
        assert welcome["room"] == "lobby"
        assert re.fullmatch(r"guest-[0-9a-f]{4}", welcome["name"])
        assert welcome["users"] == [welcome["name"]]
    async with gw.connect("/other?name=zed") as ws:
        welcome = await recv(ws)
        assert (welcome["name"], welcome["room"], welcome["users"]) == ("zed", "hall", ["zed"])


async def test_bad_room_name_is_error_and_1008(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    for room in ("bad%20room", "x" * 65, "semi%3Bcolon", "%F0%9F%92%A9"):
        async with gw.connect(f"/chat?room={room}&name=a") as ws:
            error = await recv(ws)
            assert error["type"] == "error"
            assert "room" in error["error"]
            assert await close_reason(ws) == (1008, "bad room name")


async def test_rate_limit_on_by_default(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    async with asyncio.timeout(10), contextlib.AsyncExitStack() as stack:
        flooder, _ = await join(gw, stack, "?name=flood")
        for i in range(100):
            await flooder.send_str(f"spam {i}")
        assert await close_reason(flooder) == (1008, "rate limit exceeded")
    stats = gw.stats.endpoints["/chat"]
    assert stats.limit_rejections["rate"] == 1
    # the default burst of 40, plus the refused one and whatever refilled meanwhile: far from 100
    assert 41 <= stats.messages_in <= 60


async def test_rate_limit_configurable(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({
        "/tight": {"handler": "chat", "rate_limit": {"messages": 1, "per": "10s", "burst": 3}},
        "/free": {"handler": "chat", "rate_limit": None},
    })
    async with asyncio.timeout(10), contextlib.AsyncExitStack() as stack:
        tight, _ = await join(gw, stack, "?name=t", path="/tight")
        for i in range(3):
            await tight.send_str(f"ok {i}")
            assert (await recv(tight))["id"] == i + 1
        await tight.send_str("one too many")
        assert await close_reason(tight) == (1008, "rate limit exceeded")
        free, _ = await join(gw, stack, "?name=f", path="/free")
        for i in range(150):
            await free.send_str(f"m{i}")
        ids = [(await recv(free))["id"] for _ in range(150)]
        assert ids == list(range(1, 151))
        assert not free.closed
