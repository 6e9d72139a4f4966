"""The pusher handler on two ``python -m wsgate`` instances sharing a real three-master Redis
Cluster (tests/cluster.py): pusher-js on each instance (tests/node/pusher_cluster.js) gets
the events the ``pusher`` SDK triggers through either one and the other's client events; a
presence channel lists the members of both, as each instance's HTTP API does; and the
webhooks (checked with the SDK's ``validate_webhook``) announce each channel and member
once, with exactly one ``channel_vacated`` when the last members leave from both at once.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pusher
import pytest
from aiohttp import web
from cluster import Cluster
from conftest import WsgateProcess, run_node
from test_pusher_webhooks import APP_ID, KEY, PATH, SECRET, Client, Receiver, auth, options

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are not installed: run the README's test command (scripts/test)")
    started = Cluster(tmp_path_factory.mktemp("pusher-cluster"))
    started.start()
    yield started
    started.stop()


class App:
    """The application: webhooks, channel authorization, and the Node script's steps."""

    def __init__(self) -> None:
        self.receiver = Receiver()
        self.instances: list[WsgateProcess] = []

    def sdk(self, instance: WsgateProcess) -> pusher.Pusher:
        return pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET, host=instance.host, port=instance.port, ssl=False)

    async def info(self, request: web.Request) -> web.Response:
        views = {}
        for name, instance in zip("ab", self.instances, strict=True):
            sdk = self.sdk(instance)
            views[name] = {
                "users": await asyncio.to_thread(sdk.users_info, "presence-room"),
                "room": await asyncio.to_thread(sdk.channel_info, "presence-room", ["user_count"]),
                "news": await asyncio.to_thread(sdk.channel_info, "news", ["subscription_count"]),
                "channels": await asyncio.to_thread(sdk.channels_info, None, []),
            }
        return web.json_response(views)

    async def trigger(self, request: web.Request) -> web.Response:
        sent = []
        for name, instance in zip("ab", self.instances, strict=True):
            sdk = self.sdk(instance)
            sent.append(await asyncio.to_thread(sdk.trigger, ["news", "presence-room"], f"from-{name}",
                                                {"via": name}))
        return web.json_response(sent)

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hooks", self.receiver.handle)
        app.router.add_post("/pusher/auth", auth)
        app.router.add_post("/step/info", self.info)
        app.router.add_post("/step/trigger", self.trigger)
        return app


@pytest.fixture
async def app(cluster: Cluster, wsgate_process: Start, write_config: WriteConfig) -> AsyncIterator[App]:
    """The application served, and two gateways on the cluster that send it their webhooks."""
    served = App()
    runner = web.AppRunner(served.web_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    served.receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    config = write_config({"server": {"host": "127.0.0.1"}, "broker": cluster.url,
                           "endpoints": [{"path": PATH, "handler": "pusher", "origins": "*",
                                          "options": options(served.receiver)}]})
    served.instances = [wsgate_process(config, wait=False) for _ in "ab"]
    for instance in served.instances:
        instance.wait_listening()
    yield served
    for name, instance in zip("AB", served.instances, strict=True):
        await asyncio.to_thread(instance.stop)  # its last webhooks go to the receiver this loop serves
        print(f"--- instance {name} ---\n{instance.output}")
    await runner.cleanup()


async def test_pusher_js_on_two_instances_of_a_redis_cluster(app: App) -> None:
    a, b = app.instances
    backend = app.receiver.url.rsplit("/", 1)[0]
    report = await run_node("pusher_cluster.js", a.host, str(a.port), str(b.port), backend, KEY, within=40)
    assert report["error"] is None, report
    assert report["stage"] == "done", report
    alice, bob = report["alice"]["events"], report["bob"]["events"]

    # presence: bob, on B, is told of alice, on A; alice is told of bob joining and leaving
    assert [e["ids"] for e in bob if e["channel"] == "presence-room" and "ids" in e] == [["alice", "bob"]]
    assert [(e["event"], e["member"]) for e in alice if "member" in e] == [
        ("pusher:member_added", "bob"), ("pusher:member_removed", "bob")]
    # both instances answer for the whole cluster
    for view in report["info"].values():
        assert view["users"] == {"users": [{"id": "alice"}, {"id": "bob"}]}
        assert view["room"] == {"occupied": True, "user_count": 2}
        assert view["news"] == {"occupied": True, "subscription_count": 2}
        assert set(view["channels"]["channels"]) == {"news", "private-chat", "presence-room"}
    for view in report["after"].values():
        assert view["users"] == {"users": [{"id": "alice"}]}
        assert view["news"] == {"occupied": True, "subscription_count": 1}

    # the SDK's events, through either instance, reach both clients once each
    assert report["triggered"] == [{}, {}]
    for events in (alice, bob):
        got = sorted((e["channel"], e["event"], json.dumps(e["data"])) for e in events
                     if e["event"].startswith("from-"))
        assert got == [("news", "from-a", '{"via": "a"}'), ("news", "from-b", '{"via": "b"}'),
                       ("presence-room", "from-a", '{"via": "a"}'), ("presence-room", "from-b", '{"via": "b"}')]
    assert report["clientTriggered"] is True
    assert [e["data"] for e in bob if e["event"] == "client-hello"] == [{"from": "alice"}]
    assert [e for e in alice if e["event"] == "client-hello"] == []

    # the webhooks: each once, across the two instances
    receiver = app.receiver
    await receiver.until(lambda: len(receiver.named("channel_vacated")) >= 3, within=10)
    await asyncio.sleep(0.5)  # a second one would have come by now
    for channel in ("news", "private-chat", "presence-room"):
        assert len(receiver.named("channel_occupied", channel)) == 1, receiver.events
        assert len(receiver.named("channel_vacated", channel)) == 1, receiver.events
    assert sorted(e["user_id"] for e in receiver.named("member_added")) == ["alice", "bob"]
    assert sorted(e["user_id"] for e in receiver.named("member_removed")) == ["alice", "bob"]
    assert [(e["channel"], e["event"]) for e in receiver.named("client_event")] == [("private-chat", "client-hello")]
    assert receiver.invalid == 0


async def test_one_channel_vacated_when_the_last_members_leave_both_instances_at_once(app: App) -> None:
    one, two = app.instances
    receiver = app.receiver
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
            await ann.expect("pusher_internal:member_added")  # bob, from the other instance
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
