"""The Pusher Channels protocol, version 7: its messages, error codes and channel kinds. Pure.

Every message is a JSON object ``{"event", "channel"?, "data"?}``. The server's ``data`` is
a JSON-encoded string for its own events (``connection_established``,
``subscription_succeeded``, members), the string the HTTP API was given for a triggered
event, and the value a client sent for a client event; ``pusher:error`` carries an object.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

__all__ = [
    "APP_NOT_FOUND", "CLIENT_EVENT_RATE", "MEMBER_LIMIT", "NO_PROTOCOL", "PROTOCOL", "UNSUPPORTED_PROTOCOL",
    "ProtocolError", "channel_chars", "channel_kind", "dumps", "error", "event", "internal", "new_socket_id",
    "parse_message", "subscription_error", "unknown_app", "valid_channel", "valid_event_name",
]

PROTOCOL = 7  # the version spoken; pusher-js 8 sends ?protocol=7
# Close codes and error codes, as Pusher documents them: 4000-4099 the client must not
# reconnect, 4100-4199 reconnect after a back-off, 4200-4299 reconnect at once.
APP_NOT_FOUND = (4001, "Application does not exist")
UNSUPPORTED_PROTOCOL = (4007, "Unsupported protocol version")
NO_PROTOCOL = (4008, "No protocol version supplied")
PONG_TIMEOUT = (4201, "Pong reply not received")
CLIENT_EVENT_RATE = 4301  # a pusher:error code; the connection stays open
MEMBER_LIMIT = 4100  # the status of a presence subscription refused for its member limit ("over capacity")

_CHANNEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-=@,.;")
MAX_CHANNEL = 164  # Pusher's limit on a channel name
MAX_EVENT_NAME = 200
_MAX_KEY_SHOWN = 100  # of an unknown app key echoed in pusher:error: it is whatever the client's path said


class ProtocolError(ValueError):
    """A message that is not a Pusher event: answered with ``pusher:error``."""


def dumps(obj: Any) -> str:
    """Compact JSON; NaN and infinities refused (ValueError)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_message(text: str) -> tuple[str, str | None, Any]:
    """``(event, channel, data)`` of a client message; ProtocolError if it is not one."""
    try:
        message = json.loads(text, parse_constant=_no_constants)
    except ValueError as exc:
        raise ProtocolError("Invalid JSON") from exc
    if not isinstance(message, dict):
        raise ProtocolError("Invalid message: not a JSON object")
    name = message.get("event")
    if not isinstance(name, str) or not name:
        raise ProtocolError("Invalid message: no event name")
    channel = message.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise ProtocolError("Invalid message: channel is not a string")
    return name, channel, message.get("data")


def event(name: str, data: Any, channel: str | None = None, user_id: str | None = None) -> str:
    """A server message: ``data`` goes as it is (a string stays a string)."""
    message: dict[str, Any] = {"event": name}
    if channel is not None:
        message["channel"] = channel
    message["data"] = data
    if user_id is not None:
        message["user_id"] = user_id
    return dumps(message)


def internal(name: str, data: Any, channel: str | None = None) -> str:
    """A server event whose data is JSON-encoded into a string, as Pusher sends its own."""
    return event(name, dumps(data), channel)


def error(message: str, code: int | None = None) -> str:
    """A ``pusher:error``: ``code`` is one Pusher documents, or null."""
    return event("pusher:error", {"code": code, "message": message})


def unknown_app(key: str) -> str:
    """The ``pusher:error`` message for a key no app has, as Pusher words it; a long key is cut."""
    shown = key if len(key) <= _MAX_KEY_SHOWN else key[:_MAX_KEY_SHOWN] + "..."
    return f"App key {shown} not in this cluster"


def subscription_error(channel: str, kind: str, message: str, status: int) -> str:
    """A ``pusher:subscription_error`` on ``channel``: pusher-js emits its data (``type``,
    ``error``, ``status``, the fields of its own auth failures) on the channel object."""
    return internal("pusher:subscription_error", {"type": kind, "error": message, "status": status}, channel)


def new_socket_id() -> str:
    """``123.456``: two random numbers, the form the Pusher SDKs validate (``\\d+\\.\\d+``)."""
    return f"{secrets.randbelow(10**15)}.{secrets.randbelow(10**15)}"


def valid_channel(name: object) -> bool:
    """A channel name Pusher allows: 1-164 of ``A-Za-z0-9_-=@,.;``."""
    return isinstance(name, str) and 0 < len(name) <= MAX_CHANNEL and channel_chars(name)


def channel_chars(text: str) -> bool:
    """Whether ``text`` has only the characters of a channel name (user ids have the same)."""
    return all(c in _CHANNEL_CHARS for c in text)


def valid_event_name(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_EVENT_NAME


def channel_kind(name: str) -> str:
    """``public``, ``private``, ``encrypted`` (``private-encrypted-``) or ``presence``."""
    if name.startswith("private-encrypted-"):
        return "encrypted"
    if name.startswith("private-"):
        return "private"
    if name.startswith("presence-"):
        return "presence"
    return "public"
