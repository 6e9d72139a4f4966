"""Resume after reconnect: epochs, ``since``, no gap and no duplicate, on the memory
broker and on a real Redis shared by two gateways; edge cases; ``Context.subscribe``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import RedisServer
from websockets.asyncio.client import ClientConnection, connect

from wsgate import ConfigError, Connection, Handler, Message
from wsgate.config import Registry, parse_config
from wsgate.testing import GatewayServer, run_gateway

TIMEOUT = 10
# Clients that stop reading (websockets pauses a full queue) would hold the shutdown for 5 s each.
POLICY = {"heartbeat": {"interval": 0}, "rate_limit": None, "close_timeout": "0.3s"}


@contextlib.asynccontextmanager
async def chat(broker: str = "memory", **options: Any) -> AsyncIterator[GatewayServer]:
    endpoints = {"/chat": {"handler": "chat", "options": options}}
    async with run_gateway(endpoints, policy=POLICY, broker=broker) as gw:
        yield gw


class Client:
    """A chat client that remembers the last id and epoch, as a resuming client does."""

    def __init__(self, ws: ClientConnection, welcome: dict[str, Any], history: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.history = history
        self.epoch: str = welcome["epoch"]
        self.ids: list[int] = [m["id"] for m in history["messages"]]

    @classmethod
    async def join(cls, gw: GatewayServer, room: str = "r", since: Any = None, epoch: str | None = None,
                   name: str = "x") -> Client:
        query = f"room={room}&name={name}"
        if since is not None:
            query += f"&since={since}"
        if epoch is not None:
            query += f"&epoch={epoch}"
        ws = await connect(f"{gw.ws_url}/chat?{query}")
        welcome = json.loads(await ws.recv())
        history = json.loads(await ws.recv())
        assert (welcome["type"], history["type"]) == ("welcome", "history"), (welcome, history)
        assert welcome["recovered"] is history["recovered"]
        return cls(ws, welcome, history)

    async def until(self, last: int) -> None:
        """Read until message ``last`` arrived, recording every message id."""
        async with asyncio.timeout(TIMEOUT):
            while not self.ids or self.ids[-1] < last:
                event = json.loads(await self.ws.recv())
                if event["type"] == "message" and event["id"] is not None:
                    self.ids.append(event["id"])


async def say(gw: GatewayServer, texts: range, room: str = "r") -> None:
    """Publish numbered messages through a client of the room; wait until they are back."""
    sender = await Client.join(gw, room, name="sender")
    start = sender.ids[-1] if sender.ids else 0
    for i in texts:
        await sender.ws.send(f"m{i}")
    await sender.until(start + len(texts))
    await sender.ws.close()


async def test_a_fresh_join_is_not_recovered_and_names_the_epoch() -> None:
    async with chat() as gw:
        await say(gw, range(3))
        client = await Client.join(gw)
        assert client.welcome["recovered"] is False
        assert isinstance(client.epoch, str)
        assert client.epoch
        assert client.ids == [1, 2, 3]


async def test_a_reconnect_gets_every_missed_message_then_live_ones_once() -> None:
    async with chat(history=2) as gw:
        first = await Client.join(gw)
        await say(gw, range(5))
        await first.until(5)
        await first.ws.close()
        await say(gw, range(4))  # 6..9 while it was away
        back = await Client.join(gw, since=5, epoch=first.epoch)
        assert back.welcome["recovered"] is True
        assert back.ids == [6, 7, 8, 9]  # all of them, although history is 2
        await say(gw, range(1))
        await back.until(10)
        assert back.ids == [6, 7, 8, 9, 10]


@pytest.mark.parametrize(("since", "epoch", "recovered", "ids"), [
    ("5", "same", True, []),             # up to date: recovered, nothing to send
    ("0", "same", True, [1, 2, 3, 4, 5]),
    ("6", "same", False, [4, 5]),        # in the future
    ("99999999999999999999", "same", False, [4, 5]),
    ("-1", "same", False, [4, 5]),
    ("abc", "same", False, [4, 5]),
    ("3", None, False, [4, 5]),          # since without epoch
    ("3", "someone-else", False, [4, 5]),
])
async def test_resume_edge_cases_never_close(since: str, epoch: str | None, recovered: bool, ids: list[int]) -> None:
    async with chat(history=2) as gw:
        await say(gw, range(5))
        epoch_now = (await Client.join(gw, name="probe")).epoch
        client = await Client.join(gw, since=since, epoch=epoch_now if epoch == "same" else epoch)
        assert client.welcome["recovered"] is recovered
        assert client.ids == ids
        assert client.epoch == epoch_now
        await client.ws.send("still here")
        await client.until(6)


async def test_a_trimmed_range_is_not_recovered() -> None:
    async with chat(history=2, keep=3) as gw:
        await say(gw, range(6))  # the room keeps 4..6
        epoch = (await Client.join(gw, name="probe")).epoch
        assert (await Client.join(gw, since=3, epoch=epoch)).ids == [4, 5, 6]
        gone = await Client.join(gw, since=2, epoch=epoch)
        assert gone.welcome["recovered"] is False
        assert gone.ids == [5, 6]


async def test_a_resume_larger_than_history_bytes_is_not_recovered() -> None:
    async with chat(history=1, history_bytes=1024) as gw:
        sender = await Client.join(gw, name="sender")
        for _ in range(10):
            await sender.ws.send("y" * 200)
        await sender.until(10)
        client = await Client.join(gw, since=0, epoch=sender.epoch)
        assert client.welcome["recovered"] is False
        assert client.ids == [10]


async def test_a_new_memory_broker_has_new_epochs() -> None:
    async with chat() as gw:
        await say(gw, range(2))
        before = (await Client.join(gw)).epoch
    async with chat() as gw:  # "the gateway restarted"
        client = await Client.join(gw, since=2, epoch=before)
        assert client.welcome["recovered"] is False
        assert client.epoch != before


@pytest.mark.parametrize("use_redis", [False, True], ids=["memory", "redis"])
async def test_messages_published_while_clients_join_arrive_exactly_once(
    use_redis: bool, request: pytest.FixtureRequest
) -> None:
    """Subscribe first, read the store, drop what it held: no gap, no duplicate, also
    for messages published during the join (with Redis, the join has real round trips
    for them to fall into)."""
    broker = request.getfixturevalue("redis_server").url if use_redis else "memory"
    async with chat(broker, history=1000) as gw:
        sender = await Client.join(gw, name="sender")

        async def publish() -> None:
            for i in range(300):
                await sender.ws.send(f"m{i}")
                if i % 10 == 0:
                    await asyncio.sleep(0.001)

        task = asyncio.create_task(publish())
        clients = []
        for i in range(20):
            clients.append(await Client.join(gw, name=f"c{i}"))
            await asyncio.sleep(0.005)
        await task
        for client in clients:
            await client.until(300)
            first = client.ids[0] if client.ids else 1
            assert client.ids == list(range(first, 301)), client.ids


def test_history_cannot_exceed_keep() -> None:
    text = "endpoints:\n  - {path: /chat, handler: chat, options: {history: 10, keep: 5}}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml", Registry())
    assert "history (10) cannot exceed keep (5)" in str(info.value)


class Feed(Handler):
    """A notifications feed that resumes: the handler of docs/handlers.md, in short."""

    async def on_connect(self, conn: Connection) -> None:
        since = conn.query.get("since")
        found = await self.context.subscribe(conn, "feed", int(since) if since else None, conn.query.get("epoch"),
                                             history=3)
        await conn.send_json({"epoch": found.epoch, "recovered": found.recovered,
                              "ids": [m["id"] for m in found.messages]})

    async def on_message(self, conn: Connection, message: Message) -> None:
        await self.context.publish_numbered("feed", {"text": str(message)}, keep=100)


async def test_context_subscribe_recovers_a_custom_topic() -> None:
    async with run_gateway({"/feed": Feed}, policy=POLICY) as gw:
        async with connect(gw.ws_url + "/feed") as ws:
            hello = json.loads(await ws.recv())
            assert (hello["recovered"], hello["ids"]) == (False, [])
            for i in range(5):
                await ws.send(f"n{i}")
            seen = [json.loads(await ws.recv())["id"] for _ in range(5)]
            assert seen == [1, 2, 3, 4, 5]
        async with connect(f"{gw.ws_url}/feed?since=2&epoch={hello['epoch']}") as ws:
            assert json.loads(await ws.recv()) == {"epoch": hello["epoch"], "recovered": True, "ids": [3, 4, 5]}
        async with connect(gw.ws_url + "/feed") as ws:
            assert json.loads(await ws.recv())["ids"] == [3, 4, 5]  # history=3


# --- Redis: two instances, restarts ----------------------------------------------------

async def test_resume_on_another_instance_and_after_a_redis_restart(redis_server: RedisServer) -> None:
    async with chat(redis_server.url) as one, chat(redis_server.url) as two:
        client = await Client.join(one)
        await say(one, range(4))
        await client.until(4)
        await client.ws.close()
        await say(two, range(3))
        back = await Client.join(two, since=4, epoch=client.epoch)
        assert back.welcome["recovered"] is True
        assert back.ids == [5, 6, 7]
        assert back.epoch == client.epoch
        await back.ws.close()

        redis_server.stop()  # persistence is off: the room's ids, history and epoch are gone
        redis_server.start()
        async with asyncio.timeout(TIMEOUT):
            while not (one.gateway.hub.broker.healthy and two.gateway.hub.broker.healthy):
                await asyncio.sleep(0.05)
        lost = await Client.join(two, since=7, epoch=client.epoch)
        assert lost.welcome["recovered"] is False
        assert lost.epoch != client.epoch
        await say(one, range(2))
        await lost.until(2)
        assert lost.ids == [1, 2]  # a new sequence, delivered exactly
