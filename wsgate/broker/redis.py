"""The Redis broker: gateway instances that share one Redis share topics, ids, history and presence.

Each instance holds two kinds of connection: a small pool for commands (PUBLISH, the
numbering script, history, presence, a health PING every half second) and one
pub/sub connection read by a listener task. The listener (``redis_pubsub.py``) notices a
dropped or silent pub/sub connection, reconnects with backoff (0.1 s doubling to 1 s)
and subscribes again to every channel this instance still needs. Commands fail fast with
``BrokerError``: 1 s timeouts, one retry after a connection error (none after a
timeout, since the command may have run), and no attempt at all while the health
PING says Redis is unreachable. ``start()`` raises ``BrokerError`` when Redis cannot be
reached, so a gateway never starts without the broker it was configured with.

What a Redis outage loses. Redis pub/sub is fire-and-forget and nothing is queued:

- messages published while Redis is down reach only the publishing instance's own
  subscribers (the hub delivers them locally; numbered ones carry ``"id": null``);
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
``keep_for`` after the last numbered publish; presence
sets use the keys the caller passes. Connections are
named ``wsgate-cmd-PID`` and ``wsgate-sub-PID`` in ``CLIENT LIST``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError

from ..errors import BrokerError
from .base import Broker, Delivery, Replay, new_epoch
from .redis_pubsub import _ERRORS, RedisSubscriber, _text

__all__ = ["RedisBroker", "redact_url"]

log = logging.getLogger("wsgate.broker.redis")
T = TypeVar("T")

# INCR, append to the capped history, PUBLISH: one atomic step, so every subscriber
# sees the numbers of a channel in increasing order, whichever instance published.
# The epoch (KEYS[3]) is set only if absent: a subscriber that joined the channel before
# its first message was given the epoch its ids will belong to. All three keys live and
# die together, so a lost counter always comes with a new epoch.
_NUMBERED = """
local n = redis.call('INCR', KEYS[1])
local payload = ARGV[1] .. string.format('%d', n) .. ARGV[2]
local keep = tonumber(ARGV[3])
if keep > 0 then
  redis.call('RPUSH', KEYS[2], payload)
  redis.call('LTRIM', KEYS[2], -keep, -1)
end
redis.call('SET', KEYS[3], ARGV[6], 'NX')
local keep_for = tonumber(ARGV[5])
if keep_for > 0 then
  redis.call('PEXPIRE', KEYS[1], keep_for)
  redis.call('PEXPIRE', KEYS[2], keep_for)
  redis.call('PEXPIRE', KEYS[3], keep_for)
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[3])
end
redis.call('PUBLISH', ARGV[4], payload)
return n
"""

# Epoch (created if absent), latest id, and the payloads after ARGV[1] when the client's
# epoch (ARGV[2]) matches and all of them are kept, else the last ARGV[3]: one atomic read.
_REPLAY = """
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[4]
  local keep_for = tonumber(ARGV[5])
  if keep_for > 0 then
    redis.call('SET', KEYS[3], epoch, 'PX', keep_for)
  else
    redis.call('SET', KEYS[3], epoch)
  end
end
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local len = redis.call('LLEN', KEYS[2])
local since = tonumber(ARGV[1])
if since >= 0 and ARGV[2] == epoch and since <= n and since + 1 >= n - len + 1 then
  if since == n then
    return {epoch, n, 1, {}}
  end
  return {epoch, n, 1, redis.call('LRANGE', KEYS[2], len - (n - since), -1)}
end
local limit = tonumber(ARGV[3])
if limit <= 0 then
  return {epoch, n, 0, {}}
