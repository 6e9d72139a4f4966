"""A Redis restart while chat senders on two gateway instances keep talking: every message
is counted on every client, and nothing is numbered and stored that its own instance did
not show (while an instance's subscription is being restored, it delivers locally)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from conftest import RedisServer
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from wsgate.testing import GatewayServer, run_gateway

POLICY = {"heartbeat": {"interval": 0}, "rate_limit": None, "close_timeout": "0.3s"}
HISTORY_KEY = "wsgate:/chat:r:history"
SEND_EVERY = 0.01


class Seen:
    """One chat client: every message event it receives, as text -> the ids it came with.

    A text may come twice (with no id, then its id) when a publish timed out that Redis
    did take: a documented case, and not what this test is about."""

    def __init__(self, ws: ClientConnection, name: str) -> None:
        self.ws = ws
        self.name = name
        self.messages: dict[str, set[int | None]] = {}
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def join(cls, gw: GatewayServer, name: str) -> Seen:
        ws = await connect(f"{gw.ws_url}/chat?room=r&name={name}")
        for expected in ("welcome", "history"):
            assert json.loads(await ws.recv())["type"] == expected
        return cls(ws, name)

    async def _read(self) -> None:
        async for raw in self.ws:
            event = json.loads(raw)
            if event["type"] == "message":
                self.messages.setdefault(event["text"], set()).add(event["id"])


async def send_until(sender: Seen, stop: asyncio.Event) -> list[str]:
    """Send numbered texts every few ms until ``stop``; the texts sent."""
    sent: list[str] = []
    while not stop.is_set():
        text = f"{sender.name}-{len(sent)}"
        await sender.ws.send(text)
        sent.append(text)
        await asyncio.sleep(SEND_EVERY)
    return sent


async def restart(redis_server: RedisServer, down_for: float) -> None:
    await asyncio.to_thread(redis_server.stop)
    await asyncio.sleep(down_for)
    await asyncio.to_thread(redis_server.start)


async def test_a_redis_restart_numbers_and_stores_nothing_its_own_instance_did_not_show(
        redis_server: RedisServer) -> None:
    endpoints = {"/chat": {"handler": "chat", "options": {"history": 10, "keep": 10_000}}}
    async with run_gateway(endpoints, policy=POLICY, broker=redis_server.url) as one, \
            run_gateway(endpoints, policy=POLICY, broker=redis_server.url) as two:
        instances = {"a": one, "b": two}
        clients = {f"{i}{role}": await Seen.join(gw, f"{i}{role}") for i, gw in instances.items()
                   for role in ("sender", "watcher")}
        stop = asyncio.Event()
        senders = [asyncio.create_task(send_until(clients[f"{i}sender"], stop)) for i in instances]
        # Down long enough for the health check to notice, then back at once (a restart
        # between two health checks); each time the pub/sub listeners are in backoff
        # for a while after the commands work again.
        for down_for in (0.8, 0.0):
            await asyncio.sleep(0.5)
            await restart(redis_server, down_for)
            await asyncio.sleep(1.5)
        async with asyncio.timeout(10):
            while not all(gw.gateway.hub.broker.healthy for gw in instances.values()):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        stop.set()
        sent = dict(zip(instances, await asyncio.gather(*senders), strict=True))

        # Every client on the sender's instance shows each of its messages, numbered or not.
        for i, texts in sent.items():
            local = [clients[f"{i}sender"], clients[f"{i}watcher"]]
            async with asyncio.timeout(10):
                while not all(texts[-1] in c.messages for c in local):
                    await asyncio.sleep(0.05)
            for client in local:
                missing = [t for t in texts if t not in client.messages]
                assert not missing, f"{client.name} never showed {len(missing)} of its instance's messages: {missing}"

        # Every message Redis numbered and stored (since the last restart: it keeps
        # nothing across one) was shown, with that id, on the sender's instance.
        rds: Redis = Redis.from_url(redis_server.url)
        try:
            stored = [json.loads(item[1:]) for item in await rds.lrange(HISTORY_KEY, 0, -1)]  # after "t"
        finally:
            await rds.aclose()
        assert stored, "nothing was numbered after the last restart"
        unseen: list[tuple[Any, ...]] = []
        for event in stored:
            instance = event["from"][0]
            for client in (clients[f"{instance}sender"], clients[f"{instance}watcher"]):
                if event["id"] not in client.messages.get(event["text"], set()):
                    unseen.append((event["id"], event["text"], client.name, client.messages.get(event["text"])))
        assert not unseen, f"{len(unseen)} numbered and stored, not shown so on their own instance: {unseen[:10]}"
        for client in clients.values():
            await client.ws.close()
            await client.reader
