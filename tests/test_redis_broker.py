"""The Redis broker against a real redis-server: pub/sub, numbering, history, presence, outages."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from conftest import MakeBroker, RedisServer, free_port
from redis.asyncio import Redis

from wsgate import BrokerError
from wsgate.broker import create_broker
from wsgate.broker.redis import RedisBroker, redact_url
from wsgate.testing import GatewayServer, eventually, run_gateway


def inbox() -> tuple[asyncio.Queue[bytes], Callable[[bytes], None]]:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    return queue, queue.put_nowait


async def take(queue: asyncio.Queue[bytes], within: float = 3.0) -> bytes:
    async with asyncio.timeout(within):
        return await queue.get()


async def wait_until(check: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``check`` every 20 ms; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {within}s")
        await asyncio.sleep(0.02)


async def numsub(rds: Redis, channel: str) -> int:
    reply = await rds.pubsub_numsub(channel)
    return int(reply[0][1])


# --- pub/sub ------------------------------------------------------------------------


async def test_create_broker_picks_redis_for_a_redis_url(redis_server: RedisServer) -> None:
    broker = create_broker(redis_server.url)
    assert isinstance(broker, RedisBroker)
    assert broker.name == "redis"


async def test_a_started_broker_publishes_at_once(brokers: MakeBroker) -> None:
    """start() returns once the broker's own subscription is up, so the first publish,
    made before the loop has run anything else, is numbered rather than refused."""
    for _ in range(5):
        broker = await brokers()
        assert await broker.publish_numbered("first", b"#", b".", 5) >= 1


async def test_publish_reaches_subscribers_on_both_instances(brokers: MakeBroker) -> None:
    a, b = await brokers(), await brokers()
    got_a, deliver_a = inbox()
    got_b, deliver_b = inbox()
    await a.subscribe("room", deliver_a)
    await b.subscribe("room", deliver_b)
    await b.publish("room", b"t\x00binary-safe \xff")
    assert await take(got_a) == b"t\x00binary-safe \xff"
    assert await take(got_b) == b"t\x00binary-safe \xff"  # the publisher's own copy comes back too
    await a.publish("room", b"from a")
    assert await take(got_a) == b"from a"
    assert await take(got_b) == b"from a"


async def test_subscribe_returns_once_redis_has_the_subscription(brokers: MakeBroker, rds: Redis) -> None:
    """A PUBLISH sent right after subscribe() returns must find the subscriber, every time."""
    a = await brokers()
    for i in range(20):
        got, deliver = inbox()
        await a.subscribe(f"ch{i}", deliver)
        assert await rds.publish(f"ch{i}", f"m{i}") == 1
        assert await take(got) == f"m{i}".encode()


async def test_unsubscribe_stops_delivery(brokers: MakeBroker, rds: Redis) -> None:
    a = await brokers()
    gone, deliver_gone = inbox()
    marks, deliver_mark = inbox()
    await a.subscribe("gone", deliver_gone)
    await a.subscribe("mark", deliver_mark)
    await a.unsubscribe("gone")
    await a.unsubscribe("never-subscribed")
    await rds.publish("gone", "late")
    await rds.publish("mark", "after")
    # Both go over the same pub/sub connection, in order: "late" would have come first.
    assert await take(marks) == b"after"
    assert gone.empty()
    assert await numsub(rds, "gone") == 0
    assert await numsub(rds, "mark") == 1


async def test_racing_subscribe_and_unsubscribe_end_in_the_last_state(brokers: MakeBroker, rds: Redis) -> None:
    a = await brokers()
    _, deliver = inbox()
    await asyncio.gather(a.subscribe("x", deliver), a.unsubscribe("x"), a.subscribe("x", deliver))
    await asyncio.gather(a.subscribe("y", deliver), a.unsubscribe("y"))
    await asyncio.gather(*(a.subscribe(f"z{i}", deliver) for i in range(10)),
                         *(a.unsubscribe(f"z{i}") for i in range(0, 10, 2)))
    channels = {c.decode() for c in await rds.pubsub_channels()}
    assert channels == {"x", "z1", "z3", "z5", "z7", "z9"}


async def test_a_failing_delivery_callback_does_not_stop_the_listener(brokers: MakeBroker) -> None:
    a = await brokers()
    got, deliver = inbox()

    def fussy(payload: bytes) -> None:
        if payload == b"boom":
            raise RuntimeError("handler bug")
        deliver(payload)

    await a.subscribe("room", fussy)
    await a.publish("room", b"boom")
    await a.publish("room", b"fine")
    assert await take(got) == b"fine"


# --- numbering, history, presence --------------------------------------------------


async def test_numbered_ids_are_atomic_across_instances(brokers: MakeBroker) -> None:
    """200 concurrent numbered publishes from two instances: ids 1..200, seen in order everywhere."""
    a, b = await brokers(), await brokers()
    got_a, deliver_a = inbox()
    got_b, deliver_b = inbox()
    await a.subscribe("race", deliver_a)
    await b.subscribe("race", deliver_b)
    numbers = await asyncio.gather(*(
        (a if i % 2 else b).publish_numbered("race", b'{"id":', f',"call":{i}}}'.encode(), 50)
        for i in range(200)
    ))
    assert sorted(numbers) == list(range(1, 201))
    for got in (got_a, got_b):
        events = [json.loads(await take(got)) for _ in range(200)]
        assert [e["id"] for e in events] == list(range(1, 201))
        # Each payload carries the number that its own publish_numbered call returned.
        assert all(numbers[e["call"]] == e["id"] for e in events)
    history = [json.loads(p) for p in await b.history("race", 100)]
    assert [e["id"] for e in history] == list(range(151, 201))


async def test_history_keeps_the_last_keep_messages(brokers: MakeBroker, rds: Redis) -> None:
    a, b = await brokers(), await brokers()
    for _ in range(5):
        await a.publish_numbered("room", b"#", b".", 3)
    assert await b.history("room", 10) == [b"#3.", b"#4.", b"#5."]
    assert await b.history("room", 2) == [b"#4.", b"#5."]
    assert await b.history("room", 0) == []
    assert await b.history("other", 10) == []
    assert await rds.llen("room:history") == 3
    assert await b.publish_numbered("room", b"#", b".", 0) == 6  # keep 0: numbered, not kept
    assert await a.history("room", 10) == [b"#3.", b"#4.", b"#5."]
    assert await rds.get("room:seq") == b"6"


async def test_presence_is_shared_and_sorted(brokers: MakeBroker) -> None:
    a, b = await brokers(), await brokers()
    assert await a.claim("room:members", "zed") is True
    assert await b.claim("room:members", "zed") is False
    assert await b.claim("room:members", "amy") is True
    assert await a.claim("other:members", "zed") is True
    assert await a.members("room:members") == ["amy", "zed"]
    await b.release("room:members", "zed")
    await b.release("room:members", "nobody")
    assert await a.members("room:members") == ["amy"]
    assert await a.claim("room:members", "zed") is True
    assert await a.members("empty:members") == []


# --- startup and shutdown -----------------------------------------------------------


async def test_unreachable_redis_at_startup_raises_broker_error_naming_the_url() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    broker = RedisBroker(url)
    async with asyncio.timeout(5):
        with pytest.raises(BrokerError) as caught:
            await broker.start()
    message = str(caught.value)
    assert f"redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in message
    assert "hunter2" not in message
    assert broker.healthy is False
    await broker.close()  # harmless after a failed start
    with pytest.raises(BrokerError):
        await broker.publish("room", b"x")


async def test_a_bad_redis_url_is_a_broker_error() -> None:
    with pytest.raises(BrokerError, match=re.escape("bad Redis URL redis://127.0.0.1:port/0")):
        await RedisBroker("redis://127.0.0.1:port/0").start()


def test_redact_url() -> None:
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url("redis://pw@h:1/0") == "redis://***@h:1/0"
    assert redact_url("unix:///tmp/r.sock?db=1&password=pw") == "unix:///tmp/r.sock?db=***&password=***"
    assert redact_url("redis://h:1/0?Password=pw&db=2") == "redis://h:1/0?Password=***&db=***"


async def test_close_leaves_no_task_or_connection_behind(redis_server: RedisServer, rds: Redis) -> None:
    async def our_connections() -> list[str]:
        return sorted(c["name"] for c in await rds.client_list() if c["name"].startswith("wsgate-"))

    broker = RedisBroker(redis_server.url)
    await broker.start()
    _, deliver = inbox()
    await broker.subscribe("room", deliver)
    await broker.publish("room", b"x")
    ours = [t for t in asyncio.all_tasks() if t.get_name().startswith("wsgate redis")]
    names = {t.get_name() for t in ours}
    assert {"wsgate redis health", "wsgate redis listener", "wsgate redis pub/sub watchdog"} <= names
    assert names <= {"wsgate redis health", "wsgate redis listener", "wsgate redis pub/sub watchdog",
                     "wsgate redis outbox"}
    pid = os.getpid()
    assert set(await our_connections()) == {f"wsgate-cmd-{pid}", f"wsgate-sub-{pid}"}
    await broker.close()
    assert all(t.done() for t in ours)
    await eventually(our_connections, [], 3)
    assert broker.healthy is False
    with pytest.raises(BrokerError, match="not running"):
        await broker.publish("room", b"x")


# --- outages ------------------------------------------------------------------------


async def test_outage_then_recovery(brokers: MakeBroker, redis_server: RedisServer, rds: Redis) -> None:
    a, b = await brokers(), await brokers()
    got, deliver = inbox()
    await a.subscribe("room", deliver)
    await b.publish("room", b"before")
    assert await take(got) == b"before"
    assert a.healthy
    assert b.healthy

    redis_server.kill()
    await wait_until(lambda: not a.healthy and not b.healthy, 3, "unhealthy")
    for call in (b.publish("room", b"lost"), b.publish_numbered("room", b"", b"", 5),
                 b.claim("room:members", "x"), b.members("room:members"), b.history("room", 5)):
        started = time.monotonic()
        with pytest.raises(BrokerError, match=re.escape(redis_server.url)):
            await call
        assert time.monotonic() - started < 3
    _, deliver_later = inbox()
    async with asyncio.timeout(3):  # subscribing during the outage neither raises nor hangs
        await a.subscribe("later", deliver_later)
        await a.unsubscribe("later")
    later, deliver_later = inbox()
    await a.subscribe("later", deliver_later)

    redis_server.start()
    await wait_until(lambda: a.healthy and b.healthy, 6, "healthy again")
    await b.publish("room", b"after")
    assert await take(got) == b"after"  # the subscription made before the outage delivers again
    await rds.publish("later", "hello")
    assert await take(later) == b"hello"  # and so does the one made during it
    assert await numsub(rds, "room") == 1
    # The restarted redis-server has no persistence: the numbering starts again.
    assert await b.publish_numbered("room", b"<", b">", 5) == 1
    assert await take(got) == b"<1>"


async def test_a_killed_subscription_connection_is_restored(brokers: MakeBroker, rds: Redis) -> None:
    """Redis stays up but drops the pub/sub connection: the listener resubscribes every channel."""
    a = await brokers()
    room, deliver_room = inbox()
    other, deliver_other = inbox()
    await a.subscribe("room", deliver_room)
    await a.subscribe("other", deliver_other)
    assert await rds.client_kill_filter(_type="pubsub") == 1
    await eventually(lambda: asyncio.gather(numsub(rds, "room"), numsub(rds, "other")), [1, 1], 5)
    await wait_until(lambda: a.healthy, 3, "healthy")
    await rds.publish("room", "r")
    await rds.publish("other", "o")
    assert await take(room) == b"r"
    assert await take(other) == b"o"


async def test_subscribe_while_the_subscription_is_restored_returns_once_redis_has_it(
        brokers: MakeBroker, rds: Redis) -> None:
    """A join subscribes, then reads the history: a subscribe() that returned before the
    listener had subscribed again would let what is published meanwhile fall between."""
    a = await brokers()
    await a.subscribe("room", inbox()[1])
    for i in range(3):
        assert await rds.client_kill_filter(_type="pubsub") == 1
        await wait_until(lambda: not a.healthy, 3, "noticed")
        got, deliver = inbox()
        await a.subscribe(f"new{i}", deliver)
        assert await rds.publish(f"new{i}", f"m{i}") == 1
        assert await take(got) == f"m{i}".encode()


async def test_no_publish_is_numbered_while_the_own_subscription_is_restored(
        brokers: MakeBroker, rds: Redis) -> None:
    """Redis is up, this instance's subscription is not yet: a numbered publish would be
    stored and reach nobody here, so it fails (the hub then delivers it locally)."""
    a = await brokers()
    await a.subscribe("room", inbox()[1])
    assert await rds.client_kill_filter(_type="pubsub") == 1
    await wait_until(lambda: not a.healthy, 3, "noticed")
    with pytest.raises(BrokerError, match="subscription of this instance"):
        await a.publish_numbered("room", b"t[", b"]", keep=10)
    assert await rds.get("room:seq") is None
    await wait_until(lambda: a.healthy, 3, "healthy again")
    assert await a.publish_numbered("room", b"t[", b"]", keep=10) == 1


# --- through the gateway ------------------------------------------------------------


async def next_event(ws: aiohttp.ClientWebSocketResponse, within: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        event: dict[str, Any] = json.loads(await ws.receive_str())
    return event


async def join(gw: GatewayServer, name: str, room: str = "lobby") -> aiohttp.ClientWebSocketResponse:
    """Connect to /chat and read up to this client's own join announcement."""
    ws = await gw.session.ws_connect(f"{gw.url}/chat?room={room}&name={name}")
    assert (await next_event(ws))["type"] == "welcome"
    assert (await next_event(ws))["type"] == "history"
    event = await next_event(ws)
    assert (event["type"], event["name"]) == ("join", name)
    return ws


