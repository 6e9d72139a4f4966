"""One live endpoint: its handler instance, its open connections, its Context."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any

from ..auth.authenticator import AuthenticatorImpl
from ..auth.identity import AuthFailure, Handshake, Identity, redact
from ..broker.base import DEFAULT_TTL, check_ttl
from ..config import Endpoint
from ..connection import Connection
from ..errors import BrokerError, TokenRejected
from ..handler import Context, Handler, Message, Recovery
from ..observe.stats import EndpointStats
from ..policy.origin import OriginPolicy
from .frames import encode
from .frozen import freeze
from .hub import Hub

__all__ = ["EndpointContext", "LiveEndpoint"]

_NOWHERE = Recovery(False, "", ())
_FROZEN_KEPT = 64  # event lists kept frozen per endpoint, for the topics joined most recently


class LiveEndpoint:
    """One endpoint as the gateway runs it: the handler instance, its connections and tasks.

    After a reload that changes only policy, the runtime is kept (same handler, same
    connections) and ``endpoint`` is swapped, which new connections then see. The
    handler never sees this object, only its ``context``.
    """

    def __init__(self, endpoint: Endpoint, hub: Hub, stats: EndpointStats,
                 authenticators: Callable[[], Mapping[str, AuthenticatorImpl]] = dict) -> None:
        self.endpoint = endpoint
        self.authenticators = authenticators  # the gateway's current ones: a reload replaces them
        self.path = endpoint.path
        self.logger = logging.getLogger(f"wsgate.endpoint.{endpoint.path}")
        self.origin_policy = OriginPolicy.from_config(endpoint.policy.origins, endpoint.policy.allow_missing_origin)
        self.stats = stats
        self.hub = hub
        self.open: set[Connection] = set()
        self.connecting: set[Connection] = set()  # whose on_connect is still running
        self.tasks: set[asyncio.Task[None]] = set()
        self.context = EndpointContext(self)
        cls: type[Handler[Any]] = endpoint.handler_cls
        self.handler = cls(endpoint.options, self.context)
        self._idle = asyncio.Event()
        self._idle.set()

    def update(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.origin_policy = OriginPolicy.from_config(endpoint.policy.origins, endpoint.policy.allow_missing_origin)

    @property
    def connections(self) -> frozenset[Connection]:
        return frozenset(self.open)

    def attach(self, conn: Connection) -> None:
        self.open.add(conn)
        self.connecting.add(conn)
        self._idle.clear()

    def connected(self, conn: Connection) -> None:
        """``on_connect`` has returned: what its subscriptions held goes out now."""
        self.connecting.discard(conn)
        self.hub.release(conn)

    async def detach(self, conn: Connection) -> None:
        self.open.discard(conn)
        self.connecting.discard(conn)
        await self.hub.leave_all(conn, self.path)
        if not self.open:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def stop(self) -> None:
        """Cancel background work, then run the handler's ``shutdown``."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        try:
            await self.handler.shutdown()
        except Exception:
            self.logger.exception("handler shutdown() of %s failed", self.path)


