"""Cache channels (``cache-``, ``private-cache-``, ``private-encrypted-cache-``,
``presence-cache-``): the last event the ``pusher`` SDK triggered reaches each new
subscriber right after ``subscription_succeeded``, for ``cache_ttl`` (30 minutes, as in
Pusher), on every instance sharing Redis; with none, the subscriber gets
``pusher:cache_miss`` and the app a ``cache_miss`` webhook. pusher-js sees both on the channel.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from conftest import run_node, serve_app
from test_pusher_sdk import KEY, OPTIONS, PATH, Client, call, connect, sdk
from test_pusher_webhooks import Receiver

from wsgate.testing import run_gateway


async def subscribe(client: Client, channel: str, user: str = "u") -> dict[str, Any]:
    """Subscribe and return what follows ``subscription_succeeded`` on a cache channel."""
    await client.subscribe(channel, {"user_id": user} if channel.startswith("presence-") else None)
    follows = await client.recv()
    assert follows["channel"] == channel, follows
    return follows


async def test_the_last_event_reaches_new_subscribers_and_a_miss_is_told() -> None:
    async with run_gateway({PATH: {"handler": "pusher", "options": OPTIONS}}) as gw:
        ann, bob = await connect(gw), await connect(gw)
        api = sdk(gw.url, encryption_master_key_base64=base64.b64encode(bytes(range(32))).decode())
        for channel in ("cache-price", "private-cache-price", "presence-cache-price",
                        "private-encrypted-cache-price"):
            missed = await subscribe(ann, channel)
            assert (missed["event"], json.loads(missed["data"])) == ("pusher:cache_miss", {})
            await call(api.trigger, channel, "price", {"eur": 1})
            await call(api.trigger, channel, "price", {"eur": 2})
            live = [(await ann.expect("price"))["data"] for _ in range(2)]
            cached = await subscribe(bob, channel, "bob")
            assert (cached["event"], cached["data"]) == ("price", live[1])  # the same event, byte for byte
            if "encrypted" not in channel:  # that one is sealed by the SDK, relayed unread
                assert [json.loads(data) for data in live] == [{"eur": 1}, {"eur": 2}]
            await bob.nothing()
            if channel.startswith("presence-"):
                await ann.expect("pusher_internal:member_added")
        # other channels keep nothing and miss nothing
        await call(api.trigger, "price", "price", {"eur": 3})
        await ann.subscribe("price")
        await ann.nothing()
        # a subscriber's repeated subscribe is answered alone
        await bob.subscribe("cache-price")
        await bob.nothing()
        # a client event is relayed, not kept: the cache holds the SDK's last event
        await ann.send("client-x", {"n": 1}, "private-cache-price")
        assert (await bob.expect("client-x"))["data"] == {"n": 1}
        cat = await connect(gw)
        cached = await subscribe(cat, "private-cache-price")
        assert (cached["event"], json.loads(cached["data"])) == ("price", {"eur": 2})
        for client in (ann, bob, cat):
            await client.ws.close()


async def test_the_cached_event_is_forgotten_after_cache_ttl() -> None:
    options = {**OPTIONS, "cache_ttl": "1s"}
    async with run_gateway({PATH: {"handler": "pusher", "options": options}}) as gw:
        ann = await connect(gw)
        await call(sdk(gw.url).trigger, "cache-price", "price", "1")
        assert (await subscribe(ann, "cache-price"))["event"] == "price"
        await asyncio.sleep(1.3)  # the time-to-live itself is under test
        bob = await connect(gw)
        assert (await subscribe(bob, "cache-price"))["event"] == "pusher:cache_miss"
        for client in (ann, bob):
            await client.ws.close()


async def test_the_cached_event_is_shared_across_two_instances(redis_server: Any) -> None:
    endpoints = {PATH: {"handler": "pusher", "options": OPTIONS}}
    async with run_gateway(endpoints, broker=redis_server.url) as one, \
            run_gateway(endpoints, broker=redis_server.url) as two:
        await call(sdk(one.url).trigger, "cache-price", "price", {"eur": 5})
        bob = await connect(two)
        cached = await subscribe(bob, "cache-price")
        assert (cached["event"], json.loads(cached["data"])) == ("price", {"eur": 5})
        ann = await connect(one)
        assert (await subscribe(ann, "cache-other"))["event"] == "pusher:cache_miss"
        await call(sdk(two.url).trigger, "cache-other", "price", "6")
        assert (await ann.expect("price"))["data"] == "6"
        cat = await connect(one)
        assert (await subscribe(cat, "cache-other"))["data"] == "6"
        for client in (ann, bob, cat):
            await client.ws.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rcv = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", rcv.handle)
    async with serve_app(app) as url:
        rcv.url = url + "/hooks"
        yield rcv


async def test_a_miss_is_a_cache_miss_webhook(receiver: Receiver) -> None:
    options = {**OPTIONS, "webhooks": {"url": receiver.url, "batch": "50ms", "events": ["cache_miss"]}}
    async with run_gateway({PATH: {"handler": "pusher", "options": options}}) as gw:
        ann = await connect(gw)
        await subscribe(ann, "cache-a")
        await subscribe(ann, "private-cache-b")
        await call(sdk(gw.url).trigger, "cache-c", "ev", "x")
        await subscribe(ann, "cache-c")  # a hit: no webhook
        await subscribe(ann, "cache-d")
        await receiver.until(lambda: len(receiver.events) >= 3)
        await ann.ws.close()
    assert receiver.events == [{"name": "cache_miss", "channel": "cache-a"},
                               {"name": "cache_miss", "channel": "private-cache-b"},
                               {"name": "cache_miss", "channel": "cache-d"}]


GATEWAY = web.AppKey("gateway", str)


def backend() -> web.Application:
    app = web.Application()

    async def trigger(request: web.Request) -> web.Response:
        api = sdk(request.app[GATEWAY])
        sent = [await call(api.trigger, "cache-price", "price", {"eur": n}) for n in (1, 2)]
        return web.json_response(sent)

    app.router.add_post("/step/trigger", trigger)
    return app


async def test_pusher_js_sees_the_miss_and_the_cached_event() -> None:
    endpoint = {"handler": "pusher", "origins": "*", "options": OPTIONS}
    async with run_gateway({PATH: endpoint}) as gw:
        app = backend()
        app[GATEWAY] = gw.url
        async with serve_app(app) as backend_url:
            parts = urlsplit(gw.url)
            report = await run_node("pusher_cache.js", str(parts.hostname), str(parts.port), backend_url, KEY,
                                    within=30)
    assert report["error"] is None, report
    assert report["stage"] == "done", report
    alice = [(e["event"], e["data"]) for e in report["alice"]["events"]]
    assert alice == [("pusher:subscription_succeeded", {}), ("pusher:cache_miss", {}),
                     ("price", {"eur": 1}), ("price", {"eur": 2})]
    bob = [(e["event"], e["data"]) for e in report["bob"]["events"]]
    assert bob == [("pusher:subscription_succeeded", {}), ("price", {"eur": 2})]
