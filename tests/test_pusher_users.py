"""User authentication: ``pusher:signin`` signed by the ``pusher`` SDK's
``authenticate_user``, ``pusher:signin_success`` and its refusals; the SDK's
``send_to_user`` reaching every connection signed in as the user and no other, and
``terminate_user_connections`` closing them (4009), on one instance and across two
sharing Redis; pusher-js's ``signin()``, ``pusher.user.bind`` and its closed connection.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pusher
import pytest
from aiohttp import web
from conftest import run_node, serve_app
from pusher.errors import PusherBadAuth
from test_pusher_sdk import APP_ID, KEY, OPTIONS, PATH, SECRET, Client, call, connect, sdk
from wsgate.builtins.pusher.signatures import user_signature

from wsgate.testing import run_gateway

SIGNER = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET)


async def sign_in(client: Client, user: str, **extra: Any) -> dict[str, Any]:
    """Sign ``client`` in as ``user`` as pusher-js does with the app's signature; the answer."""
    signed = SIGNER.authenticate_user(client.socket_id, {"id": user, **extra})
    await client.send("pusher:signin", signed)
    answer = await client.recv()
    return answer


async def closed_with(client: Client) -> tuple[int | None, int]:
    """The ``pusher:error`` code and the close code that end ``client``'s connection."""
    refusal = await client.expect("pusher:error")
    closed = await client.ws.receive(timeout=5)
    assert closed.type == aiohttp.WSMsgType.CLOSE, closed
    return refusal["data"]["code"], int(closed.data)


async def test_signin_is_checked_and_answered() -> None:
    async with run_gateway({PATH: {"handler": "pusher", "options": OPTIONS}}) as gw:
        ann = await connect(gw)
        user_data = json.dumps({"id": "ann"})
        for data in ("x", {"user_data": user_data},
                     {"user_data": user_data, "auth": f"{KEY}:{'0' * 64}"},
                     {"user_data": {"id": "ann"}, "auth": "x"},
                     {"user_data": '{"name": "no id"}', "auth": user_signature(KEY, SECRET, ann.socket_id,
                                                                                '{"name": "no id"}')},
                     {"user_data": '{"id": "a b"}', "auth": user_signature(KEY, SECRET, ann.socket_id,
                                                                            '{"id": "a b"}')}):
            await ann.send("pusher:signin", data)
            refusal = await ann.expect("pusher:error")
            assert refusal["data"]["code"] is None, data
            assert refusal["data"]["message"], data
        # another socket's signature is refused too
        bob = await connect(gw)
        await ann.send("pusher:signin", SIGNER.authenticate_user(bob.socket_id, {"id": "ann"}))
        assert "Invalid signature" in (await ann.expect("pusher:error"))["data"]["message"]
        # the user's own channel is for the signed-in connection alone
        await ann.send("pusher:subscribe", {"channel": "#server-to-user-ann"})
        assert "signed in" in (await ann.expect("pusher:error"))["data"]["message"]
        answer = await sign_in(ann, "ann", user_info={"name": "Ann"})
        assert answer["event"] == "pusher:signin_success"
        assert json.loads(json.loads(answer["data"])["user_data"]) == {"id": "ann", "user_info": {"name": "Ann"}}
        assert await ann.subscribe("#server-to-user-ann") == {}  # what pusher-js sends next
        await bob.send("pusher:subscribe", {"channel": "#server-to-user-ann"})
        assert "signed in" in (await bob.expect("pusher:error"))["data"]["message"]
        assert (await sign_in(ann, "ann"))["event"] == "pusher:signin_success"  # again, the same user
        assert "Already signed in as ann" in (await sign_in(ann, "bob"))["data"]["message"]
        await ann.send("pusher:ping", {})
        await ann.expect("pusher:pong")  # still open
        for client in (ann, bob):
            await client.ws.close()


async def test_send_to_user_and_terminate_user_connections() -> None:
    async with run_gateway({PATH: {"handler": "pusher", "options": OPTIONS}}) as gw:
        tab1, tab2, bob, anon = [await connect(gw) for _ in range(4)]
        for client, user in ((tab1, "ann"), (tab2, "ann"), (bob, "bob")):
            assert (await sign_in(client, user))["event"] == "pusher:signin_success"
        await tab1.subscribe("#server-to-user-ann")  # tab2 does not ask: signed in is enough
        await anon.subscribe("presence-room", {"user_id": "ann"})  # a member named ann, not signed in
        api = sdk(gw.url)
        assert await call(api.send_to_user, "ann", "note", {"text": "hi"}) == {}
        for tab in (tab1, tab2):
            note = await tab.expect("note")
            assert (note["channel"], json.loads(note["data"])) == ("#server-to-user-ann", {"text": "hi"})
        await bob.nothing()
        await anon.nothing()
        # the users' own channels are not the app's channels
        assert await call(api.channels_info) == {"channels": {"presence-room": {}}}
        assert await call(api.terminate_user_connections, "ann") == {}
        for tab in (tab1, tab2):
            assert await closed_with(tab) == (4009, 4009)
        await bob.send("pusher:ping", {})
        await bob.expect("pusher:pong")
        await anon.send("pusher:ping", {})
        await anon.expect("pusher:pong")
        assert await call(api.terminate_user_connections, "nobody") == {}
        for client in (bob, anon):
            await client.ws.close()


