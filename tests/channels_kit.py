"""Helpers shared by the ``channels`` test modules.

- ``RawClient``: a raw ``websockets`` client speaking the Centrifugo client protocol v2 (JSON)
  by hand, so that every reply, push and close is seen as the server sent it;
- ``token`` and ``until``: an HS256 connection token, and a bounded poll;
- ``ClientEvents`` and ``SubEvents``: centrifuge-python event handlers that record every event;
  ``SdkClients`` makes a test's centrifuge-python clients and disconnects them all at the end.

A module-scoped wsgate process comes from conftest's ``module_wsgate`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import websockets
from centrifuge import (
    Client,
    ClientEventHandler,
    ConnectedContext,
    ConnectingContext,
    DisconnectedContext,
    JoinContext,
    LeaveContext,
    PublicationContext,
    ServerPublicationContext,
    ServerSubscribedContext,
    ServerUnsubscribedContext,
    SubscribedContext,
    Subscription,
    SubscriptionEventHandler,
    UnsubscribedContext,
)
from websockets.asyncio.client import ClientConnection

WITHIN = 5.0  # seconds for any one expected event, unless a module says otherwise


def token(secret: str, sub: str, ttl: float | None = 3600, **claims: Any) -> str:
    """An HS256 token for ``sub``, expiring in ``ttl`` seconds (``None``: no ``exp``); ``claims`` win."""
    payload: dict[str, Any] = {"sub": sub}
    if ttl is not None:
        payload["exp"] = int(time.time() + ttl)
    return jwt.encode({**payload, **claims}, secret, algorithm="HS256")


async def until(predicate: Callable[[], bool], what: str, within: float = WITHIN) -> None:
    """Poll ``predicate`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


class RawClient:
    """One protocol v2 connection spoken by hand over ``websockets``.

    A reader task records every frame, answers the server's ``{}`` pings when ``pong`` is set,
    and records the close code and reason. A reply awaited with ``ask``/``result`` goes to its
    caller; every other reply or push waits in ``queue`` in arrival order (``None``: closed).
    """

    def __init__(self, ws: ClientConnection, *, pong: bool = True, wait: float = WITHIN, name: str = "") -> None:
        self.ws, self.pong, self.wait, self.name = ws, pong, wait, name
        self.id = ""  # the client id, once connected by ``open``
        self.frames: list[str | bytes] = []  # every frame received, pings included
        self.next_id = 1
        self.close: tuple[int, str] | None = None  # the close code and reason the server sent
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, tok: str, name: str, wait: float = WITHIN) -> RawClient:
        """Connected (a ``connect`` command with ``tok``), answering pings; close it with ``close``."""
        async with asyncio.timeout(wait):
            ws = await websockets.connect(url, open_timeout=wait)
        client = cls(ws, wait=wait, name=name)
        client.id = (await client.result("connect", token=tok))["client"]
        return client

    async def _read(self) -> None:
        try:
            while True:
                frame = await self.ws.recv()
                self.frames.append(frame)
                assert isinstance(frame, str), f"a binary frame: {frame!r}"
                for line in frame.split("\n"):
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if msg == {}:
                        if self.pong:
                            await self.ws.send("{}")
                    elif (future := self._waiting.pop(msg.get("id", 0), None)) is not None:
                        future.set_result(msg)
                    else:
                        self.queue.put_nowait(msg)
        except websockets.ConnectionClosed as exc:
            if exc.rcvd is not None:
                self.close = (exc.rcvd.code, exc.rcvd.reason)
        finally:
            self.queue.put_nowait(None)

    async def send(self, *commands: dict[str, Any] | str) -> None:
        """Commands in one frame, one a line."""
        await self.ws.send("\n".join(c if isinstance(c, str) else json.dumps(c) for c in commands))

    async def call(self, method: str, params: dict[str, Any], within: float | None = None) -> dict[str, Any]:
        """The reply to ``method`` (replies and pushes that come before it are dropped)."""
        cid = self.next_id
        self.next_id += 1
        await self.send({method: params, "id": cid})
        return await self.reply(cid, within)

    async def ask(self, method: str, **params: Any) -> dict[str, Any]:
        """The reply to ``method``; pushes that come before it stay queued."""
        cid = self.next_id
        self.next_id += 1
        future = self._waiting[cid] = asyncio.get_running_loop().create_future()
        await self.ws.send(json.dumps({"id": cid, method: params}))
        async with asyncio.timeout(self.wait):
            return await future

    async def result(self, method: str, **params: Any) -> dict[str, Any]:
        """The result of ``method``, which must not be an error; pushes that come before it stay queued."""
        reply = await self.ask(method, **params)
        assert "error" not in reply, (self.name, method, params, reply)
        result: dict[str, Any] = reply[method]
        return result

    async def message(self, within: float | None = None) -> dict[str, Any]:
        """The next reply or push."""
        async with asyncio.timeout(self.wait if within is None else within):
            msg = await self.queue.get()
        if msg is None:
            self.queue.put_nowait(None)
            raise AssertionError(f"closed by the server: {self.close}")
        return msg

    async def messages(self, count: int, within: float | None = None) -> list[dict[str, Any]]:
        async with asyncio.timeout(self.wait if within is None else within):
            return [await self.message(within) for _ in range(count)]

    async def reply(self, cid: int, within: float | None = None) -> dict[str, Any]:
        """The reply with id ``cid``; messages before it are dropped."""
        async with asyncio.timeout(self.wait if within is None else within):
            while True:
                msg = await self.message(within)
                if msg.get("id") == cid:
                    return msg

    async def pub(self, channel: str, within: float | None = None) -> Any:
        """The next publication on ``channel`` (other messages before it are dropped)."""
        async with asyncio.timeout(self.wait if within is None else within):
            while True:
                msg = await self.message(within)
                push = msg.get("push", {})
                if push.get("channel") == channel and "pub" in push:
                    return push["pub"]

    async def push(self) -> dict[str, Any]:
        """The next push (publication, subscribe, unsubscribe ...)."""
        push: dict[str, Any] = (await self.message())["push"]
        return push

    async def pubs(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` pushes, each a publication; ``(channel, pub)`` flattened."""
        found = []
        for _ in range(count):
            push = await self.push()
            assert "pub" in push, (self.name, push)
            found.append({"channel": push["channel"], **push["pub"]})
        return found

    def nothing_more(self) -> None:
        """No reply or push is waiting (the mark of a close aside)."""
        assert self.queue.qsize() <= int(self.reader.done()), (self.name, self.queue.get_nowait())

    async def closed(self, within: float | None = None) -> tuple[int, str]:
        """The close code and reason the server sent (messages meanwhile are dropped)."""
        async with asyncio.timeout(self.wait if within is None else within):
            while await self.queue.get() is not None:
                pass
        self.queue.put_nowait(None)
        assert self.close is not None, f"{self.name}: the connection ended without a close frame from the server"
        return self.close

    async def stop(self) -> None:
        """End the reader (the connection is closed by whoever opened it)."""
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed, AssertionError):
            await self.reader

    async def aclose(self) -> None:
        """Close the connection, then end the reader."""
        async with asyncio.timeout(self.wait):
            await self.ws.close()
        await asyncio.wait({self.reader}, timeout=self.wait)
        self.reader.cancel()


class ClientEvents(ClientEventHandler):
    """Everything a centrifuge-python client reports, server-side subscriptions included."""

    def __init__(self) -> None:
        self.connected: list[ConnectedContext] = []
        self.connecting: list[ConnectingContext] = []
        self.disconnected: list[DisconnectedContext] = []
        self.server_subscribed: list[ServerSubscribedContext] = []
        self.server_unsubscribed: list[ServerUnsubscribedContext] = []
        self.server_pubs: list[ServerPublicationContext] = []
        self.on_reconnecting: Callable[[], Any] | None = None  # awaited when a close code 3000+ reconnects

    async def on_connected(self, ctx: ConnectedContext) -> None:
        self.connected.append(ctx)

    async def on_connecting(self, ctx: ConnectingContext) -> None:
        self.connecting.append(ctx)
        if self.on_reconnecting is not None and ctx.code >= 3000:
            await self.on_reconnecting()

    async def on_disconnected(self, ctx: DisconnectedContext) -> None:
        self.disconnected.append(ctx)

    async def on_subscribed(self, ctx: ServerSubscribedContext) -> None:
        self.server_subscribed.append(ctx)

    async def on_unsubscribed(self, ctx: ServerUnsubscribedContext) -> None:
        self.server_unsubscribed.append(ctx)

    async def on_publication(self, ctx: ServerPublicationContext) -> None:
        self.server_pubs.append(ctx)


class SubEvents(SubscriptionEventHandler):
    """Everything one centrifuge-python subscription reports, in order."""

    def __init__(self) -> None:
        self.pubs: list[PublicationContext] = []
        self.subscribed: list[SubscribedContext] = []
        self.unsubscribed: list[UnsubscribedContext] = []
        self.joins: list[JoinContext] = []
        self.leaves: list[LeaveContext] = []

    async def on_publication(self, ctx: PublicationContext) -> None:
        self.pubs.append(ctx)

    async def on_subscribed(self, ctx: SubscribedContext) -> None:
        self.subscribed.append(ctx)

    async def on_unsubscribed(self, ctx: UnsubscribedContext) -> None:
        self.unsubscribed.append(ctx)

    async def on_join(self, ctx: JoinContext) -> None:
        self.joins.append(ctx)

    async def on_leave(self, ctx: LeaveContext) -> None:
        self.leaves.append(ctx)

    def data(self) -> list[Any]:
        return [p.pub.data for p in self.pubs]

    def offsets(self) -> list[int]:
        return [p.pub.offset for p in self.pubs]


async def subscribed(client: Client, channel: str, **kwargs: Any) -> tuple[Subscription, SubEvents]:
    """A centrifuge-python subscription of ``client`` to ``channel``, subscribed and ready."""
    events = SubEvents()
    sub = client.new_subscription(channel, events, **kwargs)
    await sub.subscribe()
    await sub.ready(WITHIN)
    return sub, events


class SdkClients:
    """The centrifuge-python clients of one test on the endpoint at ``ws_url``; ``disconnect_all`` ends them."""

    def __init__(self, ws_url: str = "") -> None:
        self.ws_url = ws_url
        self.clients: list[Client] = []

    def client(self, tok: str = "", **kwargs: Any) -> tuple[Client, ClientEvents]:
        events = ClientEvents()
        kwargs.setdefault("max_reconnect_delay", 0.5)
        client = Client(self.ws_url, events=events, token=tok, proxy=None, timeout=WITHIN, **kwargs)
        self.clients.append(client)
        return client, events

    async def connected(self, tok: str = "", **kwargs: Any) -> tuple[Client, ClientEvents]:
        client, events = self.client(tok, **kwargs)
        await client.connect()
        await client.ready(WITHIN)
        return client, events

    async def disconnect_all(self) -> None:
        for client in self.clients:
            await client.disconnect()
