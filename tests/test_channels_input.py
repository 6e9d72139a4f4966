"""The channels handler against bad input from raw clients (websockets, raw sockets).

Each case checks Centrifugo's documented answer (an error reply code, or a close code and
reason: centrifugal/centrifuge errors.go and disconnect.go) and that another connection on
the same server still gets publications afterwards. One wsgate process serves the module,
with three endpoints: the defaults, small configured limits, and fast pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import channels_kit
import jwt
import pytest
import websockets
from channels_kit import RawClient
from conftest import WsgateProcess
from websockets.asyncio.client import connect

SECRET = "channels-input-secret-" + uuid.uuid4().hex
API_KEY = "key-" + uuid.uuid4().hex
MAIN, SMALL, PING = "/connection/websocket", "/small", "/ping"
SCHEMA = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}

CONFIG = {
    "auth": {"app-jwt": {"jwt": {"algorithms": ["HS256"], "secret": SECRET}}},
    "endpoints": [
        {"path": MAIN, "handler": "channels", "origins": "*",
         "options": {"token_auth": "app-jwt", "api_key": API_KEY, "namespaces": {
             "": {"subscribe": "authenticated", "publish": "subscribers"},
             "news": {"subscribe": "token"},
             "nopub": {"subscribe": "authenticated", "publish": "none"},
             "typed": {"subscribe": "authenticated", "publish": "subscribers", "schema": SCHEMA},
             "kept": {"subscribe": "authenticated", "history": 50},
         }}},
        {"path": SMALL, "handler": "channels",
         "origins": "*", "rate_limit": {"messages": 5, "per": "1s", "burst": 10},
         "options": {"token_auth": "app-jwt", "api_key": API_KEY, "max_subscriptions": 3,
                     "max_channel_length": 20, "namespaces": {"": {"subscribe": "authenticated"}}}},
        {"path": PING, "handler": "channels", "origins": "*",
         "options": {"token_auth": "app-jwt", "api_key": API_KEY, "ping_interval": "2s", "pong_timeout": "1s",
                     "expired_close_delay": "1s", "namespaces": {"": {"subscribe": "authenticated"}}}},
    ],
}

WAIT = 3.0  # seconds for any one expected frame


token = functools.partial(channels_kit.token, SECRET, ttl=None)  # no exp unless a test gives one


@pytest.fixture(scope="module")
def server(module_wsgate: Callable[..., WsgateProcess]) -> WsgateProcess:
    """One wsgate process for the module (the conftest factory is per test)."""
    return module_wsgate(CONFIG, "channels-input")


@contextlib.asynccontextmanager
async def raw(server: WsgateProcess, path: str = MAIN, pong: bool = False,
              **kwargs: Any) -> AsyncIterator[RawClient]:
    async with connect(server.ws_url + path, open_timeout=WAIT, close_timeout=1, **kwargs) as ws:
        client = RawClient(ws, pong=pong, wait=WAIT)
        try:
            yield client
        finally:
            await client.stop()


@contextlib.asynccontextmanager
async def connected(server: WsgateProcess, path: str = MAIN, user: str = "u1", pong: bool = False,
                    **claims: Any) -> AsyncIterator[RawClient]:
    async with raw(server, path, pong) as client:
        reply = await client.call("connect", {"token": token(user, **claims), "name": "test"})
        assert "connect" in reply, reply
        yield client


async def api(server: WsgateProcess, path: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session, \
            session.post(f"{server.url}{path}/api/{method}", json=params, headers={"X-API-Key": API_KEY}) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
    assert "error" not in body, body
    return body


@contextlib.asynccontextmanager
async def witness(server: WsgateProcess, path: str = MAIN) -> AsyncIterator[None]:
    """Another connection, subscribed before the test's case: it must still get publications after."""
    channel = "w-" + uuid.uuid4().hex[:12]
    async with connected(server, path, user="witness", pong=True) as w:
        assert "subscribe" in await w.call("subscribe", {"channel": channel})
        yield
        marker = uuid.uuid4().hex
        await api(server, path, "publish", {"channel": channel, "data": {"m": marker}})
        assert (await w.pub(channel))["data"] == {"m": marker}


