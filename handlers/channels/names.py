"""Channel names: length and characters, namespaces, user-limited channels. Pure."""

from __future__ import annotations

import re

from .protocol import error

__all__ = ["allowed_users", "check_channel", "namespace_of", "user_limited"]

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1


def check_channel(channel: object, max_length: int) -> str:
    """``channel`` if it is a usable name; error 107 if it is empty, too long or has control characters."""
    if not isinstance(channel, str) or not channel:
        raise error(107, "bad request: a channel is a non-empty string")
    if len(channel) > max_length:
        raise error(107, f"bad request: channel name longer than {max_length} characters")
    if _CONTROL.search(channel):
        raise error(107, "bad request: control characters in a channel name")
    return channel


def namespace_of(channel: str, separator: str = ":") -> str:
    """The namespace ``ns`` of ``ns:rest``; "" (the default namespace) without a separator."""
    head, sep, _ = channel.partition(separator)
    return head if sep else ""


def user_limited(channel: str, boundary: str = "#") -> frozenset[str] | None:
    """The users of a user-limited channel (``dialog#42,43``), or None for other channels."""
    _, sep, users = channel.rpartition(boundary)
    if not sep:
        return None
    return frozenset(u for u in users.split(",") if u)


def allowed_users(channel: str, user: str) -> bool:
    """Whether ``user`` may subscribe to ``channel`` as far as user limits go."""
    users = user_limited(channel)
    return users is None or (bool(user) and user in users)

