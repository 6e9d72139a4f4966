"""``pusher``: the Pusher Channels protocol (version 7) over wsgate's broker; one endpoint per app.

pusher-js connects to ``/app/<key>?protocol=7``, gets a ``socket_id`` and subscribes to
channels: public, ``private-`` and ``presence-`` (signed by the app's own auth endpoint with
the app's secret), and sends ``client-`` events where the app allows them. The backend
triggers events through the HTTP API (``api.py``) at ``/apps/<app_id>/...``, which the
endpoint claims through ``Handler.http_prefixes``.

Across instances: a channel's events are signals on ``e:<channel>`` (so one connection,
a trigger's ``socket_id`` or a client event's sender, can be left out), framed once per
instance; presence sets hold which instances have a channel's subscribers (``channels``),
each subscription (``s:<channel>``) and a presence channel's users (``u:<channel>``), their
info (``i:<channel>``) and each user's connections (``t:<channel>:<user_id>``), so a user
with several tabs is one member. See docs/pusher.md.

Webhooks (``webhooks.py``): each event is decided on one instance. A channel is occupied while
some instance holds the name ``<channel>`` in the presence set ``OCCUPANCY``: an instance's
first subscriber claims it (True: ``channel_occupied``) or holds it, its last one drops it,
or releases it when no other instance is left in ``o:<channel>`` (True: ``channel_vacated``);
the name of a dead instance is reaped by one live one (``channel_vacated``). Members are
announced where ``member_added``/``member_removed`` are.

Beside it: ``cache.py`` (cache channels' last event), ``counts.py`` (subscription_count
events), ``users.py`` (pusher:signin, events to a user, terminating a user's connections).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import wsgate
from wsgate import BrokerError, Connection, Handler, HttpAnswer, HttpCall, Message

from .api import USERS_PREFIX, Api
from .cache import Cache, is_cache
from .counts import SubscriptionCounts
from .options import PusherOptions
from .protocol import (
    APP_NOT_FOUND,
    CLIENT_EVENT_RATE,
    MEMBER_LIMIT,
    NO_PROTOCOL,
    PROTOCOL,
    UNSUPPORTED_PROTOCOL,
    ProtocolError,
    channel_kind,
    dumps,
    error,
    event,
    internal,
    new_socket_id,
    parse_message,
    subscription_error,
    unknown_app,
    valid_channel,
)
from .signatures import check_channel_auth
from .users import SigninRefused, Users, is_user_channel, user_channel
from .webhooks import Webhooks

__all__ = ["Pusher"]

OCCUPIED = "channels"  # presence topic: "<channel>\n<instance>\n<generation>" while an instance has subscribers
OCCUPANCY = "occupied"  # presence topic (with webhooks): "<channel>" while any instance has subscribers


def events_topic(channel: str) -> str:
    return f"e:{channel}"


def subs_topic(channel: str) -> str:
    return f"s:{channel}"


def users_topic(channel: str) -> str:
    return f"u:{channel}"


def info_topic(channel: str) -> str:
    return f"i:{channel}"


def instances_topic(channel: str) -> str:
    """With webhooks: the occupancies ("<channel>\n<instance>\n<generation>") of the channel's instances."""
    return f"o:{channel}"


def tabs_topic(channel: str, user_id: str) -> str:
    return f"t:{channel}:{user_id}"


class Refused(Exception):
    """A subscription or client event refused: ``pusher:error`` with this message (and code)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SubscriptionError(Refused):
    """A subscription refused with ``pusher:subscription_error`` on its channel, which pusher-js
    emits on the channel object, rather than a connection-wide ``pusher:error``."""

    def __init__(self, channel: str, kind: str, message: str, status: int) -> None:
        super().__init__(message)
        self.frame = subscription_error(channel, kind, message, status)


@dataclass(eq=False, slots=True)
class Member:
    """This connection's place in a presence channel."""

    user_id: str
    entry: str  # its member of info_topic: [user_id, user_info] as JSON


@dataclass(eq=False, slots=True)
class Socket:
    """One pusher-js connection."""

    conn: Connection
    socket_id: str
    channels: dict[str, Member | None] = field(default_factory=dict)
    tokens: float = 0.0
    refilled: float = 0.0
    user_id: str | None = None  # once signed in (pusher:signin)


