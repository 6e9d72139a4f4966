"""``Connection``: one client as a handler sees it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from .auth.identity import Identity
from .closecode import CloseCode
from .errors import ConnectionClosed
from .gateway.frames import encode

__all__ = ["Connection"]

_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


class _Link(Protocol):
    """What a Connection needs from the gateway's session behind it."""

    @property
    def closing(self) -> bool: ...

    def close(self, code: int, reason: str) -> None: ...

    def handshake_query(self) -> Mapping[str, str]:
        """The query parameters of the handshake request."""
        ...


class Connection:
    """An open WebSocket client of one endpoint, made by the gateway.

    Read-only, from the handshake: ``id`` (unique in this process), ``path`` (the
    endpoint), ``remote`` (client address, the forwarded one when the peer is a trusted
    proxy), ``headers`` and ``query`` (mappings of the handshake request),
    ``subprotocol`` (the negotiated one or None), ``user`` and ``claims`` (who the
    endpoint's ``auth`` says the client is: None and empty on an endpoint without
    ``auth``). ``state`` is a dict the handler may use freely.

    Sends never block on a slow client: they queue, bounded by the endpoint's
    ``send_queue``, and the slow-client policy applies when the queue is full.
    """

    __slots__ = ("__weakref__", "_claims", "_deliver", "_headers", "_id", "_link", "_path", "_query", "_remote",
                 "_state", "_subprotocol", "_user")
    _link: _Link
    _deliver: Callable[[bytes], bool]
    _id: str
    _path: str
    _remote: str
    _headers: Mapping[str, str]
    _query: Mapping[str, str] | None
    _subprotocol: str | None
    _user: str | None
    _claims: Mapping[str, Any]
    _state: dict[str, Any] | None

    def __init__(self) -> None:
        raise TypeError("connections are made by the gateway, one per client; to get real ones in a test, "
                        "connect to a gateway started with wsgate.testing.run_gateway")

    @classmethod
    def _open(cls, link: _Link, deliver: Callable[[bytes], bool], *, id: str, path: str, remote: str,
              headers: Mapping[str, str], subprotocol: str | None, query: Mapping[str, str] | None = None,
              identity: Identity | None = None) -> Connection:
        """The gateway's constructor, not part of the plugin API."""
        conn = object.__new__(cls)
        conn._link = link
        # Queues an encoded frame; False if refused. Broadcasts frame a message once and
        # call this for every receiver, so it is the writer's own method, not a wrapper.
        conn._deliver = deliver
        conn._id = id
        conn._path = path
        conn._remote = remote
        conn._headers = headers
        # None: asked of the link on first use. Parsed, even an empty query costs ~350
        # bytes, which a connection whose handler never reads it need not carry.
        conn._query = query
        conn._subprotocol = subprotocol
        conn._user = None if identity is None else identity.user
        claims = _NO_CLAIMS if identity is None else identity.claims
        conn._claims = MappingProxyType(claims) if isinstance(claims, dict) else claims
        conn._state = None  # made on first use: many handlers never need it
        return conn

    @property
    def id(self) -> str:
        """A short string unique in this process, such as ``"c12"``."""
        return self._id

    @property
    def path(self) -> str:
        """The endpoint's path."""
        return self._path

    @property
    def remote(self) -> str:
        """The client's address; behind a trusted proxy, the forwarded one."""
        return self._remote

    @property
    def headers(self) -> Mapping[str, str]:
        """The handshake request's headers (read-only, case-insensitive)."""
        return self._headers

    @property
    def query(self) -> Mapping[str, str]:
        """The query parameters of the handshake URL (read-only)."""
        if self._query is None:
            self._query = self._link.handshake_query()
        return self._query

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol negotiated at the handshake, or None."""
        return self._subprotocol

    @property
    def user(self) -> str | None:
        """Who the endpoint's ``auth`` says the client is; None on an endpoint without ``auth``."""
        return self._user

    @property
    def claims(self) -> Mapping[str, Any]:
        """The identity's claims (read-only); empty on an endpoint without ``auth``."""
        return self._claims

    @property
    def state(self) -> dict[str, Any]:
        """A dict for the handler's own per-connection data."""
        if self._state is None:
            self._state = {}
        return self._state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self._state = value

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed; sends then raise."""
        return self._link.closing

    async def send(self, message: str | bytes) -> None:
        """Queue a text (``str``) or binary (``bytes``) message.

        Raises ``ConnectionClosed`` if the connection is already closing.
        """
        if not self._deliver(encode(message)) and self._link.closing:
            raise ConnectionClosed(f"connection {self.id} on {self.path} is closed")

    async def send_json(self, obj: Any) -> None:
        """Queue ``obj`` encoded as compact JSON (UTF-8, not ``\\u`` escapes) in a text message."""
        await self.send(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close after everything queued so far has been written.

        No hook but ``on_disconnect`` runs for this connection afterwards.
        """
        self._link.close(code, reason)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.path} from {self.remote}>"
