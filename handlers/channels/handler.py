"""``channels``: the Centrifugo client protocol v2 (JSON) over wsgate's topics and broker.

A client connects, sends ``connect`` (with a token, or asked of the connect proxy), then
subscribes to many channels over the one socket; the backend publishes through the
server API (``api.py``) or lets clients publish. Each channel is a wsgate topic: a
publication is framed once for all its subscribers, numbered by the broker (the
Centrifugo ``offset``) where the namespace keeps history, and recovered after a
reconnect from the client's offset and epoch. See docs/channels.md.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import wsgate
from wsgate import BrokerError, Connection, Handler, HttpAnswer, HttpCall, Message

from .api import ServerApi, carry_out
from .clients import Client, Directory, Sub, ttl
from .credentials import Credentials, proxy_request
from .names import allowed_users, check_channel, namespace_of, user_limited
from .nodes import Nodes
from .options import ChannelsOptions, Namespace
from .protocol import (
    BAD_REQUEST,
    COMMANDS,
    EXPIRED,
    NO_PONG,
    SHUTDOWN,
    STALE,
    Command,
    Disconnect,
    ProtocolError,
    ReplyError,
    dumps,
    error,
    parse_frame,
)
from .proxy import Proxy
from .streams import Streams

__all__ = ["Channels"]

STALE_AFTER = 10.0  # seconds a connection may stay open without sending connect
REFRESH_GRACE = 60.0  # seconds more when the refresh proxy fails, as Centrifugo gives
_JOINING = frozenset({"connect", "subscribe"})  # commands whose reply must precede a channel's publications


class _Replies(list[str]):
    """A frame's replies; ``done`` once sent, so a later reply goes in a frame of its own."""

    done = False


