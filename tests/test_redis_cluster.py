"""The Redis Cluster broker: a real three-master cluster, two real gateway processes.

Rooms are chosen on different masters (by the hash slot of their cluster channel).
Chat must give the same gap-free ids on both instances, history and resume; after a
master is killed (``kill -9``, no replicas), its rooms answer new joins with 1013
while the rooms of the other masters keep working on both instances, and ``/readyz``
says which instance depends on the lost master.

With a replica per master: while chat and ``POST /api/publish`` traffic
flows, a master is killed and its replica promoted, or a room's slot is resharded;
every instance follows, the one that only publishes included, and a move touches only
the rooms of its slot. A publish made mid-migration follows ASK.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cluster import Cluster, ClusterNodeProcess
from conftest import WsgateProcess
from redis.crc import key_slot

from wsgate.broker.cluster_url import parse_cluster_url
from wsgate.broker.redis import redact_url
from wsgate.broker.redis_cluster import cluster_channel, cluster_presence_key
from wsgate.config import Registry, parse_config
from wsgate.errors import ConfigError
from wsgate.testing import eventually

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]
WAIT = 5.0  # seconds any one expected event may take


# --- naming and URLs (no cluster needed) -----------------------------------------------


def test_a_room_and_its_keys_share_one_slot() -> None:
    channel = cluster_channel("wsgate:/chat:lobby")
    assert channel == "wsgate:{/chat:lobby}"
    names = [channel, f"{channel}:seq", f"{channel}:history", f"{channel}:epoch",
             cluster_presence_key("wsgate:/chat:lobby:presence"),
             cluster_presence_key("wsgate:/chat:lobby#owner:alice:presence"),
             cluster_presence_key("wsgate:/chat:lobby#tabs:u1:presence")]
    assert names[4:] == ["wsgate:{/chat:lobby}:presence", "wsgate:{/chat:lobby}#owner:alice:presence",
                         "wsgate:{/chat:lobby}#tabs:u1:presence"]
    assert len({key_slot(name.encode()) for name in names}) == 1
    # Braces in a topic cannot split a room over two slots.
    odd = cluster_channel("wsgate:/x:a}b{c")
    assert key_slot(odd.encode()) == key_slot(f"{odd}:seq".encode()) == key_slot(
        cluster_presence_key("wsgate:/x:a}b{c#owner:n:presence").encode())
    # Other rooms (and the same room of another path) are spread over the slots.
    slots = {key_slot(cluster_channel(f"wsgate:/chat:r{i}").encode()) for i in range(50)}
    assert len(slots) > 40
    assert cluster_channel("wsgate:/chat:lobby") != cluster_channel("wsgate:/other:lobby")


def test_cluster_urls_are_parsed() -> None:
    spec = parse_cluster_url("rediss+cluster://app:s%40cret@10.0.0.1:7000,[::1]:7001,redis-2:7002/")
    assert spec.nodes == (("10.0.0.1", 7000), ("::1", 7001), ("redis-2", 7002))
    assert (spec.tls, spec.username, spec.password) == (True, "app", "s@cret")
    assert parse_cluster_url("redis+cluster://127.0.0.1:7000").tls is False
    assert redact_url("redis+cluster://app:hunter2@h:1,h:2") == "redis+cluster://app:***@h:1,h:2"
    assert redact_url("rediss+cluster://hunter2@h:1") == "rediss+cluster://***@h:1"


@pytest.mark.parametrize(("broker", "fragment"), [
    ("redis+cluster://127.0.0.1", "host:port"),
    ("redis+cluster://127.0.0.1:7000,", "host:port"),
    ("redis+cluster://127.0.0.1:70000", "host:port"),
    ("redis+cluster://127.0.0.1:7000/1", "only database 0"),
    ("redis+cluster://127.0.0.1:7000?ssl=1", "no query"),
    ("redis+cluster://u:hunter2@127.0.0.1", "host:port"),
])
def test_bad_cluster_urls_fail_at_load_with_file_and_line(broker: str, fragment: str) -> None:
    text = f"endpoints:\n  - {{path: /ws, handler: echo}}\nbroker: '{broker}'\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "config.yaml", Registry())
    (problem,) = caught.value.problems
    assert (problem.file, problem.line, problem.key) == ("config.yaml", 3, "broker"), str(problem)
    assert fragment in problem.message
    assert "hunter2" not in str(caught.value)


def test_a_good_cluster_url_loads() -> None:
    url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"
    settings = parse_config(f"broker: '{url}'\nserver: {{workers: 2}}\nendpoints:\n  - {{path: /ws, handler: echo}}\n",
                            "config.yaml", Registry())
    assert settings.config.broker == url


# --- a real cluster ------------------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are not installed: run the README's test command (scripts/test)")
    started = Cluster(tmp_path / "cluster")
    started.start()
    yield started
    started.stop()


@pytest.fixture
def instances(cluster: Cluster, wsgate_process: Start, write_config: WriteConfig) -> Iterator[list[WsgateProcess]]:
    """Two gateways on the cluster: A reads the broker from its file, B from WSGATE_BROKER."""
    def config(broker: str | None) -> dict[str, Any]:
        found: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "port": 0, "shutdown_timeout": "1s"},
            "policy": {"heartbeat": {"interval": 0}, "rate_limit": None, "close_timeout": "0.3s"},
            "endpoints": [{"path": "/chat", "handler": "chat", "options": {"presence_ttl": "4s"}}],
        }
        if broker is not None:
            found["broker"] = broker
        return found

    handles = [wsgate_process(write_config(config(cluster.url), "a.yaml"), wait=False),
               wsgate_process(write_config(config(None), "b.yaml"), wait=False, env={"WSGATE_BROKER": cluster.url})]
    for handle in handles:
        m = handle.wait_for_line(r"wsgate listening on http://(\S+?):(\d+)/", timeout=20)
        handle.host, handle.port = m.group(1).strip("[]"), int(m.group(2))
    yield handles
    for name, handle in zip("AB", handles, strict=True):  # shown by pytest when a test failed
        print(f"--- instance {name} ---\n{handle.output}")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def rooms_on_each_master(cluster: Cluster) -> dict[int, str]:
    """Master port -> a room of /chat whose slot that master holds."""
    ranges = cluster.ranges()
    masters = len({node.port for _, _, node in ranges})
    found: dict[int, str] = {}
    for i in range(200):
        room = f"room{i}"
        node = cluster.owner(key_slot(cluster_channel(f"wsgate:/chat:{room}").encode()), ranges)
        found.setdefault(node.port, room)
        if len(found) == masters:
            return found
    raise AssertionError(f"200 rooms did not cover the {masters} masters")


class Chat:
    """One chat client over a real WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, welcome: dict[str, Any], history: dict[str, Any]) -> None:
        self.ws, self.welcome, self.history = ws, welcome, history

    @classmethod
    async def join(cls, session: aiohttp.ClientSession, instance: WsgateProcess, room: str, name: str,
                   query: str = "") -> Chat:
        ws = await session.ws_connect(f"{instance.ws_url}/chat?room={room}&name={name}{query}")
        welcome = await cls._next(ws)
        assert welcome["type"] == "welcome", welcome
        history = await cls._next(ws)
        assert history["type"] == "history", history
        return cls(ws, welcome, history)

    @staticmethod
    async def _next(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, ws.close_code)
        event: dict[str, Any] = json.loads(msg.data)
        return event

    async def messages(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` ``message`` events, passing over joins and leaves."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            event = await self._next(self.ws)
            if event["type"] == "message":
                found.append(event)
        return found

    async def say(self, *texts: str) -> None:
        for text in texts:
            await self.ws.send_str(text)


async def refused_with_1013(session: aiohttp.ClientSession, instance: WsgateProcess, room: str) -> None:
    async with asyncio.timeout(WAIT):
        ws = await session.ws_connect(f"{instance.ws_url}/chat?room={room}&name=late")
        first = await ws.receive()
        closing = await ws.receive()
    assert first.type == aiohttp.WSMsgType.TEXT, first
    assert json.loads(first.data)["type"] == "error", first
    assert closing.type == aiohttp.WSMsgType.CLOSE, closing
    assert ws.close_code == 1013, ws.close_code


async def ready(session: aiohttp.ClientSession, instance: WsgateProcess) -> int:
    async with asyncio.timeout(WAIT), session.get(f"{instance.url}/readyz") as response:
        return response.status


def shard_channels(node: ClusterNodeProcess) -> set[str]:
    return set(node.command("PUBSUB", "SHARDCHANNELS").split())


async def test_chat_across_two_instances_on_three_masters(cluster: Cluster, instances: list[WsgateProcess],
                                                          session: aiohttp.ClientSession) -> None:
    a, b = instances
    rooms = rooms_on_each_master(cluster)
    assert len(set(rooms.values())) == 3
    for port, room in rooms.items():
        alice = await Chat.join(session, a, room, "alice")
        bob = await Chat.join(session, b, room, "bob")
        assert bob.welcome["users"] == ["alice", "bob"]
        epoch = alice.welcome["epoch"]
        assert bob.welcome["epoch"] == epoch
        # Both send at once, from both instances: one gap-free order, the same everywhere.
        await asyncio.gather(alice.say(*(f"a{n}" for n in range(10))), bob.say(*(f"b{n}" for n in range(10))))
        seen_a, seen_b = await asyncio.gather(alice.messages(20), bob.messages(20))
        assert [m["id"] for m in seen_a] == list(range(1, 21)), room
        assert [(m["id"], m["text"]) for m in seen_a] == [(m["id"], m["text"]) for m in seen_b]
        assert [m["text"] for m in seen_a if m["from"] == "alice"] == [f"a{n}" for n in range(10)]

        # The room lives on its master alone: shard channel and keys, all in its slot.
        owner = next(node for node in cluster.nodes if node.port == port)
        channel = cluster_channel(f"wsgate:/chat:{room}")
        assert channel in shard_channels(owner)
        for suffix in (":seq", ":history", ":epoch", ":presence"):
            assert owner.command("EXISTS", channel + suffix).strip() == "1", channel + suffix
        assert owner.command("GET", channel + ":seq").strip() == "20"

        # History on a fresh join, and an exact resume on the other instance.
        carol = await Chat.join(session, b, room, "carol")
        assert [m["id"] for m in carol.history["messages"]] == list(range(1, 21))
        await alice.ws.close()
        await bob.say("after1", "after2", "after3")
        assert [m["id"] for m in await bob.messages(3)] == [21, 22, 23]
        back = await Chat.join(session, b, room, "alice", f"&since=20&epoch={epoch}")
        assert back.welcome["recovered"] is True
        assert back.welcome["epoch"] == epoch
        assert [(m["id"], m["text"]) for m in back.history["messages"]] == [
            (21, "after1"), (22, "after2"), (23, "after3")]
        # A resume with another life's epoch is not recovered: the last messages instead.
        stale = await Chat.join(session, a, room, "dave", "&since=20&epoch=not-this-one")
        assert stale.welcome["recovered"] is False
        assert stale.history["messages"][-1]["id"] == 23
        for client in (bob, carol, back, stale):
            await client.ws.close()
    assert await ready(session, a) == await ready(session, b) == 200


def wait_until(check: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.05)


def marked_failed(survivor: ClusterNodeProcess, lost: ClusterNodeProcess) -> bool:
    try:
        nodes = survivor.command("CLUSTER", "NODES")
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return any(f":{lost.port}@" in line and "fail" in line.split()[2].split(",") for line in nodes.splitlines())


async def test_a_lost_master_fails_its_rooms_only(cluster: Cluster, instances: list[WsgateProcess],
                                                  session: aiohttp.ClientSession) -> None:
    a, b = instances
    rooms = rooms_on_each_master(cluster)
    lost_port, lost_room = next(iter(rooms.items()))
    kept_rooms = [room for port, room in rooms.items() if port != lost_port]
    lost = next(node for node in cluster.nodes if node.port == lost_port)
    survivor = next(node for node in cluster.nodes if node.port != lost_port)

    # A has a client in the room that will be lost; B has none there.
    member = await Chat.join(session, a, lost_room, "stays")
    pairs = []
    for room in kept_rooms:
        pairs.append((await Chat.join(session, a, room, "x"), await Chat.join(session, b, room, "y")))
    assert await ready(session, a) == await ready(session, b) == 200

    lost.kill()
    # A depends on the lost master (a client of its room is here); B does not.
    await eventually(lambda: ready(session, a), 503, within=WAIT)
    assert await ready(session, b) == 200
    for instance in (a, b):
        await refused_with_1013(session, instance, lost_room)

    # The member already in the lost room stays connected; what it says reaches this
    # instance's members only, without an id.
    await member.say("anyone?")
    (echo,) = await member.messages(1)
    assert (echo["id"], echo["text"]) == (None, "anyone?")
    assert not member.ws.closed

    async def kept_rooms_work(round_: int) -> None:
        for x, y in pairs:
            await x.say(f"hello {round_}")
            got_x, got_y = await asyncio.gather(x.messages(1), y.messages(1))
            await y.say(f"hi {round_}")
            more_x, more_y = await asyncio.gather(x.messages(1), y.messages(1))
            got_x, got_y = got_x + more_x, got_y + more_y
            assert [m["text"] for m in got_x] == [m["text"] for m in got_y] == [f"hello {round_}", f"hi {round_}"]
            first = got_x[0]["id"]
            assert isinstance(first, int)
            assert [m["id"] for m in got_y] == [first, first + 1]
        for room in kept_rooms:  # new joins too, on both instances
            for instance in (a, b):
                late = await Chat.join(session, instance, room, f"late{round_}")
                await late.ws.close()

    await kept_rooms_work(1)
    # The same once the other masters have marked the lost one as failed.
    await asyncio.to_thread(wait_until, lambda: marked_failed(survivor, lost), 10, "the master marked failed")
    await kept_rooms_work(2)
    await refused_with_1013(session, b, lost_room)
    assert await ready(session, b) == 200
    assert await ready(session, a) == 503

    # Once its last client left the lost room, A no longer depends on that master.
    await member.ws.close()
    await eventually(lambda: ready(session, a), 200, within=WAIT)
    for x, y in pairs:
        await x.ws.close()
        await y.ws.close()


# --- failover and resharding: traffic on, three instances, one of them API-only -----------

TOKEN = "cluster-api-token"
Gateways = Callable[..., list[WsgateProcess]]


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[Cluster]:
    """Three masters, each with a replica the cluster promotes when its master is lost."""
    started = Cluster(tmp_path / "replicated", replicas=1)
    started.start()
    yield started
    started.stop()


@pytest.fixture
def gateways(wsgate_process: Start, write_config: WriteConfig) -> Iterator[Gateways]:
    """Factory: ``count`` gateways on a cluster, with the publish API on."""
    started: list[WsgateProcess] = []

    def start(cluster: Cluster, count: int = 3) -> list[WsgateProcess]:
        config = {
            "server": {"host": "127.0.0.1", "port": 0, "shutdown_timeout": "1s"},
            "policy": {"heartbeat": {"interval": 0}, "rate_limit": None, "close_timeout": "0.3s"},
            "api": {"token": TOKEN},
            "broker": cluster.url,
            "endpoints": [{"path": "/chat", "handler": "chat",
                           "options": {"presence_ttl": "4s", "history": 1000, "keep": 1000}}],
        }
        handles = [wsgate_process(write_config(config, f"{n}.yaml"), wait=False) for n in range(count)]
        for handle in handles:
            m = handle.wait_for_line(r"wsgate listening on http://(\S+?):(\d+)/", timeout=20)
            handle.host, handle.port = m.group(1).strip("[]"), int(m.group(2))
        started.extend(handles)
        return handles

    yield start
    for name, handle in zip("ABCDEF", started, strict=False):  # shown by pytest when a test failed
        print(f"--- instance {name} ---\n{handle.output}")


async def api_publish(session: aiohttp.ClientSession, instance: WsgateProcess, room: str, data: str) -> int:
    async with asyncio.timeout(WAIT), session.post(
            f"{instance.url}/api/publish", json={"endpoint": "/chat", "room": room, "data": data},
            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        return response.status


class Events:
    """Every event a chat client receives, read in the background."""

    def __init__(self, chat: Chat) -> None:
        self.seen: list[dict[str, Any]] = []
        self._task = asyncio.get_running_loop().create_task(self._read(chat.ws))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.seen.append(json.loads(msg.data))

    def messages(self) -> list[tuple[int | None, str]]:
        return [(e["id"], e["text"]) for e in self.seen if e["type"] == "message"]

    def published(self) -> list[str]:
        return [e["data"] for e in self.seen if e["type"] == "publish"]


async def keep_saying(chat: Chat, prefix: str, stop: asyncio.Event) -> list[str]:
    """Say ``prefix0``, ``prefix1``... every 20 ms until ``stop``; what was said."""
    said: list[str] = []
    while not stop.is_set():
        said.append(f"{prefix}{len(said)}")
        await chat.say(said[-1])
        await asyncio.sleep(0.02)
    return said


Published = list[tuple[float, str, int]]


async def keep_publishing(session: aiohttp.ClientSession, instance: WsgateProcess, room: str,
                          stop: asyncio.Event, done: Published) -> None:
    """POST /api/publish every 20 ms until ``stop``; (when, data, status) of each into ``done``."""
    while not stop.is_set():
        data = f"api{len(done)}"
        done.append((time.monotonic(), data, await api_publish(session, instance, room, data)))
        await asyncio.sleep(0.02)


def ids_in_order(messages: list[tuple[int | None, str]]) -> list[int]:
    ids = [i for i, _ in messages if i is not None]
    assert ids == sorted(set(ids)), f"ids repeated or out of order: {ids}"
    return ids


async def wait_for(check: Callable[[], bool], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


async def test_every_instance_follows_a_promoted_replica(replicated: Cluster, gateways: Gateways,
                                                         session: aiohttp.ClientSession) -> None:
    a, b, api_only = gateways(replicated)
    lost_port, room = next(iter(rooms_on_each_master(replicated).items()))
    lost = next(node for node in replicated.nodes if node.port == lost_port)
    replica = replicated.replica_of(lost)
    alice, bob = await Chat.join(session, a, room, "alice"), await Chat.join(session, b, room, "bob")
    seen_a, seen_b = Events(alice), Events(bob)
    assert await api_publish(session, api_only, room, "before") == 200

    stop = asyncio.Event()
    saying = asyncio.ensure_future(keep_saying(alice, "m", stop))
    published: Published = []
    publishing = asyncio.ensure_future(keep_publishing(session, api_only, room, stop, published))
    await asyncio.sleep(0.3)
    lost.kill()
    await asyncio.to_thread(wait_until, lambda: replicated.is_master(replica), 15, "the replica promoted")
    promoted = time.monotonic()
    # The instance with no member in the room follows the new master too: its publishes
    # go through again within seconds, not never.
    await wait_for(lambda: any(when > promoted and status == 200 for when, _, status in published),
                   "a publish through the promoted master")
    await asyncio.sleep(1.0)
    stop.set()
    said = await saying
    await publishing
    followed = next(when for when, _, status in published if when > promoted and status == 200)
    assert all(status == 200 for when, _, status in published if when > followed + 0.5), published
    assert await ready(session, api_only) == 200

    # Both members see what is said and published after the switch, numbered on.
    last_api = next(data for when, data, status in reversed(published) if status == 200)
    await wait_for(lambda: last_api in seen_a.published() and last_api in seen_b.published(), "the last publish")
    await alice.say("after")
    await wait_for(lambda: "after" in [t for _, t in seen_b.messages()], "alice's message after the failover")
    (after_id,) = [i for i, t in seen_b.messages() if t == "after"]
    assert isinstance(after_id, int)
    for seen in (seen_a, seen_b):
        ids_in_order(seen.messages())
    assert len(said) > 20
    for instance in (a, b, api_only):
        await eventually(lambda i=instance: ready(session, i), 200, within=WAIT)



def room_in_slot(slot: int, prefix: str) -> str:
    """A /chat room whose cluster channel hashes to ``slot``."""
    return next(f"{prefix}{i}" for i in range(1_000_000)
                if key_slot(cluster_channel(f"wsgate:/chat:{prefix}{i}").encode()) == slot)


async def test_a_reshard_moves_only_the_rooms_of_its_slot(replicated: Cluster, gateways: Gateways,
                                                          session: aiohttp.ClientSession) -> None:
    a, b, api_only = gateways(replicated)
    ranges = replicated.ranges()
    first, _, source = ranges[0]
    target = next(node for _, _, node in ranges if node is not source)
    # ``redis-cli --cluster reshard`` moves the lowest slots of its source: this room's.
    moving = room_in_slot(first, "moving")
    staying = next(room for room in (f"staying{i}" for i in range(200))
                   if replicated.owner(key_slot(cluster_channel(f"wsgate:/chat:{room}").encode()), ranges) is source
                   and key_slot(cluster_channel(f"wsgate:/chat:{room}").encode()) != first)
    alice, bob = await Chat.join(session, a, moving, "alice"), await Chat.join(session, b, moving, "bob")
    carol, dave = await Chat.join(session, a, staying, "carol"), await Chat.join(session, b, staying, "dave")
    seen = {name: Events(chat) for name, chat in (("alice", alice), ("bob", bob), ("carol", carol), ("dave", dave))}

    stop = asyncio.Event()
    saying = [asyncio.ensure_future(keep_saying(chat, prefix, stop)) for chat, prefix in ((alice, "m"), (carol, "s"))]
    published: Published = []
    publishing = asyncio.ensure_future(keep_publishing(session, api_only, moving, stop, published))
    await asyncio.sleep(0.5)
    await asyncio.to_thread(replicated.reshard, source, target)
    assert replicated.owner(first) is target
    await asyncio.sleep(1.5)
    stop.set()
    said_moving, said_staying = await asyncio.gather(*saying)
    await publishing

    # The room whose slot stayed lost nothing, on either instance: every message, in
    # order, with gap-free ids.
    for name in ("carol", "dave"):
        await wait_for(lambda n=name: len(seen[n].messages()) == len(said_staying), f"{name} to see every message")
        got = seen[name].messages()
        assert [t for _, t in got] == said_staying, name
        first_id = got[0][0]
        assert isinstance(first_id, int)
        assert [i for i, _ in got] == list(range(first_id, first_id + len(got))), name

    # The API-only instance followed MOVED: no publish failed, and the members got
    # those made once the move was done.
    assert [p for p in published if p[2] != 200] == []
    await wait_for(lambda: all(data in seen[n].published() for _, data, _ in published[-10:] for n in ("alice", "bob")),
                   "the last publishes")

    # The moved room: ids numbered on at its new master, each id once; what was kept
    # is in the order it was said.
    await wait_for(lambda: cluster_channel(f"wsgate:/chat:{moving}") in shard_channels(target),
                   "both instances subscribed on the new master")
    await alice.say("after")
    await wait_for(lambda: "after" in [t for _, t in seen["bob"].messages()], "a message after the move")
    for name in ("alice", "bob"):
        ids_in_order(seen[name].messages())
    late = await Chat.join(session, b, moving, "late")
    kept = [(m["id"], m["text"]) for m in late.history["messages"]]
    assert [i for i, _ in kept] == list(range(1, len(kept) + 1))
    texts = [t for _, t in kept]
    # Nothing numbered and kept went unseen on the sender's own instance: what could not
    # reach it while its subscription moved was delivered there without an id instead.
    assert [t for t in texts if t not in {t for _, t in seen["alice"].messages()}] == []
    assert texts[-1] == "after"
    assert texts[:-1] == [t for t in said_moving if t in set(texts)]
    assert len(texts) > len(said_moving) / 2
    for instance in (a, b, api_only):
        await eventually(lambda i=instance: ready(session, i), 200, within=WAIT)


async def test_a_numbered_publish_follows_ask_while_its_slot_migrates(cluster: Cluster, gateways: Gateways,
                                                                     session: aiohttp.ClientSession) -> None:
    a, b = gateways(cluster, 2)
    rooms = rooms_on_each_master(cluster)
    (source_port, room), (target_port, _) = list(rooms.items())[:2]
    source, target = (next(n for n in cluster.nodes if n.port == port) for port in (source_port, target_port))
    slot = key_slot(cluster_channel(f"wsgate:/chat:{room}").encode())
    alice, bob = await Chat.join(session, a, room, "alice"), await Chat.join(session, b, room, "bob")
    await alice.say("one")
    assert [m["id"] for m in await bob.messages(1)] == [1]

    # The room's keys are on the target, its slot still migrating: the old master
    # answers ASK to the numbering script, which runs on the target. Numbered and kept
    # there, the message is seen live too, where both instances are still subscribed.
    assert await asyncio.to_thread(cluster.start_moving, slot, target) is source
    await alice.say("during")
    (during,) = await bob.messages(1)
    assert (during["id"], during["text"]) == (2, "during")
    assert [(m["id"], m["text"]) for m in await alice.messages(2)] == [(1, "one"), (2, "during")]
    await asyncio.to_thread(cluster.finish_moving, slot, source, target)

    # Once both instances follow the move, the room goes on at its new master.
    seen = Events(bob)
    for n in range(100):
        await alice.say(f"after{n}")
        await asyncio.sleep(0.05)
        if seen.messages():
            break
    late = await Chat.join(session, a, room, "late")
    kept = [(m["id"], m["text"]) for m in late.history["messages"]]
    assert kept[:2] == [(1, "one"), (2, "during")]
    assert [i for i, _ in kept] == list(range(1, len(kept) + 1))
    ids_in_order(seen.messages())


async def test_a_master_s_rooms_of_several_slots_are_subscribed_again_after_a_reconnect(
        cluster: Cluster, instances: list[WsgateProcess], session: aiohttp.ClientSession) -> None:
    a, b = instances
    ranges = cluster.ranges()
    master = ranges[0][2]
    rooms = [room for room in (f"room{i}" for i in range(200))
             if cluster.owner(key_slot(cluster_channel(f"wsgate:/chat:{room}").encode()), ranges) is master][:2]
    pairs = [(await Chat.join(session, a, room, "x"), await Chat.join(session, b, room, "y")) for room in rooms]
    # Every pub/sub connection to that master is cut: each instance resubscribes its two
    # rooms there (Redis takes one slot per SSUBSCRIBE).
    assert master.command("CLIENT", "KILL", "TYPE", "pubsub").strip() == "2"
    for n, (x, y) in enumerate(pairs):
        seen = Events(y)
        for tries in range(100):
            await x.say(f"again{n}.{tries}")
            await asyncio.sleep(0.05)
            if seen.messages():
                break
        assert seen.messages(), rooms[n]
    for instance in (a, b):
        await eventually(lambda i=instance: ready(session, i), 200, within=WAIT)
