"""The Redis broker: gateway instances that share one Redis share topics, ids, history and presence.

Each instance holds four connections: the outbox's, which carries every PUBLISH and
numbering script, as many per round trip as were made meanwhile (``redis_outbox.py``); a
small pool for the other commands (history, replay, presence); one for the health PING
every half second and the presence refreshes, which no burst of commands can hold up; and
one pub/sub connection read by a listener task. The listener (``redis_pubsub.py``)
notices a dropped or silent pub/sub connection, reconnects with backoff (0.1 s doubling
to 1 s) and subscribes again to every channel this instance still needs. Commands fail
fast with ``BrokerError``: 1 s timeouts, one retry after a connection error (none after a
timeout, since the command may have run), and no attempt at all while the health
PING says Redis is unreachable. A burst of more commands than the pool has connections
queues for one within that time instead of failing at once. ``start()`` raises
``BrokerError`` when Redis cannot be reached, so a gateway never starts without the
broker it was configured with.

What a Redis outage loses. Redis pub/sub is fire-and-forget and nothing is queued:

- messages published while Redis is down, or while this instance's own subscription
  is being restored (Redis is back, the listener is not yet), reach only the publishing
  instance's own subscribers (the hub delivers them locally; numbered ones carry
  ``"id": null``): none is numbered and stored without reaching its own instance;
- messages published by others while this instance's subscription is reconnecting
  never reach this instance, even if Redis itself stayed up;
- a Redis restarted without persistence has forgotten presence, history and the
  counters, so ids start again from 1.

What keeps working: delivery between clients of the same instance, and every open
WebSocket connection (the broker never closes one). ``healthy`` (and so ``/readyz``)
is False while either connection is known to be down, and True again once both are
back and every subscription is restored.

Keys, next to the channel name ``C``: ``C:seq`` (the counter), ``C:history`` (a list
capped at ``keep``) and ``C:epoch`` (the life of the id sequence), all expiring
``keep_for`` after the last numbered publish. Presence uses the keys the caller passes:
each a sorted set of members scored by when they expire (Redis ``TIME``, in ms), so no
instance's clock matters. Every instance refreshes the members it holds every ttl/3 in
one pipeline; after an outage, or a refresh more than a ttl late, it also puts back the
ones Redis lost (a restart without persistence) or reaped. The members of an instance
that died without cleanup expire ttl after its last refresh, and ``reap`` removes them.
A presence key itself expires twice the ttl after its last claim or refresh.
Connections are named ``wsgate-cmd-PID``, ``wsgate-ping-PID`` and ``wsgate-sub-PID``
in ``CLIENT LIST``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError

from ..errors import BrokerError
from ..observe.redact import redact_url
from .base import DEFAULT_TTL, Broker, Delivery, Holdings, Replay, check_ttl, new_epoch
from .redis_outbox import Outbox
from .redis_pubsub import _ERRORS, RedisSubscriber, _text
from .redis_scripts import CLAIM, KEEP, LIVE, NUMBERED, REPLAY

__all__ = ["RedisBroker"]

log = logging.getLogger("wsgate.broker.redis")
T = TypeVar("T")

# Once more on a new connection after a connection error: for PING and the presence
# refresh, which are safe to repeat.
FRESH_CONNECTION_RETRY = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
_NUMBERED_SHA = hashlib.sha1(NUMBERED.encode()).hexdigest()
_REFRESH_BATCH = 256  # presence keys per pipelined round trip
_REAP_GRACE = 3.0  # seconds after Redis is back during which reap() removes nothing

def _keys(channel: str) -> list[str]:
    """The counter, history and epoch of a numbered channel."""
    return [f"{channel}:seq", f"{channel}:history", f"{channel}:epoch"]


class RedisBroker(Broker):
    """Pub/sub, numbered messages, history and presence in a shared Redis.

    ``timeout`` bounds connecting and each reply (seconds); ``ping_interval`` is how
    often the command connection is checked; ``max_connections`` caps the command pool.
    """

    name = "redis"

    def __init__(self, url: str, *, timeout: float = 1.0, ping_interval: float = 0.5,
                 max_connections: int = 64) -> None:
        self.url = url
        self.shown_url = redact_url(url)
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._max_connections = max_connections
        self._client: Redis | None = None
        self._ping_client: Redis | None = None
        self._replay: AsyncScript | None = None
        self._claim: AsyncScript | None = None
        self._keep: AsyncScript | None = None
        self._live: AsyncScript | None = None
        self._holdings = Holdings()
        self._members_asked: dict[str, asyncio.Future[list[str]]] = {}  # reads not sent yet
        self._reads: set[asyncio.Task[None]] = set()
        self._next_refresh = 0.0  # loop time of the next presence refresh (by the health check)
        self._last_refresh = 0.0  # loop time of the last one that succeeded
        self._restore = False  # the next refresh puts back what Redis lost
        self._back_at = -math.inf  # loop time Redis was last reachable again after an outage
        self._subscriber = RedisSubscriber(self.shown_url, timeout)
        # A publish sent on a new connection may reach a restarted Redis before the
        # listener has noticed the restart: the outbox asks the pub/sub connection first.
        self._outbox = Outbox(self._run, [NUMBERED], answering=self._subscriber.answering)
        # Every numbered publish carries the epoch to set if its channel has none: one
        # random part per broker and a counter, so that costs no system call each.
        self._epoch_base, self._epochs = new_epoch(), itertools.count(1)
        self._commands_up = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ---

    async def start(self) -> None:
        """Connect both connections; raise BrokerError naming the URL if Redis is unreachable."""
        try:
            # One retry, and only after a connection error: a command that timed out may
            # have run, and running PUBLISH or the numbering script twice is worse than failing.
            retry = Retry(ExponentialBackoff(cap=0.2, base=0.05), 1, supported_errors=(RedisConnectionError,))
            self._client = self._make_client("cmd", retry, pooled=True)
            self._subscriber.client = self._make_client("sub", Retry(NoBackoff(), 0), pooled=False)
            # Its own connection: a pool busy with a burst of commands is not an outage. And
            # one retry on a new connection: one that a restarted Redis closed is not one either.
            self._ping_client = self._make_client("ping", FRESH_CONNECTION_RETRY, pooled=False)
        except ValueError as exc:
            await self._close_clients()
            raise BrokerError(f"bad Redis URL {self.shown_url}: {exc}") from None
        try:
            async with asyncio.timeout(self._timeout * 3):
                await self._client.ping()
                await self._client.script_load(NUMBERED)  # the outbox sends EVALSHA only
                pubsub = await self._subscriber.open()
        except _ERRORS as exc:
            await self._close_clients()
            raise BrokerError(f"cannot reach Redis at {self.shown_url}: {exc or 'timed out'}") from exc
        self._commands_up = True
        self._last_refresh = asyncio.get_running_loop().time()
        self._replay = self._client.register_script(REPLAY)
        self._claim = self._client.register_script(CLAIM)
        self._keep = self._client.register_script(KEEP)
        self._live = self._client.register_script(LIVE)
        loop = asyncio.get_running_loop()
        # Publishes wait for the subscription's first PONG (nothing is numbered that this
        # instance would not hear): start returns once the broker can publish.
        up = self._subscriber.when_up()
        self._tasks = [
            loop.create_task(self._subscriber.listen(pubsub), name="wsgate redis listener"),
            loop.create_task(self._watch(), name="wsgate redis health"),
        ]
        try:
            async with asyncio.timeout(self._timeout * 3):
                await up
        except TimeoutError:
            await self.close()
            raise BrokerError(f"cannot reach Redis at {self.shown_url}: no answer on its pub/sub connection") from None
        log.info("broker: Redis at %s", self.shown_url)

    async def close(self) -> None:
        """Stop the listener, the health check and presence refreshes, then close every connection.

        Members still held are not removed: they expire within their ttl.
        """
        self._closed = True
        self._subscriber.closed = True
        await self._outbox.close()
        # The loops also stop on those flags: on Python 3.11 a cancellation that arrives
        # as a timeout inside redis-py expires can come out as TimeoutError, which the
        # loops take for a Redis failure and carry on.
        tasks = [*self._tasks, *self._reads]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for pending in self._members_asked.values():  # reads cancelled before they started
            pending.set_exception(BrokerError("presence members: the Redis broker closed"))
            pending.exception()
        self._members_asked.clear()
        self._tasks = []
        self._subscriber.forget_expected()
        await self._close_clients()
        self._commands_up = self._subscriber.up = False

    @property
    def healthy(self) -> bool:
        """True while both the command and the pub/sub connection work."""
        return self._commands_up and self._subscriber.up and not self._closed

    def _make_client(self, role: str, retry: Retry, *, pooled: bool) -> Redis:
        options: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "retry": retry,
            "client_name": f"wsgate-{role}-{os.getpid()}",
        }
        if not pooled:
            return Redis.from_url(self.url, **options)
        # No wait limit of its own: _run bounds the wait and the command together.
        pool = BlockingConnectionPool.from_url(self.url, max_connections=self._max_connections,
                                               timeout=None, **options)
        return Redis.from_pool(pool)

    async def _close_clients(self) -> None:
        for client in (self._client, self._subscriber.client, self._ping_client):
            if client is not None:
                try:
                    await client.aclose()
                except _ERRORS as exc:
                    log.debug("closing a Redis client: %s", exc)
        self._client = self._subscriber.client = self._ping_client = None

    # --- the pub/sub connection: RedisSubscriber ---

    async def subscribe(self, channel: str, deliver: Delivery) -> None:
        """Deliver ``channel``'s messages to ``deliver``; returns once Redis confirmed,
        also while the pub/sub connection is being restored (within ``timeout``): a join
        reads the history after this, and nothing may fall between the two."""
        await self._subscriber.subscribe(channel, deliver, through_reconnect=True)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``; never raises."""
        await self._subscriber.unsubscribe(channel)

    # --- the command connection ---

    async def _watch(self) -> None:
        """PING the command connection every ``ping_interval`` to keep ``healthy`` current,
        and refresh the presence members held here every ttl/3 (the shortest ttl held)."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self._ping_interval
        while not self._closed:  # not only cancellation: see close()
            wake = next_ping
            shortest = self._holdings.shortest()
            if shortest is not None and self._commands_up:
                wake = min(wake, self._next_refresh)
            await asyncio.sleep(max(0.0, wake - loop.time()))
            if loop.time() >= next_ping:
                await self._ping()
                next_ping = loop.time() + self._ping_interval
            shortest = self._holdings.shortest()
            if shortest is None:
                self._last_refresh = loop.time()  # nothing held, so nothing can be late
            elif self._commands_up and loop.time() >= self._next_refresh:
                self._next_refresh = loop.time() + shortest / 3
                try:
                    await self._refresh()
                except BrokerError as exc:
                    log.warning("presence refresh failed, retrying: %s", exc)
                    self._next_refresh = loop.time() + min(self._ping_interval, shortest / 3)

    async def _ping(self) -> None:
        assert self._ping_client is not None
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._ping_client.ping()
        except _ERRORS as exc:
            if self._commands_up:
                log.warning("Redis at %s is unreachable (%s); delivering locally only until it is back",
                            self.shown_url, exc or "timed out")
            self._commands_up = False
        else:
            if not self._commands_up:
                log.info("Redis at %s is reachable again", self.shown_url)
                self._next_refresh = 0.0  # at once: before anyone reaps what expired meanwhile
                self._restore = True
                self._back_at = asyncio.get_running_loop().time()
            self._commands_up = True

    async def _run(self, what: str, command: Callable[[Redis], Awaitable[T]], *, keepalive: bool = False) -> T:
        """Run one command; any failure becomes BrokerError within about twice ``timeout``.

        Waiting for a free pooled connection counts in that time, and is not itself a
        failure: a burst of commands queues. With ``keepalive``, the command goes on the
        health check's own connection instead, so that no burst can delay it.
        """
        client = self._ping_client if keepalive else self._client
        if client is None or self._closed:
            raise BrokerError(f"{what}: the Redis broker is not running")
        if not self._commands_up:
            raise BrokerError(f"{what}: Redis at {self.shown_url} is unreachable")
        try:
            async with asyncio.timeout(self._timeout * 2):
                return await command(client)
        except _ERRORS as exc:
            raise BrokerError(f"{what} on Redis at {self.shown_url} failed: {exc or 'timed out'}") from exc

    # PUBLISH and the numbering script go through the outbox: several per round trip, in
    # the order they were made (see redis_outbox.py).

    async def publish(self, channel: str, payload: bytes) -> None:
        await self.post(channel, payload)

    def post(self, channel: str, payload: bytes) -> asyncio.Future[None]:
        return self._post("PUBLISH", "PUBLISH", channel, payload)

    async def publish_numbered(self, channel: str, head: bytes, tail: bytes, keep: int,
                               keep_for: float = 0.0) -> int:
        return await self.post_numbered(channel, head, tail, keep, keep_for)

    def post_numbered(self, channel: str, head: bytes, tail: bytes, keep: int,
                      keep_for: float = 0.0) -> asyncio.Future[int]:
        return self._post("numbered PUBLISH", "EVALSHA", _NUMBERED_SHA, 3, *_keys(channel), head, tail,
                          max(keep, 0), channel, round(keep_for * 1000), self._new_epoch(), parse=int)

    def _new_epoch(self) -> str:
        return f"{self._epoch_base}.{next(self._epochs)}"

    @property
    def backlog(self) -> int:
        return self._outbox.backlog

    def _post(self, what: str, *command: Any, parse: Callable[[Any], Any] | None = None) -> asyncio.Future[Any]:
        """Queue a command for the next round trip; BrokerError at once if it cannot go."""
        if self._client is None or self._closed:
            raise BrokerError(f"{what}: the Redis broker is not running")
        if not self._commands_up:
            raise BrokerError(f"{what}: Redis at {self.shown_url} is unreachable")
        if not self._subscriber.up:
            # Redis would number and store it, and publish it to no subscriber here.
            raise BrokerError(f"{what}: the subscription of this instance to Redis at {self.shown_url} "
                              "is being restored")
        return self._outbox.put(what, *command, parse=parse)

    async def history(self, channel: str, limit: int) -> list[bytes]:
        if limit <= 0:
            return []

        async def run(r: Redis) -> list[bytes]:
            items = await r.lrange(f"{channel}:history", -limit, -1)
            return [item if isinstance(item, bytes) else item.encode() for item in items]

        return await self._run("LRANGE", run)

    async def replay(self, channel: str, since: int | None, epoch: str | None, limit: int,
                     keep_for: float = 0.0, *, max_bytes: int = 0) -> Replay:
        script = self._replay

        async def run(r: Redis) -> Replay:
            assert script is not None
            current, latest, recovered, items = await script(
                keys=_keys(channel),
                args=[-1 if since is None else since, epoch or "", max(limit, 0), self._new_epoch(),
                      round(keep_for * 1000), max(max_bytes, 0)],
                client=r,
            )
            payloads = [item if isinstance(item, bytes) else item.encode() for item in items]
            return Replay(_text(current), int(latest), bool(recovered), payloads)

        return await self._run("history replay", run)

    # --- presence ---

    async def claim(self, key: str, member: str, ttl: float = DEFAULT_TTL) -> bool:
        return await self._take(key, member, check_ttl(ttl), claim=True)

    async def hold(self, key: str, member: str, ttl: float = DEFAULT_TTL) -> bool:
        return await self._take(key, member, check_ttl(ttl), claim=False)

    async def _take(self, key: str, member: str, ttl: float, *, claim: bool) -> bool:
        script = self._claim

        async def run(r: Redis) -> bool:
            assert script is not None
            return bool(await script(keys=[key], args=[member, _ms(ttl), "1" if claim else "0"], client=r))

        taken = await self._run("presence claim" if claim else "presence hold", run)
        if taken and self._holdings.add(key, member, ttl):
            # Shorter than every ttl held so far: the next refresh may be due sooner.
            self._next_refresh = min(self._next_refresh, asyncio.get_running_loop().time() + ttl / 3)
        return taken

    async def drop(self, key: str, member: str) -> None:
        self._holdings.drop(key, member)

    async def release(self, key: str, member: str) -> bool:
        # Forgotten first: if ZREM fails (an outage, a burst), the member is no longer
        # refreshed and expires within its ttl instead of staying for good.
        self._holdings.forget(key, member)

        async def run(r: Redis) -> bool:
            return int(await r.zrem(key, member)) == 1

        return await self._run("ZREM", run)

    async def members(self, key: str) -> list[str]:
        # Callers that ask in the same loop pass share one read, sent after all of them
        # asked: a burst of leaves (release, then members) costs one read per pass.
        pending = self._members_asked.get(key)
        if pending is None:
            loop = asyncio.get_running_loop()
            pending = self._members_asked[key] = loop.create_future()
            task = loop.create_task(self._read_members(key, pending), name="wsgate presence read")
            self._reads.add(task)
            task.add_done_callback(self._reads.discard)
        return list(await asyncio.shield(pending))

    async def _read_members(self, key: str, pending: asyncio.Future[list[str]]) -> None:
        del self._members_asked[key]  # who asks from now on gets a read sent after asking
        script = self._live

        async def run(r: Redis) -> list[str]:
            assert script is not None
            return sorted(_text(m) for m in await script(keys=[key], client=r))

        try:
            pending.set_result(await self._run("presence members", run))
        except BaseException as exc:
            closing = isinstance(exc, asyncio.CancelledError)
            pending.set_exception(BrokerError("presence members: the Redis broker closed") if closing else exc)
            pending.exception()  # retrieved: the callers may all be gone
            if not isinstance(exc, BrokerError):
                raise

    async def reap(self, key: str) -> list[str]:
        script = self._keep
        held = self._holdings.of(key)
        # Just after an outage, every member may have expired while nobody could refresh
        # it: the other instances put theirs back first (they are back at about the same time).
        reaping = "1" if asyncio.get_running_loop().time() - self._back_at >= _REAP_GRACE else "0"

        async def run(r: Redis) -> list[str]:
            assert script is not None
            _, *gone = await script(keys=[key], args=[reaping, "0", *_pairs(held)], client=r)
            return sorted(_text(m) for m in gone)

        return await self._run("presence reap", run)

    async def _refresh(self) -> None:
        """Push every held member's expiry to its ttl from now.

        A member a pass finds absent was released while the pass was on its way (the
        pass listed it before the release), or lost: Redis restarted empty, the key was
        deleted, or it expired and was reaped. Putting back the first kind would undo a
        release, so a pass puts members back only when a loss is likely: after Redis was
        unreachable, when the pass comes more than a ttl after the last one, or right
        after a pass that found members absent (by then the released ones are no longer
        held, so they are not listed).
        """
        holdings = self._holdings
        loop = asyncio.get_running_loop()
        shortest = holdings.shortest() or 0.0
        restore = self._restore or loop.time() - self._last_refresh > shortest
        batch = [(key, _pairs(holdings.of(key))) for key in holdings]
        absent = await self._keep_held(batch, ["0", "1" if restore else "0"])
        self._last_refresh = loop.time()
        self._restore = False
        if restore and absent:
            log.info("put back %d presence member(s) that Redis had lost or reaped", absent)
        elif absent:
            # Released while this pass was on its way, or lost (a Redis restarted empty
            # between two health checks, a deleted key): a pass at once puts back those
            # still held then.
            self._restore = True
            self._next_refresh = 0.0

    async def _keep_held(self, batch: list[tuple[str, list[str | int]]], flags: list[str]) -> int:
        """Run the keeping script with ``flags`` for each (key, member/ttl pairs) of ``batch``,
        pipelined; how many held members were absent."""
        script = self._keep

        async def run(r: Redis, part: list[tuple[str, list[str | int]]]) -> int:
            assert script is not None
            pipe = r.pipeline(transaction=False)
            for key, pairs in part:
                await script(keys=[key], args=[*flags, *pairs], client=pipe)
            replies = await pipe.execute()
            return sum(int(reply[0]) for reply in replies)

        absent = 0
        for start in range(0, len(batch), _REFRESH_BATCH):
            part = batch[start:start + _REFRESH_BATCH]
            absent += await self._run("presence refresh", functools.partial(run, part=part), keepalive=True)
        return absent


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _pairs(held: dict[str, float]) -> list[str | int]:
    """``member, ttl in ms, member, ttl in ms...`` for the presence scripts."""
    return [item for member, ttl in held.items() for item in (member, _ms(ttl))]
