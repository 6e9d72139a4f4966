"""Webhooks: the app's events POSTed to its URL, signed, batched and retried.

Each event is decided on one instance only (the handler sees to that: a channel's occupancy
through a presence name claimed by its first instance and released by its last, a member
through ``release`` returning True or ``reap``), so here an event is queued once, sent in
batches of those that came within ``batch``, and retried with exponential backoff from
``backoff`` up to ``max_backoff`` for ``retry_for``; then the batch is dropped and logged.
At most ``max_pending`` events wait (and one batch in flight); beyond it the oldest are dropped
(and logged).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections import deque
from typing import Any

import aiohttp

from .options import WebhookOptions

__all__ = ["Webhooks", "signature"]


def signature(secret: str, body: bytes) -> str:
    """``X-Pusher-Signature``: the hex HMAC-SHA256 of the body with the app's secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    """The events of one app on their way to its webhook URL."""

    def __init__(self, options: WebhookOptions, key: str, secret: str, logger: logging.Logger) -> None:
        self.options = options
        self.key = key
        self.secret = secret
        self.logger = logger
        self.pending: deque[dict[str, Any]] = deque()
        self.inflight: list[dict[str, Any]] = []  # the batch being sent (and retried)
        self.dropped = 0
        self._wake = asyncio.Event()

    def emit(self, name: str, channel: str, **fields: Any) -> None:
        """Queue one event, if the app asked for its kind."""
        if name not in self.options.events:
            return
        if len(self.pending) >= self.options.max_pending:
            self.pending.popleft()
            self.dropped += 1
            self.logger.warning("webhook queue full (%d events): the oldest event is dropped",
                                self.options.max_pending)
        self.pending.append({"name": name, "channel": channel, **fields})
        self._wake.set()

    def body(self, events: list[dict[str, Any]]) -> bytes:
        return json.dumps({"time_ms": int(time.time() * 1000), "events": events},
                          separators=(",", ":")).encode()

    async def run(self) -> None:
        """Send forever: a batch at a time, in order."""
        timeout = aiohttp.ClientTimeout(total=self.options.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await self._wake.wait()
                await asyncio.sleep(self.options.batch)  # the events of the next moments go along
                self._wake.clear()
                while self.pending:
                    count = min(len(self.pending), self.options.max_batch)
                    self.inflight = [self.pending.popleft() for _ in range(count)]
                    await self._deliver(session, self.inflight)
                    self.inflight = []

    async def flush(self) -> None:
        """On shutdown (``run`` is cancelled by then): one try for what is left, within ``timeout``."""
        events, self.inflight = [*self.inflight, *self.pending], []
        self.pending.clear()
        if not events:
            return
        timeout = aiohttp.ClientTimeout(total=self.options.timeout)
        try:
            async with asyncio.timeout(self.options.timeout), aiohttp.ClientSession(timeout=timeout) as session:
                for start in range(0, len(events), self.options.max_batch):
                    batch = events[start:start + self.options.max_batch]
                    async with session.post(self.options.url, data=(body := self.body(batch)),
                                            headers=self._headers(body)) as response:
                        if not 200 <= response.status < 300:
                            raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.logger.error("webhook events lost at shutdown: %s failed (%s)", self.options.url, exc)

    def _headers(self, body: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-Pusher-Key": self.key,
                "X-Pusher-Signature": signature(self.secret, body)}

    async def _deliver(self, session: aiohttp.ClientSession, events: list[dict[str, Any]]) -> bool:
        """POST one batch until it is taken (2xx) or ``retry_for`` has passed; True if it was taken."""
        give_up = time.monotonic() + self.options.retry_for
        delay = self.options.backoff
        while True:
            body = self.body(events)  # time_ms is when it is sent
            try:
                async with session.post(self.options.url, data=body, headers=self._headers(body)) as response:
                    if 200 <= response.status < 300:
                        return True
                    problem = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + delay > give_up:
                self.logger.error("webhook batch of %d event(s) dropped: %s still failed after %gs (%s)",
                                  len(events), self.options.url, self.options.retry_for, problem)
                return False
            self.logger.warning("webhook to %s failed (%s): retrying in %gs", self.options.url, problem, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.options.max_backoff)
