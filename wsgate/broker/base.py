"""The broker interface: the only way messages cross gateway instances."""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Reversible
from dataclasses import dataclass

__all__ = ["DEFAULT_TTL", "Broker", "Delivery", "Holdings", "Replay", "check_ttl", "new_epoch", "newest"]

DEFAULT_TTL = 30.0  # seconds a presence member outlives the last refresh by its holder

Delivery = Callable[[bytes], None]


def new_epoch() -> str:
    """A fresh epoch: unguessable, so that two lives of a channel never share one."""
    return secrets.token_urlsafe(9)


@dataclass(frozen=True, slots=True)
class Replay:
    """A channel's stored numbered payloads as a (re)joining subscriber needs them.

    ``epoch`` names the life of the channel's id sequence: it changes whenever the
    sequence is lost (a restart of the memory broker, a Redis flushed or restarted
    without its data, a channel forgotten after ``keep_for``). ``latest`` is the last
    id given (0: none yet). With ``recovered``, ``payloads`` are exactly the ids after
    the asked ``since``; otherwise they are the last ``limit`` kept.
    """

    epoch: str
    latest: int
    recovered: bool
    payloads: list[bytes]


def newest(kept: Reversible[bytes], count: int, max_bytes: int) -> tuple[list[bytes], bool]:
    """The newest ``count`` of ``kept`` (oldest first) as far as they add up to at most
    ``max_bytes`` (0: no bound), and whether all ``count`` fitted (or ``kept`` ran out)."""
    taken: list[bytes] = []
    size = 0
    fits = True
    for payload in itertools.islice(reversed(kept), max(count, 0)):
        size += len(payload)
        if 0 < max_bytes < size:
            fits = False
            break
        taken.append(payload)
    taken.reverse()
    return taken, fits


def check_ttl(ttl: float) -> float:
    """``ttl`` as a float; ValueError unless it is a finite number of seconds above 0."""
    ttl = float(ttl)
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"a presence ttl must be a finite number of seconds above 0, not {ttl!r}")
    return ttl


class Holdings:
    """The presence members this process keeps alive: per key, per member, holds and ttl.

    Each successful ``claim`` or ``hold`` adds one hold; ``drop`` takes one back;
    ``release`` forgets them all. A member held several times keeps its shortest ttl.
    """

    def __init__(self) -> None:
        self._keys: dict[str, dict[str, tuple[int, float]]] = {}
        self._ttls: Counter[float] = Counter()  # members held per ttl: few distinct ttls

    def add(self, key: str, member: str, ttl: float) -> bool:
        """One more hold; True if ``ttl`` is shorter than every ttl held before."""
        shortest = self.shortest()
        members = self._keys.setdefault(key, {})
        count, held_ttl = members.get(member, (0, math.inf))
        if ttl < held_ttl:
            self._count_ttl(held_ttl, -1)
            self._count_ttl(ttl, 1)
        members[member] = (count + 1, min(ttl, held_ttl))
        return shortest is None or ttl < shortest

    def drop(self, key: str, member: str) -> float | None:
        """One hold fewer; the member's ttl if that was its last hold, else None."""
        held = self._keys.get(key, {}).get(member)
        if held is None:
            return None
        count, ttl = held
        if count > 1:
            self._keys[key][member] = (count - 1, ttl)
            return None
        self.forget(key, member)
        return ttl

    def forget(self, key: str, member: str) -> None:
        members = self._keys.get(key)
        held = members.pop(member, None) if members is not None else None
        if held is not None:
            self._count_ttl(held[1], -1)
            if not members:
                del self._keys[key]

    def _count_ttl(self, ttl: float, change: int) -> None:
        if ttl != math.inf:
            self._ttls[ttl] += change
            if not self._ttls[ttl]:
                del self._ttls[ttl]

    def of(self, key: str) -> dict[str, float]:
        """Member -> ttl for every member of ``key`` held here."""
        return {member: ttl for member, (_, ttl) in self._keys.get(key, {}).items()}

    def __iter__(self) -> Iterator[str]:
        """The keys with a member held here (a snapshot)."""
        return iter(list(self._keys))

    def shortest(self) -> float | None:
        """The shortest ttl held, or None when nothing is held."""
        return min(self._ttls) if self._ttls else None

    def __len__(self) -> int:
        """How many members are held."""
        return sum(self._ttls.values())


