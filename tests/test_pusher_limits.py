"""The presence member limit (``max_presence_members``, 100 as in Pusher): the member one
too many gets ``pusher:subscription_error`` on its channel and stays connected, on one
instance and across two sharing Redis; pusher-js gives it as the channel's
``pusher:subscription_error``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pusher
from aiohttp import web
from conftest import run_node, serve_app
from test_pusher_sdk import APP_ID, KEY, OPTIONS, PATH, SECRET, Client, call, connect, sdk
from wsgate.builtins.pusher.signatures import channel_signature

from wsgate.testing import run_gateway

LIMITED = {**OPTIONS, "max_presence_members": 2}


async def refused(client: Client, channel: str, user: str) -> dict[str, Any]:
    """Subscribe ``user`` to ``channel`` and return the refusal's data."""
    channel_data = json.dumps({"user_id": user})
    await client.send("pusher:subscribe", {"channel": channel, "channel_data": channel_data,
                                           "auth": channel_signature(KEY, SECRET, client.socket_id, channel,
                                                                     channel_data)})
    message = await client.expect("pusher:subscription_error")
    assert message["channel"] == channel
    data: dict[str, Any] = json.loads(message["data"])
    return data


async def test_the_member_over_the_limit_is_refused_and_stays_connected() -> None:
    async with run_gateway({PATH: {"handler": "pusher", "options": LIMITED}}) as gw:
        ann, bob, cat, ann_again = [await connect(gw) for _ in range(4)]
        await ann.subscribe("presence-room", {"user_id": "ann"})
        await bob.subscribe("presence-room", {"user_id": "bob"})
        await ann.expect("pusher_internal:member_added")
        assert await refused(cat, "presence-room", "cat") == {
            "type": "LimitReached", "error": "Cannot join presence-room: it has its maximum of 2 members",
            "status": 4100}
        await ann.nothing()  # nobody heard of cat
        # ann's second tab is no new member: it joins a full channel
        joined = await ann_again.subscribe("presence-room", {"user_id": "ann"})
        assert joined["presence"]["count"] == 2
        # cat is still connected, and may subscribe elsewhere
        assert await cat.subscribe("presence-other", {"user_id": "cat"}) is not None
        await bob.ws.close()
        assert json.loads((await ann.expect("pusher_internal:member_removed"))["data"]) == {"user_id": "bob"}
        joined = await cat.subscribe("presence-room", {"user_id": "cat"})
        assert joined["presence"]["ids"] == ["ann", "cat"]
        for client in (ann, cat, ann_again):
            await client.ws.close()


async def test_the_limit_holds_across_two_instances(redis_server: Any) -> None:
    endpoints = {PATH: {"handler": "pusher", "options": LIMITED}}
    async with run_gateway(endpoints, broker=redis_server.url) as one, \
            run_gateway(endpoints, broker=redis_server.url) as two:
        ann, bob, cat = await connect(one), await connect(two), await connect(one)
        await ann.subscribe("presence-room", {"user_id": "ann"})
        await bob.subscribe("presence-room", {"user_id": "bob"})
        await ann.expect("pusher_internal:member_added")
        assert (await refused(cat, "presence-room", "cat"))["type"] == "LimitReached"
        dan = await connect(two)
        assert (await refused(dan, "presence-room", "dan"))["status"] == 4100
        await ann.nothing()
        await bob.nothing()
        for client in (ann, bob, cat, dan):
            await client.ws.close()


def backend(sdk: pusher.Pusher) -> web.Application:
    async def auth(request: web.Request) -> web.Response:
        form = parse_qs((await request.read()).decode())
        user = form["user"][0]
        signed = sdk.authenticate(channel=form["channel_name"][0], socket_id=form["socket_id"][0],
                                  custom_data={"user_id": user})
        return web.json_response(signed)

    app = web.Application()
    app.router.add_post("/pusher/auth", auth)
    return app


async def test_pusher_js_gets_a_subscription_error_on_the_channel() -> None:
    endpoint = {"handler": "pusher", "origins": "*", "options": LIMITED}
    async with run_gateway({PATH: endpoint}) as gw:
        parts = urlsplit(gw.url)
        sdk = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host=parts.hostname, port=parts.port, ssl=False)
        async with serve_app(backend(sdk)) as backend_url:
            report = await run_node("pusher_member_limit.js", str(parts.hostname), str(parts.port), backend_url,
                                    KEY, within=30)
    assert report["error"] is None, report
    assert report["stage"] == "done", report
    errors = [e for e in report["carol"]["events"] if e["event"] == "pusher:subscription_error"]
    assert errors == [{"channel": "presence-room", "event": "pusher:subscription_error",
                       "data": {"type": "LimitReached", "status": 4100,
                                "error": "Cannot join presence-room: it has its maximum of 2 members"}}]
    assert report["carolState"] == "connected"
    assert report["members"] == ["alice", "carol"]
    assert not any(e["event"] == "pusher:member_added" and e["data"]["id"] == "carol"
                   for e in report["bob"]["events"])


async def test_joins_at_the_same_moment_on_two_instances_never_pass_the_limit(redis_server: Any) -> None:
    endpoints = {PATH: {"handler": "pusher", "options": {**OPTIONS, "max_presence_members": 1}}}
    async with run_gateway(endpoints, broker=redis_server.url) as one, \
            run_gateway(endpoints, broker=redis_server.url) as two:
        clients = [await connect(gw) for gw in (one, two, one, two)]
        for n, client in enumerate(clients):  # all sent before any answer is read
            channel_data = json.dumps({"user_id": f"u{n}"})
            await client.send("pusher:subscribe", {
                "channel": "presence-room", "channel_data": channel_data,
                "auth": channel_signature(KEY, SECRET, client.socket_id, "presence-room", channel_data)})
        answers = [(await client.recv())["event"] for client in clients]
        admitted = [f"u{n}" for n, event in enumerate(answers) if event == "pusher_internal:subscription_succeeded"]
        assert len(admitted) <= 1, answers  # both of a simultaneous pair may be sent back: never both in
        assert answers.count("pusher:subscription_error") == 4 - len(admitted)
        users = await call(sdk(one.url).users_info, "presence-room")
        assert users == {"users": [{"id": user} for user in admitted]}
        for client in clients:
            await client.nothing(0.2)  # no member_added or member_removed for the refused
            await client.ws.close()
