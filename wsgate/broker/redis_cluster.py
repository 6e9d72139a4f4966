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
kept by a ``RedisSubscriber`` that SSUBSCRIBEs to the channels of that master's slots
(one SSUBSCRIBE per slot: Redis refuses one naming several).

Topology moves. Every instance follows them, whether or not it has clients in the rooms
concerned:

- a master lost: while any master is unreachable the topology is read again every
  second; a master new in it (a promoted replica) gets its connections at once, channels
  move to it, and a former master that nothing uses any more is let go;
- a slot moved (resharding): a publish answered MOVED or ASK is sent on to the master
  Redis named (after ASKING for ASK), and MOVED has the topology read again at once.
  A numbered publish that ran after ASK is also published where the instances are
  still subscribed (see ``_republish``).
  While some of a slot's publishes are unanswered, later ones take the same way (see
  ``Lane``): a room's messages keep their order across the move. Redis unsubscribes
  the channels of a slot that left a master; they are subscribed on the new master. A
  MOVED answer to an (UN)SUBSCRIBE concerns only the channels of that slot: the pub/sub
  connection, and so every other room of that master, stays. Until a room is subscribed
  again, a numbered publish to it fails (the hub delivers it locally, as during an
  outage) rather than be kept where no client of this instance sees it.

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
import math
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import EncodableT, KeyT

from ..errors import BrokerError
from .base import DEFAULT_TTL, Delivery, Replay
from .cluster_names import cluster_channel, cluster_presence_key, slot_of
from .cluster_url import parse_cluster_url
from .redis import FRESH_CONNECTION_RETRY, RedisBroker
from .redis_outbox import _Queued
from .redis_pubsub import _ERRORS
from .redis_scripts import CLAIM, KEEP, LIVE, NUMBERED, REPLAY
from .redis_shard import Lane, Shard, ShardOutbox, ShardSubscriber, said

__all__ = ["RedisClusterBroker", "cluster_channel", "cluster_presence_key"]

log = logging.getLogger("wsgate.broker.redis")  # one logger name for every Redis broker
T = TypeVar("T")

_TOPOLOGY_EVERY = 1.0  # seconds between two topology reads while a master is unreachable ...
_TOPOLOGY_SOON = 0.2  # ... and while Redis says a slot moved
_MAX_REDIRECTS = 5  # MOVED/ASK followed per command before it fails
_COPY = "SPUBLISH of a message numbered after ASK"  # see RedisClusterBroker._republish
_REFRESH_BATCH = 256  # presence keys per pipelined round trip
# RedisClusterException: what the cluster client raises besides RedisError (no node
# holds a slot, no node answered the topology request).
_CLUSTER_ERRORS = (*_ERRORS, RedisClusterException)

