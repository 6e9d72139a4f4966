"""``ticker``: pushes ``{"type": "tick", "n": N}`` to every client of the endpoint.

One background task per endpoint counts from ``start`` and broadcasts a tick every
``interval_ms`` milliseconds to whoever is connected at that moment; the frame is
encoded once for all of them. Clients that connect later see the count where it is.
"""

from __future__ import annotations

import asyncio
import json

from pydantic import BaseModel, ConfigDict, Field

from wsgate import Handler

__all__ = ["Ticker", "TickerOptions"]


class TickerOptions(BaseModel):
    """Options of the ticker handler (``options:`` in config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    interval_ms: int = Field(default=1000, ge=10, description="milliseconds between two ticks")
    start: int = Field(default=0, description="the number of the first tick")


class Ticker(Handler):
    """Broadcasts a numbered tick at a fixed interval; client messages are ignored."""

    Options = TickerOptions
    options: TickerOptions

    async def startup(self) -> None:
        self.context.spawn(self._tick, name="tick")

    async def _tick(self) -> None:
        n = self.options.start
        interval = self.options.interval_ms / 1000
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            # Sleep to a fixed schedule, so ticks do not drift by the time each one takes.
            deadline += interval
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            self.context.broadcast(json.dumps({"type": "tick", "n": n}, separators=(",", ":")))
            n += 1
