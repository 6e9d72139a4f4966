"""``Connection``: one client as a handler sees it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConnectionClosed
from .metrics import EndpointStats
from .outbox import Outbox, encode

__all__ = ["Connection"]

Closer = Callable[[int, str], None]


class Connection:
    """An open WebSocket client of one endpoint.

    Attributes: ``id`` (unique in this process), ``path`` (the endpoint), ``remote``
    (client address, the forwarded one when the peer is a trusted proxy), ``headers``
    and ``query`` (read-only mappings of the handshake request), ``subprotocol`` (the
    negotiated one or None) and ``state``, a dict the handler may use freely.

    Sends never block on a slow client: they queue, bounded by the endpoint's
    ``send_queue``, and the slow-client policy applies when the queue is full.
    """

    __slots__ = (
        "__weakref__",
        "_closer",
        "_outbox",
        "_stats",
        "headers",
        "id",
        "path",
        "query",
        "remote",
        "state",
        "subprotocol",
    )

    def __init__(
        self,
        *,
        id: str,
        path: str,
        remote: str,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        subprotocol: str | None,
        outbox: Outbox,
        closer: Closer,
        stats: EndpointStats,
    ) -> None:
        self.id = id
        self.path = path
        self.remote = remote
        self.headers = headers
        self.query = query
        self.subprotocol = subprotocol
        self.state: dict[str, Any] = {}
        self._outbox = outbox
        self._closer = closer
        self._stats = stats

    @property
    def closed(self) -> bool:
        """True once the connection is closing or closed; sends then raise."""
        return self._outbox._closed

    async def send(self, message: str | bytes) -> None:
        """Queue a text (``str``) or binary (``bytes``) message.

        Raises ``ConnectionClosed`` if the connection is already closing.
        """
        frame = encode(message)
        if self._outbox.push(frame):
            stats = self._stats
            stats.messages_out += 1
            stats.bytes_out += len(frame)
        elif self.closed:
            raise ConnectionClosed(f"connection {self.id} on {self.path} is closed")

    async def send_json(self, obj: Any) -> None:
        """Queue ``obj`` encoded as JSON in a text message."""
        await self.send(json.dumps(obj, separators=(",", ":")))

    def deliver(self, frame: bytes) -> bool:
        """Queue an already encoded frame (used by broadcasts); False if refused."""
        return self._outbox.push(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after everything queued so far has been written."""
        self._closer(code, reason)

    def __repr__(self) -> str:
        return f"<Connection {self.id} {self.path} from {self.remote}>"