class Broker(ABC):
    """Pub/sub plus the little shared state chat-like handlers need.

    Every instance subscribes to a channel at most once (the hub fans out locally), so
    a broker keeps one delivery callback per channel. ``publish_numbered`` must assign
    the number and publish as one atomic step, so that subscribers see numbers in order.
    """

    name: str = "broker"
    # True where subscribe() completes without suspending (the memory broker): a join
    # then runs to its end in one go, with nothing to wait for and nothing to cancel.
    subscribes_at_once: bool = False

    async def start(self) -> None:
        """Connect; raise BrokerError if the broker cannot be reached at all."""

    async def close(self) -> None:
        """Disconnect and stop delivering."""

    @property
    def healthy(self) -> bool:
        """False while the broker is unreachable (readiness reports 503)."""
        return True

    @abstractmethod
    async def subscribe(self, channel: str, deliver: Delivery) -> None: ...

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None: ...

    @abstractmethod
    async def publish(self, channel: str, payload: bytes) -> None: ...

    def post(self, channel: str, payload: bytes) -> asyncio.Future[None]:
        """``publish`` without waiting: it is under way, in order with this process's other
        posts and publishes, and the future tells how it went. BrokerError at once when
        the broker is known to be unreachable."""
        return asyncio.ensure_future(self.publish(channel, payload))

    @abstractmethod
    async def publish_numbered(self, channel: str, head: bytes, tail: bytes, keep: int,
                               keep_for: float = 0.0) -> int:
        """Publish ``head + str(n) + tail`` where n is the channel's next number (from 1).

        The last ``keep`` payloads are kept for ``history``. With ``keep_for`` > 0, a
        channel with nothing published for that many seconds loses its history and
        its counter.
        """

    @abstractmethod
    def post_numbered(self, channel: str, head: bytes, tail: bytes, keep: int,
                      keep_for: float = 0.0) -> asyncio.Future[int]:
        """``publish_numbered`` without waiting: it is under way, and the future gives the number.

        Publishes (posted or awaited) made by one process reach the broker in the order
        they were made. Raises ``BrokerError`` at once when the broker is known to be
        unreachable; a later failure is the future's exception.
        """

    @property
    def backlog(self) -> int:
        """Publishes posted here and not yet on their way to the broker."""
        return 0

    @abstractmethod
    async def history(self, channel: str, limit: int) -> list[bytes]:
        """The last ``limit`` numbered payloads, oldest first."""

    @abstractmethod
    async def replay(self, channel: str, since: int | None, epoch: str | None, limit: int,
                     keep_for: float = 0.0, *, max_bytes: int = 0) -> Replay:
        """The channel's epoch (created if it has none, living ``keep_for`` like its
        history), and either every payload after ``since`` (when ``epoch`` is the
        channel's and all of them are kept) or the last ``limit``. One atomic read.

        With ``max_bytes`` > 0, the payloads returned add up to at most that many bytes,
        and no more than that is read: a resume whose missed payloads exceed it is not
        recovered, and the last ``limit`` are then only the newest of them that fit.
        """

    # Presence: per key, a set of members, each with an expiry. A member lives while some
    # process holds it: the holder pushes its expiry to ``ttl`` from now at least every
    # ttl/3. A member nobody refreshes (its process died, or gave it up with ``drop``)
    # expires ``ttl`` after its last refresh; ``reap`` then removes and returns it, once.

    @abstractmethod
    async def claim(self, key: str, member: str, ttl: float = DEFAULT_TTL) -> bool:
        """Add ``member`` if it is absent or expired, and hold it: True. False if it is present."""

    @abstractmethod
    async def hold(self, key: str, member: str, ttl: float = DEFAULT_TTL) -> bool:
        """Hold a present (unexpired) ``member`` from this process too: True. False if it is not."""

    @abstractmethod
    async def drop(self, key: str, member: str) -> None:
        """Give back one hold of ``member`` without removing it; never raises."""

    @abstractmethod
    async def release(self, key: str, member: str) -> bool:
        """Forget every hold of ``member`` here, then remove it; True if it was there.

        The holds are forgotten first, so a member whose removal failed expires.
        """

    @abstractmethod
    async def members(self, key: str) -> list[str]:
        """The unexpired members of ``key``, sorted."""

    @abstractmethod
    async def reap(self, key: str) -> list[str]:
        """Remove the expired members of ``key`` and return them, sorted; atomic, so each
        expired member is returned once. Members held here are refreshed first, never reaped."""
