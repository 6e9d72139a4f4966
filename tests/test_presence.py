"""Presence tied to live instances: members expire unless the instance holding them
refreshes them, and ``reap`` hands each expired member to exactly one caller.

The brokers on their own (memory with a fake clock, Redis for real), then the chat over
two real gateway processes sharing a real redis-server: ``kill -9`` of one instance, a
user whose other tab lives on the survivor, and a burst of disconnects.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from conftest import MakeBroker, RedisServer, WsgateProcess
from pydantic import ValidationError
from redis.asyncio import Redis
from wsgate.builtins.chat import ChatOptions

from wsgate import BrokerError
from wsgate.broker.memory import MemoryBroker
from wsgate.testing import eventually, run_gateway

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]

KEY = "wsgate:/chat:lobby:presence"  # the chat's lobby, as the gateway names it in Redis
SECRET = "presence-test-secret-0123456789abcdef"


# --- the memory broker ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_members_held_here_never_expire_and_dropped_ones_expire_once() -> None:
    clock = Clock()
    broker = MemoryBroker(clock=clock)
    assert await broker.claim("k", "ann", ttl=3) is True
    assert await broker.claim("k", "ann", ttl=3) is False
    assert await broker.hold("k", "ann", ttl=3) is True  # a second hold (another tab)
    clock.now += 3600
    assert await broker.members("k") == ["ann"]  # held: this process is alive
    assert await broker.reap("k") == []
    await broker.drop("k", "ann")  # one hold left
    clock.now += 3600
    assert await broker.members("k") == ["ann"]
    await broker.drop("k", "ann")  # none: it expires 3 s from now
    clock.now += 2.9
    assert await broker.members("k") == ["ann"]
    assert await broker.hold("k", "bob", ttl=3) is False  # absent
    clock.now += 0.2
    assert await broker.members("k") == []
    assert await broker.hold("k", "ann", ttl=3) is False  # expired counts as absent
    assert await broker.reap("k") == ["ann"]
    assert await broker.reap("k") == []  # once
    assert await broker.release("k", "ann") is False


async def test_memory_an_expired_member_can_be_claimed_before_it_is_reaped() -> None:
    clock = Clock()
    broker = MemoryBroker(clock=clock)
    assert await broker.claim("k", "ann", ttl=1)
    await broker.drop("k", "ann")
    clock.now += 1.5
    assert await broker.claim("k", "ann", ttl=1) is True  # taken over
    assert await broker.reap("k") == []  # live again: nothing to announce
    assert await broker.release("k", "ann") is True
    assert await broker.release("k", "ann") is False
    assert await broker.members("k") == []


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf])
async def test_a_ttl_must_be_a_positive_number_of_seconds(ttl: float) -> None:
    broker = MemoryBroker()
    with pytest.raises(ValueError, match="ttl"):
        await broker.claim("k", "ann", ttl=ttl)
    with pytest.raises(ValueError, match="ttl"):
        await broker.hold("k", "ann", ttl=ttl)
    assert await broker.members("k") == []


def test_presence_ttl_is_a_positive_duration() -> None:
    assert ChatOptions().presence_ttl == 30.0
    assert ChatOptions(presence_ttl="2s").presence_ttl == 2.0
    assert ChatOptions(presence_ttl="500ms").presence_ttl == 0.5
    for bad in (0, -1, "0s"):
        with pytest.raises(ValidationError, match="presence_ttl"):
            ChatOptions(presence_ttl=bad)


# --- the Redis broker ----------------------------------------------------------------


async def redis_ms(rds: Redis) -> int:
    seconds, micros = await rds.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_redis_a_member_lives_while_its_holder_refreshes_it(brokers: MakeBroker, rds: Redis) -> None:
    a, b = await brokers(), await brokers()
    assert await a.claim("k", "ann", ttl=1.0) is True
    assert await b.claim("k", "ann", ttl=1.0) is False
    await asyncio.sleep(2.5)  # more than twice the ttl: only refreshes keep it
    assert await b.members("k") == ["ann"]
    assert await b.reap("k") == []
    expiry = await rds.zscore("k", "ann")
    assert expiry is not None
    now = await redis_ms(rds)
    assert now < expiry <= now + 1000  # scored on Redis's clock, at most a ttl ahead
    assert 1000 < await rds.pttl("k") <= 2000  # the key outlives its members by a ttl


async def test_redis_members_of_a_dead_instance_expire_and_each_is_reaped_once(brokers: MakeBroker) -> None:
    a, b, c = await brokers(), await brokers(), await brokers()
    assert await a.claim("k", "ann", ttl=1.0)
    assert await a.claim("k", "bob", ttl=1.0)
    assert await b.claim("k", "cat", ttl=1.0)
    await a.close()  # without releasing anything, as kill -9 would
    started = time.monotonic()
    await eventually(lambda: b.members("k"), ["cat"], 3)
    assert time.monotonic() - started < 1.6  # a ttl after a's last refresh
    reaped: list[str] = []
    for _ in range(5):  # the survivors race to reap: each member goes to one of them
        for got in await asyncio.gather(b.reap("k"), c.reap("k"), b.reap("k"), c.reap("k")):
            reaped += got
    assert sorted(reaped) == ["ann", "bob"]
    assert await c.claim("k", "ann", ttl=1.0) is True  # the name is free again
    assert await b.members("k") == ["ann", "cat"]


async def test_redis_a_hold_keeps_a_member_whose_claimer_died(brokers: MakeBroker) -> None:
    a, b, c = await brokers(), await brokers(), await brokers()
    assert await a.claim("k", "ann", ttl=1.0)
    assert await b.hold("k", "ann", ttl=1.0) is True  # the same user's tab on b
    assert await b.hold("k", "nobody", ttl=1.0) is False
    await a.close()
    await asyncio.sleep(2.5)
    assert await c.members("k") == ["ann"]
    assert await c.reap("k") == []
    await b.drop("k", "ann")  # b's last tab of the user closed: nobody holds it now
    await eventually(lambda: c.members("k"), [], 2)
    assert await c.reap("k") == ["ann"]


async def test_redis_release_removes_now_and_says_whether_it_did(brokers: MakeBroker) -> None:
    a, b = await brokers(), await brokers()
    assert await a.claim("k", "ann", ttl=1.0)
    assert await b.release("k", "ann") is True
    assert await a.release("k", "ann") is False  # gone already: the announcement is not ours
    assert await a.members("k") == []
    assert await b.claim("k", "ann", ttl=1.0) is True


async def test_redis_a_release_that_fails_still_lets_the_member_expire(brokers: MakeBroker) -> None:
    """The burst case: the removal never reaches Redis. The member must not stay for good."""
    a, b = await brokers(), await brokers()
    assert await a.claim("k", "ann", ttl=1.0)
    a._commands_up = False  # as during an outage or a saturated pool: the command fails
    with pytest.raises(BrokerError):
        await a.release("k", "ann")
    a._commands_up = True
    await eventually(lambda: b.members("k"), [], 2.5)
    assert await b.reap("k") == ["ann"]


async def test_redis_members_redis_lost_are_put_back_after_an_outage(brokers: MakeBroker, redis_server: RedisServer
                                                                     ) -> None:
    a = await brokers()
    assert await a.claim("k", "ann", ttl=1.0)
    redis_server.kill()  # no persistence: the restarted server is empty
    redis_server.start()
    b = await brokers()
    await eventually(lambda: b.members("k"), ["ann"], 5)


async def test_redis_a_key_nobody_holds_goes_away(brokers: MakeBroker, rds: Redis) -> None:
    a = await brokers()
    assert await a.claim("k", "ann", ttl=0.5)
    await a.drop("k", "ann")
    await eventually(lambda: rds.exists("k"), 0, 2.5)


async def test_redis_members_asked_together_share_one_read(brokers: MakeBroker, rds: Redis) -> None:
    a = await brokers()
    for name in ("ann", "bob"):
        assert await a.claim("k", name, ttl=5)

    async def reads() -> int:
        stats = await rds.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    before = await reads()
    answers = await asyncio.gather(*(a.members("k") for _ in range(200)))
    assert answers == [["ann", "bob"]] * 200
    assert await reads() - before <= 2
    assert await a.release("k", "bob") is True
    assert await a.members("k") == ["ann"]  # a read asked after a release sees it


# --- the chat ------------------------------------------------------------------------


async def test_the_chat_retries_a_failed_release_and_announces_the_leave_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    release = MemoryBroker.release
    failures = {"bob": 3}

    async def flaky_release(self: MemoryBroker, key: str, member: str) -> bool:
        if failures.get(member):
            failures[member] -= 1
            raise BrokerError("the broker is busy")
        return await release(self, key, member)

    monkeypatch.setattr(MemoryBroker, "release", flaky_release)
    endpoints = {"/chat": {"handler": "chat", "options": {"presence_ttl": "5s"}}}
    async with run_gateway(endpoints, policy={"heartbeat": {"interval": 0}}) as gw, \
            gw.connect("/chat?name=ann") as ann:
        async with gw.connect("/chat?name=bob"):
            pass

        async def next_leave(within: float) -> dict[str, Any]:
            async with asyncio.timeout(within):
                while True:
                    event: dict[str, Any] = await ann.receive_json()
                    if event["type"] == "leave":
                        return event

        assert await next_leave(5) == {"type": "leave", "name": "bob", "users": ["ann"]}
        assert failures == {"bob": 0}  # released on the third retry
        with pytest.raises(TimeoutError):
            await next_leave(1)  # once
        async with gw.connect("/chat?name=bob") as bob:
            assert (await bob.receive_json())["name"] == "bob"  # free again


# --- the chat over two instances and Redis ------------------------------------------------


def chat_config(broker: str, presence_ttl: str, **endpoint: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "shutdown_timeout": "2s"},
        "broker": broker,
        "policy": {"heartbeat": {"interval": 0}},
        "endpoints": [{"path": "/chat", "handler": "chat", "rate_limit": None,
                       "options": {"presence_ttl": presence_ttl}, **endpoint}],
    }


def start_two(start: Start, write_config: WriteConfig, config: dict[str, Any]) -> list[WsgateProcess]:
    path = write_config(config)
    return [start(path), start(path)]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        yield s


class Client:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome

    @classmethod
    async def join(cls, session: aiohttp.ClientSession, gw: WsgateProcess, query: str,
                   token: str | None = None) -> Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws = await session.ws_connect(f"{gw.ws_url}/chat?{query}", headers=headers, heartbeat=None,
                                      max_msg_size=0)
        client = cls(ws, {})
        client.welcome = await client.next("welcome")
        await client.next("history")
        return client

    async def next(self, kind: str, within: float = 10) -> dict[str, Any]:
        """The next event of type ``kind``, passing over others."""
        async with asyncio.timeout(within):
            while True:
                msg = await self.ws.receive()
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                event: dict[str, Any] = json.loads(msg.data)
                if event["type"] == kind:
                    return event

    async def joined(self, *names: str) -> None:
        seen = {(await self.next("join"))["name"] for _ in names}
        assert seen == set(names)

    async def none(self, kind: str, within: float) -> None:
        """No event of type ``kind`` for ``within`` seconds."""
        try:
            event = await self.next(kind, within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {event}")


async def test_kill_9_of_an_instance_announces_its_users_leave_within_presence_ttl(
        redis_server: RedisServer, wsgate_process: Start, write_config: WriteConfig,
        session: aiohttp.ClientSession, rds: Redis) -> None:
    ttl = 2.0
    doomed, survivor = start_two(wsgate_process, write_config, chat_config(redis_server.url, f"{ttl}s"))
    watcher = await Client.join(session, survivor, "room=lobby&name=watcher")
    await watcher.joined("watcher")
    clients = []  # kept: a client nobody references is collected, and its socket closed
    for gw, name in ((doomed, "ann"), (doomed, "bob"), (survivor, "cat")):
        clients.append(await Client.join(session, gw, f"room=lobby&name={name}"))
        await watcher.joined(name)
    assert sorted(m.decode() for m in await rds.zrange(KEY, 0, -1)) == ["ann", "bob", "cat", "watcher"]

    doomed.proc.kill()  # SIGKILL: no on_disconnect, no release
    doomed.proc.wait()
    killed = time.monotonic()
    leaves = [await watcher.next("leave", ttl + 5), await watcher.next("leave", ttl + 5)]
    took = time.monotonic() - killed
    assert sorted(e["name"] for e in leaves) == ["ann", "bob"]
    assert took < ttl + 1.0, f"the leaves came {took:.1f}s after the kill"
    assert leaves[-1]["users"] == ["cat", "watcher"]
    for event in leaves:
        assert event["name"] not in event["users"]
    await watcher.none("leave", 1.5)  # once each, and none for the living
    assert sorted(m.decode() for m in await rds.zrange(KEY, 0, -1)) == ["cat", "watcher"]

    ann = await Client.join(session, survivor, "room=lobby&name=ann")
    assert ann.welcome["name"] == "ann"  # the dead user's name is free
    assert ann.welcome["users"] == ["ann", "cat", "watcher"]
    assert (await watcher.next("join"))["name"] == "ann"


async def test_kill_9_keeps_a_user_whose_other_tab_is_on_the_survivor(
        redis_server: RedisServer, wsgate_process: Start, write_config: WriteConfig,
        session: aiohttp.ClientSession) -> None:
    ttl = 2.0
    config = chat_config(redis_server.url, f"{ttl}s", auth="users")
    config["auth"] = {"users": {"jwt": {"algorithms": ["HS256"], "secret": SECRET}}}
    doomed, survivor = start_two(wsgate_process, write_config, config)

    def token(user: str, name: str) -> str:
        return jwt.encode({"sub": user, "name": name}, SECRET, algorithm="HS256")

    watcher = await Client.join(session, survivor, "room=lobby", token("w", "watcher"))
    await watcher.joined("watcher")
    doomed_clients = [await Client.join(session, doomed, "room=lobby", token("u1", "Ann"))]  # Ann's 1st tab
    await watcher.joined("Ann")
    tab = await Client.join(session, survivor, "room=lobby", token("u1", "Ann"))  # and her second
    assert (tab.welcome["name"], tab.welcome["users"]) == ("Ann", ["Ann", "watcher"])
    doomed_clients.append(await Client.join(session, doomed, "room=lobby", token("u2", "Bob")))
    await watcher.joined("Bob")

    doomed.proc.kill()
    doomed.proc.wait()
    leave = await watcher.next("leave", ttl + 5)
    assert (leave["name"], leave["users"]) == ("Bob", ["Ann", "watcher"])
    await watcher.none("leave", 2 * ttl)  # Ann is still here, in her tab on the survivor
    other = await Client.join(session, survivor, "room=lobby", token("u3", "Cat"))
    assert other.welcome["users"] == ["Ann", "Cat", "watcher"]

    await tab.ws.close()
    leave = await watcher.next("leave", 5)
    assert (leave["name"], leave["users"]) == ("Ann", ["Cat", "watcher"])


async def test_a_disconnect_burst_leaves_no_name_claimed(
        redis_server: RedisServer, wsgate_process: Start, write_config: WriteConfig,
        session: aiohttp.ClientSession, rds: Redis) -> None:
    """1,000 clients over two instances drop at once. Every on_disconnect releases a
    name, reads the users and publishes a leave to the others; releases that the loaded
    broker refuses must not leave their names claimed."""
    count, ttl = 1000, 3.0
    # A large send queue: the watchers read every leave (each lists up to 1,000 users).
    a, b = start_two(wsgate_process, write_config,
                     chat_config(redis_server.url, f"{ttl}s", send_queue="64MiB"))
    watchers = [await Client.join(session, gw, f"room=lobby&name=watcher-{i}") for i, gw in enumerate((a, b))]
    clients: list[Client] = []
    for start in range(0, count, 100):
        clients += await asyncio.gather(*(Client.join(session, (a, b)[i % 2], f"room=lobby&name=u{i}")
                                          for i in range(start, start + 100)))
    assert await rds.zcard(KEY) == count + 2

    for client in clients:  # the network drops them all: no close handshake
        transport = client.ws._response.connection.transport  # type: ignore[union-attr]
        transport.abort()
    gone = time.monotonic()

    async def names() -> list[str]:
        return sorted(m.decode() for m in await rds.zrange(KEY, 0, -1))

    # Released on disconnect, else on a retry, else expired and reaped: within the
    # burst's own duration plus presence_ttl.
    await eventually(names, ["watcher-0", "watcher-1"], 20)
    took = time.monotonic() - gone
    assert took < 20
    for watcher in watchers:
        assert not watcher.ws.closed, watcher.ws.close_code
    fresh = await Client.join(session, a, "room=lobby&name=u1")
    assert fresh.welcome["name"] == "u1"
    assert fresh.welcome["users"] == ["u1", "watcher-0", "watcher-1"]
