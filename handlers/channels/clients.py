"""What the handler keeps per client and per subscription, and who is where. Pure."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from wsgate import Connection

from .options import Namespace

__all__ = ["Client", "Directory", "Sub", "ttl"]


def ttl(expires_at: float) -> int:
    """Whole seconds until ``expires_at`` (unix time), at least 1, as replies give ``ttl``."""
    return max(1, round(expires_at - time.time()))


@dataclass(slots=True)
class Sub:
    """One subscription of a client: its namespace's rules and what was given for it."""

    channel: str
    namespace: Namespace
    chan_info: Any = None
    expires_at: float | None = None
    epoch: str = ""
    member: str | None = None  # the presence member held, as claimed (info may change since)
    server_refresh: bool = False  # expiry is extended by the sub_refresh proxy, not by the client


@dataclass(slots=True, eq=False)
class Client:
    """A connection that sent ``connect``: who it is and what it is subscribed to."""

    conn: Connection
    id: str
    user: str
    conn_info: Any = None
    expires_at: float | None = None  # unix seconds; None: never
    meta: Any = None
    subs: dict[str, Sub] = field(default_factory=dict)
    pinged_at: float | None = None  # the last ping not answered yet
    server_refresh: bool = False  # expiry is extended by the refresh proxy, not by the client

    def info(self, sub: Sub | None = None) -> dict[str, Any]:
        """ClientInfo as pushes and presence show it."""
        info: dict[str, Any] = {"client": self.id, "user": self.user}
        if self.conn_info is not None:
            info["conn_info"] = self.conn_info
        if sub is not None and sub.chan_info is not None:
            info["chan_info"] = sub.chan_info
        return info


class Directory:
    """The clients of this instance by connection, by client id and by user."""

    def __init__(self) -> None:
        self._by_conn: dict[Connection, Client] = {}
        self._by_user: dict[str, set[Client]] = {}

    def add(self, client: Client) -> bool:
        """Add ``client``; True if it is the first of its user here."""
        self._by_conn[client.conn] = client
        users = self._by_user.setdefault(client.user, set())
        users.add(client)
        return len(users) == 1

    def remove(self, conn: Connection) -> Client | None:
        """Forget the client of ``conn`` and return it (None if it never connected)."""
        client = self._by_conn.pop(conn, None)
        if client is not None:
            users = self._by_user[client.user]
            users.discard(client)
            if not users:
                del self._by_user[client.user]
        return client

    def get(self, conn: Connection) -> Client | None:
        return self._by_conn.get(conn)

    def of_user(self, user: str, client_id: str | None = None) -> list[Client]:
        """The user's clients here (only ``client_id`` when given)."""
        return [c for c in self._by_user.get(user, ()) if client_id is None or c.id == client_id]

    def has_user(self, user: str) -> bool:
        return user in self._by_user

    def __iter__(self) -> Iterator[Client]:
        return iter(list(self._by_conn.values()))

    def __len__(self) -> int:
        return len(self._by_conn)

    def channels(self) -> dict[str, int]:
        """Subscribers here per channel."""
        counts: dict[str, int] = {}
        for client in self._by_conn.values():
            for channel in client.subs:
                counts[channel] = counts.get(channel, 0) + 1
        return counts
