"""``chat``: rooms of named users, with history, over the gateway's broker.

Connect to ``/chat?room=lobby&name=alice``. Plain text, or ``{"type": "message",
"text": "..."}``, is a message to the room. The server sends JSON: ``welcome`` and
``history`` on connect; ``join``, ``leave`` and ``message`` to the room; ``error``
to one client. Message ids count up per room, across instances when the broker is
Redis. A taken name gets a numeric suffix (``alice-2``); the welcome says which.

On an endpoint with ``auth``, the name comes from the identity (the ``name`` claim, else
the user id) and ``?name=`` is ignored; a user's several connections to a room (tabs)
are one member; a ``rooms`` claim limits the rooms the user may join.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import time
import unicodedata
from collections import Counter
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from wsgate import BrokerError, CloseCode, Connection, Context, Handler, Handshake, Message, Refuse

_ROOM = re.compile(r"[\w.-]{1,64}")
_MAX_NAME = 32


class ChatOptions(BaseModel):
    """Options of the chat handler."""

    model_config = ConfigDict(extra="forbid")

    history: int = Field(default=50, ge=0, le=10_000, description="messages sent on a fresh join")
    keep: int = Field(default=1000, ge=0, le=100_000, description="messages a room stores, for history and for "
                                                                  "clients that resume with since and epoch")
    history_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024,
                               description="the largest history message sent on join, in bytes; the oldest "
                                           "messages are left out to fit, and a resume that would need more "
                                           "is not recovered. Keep it below send_queue")
    keep_for: float = Field(default=600.0, ge=0, description="seconds a room's history and ids outlive its last "
                                                              "message; 0 keeps them forever")
    max_text: int = Field(default=2000, gt=0, description="longest message text accepted, in characters")
    max_rooms: int = Field(default=10_000, gt=0, description="rooms open at once on this instance; a join that "
                                                             "would open one more is refused")
    default_room: str = Field(default="lobby", pattern=f"^{_ROOM.pattern}$")

    @model_validator(mode="after")
    def _history_is_kept(self) -> ChatOptions:
        if self.history > self.keep:
            raise ValueError(f"history ({self.history}) cannot exceed keep ({self.keep}): "
                             "the room sends on join only what it stores")
        return self
    name_claim: str = Field(default="name", description="on an endpoint with auth: the claim that holds the display "
                                                        "name; the user id when absent")
    rooms_claim: str = Field(default="rooms", description="on an endpoint with auth: the claim listing the rooms a "
                                                          "user may join ('*' is a wildcard); no claim, any room")


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


@functools.lru_cache(maxsize=1024)
def _room_pattern(pattern: str) -> re.Pattern[str]:
    # fnmatch would also treat '?' and '[...]' as wildcards; room names may contain
    # them, so only '*' is special here.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def room_allowed(rooms_claim: object, room: str) -> bool:
    """True if the ``rooms`` claim (a list of names, ``*`` matching any run) admits ``room``.

    A claim that is not a list of strings admits nothing; a lone string is taken as a
    one-element list.
    """
    if isinstance(rooms_claim, str):
        rooms_claim = [rooms_claim]
    if not isinstance(rooms_claim, list):
        return False
    return any(isinstance(p, str) and _room_pattern(p).fullmatch(room) is not None for p in rooms_claim)


def history_message(events: list[dict[str, Any]], max_bytes: int) -> str:
    """``{"type": "history", "messages": [...], "recovered": false}`` with the newest
    events that fit in ``max_bytes``."""
    head, tail = '{"type":"history","messages":[', '],"recovered":false}'
    parts: list[str] = []
    size = len(head) + len(tail)
    for event in reversed(events):
        part = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        size += len(part.encode()) + 1
        if size > max_bytes:
            break
        parts.append(part)
    return head + ",".join(reversed(parts)) + tail


def resume_point(query: Mapping[str, str]) -> tuple[int | None, str | None]:
    """``since`` and ``epoch`` from a reconnecting client's query; ``since`` None unless a plain count."""
    since = query.get("since", "")
    return (int(since) if since.isascii() and since.isdigit() and len(since) <= 18 else None), query.get("epoch")


def candidate_names(name: str) -> list[str]:
    """``alice``, then ``alice-2`` ... ``alice-20``: what to try until one is free."""
    return [name] + [f"{name}-{n}" for n in range(2, 21)]


# Presence sets beside a room's own, for authenticated members. '#' cannot occur in a
# room name, so these never collide with a room.
def _owner_key(room: str, name: str) -> str:
    return f"{room}#owner:{name}"  # holds the user id that owns the name


def _tabs_key(room: str, user: str) -> str:
    return f"{room}#tabs:{user}"  # holds one token per open connection of the user


