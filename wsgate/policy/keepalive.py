"""When to ping, when a client is gone, when it is idle: decisions without I/O.

The gateway records ``last_seen`` (any frame, pongs included) and ``last_message``
(data frames only) and asks ``due(now)`` at the deadline it was last given.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Action", "KeepAlive"]


class Action(Enum):
    NONE = "none"
    PING = "ping"
    DEAD = "dead"  # no pong within the heartbeat timeout
    IDLE = "idle"  # no message within the idle timeout


class KeepAlive:
    """Heartbeat and idle-timeout state of one connection. 0 disables a timer."""

    __slots__ = ("_next_ping", "idle", "interval", "last_message", "last_seen", "ping_sent", "timeout")

    def __init__(self, interval: float, timeout: float, idle: float, now: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.idle = idle
        self.last_seen = now
        self.last_message = now
        self.ping_sent: float | None = None
        self._next_ping = now + interval

    @property
    def enabled(self) -> bool:
        return bool(self.interval or self.idle)

    def due(self, now: float) -> tuple[Action, float | None]:
        """What to do at ``now``, and when to ask again (None: never)."""
        if self.ping_sent is not None and self.last_seen >= self.ping_sent:
            self.ping_sent = None  # answered
        if self.ping_sent is not None and self.timeout and now >= self.ping_sent + self.timeout:
            return Action.DEAD, None
        if self.idle and now >= self.last_message + self.idle:
            return Action.IDLE, None
        action = Action.NONE
        if self.interval and now >= self._next_ping:
            action = Action.PING
            if self.ping_sent is None:  # an unanswered ping keeps its deadline
                self.ping_sent = now
            self._next_ping = now + self.interval
        return action, self._next_deadline()

    def _next_deadline(self) -> float | None:
        candidates = []
        if self.interval:
            candidates.append(self._next_ping)
            if self.ping_sent is not None and self.timeout:
                candidates.append(self.ping_sent + self.timeout)
        if self.idle:
            candidates.append(self.last_message + self.idle)
        return min(candidates) if candidates else None
