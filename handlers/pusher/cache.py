"""Cache channels: ``cache-``, ``private-cache-``, ``private-encrypted-cache-`` and
``presence-cache-`` remember the last event the HTTP API triggered on them, for
``ttl`` (Pusher's 30 minutes), and a new subscriber gets it right after
``subscription_succeeded``; with none, it gets ``pusher:cache_miss`` (and the app a
``cache_miss`` webhook).

The event is kept in the broker, so every instance has it: a numbered topic holding its
last event (``keep=1``), forgotten ``ttl`` after that event (``keep_for``).
"""

from __future__ import annotations

import wsgate

__all__ = ["CACHE_PREFIXES", "Cache", "is_cache"]

CACHE_PREFIXES = ("cache-", "private-cache-", "private-encrypted-cache-", "presence-cache-")


def is_cache(channel: str) -> bool:
    """Whether ``channel`` is a cache channel, of any kind."""
    return channel.startswith(CACHE_PREFIXES)


def cache_topic(channel: str) -> str:
    return f"c:{channel}"


class Cache:
    """The last event of each cache channel, across instances."""

    def __init__(self, context: wsgate.Context, ttl: float) -> None:
        self._context = context
        self._ttl = ttl

    async def keep(self, channel: str, frame: str) -> None:
        """Remember ``frame`` (a whole event message) as ``channel``'s last event;
        ``BrokerError`` if the broker did not take it."""
        await self._context.publish_numbered(cache_topic(channel), {"frame": frame}, keep=1, keep_for=self._ttl,
                                             strict=True)

    async def last(self, channel: str) -> str | None:
        """``channel``'s last event, or None: none was triggered, or not within ``ttl``."""
        events = await self._context.history(cache_topic(channel), 1)
        if not events:
            return None
        frame = events[-1].get("frame")
        return frame if isinstance(frame, str) else None
