"""The plugin API: what a handler implements and what it is given.

A handler is a class. The gateway owns the receive loop and applies every policy
(origin, limits, heartbeat, close codes) before and around the hooks, so a handler
only says what happens with messages. One instance serves one endpoint and may keep
shared state (a chat keeps its rooms there).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal

from pydantic import BaseModel, ConfigDict
from typing_extensions import TypeVar

from .auth.identity import Handshake, Identity

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["ACCEPTS", "Context", "Handler", "HttpAnswer", "HttpCall", "Message", "NoOptions", "Recovery"]

Message = str | bytes
ACCEPTS = ("text", "binary", "any")


class NoOptions(BaseModel):
    """Options model of a handler that takes none: any key under ``options:`` is an error."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class Recovery:
    """What ``Context.subscribe`` found; an immutable value (see ``subscribe``).

    ``recovered``: True if ``messages`` holds every event after the ``since`` asked for.
    ``latest``: the last id given on the topic, where a client's position now stands.
    ``epoch``: the life of the topic's ids, for the client to keep. ``messages``: the
    events, oldest first, as a tuple of read-only mappings. They are shared with every
    connection that joins the topic, so they cannot be changed (``dict(event)`` is a
    copy that can); ``json.dumps`` and ``send_json`` encode them as they are. Being
    immutable, they may be cached by identity: fresh joins to a topic whose history has
    not changed often get the very same tuple.
    """

    recovered: bool
    epoch: str
    messages: tuple[Mapping[str, Any], ...]
    latest: int = 0
    """The topic's last id given (0: none yet, or unknown while the broker is unavailable)."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True, slots=True, repr=False)
class HttpCall:
    """A ``POST <endpoint path>/api/<method>`` request, for ``Handler.on_http``; or a
    GET or POST under one of the handler's ``http_prefixes``.

    ``body`` is read whole (at most 1 MiB); ``headers`` are
    case-insensitive; ``remote`` is the client address (forwarded behind a trusted proxy).
    ``verb`` is the HTTP method, ``path`` the request's whole path, ``query`` its
    decoded query parameters (the last value of a repeated one). Under a prefix,
    ``method`` is the rest of the path after the prefix.
    """

    method: str
    headers: Mapping[str, str]
    body: bytes
    remote: str
    verb: str = "POST"
    path: str = ""
    query: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body as JSON (an empty body is ``{}``); ValueError if it is not JSON, NaN and
        Infinity included, which Python's json would otherwise take."""
        return json.loads(self.body or b"{}", parse_constant=_no_constants)

    def __repr__(self) -> str:
        # Headers carry API keys.
        return f"HttpCall(method={self.method!r}, remote={self.remote!r}, body={len(self.body)} bytes)"


_MAX_REASON = 123  # a close frame's payload is at most 125 bytes, 2 of them the code


def _sendable_close(code: int) -> bool:
    """A code a close frame may carry (RFC 6455 section 7.4.1 and the IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """What ``Handler.on_http`` answers: a status and a JSON (or other) body; or, for a
    WebSocket handshake under one of the handler's ``http_prefixes``, an immediate close
    (``websocket_close``)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    close: tuple[int, str] | None = None
    """With ``websocket_close``: the close frame's code and reason for a WebSocket handshake."""
    close_message: str | None = None
    """With ``websocket_close``: a text message sent before the close frame."""

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> HttpAnswer:
        """``obj`` as compact JSON (NaN and infinities refused with ValueError)."""
        return cls(status, json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())

    @classmethod
    def websocket_close(cls, code: int, reason: str, message: str | None = None) -> HttpAnswer:
        """Accept a WebSocket handshake only to send ``message`` (a text message, if given),
        then close with ``code`` and ``reason``: for a protocol whose clients must hear why
        they are refused (a WebSocket client sees only "failed" for an HTTP refusal, and
        may retry forever). Any other request, a plain GET or a POST, gets 404 with
        ``reason`` as plain text.

        ValueError if ``code`` cannot be sent in a close frame (1000-1003, 1007-1014 and
        3000-4999 can) or ``reason`` is over 123 bytes in UTF-8.
        """
        if not _sendable_close(code):
            raise ValueError(f"close code {code} cannot be sent: use 1000-1003, 1007-1014 or 3000-4999")
        if len(reason.encode()) > _MAX_REASON:
            raise ValueError(f"a close reason is at most {_MAX_REASON} bytes in UTF-8; {reason[:40]!r}... is "
                             f"{len(reason.encode())}")
        return cls(404, (reason + "\n").encode(), "text/plain", (code, reason), message)


