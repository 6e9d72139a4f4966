"""Topics: local subscriber sets fanned out from one broker subscription per channel."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..broker import Broker
from ..broker.base import Replay
from ..connection import Connection
from ..errors import BrokerError
from ..observe.stats import GatewayStats
from .frames import BINARY, TEXT, encode_frame

__all__ = ["Hub", "channel_name", "numbered_parts", "signal_channel"]

log = logging.getLogger("wsgate.hub")


# A numbered event's payload: ``t{"id":`` N ``,...}`` when the id is the event's top-level
# "id" (as chat's), else ``n``, one byte giving the length of the JSON up to the id, that
# JSON, N and the rest, so that any instance finds the id without knowing the layout.
_NUMBERED = b't{"id":'
_BACKLOG = 1024  # publishes posted without waiting that may queue for the broker


def _id_start(payload: bytes) -> int:
    """Where a numbered payload's id starts; 0 for other payloads."""
    if payload[:1] == b"n" and len(payload) > 1:
        return 2 + payload[1]
    return len(_NUMBERED) if payload.startswith(_NUMBERED) else 0


def _number(payload: bytes) -> int | None:
    """The id of a numbered event's payload; None for others (and for an unknown id)."""
    start = _id_start(payload)
    if not start:
        return None
    end = start
    while end < len(payload) and 0x30 <= payload[end] <= 0x39:
        end += 1
    return int(payload[start:end]) if end > start else None


def _json(payload: bytes) -> bytes:
    """The JSON text of a text or numbered payload."""
    return payload[2:] if payload[:1] == b"n" else payload[1:]


# One encoder for every event: json.dumps with options makes a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def numbered_parts(event: Mapping[str, Any], at: tuple[str, ...]) -> tuple[bytes, bytes]:
    """The payload of ``event`` split around its id, which goes at the key path ``at``.

    ValueError if ``event`` has no object at a key on the way, or has no JSON form.
    """
    def split(obj: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, str]:
        key = keys[0]
        rest = "{}" if len(obj) == 1 and key in obj else _encode({k: v for k, v in obj.items() if k != key})
        head, tail = "", ""
        if len(keys) > 1:
            inner = obj.get(key)
            if not isinstance(inner, Mapping):
                raise ValueError(f"a numbered event needs an object at {key!r} to put the id in")
            head, tail = split(inner, keys[1:])
        close = ("," + rest[1:]) if rest != "{}" else "}"
        quoted = f'"{key}"' if key.isascii() and key.isidentifier() else _encode(key)
        return "{" + quoted + ":" + head, tail + close

    head, tail = split(event, at)
    if at == ("id",):
        return _NUMBERED, tail.encode()
    raw = head.encode()
    if len(raw) > 255:
        raise ValueError("the key path of a numbered event's id is too long")
    return b"n" + bytes([len(raw)]) + raw, tail.encode()


@dataclass(slots=True)
class _Held:
    seen: int = 0
    frames: list[tuple[int | None, bytes]] = field(default_factory=list)


def channel_name(path: str, topic: str) -> str:
    return f"wsgate:{path}:{topic}"


def signal_channel(path: str, topic: str) -> str:
    """The broker channel of an endpoint's signals on ``topic``: apart from its topics'."""
    return f"wsgate-signal:{path}:{topic}"


