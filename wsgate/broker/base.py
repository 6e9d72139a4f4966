"""The broker interface: the only way messages cross gateway instances."""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Broker", "Delivery", "Replay", "new_epoch"]

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


class Broker(ABC):
    """Pub/sub plus the little shared state chat-like handlers need.

    Every instance subscribes to a channel at most once (the hub fans out locally), so
    a broker keeps one delivery callback per channel. ``publish_numbered`` must assign
    the number and publish as one atomic step, so that subscribers see numbers in order.
    """

    name: str = "broker"

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

    @abstractmethod
    async def publish_numbered(self, channel: str, head: bytes, tail: bytes, keep: int,
                               keep_for: float = 0.0) -> int:
        """Publish ``head + str(n) + tail`` where n is the channel's next number (from 1).

        The last ``keep`` payloads are kept for ``history``. With ``keep_for`` > 0, a
        channel with nothing published for that many seconds loses its history and
        its counter.
        """

    @abstractmethod
    async def history(self, channel: str, limit: int) -> list[bytes]:
        """The last ``limit`` numbered payloads, oldest first."""

    @abstractmethod
    async def replay(self, channel: str, since: int | None, epoch: str | None, limit: int,
                     keep_for: float = 0.0) -> Replay:
        """The channel's epoch (created if it has none, living ``keep_for`` like its
        history), and either every payload after ``since`` (when ``epoch`` is the
        channel's and all of them are kept) or the last ``limit``. One atomic read.
        """

    @abstractmethod
    async def claim(self, key: str, member: str) -> bool: ...

    @abstractmethod
    async def release(self, key: str, member: str) -> None: ...

    @abstractmethod
    async def members(self, key: str) -> list[str]: ...