class Context:
    """What the gateway lends a handler: its endpoint, its connections and the broker.

    Topics are per endpoint. ``publish`` reaches every connection subscribed to the
    topic on every gateway instance sharing the broker; ``broadcast`` reaches local
    connections only and frames the message once for all of them.

    The gateway makes one per endpoint and gives it to the handler as ``self.context``;
    it has the members documented here and nothing else.
    """

    __slots__ = ()

    path: str
    logger: logging.Logger

    @property
    def connections(self) -> Collection[Connection]:
        """The open connections of this endpoint on this instance."""
        raise NotImplementedError

    def broadcast(self, message: Message, connections: Collection[Connection] | None = None) -> int:
        """Queue ``message`` to ``connections`` (default: all of this endpoint's).

        The frame is encoded once; returns how many connections it was queued to.
        """
        raise NotImplementedError

    def broadcast_json(self, obj: Any, connections: Collection[Connection] | None = None) -> int:
        """``broadcast`` of ``obj`` as compact JSON, encoded as ``Connection.send_json`` does."""
        return self.broadcast(json.dumps(obj, separators=(",", ":"), ensure_ascii=False), connections)

    async def subscribe(self, conn: Connection, topic: str, since: int | None = None, epoch: str | None = None,
                        *, history: int = 0, keep_for: float = 600.0, max_bytes: int = 0,
                        position: bool = True) -> Recovery:
        """Deliver what is published on ``topic`` to ``conn`` until it leaves or closes.

        For topics published with ``publish_numbered``, this is also how a client
        resumes: pass the last id it saw (``since``) and the ``epoch`` it was given,
        and ``Recovery.messages`` holds every event after ``since`` (``recovered``
        True); if that is impossible, or without ``since``, it holds the last
        ``history`` events (``recovered`` False). ``Recovery.epoch`` is what the client
        keeps for next time. Called from ``on_connect``, no live message of the topic
        reaches ``conn`` before ``on_connect`` returns, and none that ``messages``
        already covers, so the handler can send its own preamble first. ``keep_for``
        bounds how long an epoch made for a topic nobody publishes to is kept.
        ``max_bytes`` (0: no bound) bounds what is read from the broker: the stored
        payloads of ``messages`` add up to at most that, a resume that needs more is
        not recovered, and the last ``history`` are then only the newest that fit.
        ``position=False`` skips the broker read, for a client that needs no position:
        the Recovery is then empty (no epoch, ``latest`` 0), and a join costs no broker
        round trip once another connection here has the topic.
        """
        raise NotImplementedError

    async def unsubscribe(self, conn: Connection, topic: str) -> None:
        """Stop delivering ``topic`` to ``conn``."""
        raise NotImplementedError

    async def publish(self, topic: str, message: Message, *, wait: bool = True,
                      then: Callable[[bool], None] | None = None) -> None:
        """Send ``message`` to every subscriber of ``topic`` on every instance.

        With ``wait=False`` it returns as soon as the message is on its way, behind every
        earlier publish of this instance (over Redis several then share a round trip).
        ``then``, if given, is called once the broker answered: True if it took the message.
        """
        raise NotImplementedError

    async def publish_numbered(self, topic: str, event: Mapping[str, Any], keep: int,
                               keep_for: float = 0.0, *, wait: bool = True, at: str = "id",
                               strict: bool = False, then: Callable[[int | None], None] | None = None
                               ) -> int | None:
        """Publish ``event`` as JSON with an ``"id"`` field added.

        ``at`` puts the id elsewhere: a dotted key path, such as ``"push.pub.offset"``,
        whose every key but the last names an object of ``event``. Everything said
        of ``"id"`` below holds for it. With ``strict``, nobody gets an event the
        broker did not take: ``BrokerError`` is raised (with ``wait``), or logged and counted.

        Ids count 1, 2, 3 ... per topic across all instances, with no gaps, and are
        delivered in id order. The last ``keep`` events are kept for ``history``. With
        ``keep_for`` (seconds), a topic with no event for that long is forgotten: its
        history, and its ids, which then start again from 1.
        Returns the id given. While the broker is unavailable the event still reaches
        this instance's subscribers, with ``"id": null``, and None is returned.

        With ``wait=False`` it returns None as soon as the event is on its way. Publishes
        from one instance reach the broker in the order they were made, so the next
        message of the same connection can be handled meanwhile and still comes after
        this one; with Redis, several then share a round trip. A failure is handled as
        above (local subscribers get ``"id": null``). ``then``, if given, is called with
        the id given (None on failure) once the broker answered: a reply that must say
        "taken" can wait for it while the connection goes on (not called when
        ``BrokerError`` is raised).
        """
        raise NotImplementedError

    async def history(self, topic: str, limit: int) -> tuple[Mapping[str, Any], ...]:
        """The last ``limit`` numbered events of ``topic``, oldest first, read-only as in ``Recovery``."""
        raise NotImplementedError

    async def stream(self, topic: str, limit: int, *, keep_for: float = 600.0) -> Recovery:
        """Where ``topic`` stands, without subscribing: its ``epoch``, ``latest`` id and last
        ``limit`` numbered events (``recovered`` is False). Creates the epoch, as
        ``subscribe`` does, living ``keep_for``. ``BrokerError`` when the broker fails.
        """
        raise NotImplementedError

    async def claim(self, topic: str, member: str, *, ttl: float = 30.0) -> bool:
        """Add ``member`` to the presence set of ``topic`` and hold it; False if already taken.

        This process then keeps the member alive, refreshing its expiry every ``ttl``/3
        (seconds), until ``release`` or ``drop``. If the process dies without cleanup
        (``kill -9``, a lost host), the member expires ``ttl`` after the last refresh:
        it leaves ``members``, may be claimed again, and ``reap`` returns it. An expired
        member that no ``reap`` has removed yet can be claimed (True).
        """
        raise NotImplementedError

    async def hold(self, topic: str, member: str, *, ttl: float = 30.0) -> bool:
        """Keep alive from this process too a ``member`` that is present; False if it is not.

        For a member claimed by another connection, perhaps on another process (a user's
        second tab): while any process holds it, it does not expire. Each successful
        ``claim`` or ``hold`` is one hold; ``drop`` gives one back.
        """
        raise NotImplementedError

    async def drop(self, topic: str, member: str) -> None:
        """Give back one hold of ``member`` without removing it. Never raises.

        Once no process holds it, the member expires ``ttl`` later (``reap`` returns it).
        """
        raise NotImplementedError

    async def release(self, topic: str, member: str) -> bool:
        """Remove ``member`` from the presence set of ``topic`` now; True if this call removed it.

        This process stops holding it first, so if the broker fails here the member
        still expires within its ``ttl``. False means it was gone already, for example
        reaped after it expired. A process that still holds it puts it back at its
        next refresh.
        """
        raise NotImplementedError

    async def members(self, topic: str) -> list[str]:
        """The presence set of ``topic`` across all instances, sorted, without expired members."""
        raise NotImplementedError

    async def reap(self, topic: str) -> list[str]:
        """Remove the expired members of ``topic`` and return them, sorted.

        Atomic across processes: each expired member is returned by exactly one call,
        so the caller that gets it can announce its departure. Members this process
        holds are refreshed first, never reaped.
        """
        raise NotImplementedError

    def spawn(self, work: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``work()`` in the background until it returns or the handler shuts down.

        An exception is logged with the endpoint path; it does not stop the gateway.
        """
        raise NotImplementedError

    def preamble(self, conn: Connection) -> AbstractAsyncContextManager[None]:
        """``async with context.preamble(conn):`` — what the block sends to ``conn`` goes
        out before any live message of the topics it subscribes ``conn`` to, as in
        ``on_connect`` (where this is implied).
        """
        raise NotImplementedError

    async def listen(self, topic: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(message)`` for every ``signal`` on ``topic``, from every instance.

        Signals are the handler's own messages between instances (no connection gets
        them): "disconnect user 7" reaches the instance that holds user 7. Returns once
        the broker delivers them here. The callback runs in the event loop; it must not
        block, and what it raises is logged.
        """
        raise NotImplementedError

    async def unlisten(self, topic: str, callback: Callable[[str], None]) -> None:
        """Stop calling ``callback`` for ``topic``."""
        raise NotImplementedError

    async def signal(self, topic: str, message: str) -> None:
        """Send ``message`` to the ``listen`` callbacks of ``topic`` on every instance.

        When the broker fails, this instance's callbacks still get it and ``BrokerError``
        is raised.
        """
        raise NotImplementedError

    async def authenticate(self, authenticator: str, token: str) -> Identity:
        """The identity a token carries, checked by ``authenticator`` of the ``auth:`` section.

        For protocols that send a token after the handshake. ``TokenRejected`` says why
        a token was refused (``reason`` "expired", "invalid", ...); ``KeyError`` if there
        is no such authenticator (an option naming one is checked at config load: its
        validator sees ``info.context["authenticators"]``).
        """
        raise NotImplementedError


OptionsT = TypeVar("OptionsT", bound=BaseModel, default=NoOptions)


class Handler(Generic[OptionsT]):
    """Base class of every handler plugin. Override the hooks you need.

    ``Handler[MyOptions]`` types ``self.options``; set ``Options = MyOptions`` too, so
    the gateway knows which model validates the endpoint's ``options:``.

    Class attributes:

    ``Options``
        A pydantic model validated from the endpoint's ``options:`` before the server
        binds; the instance gets it as ``self.options``.
    ``accepts``
        ``"text"``, ``"binary"`` or ``"any"``. A message of the other kind closes the
        connection with 1003 before ``on_message`` sees it.
    ``policy_defaults``
        Policy keys this handler wants unless the config says otherwise (the chat
        handler turns rate limiting on this way).
    ``shutdown_close``
        ``(code, reason)`` its clients get when the gateway drains, for a protocol
        that defines its own (Centrifugo's is 3001 "shutdown"); None: 1001, or 1012
        for a restart drain.
    """

    Options: ClassVar[type[BaseModel]] = NoOptions
    accepts: ClassVar[Literal["text", "binary", "any"]] = "any"
    policy_defaults: ClassVar[Mapping[str, Any]] = {}
    shutdown_close: ClassVar[tuple[int, str] | None] = None
    http_prefixes: tuple[str, ...] = ()
    """Root URL path prefixes (``"/apps/42/"``) whose GET and POST requests go to
    ``on_http`` too, for a protocol whose HTTP API lives at fixed paths; set it in
    ``__init__``. A path that is an endpoint's, or one of wsgate's own, is never one."""

    def __init__(self, options: OptionsT, context: Context) -> None:
        self.options = options
        self.context = context

    async def startup(self) -> None:
        """Called once before the endpoint accepts connections."""

    async def authorize(self, handshake: Handshake) -> None:
        """Called before the upgrade, after the endpoint's ``auth`` and ``allow`` passed.

        ``raise wsgate.Refuse(status, reason)`` to answer the handshake with that HTTP
        status (403 by default); return to accept. ``handshake.user`` and
        ``handshake.claims`` are set on an endpoint with ``auth``. The connection does
        not exist yet, so nothing can be sent.
        """

    async def shutdown(self) -> None:
        """Called once after the endpoint's last connection is gone."""

    async def on_connect(self, conn: Connection) -> None:
        """A client connected; policy checks have passed."""

    async def on_message(self, conn: Connection, message: Message) -> None:
        """A whole message arrived: ``str`` for text frames, ``bytes`` for binary."""

    async def on_http(self, call: HttpCall) -> HttpAnswer:
        """Answer ``POST <endpoint path>/api/<method>``; a handler that does not override
        this has no HTTP API there (404). The gateway has checked the Host header only:
        the handler checks the caller's credentials itself.
        """
        return HttpAnswer.json({"error": f"{call.method}: this endpoint has no HTTP API"}, status=404)

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        """The connection closed with ``code``; always called once per connection.

        After ``conn.close()`` (or a close by policy) no other hook runs for ``conn``:
        messages that arrive while the close handshake completes are discarded.
        """
