"""Connection caps and message rate limits, free of I/O."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Admission", "Refusal", "TokenBucket"]


class TokenBucket:
    """``rate`` messages per second on average, up to ``burst`` at once."""

    __slots__ = ("_last", "_rate", "_tokens", "burst")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def take(self, now: float) -> bool:
        """Spend one token; False when the client is over its limit."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class Refusal:
    """Why a handshake was refused: the HTTP status and a short text for the body."""

    status: int
    reason: str


@dataclass
class Admission:
    """Counts open connections globally, per endpoint and per client IP.

    ``admit`` either books a slot and returns None, or returns the Refusal (503 for
    capacity, 429 for one client holding too many); ``release`` frees a booked slot.
    """

    max_total: int | None = None
    total: int = 0
    per_endpoint: Counter[str] = field(default_factory=Counter)
    per_ip: Counter[tuple[str, str]] = field(default_factory=Counter)

    def admit(self, path: str, ip: str, endpoint_max: int | None, ip_max: int | None) -> Refusal | None:
        if self.max_total is not None and self.total >= self.max_total:
            return Refusal(503, "the server is at its connection limit; retry later")
        if endpoint_max is not None and self.per_endpoint[path] >= endpoint_max:
            return Refusal(503, "this endpoint is at its connection limit; retry later")
        if ip_max is not None and self.per_ip[(path, ip)] >= ip_max:
            return Refusal(429, "too many connections from your address")
        self.total += 1
        self.per_endpoint[path] += 1
        self.per_ip[(path, ip)] += 1
        return None

    def release(self, path: str, ip: str) -> None:
        self.total -= 1
        self.per_endpoint[path] -= 1
        key = (path, ip)
        self.per_ip[key] -= 1
        if self.per_ip[key] <= 0:
            del self.per_ip[key]
