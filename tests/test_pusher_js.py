"""pusher-js (npm ``pusher-js`` 8.6.0, its Node build) against a real wsgate ``pusher`` endpoint.

The test runs a gateway and a small aiohttp backend: the backend's ``/pusher/auth`` signs
subscriptions with the ``pusher`` Python SDK's own ``authenticate`` (as a Django or Flask
auth view does) and its ``/step/...`` has the SDK trigger events and read channel info.
The scenario is tests/node/pusher_channels.js.
"""

from __future__ import annotations

import asyncio
import base64
import json
from urllib.parse import parse_qs, urlsplit

import pusher
from aiohttp import web
from conftest import run_node, serve_app

from wsgate.testing import run_gateway

APP_ID, KEY, SECRET = "77", "js-key", "js-secret-0123456789abcdef"
MASTER_KEY = base64.b64encode(bytes(range(32))).decode()  # the SDK encrypts private-encrypted- events with it


def backend(sdk: pusher.Pusher) -> web.Application:
    async def auth(request: web.Request) -> web.Response:
        form = parse_qs((await request.read()).decode())
        channel, socket_id, user = form["channel_name"][0], form["socket_id"][0], form.get("user", ["?"])[0]
        if channel.startswith("private-forbidden-"):
            return web.json_response({"error": "forbidden"}, status=403)
        custom = {"user_id": user, "user_info": {"name": user.title()}} if channel.startswith("presence-") else None
        signed = sdk.authenticate(channel=channel, socket_id=socket_id, custom_data=custom)
        # The SDK gives an encrypted channel's shared_secret as base64 bytes: JSON wants text.
        return web.json_response({k: v.decode() if isinstance(v, bytes) else v for k, v in signed.items()})

    async def trigger(request: web.Request) -> web.Response:
        body = await request.json()
        sent = await asyncio.to_thread(sdk.trigger, ["news", "private-room"], "greet", {"from": "sdk"})
        excluded = await asyncio.to_thread(sdk.trigger, "presence-lobby", "greet", {"from": "sdk"},
                                           socket_id=body["socket_id"])
        sealed = await asyncio.to_thread(sdk.trigger, "private-encrypted-vault", "secret", {"code": 42})
        return web.json_response([sent, excluded, sealed])

    async def info(request: web.Request) -> web.Response:
        found = await asyncio.to_thread(sdk.channels_info, None, [])
        users = await asyncio.to_thread(sdk.users_info, "presence-lobby")
        room = await asyncio.to_thread(sdk.channel_info, "private-room", ["subscription_count"])
        return web.json_response({"channels": found, "users": users, "room": room})

    app = web.Application()
    app.router.add_post("/pusher/auth", auth)
    app.router.add_post("/step/trigger", trigger)
    app.router.add_post("/step/info", info)
    return app


async def test_pusher_js_public_private_presence_and_client_events() -> None:
    endpoint = {"handler": "pusher", "origins": "*",
                "options": {"app_id": APP_ID, "key": KEY, "secret": SECRET, "client_events": True}}
    async with run_gateway({f"/app/{KEY}": endpoint}) as gw:
        parts = urlsplit(gw.url)
        sdk = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host=parts.hostname, port=parts.port, ssl=False,
                            encryption_master_key_base64=MASTER_KEY)
        async with serve_app(backend(sdk)) as backend_url:
            report = await run_node("pusher_channels.js", str(parts.hostname), str(parts.port), backend_url, KEY,
                                    within=30)
    assert report["error"] is None, report
    assert report["stage"] == "done", report
    alice, bob = report["alice"], report["bob"]
    assert report["triggered"] == [{}, {}, {}]
    # The SDK encrypted it, wsgate relayed it unread, pusher-js decrypted it.
    sealed = [e for e in alice["events"] if e["channel"] == "private-encrypted-vault" and e["event"] == "secret"]
    assert [e["data"] for e in sealed] == [{"code": 42}]
    lobby = [e for e in alice["events"] if e["channel"] == "presence-lobby" and e["event"].endswith("succeeded")]
    assert lobby == [{"channel": "presence-lobby", "event": "pusher:subscription_succeeded", "count": 1,
                      "me": {"id": "alice", "info": {"name": "Alice"}}, "ids": ["alice"]}]
    lobby = [e for e in bob["events"] if e["channel"] == "presence-lobby" and e["event"].endswith("succeeded")]
    assert lobby[0]["count"] == 2
    assert lobby[0]["ids"] == ["alice", "bob"]
    assert {"channel": "presence-lobby", "event": "pusher:member_added", "member": "bob",
            "info": {"name": "Bob"}} in alice["events"]
    assert {"channel": "presence-lobby", "event": "pusher:member_removed", "member": "bob",
            "info": {"name": "Bob"}} in alice["events"]
    refused = [e for e in alice["events"] if e["channel"] == "private-forbidden-x"]
    assert refused == [{"channel": "private-forbidden-x", "event": "pusher:subscription_error", "status": 403,
                        "type": "AuthError"}]
    # The SDK's events: everywhere but alice's socket on presence-lobby (its socket_id was excluded).
    greets = sorted((e["channel"], json.dumps(e["data"])) for e in alice["events"] if e["event"] == "greet")
    assert greets == [("news", '{"from": "sdk"}'), ("private-room", '{"from": "sdk"}')]
    greets = sorted(e["channel"] for e in bob["events"] if e["event"] == "greet")
    assert greets == ["presence-lobby", "private-room"]
    # Client events reach the other client only.
    assert [e["data"] for e in bob["events"] if e["event"] == "client-typing"] == [{"who": "alice"}]
    assert [e["data"] for e in alice["events"] if e["event"] == "client-typing"] == [{"who": "bob"}]
    assert alice["clientTriggered"] is True
    assert report["info"]["users"] == {"users": [{"id": "alice"}, {"id": "bob"}]}
    assert report["info"]["room"] == {"occupied": True, "subscription_count": 2}
    assert set(report["info"]["channels"]["channels"]) == {"news", "private-room", "presence-lobby",
                                                          "private-encrypted-vault"}
    assert report["after"]["users"] == {"users": [{"id": "alice"}]}
    assert report["after"]["room"] == {"occupied": True, "subscription_count": 1}
    assert "errors" not in alice, alice["errors"]
    assert "errors" not in bob, bob["errors"]
    for states in (alice["states"], bob["states"]):  # connected at once, never unavailable, until it left
        assert states[-2:] == ["connected", "disconnected"], states
        assert not {"unavailable", "failed"} & set(states), states
