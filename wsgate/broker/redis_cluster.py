"""The Redis Cluster broker: rooms spread over the masters of a cluster, one shard each.

``broker: redis+cluster://host:port,host:port,...`` (``rediss+cluster://`` for TLS,
``user:password@`` before the first node as in Redis URLs). The nodes listed are only
where the topology is first asked; every master is found from there.

Naming. Each room lives whole on one shard: its pub/sub channel is a *shard channel*
(SSUBSCRIBE/SPUBLISH, Redis 7 or later), and its counter, history, epoch and presence
keys share the channel's hash slot through a ``{...}`` hash tag, so that each Lua script
touches a single slot and can SPUBLISH from inside itself (in cluster mode a script may
only touch keys and shard channels of its own slot). The hub and the handlers keep
naming channels and presence keys as for one Redis (``wsgate:{path}:{topic}``,
``...:presence``); this broker alone turns each name into its cluster name, so the
single-Redis key names (and so rolling upgrades of single-Redis deployments) are
unchanged:

- the hash tag is the name after the ``wsgate:`` prefix, up to the first ``#`` or the
  end; a presence key's ``:presence`` suffix is left out of it. So ``/chat`` room
  ``lobby`` is the channel ``wsgate:{/chat:lobby}``, with the keys
  ``wsgate:{/chat:lobby}:seq``, ``:history``, ``:epoch`` and ``:presence``;
- topics that differ only after a ``#`` share the slot of the topic before it: chat's
  per-name owner sets (``lobby#owner:NAME``) and per-user tab sets (``lobby#tabs:USER``)
  become ``wsgate:{/chat:lobby}#owner:NAME:presence`` and so on. Handlers that keep
  presence beside a topic can rely on the same rule.

A room therefore depends on exactly one master: when that master is lost, its rooms
fail (chat answers new joins with close 1013) and the rooms of the other masters go on.

Connections. Publishes (SPUBLISH and the numbering script) go through an outbox per
master (``redis_outbox.py``): batched per round trip, in call order, so a room's messages
keep their order. The other commands (replay, history, presence) go through redis-py's
``RedisCluster`` client, which follows MOVED/ASK redirections; a command that failed on
a connection error is retried once after the topology was asked again, one that timed
out is not (it may have run). Each master also has a client of its own: for its outbox,
the health PING every ``ping_interval``, the presence refresh pipelines (grouped per
master, so one lost master does not hold up the others) and one sharded pub/sub connection,
kept by a ``RedisSubscriber`` that SSUBSCRIBEs to the channels of that master's slots.
When a slot moves (resharding, a replica promoted), Redis unsubscribes its channels;
the health check then asks the topology again and subscribes them where they live now.

Health. ``healthy`` (``/readyz``) is False while no master answers, and while any master
that holds a channel this instance is subscribed to (a room with a client here) is
unreachable or its pub/sub connection is down. A lost master whose rooms have no client
on this instance leaves it ready: it can serve every other room.

Commands for a key whose master the health check found unreachable fail at once with
``BrokerError``, without waiting for a timeout. Connections are named
``wsgate-cmd-PID`` and ``wsgate-node-PID`` in ``CLIENT LIST``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, NoScriptError, RedisClusterException, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import EncodableT, KeyT

from ..errors import BrokerError
from .base import DEFAULT_TTL, Delivery, Replay
from .cluster_url import parse_cluster_url
from .redis import FRESH_CONNECTION_RETRY, RedisBroker
from .redis_outbox import Outbox
from .redis_pubsub import _ERRORS, RedisSubscriber, _text
from .redis_scripts import CLAIM, KEEP, LIVE, NUMBERED, REPLAY

__all__ = ["RedisClusterBroker", "cluster_channel", "cluster_presence_key"]

log = logging.getLogger("wsgate.broker.redis")  # one logger name for every Redis broker
T = TypeVar("T")

_PREFIX = "wsgate:"
_PRESENCE = ":presence"  # the suffix LiveEndpoint gives presence keys
_TOPOLOGY_EVERY = 1.0  # seconds between two topology reads while something is off
_REFRESH_BATCH = 256  # presence keys per pipelined round trip
# RedisClusterException: what the cluster client raises besides RedisError (no node
# holds a slot, no node answered the topology request).
_CLUSTER_ERRORS = (*_ERRORS, RedisClusterException)

# The numbering script, publishing to the room's shard channel: SPUBLISH from inside a
# script is allowed when the channel hashes to the script's slot, which the tags ensure.
NUMBERED_SHARDED = NUMBERED.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
assert NUMBERED_SHARDED != NUMBERED
_NUMBERED_SHARDED_SHA = hashlib.sha1(NUMBERED_SHARDED.encode()).hexdigest()


def _tagged(name: str) -> str:
    prefix = _PREFIX if name.startswith(_PREFIX) else ""
    tag, sep, rest = name[len(prefix):].partition("#")
    return f"{prefix}{{{tag}}}{sep}{rest}"


def cluster_channel(channel: str) -> str:
    """The cluster name of a hub channel: ``wsgate:/chat:lobby`` -> ``wsgate:{/chat:lobby}``.

    Its ``:seq``, ``:history`` and ``:epoch`` keys are that name plus the suffix.
    """
    return _tagged(channel)


def cluster_presence_key(key: str) -> str:
    """The cluster name of a presence key, in the slot of the channel it belongs to:
    ``wsgate:/chat:lobby#owner:al:presence`` -> ``wsgate:{/chat:lobby}#owner:al:presence``."""
    if key.endswith(_PRESENCE):
        return _tagged(key[:-len(_PRESENCE)]) + _PRESENCE
    return _tagged(key)


