"""The pusher handler's webhooks, received by a real aiohttp server that checks each POST
with the `pusher` SDK's own ``validate_webhook``: the events of raw and pusher-js clients
(tests/node/pusher_webhooks.js), batched; exactly one
channel_vacated across two instances on Redis; a receiver that is down gets every event
once it is back, within the documented bound."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pusher
import pytest
from aiohttp import web
from conftest import run_node
from wsgate.builtins.pusher.signatures import channel_signature

from wsgate.testing import run_gateway

APP_ID, KEY, SECRET = "4242", "app-key", "app-secret-" + "x" * 20
PATH = f"/app/{KEY}"
QUERY = "?protocol=7&client=js&version=8.6.0&flash=false"
SDK = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET)


class Receiver:
    """An app's webhook endpoint: answers ``status``; keeps what the SDK validated."""

    def __init__(self) -> None:
        self.status = 200
        self.batches: list[list[dict[str, Any]]] = []
        self.attempts = 0
        self.refused = 0
        self.invalid = 0
        self.arrived = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.text()
        if self.status != 200:
            self.refused += 1
            return web.Response(status=self.status)
        valid = SDK.validate_webhook(key=request.headers.get("X-Pusher-Key", ""),
                                     signature=request.headers.get("X-Pusher-Signature", ""), body=body)
        if valid is None or request.content_type != "application/json":
            self.invalid += 1
            return web.Response(status=401)
        self.batches.append(valid["events"])
        self.arrived.set()
        return web.Response(text="{}")

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for batch in self.batches for event in batch]

    def named(self, name: str, channel: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["name"] == name and (channel is None or e["channel"] == channel)]

    async def until(self, check: Any, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while not check():
            assert time.monotonic() < deadline, f"not within {within}s: {self.events}"
            await asyncio.sleep(0.02)


async def auth(request: web.Request) -> web.Response:
    """The app's auth view, signing with the SDK (for pusher-js)."""
    form = parse_qs((await request.read()).decode())
    channel, socket_id, user = form["channel_name"][0], form["socket_id"][0], form["user"][0]
    custom = {"user_id": user, "user_info": {"name": user.title()}} if channel.startswith("presence-") else None
    return web.json_response(SDK.authenticate(channel=channel, socket_id=socket_id, custom_data=custom))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rcv = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", rcv.handle)
    app.router.add_post("/pusher/auth", auth)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    rcv.url = f"http://127.0.0.1:{port}/hooks"
    yield rcv
    await runner.cleanup()


def options(receiver: Receiver, **webhooks: Any) -> dict[str, Any]:
    return {"app_id": APP_ID, "key": KEY, "secret": SECRET, "client_events": True,
            "webhooks": {"url": receiver.url, "batch": "50ms", **webhooks}}


class Client:
    """A Pusher-protocol client over aiohttp."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.socket_id = ""

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, url: str) -> Client:
        client = cls(await session.ws_connect(url + PATH + QUERY))
        hello = await client.expect("pusher:connection_established")
        client.socket_id = json.loads(hello["data"])["socket_id"]
        return client

    async def expect(self, event: str, within: float = 5.0) -> dict[str, Any]:
        message = await asyncio.wait_for(self.ws.receive_json(), within)
        assert message["event"] == event, message
        return dict(message)

    async def send(self, event: str, data: Any, channel: str | None = None) -> None:
        message: dict[str, Any] = {"event": event, "data": data}
        if channel is not None:
            message["channel"] = channel
        await self.ws.send_str(json.dumps(message))

    async def subscribe(self, channel: str, user_id: str | None = None) -> None:
        data: dict[str, Any] = {"channel": channel}
        if channel.startswith(("private-", "presence-")):
            channel_data = None if user_id is None else json.dumps({"user_id": user_id, "user_info": {"n": 1}})
            data["auth"] = channel_signature(KEY, SECRET, self.socket_id, channel, channel_data)
            if channel_data is not None:
                data["channel_data"] = channel_data
        await self.send("pusher:subscribe", data)
        await self.expect("pusher_internal:subscription_succeeded")


async def test_events_are_signed_batched_and_as_pusher_sends_them(receiver: Receiver) -> None:
    async with run_gateway({PATH: {"handler": "pusher", "options": options(receiver)}}) as gw, \
            aiohttp.ClientSession() as session:
        ann = await Client.connect(session, gw.url)
        await ann.subscribe("presence-room", "ann")
        await receiver.until(lambda: len(receiver.events) == 2)
        # the first subscription's two events came within the batch window: one POST
        assert receiver.batches == [[{"name": "channel_occupied", "channel": "presence-room"},
                                     {"name": "member_added", "channel": "presence-room", "user_id": "ann"}]]
        bob = await Client.connect(session, gw.url)
        await bob.subscribe("presence-room", "bob")
        await ann.expect("pusher_internal:member_added")
        await bob.send("client-typing", {"on": True}, "presence-room")
        await ann.expect("client-typing")
        await receiver.until(lambda: len(receiver.events) == 4)
        assert receiver.events[2:] == [
            {"name": "member_added", "channel": "presence-room", "user_id": "bob"},
            {"name": "client_event", "channel": "presence-room", "event": "client-typing",
             "data": '{"on":true}', "socket_id": bob.socket_id, "user_id": "bob"},
        ]
        private = await Client.connect(session, gw.url)
        await private.subscribe("private-x")
        await private.subscribe("public-y")
        await private.send("client-hi", "plain", "private-x")
        await ann.ws.close()
        await bob.ws.close()
        await private.ws.close()
        await receiver.until(lambda: len(receiver.named("channel_vacated")) == 3)
        await asyncio.sleep(0.3)
        rest = receiver.events[4:]
        assert {"name": "client_event", "channel": "private-x", "event": "client-hi", "data": "plain",
                "socket_id": private.socket_id} in rest
        assert sorted(e["user_id"] for e in receiver.named("member_removed")) == ["ann", "bob"]
        assert sorted(e["channel"] for e in receiver.named("channel_occupied")) == \
            ["presence-room", "private-x", "public-y"]
        assert sorted(e["channel"] for e in receiver.named("channel_vacated")) == \
            ["presence-room", "private-x", "public-y"]
        assert len(rest) == 1 + 2 + 2 + 3  # the client event, two removed, two occupied, three vacated
        assert receiver.invalid == 0


async def test_only_the_events_asked_for(receiver: Receiver) -> None:
    opts = options(receiver, events=["channel_vacated"])
    async with run_gateway({PATH: {"handler": "pusher", "options": opts}}) as gw, \
            aiohttp.ClientSession() as session:
        ann = await Client.connect(session, gw.url)
        await ann.subscribe("presence-room", "ann")
        await ann.ws.close()
        await receiver.until(lambda: bool(receiver.events))
        await asyncio.sleep(0.2)
        assert receiver.events == [{"name": "channel_vacated", "channel": "presence-room"}]


async def test_a_receiver_that_was_down_gets_every_event_once_it_is_up(receiver: Receiver) -> None:
    receiver.status = 503
    opts = options(receiver, backoff="100ms", max_backoff="400ms")
    async with run_gateway({PATH: {"handler": "pusher", "options": opts}}) as gw, \
            aiohttp.ClientSession() as session:
        clients = []
        for n in range(5):
            client = await Client.connect(session, gw.url)
            await client.subscribe(f"presence-{n}", f"user-{n}")
            clients.append(client)
        await receiver.until(lambda: receiver.refused >= 3)  # retried while it is down
        for client in clients[:3]:
            await client.ws.close()
        await asyncio.sleep(1.0)
        assert receiver.batches == []
        receiver.status = 200
        back = time.monotonic()
        expected = 5 * 2 + 3 * 2  # occupied + added each; removed + vacated for three
        await receiver.until(lambda: len(receiver.events) == expected, within=5)
        # within max_backoff (and the time to send) of its recovery
        assert time.monotonic() - back < 0.4 + 1.0
        for n in range(5):
            assert len(receiver.named("channel_occupied", f"presence-{n}")) == 1
            assert len(receiver.named("member_added", f"presence-{n}")) == 1
        for n in range(3):
            assert len(receiver.named("member_removed", f"presence-{n}")) == 1
            assert len(receiver.named("channel_vacated", f"presence-{n}")) == 1
        # in order: a channel's occupied before its vacated
        names = [(e["name"], e["channel"]) for e in receiver.events]
        assert names.index(("channel_occupied", "presence-0")) < names.index(("channel_vacated", "presence-0"))
        assert receiver.invalid == 0
        for client in clients[3:]:
            await client.ws.close()


async def test_one_channel_vacated_across_two_instances(
        receiver: Receiver, redis_server: Any, wsgate_process: Any, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"server": {"host": "127.0.0.1"}, "broker": redis_server.url,
                                  "endpoints": [{"path": PATH, "handler": "pusher",
                                                 "options": options(receiver)}]}))
    one, two = wsgate_process(config), wsgate_process(config)
    rounds = 6
    async with aiohttp.ClientSession() as session:
        for n in range(rounds):
            channel = f"presence-r{n}"
            ann = await Client.connect(session, one.url)
            bob = await Client.connect(session, two.url)
            ann2 = await Client.connect(session, two.url)  # ann's second tab, on the other instance
            await ann.subscribe(channel, "ann")
            await bob.subscribe(channel, "bob")
            await ann2.subscribe(channel, "ann")
            await ann.expect("pusher_internal:member_added")  # bob
            # every member leaves at once, from both instances
            await asyncio.gather(ann.ws.close(), bob.ws.close(), ann2.ws.close())
        await receiver.until(lambda: len(receiver.named("channel_vacated")) >= rounds, within=10)
        await asyncio.sleep(1.0)  # a second one would have come by now
        for n in range(rounds):
            channel = f"presence-r{n}"
            assert len(receiver.named("channel_occupied", channel)) == 1, receiver.events
            assert len(receiver.named("channel_vacated", channel)) == 1, receiver.events
            assert sorted(e["user_id"] for e in receiver.named("member_added", channel)) == ["ann", "bob"]
            assert sorted(e["user_id"] for e in receiver.named("member_removed", channel)) == ["ann", "bob"]
        assert receiver.invalid == 0
    for instance in (one, two):
        await asyncio.to_thread(instance.stop)  # while this loop serves the receiver


def test_the_documented_webhook_defaults_are_the_defaults() -> None:
    from wsgate.builtins.pusher.options import WEBHOOK_EVENTS, WebhookOptions

    from wsgate.config.units import parse_duration

    doc = (Path(__file__).parent.parent / "docs" / "pusher.md").read_text(encoding="utf-8")
    table = doc.split("| `webhooks:` key | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = {cells[1].strip("` "): cells[2].strip()
            for line in table.splitlines()[2:] if len(cells := line.split("|")) > 3}
    defaults = WebhookOptions(url="http://x/")
    assert set(rows) == set(WebhookOptions.model_fields)
    assert rows.pop("url") == "required"
    assert rows.pop("events") == "all six"
    assert defaults.events == WEBHOOK_EVENTS
    assert len(WEBHOOK_EVENTS) == 6
    for key, printed in rows.items():
        value = printed.strip("`")
        expected = int(value) if key.startswith("max_") and key != "max_backoff" else parse_duration(value)
        assert getattr(defaults, key) == expected, key
    assert WebhookOptions.model_fields["retry_for"].metadata[0].ge == 300  # never less than 5 minutes


def test_the_signature_is_the_sdks() -> None:
    from wsgate.builtins.pusher.webhooks import signature

    body = json.dumps({"time_ms": int(time.time() * 1000), "events": [{"name": "channel_occupied", "channel": "a"}]})
    assert SDK.validate_webhook(key=KEY, signature=signature(SECRET, body.encode()), body=body) is not None
    assert SDK.validate_webhook(key=KEY, signature=signature(SECRET + "!", body.encode()), body=body) is None


async def test_a_gateway_that_stops_sends_its_last_events(receiver: Receiver) -> None:
    async with aiohttp.ClientSession() as session:
        async with run_gateway({PATH: {"handler": "pusher", "options": options(receiver)}}) as gw:
            ann = await Client.connect(session, gw.url)
            await ann.subscribe("presence-room", "ann")
            await receiver.until(lambda: len(receiver.events) == 2)
            closing = asyncio.create_task(ann.ws.receive())  # answers the gateway's close frame
        await closing
        # the gateway closed ann's connection on its way out, then sent what it left
        assert receiver.events[2:] == [{"name": "member_removed", "channel": "presence-room", "user_id": "ann"},
                                       {"name": "channel_vacated", "channel": "presence-room"}]


async def test_the_waiting_events_are_bounded(receiver: Receiver) -> None:
    import logging

    from wsgate.builtins.pusher.options import WebhookOptions
    from wsgate.builtins.pusher.webhooks import Webhooks

    asked = WebhookOptions(url=receiver.url, max_pending=3, events=["channel_occupied", "channel_vacated"])
    hooks = Webhooks(asked, KEY, SECRET, logging.getLogger("test"))
    for n in range(5):
        hooks.emit("channel_occupied", f"c{n}")
    hooks.emit("cache_miss", "c9")  # not a kind it was asked for
    assert [e["channel"] for e in hooks.pending] == ["c2", "c3", "c4"]
    assert hooks.dropped == 2
    await hooks.flush()
    assert receiver.events == [{"name": "channel_occupied", "channel": f"c{n}"} for n in (2, 3, 4)]


async def test_the_last_instance_with_subscribers_dies_one_channel_vacated(
        receiver: Receiver, redis_server: Any, wsgate_process: Any, tmp_path: Path) -> None:
    opts = {**options(receiver), "presence_ttl": "2s"}
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"server": {"host": "127.0.0.1"}, "broker": redis_server.url,
                                  "endpoints": [{"path": PATH, "handler": "pusher", "options": opts}]}))
    doomed, alive = wsgate_process(config), wsgate_process(config)
    async with aiohttp.ClientSession() as session:
        ann = await Client.connect(session, doomed.url)
        await ann.subscribe("presence-room", "ann")
        bob = await Client.connect(session, alive.url)
        await bob.subscribe("public-x")  # the live instance has a channel open, but not this one
        await receiver.until(lambda: len(receiver.named("channel_occupied")) == 2)
        doomed.signal(9)  # SIGKILL: nothing released, nothing flushed
        await receiver.until(lambda: bool(receiver.named("channel_vacated")), within=6)
        await asyncio.sleep(1.0)
        assert [e for e in receiver.events if e["channel"] == "presence-room"] == [
            {"name": "channel_occupied", "channel": "presence-room"},
            {"name": "member_added", "channel": "presence-room", "user_id": "ann"},
            {"name": "member_removed", "channel": "presence-room", "user_id": "ann"},
            {"name": "channel_vacated", "channel": "presence-room"},
        ]
        await bob.ws.close()
        await ann.ws.close()
    await asyncio.to_thread(alive.stop)  # its last events go to the receiver, which this loop serves
    assert receiver.named("channel_vacated", "public-x") == [{"name": "channel_vacated", "channel": "public-x"}]


async def test_pusher_js_clients_make_the_events(receiver: Receiver) -> None:
    endpoint = {"handler": "pusher", "origins": "*", "options": options(receiver)}
    async with run_gateway({PATH: endpoint}) as gw:
        parts = urlsplit(gw.url)
        backend = receiver.url.rsplit("/", 1)[0]
        report = await run_node("pusher_webhooks.js", str(parts.hostname), str(parts.port), backend, KEY, within=20)
        assert report["error"] is None, report
        await receiver.until(lambda: len(receiver.named("channel_vacated")) == 1)
    events = receiver.events
    assert events[:4] == [
        {"name": "channel_occupied", "channel": "presence-hooks"},
        {"name": "member_added", "channel": "presence-hooks", "user_id": "alice"},
        {"name": "member_added", "channel": "presence-hooks", "user_id": "bob"},
        {"name": "client_event", "channel": "presence-hooks", "event": "client-wave", "data": '{"to":"bob"}',
         "socket_id": report["alice"], "user_id": "alice"},
    ]
    # the two leave together: in either order, then the channel is vacated
    assert sorted(events[4:6], key=lambda e: str(e["user_id"])) == [
        {"name": "member_removed", "channel": "presence-hooks", "user_id": "alice"},
        {"name": "member_removed", "channel": "presence-hooks", "user_id": "bob"},
    ]
    assert events[6:] == [{"name": "channel_vacated", "channel": "presence-hooks"}]
    assert receiver.invalid == 0
