"""Independent client implementations against the gateway: `websockets` and Node's `ws`."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import NODE_DIR, run_node
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from wsgate.testing import GatewayServer

Start = Callable[..., Awaitable[GatewayServer]]
NODE_CLIENT = NODE_DIR / "client.js"


async def recv_json(conn: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(5):
        data: dict[str, Any] = json.loads(await conn.recv())
    return data


async def read_until_closed(conn: ClientConnection) -> None:
    while True:
        await conn.recv()


async def test_websockets_echo(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"})
    async with asyncio.timeout(10), connect(gw.ws_url + "/ws", compression=None) as conn:
        await conn.send("text ✓")
        reply = await conn.recv()
        assert isinstance(reply, str)
        assert reply == "text ✓"
        await conn.send(b"\x00\x01\xff")
        reply = await conn.recv()
        assert isinstance(reply, bytes)
        assert reply == b"\x00\x01\xff"
        for i in range(200):
            await conn.send(f"n{i}")
        assert [await conn.recv() for _ in range(200)] == [f"n{i}" for i in range(200)]
        # websockets resolves this only on a pong that carries the ping's payload.
        await asyncio.wait_for(await conn.ping(b"ping?"), timeout=5)


async def test_websockets_close_code_echo(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"})
    async with asyncio.timeout(10), connect(gw.ws_url + "/ws") as conn:
        await conn.close(4001, "bye")
    assert conn.protocol.close_rcvd is not None
    assert (conn.protocol.close_rcvd.code, conn.protocol.close_rcvd.reason) == (4001, "bye")
    assert conn.protocol.close_rcvd_then_sent is False  # we sent first, the server answered


async def test_websockets_sees_server_initiated_close(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    async with asyncio.timeout(10), connect(gw.ws_url + "/chat?name=w") as conn:
        assert (await recv_json(conn))["type"] == "welcome"
        await conn.send(b"binary to a text-only handler")
        with pytest.raises(ConnectionClosed) as closed:
            await read_until_closed(conn)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1003


async def test_websockets_chat(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    async with asyncio.timeout(10), connect(gw.ws_url + "/chat?room=py&name=ann") as ann:
        welcome = await recv_json(ann)
        assert isinstance(welcome.pop("epoch"), str)
        assert welcome == {"type": "welcome", "name": "ann", "room": "py", "users": ["ann"], "recovered": False}
        assert await recv_json(ann) == {"type": "history", "messages": [], "recovered": False}
        assert await recv_json(ann) == {"type": "join", "name": "ann", "users": ["ann"]}
        await ann.send("first")
        first = await recv_json(ann)
        assert (first["type"], first["id"], first["from"], first["text"]) == ("message", 1, "ann", "first")
        async with connect(gw.ws_url + "/chat?room=py&name=ann") as twin:
            welcome = await recv_json(twin)
            assert (welcome["name"], welcome["users"]) == ("ann-2", ["ann", "ann-2"])
            assert [m["text"] for m in (await recv_json(twin))["messages"]] == ["first"]
            assert await recv_json(ann) == {"type": "join", "name": "ann-2", "users": ["ann", "ann-2"]}
            await twin.send(json.dumps({"type": "message", "text": "second"}))
            for conn in (ann, twin):
                while (event := await recv_json(conn))["type"] != "message":
                    pass
                assert (event["id"], event["from"], event["text"]) == (2, "ann-2", "second")
            await twin.close(4001, "bye")
        assert twin.protocol.close_rcvd is not None
        assert twin.protocol.close_rcvd.code == 4001
        assert await recv_json(ann) == {"type": "leave", "name": "ann-2", "users": ["ann"]}


async def test_websockets_compression(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/z": {"handler": "echo", "compression": True}})
    text = "squeeze me " * 10_000
    async with asyncio.timeout(10), connect(gw.ws_url + "/z") as conn:
        assert "permessage-deflate" in conn.response.headers.get("Sec-WebSocket-Extensions", "")
        for _ in range(3):
            await conn.send(text)
            assert await conn.recv() == text


async def test_node_ws_echo_and_close(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"})
    report = await run_node("client.js", gw.ws_url + "/ws")
    assert report["error"] is None
    assert report["opened"] is True
    assert report["received"] == [
        {"binary": False, "data": "hello from node ✓"},
        {"binary": True, "data": "0001027f80feff"},
    ]
    assert report["textEcho"] is True
    assert report["binaryEcho"] is True
    assert (report["closeCode"], report["closeReason"]) == (4002, "node bye")
    assert report["extensions"] == ""  # compression is off by default
    assert gw.stats.endpoints["/ws"].close_codes[4002] == 1


async def test_node_ws_subprotocol_and_compression(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway(
        {"/z": {"handler": "echo", "compression": True, "subprotocols": ["v2.chat", "v1.chat"]}},
    )
    report = await run_node("client.js", gw.ws_url + "/z", "--protocol", "v1.chat", "--close-code", "1000",
                            "--close-reason", "")
    assert report["error"] is None
    assert report["protocol"] == "v1.chat"
    assert "permessage-deflate" in report["extensions"]
    assert report["textEcho"] is True
    assert report["binaryEcho"] is True
    assert (report["closeCode"], report["closeReason"]) == (1000, "")


async def test_node_ws_refused_origin(wsgate_gateway: Start) -> None:
    """A handshake refusal reaches Node as an error, and no connection is counted."""
    gw = await wsgate_gateway({"/ws": {"handler": "echo", "allow_missing_origin": False}})
    node = shutil.which("node")
    assert node is not None
    proc = await asyncio.create_subprocess_exec(
        node, str(NODE_CLIENT), gw.ws_url + "/ws", cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(15):
        out, _ = await proc.communicate()
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["opened"] is False
    assert "403" in report["error"]
    assert gw.stats.endpoints["/ws"].connections == 0