async def test_users_across_two_instances(redis_server: Any) -> None:
    endpoints = {PATH: {"handler": "pusher", "options": OPTIONS}}
    async with run_gateway(endpoints, broker=redis_server.url) as one, \
            run_gateway(endpoints, broker=redis_server.url) as two:
        tab1, tab2, bob = await connect(one), await connect(two), await connect(two)
        for client, user in ((tab1, "ann"), (tab2, "ann"), (bob, "bob")):
            assert (await sign_in(client, user))["event"] == "pusher:signin_success"
        assert await call(sdk(two.url).send_to_user, "ann", "note", "1") == {}
        for tab in (tab1, tab2):
            assert (await tab.expect("note"))["data"] == "1"
        await bob.nothing()
        assert await call(sdk(one.url).terminate_user_connections, "ann") == {}
        for tab in (tab1, tab2):
            assert await closed_with(tab) == (4009, 4009)
        await bob.send("pusher:ping", {})
        await bob.expect("pusher:pong")
        await bob.ws.close()


def backend(sdk_url: list[str]) -> web.Application:
    async def user_auth(request: web.Request) -> web.Response:
        form = parse_qs((await request.read()).decode())
        user = form["user"][0]
        return web.json_response(SIGNER.authenticate_user(form["socket_id"][0],
                                                          {"id": user, "user_info": {"name": user.title()}}))

    async def send(request: web.Request) -> web.Response:
        return web.json_response(await call(sdk(sdk_url[0]).send_to_user, "alice", "note", {"text": "hi"}))

    async def terminate(request: web.Request) -> web.Response:
        return web.json_response(await call(sdk(sdk_url[0]).terminate_user_connections, "alice"))

    app = web.Application()
    app.router.add_post("/pusher/user-auth", user_auth)
    app.router.add_post("/step/send", send)
    app.router.add_post("/step/terminate", terminate)
    return app


async def test_pusher_js_signs_in_gets_its_events_and_is_terminated() -> None:
    endpoint = {"handler": "pusher", "origins": "*", "options": OPTIONS}
    async with run_gateway({PATH: endpoint}) as gw, serve_app(backend([gw.url])) as backend_url:
        parts = urlsplit(gw.url)
        report = await run_node("pusher_users.js", str(parts.hostname), str(parts.port), backend_url, KEY,
                                within=30)
    assert report["error"] is None, report
    assert report["stage"] == "done", report
    assert report["userData"] == {"id": "alice", "user_info": {"name": "Alice"}}
    assert report["notes"] == [{"text": "hi"}]
    assert report["sent"] == {}
    assert report["terminated"] == {}
    states = report["alice"]["states"]  # not reconnected after 4009
    # the pusher:error first, then the close, which pusher-js reports with the same code
    assert report["alice"]["errors"][0] == {"type": "PusherError",
                                            "data": {"code": 4009, "message": "You got disconnected by the app"}}
    assert states == ["connected", "disconnected"], states
    assert report["bobState"] == "connected"


async def test_terminate_at_pusher_s_documented_path_and_for_the_second_of_two_apps() -> None:
    import hashlib
    import time

    from wsgate.builtins.pusher.signatures import sign, string_to_sign

    other = {"app_id": "5", "key": "other-key", "secret": "other-secret"}
    endpoints = {PATH: {"handler": "pusher", "options": OPTIONS},
                 "/app/other-key": {"handler": "pusher", "options": other}}
    async with run_gateway(endpoints) as gw:
        ann = await connect(gw)
        assert (await sign_in(ann, "ann"))["event"] == "pusher:signin_success"
        # POST /apps/<app_id>/users/<id>/terminate_connections, as Pusher documents it
        path = f"/apps/{APP_ID}/users/ann/terminate_connections"
        query = {"auth_key": KEY, "auth_timestamp": str(int(time.time())), "auth_version": "1.0",
                 "body_md5": hashlib.md5(b"{}").hexdigest()}
        query["auth_signature"] = sign(SECRET, string_to_sign("POST", path, query))
        async with gw.session.post(gw.url + path, params=query, data=b"{}") as r:
            assert (r.status, await r.json()) == (200, {})
        assert await closed_with(ann) == (4009, 4009)
        # the SDK's /users/<id>/terminate_connections reaches the app whose key signed it
        parts = urlsplit(gw.url)
        second = pusher.Pusher(host=parts.hostname, port=parts.port, ssl=False, **other)
        async with gw.session.ws_connect(gw.url + "/app/other-key?protocol=7") as ws:
            bob = Client(ws)
            bob.socket_id = json.loads((await bob.expect("pusher:connection_established"))["data"])["socket_id"]
            await bob.send("pusher:signin", second.authenticate_user(bob.socket_id, {"id": "bob"}))
            await bob.expect("pusher:signin_success")
            assert await call(second.terminate_user_connections, "bob") == {}
            assert await closed_with(bob) == (4009, 4009)
        wrong = pusher.Pusher(app_id="5", key="other-key", secret="not-it", host=parts.hostname, port=parts.port,
                              ssl=False)
        with pytest.raises(PusherBadAuth):
            await call(wrong.terminate_user_connections, "bob")
