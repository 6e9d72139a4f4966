"""The embedded broker: one process, no network, delivery in the publishing call."""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable

from .base import DEFAULT_TTL, Broker, Delivery, Holdings, Replay, check_ttl, new_epoch, newest

__all__ = ["MemoryBroker"]


class MemoryBroker(Broker):
    """In-process pub/sub, counters, history and presence. The default broker."""

    name = "memory"
    subscribes_at_once = True

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._subscribers: dict[str, Delivery] = {}
        self._counters: defaultdict[str, int] = defaultdict(int)
        self._history: dict[str, deque[bytes]] = {}
        self._epochs: dict[str, str] = {}  # a new broker (a restarted gateway) has new ones
        # Presence: key -> member -> expiry on the clock; a member held here never expires
        # (math.inf): this process is its only possible holder, and it is alive.
        self._presence: dict[str, dict[str, float]] = {}
        self._holdings = Holdings()
        self._clock = clock
        self._expiry: dict[str, float] = {}  # channel -> when its history and counter go
        self._next_sweep = 0.0

    async def subscribe(self, channel: str, deliver: Delivery) -> None:
        self._subscribers[channel] = deliver

    async def unsubscribe(self, channel: str) -> None:
        self._subscribers.pop(channel, None)

    async def publish(self, channel: str, payload: bytes) -> None:
        deliver = self._subscribers.get(channel)
        if deliver is not None:
            deliver(payload)

    async def publish_numbered(self, channel: str, head: bytes, tail: bytes, keep: int,
                               keep_for: float = 0.0) -> int:
        return self._publish_numbered(channel, head, tail, keep, keep_for)

    def post(self, channel: str, payload: bytes) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deliver = self._subscribers.get(channel)
        if deliver is not None:
            deliver(payload)
        done.set_result(None)
        return done

    def post_numbered(self, channel: str, head: bytes, tail: bytes, keep: int,
                      keep_for: float = 0.0) -> asyncio.Future[int]:
        number: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        number.set_result(self._publish_numbered(channel, head, tail, keep, keep_for))
        return number

    def _publish_numbered(self, channel: str, head: bytes, tail: bytes, keep: int, keep_for: float) -> int:
        now = self._clock()
        self._expire(now)
        self._keep_alive(channel, now, keep_for)
        if channel not in self._epochs:
            self._epochs[channel] = new_epoch()
        self._counters[channel] += 1
        number = self._counters[channel]
        payload = head + str(number).encode() + tail
        if keep > 0:
            kept = self._history.get(channel)
            if kept is None or kept.maxlen != keep:
                kept = self._history[channel] = deque(kept or (), maxlen=keep)
            kept.append(payload)
        deliver = self._subscribers.get(channel)
        if deliver is not None:
            deliver(payload)
        return number

    async def history(self, channel: str, limit: int) -> list[bytes]:
        self._expire(self._clock())
        kept = self._history.get(channel)
        if not kept or limit <= 0:
            return []
        return list(kept)[-limit:]

    async def replay(self, channel: str, since: int | None, epoch: str | None, limit: int,
                     keep_for: float = 0.0, *, max_bytes: int = 0) -> Replay:
        now = self._clock()
        self._expire(now)
        current = self._epochs.get(channel)
        if current is None:
            current = self._epochs[channel] = new_epoch()
            self._keep_alive(channel, now, keep_for)
        latest = self._counters.get(channel, 0)
        kept = self._history.get(channel, deque())
        oldest = latest - len(kept) + 1
        if since is not None and epoch == current and 0 <= since <= latest and since + 1 >= oldest:
            missed, fits = newest(kept, latest - since, max_bytes)
            if fits:
                return Replay(current, latest, True, missed)
        return Replay(current, latest, False, newest(kept, limit, max_bytes)[0])

    def _keep_alive(self, channel: str, now: float, keep_for: float) -> None:
        if keep_for > 0:
            self._expiry[channel] = now + keep_for
        else:
            self._expiry.pop(channel, None)

    async def claim(self, key: str, member: str, ttl: float = DEFAULT_TTL) -> bool:
        ttl = check_ttl(ttl)
        members = self._presence.setdefault(key, {})
        if members.get(member, -math.inf) > self._clock():
            return False
        members[member] = math.inf
        self._holdings.add(key, member, ttl)
        return True

    async def hold(self, key: str, member: str, ttl: float = DEFAULT_TTL) -> bool:
        ttl = check_ttl(ttl)
        members = self._presence.get(key)
        if members is None or members.get(member, -math.inf) <= self._clock():
            return False
        members[member] = math.inf
        self._holdings.add(key, member, ttl)
        return True

    async def drop(self, key: str, member: str) -> None:
        ttl = self._holdings.drop(key, member)
        members = self._presence.get(key)
        if ttl is not None and members is not None and member in members:
            members[member] = self._clock() + ttl  # nobody holds it now: it expires

    async def release(self, key: str, member: str) -> bool:
        self._holdings.forget(key, member)
        members = self._presence.get(key)
        if members is None or members.pop(member, None) is None:
            return False
        if not members:
            del self._presence[key]
        return True

    async def members(self, key: str) -> list[str]:
        now = self._clock()
        return sorted(m for m, expiry in self._presence.get(key, {}).items() if expiry > now)

    async def reap(self, key: str) -> list[str]:
        members = self._presence.get(key)
        if members is None:
            return []
        now = self._clock()
        gone = sorted(m for m, expiry in members.items() if expiry <= now)
        for member in gone:
            del members[member]
        if not members:
            del self._presence[key]
        return gone

    def _expire(self, now: float) -> None:
        """Forget channels idle past their keep_for; a sweep at most once a second."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        for channel in [c for c, when in self._expiry.items() if when <= now]:
            del self._expiry[channel]
            self._counters.pop(channel, None)
            self._history.pop(channel, None)
            self._epochs.pop(channel, None)
