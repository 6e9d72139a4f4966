"""Chaos: two gateway processes sharing a real Redis (and one on the memory broker),
receivers whose TCP connections are cut at random and resume with since/epoch, senders
publishing all the while. Every receiver must end with every id exactly once, in order.
Then Redis (or the memory instance) restarts without its data: the next resume is not
recovered, has a new epoch, and delivery is exact again from there."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from conftest import RedisServer, WsgateProcess, free_port
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

CHAOS_SECONDS = 30.0
RECEIVERS = 10
SENDERS = 2
SEND_INTERVAL = 0.02  # two senders: ~100 messages a second in total


def config(redis_url: str) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1"},
        "broker": redis_url,
        "policy": {"heartbeat": {"interval": 0}, "rate_limit": None, "close_timeout": "0.5s"},
        "endpoints": [{"path": "/chat", "handler": "chat", "options": {"history": 10, "keep": 2000}}],
    }


class Receiver:
    """Keeps what a resuming client keeps: the ids it saw, the epoch, the last id."""

    def __init__(self, index: int, servers: list[WsgateProcess]) -> None:
        self.index = index
        self.servers = servers
        self.ids: list[int] = []
        self.epoch: str | None = None
        self.reconnects = 0
        self.not_recovered = 0
        self.last_welcome: dict[str, Any] = {}

    def url(self, attempt: int) -> str:
        server = self.servers[(self.index + attempt) % len(self.servers)]  # both instances, in turn
        url = f"{server.ws_url}/chat?room=chaos&name=r{self.index}"
        if self.epoch is not None:
            url += f"&since={self.ids[-1] if self.ids else 0}&epoch={self.epoch}"
        return url

    async def join(self, attempt: int) -> ClientConnection:
        for retry in range(20):
            ws = await connect(self.url(attempt), max_queue=None)
            try:
                welcome = json.loads(await ws.recv())
                history = json.loads(await ws.recv())
                break
            except ConnectionClosedError as closed:
                # 1013, "try again later": the chat could not reach Redis (just restarted)
                if closed.rcvd is None or closed.rcvd.code != 1013 or retry == 19:
                    raise
                await asyncio.sleep(0.1)
        if welcome["type"] == "error":
            raise AssertionError(welcome)
        self.last_welcome = welcome
        if self.epoch is not None:
            self.reconnects += 1
            if not welcome["recovered"]:
                self.not_recovered += 1
                self.ids = []  # a new sequence: what we had no longer counts
        self.epoch = welcome["epoch"]
        self.take(history["messages"])
        return ws

    def take(self, events: list[dict[str, Any]]) -> None:
        self.ids += [e["id"] for e in events if e.get("type") == "message" and e["id"] is not None]

    async def read_for(self, ws: ClientConnection, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                while True:
                    self.take([json.loads(await ws.recv())])
        except TimeoutError:
            pass

    async def chaos(self, until: float) -> None:
        attempt = 0
        while time.monotonic() < until:
            ws = await self.join(attempt)
            attempt += 1
            await self.read_for(ws, random.uniform(1.0, 3.0))
            ws.transport.abort()  # the client's side of TCP is cut: no close frame
            await asyncio.sleep(random.uniform(0.0, 0.2))

    async def catch_up(self, last: int, attempt: int = 99) -> None:
        ws = await self.join(attempt)
        try:
            async with asyncio.timeout(10):
                while not self.ids or self.ids[-1] < last:
                    self.take([json.loads(await ws.recv())])
        finally:
            await ws.close()


async def joined(url: str) -> ClientConnection:
    """A chat connection that has its welcome; 1013 ("try again later", Redis just back) is retried."""
    for _ in range(20):
        ws = await connect(url, max_queue=None)
        if json.loads(await ws.recv())["type"] == "welcome":
            return ws
        await ws.close()
        await asyncio.sleep(0.1)
    raise AssertionError(f"no welcome at {url}")


async def send_for(server: WsgateProcess, name: str, until: float) -> int:
    sent = 0  # counted only after the welcome: every message sent then is published
    async with await joined(f"{server.ws_url}/chat?room=chaos&name={name}") as ws:
        while time.monotonic() < until:
            await ws.send(f"{name} {sent}")
            sent += 1
            await asyncio.sleep(SEND_INTERVAL)
    return sent


async def wait_ready(server: WsgateProcess) -> None:
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(20):
            while True:
                async with session.get(server.url + "/readyz") as resp:
                    if resp.status == 200:
                        return
                await asyncio.sleep(0.1)


def exact(ids: list[int], first: int, last: int) -> bool:
    return ids == list(range(first, last + 1))


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("broker", "seconds"), [("redis", CHAOS_SECONDS), ("memory", 6.0)])
async def test_receivers_cut_at_random_lose_and_repeat_nothing(
    broker: str, seconds: float, request: pytest.FixtureRequest,
    wsgate_process: Callable[..., WsgateProcess], write_config: Callable[..., Any]
) -> None:
    """Redis: two instances, then Redis restarts. Memory: one instance, then it restarts."""
    random.seed(6455)
    redis_server: RedisServer | None = request.getfixturevalue("redis_server") if broker == "redis" else None
    path = write_config(config(redis_server.url if redis_server else "memory"))
    port = free_port()  # the memory instance restarts on the same port, where clients look for it
    servers = [wsgate_process(path), wsgate_process(path)] if redis_server else [wsgate_process(path, port=port)]
    receivers = [Receiver(i, servers) for i in range(RECEIVERS)]
    for receiver in receivers:  # everyone is in before the first message: all ids count
        await (await receiver.join(0)).close()
    until = time.monotonic() + seconds
    results = await asyncio.gather(
        *(send_for(servers[i % len(servers)], f"s{i}", until) for i in range(SENDERS)),
        *(receiver.chaos(until) for receiver in receivers),
    )
    total = sum(results[:SENDERS])
    assert total > 50 * seconds, f"only {total} messages sent"
    await asyncio.gather(*(receiver.catch_up(total) for receiver in receivers))
    for receiver in receivers:
        assert receiver.reconnects >= seconds / 3.5, receiver.reconnects
        assert receiver.not_recovered == 0, f"r{receiver.index} lost history {receiver.not_recovered} times"
        assert exact(receiver.ids, 1, total), f"r{receiver.index}: {len(receiver.ids)} ids, not 1..{total}"

    # Redis (or the memory instance) restarts without its data: ids, history, epochs are gone.
    old_epoch = receivers[0].epoch
    if redis_server:
        redis_server.stop()
        redis_server.start()
    else:
        servers[0].stop()
        servers[0] = wsgate_process(path, port=port)
    await asyncio.gather(*(wait_ready(server) for server in servers))
    sockets = [await receiver.join(i) for i, receiver in enumerate(receivers)]
    for receiver in receivers:
        assert receiver.last_welcome["recovered"] is False
        assert receiver.epoch != old_epoch
    for ws in sockets:
        await ws.close()
    after = await send_for(servers[0], "again", time.monotonic() + 1.0)
    await asyncio.gather(*(receiver.catch_up(after) for receiver in receivers))
    for receiver in receivers:
        assert exact(receiver.ids, 1, after), f"r{receiver.index} after the restart: {receiver.ids[:5]}..."