def centrifugo_error(reply: dict[str, Any], code: int, message: str, temporary: bool = False) -> None:
    """An error reply with Centrifugo's code, its message (wsgate may add detail after it) and flag."""
    err = reply.get("error")
    assert err is not None, f"expected error {code}, got {reply}"
    assert err["code"] == code, reply
    assert err["message"].startswith(message), reply
    assert err.get("temporary", False) is temporary, reply


# --- frames that are not the protocol: 3501 ---------------------------------------------------

BAD_FIRST_FRAMES = {
    "not JSON": "connect please",
    "truncated JSON": '{"connect":{},"id":1',
    "NaN": '{"connect":{"token":NaN},"id":1}',
    "Infinity": '{"connect":{"data":{"x":-Infinity}},"id":1}',
    "a JSON array": '[{"connect":{},"id":1}]',
    "a command before connect": '{"subscribe":{"channel":"x"},"id":1}',
    "an unknown command before connect": '{"launch":{},"id":1}',
}


@pytest.mark.parametrize("frame", list(BAD_FIRST_FRAMES.values()), ids=list(BAD_FIRST_FRAMES))
async def test_a_bad_first_frame_closes_3501(server: WsgateProcess, frame: str) -> None:
    async with witness(server), raw(server) as client:
        await client.send(frame)
        assert await client.closed() == (3501, "bad request")


BAD_LATER_FRAMES = {
    "not JSON": "{oops}",
    "NaN": '{"publish":{"channel":"a","data":NaN},"id":2}',
    "Infinity": '{"publish":{"channel":"a","data":{"x":Infinity}},"id":2}',
    "an unknown command": '{"launch":{"channel":"a"},"id":2}',
    "a second connect": json.dumps({"connect": {"token": token("u1")}, "id": 2}),
    "a command without id": '{"subscribe":{"channel":"a"}}',
    "a command with id 0": '{"subscribe":{"channel":"a"},"id":0}',
    "two methods in one command": '{"subscribe":{"channel":"a"},"presence":{"channel":"a"},"id":2}',
}


@pytest.mark.parametrize("frame", list(BAD_LATER_FRAMES.values()), ids=list(BAD_LATER_FRAMES))
async def test_a_bad_command_after_connect_closes_3501(server: WsgateProcess, frame: str) -> None:
    async with witness(server), connected(server) as client:
        await client.send(frame)
        assert await client.closed() == (3501, "bad request")


async def test_a_binary_frame_closes_1003(server: WsgateProcess) -> None:
    async with witness(server), connected(server) as client:
        await client.ws.send(b'{"presence":{"channel":"a"},"id":2}')
        code, _ = await client.closed()
        assert code == 1003


