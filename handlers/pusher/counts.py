"""``pusher_internal:subscription_count``: a channel's subscribers told how many they are.

Pusher sends it (when the app turns it on) to the subscribers of every channel but
presence ones, whose members say more. The count is the channel's subscriptions in the
broker, so across instances; the instance where a subscription came or went reads it
and publishes it to the channel on every instance. Changes that come within
``interval`` of each other are told once, with the count read after the last of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import wsgate
from wsgate import BrokerError

from .protocol import channel_kind, internal

__all__ = ["SubscriptionCounts"]


class SubscriptionCounts:
    """Tells a channel's subscribers their count after it changed on this instance."""

    def __init__(self, context: wsgate.Context, interval: float, count: Callable[[str], Awaitable[int]],
                 publish: Callable[[str, str], Awaitable[None]]) -> None:
        self._context = context
        self._interval = interval
        self._count = count
        self._publish = publish
        self._due: set[str] = set()  # channels changed since their last count was read
        self._telling: set[str] = set()  # channels with a task telling them

    def changed(self, channel: str) -> None:
        """A subscription to ``channel`` came or went (here, or reaped): tell the count soon."""
        if channel_kind(channel) == "presence" or channel.startswith("#"):
            return
        self._due.add(channel)
        if channel not in self._telling:
            self._telling.add(channel)
            self._context.spawn(lambda: self._tell(channel), f"subscription_count {channel}")

    async def _tell(self, channel: str) -> None:
        try:
            while channel in self._due:
                self._due.discard(channel)
                try:
                    count = await self._count(channel)
                    if count:  # nobody is left to tell
                        await self._publish(channel, internal("pusher_internal:subscription_count",
                                                              {"subscription_count": count}, channel))
                except BrokerError as exc:
                    self._context.logger.debug("subscription_count of %s: %s", channel, exc)
                if self._interval:
                    await asyncio.sleep(self._interval)
        finally:
            self._telling.discard(channel)