async def test_two_in_process_gateways_share_a_room(redis_server: RedisServer) -> None:
    async with run_gateway({"/chat": "chat"}, broker=redis_server.url) as one, \
            run_gateway({"/chat": "chat"}, broker=redis_server.url) as two:
        alice = await join(one, "alice")
        bob = await join(two, "bob")
        assert await next_event(alice) == {"type": "join", "name": "bob", "users": ["alice", "bob"]}
        await bob.send_str("hi alice")
        for ws in (alice, bob):
            event = await next_event(ws)
            assert (event["type"], event["id"], event["from"], event["text"]) == ("message", 1, "bob", "hi alice")
        async with one.get("/readyz") as response:
            assert (response.status, await response.text()) == (200, "ready\n")
        await alice.close()
        await bob.close()


async def test_in_process_gateway_reports_outage_and_keeps_local_chat(redis_server: RedisServer) -> None:
    async with run_gateway({"/chat": "chat"}, broker=redis_server.url) as gw:
        alice, carol = await join(gw, "alice"), await join(gw, "carol")
        assert (await next_event(alice))["name"] == "carol"
        redis_server.kill()

        async def readyz() -> tuple[int, str]:
            async with gw.get("/readyz") as response:
                return response.status, await response.text()

        await eventually(lambda: readyz(), (503, "broker unavailable\n"), 5)
        await alice.send_str("anyone?")
        for ws in (alice, carol):
            event = await next_event(ws)
            assert (event["type"], event["id"], event["text"]) == ("message", None, "anyone?")
        assert gw.stats.broker_publish_failures >= 1
        redis_server.start()
        await eventually(lambda: readyz(), (200, "ready\n"), 6)
        await carol.send_str("back")
        for ws in (alice, carol):
            event = await next_event(ws)
            assert (event["type"], event["id"], event["text"]) == ("message", 1, "back")
        assert not alice.closed
        assert not carol.closed
        await alice.close()
        await carol.close()


async def test_run_gateway_refuses_to_start_without_its_redis() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(BrokerError, match=re.escape(url)):
        async with asyncio.timeout(5), run_gateway({"/chat": "chat"}, broker=url):
            pass
