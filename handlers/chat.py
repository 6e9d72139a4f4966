"""``chat``: rooms of named users, with history, over the gateway's broker.

Connect to ``/chat?room=lobby&name=alice``. Plain text, or ``{"type": "message",
"text": "..."}``, is a message to the room. The server sends JSON: ``welcome`` and
``history`` on connect; ``join``, ``leave`` and ``message`` to the room; ``error``
to one client. Message ids count up per room, across instances when the broker is
Redis. A taken name gets a numeric suffix (``alice-2``); the welcome says which.

On an endpoint with ``auth``, the name comes from the identity (the ``name`` claim, else
the user id) and ``?name=`` is ignored; a user's several connections to a room (tabs)
are one member; a ``rooms`` claim limits the rooms the user may join.

Names are presence members that every instance holding one refreshes. The names of an
instance that died without cleanup expire, and another instance with clients in the
room announces their ``leave`` within ``presence_ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import re
import secrets
import time
import unicodedata
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from wsgate import BrokerError, CloseCode, Connection, Context, Duration, Handler, Handshake, Message, Refuse, Size

_ROOM = re.compile(r"[\w.-]{1,64}")
_MAX_NAME = 32


class ChatOptions(BaseModel):
    """Options of the chat handler."""

    model_config = ConfigDict(extra="forbid")

    history: int = Field(default=50, ge=0, le=10_000, description="messages sent on a fresh join")
    keep: int = Field(default=1000, ge=0, le=100_000, description="messages a room stores, for history and for "
                                                                  "clients that resume with since and epoch")
    history_bytes: Size = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024,
                                description="the largest history message sent on join; the oldest messages are "
                                            "left out to fit, and a resume that would need more is not "
                                            "recovered. Keep it below send_queue")
    keep_for: Duration = Field(default=600.0, ge=0, description="how long a room's history and ids outlive its "
                                                                 "last message; 0 keeps them forever")
    presence_ttl: Duration = Field(default=30.0, gt=0, description="how soon the names held by an instance that "
                                                                    "died without cleanup (kill -9, a lost host) "
                                                                    "leave their rooms, with a leave event")
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


def _glob_match(pattern: str, name: str) -> bool:
    """Whether ``name`` is ``pattern`` with each ``*`` replaced by some run of characters.

    Only ``*`` is special (fnmatch would also take ``?`` and ``[...]``, which room names
    may contain). The pieces between stars are found left to right, each at its first
    place after the previous one: the earliest match always leaves the most room for
    the rest, so nothing is ever retried and the time is linear in ``name``, whatever
    the pattern. A regex (``.*`` per star) backtracks: the client picks the room name.
    """
    if "*" not in pattern:
        return name == pattern
    head, *middle, tail = pattern.split("*")
    end = len(name) - len(tail)
    if end < len(head) or not name.startswith(head) or not name.endswith(tail):
        return False
    at = len(head)
    for piece in middle:
        found = name.find(piece, at, end)
        if found < 0:
            return False
        at = found + len(piece)
    return True


def room_allowed(rooms_claim: object, room: str) -> bool:
    """True if the ``rooms`` claim (a list of names, ``*`` matching any run) admits ``room``.

    A claim that is not a list of strings admits nothing; a lone string is taken as a
    one-element list.
    """
    if isinstance(rooms_claim, str):
        rooms_claim = [rooms_claim]
    if not isinstance(rooms_claim, list):
        return False
    return any(isinstance(p, str) and _glob_match(p, room) for p in rooms_claim)


def history_message(events: Sequence[Mapping[str, Any]], max_bytes: int) -> str:
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


_RETRY_FIRST, _RETRY_MAX = 0.25, 2.0  # seconds between retries of a leave the broker refused


class Chat(Handler[ChatOptions]):
    """Multi-room chat; rooms are broker topics, so instances sharing Redis share rooms."""

    Options = ChatOptions
    accepts = "text"
    policy_defaults = {"rate_limit": {"messages": 20, "per": 1.0, "burst": 40}}

    def __init__(self, options: ChatOptions, context: Context) -> None:
        super().__init__(options, context)
        self._rooms: Counter[str] = Counter()  # local connections per room
        self._last_history: tuple[Sequence[Mapping[str, Any]] | None, str] = (None, "")
        # Tells this instance's connections apart from another's in the shared tab sets.
        self._instance = secrets.token_hex(4)

    async def startup(self) -> None:
        self.context.spawn(self._reap_forever, "presence reaper")

    @property
    def _ttl(self) -> float:
        # A member nobody refreshes expires this long after its last refresh, and the
        # reaper runs every presence_ttl/4: a dead instance's names leave within presence_ttl.
        return self.options.presence_ttl * 0.75

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
        found = await ctx.subscribe(conn, room, since, epoch, history=options.history, keep_for=options.keep_for,
                                    max_bytes=options.history_bytes)
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
            if await self.context.claim(room, name, ttl=self._ttl):
                return name, True
        return None

    async def _claim_user(self, conn: Connection, room: str) -> tuple[str, bool] | None:
        """The name of ``conn.user`` in ``room``, and whether this is its first connection there.

        The tab goes into the user's tab set first, so that the user's last other tab,
        closing meanwhile on any instance, sees it and leaves the name in place. A tab
        that finds the name owned by its user holds it too: while an instance with one
        of the user's tabs lives, the name does not expire.
        """
        ctx, user, ttl = self.context, str(conn.user), self._ttl
        tabs, tab = _tabs_key(room, user), f"{self._instance}:{conn.id}"
        await ctx.claim(tabs, tab, ttl=ttl)
        conn.state["chat_tab"] = tab
        taken: list[tuple[str, str, bool]] = []  # (topic, member, claimed): undone on failure
        shown = conn.claims.get(self.options.name_claim)
        try:
            for name in candidate_names(clean_name(shown if isinstance(shown, str) and shown.strip() else user)):
                owner = _owner_key(room, name)
                for _ in range(2):  # twice: the user's last other tab may let the name go meanwhile
                    if await ctx.claim(room, name, ttl=ttl):
                        taken.append((room, name, True))
                        if await ctx.claim(owner, user, ttl=ttl) or await ctx.hold(owner, user, ttl=ttl):
                            taken.append((owner, user, True))
                        return name, True
                    if await ctx.members(owner) != [user] or not await ctx.hold(owner, user, ttl=ttl):
                        break  # another user's name
                    taken.append((owner, user, False))
                    if await ctx.hold(room, name, ttl=ttl):
                        return name, False  # another tab of the same user holds it
                    taken.pop()
                    await ctx.drop(owner, user)
        except BrokerError:
            for topic, member, claimed in [*taken, (tabs, tab, True)]:
                await self._let_go(topic, member, claimed)
            raise
        del conn.state["chat_tab"]
        await ctx.release(tabs, tab)
        return None

    async def _let_go(self, topic: str, member: str, claimed: bool) -> None:
        """Undo a claim (remove it, or at least stop holding it) or a hold; never raises."""
        if not claimed:
            await self.context.drop(topic, member)
            return
        with contextlib.suppress(BrokerError):  # no longer held here, so it expires
            await self.context.release(topic, member)

    def _history_text(self, events: Sequence[Mapping[str, Any]]) -> str:
        # Recovery.messages is immutable, and fresh joins to an unchanged room often get
        # the same tuple: then the text is made once per change, not once per join.
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
        # Not waiting for the id: the client's next message is read while this one is on its
        # way, and with Redis several share a round trip. Order is kept either way.
        await self.context.publish_numbered(room, event, keep=self.options.keep, keep_for=self.options.keep_for,
                                            wait=False)

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        if (room := conn.state.get("chat_room")) is not None:
            self._rooms[room] -= 1
            if not self._rooms[room]:
                del self._rooms[room]
        if "chat" not in conn.state:
            return
        room, name = conn.state["chat"]
        user = None if conn.user is None else str(conn.user)
        tab = conn.state.get("chat_tab", "")
        try:
            await self._leave(room, name, user, tab, holding=True)
        except BrokerError as exc:
            # No longer held here, so the name expires within presence_ttl and a reaper
            # announces the leave; retrying is faster. Either way it is announced once.
            self.context.logger.warning("could not release %r in room %r (%s); retrying", name, room, exc)
            if user is not None:
                await self._drop_name(room, name, user)
            self._retry(f"leave of {name!r} in {room!r}",
                        functools.partial(self._leave, room, name, user, tab, holding=False))

    async def _leave(self, room: str, name: str, user: str | None, tab: str, *, holding: bool) -> None:
        """Release ``name`` (a user's: after its last tab) and announce the leave.

        Safe to run again after a BrokerError: only the call whose release removed the
        name from the room announces it, and a reaper announces a name that expired.
        """
        ctx = self.context
        if user is not None:
            await ctx.release(_tabs_key(room, user), tab)
            if await ctx.members(_tabs_key(room, user)):
                if holding:  # the user is still here in another tab, maybe on another instance
                    await self._drop_name(room, name, user)
                return
            await ctx.release(_owner_key(room, name), user)
        if await ctx.release(room, name):
            await self._announce_leaves(room, [name])

    async def _drop_name(self, room: str, name: str, user: str) -> None:
        """This connection's holds of a user's name and ownership go back; its other tabs keep them."""
        await self.context.drop(_owner_key(room, name), user)
        await self.context.drop(room, name)

    async def _reap_forever(self) -> None:
        """Every presence_ttl/4, announce the leave of names that expired in this instance's rooms.

        A name expires when no live instance holds it any more: its instance died
        without releasing it, or a release failed. ``reap`` returns each to one caller.
        """
        while True:
            await asyncio.sleep(self.options.presence_ttl / 4)
            rooms = list(self._rooms)
            for start in range(0, len(rooms), 64):
                for failed in await asyncio.gather(*(self._reap(room) for room in rooms[start:start + 64]),
                                                   return_exceptions=True):
                    if isinstance(failed, Exception):  # logged; the reaper goes on
                        self.context.logger.error("reaping a room failed", exc_info=failed)

    async def _reap(self, room: str) -> None:
        try:
            gone = await self.context.reap(room)
        except BrokerError as exc:
            self.context.logger.debug("reaping room %r failed: %s", room, exc)
            return
        if gone:
            await self._announce_leaves(room, gone)

    async def _announce_leaves(self, room: str, names: list[str]) -> None:
        """A ``leave`` for each of ``names`` (already released) with the room's users; retried
        in the background while the broker fails, since nothing else will announce them."""
        try:
            await self._announce_leaves_now(room, names)
        except BrokerError:
            self._retry(f"leave announcement in {room!r}", functools.partial(self._announce_leaves_now, room, names))

    async def _announce_leaves_now(self, room: str, names: list[str]) -> None:
        users = await self.context.members(room)
        for name in names:
            await self._announce("leave", room, name, users)

    def _retry(self, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` again in the background while it raises BrokerError, for presence_ttl at most."""

        async def again() -> None:
            loop = asyncio.get_running_loop()
            deadline, delay = loop.time() + self.options.presence_ttl, _RETRY_FIRST
            while True:
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # a burst's retries spread out
                try:
                    await work()
                    return
                except BrokerError as exc:
                    if loop.time() + delay > deadline:
                        self.context.logger.warning("gave up on the %s: %s", what, exc)
                        return
                delay = min(delay * 2, _RETRY_MAX)

        self.context.spawn(again, f"retry {what}")

    async def _announce(self, kind: str, room: str, name: str, users: list[str]) -> None:
        event = {"type": kind, "name": name, "users": users}
        await self.context.publish(room, json.dumps(event, separators=(",", ":"), ensure_ascii=False))
