"""Many coarse timers on one event-loop timer.

Every connection needs a heartbeat/idle deadline. An event-loop timer per connection
costs several hundred bytes each; a wheel of slots ``resolution`` seconds wide keeps
only a list entry per connection and arms a single loop timer for the earliest slot.
Deadlines fire up to one ``resolution`` late, never early.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from typing import Protocol

__all__ = ["Timed", "TimerWheel"]

log = logging.getLogger("wsgate.gateway")


class Timed(Protocol):
    def on_timer(self) -> None: ...


class TimerWheel:
    """Calls ``target.on_timer()`` once at (or shortly after) the time it was scheduled for."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 0.05) -> None:
        self._loop = loop
        self._resolution = resolution
        self._slots: dict[int, list[Timed]] = {}
        self._heap: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        self._armed: int | None = None

    def schedule(self, when: float, target: Timed) -> int:
        """Fire ``target`` at ``when`` (loop time); returns the slot, for ``cancel``."""
        slot = math.ceil(when / self._resolution)
        bucket = self._slots.get(slot)
        if bucket is not None:
            bucket.append(target)
            return slot
        self._slots[slot] = [target]
        heapq.heappush(self._heap, slot)
        if self._armed is None or slot < self._armed:
            self._arm(slot)
        return slot

    def cancel(self, slot: int, target: Timed) -> None:
        bucket = self._slots.get(slot)
        if bucket is not None and target in bucket:
            bucket.remove(target)

    def _arm(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = slot
        self._handle = self._loop.call_at(slot * self._resolution, self._fire)

    def _fire(self) -> None:
        self._handle = self._armed = None
        now = self._loop.time()
        heap = self._heap
        while heap and heap[0] * self._resolution <= now:
            for target in self._slots.pop(heapq.heappop(heap)):
                try:
                    target.on_timer()
                except Exception:
                    # One target's bug must not cost the others of its slot their
                    # heartbeat, nor leave the wheel unarmed.
                    log.exception("on_timer of %r raised", target)
        if heap:
            self._arm(heap[0])

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._slots.clear()
        self._heap.clear()
        self._handle = self._armed = None
