"""``subscription_count``: ``pusher_internal:subscription_count`` to a channel's subscribers
(off by default, as in Pusher), seen by raw clients and by pusher-js as its
``pusher:subscription_count``; and ``info=subscription_count``/``user_count`` from the
``pusher`` SDK, on one instance and across two sharing Redis.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from conftest import run_node, serve_app
from test_pusher_sdk import KEY, OPTIONS, PATH, Client, call, connect, sdk

from wsgate.testing import run_gateway

COUNTING = {**OPTIONS, "subscription_count": True, "subscription_count_interval": 0}


async def close(*clients: Client) -> None:
    """Close from this side: a gateway that stops would wait for unread clients' close frames."""
    for client in clients:
        await client.ws.close()


async def count_of(client: Client) -> int:
    message = await client.expect("pusher_internal:subscription_count")
    data = json.loads(message["data"])
    assert list(data) == ["subscription_count"], data
    return int(data["subscription_count"])


async def test_no_counts_unless_the_app_turns_them_on() -> None:
    async with run_gateway({PATH: {"handler": "pusher", "options": OPTIONS}}) as gw:
        ann, bob = await connect(gw), await connect(gw)
        await ann.subscribe("news")
        await bob.subscribe("news")
        await ann.nothing()
        await bob.nothing()
        await close(ann, bob)


async def test_subscribers_are_told_their_count_as_it_changes() -> None:
    async with run_gateway({PATH: {"handler": "pusher", "options": COUNTING}}) as gw:
        ann, bob, cat = await connect(gw), await connect(gw), await connect(gw)
        await ann.subscribe("news")  # the count comes after subscription_succeeded
        assert await count_of(ann) == 1
        await bob.subscribe("news")
        assert (await count_of(ann), await count_of(bob)) == (2, 2)
        await cat.subscribe("private-news")  # another channel: not news's subscribers' business
        assert await count_of(cat) == 1
        await ann.nothing()
        await bob.send("pusher:unsubscribe", {"channel": "news"})
        assert await count_of(ann) == 1
        await bob.nothing()  # no longer a subscriber
        await cat.ws.close()
        await ann.nothing()
        # presence channels have their members instead, as in Pusher
        await ann.subscribe("presence-room", {"user_id": "ann"})
        await bob.subscribe("presence-room", {"user_id": "bob"})
        assert (await ann.expect("pusher_internal:member_added"))["channel"] == "presence-room"
        await ann.nothing()
        await bob.nothing()
        await close(ann, bob)


async def test_changes_within_the_interval_are_told_once_with_the_last_count() -> None:
    options = {**COUNTING, "subscription_count_interval": "1s"}
    async with run_gateway({PATH: {"handler": "pusher", "options": options}}) as gw:
        ann = await connect(gw)
        others = [await connect(gw) for _ in range(4)]  # connected first: their subscribes come quickly
        await ann.subscribe("news")
        assert await count_of(ann) == 1  # the first change is told at once
        for other in others:
            await other.subscribe("news")
        assert await count_of(ann) == 5  # one event for the four, once the interval is over
        await ann.nothing(0.5)
        await close(ann, *others)


async def test_counts_and_infos_across_two_instances(redis_server: Any) -> None:
    endpoints = {PATH: {"handler": "pusher", "options": COUNTING}}
    async with run_gateway(endpoints, broker=redis_server.url) as one, \
            run_gateway(endpoints, broker=redis_server.url) as two:
        ann, bob = await connect(one), await connect(two)
        await ann.subscribe("news")
        assert await count_of(ann) == 1
        await bob.subscribe("news")  # on the other instance: both are told 2
        assert (await count_of(ann), await count_of(bob)) == (2, 2)
        await ann.subscribe("presence-room", {"user_id": "ann"})
        await bob.subscribe("presence-room", {"user_id": "bob"})
        await ann.expect("pusher_internal:member_added")
        ann_again = await connect(two)
        await ann_again.subscribe("presence-room", {"user_id": "ann"})  # ann's second tab
        for api in (sdk(one.url), sdk(two.url)):  # either instance answers for both
            assert await call(api.channel_info, "news", ["subscription_count"]) == \
                {"occupied": True, "subscription_count": 2}
            assert await call(api.channel_info, "presence-room", ["user_count", "subscription_count"]) == \
                {"occupied": True, "user_count": 2, "subscription_count": 3}
            assert await call(api.channels_info, "presence-", ["user_count", "subscription_count"]) == \
                {"channels": {"presence-room": {"user_count": 2, "subscription_count": 3}}}
            assert await call(api.channels_info, None, ["subscription_count"]) == \
                {"channels": {"news": {"subscription_count": 2}, "presence-room": {"subscription_count": 3}}}
        await bob.ws.close()
        got = sorted([await ann.recv(), await ann.recv()], key=lambda m: str(m["event"]))
        assert [(m["event"], m["channel"], json.loads(m["data"])) for m in got] == [
            ("pusher_internal:member_removed", "presence-room", {"user_id": "bob"}),
            ("pusher_internal:subscription_count", "news", {"subscription_count": 1})]
        await close(ann, ann_again)


def backend() -> web.Application:
    return web.Application()  # public channels: pusher-js asks the backend nothing


async def test_pusher_js_surfaces_the_count() -> None:
    endpoint = {"handler": "pusher", "origins": "*", "options": COUNTING}
    async with run_gateway({PATH: endpoint}) as gw, serve_app(backend()) as backend_url:
        parts = urlsplit(gw.url)
        report = await run_node("pusher_counts.js", str(parts.hostname), str(parts.port), backend_url, KEY, within=30)
    assert report["error"] is None, report
    assert report["stage"] == "done", report
    counts = [e["data"] for e in report["alice"]["events"] if e["event"] == "pusher:subscription_count"]
    assert counts == [{"subscription_count": 1}, {"subscription_count": 2}, {"subscription_count": 1}]
    assert (report["aliceSeesTwo"], report["aliceSeesOne"]) == (2, 1)
    assert report["alice"]["errors"] == []
    assert report["bob"]["errors"] == []
