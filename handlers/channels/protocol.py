"""The Centrifugo client protocol v2, JSON format: frames in, commands out, replies and pushes.

Pure: no I/O. The codes and their messages are Centrifugo's own (centrifugal/centrifuge
``errors.go`` and ``disconnect.go``), so that its client SDKs react as they would to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMMANDS",
    "Command",
    "Disconnect",
    "ProtocolError",
    "ReplyError",
    "dumps",
    "error",
    "parse_frame",
]

COMMANDS = frozenset({
    "connect", "subscribe", "unsubscribe", "publish", "presence", "presence_stats", "history", "send", "rpc",
    "refresh", "sub_refresh",
})


class ReplyError(Exception):
    """An error reply to one command; the connection goes on."""

    def __init__(self, code: int, message: str, temporary: bool = False) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.temporary = temporary

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.temporary:
            body["temporary"] = True
        return body


class Disconnect(Exception):
    """Close the connection with this WebSocket close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


def error(code: int, message: str | None = None, temporary: bool | None = None) -> ReplyError:
    """The error reply ``code`` with Centrifugo's message (100 and 111 are temporary)."""
    if temporary is None:
        temporary = code in (100, 111)
    return ReplyError(code, message or MESSAGES.get(code, "error"), temporary)


MESSAGES = {
    100: "internal server error", 101: "unauthorized", 102: "unknown channel", 103: "permission denied",
    104: "method not found", 105: "already subscribed", 106: "limit exceeded", 107: "bad request",
    108: "not available", 109: "token expired", 110: "expired", 111: "too many requests",
    112: "unrecoverable position",
}

# (code, reason) of the disconnects wsgate sends: raise Disconnect(*EXPIRED).
SHUTDOWN = (3001, "shutdown")
EXPIRED = (3005, "connection expired")
NO_PONG = (3012, "no pong")
STALE = (3502, "stale")
INVALID_TOKEN = (3500, "invalid token")
BAD_REQUEST = (3501, "bad request")
FORCE = (3503, "force disconnect")


class ProtocolError(ValueError):
    """A frame that is not a protocol frame: the connection closes with 3501."""


def _no_constants(name: str) -> Any:
    raise ProtocolError(f"{name} is not JSON")


# Made once: json.loads and json.dumps with options build a new decoder or encoder per call.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class Command:
    """One command: its ``id`` (0: none, as for ``send`` and pongs), method and params."""

    id: int
    method: str | None
    params: dict[str, Any]


def parse_frame(text: str) -> list[Command]:
    """The commands of one text frame: JSON objects, one per line (blank lines skipped).

    ``ProtocolError`` for anything Centrifugo refuses: not JSON (NaN and Infinity
    included), not an object, a bad id, more than one method, a method's params not an
    object. An unknown method is kept (``method`` set) for the caller to refuse.
    """
    commands = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            obj = _DECODER.decode(line)
        except ValueError as exc:  # json.JSONDecodeError, ProtocolError
            raise ProtocolError(f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ProtocolError("a command is a JSON object")
        cid = obj.pop("id", 0)
        if type(cid) is not int or not 0 <= cid < 2**32:
            raise ProtocolError("a command id is an unsigned 32-bit integer")
        if len(obj) > 1:
            raise ProtocolError(f"a command has one method, not {sorted(obj)}")
        if not obj:
            commands.append(Command(cid, None, {}))
            continue
        method, params = next(iter(obj.items()))
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ProtocolError(f"{method}: its parameters are an object")
        commands.append(Command(cid, method, params))
    return commands


def dumps(obj: Any) -> str:
    """Compact JSON as the protocol sends it."""
    return _ENCODER.encode(obj)
