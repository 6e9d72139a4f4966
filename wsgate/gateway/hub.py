"""Topics: local subscriber sets fanned out from one broker subscription per channel."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from ..broker import Broker
from ..connection import Connection
from ..errors import BrokerError
from ..observe.stats import GatewayStats
from .frames import BINARY, TEXT, encode_frame

__all__ = ["Hub", "channel_name"]

log = logging.getLogger("wsgate.hub")


_NUMBERED = b't{"id":'  # how a numbered event's payload starts


def channel_name(path: str, topic: str) -> str:
    return f"wsgate:{path}:{topic}"


class Hub:
    """Delivers broker messages to this instance's subscribers, framing each once.

    An instance subscribes to a channel only while it has a local subscriber.
    Payloads on the broker carry one leading byte, ``t`` or ``b``, for text or binary.
    """

    def __init__(self, broker: Broker, stats: GatewayStats) -> None:
        self.broker = broker
        self._stats = stats
        self._local: dict[str, set[Connection]] = {}
        self._topics: dict[Connection, set[str]] = {}  # what each connection is subscribed to
        # History of the channels subscribed here, kept until a numbered event arrives:
        # a join then costs no broker round trip and no JSON parsing.
        self._history: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._changes: dict[str, int] = {}  # numbered events seen per subscribed channel
        self._subscribing: dict[str, asyncio.Future[None]] = {}

    async def subscribe(self, conn: Connection, path: str, topic: str) -> None:
        channel = channel_name(path, topic)
        members = self._local.get(channel)
        if members is None:
            members = self._local[channel] = set()
            ready = self._subscribing[channel] = asyncio.get_running_loop().create_future()
            try:
                await self.broker.subscribe(channel, lambda payload: self._deliver(channel, payload))
            finally:
                del self._subscribing[channel]
                ready.set_result(None)
        elif channel in self._subscribing:
            # Another connection is subscribing this instance; wait until the broker has it.
            await asyncio.shield(self._subscribing[channel])
        members.add(conn)
        self._topics.setdefault(conn, set()).add(topic)

    async def unsubscribe(self, conn: Connection, path: str, topic: str) -> None:
        channel = channel_name(path, topic)
        members = self._local.get(channel)
        topics = self._topics.get(conn)
        if topics is not None:
            topics.discard(topic)
            if not topics:
                del self._topics[conn]
        if members is None:
            return
        members.discard(conn)
        if not members:
            del self._local[channel]
            self._history.pop(channel, None)
            self._changes.pop(channel, None)
            await self.broker.unsubscribe(channel)

    async def leave_all(self, conn: Connection, path: str) -> None:
        for topic in list(self._topics.get(conn, ())):
            await self.unsubscribe(conn, path, topic)

    def _deliver(self, channel: str, payload: bytes) -> None:
        members = self._local.get(channel)
        if not members:
            return
        if payload.startswith(_NUMBERED):
            self._history.pop(channel, None)
            self._changes[channel] = self._changes.get(channel, 0) + 1
        frame = encode_frame(payload[1:], TEXT if payload[:1] == b"t" else BINARY)
        for conn in members:
            conn._deliver(frame)

    # Publishing goes through the broker even for local subscribers, so that every
    # instance sees one order. When the broker fails, local subscribers still get the
    # message straight away; other instances miss it (pub/sub is fire-and-forget).

    async def publish(self, path: str, topic: str, message: str | bytes, *, strict: bool = False) -> None:
        """Publish to every instance; on broker failure deliver locally, or raise if ``strict``."""
        channel = channel_name(path, topic)
        payload = b"t" + message.encode() if isinstance(message, str) else b"b" + bytes(message)
        try:
            await self.broker.publish(channel, payload)
        except BrokerError as exc:
            self._failed(channel, exc)
            if strict:
                raise
            self._deliver(channel, payload)

    async def publish_numbered(self, path: str, topic: str, event: Mapping[str, Any], keep: int,
                               keep_for: float) -> int | None:
        """The id given, or None when the broker failed and only local subscribers got it."""
        body = json.dumps({k: v for k, v in event.items() if k != "id"}, separators=(",", ":"), ensure_ascii=False)
        head = _NUMBERED
        tail = (("," + body[1:]) if body != "{}" else "}").encode()
        channel = channel_name(path, topic)
        try:
            return await self.broker.publish_numbered(channel, head, tail, keep, keep_for)
        except BrokerError as exc:
            self._failed(channel, exc)
            self._deliver(channel, head + b"null" + tail)
            return None

    async def history(self, path: str, topic: str, limit: int) -> list[dict[str, Any]]:
        """Kept numbered events; empty while the broker is unavailable.

        The same list is returned for a subscribed channel until it changes.
        """
        channel = channel_name(path, topic)
        cached = self._history.get(channel)
        if cached is not None and cached[0] == limit:
            return cached[1]
        changes = self._changes.get(channel, 0)
        try:
            payloads = await self.broker.history(channel, limit)
        except BrokerError as exc:
            log.warning("history of %s unavailable: %s", channel, exc)
            return []
        events = [json.loads(p[1:]) for p in payloads]
        # Cache only what no numbered event overtook while the broker answered; without
        # a local subscriber nothing would tell this instance that the channel changed.
        if channel in self._local and channel not in self._subscribing and self._changes.get(channel, 0) == changes:
            self._history[channel] = (limit, events)
        return events

    def _failed(self, channel: str, exc: BrokerError) -> None:
        self._stats.broker_publish_failures += 1
        log.warning("broker publish to %s failed, delivered locally only: %s", channel, exc)
