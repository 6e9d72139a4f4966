"""The bounded send queue of one connection and its slow-client policy, free of I/O.

``limit`` bounds the queued bytes, control frames included. When a data frame does
not fit: with ``drop`` the oldest data frames are discarded and the client is told
how many in a ``{"type": "dropped", "count": N}`` text frame sent before the next
data; without, the queue overflows: it refuses this and every later frame, and the
gateway closes the connection (1008 "slow consumer"). A frame is always accepted into
an empty queue, so one message larger than the limit still goes out.

Pongs wait in a short list of their own: past ``MAX_PONGS`` unwritten answers, a new
one replaces the newest (RFC 6455 section 5.5.3 allows answering only the most recent
ping), so a client that pings without reading cannot grow the queue, while one that
reads gets an answer to every ping.
"""

from __future__ import annotations

import json
from enum import Enum

from .frames import encode

__all__ = ["MAX_PONGS", "Push", "SendQueue"]

MAX_PONGS = 16


class Push(Enum):
    """What became of a pushed data frame."""

    QUEUED = "queued"
    OVERFLOW = "overflow"  # the queue is full under the close policy: close the connection
    REFUSED = "refused"  # the queue is sealed (the connection is closing)


# Module constants: an enum member looked up on its class costs ~80 ns, once per frame here.
_QUEUED, _OVERFLOW, _REFUSED = Push.QUEUED, Push.OVERFLOW, Push.REFUSED


class SendQueue:
    """Frames waiting to be written to one client, bounded in bytes."""

    __slots__ = ("_frames", "_ping", "_pongs", "drop", "dropped", "limit", "pending", "sealed")

    def __init__(self, limit: int, *, drop: bool) -> None:
        self.limit = limit
        self.drop = drop
        self._frames: list[bytes] = []  # a list: an empty deque costs ~600 bytes per connection
        self._ping: bytes | None = None
        self._pongs: list[bytes] | None = None  # made on the first pong: most clients never ping
        self.pending = 0
        self.dropped = 0
        self.sealed = False

    def push(self, frame: bytes) -> Push:
        """Queue an encoded data frame."""
        if self.sealed:
            return _REFUSED
        size = len(frame)
        if self.pending + size > self.limit and self._frames:
            if not self.drop:
                self.sealed = True
                return _OVERFLOW
            frames, cut = self._frames, 0
            while cut < len(frames) and self.pending + size > self.limit:
                self.pending -= len(frames[cut])
                cut += 1
            del frames[:cut]
            self.dropped += cut
        self._frames.append(frame)
        self.pending += size
        return _QUEUED

    def push_ping(self, frame: bytes) -> None:
        """Queue a ping, replacing one not yet written."""
        if not self.sealed:
            self.pending += len(frame) - len(self._ping or b"")
            self._ping = frame

    def push_pong(self, frame: bytes) -> None:
        """Queue the answer to a ping; past MAX_PONGS unwritten, it replaces the newest."""
        if self.sealed:
            return
        pongs = self._pongs
        if pongs is None:
            pongs = self._pongs = []
        elif len(pongs) >= MAX_PONGS:
            self.pending -= len(pongs.pop())
        pongs.append(frame)
        self.pending += len(frame)

    def take(self, budget: int | None = None) -> list[bytes]:
        """What goes on the wire next, in order: control frames, then data frames up to
        ``budget`` bytes (at least one; all of them without a budget)."""
        frames = self._frames
        if not self._pongs and self._ping is None and not self.dropped and (budget is None or self.pending <= budget):
            self._frames = []  # the common case, on every flush: hand over the list as it is
            self.pending = 0
            return frames
        out = self._pongs or []
        if self._ping is not None:
            out.append(self._ping)
        if self.dropped:
            out.append(encode(json.dumps({"type": "dropped", "count": self.dropped})))
            self.dropped = 0
        self._pongs = None
        self._ping = None
        if budget is None or self.pending <= budget:
            out += frames
            self._frames = []
            self.pending = 0
            return out
        cut, size = 1, len(frames[0]) if frames else 0
        while cut < len(frames) and size + len(frames[cut]) <= budget:
            size += len(frames[cut])
            cut += 1
        out += frames[:cut]
        del frames[:cut]
        self.pending = sum(map(len, frames))
        return out

    def seal(self) -> None:
        """Refuse every frame from now on; ``take`` still returns the queued ones."""
        self.sealed = True

    def clear(self) -> None:
        """Forget everything queued (the peer is gone)."""
        self.sealed = True
        self._frames = []
        self._pongs = None
        self._ping = None
        self.pending = self.dropped = 0