async def test_invalid_utf8_in_a_text_frame_closes_1007(server: WsgateProcess) -> None:
    """A frame websockets refuses to send: written on a raw socket, masked as a client must."""
    async with witness(server):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(server.host, server.port), WAIT)
        try:
            writer.write((f"GET {MAIN} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nUpgrade: websocket\r\n"
                          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            assert head.startswith(b"HTTP/1.1 101"), head
            payload, mask = b'{"connect":{"name":"\xff\xfe"},"id":1}', b"\x01\x02\x03\x04"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
            frame = await asyncio.wait_for(reader.read(2 + 125), WAIT)
            assert frame[0] == 0x88, frame  # a close frame
            assert int.from_bytes(frame[2:4], "big") == 1007, frame
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# --- credentials ------------------------------------------------------------------------------

async def test_no_credentials_without_anonymous_closes_3501(server: WsgateProcess) -> None:
    async with witness(server), raw(server) as client:
        await client.send({"connect": {"name": "test"}, "id": 1})
        assert await client.closed() == (3501, "bad request")


async def test_an_expired_connection_token_is_error_109(server: WsgateProcess) -> None:
    async with witness(server), raw(server) as client:
        reply = await client.call("connect", {"token": token("u1", exp=int(time.time()) - 60)})
        centrifugo_error(reply, 109, "token expired")


async def test_a_connection_token_with_a_bad_signature_closes_3500(server: WsgateProcess) -> None:
    forged = jwt.encode({"sub": "u1"}, "another-secret-another-secret-another", algorithm="HS256")
    async with witness(server), raw(server) as client:
        await client.send({"connect": {"token": forged}, "id": 1})
        assert await client.closed() == (3500, "invalid token")


async def test_a_subscription_token_for_another_channel_closes_3500(server: WsgateProcess) -> None:
    async with witness(server), connected(server, user="u1") as client:
        sub_token = token("u1", channel="news:other")
        await client.send({"subscribe": {"channel": "news:mine", "token": sub_token}, "id": 2})
        assert await client.closed() == (3500, "invalid token")


async def test_a_subscription_token_for_another_user_closes_3500(server: WsgateProcess) -> None:
    async with witness(server), connected(server, user="u1") as client:
        sub_token = token("u2", channel="news:mine")
        await client.send({"subscribe": {"channel": "news:mine", "token": sub_token}, "id": 2})
        assert await client.closed() == (3500, "invalid token")


async def test_the_right_subscription_token_subscribes(server: WsgateProcess) -> None:
    """The control for the two cases above: the token itself is good."""
    async with connected(server, user="u1") as client:
        reply = await client.call("subscribe", {"channel": "news:mine", "token": token("u1", channel="news:mine")})
        assert reply.get("subscribe") == {}, reply


# --- error replies: the connection goes on ----------------------------------------------------

async def test_a_duplicate_subscribe_is_error_105(server: WsgateProcess) -> None:
    async with witness(server), connected(server) as client:
        assert "subscribe" in await client.call("subscribe", {"channel": "dup"})
        centrifugo_error(await client.call("subscribe", {"channel": "dup"}), 105, "already subscribed")
        assert "presence_stats" not in await client.call("presence_stats", {"channel": "dup"})  # still served


async def test_the_129th_subscription_is_error_106(server: WsgateProcess) -> None:
    async with witness(server), connected(server) as client:
        base = uuid.uuid4().hex[:8]
        await client.send(*({"subscribe": {"channel": f"{base}-{i}"}, "id": 10 + i} for i in range(129)))
        replies = await client.messages(129)
        assert [r["id"] for r in replies] == list(range(10, 139))
        assert all("subscribe" in r for r in replies[:128]), [r for r in replies[:128] if "subscribe" not in r]
        centrifugo_error(replies[128], 106, "limit exceeded")
        assert "unsubscribe" in await client.call("unsubscribe", {"channel": f"{base}-0"})
        assert "subscribe" in await client.call("subscribe", {"channel": f"{base}-128"})


async def test_a_configured_max_subscriptions(server: WsgateProcess) -> None:
    async with witness(server, SMALL), connected(server, SMALL) as client:
        for i in range(3):
            assert "subscribe" in await client.call("subscribe", {"channel": f"s{i}"})
        centrifugo_error(await client.call("subscribe", {"channel": "s3"}), 106, "limit exceeded")


@pytest.mark.parametrize(("path", "limit"), [(MAIN, 255), (SMALL, 20)], ids=["default", "configured"])
async def test_a_channel_name_over_the_length_limit_is_error_107(server: WsgateProcess, path: str,
                                                                  limit: int) -> None:
    async with witness(server, path), connected(server, path) as client:
        centrifugo_error(await client.call("subscribe", {"channel": "c" * (limit + 1)}), 107, "bad request")
        centrifugo_error(await client.call("publish", {"channel": "c" * (limit + 1), "data": {}}), 107, "bad request")
        assert "subscribe" in await client.call("subscribe", {"channel": "c" * limit})


@pytest.mark.parametrize("bad", ["a\x00b", "a\x01", "\x1fz", "a\nb", "del\x7f", "c1\x85"])
async def test_control_characters_in_a_channel_name_are_error_107(server: WsgateProcess, bad: str) -> None:
    async with witness(server), connected(server) as client:
        centrifugo_error(await client.call("subscribe", {"channel": bad}), 107, "bad request")


async def test_an_unknown_namespace_is_error_102(server: WsgateProcess) -> None:
    async with witness(server), connected(server) as client:
        centrifugo_error(await client.call("subscribe", {"channel": "nowhere:x"}), 102, "unknown channel")
        centrifugo_error(await client.call("publish", {"channel": "nowhere:x", "data": {}}), 102, "unknown channel")


async def test_publish_to_a_namespace_with_publish_none_is_error_103(server: WsgateProcess) -> None:
    async with witness(server), connected(server) as client, connected(server, user="reader") as reader:
        assert "subscribe" in await reader.call("subscribe", {"channel": "nopub:x"})
        assert "subscribe" in await client.call("subscribe", {"channel": "nopub:x"})
        centrifugo_error(await client.call("publish", {"channel": "nopub:x", "data": {"a": 1}}), 103,
                         "permission denied")
        await api(server, MAIN, "publish", {"channel": "nopub:x", "data": {"from": "api"}})
        assert (await reader.pub("nopub:x"))["data"] == {"from": "api"}  # the refused one never came first


async def test_presence_without_presence_is_error_108(server: WsgateProcess) -> None:
    async with witness(server), connected(server) as client:
        assert "subscribe" in await client.call("subscribe", {"channel": "p"})
        centrifugo_error(await client.call("presence", {"channel": "p"}), 108, "not available")
        centrifugo_error(await client.call("presence_stats", {"channel": "p"}), 108, "not available")


async def test_a_schema_refuses_invalid_data_and_takes_valid_data(server: WsgateProcess) -> None:
    channel = "typed:" + uuid.uuid4().hex[:8]
    async with witness(server), connected(server) as client, connected(server, user="reader") as reader:
        assert "subscribe" in await reader.call("subscribe", {"channel": channel})
        assert "subscribe" in await client.call("subscribe", {"channel": channel})
        for bad in ({"n": "one"}, {}, [1], "text", {"n": 1.5}):
            centrifugo_error(await client.call("publish", {"channel": channel, "data": bad}), 107, "bad request")
        assert await client.call("publish", {"channel": channel, "data": {"n": 7}}) == {"id": client.next_id - 1,
                                                                                      "publish": {}}
        assert (await reader.pub(channel))["data"] == {"n": 7}  # the first it gets: nothing invalid went out


# --- many commands in one frame ---------------------------------------------------------------

async def test_a_batched_frame_is_answered_in_order_before_publications(server: WsgateProcess) -> None:
    channel = "kept:" + uuid.uuid4().hex[:8]
    stop = asyncio.Event()

    async def publish_all_along() -> int:
        n = 0
        while not stop.is_set():
            n += 1
            await api(server, MAIN, "publish", {"channel": channel, "data": {"n": n}})
        return n

    async with raw(server) as client:
        publisher = asyncio.create_task(publish_all_along())
        try:
            await asyncio.sleep(0.05)
            await client.send({"connect": {"token": token("u1")}, "id": 1},
                              {"subscribe": {"channel": channel}, "id": 2},
                              {"subscribe": {"channel": channel + "-b"}, "id": 3},
                              "",
                              {"presence_stats": {"channel": "nopresence"}, "id": 4},
                              {"subscribe": {"channel": channel}, "id": 5},
                              {"unsubscribe": {"channel": channel + "-b"}, "id": 6})
            seen: list[dict[str, Any]] = []
            async with asyncio.timeout(WAIT):
                while sum(1 for m in seen if "id" in m) < 6 or not any("push" in m for m in seen):
                    seen.append(await client.message())
        finally:
            stop.set()
            await asyncio.wait_for(publisher, WAIT)
    ids = [m["id"] for m in seen if "id" in m]
    assert ids == [1, 2, 3, 4, 5, 6], seen
    first_pub = next(i for i, m in enumerate(seen) if "push" in m)
    assert first_pub > next(i for i, m in enumerate(seen) if m.get("id") == 2), seen
    replies = {m["id"]: m for m in seen if "id" in m}
    assert ["connect" in replies[1], "subscribe" in replies[2], "subscribe" in replies[3]] == [True] * 3, seen
    centrifugo_error(replies[4], 108, "not available")
    centrifugo_error(replies[5], 105, "already subscribed")
    assert replies[6].get("unsubscribe") == {}, seen
    assert all(m["push"]["channel"] == channel for m in seen if "push" in m), seen


# --- rate limit -------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "frames"), [(MAIN, 600), (SMALL, 40)], ids=["default", "configured"])
async def test_a_flood_meets_the_rate_limit(server: WsgateProcess, path: str, frames: int) -> None:
    """wsgate's rate limit closes 1008 (policy violation), not Centrifugo's 3013: it is the gateway's."""
    async with witness(server, path), connected(server, path) as client:
        with contextlib.suppress(websockets.ConnectionClosed):
            for i in range(frames):
                await client.ws.send(json.dumps({"presence_stats": {"channel": "x"}, "id": 100 + i}))
        assert await client.closed() == (1008, "rate limit exceeded")


# --- pings, staleness, expiry -----------------------------------------------------------------

async def test_a_client_that_answers_pings_stays_and_a_silent_one_is_closed_3012(server: WsgateProcess) -> None:
    async with witness(server, PING), connected(server, PING, user="pongs", pong=True) as good, \
            connected(server, PING, user="silent") as silent:
        started = time.monotonic()
        assert await silent.closed(within=4) == (3012, "no pong")
        assert time.monotonic() - started < 4
        assert silent.frames[-1:] == ["{}"], silent.frames  # it was pinged
        # Two more ping rounds: the answering client is still there and still served.
        channel = "g-" + uuid.uuid4().hex[:8]
        assert "subscribe" in await good.call("subscribe", {"channel": channel})
        await asyncio.sleep(4)
        await api(server, PING, "publish", {"channel": channel, "data": "still"})
        assert (await good.pub(channel))["data"] == "still"
        assert good.frames.count("{}") >= 2, good.frames


async def test_the_connect_reply_advertises_ping_and_pong(server: WsgateProcess) -> None:
    async with raw(server, PING) as client:
        reply = await client.call("connect", {"token": token("u1")})
        assert (reply["connect"]["ping"], reply["connect"]["pong"]) == (2, True), reply


async def test_a_connection_that_never_sends_connect_is_closed_3502(server: WsgateProcess) -> None:
    """Centrifugo's stale close, 10 s after the handshake (this test takes about 11 s)."""
    async with witness(server), raw(server) as client:
        started = time.monotonic()
        assert await client.closed(within=13) == (3502, "stale")
        assert 9 <= time.monotonic() - started <= 12.5


async def test_an_expired_connection_is_closed_3005(server: WsgateProcess) -> None:
    async with witness(server, PING), raw(server, PING, pong=True) as client:
        reply = await client.call("connect", {"token": token("u1", exp=int(time.time()) + 2)})
        assert reply["connect"].get("expires") is True, reply
        assert 1 <= reply["connect"]["ttl"] <= 3, reply
        started = time.monotonic()
        assert await client.closed(within=6) == (3005, "connection expired")
        assert time.monotonic() - started >= 1.5  # not before the token's expiry plus the delay


async def test_a_refreshed_connection_is_not_closed(server: WsgateProcess) -> None:
    """The control for the case above: the close comes from the expiry."""
    async with raw(server, PING, pong=True) as client:
        reply = await client.call("connect", {"token": token("u1", exp=int(time.time()) + 2)})
        assert reply["connect"]["expires"] is True, reply
        refreshed = await client.call("refresh", {"token": token("u1", exp=int(time.time()) + 60)})
        assert refreshed["refresh"]["expires"] is True, refreshed
        assert refreshed["refresh"]["ttl"] > 30, refreshed
        await asyncio.sleep(4)
        assert "presence_stats" not in await client.call("presence_stats", {"channel": "x"})


def test_a_raw_socket_without_a_handshake_does_not_stop_the_server(server: WsgateProcess) -> None:
    """Garbage before any WebSocket: an HTTP error, and the server goes on."""
    with socket.create_connection((server.host, server.port), timeout=WAIT) as sock:
        sock.sendall(b"\x16\x03\x01\x00\xff garbage\r\n\r\n")
        sock.settimeout(WAIT)
        with contextlib.suppress(OSError):
            sock.recv(100)
    asyncio.run(_still_serves(server))


async def _still_serves(server: WsgateProcess) -> None:
    async with witness(server):
        pass
