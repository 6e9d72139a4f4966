"""Several real gateway processes sharing one real redis-server: chat, ids, workers, outages."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import RedisServer, WsgateProcess, free_port
from redis.asyncio import Redis

from wsgate.testing import eventually

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]
LISTENING = re.compile(r"wsgate listening on http://(\S+?):(\d+)/")
OPEN_CONNECTIONS = re.compile(r'^wsgate_open_connections\{endpoint="/chat"\} (\d+)', re.MULTILINE)


def chat_config(broker: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_timeout": "2s"},
        "endpoints": [{"path": "/chat", "handler": "chat"}],
    }
    if broker is not None:
        config["broker"] = broker
    return config


def start_all(start: Start, *runs: tuple[Path, dict[str, str]]) -> list[WsgateProcess]:
    """Start every ``(config, env)`` at once, then wait until each one listens."""
    handles = [start(config, wait=False, env=env) for config, env in runs]
    for handle in handles:
        m = handle.wait_for_line(LISTENING.pattern, timeout=20)
        handle.host, handle.port = m.group(1).strip("[]"), int(m.group(2))
    return handles


@pytest.fixture
def two_instances(redis_server: RedisServer, wsgate_process: Start, write_config: WriteConfig
                  ) -> list[WsgateProcess]:
    """Instance A reads the broker from its config file, B from WSGATE_BROKER."""
    a = write_config(chat_config(redis_server.url), "a.yaml")
    b = write_config(chat_config(), "b.yaml")
    return start_all(wsgate_process, (a, {}), (b, {"WSGATE_BROKER": redis_server.url}))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def rds(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    yield client
    await client.aclose()


class ChatClient:
    """One chat user over a real WebSocket; ``welcome`` and ``history`` as received on join."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    @classmethod
    async def join(cls, session: aiohttp.ClientSession, instance: WsgateProcess, name: str,
                   room: str = "lobby") -> ChatClient:
        """Connect and read up to this user's own join announcement (it came back via Redis)."""
        client = cls(await session.ws_connect(f"{instance.ws_url}/chat?room={room}&name={name}"))
        client.welcome = await client.next("welcome")
        client.history = (await client.next("history"))["messages"]
        joined = await client.next("join")
        assert joined["name"] == client.name
        return client

    @property
    def name(self) -> str:
        return str(self.welcome["name"])

    async def next(self, kind: str | None = None) -> dict[str, Any]:
        async with asyncio.timeout(5):
            event: dict[str, Any] = json.loads(await self.ws.receive_str())
        if kind is not None:
            assert event["type"] == kind, event
        return event

    async def next_message(self) -> dict[str, Any]:
        """The next ``message`` event, passing over joins and leaves."""
        while True:
            event = await self.next()
            if event["type"] == "message":
                return event

    async def say(self, text: str) -> None:
        await self.ws.send_str(text)

    def assert_open(self) -> None:
        assert not self.ws.closed, f"{self.name}: closed with {self.ws.close_code}"
        assert self.ws.close_code is None


def summary(event: dict[str, Any]) -> tuple[Any, ...]:
    return event["id"], event["from"], event["text"]