@dataclass(eq=False)
class Local:
    """A channel's subscribers on this instance, and its listen on the channel's events."""

    occupancy: str
    pending: int = 0  # subscribes under way, not yet subscribers
    subscribers: dict[Connection, Socket] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False
    callback: Callable[[str], None] = lambda message: None


class Pusher(Handler[PusherOptions]):
    """A Pusher Channels app; the options are in docs/pusher.md."""

    Options = PusherOptions
    accepts = "text"
    policy_defaults = {"rate_limit": {"messages": 100, "per": 1.0, "burst": 200}}
    shutdown_close = (4200, "Server shutting down")  # pusher-js reconnects at once

    def __init__(self, options: PusherOptions, context: wsgate.Context) -> None:
        super().__init__(options, context)
        # The path pusher-js asks for with any other key (/app/<key> of no endpoint) comes here
        # too, to be refused as Pusher does (see on_http); startup checks the path's form.
        path = context.path
        self._app_prefix = path[:-len(options.key)] if path.endswith(f"/app/{options.key}") else None
        self.http_prefixes = (f"/apps/{options.app_id}/", USERS_PREFIX,
                              *((self._app_prefix,) if self._app_prefix else ()))
        self.secret = options.secret.get_secret_value()
        self.sockets: dict[Connection, Socket] = {}
        self.local: dict[str, Local] = {}
        self.instance = uuid.uuid4().hex
        self._generation = 0
        self._api = Api(self)
        self.webhooks = None if options.webhooks is None else \
            Webhooks(options.webhooks, options.key, self.secret, context.logger)
        self.cache = Cache(context, options.cache_ttl)
        self.users = Users(context, options.key, self.secret, self._join_quietly)
        self.counts = None if not options.subscription_count else \
            SubscriptionCounts(context, options.subscription_count_interval, self.subscription_count, self._publish)

    async def startup(self) -> None:
        if not self.context.path.endswith(f"/app/{self.options.key}"):
            raise ValueError(f"a pusher endpoint's path ends with /app/<key>: {self.context.path!r} "
                             f"does not end with /app/{self.options.key}")
        await self.users.start()
        self._api.register()
        self.context.spawn(self._reap_forever, "presence reaper")
        if self.webhooks is not None:
            self.context.spawn(self.webhooks.run, "pusher webhooks")

    async def shutdown(self) -> None:
        self._api.unregister()
        if self.webhooks is not None:
            await self.webhooks.flush()  # the last connections' events: one try

    def _webhook(self, name: str, channel: str, **fields: Any) -> None:
        if self.webhooks is not None:
            self.webhooks.emit(name, channel, **fields)

    async def _reap_forever(self) -> None:
        """Every presence_ttl/4: the members whose last connection was on an instance that died
        (nobody holds them any more) are removed, each announced once across instances."""
        while True:
            await asyncio.sleep(self.options.presence_ttl / 4)
            if self.webhooks is not None:
                try:
                    for channel in await self.context.reap(OCCUPANCY):  # its last instance died
                        if channel_kind(channel) == "presence":  # and its members with it
                            await self.context.reap(info_topic(channel))
                            for user_id in await self.context.reap(users_topic(channel)):
                                self._webhook("member_removed", channel, user_id=user_id)
                        self._webhook("channel_vacated", channel)
                except BrokerError as exc:
                    self.context.logger.debug("reaping the occupied channels failed: %s", exc)
            if self.counts is not None:
                for channel in [c for c in self.local if channel_kind(c) != "presence"]:
                    try:
                        if await self.context.reap(subs_topic(channel)):  # a dead instance's subscribers
                            self.counts.changed(channel)
                    except BrokerError as exc:
                        self.context.logger.debug("reaping %s failed: %s", channel, exc)
            for channel in [c for c in self.local if channel_kind(c) == "presence"]:
                try:
                    await self.context.reap(info_topic(channel))  # their info went with them
                    gone = await self.context.reap(users_topic(channel))
                    for user_id in gone:
                        self._webhook("member_removed", channel, user_id=user_id)
                        await self._publish(channel, internal("pusher_internal:member_removed",
                                                              {"user_id": user_id}, channel))
                except BrokerError as exc:
                    self.context.logger.debug("reaping %s failed: %s", channel, exc)

    async def on_http(self, call: HttpCall) -> HttpAnswer:
        if self._app_prefix is not None and call.path.startswith(self._app_prefix):
            # No endpoint serves this key: pusher:error 4001 and close 4001, after which pusher-js
            # stops; an HTTP refusal would be a failed connection it retries forever.
            code, reason = APP_NOT_FOUND
            return HttpAnswer.websocket_close(code, reason, error(unknown_app(call.method), code))
        return await self._api.answer(call)

    # --- connections ------------------------------------------------------------------------

    async def on_connect(self, conn: Connection) -> None:
        refusal = self._refusal(conn)
        if refusal is not None:
            code, reason = refusal
            await conn.send(error(reason, code))
            await conn.close(code, reason)
            return
        sock = Socket(conn, new_socket_id(), tokens=self.options.client_event_rate, refilled=time.monotonic())
        self.sockets[conn] = sock
        timeout = round(self.options.activity_timeout)
        await conn.send(internal("pusher:connection_established",
                                 {"socket_id": sock.socket_id, "activity_timeout": timeout}))

    def _refusal(self, conn: Connection) -> tuple[int, str] | None:
        if not conn.path.endswith(f"/app/{self.options.key}"):
            return APP_NOT_FOUND
        version = conn.query.get("protocol")
        if version is None:
            return NO_PROTOCOL
        if version != str(PROTOCOL):
            return UNSUPPORTED_PROTOCOL
        return None

    async def on_message(self, conn: Connection, message: Message) -> None:
        sock = self.sockets.get(conn)
        if sock is None:
            return
        assert isinstance(message, str)  # accepts = "text"
        try:
            name, channel, data = parse_message(message)
        except ProtocolError as exc:
            await conn.send(error(str(exc)))
            return
        try:
            if name == "pusher:ping":
                await conn.send(event("pusher:pong", {}))
            elif name == "pusher:pong":
                pass
            elif name == "pusher:subscribe":
                await self._subscribe(sock, data)
            elif name == "pusher:signin":
                await self.users.signin(sock, data)
            elif name == "pusher:unsubscribe":
                target = data.get("channel") if isinstance(data, dict) else None
                if isinstance(target, str) and target in sock.channels:
                    await self._leave(sock, target)
            elif name.startswith("client-"):
                await self._client_event(sock, name, channel, data)
            else:
                raise Refused(f"Unsupported event: {name}")
        except SubscriptionError as exc:
            await conn.send(exc.frame)
        except SigninRefused as exc:
            await conn.send(error(str(exc)))
        except Refused as exc:
            await conn.send(error(str(exc), exc.code))
        except BrokerError as exc:
            self.context.logger.warning("%s from %s: broker unavailable: %s", name, sock.socket_id, exc)
            await conn.send(error("Server error: try again later"))

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        sock = self.sockets.pop(conn, None)
        if sock is None:
            return
        self.users.forget(sock)
        for channel in list(sock.channels):
            try:
                await self._leave(sock, channel)
            except BrokerError as exc:
                self.context.logger.warning("leave of %s from %s: %s", sock.socket_id, channel, exc)

    # --- subscriptions ----------------------------------------------------------------------

    async def _subscribe(self, sock: Socket, data: Any) -> None:
        if not isinstance(data, dict):
            raise Refused("Invalid pusher:subscribe: data is not an object")
        channel = data.get("channel")
        if is_user_channel(channel):
            assert isinstance(channel, str)
            if sock.user_id is None or channel != user_channel(sock.user_id):
                raise Refused(f"Invalid subscription to {channel}: it is for the connections signed in as that "
                              f"user (pusher:signin)")
        elif not isinstance(channel, str) or not valid_channel(channel):
            raise Refused("Invalid channel name: 1 to 164 of A-Z a-z 0-9 _ - = @ , . ;")
        kind = channel_kind(channel)
        channel_data = data.get("channel_data") if kind == "presence" else None
        if kind != "public":
            if kind == "presence" and not isinstance(channel_data, str):
                raise Refused(f"Invalid subscription to {channel}: presence channels need channel_data")
            if not check_channel_auth(self.options.key, self.secret, sock.socket_id, channel, data.get("auth"),
                                      channel_data):
                raise Refused(f"Invalid signature: the auth of the subscription to {channel} does not match "
                              f"the app's key and secret, this socket_id and this channel")
        if channel in sock.channels:
            await sock.conn.send(await self._succeeded(channel))  # Pusher answers a repeat the same way
            return
        member = None if channel_data is None else self._member(channel, channel_data)
        await self._join(sock, channel, member)

    async def _join_quietly(self, sock: Socket, channel: str) -> None:
        """Subscribe ``sock`` to ``channel`` unasked (a signed-in user's own channel): nothing is sent."""
        if channel not in sock.channels:
            await self._join(sock, channel, None, answer=False)

    async def _join(self, sock: Socket, channel: str, member: Member | None, answer: bool = True) -> None:
        """Subscribe ``sock``, checked, to ``channel``: answered with subscription_succeeded (and a
        cache channel's event) unless ``answer`` is False; presence members announced."""
        local = await self._open(channel)  # counts this subscribe as pending
        sock.channels[channel] = None
        try:
            await self.context.claim(subs_topic(channel), sock.socket_id, ttl=self.options.presence_ttl)
            first = False
            if member is not None:
                await self._room_for(channel, member.user_id)
                sock.channels[channel] = member
                first = await self._join_presence(sock, channel, member)
            succeeded = await self._succeeded(channel) if answer else ""
            cached = await self.cache.last(channel) if answer and is_cache(channel) else None
        except BaseException:
            local.pending -= 1
            await self._leave(sock, channel)
            raise
        local.pending -= 1
        if sock.conn.closed:
            return  # on_disconnect leaves the channel
        if answer:
            await sock.conn.send(succeeded)
            if is_cache(channel):  # the cached event comes before any live one
                await sock.conn.send(cached or internal("pusher:cache_miss", {}, channel))
        local.subscribers[sock.conn] = sock  # no await since the sends: no event comes before it
        if answer and is_cache(channel) and cached is None:
            self._webhook("cache_miss", channel)
        if self.counts is not None:
            self.counts.changed(channel)
        if member is not None and first:
            self._webhook("member_added", channel, user_id=member.user_id)
            info = json.loads(member.entry)[1]
            await self._publish(channel, internal("pusher_internal:member_added",
                                                  {"user_id": member.user_id, "user_info": info}, channel),
                                exclude=sock.socket_id)

    def _member(self, channel: str, channel_data: str) -> Member:
        try:
            parsed = json.loads(channel_data)
        except ValueError:
            raise Refused(f"Invalid channel_data for {channel}: not JSON") from None
        user_id = parsed.get("user_id") if isinstance(parsed, dict) else None
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        if not isinstance(user_id, str) or not user_id or len(user_id) > 128:
            raise Refused(f"Invalid channel_data for {channel}: user_id is a string of 1 to 128 characters")
        entry = dumps([user_id, parsed.get("user_info")])
        if len(entry) > 1024:
            raise Refused(f"Invalid channel_data for {channel}: user_info is over 1 KB")
        return Member(user_id, entry)

    async def _join_presence(self, sock: Socket, channel: str, member: Member) -> bool:
        """Add this connection to the user's tabs and the user to the channel; True if the user is new."""
        ctx, ttl = self.context, self.options.presence_ttl
        await ctx.claim(tabs_topic(channel, member.user_id), sock.socket_id, ttl=ttl)
        first = False
        for _ in range(2):  # twice: the user's last other tab may leave meanwhile
            if await ctx.claim(users_topic(channel), member.user_id, ttl=ttl):
                first = True
                break
            if await ctx.hold(users_topic(channel), member.user_id, ttl=ttl):
                break
        if not await ctx.claim(info_topic(channel), member.entry, ttl=ttl):
            await ctx.hold(info_topic(channel), member.entry, ttl=ttl)
        if first and len(await ctx.members(users_topic(channel))) > self.options.max_presence_members:
            # Another instance let a member in at the same moment: the newcomer goes back out
            # unannounced (the caller's leave then finds the name gone and says nothing).
            await ctx.release(users_topic(channel), member.user_id)
            raise self._full(channel)
        return first

    async def _room_for(self, channel: str, user_id: str) -> None:
        """SubscriptionError unless ``user_id`` is a member of ``channel`` already or there is room."""
        members = await self.context.members(users_topic(channel))
        if user_id not in members and len(members) >= self.options.max_presence_members:
            raise self._full(channel)

    def _full(self, channel: str) -> SubscriptionError:
        limit = self.options.max_presence_members
        return SubscriptionError(channel, "LimitReached", f"Cannot join {channel}: it has its maximum of {limit} "
                                 f"members", MEMBER_LIMIT)

    async def _succeeded(self, channel: str) -> str:
        if channel_kind(channel) != "presence":
            return internal("pusher_internal:subscription_succeeded", {}, channel)
        presence = await self.presence(channel)
        return internal("pusher_internal:subscription_succeeded", {"presence": presence}, channel)

    async def presence(self, channel: str) -> dict[str, Any]:
        """``{ids, hash, count}`` of a presence channel, across instances."""
        ids = await self.context.members(users_topic(channel))
        infos: dict[str, Any] = {}
        for entry in await self.context.members(info_topic(channel)):
            user_id, info = json.loads(entry)
            infos.setdefault(user_id, info)
        return {"ids": ids, "hash": {user_id: infos.get(user_id) for user_id in ids}, "count": len(ids)}

    async def _leave(self, sock: Socket, channel: str) -> None:
        """Take ``sock`` out of ``channel``; the user's last tab leaving a presence channel is announced."""
        if channel not in sock.channels:
            return
        member = sock.channels.pop(channel)
        local = self.local.get(channel)
        if local is not None:
            local.subscribers.pop(sock.conn, None)
        try:
            await self.context.release(subs_topic(channel), sock.socket_id)
            if self.counts is not None:
                self.counts.changed(channel)
            if member is not None:
                await self._leave_presence(sock, channel, member)
        finally:
            await self._close_local(channel)

    async def _leave_presence(self, sock: Socket, channel: str, member: Member) -> None:
        ctx = self.context
        tabs = tabs_topic(channel, member.user_id)
        await ctx.release(tabs, sock.socket_id)
        if await ctx.members(tabs):  # the user is still here in another tab, maybe on another instance
            await ctx.drop(users_topic(channel), member.user_id)
            await ctx.drop(info_topic(channel), member.entry)
            return
        await ctx.release(info_topic(channel), member.entry)
        if await ctx.release(users_topic(channel), member.user_id):
            self._webhook("member_removed", channel, user_id=member.user_id)
            await self._publish(channel, internal("pusher_internal:member_removed", {"user_id": member.user_id},
                                                  channel))

    # --- a channel on this instance ---------------------------------------------------------

    async def _open(self, channel: str) -> Local:
        """The channel's ``Local``, listening to its events once this instance's first subscriber
        comes; the caller is counted in ``pending`` until it is a subscriber or gave up."""
        local = self.local.get(channel)
        if local is None:
            self._generation += 1
            local = Local(f"{channel}\n{self.instance}\n{self._generation}", pending=1)
            local.callback = functools.partial(self._deliver, local)
            self.local[channel] = local
            try:
                await self.context.listen(events_topic(channel), local.callback)
                await self.context.claim(OCCUPIED, local.occupancy, ttl=self.options.presence_ttl)
                if self.webhooks is not None and not is_user_channel(channel):
                    await self._occupy(channel, local.occupancy)
            except BaseException:
                local.failed = True
                if self.local.get(channel) is local:
                    del self.local[channel]
                await self.context.unlisten(events_topic(channel), local.callback)
                raise
            finally:
                local.ready.set()
            return local
        local.pending += 1
        await local.ready.wait()
        if local.failed:
            local.pending -= 1
            raise BrokerError("the channel could not be opened")
        return local

    async def _close_local(self, channel: str) -> None:
        """Stop listening to a channel that has no subscriber on this instance, nor one joining."""
        local = self.local.get(channel)
        if local is None or local.subscribers or local.pending:
            return
        del self.local[channel]
        await self.context.unlisten(events_topic(channel), local.callback)
        await self.context.release(OCCUPIED, local.occupancy)
        if self.webhooks is not None and not is_user_channel(channel):
            await self._vacate(channel, local.occupancy)

    async def _occupy(self, channel: str, occupancy: str) -> None:
        """This instance's first subscriber: ``channel_occupied`` if no other instance has one."""
        ctx, ttl = self.context, self.options.presence_ttl
        await ctx.claim(instances_topic(channel), occupancy, ttl=ttl)
        for _ in range(2):  # twice: the last other instance may leave meanwhile
            if await ctx.claim(OCCUPANCY, channel, ttl=ttl):
                self._webhook("channel_occupied", channel)
                return
            if await ctx.hold(OCCUPANCY, channel, ttl=ttl):
                return

    async def _vacate(self, channel: str, occupancy: str) -> None:
        """This instance's last subscriber left: ``channel_vacated`` if no other instance has one;
        when two leave at once, the broker's release is True for one of them only."""
        ctx = self.context
        await ctx.release(instances_topic(channel), occupancy)
        if await ctx.members(instances_topic(channel)):
            await ctx.drop(OCCUPANCY, channel)
        elif await ctx.release(OCCUPANCY, channel):
            self._webhook("channel_vacated", channel)
            # Another instance's first subscriber may have come meanwhile. If it found the name
            # still there it held it and announced nothing; if it claimed it after the release it
            # announced channel_occupied. A claim tells which: True, the occupied is ours to say.
            if await ctx.members(instances_topic(channel)) and \
                    await ctx.claim(OCCUPANCY, channel, ttl=self.options.presence_ttl):
                self._webhook("channel_occupied", channel)
                await ctx.drop(OCCUPANCY, channel)

    def _deliver(self, local: Local, message: str) -> None:
        """A channel event from any instance: to this instance's subscribers but the excluded socket."""
        excluded, _, frame = message.partition("\n")
        if excluded:
            targets: Collection[Connection] = [conn for conn, sock in local.subscribers.items()
                                               if sock.socket_id != excluded]
        else:
            targets = local.subscribers.keys()
        if targets:
            self.context.broadcast(frame, targets)

    async def _publish(self, channel: str, frame: str, exclude: str | None = None) -> None:
        """``frame`` to the channel's subscribers on every instance, but the socket ``exclude``."""
        await self.context.signal(events_topic(channel), f"{exclude or ''}\n{frame}")

    async def trigger(self, channel: str, name: str, data: str, exclude: str | None = None) -> None:
        """An event from the HTTP API; a cache channel keeps it for its next subscribers."""
        frame = event(name, data, channel)
        if is_cache(channel):
            await self.cache.keep(channel, frame)
        await self._publish(channel, frame, exclude)

    async def occupied(self) -> set[str]:
        """The channels with subscribers on any instance (not the users' own, which the API does not list)."""
        names = {member.partition("\n")[0] for member in await self.context.members(OCCUPIED)}
        return {name for name in names if not is_user_channel(name)}

    async def subscription_count(self, channel: str) -> int:
        return len(await self.context.members(subs_topic(channel)))

    async def user_count(self, channel: str) -> int:
        return len(await self.context.members(users_topic(channel)))

    # --- client events ----------------------------------------------------------------------

    async def _client_event(self, sock: Socket, name: str, channel: str | None, data: Any) -> None:
        if not self.options.client_events:
            raise Refused("Client events are not enabled for this app")
        if channel is None or channel not in sock.channels:
            raise Refused(f"Client event rejected: not subscribed to {channel}")
        kind = channel_kind(channel)
        if kind not in ("private", "presence"):
            raise Refused(f"Client event rejected: client events are for private and presence channels, not {channel}")
        now = time.monotonic()
        rate = self.options.client_event_rate
        sock.tokens = min(rate, sock.tokens + (now - sock.refilled) * rate)
        sock.refilled = now
        if sock.tokens < 1:
            raise Refused(f"Client event rejected: over {rate:g} client events per second", CLIENT_EVENT_RATE)
        sock.tokens -= 1
        member = sock.channels[channel]
        try:
            frame = event(name, data, channel, None if member is None else member.user_id)
            size = len((data if isinstance(data, str) else dumps(data)).encode())
        except ValueError:
            raise Refused("Client event rejected: data is not JSON") from None
        if size > self.options.max_event_size:
            raise Refused(f"Client event rejected: data over {self.options.max_event_size} bytes")
        await self._publish(channel, frame, exclude=sock.socket_id)
        if self.webhooks is not None:
            fields: dict[str, Any] = {"event": name, "data": data if isinstance(data, str) else dumps(data),
                                      "socket_id": sock.socket_id}
            if member is not None:
                fields["user_id"] = member.user_id
            self._webhook("client_event", channel, **fields)
