"""One master of a Redis Cluster as the cluster broker uses it: its sharded pub/sub
subscriber, its outbox, and the lane a moving slot's publishes follow."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import AskError, MovedError

from .base import Delivery
from .cluster_names import slot_of
from .redis_outbox import Outbox, Run, _Queued
from .redis_pubsub import RedisSubscriber, _text

__all__ = ["Lane", "Shard", "ShardOutbox", "ShardSubscriber", "said"]

log = logging.getLogger("wsgate.broker.redis")  # one logger name for every Redis broker


def said(redirect: AskError) -> str:
    """A redirection as Redis said it (redis-py keeps only the slot and the address)."""
    word = "MOVED" if isinstance(redirect, MovedError) else "ASK"
    return f"{word} {redirect.slot_id} {redirect.host}:{redirect.port}"


class ShardSubscriber(RedisSubscriber):
    """A ``RedisSubscriber`` on one master that uses sharded pub/sub (SSUBSCRIBE).

    ``moved`` collects the channels whose slot is no longer on this master: Redis
    unsubscribed them on its own, or answered MOVED to their (UN)SUBSCRIBE. Such a
    reply costs only the channels of that slot, never the connection: the other rooms
    of this master go on. ``on_moved`` is called when ``moved`` grows.
    """

    def __init__(self, shown_url: str, timeout: float, on_moved: Callable[[], None]) -> None:
        super().__init__(shown_url, timeout)
        self.moved: set[str] = set()
        self._on_moved = on_moved
        self._dropped: set[str] = set()  # unsubscribed by Redis: no SUNSUBSCRIBE to send

    async def subscribe(self, channel: str, deliver: Delivery, **options: Any) -> None:
        self._dropped.discard(channel)
        await super().subscribe(channel, deliver, **options)

    async def unsubscribe(self, channel: str) -> None:
        if channel in self._dropped:
            # Redis dropped it when its slot left this master; a SUNSUBSCRIBE now would be
            # answered MOVED.
            self._dropped.discard(channel)
            self._channels.pop(channel, None)
            return
        await super().unsubscribe(channel)

    # One command per slot: Redis refuses an SSUBSCRIBE naming channels of several slots
    # (CROSSSLOT), which is what resubscribing a master's channels after a reconnect is.
    def _subscribe_command(self, pubsub: PubSub) -> Callable[..., Awaitable[Any]]:
        return functools.partial(_per_slot, pubsub.ssubscribe)

    def _unsubscribe_command(self, pubsub: PubSub) -> Callable[..., Awaitable[Any]]:
        return functools.partial(_per_slot, pubsub.sunsubscribe)

    def _handle(self, reply: Any) -> None:
        kind = reply[0] if isinstance(reply, list) and reply else reply
        if kind in (b"smessage", b"ssubscribe"):
            super()._handle([kind[1:], *reply[1:]])
        elif kind == b"sunsubscribe":
            channel = _text(reply[1])
            if channel in self._channels:  # not asked by unsubscribe(), which forgets it first
                self._dropped.add(channel)
                self._lost([channel])
        elif isinstance(kind, AskError):  # MOVED (an AskError) to an (UN)SUBSCRIBE: that slot is elsewhere
            channels = [channel for channel in self._channels if slot_of(channel) == kind.slot_id]
            self._dropped.update(channels)
            for channel in channels:
                self._confirmed(channel)  # no confirmation will come: release subscribe()
            log.info("%s answered %s", self.shown_url, said(kind))
            self._lost(channels)
        else:
            super()._handle(reply)

    def live(self, channel: str) -> bool:
        """True while ``channel`` is subscribed here and confirmed by Redis."""
        confirmed = channel in self._channels and not self._expected.get(channel)
        return self.up and confirmed and channel not in self._dropped

    def _lost(self, channels: list[str]) -> None:
        self.moved.update(channels)
        self._on_moved()

    def channels(self) -> dict[str, Delivery]:
        """The channels subscribed here and their deliveries (a copy)."""
        return dict(self._channels)


async def _per_slot(command: Callable[..., Awaitable[Any]], *channels: str) -> None:
    by_slot: dict[int, list[str]] = {}
    for channel in channels:
        by_slot.setdefault(slot_of(channel), []).append(channel)
    for group in by_slot.values():
        await command(*group)


class ShardOutbox(Outbox):
    """An ``Outbox`` to one master that hands a command answered MOVED or ASK to
    ``redirect`` (which sends it where Redis said) instead of failing it."""

    def __init__(self, run: Run, scripts: Sequence[str], redirect: Callable[[_Queued, AskError], None]) -> None:
        super().__init__(run, scripts)
        self._redirect = redirect

    def _settle(self, queued: _Queued, reply: Any) -> None:  # type: ignore[override]
        if isinstance(reply, AskError) and not queued.result.done():  # MovedError is an AskError
            self._redirect(queued, reply)
        else:
            Outbox._settle(queued, reply)


@dataclass(eq=False, slots=True)
class Lane:
    """The master a slot's publishes go to while some of them are unanswered, and how many.

    A slot's publishes follow one another through one master's outbox, and from there
    (after MOVED or ASK) to the next: a publish made meanwhile takes the same way, so a
    room's messages keep their order while its slot moves.
    """

    master: str
    pending: int = 0


@dataclass(eq=False)
class Shard:
    """One master: its own client (PING, presence refresh, pub/sub) and its subscriber."""

    name: str
    client: Redis
    subscriber: ShardSubscriber
    outbox: Outbox
    reachable: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)
