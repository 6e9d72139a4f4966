"""Who a client is and what it may join: connection and subscription tokens, the connect,
subscribe and refresh proxies. The answers follow Centrifugo's codes (docs/channels.md)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from wsgate import Connection, Context, Identity, TokenRejected

from .clients import Client, Sub
from .options import ChannelsOptions
from .protocol import BAD_REQUEST, EXPIRED, INVALID_TOKEN, Disconnect, ReplyError, error
from .proxy import Proxy, ProxyEvent, ProxyReply

__all__ = ["Credentials", "expiry", "proxy_request"]

_NONE = object()  # an answer without "info"


def proxy_request(client: Client) -> dict[str, Any]:
    """The fields every proxy request starts with."""
    return {"client": client.id, "transport": "websocket", "protocol": "json", "encoding": "json",
            "user": client.user}


def expiry(claims: Mapping[str, Any], identity_expiry: float | None) -> float | None:
    """Centrifugo's ``expire_at`` claim overrides ``exp`` (0: never expires)."""
    if "expire_at" in claims:
        value = claims["expire_at"]
        if type(value) is not int or value < 0:
            raise ReplyError(107, "bad request: expire_at is a unix time in seconds")
        return float(value) or None
    return identity_expiry


def _answer(reply: ProxyReply) -> Mapping[str, Any]:
    """The proxy's result; its error or disconnect raised as the client's."""
    if reply.disconnect is not None:
        raise Disconnect(reply.disconnect.code, reply.disconnect.reason)
    if reply.error is not None:
        raise ReplyError(reply.error.code, reply.error.message, reply.error.temporary)
    return reply.result or {}