class _ClusterClient(RedisCluster):
    # Retried after the topology was asked again: errors that mean the command did not
    # run. Not a timeout: PUBLISH or the numbering script may have run.
    ERRORS_ALLOW_RETRY = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]


class _SlotScript(AsyncScript):
    """A script that, missing from a master's cache, is loaded on that master only.

    ``AsyncScript`` would send SCRIPT LOAD to every master, which fails while any one
    of them is lost: the rooms of the others would fail with it.
    """

    async def __call__(self, keys: Sequence[KeyT] | None = None, args: Iterable[EncodableT] | None = None,
                       client: Redis | RedisCluster | None = None) -> Any:
        if not isinstance(client, RedisCluster) or not keys:
            return await super().__call__(keys, args, client)  # pipelines load their scripts themselves
        words = (*keys, *(args or ()))
        try:
            return await client.evalsha(self.sha, len(keys), *words)
        except NoScriptError:
            first = keys[0]
            master = client.get_node_from_key(first if isinstance(first, str) else bytes(first).decode())
            await client.execute_command("SCRIPT LOAD", self.script, target_nodes=master)
            return await client.evalsha(self.sha, len(keys), *words)


class ShardSubscriber(RedisSubscriber):
    """A ``RedisSubscriber`` on one master that uses sharded pub/sub (SSUBSCRIBE).

    ``moved`` collects the channels Redis unsubscribed on its own: their slot moved to
    another master.
    """

    def __init__(self, shown_url: str, timeout: float) -> None:
        super().__init__(shown_url, timeout)
        self.moved: set[str] = set()

    def _subscribe_command(self, pubsub: PubSub) -> Callable[..., Awaitable[Any]]:
        return pubsub.ssubscribe

    def _unsubscribe_command(self, pubsub: PubSub) -> Callable[..., Awaitable[Any]]:
        return pubsub.sunsubscribe

    def _handle(self, reply: Any) -> None:
        kind = reply[0] if isinstance(reply, list) and reply else reply
        if kind in (b"smessage", b"ssubscribe"):
            super()._handle([kind[1:], *reply[1:]])
        elif kind == b"sunsubscribe":
            channel = _text(reply[1])
            if channel in self._channels:  # not asked by unsubscribe(), which forgets it first
                self.moved.add(channel)
        else:
            super()._handle(reply)

    def channels(self) -> dict[str, Delivery]:
        """The channels subscribed here and their deliveries (a copy)."""
        return dict(self._channels)