class Chat(Handler[ChatOptions]):
    """Multi-room chat; rooms are broker topics, so instances sharing Redis share rooms."""

    Options = ChatOptions
    accepts = "text"
    policy_defaults = {"rate_limit": {"messages": 20, "per": 1.0, "burst": 40}}

    def __init__(self, options: ChatOptions, context: Context) -> None:
        super().__init__(options, context)
        self._rooms: Counter[str] = Counter()  # local connections per room
        self._last_history: tuple[list[dict[str, Any]] | None, str] = (None, "")
        # Tells this instance's connections apart from another's in the shared tab sets.
        self._instance = secrets.token_hex(4)

    async def authorize(self, handshake: Handshake) -> None:
        if handshake.user is None or self.options.rooms_claim not in handshake.claims:
            return
        room = clean_room(handshake.query.get("room") or self.options.default_room)
        if room is not None and not room_allowed(handshake.claims[self.options.rooms_claim], room):
            raise Refuse(403, f"you may not join the room {room!r}")

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
        claimed = await (self._claim_anonymous(conn, room) if conn.user is None else self._claim_user(conn, room))
        if claimed is None:
            await conn.send_json({"type": "error", "error": "that name is taken in this room"})
            await conn.close(CloseCode.POLICY_VIOLATION, "name taken")
            return
        name, first = claimed
        conn.state["chat"] = (room, name)
        since, epoch = resume_point(conn.query)
        options = self.options
        found = await ctx.subscribe(conn, room, since, epoch, history=options.history, keep_for=options.keep_for)
        recovered = found.recovered
        if recovered:  # all of the missed messages, or none: one encoding, then its size
            history = json.dumps({"type": "history", "messages": found.messages, "recovered": True},
                                 separators=(",", ":"), ensure_ascii=False)
            recovered = len(history) <= options.history_bytes and len(history.encode()) <= options.history_bytes
        if not recovered:  # a fresh join, or a resume that cannot be exact: the last messages
            history = self._history_text(found.messages)
        users = await ctx.members(room)
        await conn.send_json({"type": "welcome", "name": name, "room": room, "users": users,
                              "epoch": found.epoch, "recovered": recovered})
        await conn.send(history)
        if first:
            await self._announce("join", room, name, users)

    async def _claim_anonymous(self, conn: Connection, room: str) -> tuple[str, bool] | None:
        for name in candidate_names(clean_name(conn.query.get("name"))):
            if await self.context.claim(room, name):
                return name, True
        return None

    async def _claim_user(self, conn: Connection, room: str) -> tuple[str, bool] | None:
        """The name of ``conn.user`` in ``room``, and whether this is its first connection there."""
        ctx, user = self.context, str(conn.user)
        shown = conn.claims.get(self.options.name_claim)
        for name in candidate_names(clean_name(shown if isinstance(shown, str) and shown.strip() else user)):
            if await ctx.claim(room, name):
                await ctx.claim(_owner_key(room, name), user)
                first = True
            elif await ctx.members(_owner_key(room, name)) == [user]:
                first = False  # another tab of the same user holds it
            else:
                continue
            conn.state["chat_tab"] = f"{self._instance}:{conn.id}"
            await ctx.claim(_tabs_key(room, user), conn.state["chat_tab"])
            return name, first
        return None

    def _history_text(self, events: list[dict[str, Any]]) -> str:
        # The context returns the same list to every fresh join until the room changes,
        # so the text is made once per change, not once per join.
        if self._last_history[0] is not events:
            recent = events[-self.options.history:] if self.options.history else []
            self._last_history = (events, history_message(recent, self.options.history_bytes))
        return self._last_history[1]

    async def on_message(self, conn: Connection, message: Message) -> None:
        room, name = conn.state["chat"]
        try:
            text = parse_client_message(str(message), self.options.max_text)
        except ChatInputError as exc:
            await conn.send_json({"type": "error", "error": str(exc)})
            return
        event = {"type": "message", "room": room, "from": name, "text": text, "ts": round(time.time(), 3)}
        await self.context.publish_numbered(room, event, keep=self.options.keep, keep_for=self.options.keep_for)

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        if (room := conn.state.get("chat_room")) is not None:
            self._rooms[room] -= 1
            if not self._rooms[room]:
                del self._rooms[room]
        if "chat" not in conn.state:
            return
        room, name = conn.state["chat"]
        ctx = self.context
        try:
            if conn.user is not None:
                await ctx.release(_tabs_key(room, conn.user), conn.state["chat_tab"])
                if await ctx.members(_tabs_key(room, conn.user)):
                    return  # the user is still here in another tab
                await ctx.release(_owner_key(room, name), conn.user)
            await ctx.release(room, name)
            users = await ctx.members(room)
        except BrokerError as exc:
            self.context.logger.warning("could not release %r in room %r: %s", name, room, exc)
            return
        await self._announce("leave", room, name, users)

    async def _announce(self, kind: str, room: str, name: str, users: list[str]) -> None:
        event = {"type": kind, "name": name, "users": users}
        await self.context.publish(room, json.dumps(event, separators=(",", ":"), ensure_ascii=False))