async def get_text(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with asyncio.timeout(5), session.get(url) as response:
        return response.status, await response.text()


# --- two instances -----------------------------------------------------------------


async def test_chat_across_two_instances(two_instances: list[WsgateProcess],
                                         session: aiohttp.ClientSession) -> None:
    a, b = two_instances
    alice = await ChatClient.join(session, a, "alice")
    epoch = alice.welcome.pop("epoch")
    assert alice.welcome == {"type": "welcome", "name": "alice", "room": "lobby", "users": ["alice"],
                             "recovered": False}
    bob = await ChatClient.join(session, b, "bob")
    assert bob.welcome["users"] == ["alice", "bob"]
    assert bob.welcome["epoch"] == epoch  # the room's, whichever instance answers
    assert await alice.next("join") == {"type": "join", "name": "bob", "users": ["alice", "bob"]}

    await alice.say("hi bob")
    for client in (alice, bob):
        assert summary(await client.next("message")) == (1, "alice", "hi bob")
    await bob.say(json.dumps({"type": "message", "text": "hi alice"}))
    for client in (alice, bob):
        assert summary(await client.next("message")) == (2, "bob", "hi alice")

    # History lives in Redis: a newcomer on B gets what was said on A and B.
    carol = await ChatClient.join(session, b, "carol")
    assert [(m["id"], m["from"], m["text"]) for m in carol.history] == [(1, "alice", "hi bob"),
                                                                         (2, "bob", "hi alice")]
    assert carol.welcome["users"] == ["alice", "bob", "carol"]
    for client in (alice, bob):
        assert (await client.next("join"))["users"] == ["alice", "bob", "carol"]
    # Presence too: the name alice is taken on the other instance.
    alice2 = await ChatClient.join(session, b, "alice")
    assert alice2.name == "alice-2"
    for client in (alice, bob, carol):
        assert (await client.next("join"))["name"] == "alice-2"

    await bob.ws.close()
    for client in (alice, carol, alice2):
        assert await client.next("leave") == {"type": "leave", "name": "bob",
                                              "users": ["alice", "alice-2", "carol"]}
    await alice.say("bye")
    for client in (alice, carol, alice2):
        assert summary(await client.next("message")) == (3, "alice", "bye")


async def test_ids_are_gap_free_and_ordered_under_concurrent_senders(two_instances: list[WsgateProcess],
                                                                    session: aiohttp.ClientSession) -> None:
    a, b = two_instances
    clients = [await ChatClient.join(session, instance, name, room="race")
               for instance, name in ((a, "alice"), (b, "bob"), (a, "carol"), (b, "dave"))]
    per_sender = 25

    async def chatter(client: ChatClient) -> None:
        for i in range(per_sender):
            await client.say(f"{client.name} {i}")

    await asyncio.gather(*(chatter(c) for c in clients))
    total = per_sender * len(clients)
    seen = [[summary(await c.next_message()) for _ in range(total)] for c in clients]
    assert [event[0] for event in seen[0]] == list(range(1, total + 1))
    for other in seen[1:]:
        assert other == seen[0]  # every client saw the same messages in the same order
    for client in clients:  # each sender's messages kept their order
        texts = [text for _, sender, text in seen[0] if sender == client.name]
        assert texts == [f"{client.name} {i}" for i in range(per_sender)]


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


async def client_subscriptions(rds: Redis) -> dict[int, int]:
    """pid -> channels subscribed by that gateway's pub/sub connection (from CLIENT LIST)."""
    subs = {}
    for client in await rds.client_list():
        name = client.get("name", "")
        if name.startswith("wsgate-sub-"):
            subs[int(name.removeprefix("wsgate-sub-"))] = int(client["sub"])
    return subs


async def test_each_instance_subscribes_only_to_rooms_with_local_members(
        two_instances: list[WsgateProcess], session: aiohttp.ClientSession, rds: Redis) -> None:
    a, b = two_instances
    pa, pb = a.proc.pid, b.proc.pid

    async def channels() -> set[str]:
        return {c.decode() for c in await rds.pubsub_channels("wsgate:*")}

    async def state() -> tuple[set[str], dict[int, int]]:
        return await channels(), await client_subscriptions(rds)

    assert await state() == (set(), {pa: 0, pb: 0})
    alice = await ChatClient.join(session, a, "alice", room="r1")
    assert await state() == ({"wsgate:/chat:r1"}, {pa: 1, pb: 0})
    bob = await ChatClient.join(session, b, "bob", room="r2")
    assert await state() == ({"wsgate:/chat:r1", "wsgate:/chat:r2"}, {pa: 1, pb: 1})
    carol = await ChatClient.join(session, b, "carol", room="r1")
    assert await state() == ({"wsgate:/chat:r1", "wsgate:/chat:r2"}, {pa: 1, pb: 2})
    assert await rds.pubsub_numsub("wsgate:/chat:r1") == [(b"wsgate:/chat:r1", 2)]

    await alice.ws.close()
    await eventually(state, ({"wsgate:/chat:r1", "wsgate:/chat:r2"}, {pa: 0, pb: 2}), 5)
    await carol.ws.close()
    await eventually(state, ({"wsgate:/chat:r2"}, {pa: 0, pb: 1}), 5)
    await bob.ws.close()
    await eventually(state, (set(), {pa: 0, pb: 0}), 5)


# --- workers -----------------------------------------------------------------------


async def test_two_workers_share_one_port_and_chat_across(
        redis_server: RedisServer, wsgate_process: Start, write_config: WriteConfig,
        session: aiohttp.ClientSession, rds: Redis) -> None:
    port = free_port()
    supervisor = wsgate_process(write_config(chat_config(redis_server.url)), "--workers", "2", port=port)
    deadline = time.monotonic() + 20
    while supervisor.output.count(f"wsgate listening on http://127.0.0.1:{port}/") < 2:
        assert time.monotonic() < deadline, f"two workers did not start:\n{supervisor.output}"
        assert supervisor.proc.poll() is None, f"supervisor exited:\n{supervisor.output}"
        await asyncio.sleep(0.05)

    names = [f"u{i:02}" for i in range(15)]
    clients = [await ChatClient.join(session, supervisor, name, room="w") for name in names]
    assert clients[-1].welcome["users"] == names

    # Each worker has its own pub/sub connection, subscribed only while it has local
    # members: both subscribed means connections landed on both workers.
    subs = await client_subscriptions(rds)
    assert len(subs) == 2, subs
    for pid in subs:  # both are workers of this supervisor
        assert parent_pid(pid) == supervisor.proc.pid
    assert sorted(subs.values()) == [1, 1], subs

    # Each worker counts only its own connections, and /metrics answers for whichever
    # worker takes the request. With an odd number of clients the two counts differ,
    # so seeing both (on fresh TCP connections) shows that both workers serve clients.
    counts: set[int] = set()
    for _ in range(60):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            status, body = await get_text(fresh, f"{supervisor.url}/metrics")
        assert status == 200
        m = OPEN_CONNECTIONS.search(body)
        assert m is not None, body
        counts.add(int(m.group(1)))
        if len(counts) == 2:
            break
    assert len(counts) == 2, f"/metrics always answered by one worker: {counts}"
    assert sum(counts) == len(names)
    assert 0 not in counts

    await clients[0].say("hello workers")
    for client in clients:
        assert summary(await client.next_message()) == (1, "u00", "hello workers")
    await clients[-1].say("and back")
    for client in clients:
        assert summary(await client.next_message()) == (2, "u14", "and back")


async def test_two_workers_with_the_memory_broker_exit_2_before_binding(
        wsgate_process: Start, write_config: WriteConfig) -> None:
    port = free_port()
    handle = wsgate_process(write_config(chat_config()), "--workers", "2", port=port, wait=False)
    assert handle.proc.wait(15) == 2
    output = handle.output
    assert "several workers need a shared broker" in output
    assert "set broker to a Redis URL or workers to 1" in output
    assert "listening" not in output
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_unreachable_redis_stops_the_gateway_before_it_listens(
        wsgate_process: Start, write_config: WriteConfig) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    handle = wsgate_process(write_config(chat_config(url)), wait=False)
    code = handle.proc.wait(15)
    output = handle.output
    assert code != 0
    assert f"cannot reach Redis at {url}" in output
    assert "listening" not in output


async def test_unreachable_redis_at_startup_is_one_clear_line_not_a_traceback(
        wsgate_process: Start, write_config: WriteConfig) -> None:
    """An operator error, like a config error: a message and a non-zero exit, no stack trace."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    handle = wsgate_process(write_config(chat_config(url)), wait=False)
    assert handle.proc.wait(15) == 1
    assert "Traceback" not in handle.output, handle.output


# --- outage ------------------------------------------------------------------------


async def test_redis_outage_keeps_local_chat_and_connections(
        two_instances: list[WsgateProcess], redis_server: RedisServer,
        session: aiohttp.ClientSession) -> None:
    a, b = two_instances
    alice = await ChatClient.join(session, a, "alice")
    bob = await ChatClient.join(session, b, "bob")
    carol = await ChatClient.join(session, a, "carol")
    dave = await ChatClient.join(session, b, "dave")
    everyone = (alice, bob, carol, dave)
    await alice.say("before")
    for client in everyone:
        assert summary(await client.next_message()) == (1, "alice", "before")

    redis_server.kill()
    for instance in (a, b):
        await eventually(lambda i=instance: get_text(session, f"{i.url}/readyz"), (503, "broker unavailable\n"), 5)
    await alice.say("only on A")
    await dave.say("only on B")
    for client in (alice, carol):
        assert summary(await client.next_message()) == (None, "alice", "only on A")
    for client in (bob, dave):
        assert summary(await client.next_message()) == (None, "dave", "only on B")
    await carol.say("still local")
    for client in (alice, carol):
        assert summary(await client.next_message()) == (None, "carol", "still local")

    redis_server.start()
    for instance in (a, b):
        await eventually(lambda i=instance: get_text(session, f"{i.url}/readyz"), (200, "ready\n"), 8)
    # The restarted redis-server kept nothing, so ids start again from 1. Nothing sent
    # during the outage crossed over: the next message everyone sees is "after".
    await bob.say("after")
    for client in everyone:
        assert summary(await client.next_message()) == (1, "bob", "after")
    await carol.say("after too")
    for client in everyone:
        assert summary(await client.next_message()) == (2, "carol", "after too")
    for client in everyone:
        client.assert_open()
    for instance in (a, b):
        assert instance.proc.poll() is None
    assert "broker publish to wsgate:/chat:lobby failed, delivered locally only" in a.output
