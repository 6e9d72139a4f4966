"""``Connection``: one client as a handler sees it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

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
    """An open WebSocket client of one endpoint.

    Attributes: ``id`` (unique in this process), ``path`` (the endpoint), ``remote``
    (client address, the forwarded one when the peer is a trusted proxy), ``headers``
    and ``query`` (read-only mappings of the handshake request), ``subprotocol`` (the
    negotiated one or None), ``user`` and ``claims`` (who the endpoint's ``auth`` says
    the client is: None and empty on an endpoint without ``auth``) and ``state``, a
    dict the handler may use freely.

    Sends never block on a slow client: they queue, bounded by the endpoint's
    ``send_queue``, and the slow-client policy applies when the queue is full.
    """

    __slots__ = ("__weakref__", "_deliver", "_link", "_query", "_state", "claims", "headers", "id", "path", "remote",
                 "subprotocol", "user")

    def __init__(self, link: _Link, deliver: Callable[[bytes], bool], *, id: str, path: str, remote: str,
                 headers: Mapping[str, str], subprotocol: str | None, query: Mapping[str, str] | None = None,
                 user: str | None = None, claims: Mapping[str, Any] = _NO_CLAIMS) -> None:
        self._link = link
        # Queues an encoded frame; False if refused. Broadcasts frame a message once and
        # call this for every receiver, so it is the writer's own method, not a wrapper.
        self._deliver = deliver
        self.id = id
        self.path = path
        self.remote = remote
        self.headers = headers
        # None: asked of the link on first use. Parsed, even an empty query costs ~350
        # bytes, which a connection whose handler never reads it need not carry.
        self._query = query
        self.subprotocol = subprotocol
        self.user = user
        self.claims = claims
        self._state: dict[str, Any] | None = None  # made on first use: many handlers never need it

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
    def query(self) -> Mapping[str, str]:
        """The query parameters of the handshake URL (read-only)."""
        if self._query is None:
            self._query = self._link.handshake_query()
        return self._query

    @query.setter
    def query(self, value: Mapping[str, str]) -> None:
        self._query = value

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
