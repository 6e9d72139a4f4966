"""The Redis broker's outbox: publishes batched per round trip, in call order, through failures."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from conftest import MakeBroker, RedisServer
from redis.asyncio import Redis

from wsgate import BrokerError
from wsgate.broker.redis import RedisBroker
from wsgate.broker.redis_outbox import MAX_BATCH, Outbox
from wsgate.gateway.hub import _BACKLOG, Hub
from wsgate.observe.stats import GatewayStats

# Keeps Redis busy for ARGV[1] µs: a script blocks every other client while it runs.
_BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > tonumber(ARGV[1])
return 1
"""


@pytest.fixture
async def broker(brokers: MakeBroker) -> RedisBroker:
    return await brokers()


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each batch the outbox sends, in order (the real sending still runs)."""
    sizes: list[int] = []
    write_and_read = Outbox._write_and_read

    async def counted(self: Outbox, r: Redis, batch: list[Any], replies: list[Any]) -> None:
        sizes.append(len(batch))
        await write_and_read(self, r, batch, replies)

    monkeypatch.setattr(Outbox, "_write_and_read", counted)
    return sizes


async def test_posts_made_in_one_pass_keep_their_order_and_share_round_trips(broker: RedisBroker,
                                                                             batches: list[int]) -> None:
    got: list[bytes] = []
    await broker.subscribe("room", got.append)
    # 300 posts in one loop pass, as a chat sender's queued messages are, then a plain publish.
    posted = [broker.post_numbered("room", b'{"id":', f',"n":{i}}}'.encode(), 500) for i in range(300)]
    assert broker.backlog == 300
    await broker.publish("room", b'{"plain":true}')
    numbers = await asyncio.gather(*posted)
    assert numbers == list(range(1, 301))  # ids follow the order of the calls
    async with asyncio.timeout(3):
        while len(got) < 301:
            await asyncio.sleep(0.01)
    events = [json.loads(p) for p in got]
    assert [e.get("n") for e in events[:300]] == list(range(300))
    assert events[300] == {"plain": True}
    assert batches == [301]  # all made before the outbox ran: one round trip
    assert broker.backlog == 0


async def test_a_flushed_script_cache_loses_no_publish_and_no_order(broker: RedisBroker, rds: Redis) -> None:
    got: list[bytes] = []
    await broker.subscribe("room", got.append)
    assert await broker.publish_numbered("room", b"#", b".", 10) == 1
    await rds.script_flush()  # what a Redis restarted between two health checks also does
    numbers = await asyncio.gather(*(broker.post_numbered("room", b"#", f".{i}".encode(), 10) for i in range(5)))
    assert numbers == [2, 3, 4, 5, 6]
    async with asyncio.timeout(3):
        while len(got) < 6:
            await asyncio.sleep(0.01)
    assert got == [b"#1.", b"#2.0", b"#3.1", b"#4.2", b"#5.3", b"#6.4"]


async def test_a_restarted_redis_is_reached_again_on_a_new_connection(redis_server: RedisServer,
                                                                      broker: RedisBroker) -> None:
    assert await broker.publish_numbered("room", b"#", b".", 10) == 1
    redis_server.kill()
    redis_server.start()
    async with asyncio.timeout(10):
        while broker.healthy:  # until the health check has noticed ...
            await asyncio.sleep(0.02)
        while not broker.healthy:  # ... and seen Redis back
            await asyncio.sleep(0.02)
    # The outbox's connection is stale: its first batch finds out and goes again on a new one.
    assert await broker.publish_numbered("room", b"#", b".", 10) == 1  # persistence is off: a new life


async def test_a_failed_batch_fails_each_of_its_publishes(redis_server: RedisServer, broker: RedisBroker) -> None:
    redis_server.kill()
    posted = [broker.post_numbered("room", b"#", b".", 10) for _ in range(3)]
    for number in posted:
        with pytest.raises(BrokerError):
            await number
    assert broker.backlog == 0


async def test_more_than_a_batch_goes_in_several_round_trips_in_order(broker: RedisBroker,
                                                                      batches: list[int]) -> None:
    count = 2 * MAX_BATCH + 10
    numbers = await asyncio.gather(*(broker.post_numbered("room", b"#", b".", 0) for _ in range(count)))
    assert numbers == list(range(1, count + 1))
    assert batches == [MAX_BATCH, MAX_BATCH, 10]


async def test_a_sender_that_does_not_wait_is_held_back_while_redis_is_stalled(
        broker: RedisBroker, rds: Redis) -> None:
    """publish_numbered(wait=False) returns at once, until more than _BACKLOG publishes
    wait for Redis: then it waits for its own, so a flood cannot grow the queue."""
    hub = Hub(broker, GatewayStats())
    stall = asyncio.create_task(rds.eval(_BUSY, 0, 500_000))  # Redis answers nobody meanwhile
    await asyncio.sleep(0.05)
    first = await hub.publish_numbered("/chat", "room", {"n": 0}, keep=10, keep_for=0, wait=False)
    assert first is None  # on its way, not waited for
    stalled_at_return = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(1, _BACKLOG + 3):
        await hub.publish_numbered("/chat", "room", {"n": n}, keep=10, keep_for=0, wait=False)
        stalled_at_return.append(not stall.done())
    held = loop.time() - started
    await stall
    # Queued without waiting: Redis was still busy when each returned. (Told by the stall,
    # not a clock: a loaded machine can starve the loop for longer than any bound.)
    assert all(stalled_at_return[:_BACKLOG - 1])
    assert held >= 0.3  # past the bound: held until Redis answered (busy for 0.5 s)
    assert broker.backlog <= _BACKLOG


async def test_a_restarted_redis_is_not_taken_for_an_outage(redis_server: RedisServer,
                                                           broker: RedisBroker) -> None:
    """Once Redis is back, the health PING's first try on a connection the old Redis closed
    must not report it unreachable: that delivered locally, with no id, for half a second."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(0.6)  # a health check or two on the old Redis
    redis_server.stop()
    redis_server.start()
    async with asyncio.timeout(5):
        while broker.healthy:  # until the broker noticed ...
            await asyncio.sleep(0.005)
        while not broker.healthy:  # ... and is back
            await asyncio.sleep(0.005)
    back = loop.time()
    while loop.time() - back < 2.5:  # five health checks
        assert broker.healthy, f"reported unreachable {loop.time() - back:.2f} s after it was back"
        await asyncio.sleep(0.01)
    assert await broker.publish_numbered("room", b"#", b".", 10) == 1