end
return {epoch, n, 0, redis.call('LRANGE', KEYS[2], -limit, -1)}
"""

_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#@]*)@")
_SECRET_QUERY = re.compile(r"(?i)([?&]password=)[^&#]*")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and error messages."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(_hide_password, url, count=1))


def _hide_password(match: re.Match[str]) -> str:
    user, colon, _ = match.group(2).partition(":")
    return f"{match.group(1)}{user}:***@" if colon else f"{match.group(1)}***@"


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
        self._numbered: AsyncScript | None = None
        self._replay: AsyncScript | None = None
        self._subscriber = RedisSubscriber(self.shown_url, timeout)
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
            # Its own connection: a pool busy with a burst of commands is not an outage.
            self._ping_client = self._make_client("ping", Retry(NoBackoff(), 0), pooled=False)
        except ValueError as exc:
            await self._close_clients()
            raise BrokerError(f"bad Redis URL {self.shown_url}: {exc}") from None
        try:
            async with asyncio.timeout(self._timeout * 3):
                await self._client.ping()
                pubsub = await self._subscriber.open()
        except _ERRORS as exc:
            await self._close_clients()
            raise BrokerError(f"cannot reach Redis at {self.shown_url}: {exc or 'timed out'}") from exc
        self._commands_up = True
        self._numbered = self._client.register_script(_NUMBERED)
        self._replay = self._client.register_script(_REPLAY)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._subscriber.listen(pubsub), name="wsgate redis listener"),
            loop.create_task(self._watch(), name="wsgate redis health"),
        ]
        log.info("broker: Redis at %s", self.shown_url)

    async def close(self) -> None:
        """Stop the listener and the health check, then close every connection."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
        pool = BlockingConnectionPool.from_url(self.url, max_connections=self._max_connections,
                                               timeout=self._timeout, **options)
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
        """Deliver ``channel``'s messages to ``deliver``; see ``RedisSubscriber.subscribe``."""
        await self._subscriber.subscribe(channel, deliver)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``; never raises."""
        await self._subscriber.unsubscribe(channel)

    # --- the command connection ---

    async def _watch(self) -> None:
        """PING the command connection every ``ping_interval`` to keep ``healthy`` current."""
        while True:
            await asyncio.sleep(self._ping_interval)
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
                self._commands_up = True

    async def _run(self, what: str, command: Callable[[Redis], Awaitable[T]]) -> T:
        """Run one command; any failure becomes BrokerError within about twice ``timeout``."""
        client = self._client
        if client is None or self._closed:
            raise BrokerError(f"{what}: the Redis broker is not running")
        if not self._commands_up:
            raise BrokerError(f"{what}: Redis at {self.shown_url} is unreachable")
        try:
            async with asyncio.timeout(self._timeout * 2):
                return await command(client)
        except _ERRORS as exc:
            raise BrokerError(f"{what} on Redis at {self.shown_url} failed: {exc or 'timed out'}") from exc

    async def publish(self, channel: str, payload: bytes) -> None:
        async def run(r: Redis) -> None:
            await r.publish(channel, payload)

        await self._run("PUBLISH", run)

    async def publish_numbered(self, channel: str, head: bytes, tail: bytes, keep: int,
                               keep_for: float = 0.0) -> int:
        script = self._numbered

        async def run(r: Redis) -> int:
            assert script is not None
            number = await script(keys=_keys(channel),
                                  args=[head, tail, max(keep, 0), channel, round(keep_for * 1000), new_epoch()],
                                  client=r)
            return int(number)

        return await self._run("numbered PUBLISH", run)

    async def history(self, channel: str, limit: int) -> list[bytes]:
        if limit <= 0:
            return []

        async def run(r: Redis) -> list[bytes]:
            items = await r.lrange(f"{channel}:history", -limit, -1)
            return [item if isinstance(item, bytes) else item.encode() for item in items]

        return await self._run("LRANGE", run)

    async def replay(self, channel: str, since: int | None, epoch: str | None, limit: int,
                     keep_for: float = 0.0) -> Replay:
        script = self._replay

        async def run(r: Redis) -> Replay:
            assert script is not None
            current, latest, recovered, items = await script(
                keys=_keys(channel),
                args=[-1 if since is None else since, epoch or "", max(limit, 0), new_epoch(), round(keep_for * 1000)],
                client=r,
            )
            payloads = [item if isinstance(item, bytes) else item.encode() for item in items]
            return Replay(_text(current), int(latest), bool(recovered), payloads)

        return await self._run("history replay", run)

    async def claim(self, key: str, member: str) -> bool:
        async def run(r: Redis) -> bool:
            return int(await r.sadd(key, member)) == 1

        return await self._run("SADD", run)

    async def release(self, key: str, member: str) -> None:
        async def run(r: Redis) -> None:
            await r.srem(key, member)

        await self._run("SREM", run)

    async def members(self, key: str) -> list[str]:
        async def run(r: Redis) -> list[str]:
            return sorted(_text(m) for m in await r.smembers(key))

        return await self._run("SMEMBERS", run)
