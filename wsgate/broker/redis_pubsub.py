"""The Redis broker's pub/sub side: the one subscriber connection and the listener that keeps it.

``RedisSubscriber`` remembers the channels this instance needs and keeps one pub/sub
connection subscribed to exactly those. Its listener task reads that connection,
PINGs it every second, gives it up after 3.5 s of silence or a failed (UN)SUBSCRIBE,
reconnects with backoff (0.1 s doubling to 1 s) and subscribes again to every channel
still needed. ``up`` turns True at the first PONG on a connection, which Redis sends only
after confirming the subscriptions made before it. ``RedisBroker`` (``redis.py``) gives
it its connection, runs its listener and counts ``up`` in ``healthy``.

``subscribe`` returns once the channel is subscribed (or after ``timeout``); asked to,
also while the connection is being restored: a join subscribes first and reads the
history second, and a subscription that is not there yet would leave a gap between the two.
``answering`` tells whether the connection still works right now (a PING sent now came
back): a command connection that was closed under the broker may mean a restarted Redis,
which has forgotten every subscription, and that is noticed on each connection separately.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import Delivery
from .redis_typing import untyped

__all__ = ["RedisSubscriber"]

log = logging.getLogger("wsgate.broker.redis")  # the broker's logger: one name for all its messages

_BACKOFF_MIN, _BACKOFF_MAX = 0.1, 1.0  # pub/sub reconnect delays, seconds
_PUBSUB_PING = 1.0  # PING on the pub/sub connection this often ...
_PUBSUB_SILENT = 3.5  # ... and give it up when nothing came back for this long
_ERRORS = (RedisError, OSError, TimeoutError)  # TimeoutError: asyncio.timeout expired


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class RedisSubscriber:
    """One pub/sub connection subscribed to every channel in use, reconnected when it fails.

    ``client`` is the Redis client it opens pub/sub connections with (the broker sets and
    closes it); ``shown_url`` names the server in logs; ``timeout`` bounds each command.
    """

    def __init__(self, shown_url: str, timeout: float) -> None:
        self.shown_url = shown_url
        self.client: Redis | None = None
        self.up = False
        self.closed = False  # set by the broker's close(): the listener returns
        self._timeout = timeout
        self._channels: dict[str, Delivery] = {}
        self._pubsub: PubSub | None = None
        self._pubsub_broken = False
        self._deadline: asyncio.Timeout | None = None  # the pump's, while it runs
        self._heard = 0.0  # loop time of the last reply on the pub/sub connection
        # Sends on the pub/sub connection, and taking the snapshot to resubscribe, are
        # serialised so the channels subscribed always end up equal to ``_channels``.
        self._sub_lock = asyncio.Lock()
        # One entry per SUBSCRIBE sent for a channel, in order; Redis confirms each once.
        # A waiter gets True when confirmed, False when the connection ended first.
        self._expected: dict[str, deque[asyncio.Future[bool] | None]] = {}
        self._reopened: list[asyncio.Future[bool]] = []  # waiting for ``up`` on the next connection
        # PINGs sent and PONGs read on this connection, and who waits for which PONG.
        self._pings = self._pongs = 0
        self._pong_waiters: list[tuple[int, asyncio.Future[bool]]] = []

    async def subscribe(self, channel: str, deliver: Delivery, *, through_reconnect: bool = False) -> None:
        """Deliver ``channel``'s messages to ``deliver``; returns once Redis confirmed.

        While the pub/sub connection is down, the channel is subscribed when it is back;
        with ``through_reconnect`` this waits for that too, else it returns at once. It
        returns after ``timeout`` in any case (Redis is then unreachable: the listener
        keeps trying), or at once when ``unsubscribe`` came first. It never raises.
        """
        self._channels[channel] = deliver
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while not self.closed and self._channels.get(channel) is deliver:
            waiter: asyncio.Future[bool] = loop.create_future()
            async with self._sub_lock:
                if self._channels.get(channel) is not deliver:
                    return
                pubsub = self._pubsub
                if pubsub is None:
                    if not through_reconnect:
                        return
                    # The next connection subscribes to every channel recorded before
                    # it takes the lock, so to this one too; its first PONG confirms them.
                    self._reopened.append(waiter)
                else:
                    self._expected.setdefault(channel, deque()).append(waiter)
                    # On failure the listener reconnects, and the waiter gets False.
                    if not await self._send(pubsub, self._subscribe_command(pubsub), channel) \
                            and not through_reconnect:
                        return
            try:
                async with asyncio.timeout_at(deadline):
                    if await waiter or not through_reconnect:
                        return
            except TimeoutError:
                log.warning("Redis did not confirm the subscription to %s within %ss", channel, self._timeout)
                return
            finally:
                if waiter in self._reopened:
                    self._reopened.remove(waiter)

    def when_up(self) -> asyncio.Future[bool]:
        """A future that is True once ``up`` (at once if it is): the connection's first PONG."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self.up:
            waiter.set_result(True)
        else:
            self._reopened.append(waiter)
        return waiter

    async def answering(self) -> bool:
        """True if the pub/sub connection is up and answers a PING sent now (within the
        caller's time); False once it is known to be down."""
        pubsub = self._pubsub
        if pubsub is None or not self.up:
            return False
        self._pings += 1
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pong_waiters.append((self._pings, waiter))
        try:
            await pubsub.ping()
        except _ERRORS:
            return False
        return await waiter

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``; never raises."""
        if self._channels.pop(channel, None) is None:
            return
        async with self._sub_lock:
            pubsub = self._pubsub
            if pubsub is not None and channel not in self._channels:
                await self._send(pubsub, self._unsubscribe_command(pubsub), channel)

    # SUBSCRIBE and UNSUBSCRIBE; the cluster broker's subscribers use the sharded commands.
    def _subscribe_command(self, pubsub: PubSub) -> Callable[..., Awaitable[Any]]:
        return pubsub.subscribe

    def _unsubscribe_command(self, pubsub: PubSub) -> Callable[..., Awaitable[Any]]:
        return pubsub.unsubscribe

    async def _send(self, pubsub: PubSub, command: Callable[..., Awaitable[Any]], channel: str) -> bool:
        """Send (UN)SUBSCRIBE; on failure have the listener reconnect (and resubscribe)."""
        try:
            async with asyncio.timeout(self._timeout):
                await command(channel)
        except _ERRORS as exc:
            log.warning("Redis pub/sub command for %s failed (%s); reconnecting", channel, exc or "timed out")
            self._pubsub_broken = True
            if self._deadline is not None:  # the pump ends now, not at the next message
                self._deadline.reschedule(asyncio.get_running_loop().time())
            return False
        return True

    async def open(self) -> PubSub:
        """A connected PubSub subscribed to every channel in ``_channels``."""
        assert self.client is not None
        pubsub = self.client.pubsub()
        try:
            await untyped(pubsub.connect)()
            async with self._sub_lock:
                channels = list(self._channels)
                if channels:
                    await self._subscribe_command(pubsub)(*channels)
                    for channel in channels:
                        self._expected.setdefault(channel, deque()).append(None)
                # Replies come in order: the PONG says every subscription above is active.
                self._pings, self._pongs = 1, 0
                await pubsub.ping()
                self._pubsub_broken = False
                self._pubsub = pubsub
        except BaseException:
            self.forget_expected()
            await self._discard(pubsub)
            raise
        return pubsub

    async def listen(self, pubsub: PubSub | None) -> None:
        """Read the pub/sub connection until cancelled, reconnecting whenever it fails."""
        delay = _BACKOFF_MIN
        while not self.closed:
            if pubsub is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)
                try:
                    async with asyncio.timeout(self._timeout * 3):
                        pubsub = await self.open()
                except _ERRORS as exc:
                    log.debug("Redis pub/sub reconnect to %s failed: %s", self.shown_url, exc or "timed out")
                    continue
                except Exception:
                    log.exception("Redis pub/sub reconnect to %s failed", self.shown_url)
                    continue
                delay = _BACKOFF_MIN
            try:
                await self._pump(pubsub)
            except _ERRORS as exc:
                log.warning("Redis pub/sub connection to %s lost (%s); reconnecting",
                            self.shown_url, exc or "timed out")
            except Exception:
                log.exception("Redis pub/sub listener failed; reconnecting")
            finally:
                self.up = False
                self._pubsub = None
                self.forget_expected()
                await self._discard(pubsub)
            pubsub = None

    @staticmethod
    async def _discard(pubsub: PubSub) -> None:
        try:
            await untyped(pubsub.aclose)()
        except Exception as exc:
            log.debug("closing a Redis pub/sub connection: %s", exc)

    async def _pump(self, pubsub: PubSub) -> None:
        connection = pubsub.connection
        assert connection is not None
        loop = asyncio.get_running_loop()
        self._heard = loop.time()
        # The reads have no timeout of their own (a timer per message costs more than the
        # message): the watchdog expires this one when the connection falls silent.
        watchdog = None
        try:
            async with asyncio.timeout(None) as deadline:
                self._deadline = deadline
                watchdog = loop.create_task(self._watch(pubsub, deadline), name="wsgate redis pub/sub watchdog")
                while True:
                    # Replies already buffered are read without yielding to the loop, so a
                    # burst is fanned out in one pass and each client's frames share a write.
                    try:
                        reply = await connection.read_response(timeout=math.inf, disconnect_on_error=False,
                                                               push_request=True)
                    except ResponseError as exc:  # one command refused, the connection is fine: _handle decides
                        reply = exc
                    self._heard = loop.time()
                    self._handle(reply)
        except TimeoutError:
            if self._pubsub_broken:
                raise RedisError("a subscribe command failed") from None
            raise RedisTimeoutError(f"no reply to PING for {_PUBSUB_SILENT}s") from None
        finally:
            self._deadline = None
            if watchdog is not None:
                watchdog.cancel()

    async def _watch(self, pubsub: PubSub, deadline: asyncio.Timeout) -> None:
        """PING every second; end the pump when nothing came back for a while, or a
        (UN)SUBSCRIBE failed, or the broker is closing."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_PUBSUB_PING)
            if self._pubsub_broken or self.closed or loop.time() - self._heard > _PUBSUB_SILENT:
                break
            try:
                self._pings += 1
                await pubsub.ping()
            except _ERRORS:
                break
        deadline.reschedule(loop.time())

    def _handle(self, reply: Any) -> None:
        kind = reply[0] if isinstance(reply, list) and reply else reply
        if kind == b"message":
            channel = _text(reply[1])
            deliver = self._channels.get(channel)
            if deliver is None:
                return  # unsubscribed while the message was on its way
            try:
                deliver(reply[2])
            except Exception:
                log.exception("delivering a message from %s failed", channel)
        elif kind == b"subscribe":
            self._confirmed(_text(reply[1]))
        elif kind in (b"pong", b"PONG"):
            self._ponged()
        elif isinstance(kind, ResponseError):
            raise kind  # a refused (UN)SUBSCRIBE: reconnect, which subscribes again

    def _ponged(self) -> None:
        self._pongs += 1
        if self._pong_waiters:
            waiting = [(n, w) for n, w in self._pong_waiters if n > self._pongs]
            for n, waiter in self._pong_waiters:
                if n <= self._pongs and not waiter.done():
                    waiter.set_result(True)
            self._pong_waiters = waiting
        if not self.up:
            self.up = True
            log.info("Redis pub/sub connected to %s (%d channels)", self.shown_url, len(self._channels))
            reopened, self._reopened = self._reopened, []
            for waiter in reopened:
                if not waiter.done():
                    waiter.set_result(True)

    def _confirmed(self, channel: str) -> None:
        expected = self._expected.get(channel)
        if not expected:
            return
        waiter = expected.popleft()
        if not expected:
            del self._expected[channel]
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def forget_expected(self) -> None:
        """The connection ended: tell everyone waiting for a reply on it that none will come.

        ``subscribe`` then waits for the next connection, unless the subscriber is closed.
        """
        waiters = [w for expected in self._expected.values() for w in expected if w is not None]
        waiters += [w for _, w in self._pong_waiters]
        if self.closed:
            waiters += self._reopened
            self._reopened = []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(False)
        self._expected.clear()
        self._pong_waiters = []
