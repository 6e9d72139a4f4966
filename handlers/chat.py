"""``chat``: rooms of named users, with history, over the gateway's broker.

Connect to ``/chat?room=lobby&name=alice``. Plain text, or ``{"type": "message",
"text": "..."}``, is a message to the room. The server sends JSON: ``welcome`` and
``history`` on connect; ``join``, ``leave`` and ``message`` to the room; ``error``
to one client. Message ids count up per room, across instances when the broker is
Redis. A taken name gets a numeric suffix (``alice-2``); the welcome says which.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import unicodedata
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from wsgate import BrokerError, CloseCode, Connection, Context, Handler, Message

_ROOM = re.compile(r"[\w.-]{1,64}")
_MAX_NAME = 32


class ChatOptions(BaseModel):
    """Options of the chat handler."""

    model_config = ConfigDict(extra="forbid")

    history: int = Field(default=50, ge=0, le=10_000, description="messages kept per room and sent on join")
    history_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024,
                               description="the largest history message sent on join, in bytes; the oldest "
                                           "messages are left out to fit. Keep it below send_queue")
    keep_for: float = Field(default=600.0, ge=0, description="seconds a room's history and ids outlive its last "
                                                              "message; 0 keeps them forever")
    max_text: int = Field(default=2000, gt=0, description="longest message text accepted, in characters")
    max_rooms: int = Field(default=10_000, gt=0, description="rooms open at once on this instance; a join that "
                                                             "would open one more is refused")
    default_room: str = Field(default="lobby", pattern=f"^{_ROOM.pattern}$")


class ChatInputError(ValueError):
    """A client message the chat cannot take; its text goes back to the client."""


def parse_client_message(raw: str, max_text: int) -> str:
    """The text of a client message: plain text or ``{"type": "message", "text": ...}``."""
    text: Any = raw
    if raw.lstrip().startswith("{"):
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." thousands deep
            obj = None
        if isinstance(obj, dict):
            if obj.get("type", "message") != "message" or not isinstance(obj.get("text"), str):
                raise ChatInputError('send plain text or {"type": "message", "text": "..."}')
            text = obj["text"]
    if not text.strip():
        raise ChatInputError("empty message")
    if len(text) > max_text:
        raise ChatInputError(f"message too long: {len(text)} characters, at most {max_text}")
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, written as a JSON escape ("\ud800")
        raise ChatInputError("the text is not valid Unicode") from None
    return str(text)


def _printable(text: str) -> str:
    """NFKC form without control, format (zero-width, bidi), private or unassigned characters.

    So that ``admin``, ``admin`` followed by a zero-width space, and its full-width
    form are one name.
    """
    spaced = " ".join(unicodedata.normalize("NFKC", text).split())  # tabs and newlines become spaces
    return "".join(c for c in spaced if not unicodedata.category(c).startswith("C"))


def clean_name(requested: str | None) -> str:
    """A display name from the query, or a generated ``guest-xxxx``."""
    name = _printable(requested or "")[:_MAX_NAME].rstrip()
    return name or f"guest-{secrets.token_hex(2)}"


def clean_room(requested: str) -> str | None:
    """The room name in NFKC form, or None if it is not 1-64 letters, digits, '.', '_' or '-'."""
    room = unicodedata.normalize("NFKC", requested)
    return room if _ROOM.fullmatch(room) else None


def history_message(events: list[dict[str, Any]], max_bytes: int) -> str:
    """``{"type": "history", "messages": [...]}`` with the newest events that fit in ``max_bytes``."""
    head, tail = '{"type":"history","messages":[', "]}"
    parts: list[str] = []
    size = len(head) + len(tail)
    for event in reversed(events):
        part = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        size += len(part.encode()) + 1
        if size > max_bytes:
            break
        parts.append(part)
    return head + ",".join(reversed(parts)) + tail


def candidate_names(name: str) -> list[str]:
    """``alice``, then ``alice-2`` ... ``alice-20``: what to try until one is free."""
    return [name] + [f"{name}-{n}" for n in range(2, 21)]


class Chat(Handler[ChatOptions]):
    """Multi-room chat; rooms are broker topics, so instances sharing Redis share rooms."""

    Options = ChatOptions
    accepts = "text"
    policy_defaults = {"rate_limit": {"messages": 20, "per": 1.0, "burst": 40}}

    def __init__(self, options: ChatOptions, context: Context) -> None:
        super().__init__(options, context)
        self._rooms: Counter[str] = Counter()  # local connections per room
        # Per room: the history list the context returned last, and its message. The
        # context returns the same list until the room changes, so joins reuse the text.
        self._history: dict[str, tuple[list[dict[str, Any]], str]] = {}

    async def on_connect(self, conn: Connection) -> None:
        try:
            await self._join(conn)
        except BrokerError:
            # Presence lives in the broker; without it no name can be given safely.
            await conn.send_json({"type": "error", "error": "chat is unavailable right now, retry shortly"})
            await conn.close(CloseCode.TRY_AGAIN_LATER, "try again later")

    async def _join(self, conn: Connection) -> None:
        ctx = self.context
        room = clean_room(conn.query.get("room") or self.options.default_room)
        if room is None:
            await conn.send_json({"type": "error", "error": "room names are 1-64 letters, digits, '.', '_' or '-'"})
            await conn.close(CloseCode.POLICY_VIOLATION, "bad room name")
            return
        if room not in self._rooms and len(self._rooms) >= self.options.max_rooms:
            await conn.send_json({"type": "error", "error": "too many rooms are open; join an existing one"})
            await conn.close(CloseCode.TRY_AGAIN_LATER, "too many rooms")
            return
        self._rooms[room] += 1
        conn.state["chat_room"] = room
        for name in candidate_names(clean_name(conn.query.get("name"))):
            if await ctx.claim(room, name):
                break
        else:
            await conn.send_json({"type": "error", "error": "that name is taken in this room"})
            await conn.close(CloseCode.POLICY_VIOLATION, "name taken")
            return
        conn.state["chat"] = (room, name)
        await ctx.subscribe(conn, room)
        users = await ctx.members(room)
        await conn.send_json({"type": "welcome", "name": name, "room": room, "users": users})
        await conn.send(await self._history_message(room))
        await self._announce("join", room, name, users)

    async def _history_message(self, room: str) -> str:
        events = await self.context.history(room, self.options.history)
        cached = self._history.get(room)
        if cached is not None and cached[0] is events:
            return cached[1]
        text = history_message(events, self.options.history_bytes)
        self._history[room] = (events, text)
        return text

    async def on_message(self, conn: Connection, message: Message) -> None:
        room, name = conn.state["chat"]
        try:
            text = parse_client_message(str(message), self.options.max_text)
        except ChatInputError as exc:
            await conn.send_json({"type": "error", "error": str(exc)})
            return
        event = {"type": "message", "room": room, "from": name, "text": text, "ts": round(time.time(), 3)}
        await self.context.publish_numbered(room, event, keep=self.options.history, keep_for=self.options.keep_for)

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        if (room := conn.state.get("chat_room")) is not None:
            self._rooms[room] -= 1
            if not self._rooms[room]:
                del self._rooms[room]
                self._history.pop(room, None)
        if "chat" not in conn.state:
            return
        room, name = conn.state["chat"]
        try:
            await self.context.release(room, name)
            users = await self.context.members(room)
        except BrokerError as exc:
            self.context.logger.warning("could not release %r in room %r: %s", name, room, exc)
            return
        await self._announce("leave", room, name, users)

    async def _announce(self, kind: str, room: str, name: str, users: list[str]) -> None:
        event = {"type": kind, "name": name, "users": users}
        await self.context.publish(room, json.dumps(event, separators=(",", ":"), ensure_ascii=False))
