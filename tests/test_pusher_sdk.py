"""The ``pusher`` endpoint against clients nobody here wrote: the ``pusher`` Python SDK
(PyPI ``pusher`` 3.3) for every HTTP API call, and a plain WebSocket speaking the Pusher
protocol for the connection, subscriptions and bad input. pusher-js: test_pusher_js.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pusher
import pytest
from pusher.errors import PusherBadAuth, PusherBadRequest, PusherBadStatus
from wsgate.builtins.pusher.signatures import (
    RequestRefused,
    channel_signature,
    check_request,
    sign,
    string_to_sign,
)

from wsgate.config import Registry, parse_config
from wsgate.testing import run_gateway

APP_ID, KEY, SECRET = "4242", "app-key", "app-secret-" + "x" * 20
PATH = f"/app/{KEY}"
OPTIONS = {"app_id": APP_ID, "key": KEY, "secret": SECRET, "client_events": True}


def sdk(url: str, secret: str = SECRET, **kw: Any) -> pusher.Pusher:
    parts = urlsplit(url)
    return pusher.Pusher(app_id=APP_ID, key=KEY, secret=secret, host=parts.hostname, port=parts.port, ssl=False, **kw)


async def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The SDK is sync (requests): run it in a thread, so the gateway in this loop answers."""
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture
async def gw(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    options = {**OPTIONS, **getattr(request, "param", {})}
    async with run_gateway({PATH: {"handler": "pusher", "options": options}}) as gateway:
        yield gateway


class Client:
    """A Pusher-protocol WebSocket client over aiohttp."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.socket_id = ""

    async def recv(self, within: float = 5.0) -> dict[str, Any]:
        message = await asyncio.wait_for(self.ws.receive_json(), within)
        assert isinstance(message, dict)
        return message

    async def expect(self, event: str, within: float = 5.0) -> dict[str, Any]:
        message = await self.recv(within)
        assert message["event"] == event, message
        return message

    async def nothing(self, within: float = 0.3) -> None:
        try:
            message = await asyncio.wait_for(self.ws.receive(), within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {message}")

    async def send(self, event: str, data: Any, channel: str | None = None) -> None:
        message: dict[str, Any] = {"event": event, "data": data}
        if channel is not None:
            message["channel"] = channel
        await self.ws.send_str(json.dumps(message))

    async def subscribe(self, channel: str, user: dict[str, Any] | None = None, *, auth: str | None = None) -> Any:
        data: dict[str, Any] = {"channel": channel}
        if channel.startswith(("private-", "presence-")):
            channel_data = None if user is None else json.dumps(user)
            data["auth"] = auth or channel_signature(KEY, SECRET, self.socket_id, channel, channel_data)
            if channel_data is not None:
                data["channel_data"] = channel_data
        await self.send("pusher:subscribe", data)
        reply = await self.expect("pusher_internal:subscription_succeeded")
        assert reply["channel"] == channel
        return json.loads(reply["data"])


async def connect(gw: Any, query: str = "?protocol=7&client=js&version=8.6.0&flash=false") -> Client:
    client = Client(await gw.connect(PATH + query))
    hello = await client.expect("pusher:connection_established")
    data = json.loads(hello["data"])
    assert data["activity_timeout"] == 120
    client.socket_id = data["socket_id"]
    return client


# --- pure: the signatures -------------------------------------------------------------------


def test_signatures_agree_with_the_sdk() -> None:
    client = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET)
    auth = client.authenticate(channel="private-a", socket_id="1.2")
    assert auth == {"auth": channel_signature(KEY, SECRET, "1.2", "private-a")}
    user = {"user_id": "7", "user_info": {"name": "Ann"}}
    auth = client.authenticate(channel="presence-a", socket_id="1.2", custom_data=user)
    assert auth["auth"] == channel_signature(KEY, SECRET, "1.2", "presence-a", auth["channel_data"])
    # A request the SDK signs passes the check; one byte changed anywhere fails it.
    request = client._pusher_client.trigger.make_request(["a"], "ev", {"x": 1})  # the SDK signs it
    query = {k: str(v) for k, v in request.query_params.items()}
    check_request(KEY, SECRET, "POST", request.path, query, request.body, time.time(), 600)
    assert sign(SECRET, string_to_sign("POST", request.path, query)) == query["auth_signature"]
    stale = str(int(time.time()) - 601)
    for changed in ({"auth_key": "other"}, {"auth_signature": "0" * 64}, {"auth_timestamp": stale},
                    {"body_md5": hashlib.md5(b"{}").hexdigest()}):
        with pytest.raises(RequestRefused):
            check_request(KEY, SECRET, "POST", request.path, {**query, **changed}, request.body, time.time(), 600)


# --- the config ------------------------------------------------------------------------------


def test_the_secret_comes_from_the_environment_and_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUSHER_TEST_SECRET", "from-the-env")
    text = ("endpoints:\n  - path: /app/k\n    handler: pusher\n"
            "    options: {app_id: '1', key: k, secret: '${PUSHER_TEST_SECRET}'}\n")
    options = parse_config(text, "config.yaml", Registry(plugins=False)).endpoints[0].options
    assert options.secret.get_secret_value() == "from-the-env"
    assert "from-the-env" not in repr(options)
    assert (options.activity_timeout, options.client_events, options.client_event_rate) == (120, False, 10.0)
    assert options.max_event_size == 10 * 1024


async def test_a_path_that_does_not_end_with_the_key_stops_the_gateway() -> None:
    with pytest.raises(ValueError, match="/app/app-key"):
        async with run_gateway({"/pusher": {"handler": "pusher", "options": OPTIONS}}):
            raise AssertionError("started")


# --- the HTTP API, with the SDK -------------------------------------------------------------


async def test_trigger_reaches_subscribers_but_the_excluded_socket(gw: Any) -> None:
    ann, bob = await connect(gw), await connect(gw)
    for client in (ann, bob):
        assert await client.subscribe("news") == {}
    api = sdk(gw.url)
    assert await call(api.trigger, "news", "story", {"title": "hello"}) == {}
    for client in (ann, bob):
        got = await client.expect("story")
        assert (got["channel"], json.loads(got["data"])) == ("news", {"title": "hello"})
    await call(api.trigger, ["news", "other"], "story", "plain text", socket_id=ann.socket_id)
    got = await bob.expect("story")
    assert got["data"] == "plain text"
    await ann.nothing()


async def test_batch_trigger(gw: Any) -> None:
    ann = await connect(gw)
    await ann.subscribe("a")
    await ann.subscribe("b")
    api = sdk(gw.url)
    batch = [{"channel": "a", "name": "one", "data": {"n": 1}}, {"channel": "b", "name": "two", "data": "2"}]
    assert await call(api.trigger_batch, batch) == {}
    first, second = await ann.recv(), await ann.recv()
    assert (first["event"], first["channel"], json.loads(first["data"])) == ("one", "a", {"n": 1})
    assert (second["event"], second["channel"], second["data"]) == ("two", "b", "2")


async def test_channels_info_and_presence_users(gw: Any) -> None:
    ann, bob = await connect(gw), await connect(gw)
    await ann.subscribe("news")
    await bob.subscribe("news")
    await ann.subscribe("presence-room", {"user_id": "ann", "user_info": {"name": "Ann"}})
    await bob.subscribe("presence-room", {"user_id": "bob"})
    await ann.expect("pusher_internal:member_added")
    api = sdk(gw.url)
    listed = await call(api.channels_info)
    assert listed == {"channels": {"news": {}, "presence-room": {}}}
    listed = await call(api.channels_info, "presence-", ["user_count", "subscription_count"])
    assert listed == {"channels": {"presence-room": {"user_count": 2, "subscription_count": 2}}}
    info = await call(api.channel_info, "news", ["subscription_count"])
    assert info == {"occupied": True, "subscription_count": 2}
    info = await call(api.channel_info, "presence-room", ["user_count", "subscription_count"])
    assert info == {"occupied": True, "user_count": 2, "subscription_count": 2}
    assert await call(api.channel_info, "empty") == {"occupied": False}
    users = await call(api.users_info, "presence-room")
    assert users == {"users": [{"id": "ann"}, {"id": "bob"}]}
    with pytest.raises(PusherBadRequest):
        await call(api.channel_info, "news", ["user_count"])  # user_count is for presence channels
    with pytest.raises(PusherBadRequest):
        await call(api.users_info, "news")
    await bob.ws.close()
    removed = await ann.expect("pusher_internal:member_removed")
    assert json.loads(removed["data"]) == {"user_id": "bob"}
    for _ in range(50):  # bob's leave is handled as his socket closes
        if await call(api.channel_info, "news", ["subscription_count"]) == {"occupied": True, "subscription_count": 1}:
            break
        await asyncio.sleep(0.02)
    assert await call(api.users_info, "presence-room") == {"users": [{"id": "ann"}]}
    await ann.ws.close()
    for _ in range(50):
        if await call(api.channels_info) == {"channels": {}}:
            break
        await asyncio.sleep(0.02)
    assert await call(api.channels_info) == {"channels": {}}


async def test_bad_signatures_and_stale_timestamps_get_401(gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = sdk(gw.url, secret="not-the-secret")
    for method, args in ((wrong.trigger, ("news", "ev", "x")), (wrong.channels_info, ()),
                         (wrong.channel_info, ("news",)), (wrong.users_info, ("presence-a",)),
                         (wrong.trigger_batch, ([{"channel": "a", "name": "n", "data": "d"}],))):
        with pytest.raises(PusherBadAuth, match="Invalid signature"):
            await call(method, *args)
    other_key = pusher.Pusher(app_id=APP_ID, key="other", secret=SECRET, host="127.0.0.1",
                              port=urlsplit(gw.url).port, ssl=False)
    with pytest.raises(PusherBadAuth, match="auth_key"):
        await call(other_key.channels_info)
    api = sdk(gw.url)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 700)  # the SDK stamps its requests with time.time()
    request = api._pusher_client.channels_info.make_request()
    monkeypatch.setattr(time, "time", real)
    with pytest.raises(PusherBadAuth, match="Timestamp expired"):
        await call(api._pusher_client.http.send_request, request)
    assert await call(api.channels_info) == {"channels": {}}  # a fresh one passes


async def test_an_oversized_event_is_413_and_nothing_is_sent(gw: Any) -> None:
    ann = await connect(gw)
    await ann.subscribe("news")
    api = sdk(gw.url)
    with pytest.raises(PusherBadStatus, match="413"):
        await call(api.trigger, "news", "big", "x" * (10 * 1024 + 1))
    await call(api.trigger, "news", "fits", "x" * (10 * 1024))
    assert (await ann.expect("fits"))["data"] == "x" * 10240


async def test_a_trigger_with_a_bad_socket_id_is_400(gw: Any) -> None:
    api = sdk(gw.url)
    request = api._pusher_client.trigger.make_request("news", "ev", "d")
    body = json.loads(request.body)
    for socket_id in ("1.2\nx", "abc", 7):
        signed = api._pusher_client.trigger.make_request("news", "ev", "d")
        # The SDK validates socket ids itself: sign a body carrying a bad one by hand.
        raw = json.dumps({**body, "socket_id": socket_id}).encode()
        query = {k: v for k, v in signed.query_params.items() if k != "auth_signature"}
        query["body_md5"] = hashlib.md5(raw).hexdigest()
        query["auth_signature"] = sign(SECRET, string_to_sign("POST", signed.path, query))
        async with gw.session.post(gw.url + signed.path, params=query, data=raw) as r:
            assert r.status == 400, await r.text()
            assert "socket_id" in await r.text()


async def test_unknown_api_paths_and_other_apps(gw: Any) -> None:
    async with gw.session.get(gw.url + f"/apps/{APP_ID}/nothing") as r:
        assert r.status == 401  # unsigned first
    async with gw.session.get(gw.url + "/apps/999/channels") as r:
        assert r.status == 404  # not this app's prefix: no handler claims it
    async with gw.session.post(gw.url + "/apps/999/events", data=b"{}") as r:
        assert r.status == 405


# --- the WebSocket protocol -----------------------------------------------------------------


async def test_protocol_versions_it_does_not_speak_are_refused(gw: Any) -> None:
    for query, code in (("?protocol=6", 4007), ("?protocol=x", 4007), ("", 4008)):
        async with gw.connect(PATH + query) as ws:
            refusal = await ws.receive_json()
            assert refusal["event"] == "pusher:error"
            assert refusal["data"]["code"] == code
            closed = await ws.receive()
            assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, code)
    async with gw.session.get(gw.url + "/app/wrong-key?protocol=7") as r:
        assert r.status == 404  # no endpoint for another key: the handshake is refused


async def test_ping_pong(gw: Any) -> None:
    ann = await connect(gw)
    await ann.send("pusher:ping", {})
    assert await ann.expect("pusher:pong")


async def test_private_and_presence_subscriptions_are_checked(gw: Any) -> None:
    ann, bob = await connect(gw), await connect(gw)
    await bob.subscribe("private-x")
    # no auth, a wrong signature, another socket's signature, presence without channel_data
    bad = [{"channel": "private-x"},
           {"channel": "private-x", "auth": f"{KEY}:{'0' * 64}"},
           {"channel": "private-x", "auth": channel_signature(KEY, SECRET, bob.socket_id, "private-x")},
           {"channel": "presence-x", "auth": channel_signature(KEY, SECRET, ann.socket_id, "presence-x")},
           {"channel": "presence-x", "auth": channel_signature(KEY, SECRET, ann.socket_id, "presence-x", '{"u":1}'),
            "channel_data": '{"u":1}'},
           {"channel": "bad name!"}]
    for data in bad:
        await ann.send("pusher:subscribe", data)
        refusal = await ann.expect("pusher:error")
        assert refusal["data"]["code"] is None, data
        assert refusal["data"]["message"], data
    await call(sdk(gw.url).trigger, "private-x", "secret", "s")
    assert (await bob.expect("secret"))["data"] == "s"
    await ann.nothing()
    assert await ann.subscribe("private-x") == {}  # a right signature still works afterwards


async def test_presence_one_member_per_user_across_tabs(gw: Any) -> None:
    ann1 = await connect(gw)
    joined = await ann1.subscribe("presence-r", {"user_id": "ann", "user_info": {"tab": 1}})
    assert joined == {"presence": {"ids": ["ann"], "hash": {"ann": {"tab": 1}}, "count": 1}}
    bob = await connect(gw)
    joined = await bob.subscribe("presence-r", {"user_id": 7})  # a number is taken as its string
    assert joined["presence"]["ids"] == ["7", "ann"]
    assert joined["presence"]["count"] == 2
    added = await ann1.expect("pusher_internal:member_added")
    assert json.loads(added["data"]) == {"user_id": "7", "user_info": None}
    ann2 = await connect(gw)
    joined = await ann2.subscribe("presence-r", {"user_id": "ann", "user_info": {"tab": 1}})
    assert joined["presence"]["count"] == 2
    await bob.nothing()  # ann's second tab is no new member
    await ann1.ws.close()
    await bob.nothing()  # ann is still here in her second tab
    await ann2.send("pusher:unsubscribe", {"channel": "presence-r"})
    removed = await bob.expect("pusher_internal:member_removed")
    assert json.loads(removed["data"]) == {"user_id": "ann"}


async def test_client_events(gw: Any) -> None:
    ann, bob, cat = await connect(gw), await connect(gw), await connect(gw)
    for client, user in ((ann, "ann"), (bob, "bob")):
        await client.subscribe("private-c")
        await client.subscribe("presence-p", {"user_id": user})
    await ann.expect("pusher_internal:member_added")
    await cat.subscribe("news")
    await ann.send("client-typing", {"on": True}, "private-c")
    got = await bob.expect("client-typing")
    assert (got["channel"], got["data"]) == ("private-c", {"on": True})
    assert "user_id" not in got
    await ann.send("client-hi", "text", "presence-p")
    got = await bob.expect("client-hi")
    assert (got["data"], got["user_id"]) == ("text", "ann")
    await ann.nothing()  # not echoed to the sender
    # refused: a public channel, a channel not subscribed, over the size
    await cat.send("client-x", {}, "news")
    assert "private and presence" in (await cat.expect("pusher:error"))["data"]["message"]
    await cat.send("client-x", {}, "private-c")
    assert "not subscribed" in (await cat.expect("pusher:error"))["data"]["message"]
    await ann.send("client-big", "x" * (10 * 1024 + 1), "private-c")
    assert "10240 bytes" in (await ann.expect("pusher:error"))["data"]["message"]
    await bob.nothing()


async def test_client_events_are_rate_limited(gw: Any) -> None:
    ann, bob = await connect(gw), await connect(gw)
    await ann.subscribe("private-r")
    await bob.subscribe("private-r")
    for n in range(15):
        await ann.send("client-n", n, "private-r")
    refusals = [await ann.expect("pusher:error") for _ in range(5)]
    assert {r["data"]["code"] for r in refusals} == {4301}
    got = [(await bob.expect("client-n"))["data"] for _ in range(10)]
    assert got == list(range(10))
    await bob.nothing()
    await asyncio.sleep(0.25)  # 10 a second: two more by now
    await ann.send("client-n", 99, "private-r")
    assert (await bob.expect("client-n"))["data"] == 99


@pytest.mark.parametrize("gw", [{"client_events": False}], indirect=True)
async def test_client_events_off(gw: Any) -> None:
    ann, bob = await connect(gw), await connect(gw)
    await ann.subscribe("private-r")
    await bob.subscribe("private-r")
    await ann.send("client-n", 1, "private-r")
    assert "not enabled" in (await ann.expect("pusher:error"))["data"]["message"]
    await bob.nothing()


async def test_bad_input_gets_pusher_error_and_leaves_others_alone(gw: Any) -> None:
    ann, bob = await connect(gw), await connect(gw)
    await bob.subscribe("news")
    for frame in ("{not json", "[1,2]", '{"data": 1}', '{"event": "nope:what"}', '{"event": "pusher:subscribe"}',
                  '{"event": "client-x", "data": NaN, "channel": "private-a"}'):
        await ann.ws.send_str(frame)
        refusal = await ann.expect("pusher:error")
        assert refusal["data"]["message"], frame
    await ann.send("pusher:ping", {})
    await ann.expect("pusher:pong")  # still open
    await call(sdk(gw.url).trigger, "news", "still", "here")
    assert (await bob.expect("still"))["data"] == "here"
    await ann.ws.send_bytes(b"\x00")  # the protocol is text: 1003, as every text handler
    closed = await ann.ws.receive()
    assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1003)


# --- two instances on one Redis -------------------------------------------------------------


async def test_two_instances_share_events_presence_and_counts(redis_server: Any) -> None:
    endpoints = {PATH: {"handler": "pusher", "options": OPTIONS}}
    async with run_gateway(endpoints, broker=redis_server.url) as one, \
            run_gateway(endpoints, broker=redis_server.url) as two:
        ann, bob, ann_again = await connect(one), await connect(two), await connect(two)
        await ann.subscribe("presence-x", {"user_id": "ann"})
        joined = await bob.subscribe("presence-x", {"user_id": "bob"})
        assert joined["presence"]["ids"] == ["ann", "bob"]
        assert json.loads((await ann.expect("pusher_internal:member_added"))["data"])["user_id"] == "bob"
        await ann_again.subscribe("presence-x", {"user_id": "ann"})  # ann's second tab, on the other instance
        await bob.nothing()
        # An event triggered on one instance reaches both, but the excluded socket.
        await call(sdk(one.url).trigger, "presence-x", "ev", "1", socket_id=bob.socket_id)
        assert (await ann.expect("ev"))["data"] == "1"
        assert (await ann_again.expect("ev"))["data"] == "1"
        await bob.nothing()
        await ann.send("client-hi", {"n": 1}, "presence-x")
        for client in (bob, ann_again):
            got = await client.expect("client-hi")
            assert got["user_id"] == "ann"
        info = await call(sdk(two.url).channel_info, "presence-x", ["user_count", "subscription_count"])
        assert info == {"occupied": True, "user_count": 2, "subscription_count": 3}
        await ann.ws.close()  # ann is still here on the other instance
        await bob.nothing()
        await ann_again.ws.close()
        removed = await bob.expect("pusher_internal:member_removed")
        assert json.loads(removed["data"]) == {"user_id": "ann"}
        assert await call(sdk(one.url).users_info, "presence-x") == {"users": [{"id": "bob"}]}
        await bob.ws.close()


async def test_the_members_of_an_instance_that_died_are_removed_once(
        redis_server: Any, wsgate_process: Any, tmp_path: Any) -> None:
    options = {**OPTIONS, "presence_ttl": "2s"}
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"server": {"host": "127.0.0.1"}, "broker": redis_server.url,
                                  "endpoints": [{"path": PATH, "handler": "pusher", "options": options}]}))
    doomed = wsgate_process(config)
    async with run_gateway({PATH: {"handler": "pusher", "options": options}}, broker=redis_server.url) as alive, \
            aiohttp.ClientSession() as session:
        ann = Client(await session.ws_connect(doomed.ws_url + PATH + "?protocol=7"))
        ann.socket_id = json.loads((await ann.expect("pusher:connection_established"))["data"])["socket_id"]
        await ann.subscribe("presence-x", {"user_id": "ann"})
        bob, cat = await connect(alive), await connect(alive)
        await bob.subscribe("presence-x", {"user_id": "bob"})
        await cat.subscribe("presence-x", {"user_id": "cat"})
        await bob.expect("pusher_internal:member_added")  # cat
        doomed.signal(9)  # SIGKILL: no goodbye, nothing released
        for client in (bob, cat):
            removed = await client.expect("pusher_internal:member_removed", within=6)
            assert json.loads(removed["data"]) == {"user_id": "ann"}
            await client.nothing(0.6)  # once
        assert await call(sdk(alive.url).users_info, "presence-x") == {"users": [{"id": "bob"}, {"id": "cat"}]}
        listed = await call(sdk(alive.url).channels_info, "presence-", ["user_count", "subscription_count"])
        assert listed == {"channels": {"presence-x": {"user_count": 2, "subscription_count": 2}}}
        await ann.ws.close()
        await bob.ws.close()
        await cat.ws.close()