class Channels(Handler[ChannelsOptions]):
    """Centrifugo-protocol channels; the options are in docs/channels.md."""

    Options = ChannelsOptions
    accepts = "text"
    # Clients batch commands into frames, so this bounds frames, not commands.
    policy_defaults = {"rate_limit": {"messages": 100, "per": 1.0, "burst": 200}}
    shutdown_close = SHUTDOWN  # Centrifugo's: its SDKs reconnect

    def __init__(self, options: ChannelsOptions, context: wsgate.Context) -> None:
        super().__init__(options, context)
        self.clients = Directory()
        self.proxy = Proxy(options.proxy, context.logger)
        self.credentials = Credentials(options, context, self.proxy)
        self.streams = Streams(context, self.namespace)
        self.version = f"wsgate {wsgate.__version__}"
        self._opened: dict[Connection, float] = {}  # connections that sent no connect yet
        self._api = ServerApi(self)
        self.nodes = Nodes(context, self.version, self._counts, self.clients.channels)

    # --- life -------------------------------------------------------------------------------

    async def startup(self) -> None:
        await self.nodes.start()
        self.context.spawn(self._ping, "ping")
        self.context.spawn(self._sweep, "expiry")

    async def shutdown(self) -> None:
        await self.nodes.stop()
        await self.proxy.close()

    def _counts(self) -> dict[str, int]:
        clients = list(self.clients)
        return {"num_clients": len(clients), "num_users": len({c.user for c in clients}),
                "num_subs": sum(len(c.subs) for c in clients), "num_channels": len(self.clients.channels())}

    async def on_http(self, call: HttpCall) -> HttpAnswer:
        return await self._api.answer(call)

    def namespace(self, channel: str) -> Namespace:
        """The rules of ``channel``; error 102 for a namespace not configured."""
        ns = self.options.namespaces.get(namespace_of(channel))
        if ns is None:
            raise error(102)
        return ns

    # --- frames -----------------------------------------------------------------------------

    async def on_connect(self, conn: Connection) -> None:
        self._opened[conn] = time.monotonic()

    async def on_message(self, conn: Connection, message: Message) -> None:
        assert isinstance(message, str)  # accepts = "text"
        try:
            commands = parse_frame(message)
        except ProtocolError as exc:
            self.context.logger.info("closing %s: %s", conn.id, exc)
            await conn.close(*BAD_REQUEST)
            return
        if any(command.method in _JOINING for command in commands):
            # Replies first: a subscribe's reply goes out before the channel's live publications.
            async with self.context.preamble(conn):
                await self._run(conn, commands)
        else:
            await self._run(conn, commands)

    async def _run(self, conn: Connection, commands: list[Command]) -> None:
        """Run a frame's commands in order and send their replies in one frame."""
        replies = _Replies()
        try:
            for command in commands:
                reply = await self._command(conn, command, replies)
                if reply is not None:
                    replies.append(dumps(reply))
        except Disconnect as exc:
            replies.done = True
            if replies:
                await conn.send("\n".join(replies))
            await conn.close(exc.code, exc.reason)
            return
        replies.done = True
        if replies:
            await conn.send("\n".join(replies))

    def _reply_later(self, conn: Connection, replies: _Replies, reply: dict[str, Any]) -> None:
        """A reply that came after the command returned: in its frame's replies if they are not sent yet."""
        if replies.done:
            self.context.broadcast(dumps(reply), [conn])
        else:
            replies.append(dumps(reply))

    async def _command(self, conn: Connection, command: Command, replies: _Replies) -> dict[str, Any] | None:
        client = self.clients.get(conn)
        method = command.method
        if method is None:  # {} answers the server's ping
            if client is not None:
                client.pinged_at = None
            return None
        if method not in COMMANDS or (client is None) != (method == "connect"):
            raise Disconnect(*BAD_REQUEST)  # unknown, before connect, or a second connect
        if method == "send":
            return None  # Centrifugo passes send to nothing either, without a send proxy
        if command.id == 0:
            raise Disconnect(*BAD_REQUEST)
        try:
            if client is None:
                result = await self._connect(conn, command.params)
            elif method == "publish":
                await self._publish(client, command.params, functools.partial(self._published, replies, command.id))
                return None
            else:
                result = await getattr(self, "_" + method)(client, command.params)
        except ReplyError as exc:
            return {"id": command.id, "error": exc.as_json()}
        except BrokerError as exc:
            self.context.logger.warning("%s on %s: broker unavailable: %s", method, conn.id, exc)
            return {"id": command.id, "error": error(100).as_json()}
        return {"id": command.id, method: result}

    # --- connect and refresh ----------------------------------------------------------------

    async def _connect(self, conn: Connection, params: dict[str, Any]) -> dict[str, Any]:
        client = Client(conn, str(uuid.uuid4()), "")
        creds, reply_data = await self.credentials.connect(client, params)
        server_subs = self._server_channels(creds)
        self._opened.pop(conn, None)
        first = self.clients.add(client)
        try:
            if first and client.user:
                await self.context.listen(f"user:{client.user}", self._signalled)
            result: dict[str, Any] = {"client": client.id, "version": self.version,
                                      "ping": round(self.options.ping_interval), "pong": True}
            if client.expires_at is not None and not client.server_refresh:
                result.update(expires=True, ttl=ttl(client.expires_at))
            if reply_data is not None:
                result["data"] = reply_data
            asked = params.get("subs")
            wanted: dict[str, Any] = asked if isinstance(asked, dict) else {}
            subs = {}
            for channel, extra in server_subs.items():
                position = wanted.get(channel)
                recover: dict[str, Any] = position if isinstance(position, dict) else {}
                subs[channel] = await self._join(client, channel, self.namespace(channel), recover, extra,
                                                 server=True)
        except BaseException:
            # Not connected after all: the client may try again.
            await self._forget(conn)
            self._opened[conn] = time.monotonic()
            raise
        if subs:
            result["subs"] = subs
        return result

    def _server_channels(self, creds: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Server-side subscriptions from ``subs`` (which wins) or ``channels`` of the credentials."""
        subs, channels = creds.get("subs"), creds.get("channels")
        found: dict[str, dict[str, Any]] = {}
        if isinstance(subs, dict) and subs:
            for channel, options in subs.items():
                check_channel(channel, self.options.max_channel_length)
                extra = options if isinstance(options, dict) else {}
                found[channel] = {"info": extra.get("info"), "data": extra.get("data")}
        elif isinstance(channels, list):
            for channel in channels:
                found[check_channel(channel, self.options.max_channel_length)] = {}
        for channel in found:
            self.namespace(channel)
        return found

    async def _refresh(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        await self.credentials.refresh(client, params)
        result: dict[str, Any] = {"client": client.id, "version": self.version}
        if client.expires_at is not None:
            result.update(expires=True, ttl=ttl(client.expires_at))
        return result

    # --- subscriptions ----------------------------------------------------------------------

    async def _subscribe(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        channel = check_channel(params.get("channel"), self.options.max_channel_length)
        ns = self.namespace(channel)
        if channel in client.subs:
            raise error(105)
        token = params.get("token", "")
        if not isinstance(token, str):
            raise error(107)
        grant: dict[str, Any] = {}
        if token:
            grant = await self.credentials.subscription_token(client, channel, token)
        elif not allowed_users(channel, client.user):
            raise error(103)
        elif user_limited(channel) is None:
            if ns.subscribe == "proxy":
                grant = await self.credentials.subscribe_proxy(client, channel, params)
                grant["server_refresh"] = self.proxy.enabled("sub_refresh")
            elif ns.subscribe == "token" or (ns.subscribe == "authenticated" and not client.user):
                raise error(103)
        return await self._join(client, channel, ns, params, grant)

    async def _join(self, client: Client, channel: str, ns: Namespace, params: Mapping[str, Any],
                    grant: Mapping[str, Any], *, server: bool = False) -> dict[str, Any]:
        """Subscribe ``client``: recovery, presence, join; the subscribe result.

        ``params`` are the client's (``recover``, ``offset``, ``epoch``, ``recoverable``,
        ``positioned``); ``grant`` is what a token, the proxy or the server gave (``info``,
        ``data``, ``expire_at``, ``server_refresh``), never what the client says of itself.
        """
        if len(client.subs) >= self.options.max_subscriptions:
            raise error(106)
        offset, epoch = params.get("offset", 0), params.get("epoch", "")
        if type(offset) is not int or offset < 0 or not isinstance(epoch, str):
            raise error(107)
        recoverable = ns.history > 0 and (ns.force_recovery or server or (
            ns.allow_recovery and bool(params.get("recoverable") or params.get("recover"))))
        recovering = recoverable and bool(params.get("recover"))
        positioned = recoverable or bool(params.get("positioned"))
        sub = Sub(channel, ns, grant.get("info"), grant.get("expire_at"),
                  server_refresh=bool(grant.get("server_refresh")))
        client.subs[channel] = sub  # taken now: a second subscribe meanwhile is a duplicate
        try:
            recovery = await self.context.subscribe(
                client.conn, channel, offset if recovering else None, epoch if recovering else None,
                history=ns.history if recovering else 0, keep_for=ns.history_ttl, position=positioned)
            sub.epoch = recovery.epoch
            if ns.presence:
                member = dumps(client.info(sub))
                if await self.context.claim(channel, member, ttl=self.options.presence_ttl):
                    sub.member = member
        except BaseException:
            client.subs.pop(channel, None)
            await self.context.unsubscribe(client.conn, channel)
            raise
        if ns.join_leave:
            await self.context.publish(channel, dumps({"push": {"channel": channel,
                                                                "join": {"info": client.info(sub)}}}))
        result: dict[str, Any] = {}
        if positioned:
            result.update(positioned=True, epoch=recovery.epoch)
            if recovery.latest:
                result["offset"] = recovery.latest
        if recoverable:
            result["recoverable"] = True
        if recovering:
            result["was_recovering"] = True
            result["recovered"] = recovery.recovered
            if recovery.recovered and recovery.messages:
                result["publications"] = [m["push"]["pub"] for m in recovery.messages]
        if grant.get("data") is not None:
            result["data"] = grant["data"]
        if sub.expires_at is not None and not sub.server_refresh:
            result.update(expires=True, ttl=ttl(sub.expires_at))
        return result

    async def _unsubscribe(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        channel = check_channel(params.get("channel"), self.options.max_channel_length)
        sub = client.subs.pop(channel, None)
        if sub is not None:
            await self._leave(client, sub)
        return {}

    async def _leave(self, client: Client, sub: Sub) -> None:
        await self.context.unsubscribe(client.conn, sub.channel)
        if sub.member is not None:
            await self.context.release(sub.channel, sub.member)
        if sub.namespace.join_leave:
            await self.context.publish(sub.channel, dumps({"push": {"channel": sub.channel,
                                                                    "leave": {"info": client.info(sub)}}}))

    async def _sub_refresh(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        channel = check_channel(params.get("channel"), self.options.max_channel_length)
        token = params.get("token")
        sub = client.subs.get(channel)
        if sub is None or not isinstance(token, str) or not token:
            raise error(107)
        grant = await self.credentials.subscription_token(client, channel, token)
        sub.expires_at = grant["expire_at"]
        if sub.expires_at is None:
            return {}
        if sub.expires_at <= time.time():
            raise error(110)
        return {"expires": True, "ttl": ttl(sub.expires_at)}

    # --- publications, presence, history, rpc -----------------------------------------------

    def _may(self, rule: str, client: Client, channel: str) -> None:
        if rule == "anyone" or (rule == "subscribers" and channel in client.subs) or \
                (rule == "authenticated" and client.user):
            return
        raise error(103)

    async def _publish(self, client: Client, params: dict[str, Any], then: Callable[[Client, bool], None]) -> None:
        """Publish; ``then`` replies once the broker took it (or did not).

        As in Centrifugo, a publish is answered only once it has its offset, so a
        publication answered before another was made comes first on every instance;
        meanwhile the connection's next commands go on, and several publications share
        a broker round trip.
        """
        channel = check_channel(params.get("channel"), self.options.max_channel_length)
        ns = self.namespace(channel)
        if "data" not in params:
            raise error(107)
        data = params["data"]
        skip_history = False
        if ns.publish == "proxy":
            answer = await self.credentials.ask("publish", {**proxy_request(client), "channel": channel, "data": data},
                                                client.conn)
            data = answer.get("data", data)
            skip_history = answer.get("skip_history") is True
        else:
            self._may(ns.publish, client, channel)
        self.streams.check_schema(channel, ns, data)
        sub = client.subs.get(channel)
        await self.streams.publish(channel, ns, data, info=client.info(sub), skip_history=skip_history,
                                   then=functools.partial(then, client))

    def _published(self, replies: _Replies, command_id: int, client: Client, taken: bool) -> None:
        if not taken:
            self.context.logger.warning("publish on %s: broker unavailable", client.conn.id)
        self._reply_later(client.conn, replies, {"id": command_id, "publish": {}} if taken
                          else {"id": command_id, "error": error(100).as_json()})

    async def _presence(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        return {"presence": await self.streams.presence(self._readable(client, params, "presence"))}

    async def _presence_stats(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        return await self.streams.presence_stats(self._readable(client, params, "presence"))

    def _readable(self, client: Client, params: dict[str, Any], what: str) -> str:
        channel = check_channel(params.get("channel"), self.options.max_channel_length)
        ns = self.namespace(channel)
        if not (ns.presence if what == "presence" else ns.history):
            raise error(108)
        self._may(ns.presence_readers if what == "presence" else ns.history_readers, client, channel)
        return channel

    async def _history(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        return await self.streams.history(self._readable(client, params, "history"), params)

    async def _rpc(self, client: Client, params: dict[str, Any]) -> dict[str, Any]:
        if not self.proxy.enabled("rpc"):
            raise error(104)
        request = {**proxy_request(client), "method": params.get("method", "")}
        if "data" in params:
            request["data"] = params["data"]
        answer = await self.credentials.ask("rpc", request, client.conn)
        return {"data": answer["data"]} if "data" in answer else {}

    # --- the end of a connection ------------------------------------------------------------

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        self._opened.pop(conn, None)
        await self._forget(conn)

    async def _forget(self, conn: Connection) -> None:
        """Leave every channel of the client of ``conn`` and forget it."""
        client = self.clients.remove(conn)
        if client is None:
            return
        for sub in list(client.subs.values()):
            try:
                await self._leave(client, sub)
            except BrokerError as exc:
                self.context.logger.warning("leave of %s from %s: %s", client.id, sub.channel, exc)
        client.subs.clear()
        if client.user and not self.clients.has_user(client.user):
            await self.context.unlisten(f"user:{client.user}", self._signalled)

    # --- timers -----------------------------------------------------------------------------

    async def _ping(self) -> None:
        """``{}`` to every client each ``ping_interval``; no ``{}`` back within ``pong_timeout``: 3012."""
        while True:
            await asyncio.sleep(self.options.ping_interval - self.options.pong_timeout)
            pinged = list(self.clients)
            now = time.monotonic()
            for client in pinged:
                client.pinged_at = now
            self.context.broadcast("{}", [client.conn for client in pinged])
            await asyncio.sleep(self.options.pong_timeout)
            for client in pinged:
                if client.pinged_at == now and not client.conn.closed:
                    await client.conn.close(*NO_PONG)

    async def _sweep(self) -> None:
        """Once a second: close expired and stale connections, end expired subscriptions."""
        while True:
            await asyncio.sleep(1.0)
            now, mono = time.time(), time.monotonic()
            for conn, opened in list(self._opened.items()):
                if mono - opened > STALE_AFTER:
                    del self._opened[conn]
                    await conn.close(*STALE)
            delay = self.options.expired_close_delay
            for client in self.clients:
                if client.expires_at is not None and client.server_refresh and now >= client.expires_at:
                    self.context.spawn(functools.partial(self._refresh_by_proxy, client), f"refresh {client.id}")
                    client.expires_at = now + REFRESH_GRACE  # not asked again while this runs
                elif client.expires_at is not None and now >= client.expires_at + delay:
                    await client.conn.close(*EXPIRED)
                    continue
                for sub in list(client.subs.values()):
                    if sub.expires_at is not None and sub.server_refresh and now >= sub.expires_at:
                        self.context.spawn(functools.partial(self._sub_refresh_by_proxy, client, sub),
                                           f"sub_refresh {client.id} {sub.channel}")
                        sub.expires_at = now + REFRESH_GRACE
                    elif sub.expires_at is not None and now >= sub.expires_at + delay:
                        await self.server_unsubscribe(client, sub.channel, 2501, "subscription expired")

    async def _refresh_by_proxy(self, client: Client) -> None:
        if not await self.credentials.refresh_by_proxy(client):
            await client.conn.close(*EXPIRED)

    async def _sub_refresh_by_proxy(self, client: Client, sub: Sub) -> None:
        if not await self.credentials.sub_refresh_by_proxy(client, sub):
            await self.server_unsubscribe(client, sub.channel, 2501, "subscription expired")

    # --- server-side actions, by user on every instance -------------------------------------

    def _signalled(self, message: str) -> None:
        order = json.loads(message)
        targets = self.clients.of_user(order["user"], order.get("client"))
        if targets:
            self.context.spawn(functools.partial(carry_out, self, order, targets), f"{order['op']} {order['user']}")

    async def server_subscribe(self, client: Client, channel: str, extra: Mapping[str, Any]) -> None:
        """Subscribe ``client`` as the server: a ``subscribe`` push, then the channel's publications."""
        if channel in client.subs or client.conn.closed:
            return
        async with self.context.preamble(client.conn):
            try:
                position = {k: extra[k] for k in ("recover", "offset", "epoch") if k in extra}
                result = await self._join(client, channel, self.namespace(channel), position, extra, server=True)
            except ReplyError as exc:
                self.context.logger.warning("server subscribe of %s to %s: %s", client.id, channel, exc)
                return
            await client.conn.send(dumps({"push": {"channel": channel, "subscribe": result}}))

    async def server_unsubscribe(self, client: Client, channel: str, code: int = 2000,
                                 reason: str = "server unsubscribe") -> None:
        sub = client.subs.pop(channel, None)
        if sub is None:
            return
        await self._leave(client, sub)
        if not client.conn.closed:
            await client.conn.send(dumps({"push": {"channel": channel, "unsubscribe": {"code": code,
                                                                                      "reason": reason}}}))
