"""What one resume costs is bounded: ``?since=0`` over a room that keeps many large
messages reads at most ``history_bytes`` from the broker (memory, Redis, Redis Cluster),
measured on the broker's side, and chat still answers ``recovered: false`` with the
usual last history."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cluster import Cluster
from conftest import RedisServer
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from wsgate.broker import Broker
from wsgate.broker.memory import MemoryBroker
from wsgate.broker.redis import RedisBroker
from wsgate.broker.redis_cluster import RedisClusterBroker
from wsgate.testing import run_gateway

COUNT = 120  # messages kept
SIZE = 2000  # bytes each
BUDGET = 16 * 1024
SLACK = 4096  # what else Redis sends meanwhile: INFO's own reply, health PONGs, a join's presence
POLICY = {"heartbeat": {"interval": 0}, "rate_limit": None, "close_timeout": "0.3s"}


async def sent_by(servers: list[Redis]) -> int:
    """Bytes the Redis servers have written to their clients so far."""
    total = 0
    for server in servers:
        total += int((await server.info("stats"))["total_net_output_bytes"])
    return total


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    started = Cluster(tmp_path / "cluster")
    started.start()
    yield started
    started.stop()


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Broker, list[Redis]]]:
    """A started broker of each kind, and plain clients of the Redis servers behind it."""
    made: Broker
    servers: list[Redis] = []
    if request.param == "memory":
        made = MemoryBroker()
    elif request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisBroker(server.url)
        servers = [Redis.from_url(server.url)]
    else:
        cluster: Cluster = request.getfixturevalue("cluster")
        made = RedisClusterBroker(cluster.url)
        servers = [Redis(host="127.0.0.1", port=node.port) for node in cluster.nodes]
    await made.start()
    yield made, servers
    await made.close()
    for client in servers:
        await client.aclose()


async def test_a_resume_reads_at_most_max_bytes_from_the_broker(broker: tuple[Broker, list[Redis]]) -> None:
    made, servers = broker
    channel = "wsgate:/chat:big"
    for _ in range(COUNT):
        await made.publish_numbered(channel, b"t[", b"," + b"x" * (SIZE - 8) + b"]", keep=1000)
    epoch = (await made.replay(channel, None, None, 0)).epoch
    newest = await made.history(channel, COUNT)
    fit = BUDGET // len(newest[-1])

    before = await sent_by(servers)
    everything = await made.replay(channel, 0, epoch, 50, max_bytes=BUDGET)
    read = await sent_by(servers) - before
    assert not everything.recovered
    assert everything.payloads == newest[-fit:]  # the newest that fit, as a fresh join gets
    assert sum(map(len, everything.payloads)) <= BUDGET
    if servers:
        assert read <= BUDGET + SLACK, f"Redis sent {read} bytes for one resume of {BUDGET}"

    recent = await made.replay(channel, COUNT - 3, epoch, 50, max_bytes=BUDGET)
    assert (recent.recovered, recent.payloads) == (True, newest[-3:])
    unbounded = await made.replay(channel, 0, epoch, 50)
    assert (unbounded.recovered, len(unbounded.payloads)) == (True, COUNT)


async def test_a_chat_resume_of_everything_reads_history_bytes_and_is_not_recovered(
        redis_server: RedisServer, rds: Redis) -> None:
    options = {"history": 50, "history_bytes": BUDGET, "keep": 1000}
    async with run_gateway({"/chat": {"handler": "chat", "options": options}}, policy=POLICY,
                           broker=redis_server.url) as gw:
        async with connect(f"{gw.ws_url}/chat?room=big&name=sender", max_size=None) as sender:
            epoch = json.loads(await sender.recv())["epoch"]
            await sender.recv()  # its (empty) history
            for i in range(COUNT):
                await sender.send(f"{i:04d}" + "y" * (SIZE - 200))
            while json.loads(await sender.recv()).get("id") != COUNT:
                pass
        async with connect(f"{gw.ws_url}/chat?room=big&name=fresh", max_size=None) as fresh:
            await fresh.recv()
            usual = json.loads(await fresh.recv())

        before = await sent_by([rds])
        async with connect(f"{gw.ws_url}/chat?room=big&name=back&since=0&epoch={epoch}", max_size=None) as back:
            welcome = json.loads(await back.recv())
            history_text = await back.recv()
        read = await sent_by([rds]) - before

    assert read <= BUDGET + SLACK, f"Redis sent {read} bytes for one resume with history_bytes {BUDGET}"
    history = json.loads(history_text)
    assert welcome["recovered"] is history["recovered"] is False
    ids = [m["id"] for m in history["messages"]]
    assert ids == [m["id"] for m in usual["messages"]]
    assert len(ids) > 1
    assert ids == list(range(COUNT - len(ids) + 1, COUNT + 1))
    assert len(history_text.encode()) <= BUDGET