class EndpointContext(Context):
    """The ``Context`` a handler is given: the documented members, and nothing of the runtime."""

    __slots__ = ("_frozen", "_live", "logger", "path")

    def __init__(self, live: LiveEndpoint) -> None:
        self._live = live
        self.path = live.path
        self.logger = live.logger
        # The hub hands every fresh join of an unchanged topic the same parsed list:
        # each is frozen once (keyed by identity; the list is kept, so its id stays its own).
        self._frozen: dict[int, tuple[list[dict[str, Any]], tuple[Mapping[str, Any], ...]]] = {}

    def _freeze(self, events: list[dict[str, Any]], shared: bool) -> tuple[Mapping[str, Any], ...]:
        cached = self._frozen.get(id(events))
        if cached is not None and cached[0] is events:
            return cached[1]
        frozen: tuple[Mapping[str, Any], ...] = freeze(events)
        if shared:
            if len(self._frozen) >= _FROZEN_KEPT:
                del self._frozen[next(iter(self._frozen))]
            self._frozen[id(events)] = (events, frozen)
        return frozen

    @property
    def connections(self) -> Collection[Connection]:
        return self._live.connections

    def broadcast(self, message: Message, connections: Collection[Connection] | None = None) -> int:
        frame = encode(message)
        targets = self._live.open if connections is None else connections
        return sum(1 for conn in targets if conn._deliver(frame))

    async def subscribe(self, conn: Connection, topic: str, since: int | None = None, epoch: str | None = None,
                        *, history: int = 0, keep_for: float = 600.0, max_bytes: int = 0,
                        position: bool = True) -> Recovery:
        live = self._live
        connecting = conn in live.connecting
        if not position:
            await live.hub.subscribe(conn, self.path, topic, hold=connecting)
            return _NOWHERE
        await live.hub.subscribe(conn, self.path, topic, hold=True)
        try:
            replay, events = await live.hub.replay(conn, self.path, topic, since, epoch, history, keep_for,
                                                   max_bytes)
        except BrokerError as exc:
            self.logger.warning("history of %r unavailable: %s", topic, exc)
            return Recovery(False, "", ())
        finally:
            if not connecting:
                live.hub.release(conn)
        return Recovery(replay.recovered, replay.epoch, self._freeze(events, shared=since is None), replay.latest)

    async def unsubscribe(self, conn: Connection, topic: str) -> None:
        await self._live.hub.unsubscribe(conn, self.path, topic)

    async def publish(self, topic: str, message: Message, *, wait: bool = True,
                      then: Callable[[bool], None] | None = None) -> None:
        await self._live.hub.publish(self.path, topic, message, wait=wait, then=then)

    async def publish_numbered(self, topic: str, event: Mapping[str, Any], keep: int,
                               keep_for: float = 0.0, *, wait: bool = True, at: str = "id",
                               strict: bool = False, then: Callable[[int | None], None] | None = None
                               ) -> int | None:
        return await self._live.hub.publish_numbered(self.path, topic, event, keep, keep_for, wait=wait,
                                                     at=tuple(at.split(".")), strict=strict, then=then)

    async def history(self, topic: str, limit: int) -> tuple[Mapping[str, Any], ...]:
        return self._freeze(await self._live.hub.history(self.path, topic, limit), shared=True)

    async def stream(self, topic: str, limit: int, *, keep_for: float = 600.0) -> Recovery:
        replay, events = await self._live.hub.stream(self.path, topic, limit, keep_for)
        return Recovery(False, replay.epoch, self._freeze(events, shared=False), replay.latest)

    def _presence_key(self, topic: str) -> str:
        return f"wsgate:{self.path}:{topic}:presence"

    async def claim(self, topic: str, member: str, *, ttl: float = DEFAULT_TTL) -> bool:
        return await self._live.hub.broker.claim(self._presence_key(topic), member, check_ttl(ttl))

    async def hold(self, topic: str, member: str, *, ttl: float = DEFAULT_TTL) -> bool:
        return await self._live.hub.broker.hold(self._presence_key(topic), member, check_ttl(ttl))

    async def drop(self, topic: str, member: str) -> None:
        await self._live.hub.broker.drop(self._presence_key(topic), member)

    async def release(self, topic: str, member: str) -> bool:
        return await self._live.hub.broker.release(self._presence_key(topic), member)

    async def members(self, topic: str) -> list[str]:
        return await self._live.hub.broker.members(self._presence_key(topic))

    async def reap(self, topic: str) -> list[str]:
        return await self._live.hub.broker.reap(self._presence_key(topic))

    def spawn(self, work: Callable[[], Awaitable[None]], name: str) -> None:
        live = self._live

        async def run() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                live.stats.handler_errors += 1
                self.logger.exception("background task %r of %s failed", name, self.path)

        task = asyncio.get_running_loop().create_task(run(), name=f"{self.path}:{name}")
        live.tasks.add(task)
        task.add_done_callback(live.tasks.discard)

    @contextlib.asynccontextmanager
    async def preamble(self, conn: Connection) -> AsyncIterator[None]:
        live = self._live
        if conn in live.connecting:  # on_connect holds already, until it returns
            yield
            return
        live.connecting.add(conn)
        try:
            yield
        finally:
            live.connecting.discard(conn)
            live.hub.release(conn)

    async def listen(self, topic: str, callback: Callable[[str], None]) -> None:
        await self._live.hub.listen(self.path, topic, callback)

    async def unlisten(self, topic: str, callback: Callable[[str], None]) -> None:
        await self._live.hub.unlisten(self.path, topic, callback)

    async def signal(self, topic: str, message: str) -> None:
        await self._live.hub.signal(self.path, topic, message)

    async def authenticate(self, authenticator: str, token: str) -> Identity:
        impl = self._live.authenticators()[authenticator]
        handshake = Handshake(path=self.path, query={}, headers={}, remote="", token=token)
        try:
            return await impl.authenticate(handshake)
        except AuthFailure as exc:
            raise TokenRejected(exc.reason, redact(exc.detail, token)) from None

    def __repr__(self) -> str:
        return f"<Context of {self.path}>"