# The numbering script, publishing to the room's shard channel: SPUBLISH from inside a
# script is allowed when the channel hashes to the script's slot, which the tags ensure.
NUMBERED_SHARDED = NUMBERED.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")
assert NUMBERED_SHARDED != NUMBERED
_NUMBERED_SHARDED_SHA = hashlib.sha1(NUMBERED_SHARDED.encode()).hexdigest()


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
        self._shards: dict[str, Shard] = {}
        self._routes: dict[str, str | None] = {}  # cluster channel -> its master, None: unknown yet
        self._deliveries: dict[str, Delivery] = {}
        # The cluster client fails a command instead of queuing it when a master's pool is
        # full; this keeps the commands in flight within any one pool.
        self._gate = asyncio.Semaphore(max_connections)
        self._last_topology = -math.inf  # loop time of the last topology read
        self._stale = False  # Redis said a slot moved: read the topology soon
        self._follow_task: asyncio.Task[None] | None = None
        self._topology_lock = asyncio.Lock()
        self._lanes: dict[int, Lane] = {}  # slot -> where its unanswered publishes went
        self._hops: dict[asyncio.Future[Any], int] = {}  # a redirected publish -> redirections so far

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
        shards = [self._shard(node.name) for node in cluster.get_primaries()]
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

    def _shard(self, name: str) -> Shard:
        """The shard of master ``name`` (``host:port``), made (not yet connected) if new."""
        shard = self._shards.get(name)
        if shard is None:
            host, _, port = name.rpartition(":")
            # One retry on a new connection, as for RedisBroker's health PING: a connection a
            # restarted master closed is not an outage.
            client = Redis(host=host, port=int(port), retry=FRESH_CONNECTION_RETRY, **self._options("node"))
            subscriber = ShardSubscriber(f"{self.shown_url} (master {name})", self._timeout, self._slot_moved)
            subscriber.client = client
            outbox = ShardOutbox(functools.partial(self._run_on, name), [NUMBERED_SHARDED],
                                  functools.partial(self._redirect, name))
            shard = self._shards[name] = Shard(name, client, subscriber, outbox)
        return shard

    async def _open(self, shard: Shard) -> PubSub | None:
        try:
            async with asyncio.timeout(self._timeout * 3):
                pubsub = await shard.subscriber.open()
                # Loaded on every master up front, so that a publish ASK sends to a master
                # importing its slot runs there at once (see _redirect).
                await shard.client.script_load(NUMBERED_SHARDED)
        except _ERRORS as exc:
            log.warning("Redis Cluster master %s is unreachable (%s)", shard.name, exc or "timed out")
            return None
        shard.reachable = True
        return pubsub

    def _listen(self, shard: Shard, pubsub: PubSub | None) -> None:
        shard.task = asyncio.get_running_loop().create_task(
            shard.subscriber.listen(pubsub), name=f"wsgate redis listener {shard.name}")

    async def close(self) -> None:
        """Stop every listener, then as ``RedisBroker.close``."""
        self._closed = True
        tasks = [shard.task for shard in self._shards.values() if shard.task is not None]
        if self._follow_task is not None:
            tasks.append(self._follow_task)
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

    def _master_of(self, name: str, slot: int | None = None) -> ClusterNode | None:
        """The master holding ``name``'s slot (``slot``, when known) as last known, or None."""
        if self._cluster is None:
            return None
        try:
            return self._cluster.nodes_manager.get_node_from_slot(slot_of(name) if slot is None else slot)
        except _CLUSTER_ERRORS:
            return None

    def _require(self, name: str, what: str) -> None:
        """BrokerError at once if the health check found ``name``'s master unreachable."""
        node = self._master_of(name)
        shard = self._shards.get(node.name) if node is not None else None
        if shard is not None and not shard.reachable:
            raise BrokerError(f"{what}: the Redis Cluster master {shard.name} holding {name} is unreachable")

    async def _ping(self) -> None:
        """PING every master; when Redis said a slot moved, or while a master is
        unreachable (every second), read the topology again and follow it."""
        shards = list(self._shards.values())
        await asyncio.gather(*(self._ping_shard(shard) for shard in shards))
        self._commands_up = any(shard.reachable for shard in shards)
        if self._stale:
            due = self._last_topology + _TOPOLOGY_SOON
        elif None in self._routes.values() or not all(shard.reachable for shard in shards):
            due = self._last_topology + _TOPOLOGY_EVERY
        else:
            return
        if asyncio.get_running_loop().time() >= due:
            await self._follow()

    def _slot_moved(self) -> None:
        """Redis said a slot moved: follow it now rather than at the next health check."""
        self._stale = True
        if self._follow_task is None and not self._closed:
            self._follow_task = asyncio.get_running_loop().create_task(
                self._follow_soon(), name="wsgate redis cluster topology")

    async def _follow_soon(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(max(0.0, self._last_topology + _TOPOLOGY_SOON - loop.time()))
            await self._follow()
        except Exception:
            log.exception("following the Redis Cluster topology failed")
        finally:
            self._follow_task = None

    async def _follow(self) -> None:
        """Read the topology; connect to every master in it, move each channel to the
        master that holds its slot now, and let go of former masters nothing uses."""
        if self._cluster is None or self._closed:
            return
        async with self._topology_lock:
            self._last_topology = asyncio.get_running_loop().time()
            self._stale = False
            try:
                async with asyncio.timeout(self._timeout * 2):
                    await self._cluster.nodes_manager.initialize()
            except _CLUSTER_ERRORS as exc:
                log.debug("reading the Redis Cluster topology failed: %s", exc)
                self._stale = True
                return
            masters = {node.name for node in self._cluster.get_primaries()}
            new = [self._shard(name) for name in masters]
            new = [shard for shard in new if shard.task is None]
            for shard in new:
                log.info("Redis Cluster master %s is new in the topology", shard.name)
            await asyncio.gather(*(self._ping_shard(shard) for shard in new))
            for shard in new:
                self._listen(shard, None)
            moved: set[str] = set()
            for shard in self._shards.values():
                moved |= shard.subscriber.moved
                shard.subscriber.moved.clear()
            await self._reroute(moved)
            for name in [name for name in self._shards if name not in masters]:
                await self._retire(self._shards[name])

    async def _ping_shard(self, shard: Shard) -> None:
        try:
            async with asyncio.timeout(self._timeout * 2):
                await shard.client.ping()
                if not shard.reachable:
                    await shard.client.script_load(NUMBERED_SHARDED)  # as in _open
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

    async def _reroute(self, dropped: set[str]) -> None:
        """Subscribe every channel on the master that holds its slot now; a channel
        Redis ``dropped`` on a master that still holds it (as the topology read says)
        is subscribed there again: if the read was behind, Redis answers MOVED again.
        The channels move side by side: one slow master does not hold up the others."""
        moves = []
        for channel, current in list(self._routes.items()):
            node = self._master_of(channel)
            deliver = self._deliveries.get(channel)
            if node is None or deliver is None or (node.name == current and channel not in dropped):
                continue
            if node.name != current:
                log.info("Redis Cluster channel %s moves from master %s to %s", channel, current, node.name)
            shard = self._shard(node.name)
            if shard.task is None:
                self._listen(shard, None)
            self._routes[channel] = node.name
            moves.append(self._move(channel, current, shard, deliver))
        await asyncio.gather(*moves)

    async def _move(self, channel: str, current: str | None, shard: Shard, deliver: Delivery) -> None:
        old = self._shards.get(current) if current is not None and current != shard.name else None
        if old is not None:
            await old.subscriber.unsubscribe(channel)
        if self._routes.get(channel) == shard.name and self._deliveries.get(channel) is deliver:  # still wanted
            await shard.subscriber.subscribe(channel, deliver, through_reconnect=True)

    async def _retire(self, shard: Shard) -> None:
        """Close the shard of a former master once no channel or publish uses it."""
        if shard.subscriber.channels() or any(lane.master == shard.name for lane in self._lanes.values()):
            return
        log.info("Redis Cluster node %s is no longer a master; closing its connections", shard.name)
        del self._shards[shard.name]
        shard.subscriber.closed = True
        if shard.task is not None:
            shard.task.cancel()
            await asyncio.gather(shard.task, return_exceptions=True)
        shard.subscriber.forget_expected()
        await shard.outbox.close()
        try:
            await shard.client.aclose()
        except _ERRORS as exc:
            log.debug("closing a Redis Cluster client: %s", exc)

    # --- pub/sub ---

    async def subscribe(self, channel: str, deliver: Delivery) -> None:
        """Deliver ``channel``'s messages to ``deliver`` from its master's shard channel.

        Returns once the master confirmed, or after ``timeout`` while it is unreachable
        (the subscriber subscribes when it is back). Never raises.
        """
        name = cluster_channel(channel)
        self._deliveries[name] = deliver
        node = self._master_of(name)
        if node is None:
            self._routes[name] = None  # the health check routes it
            return
        shard = self._shard(node.name)
        if shard.task is None:
            self._listen(shard, None)
        self._routes[name] = node.name
        await shard.subscriber.subscribe(name, deliver, through_reconnect=True)

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

    def _post_to(self, name: str, what: str, *command: Any, parse: Callable[[Any], Any] | None = None,
                 numbered: bool = False) -> asyncio.Future[Any]:
        """Queue ``command`` for ``name``'s master (see ``Lane``); BrokerError at once if
        that master is unreachable, or if a ``numbered`` one would not be seen here."""
        if numbered and not self._seen_here(name):
            raise BrokerError(f"{what}: the subscription of this instance to {name} is being restored")
        slot = slot_of(name)
        lane = self._lanes.get(slot)
        if lane is not None:
            shard = self._shards.get(lane.master)
        else:
            node = self._master_of(name, slot)
            shard = self._shards.get(node.name) if node is not None else None
        if shard is None or not shard.reachable or self._closed:
            where = f"master {shard.name}" if shard is not None else "no known master"
            raise BrokerError(f"{what}: {name} is on {where}, which is unreachable")
        result = shard.outbox.put(what, *command, parse=parse)
        if lane is None:
            lane = self._lanes[slot] = Lane(shard.name)
        lane.pending += 1
        result.add_done_callback(functools.partial(self._answered, slot, lane))
        return result

    def _seen_here(self, name: str, master: str | None = None) -> bool:
        """False when this instance needs ``name`` (a client here is in the room) but is
        not subscribed to it right now (on ``master``, if given): Redis would number and
        keep a message that reaches nobody here, so the hub delivers it locally instead."""
        if name not in self._routes:
            return True
        route = self._routes[name]
        shard = self._shards.get(route) if route is not None else None
        return shard is not None and master in (None, route) and shard.subscriber.live(name)

    def _answered(self, slot: int, lane: Lane, _: asyncio.Future[Any]) -> None:
        lane.pending -= 1
        if not lane.pending and self._lanes.get(slot) is lane:
            del self._lanes[slot]

    def _redirect(self, source: str, queued: _Queued, error: AskError) -> None:
        """Send a publish that master ``source`` answered MOVED or ASK on to the master
        Redis named (after ASKING for ASK), behind those already redirected there; its
        result becomes the original's. After MOVED, to a master where this instance is
        not subscribed to the room yet, a numbered publish is refused instead (the hub
        delivers it locally), and the copy of one (``_republish``) is also delivered here."""
        moved = isinstance(error, MovedError)
        target = f"{error.host or source.rpartition(':')[0]}:{error.port}"
        hops = self._hops.pop(queued.result, 0) + 1
        if moved:
            self._slot_moved()
        if hops > _MAX_REDIRECTS or self._closed:
            self._refuse(queued, f"redirected {hops - 1} times, then {said(error)}")
            return
        numbered = queued.command[:2] == ("EVALSHA", _NUMBERED_SHARDED_SHA)
        # Where post_numbered and publish put the channel (and the payload).
        name = queued.command[9] if numbered else queued.command[1]
        if moved and not self._seen_here(name, target):
            if numbered:
                self._refuse(queued, f"{said(error)}, where the subscription of this instance to {name} "
                                     "is not yet")
                return
            deliver = self._deliveries.get(name)
            if queued.what == _COPY and deliver is not None:
                deliver(queued.command[2])
        outbox = self._shard(target).outbox
        if not moved:
            outbox.put("ASKING", "ASKING")
        result = outbox.put(queued.what, *queued.command, parse=queued.parse)
        self._hops[result] = hops
        if numbered and not moved:
            result.add_done_callback(functools.partial(self._republish, source, queued.command))
        result.add_done_callback(functools.partial(self._redirected, queued.result))  # after: see Lane

    @staticmethod
    def _refuse(queued: _Queued, why: str) -> None:
        queued.result.set_exception(BrokerError(f"{queued.what}: {why}"))
        queued.result.exception()  # retrieved here: a caller that did not wait is told elsewhere

    def _redirected(self, original: asyncio.Future[Any], result: asyncio.Future[Any]) -> None:
        self._hops.pop(result, None)
        if original.done():
            return
        if result.cancelled():
            original.cancel()
        elif (exc := result.exception()) is not None:
            original.set_exception(exc)
            original.exception()  # retrieved here: a caller that did not wait is told elsewhere
        else:
            original.set_result(result.result())

    def _republish(self, source: str, command: tuple[Any, ...], result: asyncio.Future[Any]) -> None:
        """A numbered publish that ran after ASK, on the master importing its slot, was
        published to the subscribers there; but every instance is still subscribed on
        ``source``, which serves the channel until the move of the slot ends. Publish it
        there too, as the script did: numbered and kept, it must also be seen live."""
        if result.cancelled() or result.exception() is not None or self._closed:
            return
        head, tail, name = command[6], command[7], command[9]  # as post_numbered lays them out
        try:
            # In the slot's lane (its publish is still unanswered, so the lane goes to
            # ``source``): the room's later publishes cannot overtake it.
            self._post_to(name, _COPY, "SPUBLISH", name, b"%b%d%b" % (head, result.result(), tail))
        except BrokerError as exc:
            log.warning("publishing %s, numbered after ASK, on master %s failed: %s", name, source, exc)

    async def publish(self, channel: str, payload: bytes) -> None:
        await self.post(channel, payload)

    def post(self, channel: str, payload: bytes) -> asyncio.Future[None]:
        name = cluster_channel(channel)
        return self._post_to(name, "SPUBLISH", "SPUBLISH", name, payload)

    def post_numbered(self, channel: str, head: bytes, tail: bytes, keep: int,
                      keep_for: float = 0.0) -> asyncio.Future[int]:
        name = cluster_channel(channel)
        # _redirect and _republish read the channel, head and tail back from these places.
        return self._post_to(
            name, "numbered SPUBLISH", "EVALSHA", _NUMBERED_SHARDED_SHA, 3, f"{name}:seq", f"{name}:history",
            f"{name}:epoch", head, tail, max(keep, 0), name, round(keep_for * 1000), self._new_epoch(), parse=int,
            numbered=True)

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
        if any(isinstance(failure, AskError) for failure in failures):
            self._slot_moved()  # the next refresh goes where the keys are now
        if failures:
            raise BrokerError(f"presence refresh on {len(failures)} Redis Cluster master(s) failed: "
                              f"{failures[0] or 'timed out'}") from failures[0]
        return absent

    def _shard_if_reachable(self, name: str) -> Shard | None:
        shard = self._shards.get(name)
        return shard if shard is not None and shard.reachable else None

    async def _keep_on(self, shard: Shard, part: list[tuple[str, list[str | int]]], flags: list[str]) -> int:
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