@dataclass(eq=False)
class _Shard:
    """One master: its own client (PING, presence refresh, pub/sub) and its subscriber."""

    name: str
    client: Redis
    subscriber: ShardSubscriber
    outbox: Outbox
    reachable: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class RedisClusterBroker(RedisBroker):
    """``RedisBroker`` over a Redis Cluster: each room on the master of its hash slot.

    Options as for ``RedisBroker``; ``max_connections`` caps the commands in flight.
    """

    name = "redis-cluster"

    def __init__(self, url: str, *, timeout: float = 1.0, ping_interval: float = 0.5,
                 max_connections: int = 64) -> None:
        super().__init__(url, timeout=timeout, ping_interval=ping_interval, max_connections=max_connections)
        try:
            self._spec = parse_cluster_url(url)
        except ValueError as exc:
            raise BrokerError(f"bad Redis Cluster URL {self.shown_url}: {exc}") from None
        self._cluster: RedisCluster | None = None
        self._shards: dict[str, _Shard] = {}
        self._routes: dict[str, str | None] = {}  # cluster channel -> its master, None: unknown yet
        self._deliveries: dict[str, Delivery] = {}
        # The cluster client fails a command instead of queuing it when a master's pool is
        # full; this keeps the commands in flight within any one pool.
        self._gate = asyncio.Semaphore(max_connections)
        self._next_topology = 0.0

    # --- lifecycle ---

    def _options(self, role: str) -> dict[str, Any]:
        spec = self._spec
        return {"username": spec.username, "password": spec.password, "ssl": spec.tls,
                "socket_timeout": self._timeout, "socket_connect_timeout": self._timeout,
                "client_name": f"wsgate-{role}-{os.getpid()}"}

    async def start(self) -> None:
        """Read the topology and connect to every master; BrokerError if no node answers.

        A master that cannot be reached now is retried by the health check, as after an outage.
        """
        try:
            cluster = _ClusterClient(
                startup_nodes=[ClusterNode(host, port) for host, port in self._spec.nodes],
                require_full_coverage=False, max_connections=self._max_connections,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1), **self._options("cmd"))
        except (ValueError, *_CLUSTER_ERRORS) as exc:
            raise BrokerError(f"bad Redis Cluster URL {self.shown_url}: {exc}") from None
        self._cluster = cluster
        # The commands RedisBroker sends (scripts, LRANGE, ZREM) are the same on both clients.
        self._client = self._ping_client = cast(Redis, cluster)
        try:
            async with asyncio.timeout(self._timeout * 3):
                await cluster.initialize()
        except _CLUSTER_ERRORS as exc:
            await self._close_clients()
            raise BrokerError(f"cannot reach the Redis Cluster at {self.shown_url}: {exc or 'timed out'}") from exc
        shards = [self._shard(node) for node in cluster.get_primaries()]
        opened = await asyncio.gather(*(self._open(shard) for shard in shards))
        if not any(shard.reachable for shard in shards):
            await self._close_clients()
            raise BrokerError(f"cannot reach any master of the Redis Cluster at {self.shown_url}")
        self._commands_up = True
        loop = asyncio.get_running_loop()
        self._last_refresh = loop.time()
        self._replay = _SlotScript(cluster, REPLAY)
        self._claim = _SlotScript(cluster, CLAIM)
        self._keep = _SlotScript(cluster, KEEP)
        self._live = _SlotScript(cluster, LIVE)
        for shard, pubsub in zip(shards, opened, strict=True):
            self._listen(shard, pubsub)
        self._tasks = [loop.create_task(self._watch(), name="wsgate redis cluster health")]
        log.info("broker: Redis Cluster at %s (%d masters)", self.shown_url, len(shards))

    def _shard(self, node: ClusterNode) -> _Shard:
        """The shard of master ``node``, made (not yet connected) if new."""
        shard = self._shards.get(node.name)
        if shard is None:
            # One retry on a new connection, as for RedisBroker's health PING: a connection a
            # restarted master closed is not an outage.
            client = Redis(host=node.host, port=int(node.port), retry=FRESH_CONNECTION_RETRY, **self._options("node"))
            subscriber = ShardSubscriber(f"{self.shown_url} (master {node.name})", self._timeout)
            subscriber.client = client
            outbox = Outbox(functools.partial(self._run_on, node.name), [NUMBERED_SHARDED])
            shard = self._shards[node.name] = _Shard(node.name, client, subscriber, outbox)
        return shard

    async def _open(self, shard: _Shard) -> PubSub | None:
        try:
            async with asyncio.timeout(self._timeout * 3):
                pubsub = await shard.subscriber.open()
        except _ERRORS as exc:
            log.warning("Redis Cluster master %s is unreachable (%s)", shard.name, exc or "timed out")
            return None
        shard.reachable = True
        return pubsub

    def _listen(self, shard: _Shard, pubsub: PubSub | None) -> None:
        shard.task = asyncio.get_running_loop().create_task(
            shard.subscriber.listen(pubsub), name=f"wsgate redis listener {shard.name}")

    async def close(self) -> None:
        """Stop every listener, then as ``RedisBroker.close``."""
        tasks = [shard.task for shard in self._shards.values() if shard.task is not None]
        for shard in self._shards.values():
            shard.subscriber.closed = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for shard in self._shards.values():
            shard.subscriber.forget_expected()
            shard.subscriber.up = False
            await shard.outbox.close()
        await super().close()

    async def _close_clients(self) -> None:
        clients: list[Redis | RedisCluster] = [shard.client for shard in self._shards.values()]
        if self._cluster is not None:
            clients.append(self._cluster)
        for client in clients:
            try:
                await client.aclose()
            except _ERRORS as exc:
                log.debug("closing a Redis Cluster client: %s", exc)
        self._client = self._ping_client = self._cluster = None

    @property
    def healthy(self) -> bool:
        """True while some master answers and every master holding a channel subscribed
        here is reachable with its pub/sub connection up."""
        if self._closed or not self._commands_up:
            return False
        for name in set(self._routes.values()):
            shard = self._shards.get(name) if name is not None else None
            if shard is None or not (shard.reachable and shard.subscriber.up):
                return False
        return True

    # --- topology ---

    def _master_of(self, name: str) -> ClusterNode | None:
        """The master holding ``name``'s slot as last known, or None."""
        if self._cluster is None:
            return None
        try:
            return self._cluster.nodes_manager.get_node_from_slot(key_slot(name.encode()))
        except _CLUSTER_ERRORS:
            return None

    def _require(self, name: str, what: str) -> None:
        """BrokerError at once if the health check found ``name``'s master unreachable."""
        node = self._master_of(name)
        shard = self._shards.get(node.name) if node is not None else None
        if shard is not None and not shard.reachable:
            raise BrokerError(f"{what}: the Redis Cluster master {shard.name} holding {name} is unreachable")

    async def _ping(self) -> None:
        """PING every master; after a change, or while one is unreachable, read the
        topology again (at most every second) and move channels to their master."""
        shards = list(self._shards.values())
        await asyncio.gather(*(self._ping_shard(shard) for shard in shards))
        self._commands_up = any(shard.reachable for shard in shards)
        moved = any(shard.subscriber.moved for shard in shards)
        off = moved or None in self._routes.values() or not all(shard.reachable for shard in shards)
        loop = asyncio.get_running_loop()
        if off and loop.time() >= self._next_topology and self._cluster is not None:
            self._next_topology = loop.time() + _TOPOLOGY_EVERY
            try:
                async with asyncio.timeout(self._timeout * 2):
                    await self._cluster.nodes_manager.initialize()
            except _CLUSTER_ERRORS as exc:
                log.debug("reading the Redis Cluster topology failed: %s", exc)
            for shard in shards:
                shard.subscriber.moved.clear()
            await self._reroute()

    async def _ping_shard(self, shard: _Shard) -> None:
        try:
            async with asyncio.timeout(self._timeout * 2):
                await shard.client.ping()
        except _ERRORS as exc:
            if shard.reachable:
                log.warning("Redis Cluster master %s is unreachable (%s); its rooms deliver locally only "
                            "until it is back", shard.name, exc or "timed out")
            shard.reachable = False
        else:
            if not shard.reachable:
                log.info("Redis Cluster master %s is reachable", shard.name)
                # As RedisBroker after an outage: put back the presence it may have lost,
                # before anyone reaps what expired meanwhile.
                self._next_refresh = 0.0
                self._restore = True
                self._back_at = asyncio.get_running_loop().time()
            shard.reachable = True

    async def _reroute(self) -> None:
        """Subscribe every channel on the master that holds its slot now."""
        for channel, current in list(self._routes.items()):
            node = self._master_of(channel)
            if node is None or node.name == current:
                continue
            deliver = self._deliveries.get(channel)
            if deliver is None:
                continue
            log.info("Redis Cluster channel %s moves from master %s to %s", channel, current, node.name)
            if current is not None and current in self._shards:
                await self._shards[current].subscriber.unsubscribe(channel)
            shard = self._shard(node)
            if shard.task is None:
                self._listen(shard, None)
            self._routes[channel] = node.name
            await shard.subscriber.subscribe(channel, deliver)

    # --- pub/sub ---

    async def subscribe(self, channel: str, deliver: Delivery) -> None:
        """Deliver ``channel``'s messages to ``deliver`` from its master's shard channel.

        Returns once the master confirmed, or at once while it is unreachable (the
        subscriber subscribes when it is back). Never raises.
        """
        name = cluster_channel(channel)
        self._deliveries[name] = deliver
        node = self._master_of(name)
        if node is None:
            self._routes[name] = None  # the health check routes it
            return
        shard = self._shard(node)
        if shard.task is None:
            self._listen(shard, None)
        self._routes[name] = node.name
        await shard.subscriber.subscribe(name, deliver)

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``; never raises."""
        name = cluster_channel(channel)
        self._deliveries.pop(name, None)
        current = self._routes.pop(name, None)
        if current is not None and current in self._shards:
            await self._shards[current].subscriber.unsubscribe(name)

    # --- commands ---

    async def _run(self, what: str, command: Callable[[Redis], Awaitable[T]], *, keepalive: bool = False) -> T:
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._gate.acquire()
        except TimeoutError:
            raise BrokerError(f"{what}: no Redis Cluster connection free within {self._timeout * 2}s") from None
        try:
            return await super()._run(what, command, keepalive=keepalive)
        except RedisClusterException as exc:  # the rest became BrokerError in RedisBroker._run
            raise BrokerError(f"{what} on the Redis Cluster at {self.shown_url} failed: {exc}") from exc
        finally:
            self._gate.release()

    # Publishes go through the outbox of the room's master: batched per round trip, in
    # call order per master, so per room (see redis_outbox.py).

    async def _run_on(self, master: str, what: str, command: Callable[[Redis], Awaitable[T]]) -> T:
        """Run ``command`` on ``master``'s own client; errors become BrokerError."""
        shard = self._shards.get(master)
        if shard is None or self._closed:
            raise BrokerError(f"{what}: the Redis Cluster broker is not running")
        try:
            async with asyncio.timeout(self._timeout * 2):
                return await command(shard.client)
        except _ERRORS as exc:
            raise BrokerError(f"{what} on Redis Cluster master {master} failed: {exc or 'timed out'}") from exc

    def _outbox_of(self, name: str, what: str) -> Outbox:
        node = self._master_of(name)
        shard = self._shards.get(node.name) if node is not None else None
        if shard is None or not shard.reachable or self._closed:
            where = f"master {node.name}" if node is not None else "no known master"
            raise BrokerError(f"{what}: {name} is on {where}, which is unreachable")
        return shard.outbox

    async def publish(self, channel: str, payload: bytes) -> None:
        name = cluster_channel(channel)
        await self._outbox_of(name, "SPUBLISH").put("SPUBLISH", "SPUBLISH", name, payload)

    def post_numbered(self, channel: str, head: bytes, tail: bytes, keep: int,
                      keep_for: float = 0.0) -> asyncio.Future[int]:
        name = cluster_channel(channel)
        return self._outbox_of(name, "numbered SPUBLISH").put(
            "numbered SPUBLISH", "EVALSHA", _NUMBERED_SHARDED_SHA, 3, f"{name}:seq", f"{name}:history",
            f"{name}:epoch", head, tail, max(keep, 0), name, round(keep_for * 1000), self._new_epoch(), parse=int)

    @property
    def backlog(self) -> int:
        return sum(shard.outbox.backlog for shard in self._shards.values())

    async def history(self, channel: str, limit: int) -> list[bytes]:
        name = cluster_channel(channel)
        self._require(name, "LRANGE")
        return await super().history(name, limit)

    async def replay(self, channel: str, since: int | None, epoch: str | None, limit: int,
                     keep_for: float = 0.0, *, max_bytes: int = 0) -> Replay:
        name = cluster_channel(channel)
        self._require(name, "history replay")
        return await super().replay(name, since, epoch, limit, keep_for, max_bytes=max_bytes)

    # --- presence: RedisBroker's, on the keys' cluster names ---

    async def claim(self, key: str, member: str, ttl: float = DEFAULT_TTL) -> bool:
        name = cluster_presence_key(key)
        self._require(name, "presence claim")
        return await super().claim(name, member, ttl)

    async def hold(self, key: str, member: str, ttl: float = DEFAULT_TTL) -> bool:
        name = cluster_presence_key(key)
        self._require(name, "presence hold")
        return await super().hold(name, member, ttl)

    async def drop(self, key: str, member: str) -> None:
        await super().drop(cluster_presence_key(key), member)

    async def release(self, key: str, member: str) -> bool:
        name = cluster_presence_key(key)
        self._holdings.forget(name, member)  # first, as RedisBroker does: a failed removal expires
        self._require(name, "ZREM")
        return await super().release(name, member)

    async def members(self, key: str) -> list[str]:
        name = cluster_presence_key(key)
        self._require(name, "presence members")
        return await super().members(name)

    async def reap(self, key: str) -> list[str]:
        name = cluster_presence_key(key)
        self._require(name, "presence reap")
        return await super().reap(name)

    async def _keep_held(self, batch: list[tuple[str, list[str | int]]], flags: list[str]) -> int:
        """As ``RedisBroker._keep_held``, pipelined per master: a master that is unreachable
        is skipped (its members are put back when it returns), one that fails does not
        stop the others; BrokerError after the others if any failed."""
        groups: dict[str, list[tuple[str, list[str | int]]]] = {}
        for key, pairs in batch:
            node = self._master_of(key)
            if node is not None:
                groups.setdefault(node.name, []).append((key, pairs))
        shards = [(self._shard_if_reachable(name), part) for name, part in groups.items()]
        results = await asyncio.gather(*(self._keep_on(shard, part, flags) for shard, part in shards
                                         if shard is not None), return_exceptions=True)
        failures: list[BaseException] = []
        absent = 0
        for result in results:
            if isinstance(result, int):
                absent += result
            elif isinstance(result, Exception):
                failures.append(result)
            else:
                raise result
        if failures:
            raise BrokerError(f"presence refresh on {len(failures)} Redis Cluster master(s) failed: "
                              f"{failures[0] or 'timed out'}") from failures[0]
        return absent

    def _shard_if_reachable(self, name: str) -> _Shard | None:
        shard = self._shards.get(name)
        return shard if shard is not None and shard.reachable else None

    async def _keep_on(self, shard: _Shard, part: list[tuple[str, list[str | int]]], flags: list[str]) -> int:
        script = self._keep
        assert script is not None
        absent = 0
        for start in range(0, len(part), _REFRESH_BATCH):
            async with asyncio.timeout(self._timeout * 2):
                pipe = shard.client.pipeline(transaction=False)
                for key, pairs in part[start:start + _REFRESH_BATCH]:
                    await script(keys=[key], args=[*flags, *pairs], client=pipe)
                replies = await pipe.execute()
            absent += sum(int(reply[0]) for reply in replies)
        return absent
