"""The hub's subscriptions over a real Redis shared by two gateways: a join given up half
way (cancelled) leaves nothing behind, and the room works for whoever joins next."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from conftest import RedisServer
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from wsgate import Connection, Handler, Message
from wsgate.testing import GatewayServer, run_gateway

POLICY = {"heartbeat": {"interval": 0}, "rate_limit": None, "close_timeout": "0.3s"}
CHANNEL = "wsgate:/room:r"
TIMEOUT = 5


class Room(Handler):
    """Joins topic ``r``; with ``?give_up=N``, cancels its own join after N loop passes
    (a client that leaves while the join is under way)."""

    async def on_connect(self, conn: Connection) -> None:
        join = asyncio.ensure_future(self.context.subscribe(conn, "r"))
        passes = conn.query.get("give_up")
        if passes is not None:
            for _ in range(int(passes)):
                await asyncio.sleep(0)
            join.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await join
            await conn.send_json({"joined": not join.cancelled()})
            return
        await join
        await conn.send_json({"joined": True})

    async def on_message(self, conn: Connection, message: Message) -> None:
        await self.context.publish("r", message)


async def join(gw: GatewayServer, query: str = "") -> tuple[ClientConnection, bool]:
    ws = await connect(f"{gw.ws_url}/room?{query}")
    return ws, json.loads(await ws.recv())["joined"]


async def subscribers(rds: Redis) -> int:
    [(_, count)] = await rds.pubsub_numsub(CHANNEL)
    return int(count)


async def until_subscribers(rds: Redis, count: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        while await subscribers(rds) != count:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("passes", [1, 2, 3, 5])
async def test_a_cancelled_join_leaves_no_subscription_and_later_joiners_hear_other_instances(
        redis_server: RedisServer, passes: int) -> None:
    rds: Redis = Redis.from_url(redis_server.url)
    async with run_gateway({"/room": Room}, policy=POLICY, broker=redis_server.url) as one, \
            run_gateway({"/room": Room}, policy=POLICY, broker=redis_server.url) as two:
        speaker, _ = await join(two)
        await until_subscribers(rds, 1)

        quitter, joined = await join(one, f"give_up={passes}")
        assert not joined
        # Nobody is in the room on instance one: it is not subscribed to it.
        await until_subscribers(rds, 1)
        assert await subscribers(rds) == 1

        later, _ = await join(one)
        await until_subscribers(rds, 2)
        await speaker.send("from two")
        async with asyncio.timeout(TIMEOUT):
            assert await later.recv() == "from two"

        await later.close()
        await until_subscribers(rds, 1)
        for ws in (speaker, quitter):
            await ws.close()
    await rds.aclose()