@dataclass(slots=True)
class _Listening:
    callbacks: list[Callable[[str], None]]
    ready: asyncio.Task[None]


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
        # The same for fresh joins, by (limit, max_bytes) asked.
        self._replays: dict[str, tuple[tuple[int, int], Replay, list[dict[str, Any]]]] = {}
        self._changes: dict[str, int] = {}  # numbered events seen per subscribed channel
        # The broker subscriptions under way, one task per channel. A task, not the first
        # joiner's own call: a joiner that is cancelled (it left mid-join) must not cut
        # short the subscription that the others wait for.
        self._subscribing: dict[str, asyncio.Task[None]] = {}
        # Subscribers whose live messages wait until their handler's hook has sent what
        # comes first (welcome, history): per channel, per connection, the highest id
        # that preamble holds (numbered events up to it are not sent again) and the
        # payloads that arrived meanwhile.
        self._holding: dict[str, dict[Connection, _Held]] = {}
        self._listening: dict[str, _Listening] = {}  # signal channels listened to here

    async def subscribe(self, conn: Connection, path: str, topic: str, *, hold: bool = False) -> None:
        """Deliver ``topic`` to ``conn``; with ``hold``, keep its messages until ``release``.

        Returns once the broker delivers the topic here. Cancelled meanwhile, ``conn`` is
        unsubscribed again, as if it had left.
        """
        channel = channel_name(path, topic)
        if hold:
            self._holding.setdefault(channel, {})[conn] = _Held()
        members = self._local.get(channel)
        if members is None and self.broker.subscribes_at_once:
            await self.broker.subscribe(channel, lambda payload: self._deliver(channel, payload))
            members = self._local[channel] = set()
        elif members is None:
            members = self._local[channel] = set()
            self._subscribing[channel] = asyncio.get_running_loop().create_task(
                self._subscribe_broker(channel, members), name=f"wsgate subscribe {channel}")
        # A member from now on: a member who leaves before the broker subscription is
        # done is taken out by unsubscribe() like any other, and the last one out
        # unsubscribes the broker.
        members.add(conn)
        self._topics.setdefault(conn, set()).add(topic)
        pending = self._subscribing.get(channel)
        if pending is not None:
            try:
                await asyncio.shield(pending)
            except BaseException:
                await self.unsubscribe(conn, path, topic)
                raise

    async def _subscribe_broker(self, channel: str, members: set[Connection]) -> None:
        try:
            # Not if everyone left before this started: the broker's unsubscribe came first.
            if self._local.get(channel) is members:
                await self.broker.subscribe(channel, lambda payload: self._deliver(channel, payload))
        finally:
            if self._subscribing.get(channel) is asyncio.current_task():
                del self._subscribing[channel]

    async def unsubscribe(self, conn: Connection, path: str, topic: str) -> None:
        channel = channel_name(path, topic)
        members = self._local.get(channel)
        topics = self._topics.get(conn)
        if topics is not None:
            topics.discard(topic)
            if not topics:
                del self._topics[conn]
        holding = self._holding.get(channel)
        if holding is not None and holding.pop(conn, None) is not None and not holding:
            del self._holding[channel]
        if members is None:
            return
        members.discard(conn)
        if not members:
            del self._local[channel]
            self._history.pop(channel, None)
            self._replays.pop(channel, None)
            self._changes.pop(channel, None)
            await self.broker.unsubscribe(channel)

    async def leave_all(self, conn: Connection, path: str) -> None:
        for channel in [c for c, held in self._holding.items() if conn in held]:
            del self._holding[channel][conn]
            if not self._holding[channel]:
                del self._holding[channel]
        for topic in list(self._topics.get(conn, ())):
            await self.unsubscribe(conn, path, topic)

    def _deliver(self, channel: str, payload: bytes) -> None:
        members = self._local.get(channel)
        if not members:
            return
        kind = payload[:1]
        if kind == b"n" or payload.startswith(_NUMBERED):
            self._history.pop(channel, None)
            self._replays.pop(channel, None)
            self._changes[channel] = self._changes.get(channel, 0) + 1
        frame = encode_frame(_json(payload), BINARY if kind == b"b" else TEXT)
        holding = self._holding.get(channel)
        if holding is None:
            for conn in members:
                conn._deliver(frame)
            return
        for conn in members:
            held = holding.get(conn)
            if held is None:
                conn._deliver(frame)
            else:
                held.frames.append((_number(payload), frame))

    async def replay(self, conn: Connection, path: str, topic: str, since: int | None, epoch: str | None,
                     limit: int, keep_for: float, max_bytes: int = 0) -> tuple[Replay, list[dict[str, Any]]]:
        """The broker's replay of ``topic`` for ``conn`` (subscribed, held), and its events;
        ``max_bytes`` bounds what the broker returns (see ``Broker.replay``).

        The held live messages that the replay already holds are dropped on release.
        """
        channel = channel_name(path, topic)
        cached = self._replays.get(channel) if since is None else None
        if cached is not None and cached[0] == (limit, max_bytes):
            replay, events = cached[1], cached[2]
        else:
            changes = self._changes.get(channel, 0)
            replay = await self.broker.replay(channel, since, epoch, limit, keep_for, max_bytes=max_bytes)
            # One parse for them all: a resume may carry hundreds.
            events = json.loads(b"[" + b",".join(_json(p) for p in replay.payloads) + b"]")
            # A fresh join's answer is the same for everyone until the next numbered
            # event: a join flood costs no broker round trip (see history()).
            if since is None and self._cacheable(channel, changes):
                self._replays[channel] = ((limit, max_bytes), replay, events)
        held = self._holding.get(channel, {}).get(conn)
        if held is not None:
            held.seen = max(held.seen, replay.latest)
        return replay, events

    async def stream(self, path: str, topic: str, limit: int, keep_for: float) -> tuple[Replay, list[dict[str, Any]]]:
        """The broker's replay of ``topic`` for no one: its epoch, latest id and last ``limit`` events."""
        replay = await self.broker.replay(channel_name(path, topic), None, None, limit, keep_for)
        return replay, json.loads(b"[" + b",".join(_json(p) for p in replay.payloads) + b"]")

    def release(self, conn: Connection) -> None:
        """Send ``conn`` what arrived while it was held, without what its replay held."""
        for channel in [c for c, held in self._holding.items() if conn in held]:
            holding = self._holding[channel]
            held = holding.pop(conn)
            if not holding:
                del self._holding[channel]
            for number, frame in held.frames:
                if number is None or number > held.seen:
                    conn._deliver(frame)

    # Publishing goes through the broker even for local subscribers, so that every
    # instance sees one order. When the broker fails, local subscribers still get the
    # message straight away; other instances miss it (pub/sub is fire-and-forget).

    async def publish(self, path: str, topic: str, message: str | bytes, *, strict: bool = False,
                      wait: bool = True, then: Callable[[bool], None] | None = None) -> None:
        """Publish to every instance; on broker failure deliver locally, or raise if ``strict``.

        Without ``wait``, return once it is on its way; a later failure delivers locally,
        or, ``strict``, is only counted and logged. ``then`` is told whether the broker took it.
        """
        channel = channel_name(path, topic)
        payload = b"t" + message.encode() if isinstance(message, str) else b"b" + bytes(message)
        try:
            posted = self.broker.post(channel, payload)
            if wait or posted.done() or self.broker.backlog > _BACKLOG:
                await posted
                if then is not None:
                    then(True)
            else:
                posted.add_done_callback(functools.partial(self._posted_plain, channel, payload, strict, then))
        except BrokerError as exc:
            self._failed(channel, exc, local=not strict)
            if strict and wait:
                raise
            if not strict:
                self._deliver(channel, payload)
            if then is not None:
                then(False)

    def _posted_plain(self, channel: str, payload: bytes, strict: bool, then: Callable[[bool], None] | None,
                      posted: asyncio.Future[None]) -> None:
        exc = None if posted.cancelled() else posted.exception()
        if isinstance(exc, BrokerError):
            self._failed(channel, exc, local=not strict)
            if not strict:
                self._deliver(channel, payload)
        elif exc is not None:
            log.error("publish to %s failed", channel, exc_info=exc)
        if then is not None:
            then(exc is None)

    async def publish_numbered(self, path: str, topic: str, event: Mapping[str, Any], keep: int,
                               keep_for: float, *, wait: bool = True, at: tuple[str, ...] = ("id",),
                               strict: bool = False, then: Callable[[int | None], None] | None = None
                               ) -> int | None:
        """The id given, or None when the broker failed and only local subscribers got it.

        Without ``wait``, return None once the event is on its way (behind every earlier
        publish of this instance); a broker failure is then handled as it would have been.
        With ``strict``, nobody gets an event the broker did not take: BrokerError is
        raised (with ``wait``) or logged and counted (without). ``then`` gets the id
        given, or None, once the broker answered (not when BrokerError is raised).
        """
        head, tail = numbered_parts(event, at)
        channel = channel_name(path, topic)
        try:
            number = self.broker.post_numbered(channel, head, tail, keep, keep_for)
        except BrokerError as exc:
            if strict and wait:
                self._stats.broker_publish_failures += 1
                raise
            self._unposted(channel, head, tail, strict, exc)
            if then is not None:
                then(None)
            return None
        # Not waiting, the caller may post again at once: past _BACKLOG publishes that
        # have not left yet, it waits for its own, so a fast sender cannot grow the queue.
        # (Awaiting a done future, the memory broker's, does not suspend.)
        if wait or number.done() or self.broker.backlog > _BACKLOG:
            try:
                number_given: int | None = await number
            except BrokerError as exc:
                if strict and wait:
                    self._stats.broker_publish_failures += 1
                    raise
                self._unposted(channel, head, tail, strict, exc)
                number_given = None
            if then is not None:
                then(number_given)
            return number_given if wait else None
        number.add_done_callback(functools.partial(self._posted, channel, head, tail, strict, then))
        return None

    def _posted(self, channel: str, head: bytes, tail: bytes, strict: bool,
                then: Callable[[int | None], None] | None, number: asyncio.Future[int]) -> None:
        exc = None if number.cancelled() else number.exception()
        if isinstance(exc, BrokerError):
            self._unposted(channel, head, tail, strict, exc)
        elif exc is not None:
            log.error("numbered publish to %s failed", channel, exc_info=exc)
        if then is not None:
            then(None if exc is not None else number.result())

    def _unposted(self, channel: str, head: bytes, tail: bytes, strict: bool, exc: BrokerError) -> None:
        if strict:
            self._failed(channel, exc, local=False)
        else:
            self._failed_numbered(channel, head, tail, exc)

    def _failed_numbered(self, channel: str, head: bytes, tail: bytes, exc: BrokerError) -> None:
        self._failed(channel, exc)
        self._deliver(channel, head + b"null" + tail)

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
        events = [json.loads(_json(p)) for p in payloads]
        if self._cacheable(channel, changes):
            self._history[channel] = (limit, events)
        return events

    async def listen(self, path: str, topic: str, callback: Callable[[str], None]) -> None:
        """Call ``callback`` with every signal on ``topic``; returns once the broker delivers them here."""
        channel = signal_channel(path, topic)
        listening = self._listening.get(channel)
        if listening is None:
            ready = asyncio.get_running_loop().create_task(
                self.broker.subscribe(channel, functools.partial(self._signalled, channel)),
                name=f"wsgate listen {channel}")
            listening = self._listening[channel] = _Listening([], ready)
        listening.callbacks.append(callback)
        try:
            await asyncio.shield(listening.ready)
        except BaseException:
            await self.unlisten(path, topic, callback)
            raise

    async def unlisten(self, path: str, topic: str, callback: Callable[[str], None]) -> None:
        channel = signal_channel(path, topic)
        listening = self._listening.get(channel)
        if listening is None or callback not in listening.callbacks:
            return
        listening.callbacks.remove(callback)
        if listening.callbacks:
            return
        del self._listening[channel]
        with contextlib.suppress(BaseException):
            await listening.ready
        await self.broker.unsubscribe(channel)

    def _signalled(self, channel: str, payload: bytes) -> None:
        listening = self._listening.get(channel)
        if listening is None:
            return
        message = _json(payload).decode()
        for callback in list(listening.callbacks):
            try:
                callback(message)
            except Exception:
                log.exception("signal listener of %s failed", channel)

    async def signal(self, path: str, topic: str, message: str) -> None:
        """Send ``message`` to the listeners of ``topic`` on every instance.

        When the broker fails, this instance's listeners still get it; BrokerError is raised.
        """
        channel = signal_channel(path, topic)
        payload = b"t" + message.encode()
        try:
            await self.broker.publish(channel, payload)
        except BrokerError as exc:
            self._failed(channel, exc)
            self._signalled(channel, payload)
            raise

    def _cacheable(self, channel: str, changes: int) -> bool:
        # Only what no numbered event overtook while the broker answered; without a
        # local subscriber nothing would tell this instance that the channel changed.
        return channel in self._local and channel not in self._subscribing and self._changes.get(channel, 0) == changes

    def _failed(self, channel: str, exc: BrokerError, *, local: bool = True) -> None:
        self._stats.broker_publish_failures += 1
        log.warning("broker publish to %s failed, %s: %s", channel,
                    "delivered locally only" if local else "nobody got it", exc)
