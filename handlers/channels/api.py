"""The server API: what Centrifugo's ``cent`` SDK calls, on ``POST <endpoint path>/api/<method>``.

The caller shows the endpoint's ``api_key`` in ``X-API-Key`` (or ``Authorization:
apikey KEY``); a missing or wrong key is 401. Every answer is 200 with ``{"result":
...}`` or ``{"error": {"code", "message"}}``, as Centrifugo's. Actions on a user's
connections (``subscribe``, ``unsubscribe``, ``disconnect``, ``refresh``) are signals
that reach the user's connections on every instance.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from wsgate import BrokerError, HttpAnswer, HttpCall

from .names import check_channel
from .protocol import EXPIRED, FORCE, ReplyError, dumps, error

if TYPE_CHECKING:
    from .clients import Client
    from .handler import Channels

__all__ = ["ServerApi", "carry_out"]

Method = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _string(params: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = params.get(key, "")
    if not isinstance(value, str) or (required and not value):
        raise error(107, f"bad request: {key} is {'a non-empty' if required else 'a'} string")
    return value


class ServerApi:
    """The server API of one ``channels`` endpoint."""

    def __init__(self, channels: Channels) -> None:
        self._ch = channels
        self._methods: dict[str, Method] = {
            "publish": self.publish, "broadcast": self.broadcast, "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe, "disconnect": self.disconnect, "refresh": self.refresh,
            "presence": self.presence, "presence_stats": self.presence_stats, "history": self.history,
            "history_remove": self.history_remove, "channels": self.channels, "info": self.info,
            "batch": self.batch,
        }

    def _authorized(self, call: HttpCall) -> bool:
        key = self._ch.options.api_key
        if key is None:
            return False
        sent = call.headers.get("X-API-Key")
        if sent is None:
            scheme, _, value = call.headers.get("Authorization", "").partition(" ")
            sent = value.strip() if scheme.lower() == "apikey" else ""
        return hmac.compare_digest(sent.encode(), key.get_secret_value().encode())

    async def answer(self, call: HttpCall) -> HttpAnswer:
        if self._ch.options.api_key is None:
            return HttpAnswer.json({"error": "this endpoint's server API is off: set options.api_key"}, 404)
        if not self._authorized(call):
            return HttpAnswer.json({"error": "missing or wrong API key (X-API-Key header)"}, 401)
        method = self._methods.get(call.method)
        if method is None:
            return HttpAnswer.json({"error": f"no API method {call.method!r}"}, 404)
        try:
            params = call.json()
        except ValueError:
            return HttpAnswer.json({"error": {"code": 107, "message": "bad request: the body is not JSON"}})
        outcome = await self.run(method, params)
        if call.method == "batch" and "result" in outcome:
            return HttpAnswer.json(outcome["result"])  # Centrifugo answers {"replies": [...]} unwrapped
        return HttpAnswer.json(outcome)

    async def run(self, method: Method, params: Any) -> dict[str, Any]:
        """``{"result": ...}`` or ``{"error": ...}`` of one method call."""
        if not isinstance(params, dict):
            return {"error": error(107, "bad request: the body is a JSON object").as_json()}
        try:
            return {"result": await method(params)}
        except ReplyError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        except BrokerError as exc:
            self._ch.context.logger.warning("server API: broker unavailable: %s", exc)
            return {"error": {"code": 100, "message": "internal server error"}}

    def _channel(self, params: Mapping[str, Any]) -> str:
        return check_channel(params.get("channel"), self._ch.options.max_channel_length)

    async def publish(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        ns = self._ch.namespace(channel)
        if "data" not in params:
            raise error(107, "bad request: data is required")
        tags = params.get("tags")
        if tags is not None and not (isinstance(tags, dict) and all(isinstance(v, str) for v in tags.values())):
            raise error(107, "bad request: tags map strings to strings")
        offset = await self._ch.streams.publish(channel, ns, params["data"], tags=tags,
                                                skip_history=params.get("skip_history") is True)
        if not offset:
            return {}
        # The epoch costs a broker read; a backend needs it to hand a client a position.
        return {"offset": offset, "epoch": await self._ch.streams.epoch(channel, ns)}

    async def broadcast(self, params: dict[str, Any]) -> dict[str, Any]:
        channels = params.get("channels")
        if not isinstance(channels, list) or not channels:
            raise error(107, "bad request: channels is a non-empty list")
        responses = [await self.run(self.publish, {**params, "channel": channel}) for channel in channels]
        return {"responses": responses}

    async def _order(self, params: Mapping[str, Any], op: str, **extra: Any) -> dict[str, Any]:
        user = _string(params, "user")
        order = {"op": op, "user": user, **extra}
        if params.get("client"):
            order["client"] = _string(params, "client")
        await self._ch.context.signal(f"user:{user}", dumps(order))
        return {}

    async def subscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        self._ch.namespace(channel)
        extra = {k: params[k] for k in ("info", "data") if params.get(k) is not None}
        since = params.get("recover_since")
        if isinstance(since, dict):
            extra.update(recover=True, offset=since.get("offset", 0), epoch=since.get("epoch", ""))
        return await self._order(params, "subscribe", channel=channel, extra=extra)

    async def unsubscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        return await self._order(params, "unsubscribe", channel=self._channel(params))

    async def disconnect(self, params: dict[str, Any]) -> dict[str, Any]:
        asked = params.get("disconnect")
        how: dict[str, Any] = asked if isinstance(asked, dict) else {}
        code, reason = how.get("code", FORCE[0]), how.get("reason", FORCE[1])
        if type(code) is not int or not 3000 <= code <= 4999 or not isinstance(reason, str) or \
                len(reason.encode()) > 123:
            raise error(107, "bad request: disconnect.code is 3000-4999, reason at most 123 bytes")
        whitelist = params.get("whitelist") or []
        if not isinstance(whitelist, list):
            raise error(107, "bad request: whitelist is a list of client ids")
        return await self._order(params, "disconnect", code=code, reason=reason, whitelist=whitelist)

    async def refresh(self, params: dict[str, Any]) -> dict[str, Any]:
        expire_at = params.get("expire_at")
        if expire_at is not None and (type(expire_at) is not int or expire_at < 0):
            raise error(107, "bad request: expire_at is a unix time in seconds")
        return await self._order(params, "refresh", expired=params.get("expired") is True, expire_at=expire_at)

    async def presence(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        if not self._ch.namespace(channel).presence:
            raise error(108)
        return {"presence": await self._ch.streams.presence(channel)}

    async def presence_stats(self, params: dict[str, Any]) -> dict[str, Any]:
        presence = (await self.presence(params))["presence"]
        return {"num_clients": len(presence), "num_users": len({i["user"] for i in presence.values()})}

    async def history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        if not self._ch.namespace(channel).history:
            raise error(108)
        return await self._ch.streams.history(channel, params)

    async def history_remove(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel(params)
        if not self._ch.namespace(channel).history:
            raise error(108)
        raise error(108, "not available: wsgate keeps history for history_ttl; it cannot be removed sooner")

    async def channels(self, params: dict[str, Any]) -> dict[str, Any]:
        pattern = params.get("pattern", "")
        if not isinstance(pattern, str):
            raise error(107, "bad request: pattern is a string")
        counts = await self._ch.nodes.channels(pattern)
        return {"channels": {name: {"num_clients": n} for name, n in counts.items()}}

    async def info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"nodes": self._ch.nodes.all()}

    async def batch(self, params: dict[str, Any]) -> dict[str, Any]:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise error(107, "bad request: commands is a list")
        replies = []
        for command in commands:
            if not isinstance(command, dict) or len(command) != 1:
                replies.append({"error": error(107).as_json()})
                continue
            (name, body), = command.items()
            method = self._methods.get(name) if name != "batch" else None
            if method is None:
                replies.append({"error": error(104).as_json()})
                continue
            outcome = await self.run(method, body)
            replies.append({name: outcome["result"]} if "result" in outcome else outcome)
        return {"replies": replies}


async def carry_out(channels: Channels, order: Mapping[str, Any], targets: list[Client]) -> None:
    """Act on this instance's clients of a user as the server API asked."""
    op = order["op"]
    for client in targets:
        if client.conn.closed:
            continue
        if op == "disconnect":
            if client.id not in order.get("whitelist", ()):
                await client.conn.close(order["code"], order["reason"])
        elif op == "subscribe":
            await channels.server_subscribe(client, order["channel"], order.get("extra", {}))
        elif op == "unsubscribe":
            await channels.server_unsubscribe(client, order["channel"])
        elif op == "refresh":
            if order.get("expired"):
                await client.conn.close(*EXPIRED)
            elif order.get("expire_at") is not None:
                client.expires_at = float(order["expire_at"]) or None