class Credentials:
    """Checks tokens with the ``token_auth`` authenticator and asks the proxy."""

    def __init__(self, options: ChannelsOptions, context: Context, proxy: Proxy) -> None:
        self._options = options
        self._context = context
        self.proxy = proxy

    async def ask(self, event: ProxyEvent, request: dict[str, Any], conn: Connection) -> Mapping[str, Any]:
        """The proxy's result for ``event``; its error or disconnect raised as the client's."""
        return _answer(await self.proxy.call(event, request, conn.headers))

    async def _identity(self, token: str) -> Identity:
        auth = self._options.token_auth
        if auth is None:
            raise Disconnect(*INVALID_TOKEN)
        try:
            return await self._context.authenticate(auth, token)
        except TokenRejected as exc:
            if exc.reason == "expired":
                raise error(109) from None
            if exc.reason == "backend_error":
                raise error(100) from None
            self._context.logger.info("connection token refused: %s", exc.detail)
            raise Disconnect(*INVALID_TOKEN) from None

    async def connect(self, client: Client, params: Mapping[str, Any]) -> tuple[Mapping[str, Any], Any]:
        """Fill in who ``client`` is from its ``connect``; its credentials' claims and the
        ``data`` for the connect reply (from the proxy)."""
        token, data, conn = params.get("token", ""), params.get("data"), client.conn
        if not isinstance(token, str):
            raise error(107)
        creds: Mapping[str, Any]
        reply_data = None
        if token:
            identity = await self._identity(token)
            if "channel" in identity.claims:
                raise Disconnect(*INVALID_TOKEN)  # a subscription token
            client.user, creds = identity.user, identity.claims
            client.expires_at = expiry(creds, identity.expires_at)
        elif self.proxy.enabled("connect"):
            request = {**proxy_request(client), "name": params.get("name", ""), "version": params.get("version", "")}
            del request["user"]
            if data is not None:
                request["data"] = data
            answer = await self.proxy.call("connect", request, conn.headers)
            creds = _answer(answer)
            if answer.result is None and not self._options.anonymous:
                raise Disconnect(*BAD_REQUEST)  # the backend gave no credentials
            user = creds.get("user", "")
            if not isinstance(user, str):
                raise error(100)
            client.user = user
            client.expires_at = expiry(creds, None)
            client.server_refresh = self.proxy.enabled("refresh")
            reply_data = creds.get("data")
        elif conn.user is not None:  # the handshake's own auth
            client.user, creds = conn.user, conn.claims
            client.expires_at = expiry(creds, None)
        elif self._options.anonymous:
            creds = {}
        else:
            raise Disconnect(*BAD_REQUEST)  # no credentials
        if client.expires_at is not None and client.expires_at <= time.time():
            raise error(110)
        client.conn_info, client.meta = creds.get("info"), creds.get("meta")
        return creds, reply_data

    async def refresh(self, client: Client, params: Mapping[str, Any]) -> None:
        """A client's new connection token: same user, later expiry (3005 if expired)."""
        if client.server_refresh:
            raise Disconnect(*BAD_REQUEST)  # the refresh proxy extends this connection, as in Centrifugo
        token = params.get("token")
        if not isinstance(token, str) or not token:
            raise error(107)
        try:
            identity = await self._identity(token)
        except ReplyError as exc:
            if exc.code == 109:
                raise Disconnect(*EXPIRED) from None
            raise
        if identity.user != client.user or "channel" in identity.claims:
            raise Disconnect(*INVALID_TOKEN)
        client.expires_at = expiry(identity.claims, identity.expires_at)
        if "info" in identity.claims:
            client.conn_info = identity.claims["info"]
        if client.expires_at is not None and client.expires_at <= time.time():
            raise error(110)

    async def refresh_by_proxy(self, client: Client) -> bool:
        """Ask the refresh proxy for more time; False: expired. A failed call changes nothing."""
        extended = await self._extend("refresh", proxy_request(client), client)
        if extended is None:
            return True
        alive, client.expires_at, info = extended
        if info is not _NONE:
            client.conn_info = info
        return alive

    async def sub_refresh_by_proxy(self, client: Client, sub: Sub) -> bool:
        """Ask the sub_refresh proxy for more time for ``sub``; False: expired."""
        extended = await self._extend("sub_refresh", {**proxy_request(client), "channel": sub.channel}, client)
        if extended is None:
            return True
        alive, sub.expires_at, info = extended
        if info is not _NONE:
            sub.chan_info = info
        return alive

    async def _extend(self, event: ProxyEvent, request: dict[str, Any],
                      client: Client) -> tuple[bool, float | None, Any] | None:
        """The refresh proxies' answer: None when the call failed (nothing changes), else
        whether it is still alive, its new expiry, and its info (``_NONE`` when not given)."""
        if client.meta is not None:
            request["meta"] = client.meta
        reply = await self.proxy.call(event, request, client.conn.headers)
        if reply.error is not None or reply.disconnect is not None:
            return None  # as Centrifugo: a failed call gives time, not an end
        if reply.result is None:
            return False, None, _NONE
        expire_at = reply.result.get("expire_at")
        if reply.result.get("expired") is True or (type(expire_at) is int and 0 < expire_at <= time.time()):
            return False, None, _NONE
        return True, float(expire_at) if type(expire_at) is int and expire_at > 0 else None, \
            reply.result.get("info", _NONE)

    async def subscription_token(self, client: Client, channel: str, token: str) -> dict[str, Any]:
        """What a subscription token grants; error 109 expired, 103 unverifiable, 3500 not this client's."""
        auth = self._options.token_auth
        if auth is None:
            raise error(103)
        try:
            identity = await self._context.authenticate(auth, token)
        except TokenRejected as exc:
            if exc.reason == "expired":
                raise error(109) from None
            raise error(100 if exc.reason == "backend_error" else 103) from None
        claims = identity.claims
        if claims.get("channel") != channel or identity.user != client.user or \
                claims.get("client", client.id) != client.id:
            raise Disconnect(*INVALID_TOKEN)
        return {"info": claims.get("info"), "data": claims.get("data"),
                "expire_at": expiry(claims, identity.expires_at)}

    async def subscribe_proxy(self, client: Client, channel: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """What the subscribe proxy grants (its error or disconnect raised)."""
        request = {**proxy_request(client), "channel": channel}
        if "data" in params:
            request["data"] = params["data"]
        answer = await self.ask("subscribe", request, client.conn)
        return {"info": answer.get("info"), "data": answer.get("data"), "expire_at": expiry(answer, None)}
