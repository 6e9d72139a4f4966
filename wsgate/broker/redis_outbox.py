"""Publishes to Redis in batches: what is published during one round trip goes in the next.

A chat message costs one EVALSHA (numbering, history, PUBLISH). Sent one at a time, a
sender with 16 messages in flight waits for 16 round trips, and every other instance
receives and fans out the messages one by one. The outbox sends every publish made while
the previous batch was on its way as one pipeline (no MULTI: each command is atomic on its
own, and the numbering script is one command). Batches go one after another, so the
publishes of this instance reach Redis in the order they were made: a sender's messages
keep their order, and the ids of a channel follow it on every instance.

The outbox has a connection of its own and writes each batch with one call, reading the
replies one by one: a redis-py pipeline costs several times that per command. As with every
command of the broker, a batch that fails on a connection error before any reply is sent
once more on a new connection; after a timeout it is not, since it may have run. A failed
batch fails each of its publishes with ``BrokerError``. A command Redis answered
NOSCRIPT did not run (its script cache was flushed, or Redis restarted between two health
checks): the scripts are loaded again and those commands sent once more, in order, right
after the rest of their batch.

A new connection (the first, or one made again after a failure) may reach a Redis that
restarted since the broker's pub/sub connection last heard from it. With ``answering``,
the outbox first asks that connection to answer a PING: a publish to a Redis where this
instance is not subscribed would be numbered, stored and shown to nobody here. When it
does not answer, the batch fails (and the hub delivers it locally).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..errors import BrokerError
from .redis_typing import untyped

__all__ = ["MAX_BATCH", "Outbox"]

MAX_BATCH = 512  # commands per round trip; more wait for the next one
Run = Callable[[str, Callable[[Redis], Awaitable[list[Any]]]], Awaitable[list[Any]]]


@dataclass(slots=True)
class _Queued:
    what: str
    command: tuple[Any, ...]
    result: asyncio.Future[Any]
    parse: Callable[[Any], Any] | None = None


class Outbox:
    """Commands sent in call order, as many per round trip as were queued meanwhile.

    ``run`` is the broker's way to run something against Redis (with its timeout, and its
    errors as ``BrokerError``); ``scripts`` are the Lua bodies the queued EVALSHA commands
    refer to, for loading them again after a NOSCRIPT. ``answering``, if given, is asked
    after each new connection is made and before anything is sent on it: False fails
    the batch.
    """

    def __init__(self, run: Run, scripts: Sequence[str], *,
                 answering: Callable[[], Awaitable[bool]] | None = None) -> None:
        self._run = run
        self._scripts = tuple(scripts)
        self._answering = answering
        self._queued: list[_Queued] = []
        self._sender: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None

    @property
    def backlog(self) -> int:
        """Commands waiting for a round trip (not those on their way)."""
        return len(self._queued)

    def put(self, what: str, *command: Any, parse: Callable[[Any], Any] | None = None) -> asyncio.Future[Any]:
        """Queue ``command``; the future gives Redis's reply (through ``parse``), or ``BrokerError``."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()
        self._queued.append(_Queued(what, command, result, parse))
        if self._sender is None:
            self._sender = loop.create_task(self._send_all(), name="wsgate redis outbox")
        return result

    async def close(self) -> None:
        """Stop sending; what is still queued fails with ``BrokerError``."""
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        self._sender = None
        self._fail(self._queued, BrokerError("the Redis broker closed"))
        self._queued = []
        if self._connection is not None:
            await self._connection.disconnect(nowait=True)
            self._connection = None

    async def _send_all(self) -> None:
        try:
            while self._queued:
                batch = self._queued[:MAX_BATCH]
                del self._queued[:MAX_BATCH]
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[_Queued]) -> None:
        replies = await self._attempt(f"{batch[0].what} (a batch of {len(batch)})", self._sending(batch), batch)
        again = []
        for queued, reply in zip(batch, replies or (), strict=False):
            if isinstance(reply, NoScriptError):
                again.append(queued)
            else:
                self._settle(queued, reply)
        if again:
            replies = await self._attempt("loading the Lua scripts again", self._reload_then(again), again)
            for queued, reply in zip(again, (replies or [])[len(self._scripts):], strict=False):
                self._settle(queued, reply)

    async def _attempt(self, what: str, send: Callable[[Redis], Awaitable[list[Any]]],
                       batch: list[_Queued]) -> list[Any] | None:
        """The replies, or None when the round trip failed (then so has every command of ``batch``)."""
        try:
            return await self._run(what, send)
        except BrokerError as exc:
            self._fail(batch, exc)
        except asyncio.CancelledError:
            self._fail(batch, BrokerError("the Redis broker closed"))
            raise
        return None

    @staticmethod
    def _settle(queued: _Queued, reply: Any) -> None:
        if queued.result.done():
            return
        if isinstance(reply, RedisError):
            queued.result.set_exception(BrokerError(f"{queued.what} on Redis failed: {reply}"))
            queued.result.exception()  # retrieved here: a caller that did not wait is told elsewhere
        else:
            queued.result.set_result(reply if queued.parse is None else queued.parse(reply))

    def _reload_then(self, again: list[_Queued]) -> Callable[[Redis], Awaitable[list[Any]]]:
        loads = [_Queued("SCRIPT LOAD", ("SCRIPT LOAD", body), again[0].result) for body in self._scripts]
        return self._sending([*loads, *again])

    def _sending(self, batch: list[_Queued]) -> Callable[[Redis], Awaitable[list[Any]]]:
        async def send(r: Redis) -> list[Any]:
            replies: list[Any] = []
            try:
                await self._write_and_read(r, batch, replies)
            except RedisConnectionError:
                if replies:
                    raise  # some ran: sending them again would repeat them
                await self._write_and_read(r, batch, replies)
            return replies

        return send

    async def _write_and_read(self, r: Redis, batch: list[_Queued], replies: list[Any]) -> None:
        """Send ``batch`` and append each reply to ``replies`` as it comes."""
        connection = self._connection
        if connection is None:
            connection = self._connection = untyped(r.connection_pool.make_connection)()
            # The batch has a deadline (the broker's run()); a timer per write costs a task.
            connection.socket_timeout = None
        try:
            if not connection.is_connected and self._answering is not None:
                await connection.connect()
                if not await self._answering():
                    raise BrokerError("the pub/sub connection of this instance did not answer after a "
                                      "command connection was made again: Redis may have restarted")
            await connection.send_packed_command(connection.pack_commands([q.command for q in batch]),
                                                 check_health=False)
            for _ in batch:
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as exc:  # this command's error; the next reply follows
                    replies.append(exc)
        except BaseException:
            await connection.disconnect(nowait=True)
            raise

    @staticmethod
    def _fail(batch: list[_Queued], exc: BrokerError) -> None:
        for queued in batch:
            if not queued.result.done():
                queued.result.set_exception(exc)
                queued.result.exception()
