"""The Pusher HTTP API of one app, at ``/apps/<app_id>/...``: what the ``pusher`` SDKs call.

Every request is signed (``signatures.check_request``): a wrong key or signature, or a
timestamp outside the window, is 401. ``POST events`` and ``POST batch_events`` trigger;
``GET channels``, ``GET channels/<name>`` and ``GET channels/<name>/users`` describe the
channels across instances. Errors are plain text, as Pusher's: 400 bad request, 401, 404,
413 an event's data over ``max_event_size``, 503 the broker is unavailable.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from wsgate import BrokerError, HttpAnswer, HttpCall

from .protocol import channel_kind, valid_channel, valid_event_name
from .signatures import RequestRefused, check_request
from .users import is_user_channel, valid_user_id

if TYPE_CHECKING:
    from .handler import Pusher

__all__ = ["Api"]

MAX_CHANNELS = 100  # channels of one trigger
MAX_BATCH = 10  # events of one batch trigger
_SOCKET_ID = re.compile(r"[0-9]{1,20}\.[0-9]{1,20}", re.ASCII)
_INFOS = frozenset({"user_count", "subscription_count"})
# The pusher SDK for Python (3.3) sends terminate_user_connections to /users/<id>/..., not
# under /apps/<app_id>/ as Pusher documents it: whichever pusher endpoint the gateway gives
# that path passes it to the app whose key signed it.
USERS_PREFIX = "/users/"
_BY_KEY: weakref.WeakValueDictionary[str, Api] = weakref.WeakValueDictionary()


class Bad(Exception):
    """A request answered with ``status`` and ``str(exc)`` as plain text."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _text(status: int, message: str) -> HttpAnswer:
    return HttpAnswer(status, (message + "\n").encode(), "text/plain")


def _infos(query: Mapping[str, str] | Mapping[str, Any]) -> set[str]:
    asked = query.get("info") or ""
    if not isinstance(asked, str):
        raise Bad("info is a comma-separated list of attributes")
    names = {name for name in asked.split(",") if name}
    unknown = names - _INFOS
    if unknown:
        raise Bad(f"unknown info attribute(s): {', '.join(sorted(unknown))}; known: user_count, subscription_count")
    return names


class Api:
    """The HTTP API of one ``pusher`` endpoint."""

    def __init__(self, pusher: Pusher) -> None:
        self._p = pusher

    def register(self) -> None:
        """Answer the app's requests to ``/users/...`` that another pusher endpoint got."""
        _BY_KEY[self._p.options.key] = self

    def unregister(self) -> None:
        if _BY_KEY.get(self._p.options.key) is self:
            del _BY_KEY[self._p.options.key]

    async def answer(self, call: HttpCall) -> HttpAnswer:
        if call.path.startswith(USERS_PREFIX):
            owner = _BY_KEY.get(call.query.get("auth_key", "")) or self  # self: refused as a wrong key
            return await owner.answer_own(call, ["users", *call.path[len(USERS_PREFIX):].split("/")])
        return await self.answer_own(call, call.method.split("/"))

    async def answer_own(self, call: HttpCall, parts: list[str]) -> HttpAnswer:
        """``call``, whose path below the app is ``parts``, answered by this app."""
        options = self._p.options
        try:
            check_request(options.key, self._p.secret, call.verb, call.path, call.query, call.body,
                          time.time(), options.timestamp_window)
        except RequestRefused as exc:
            return _text(401, str(exc))
        try:
            if call.verb == "POST" and parts == ["events"]:
                return HttpAnswer.json(await self.events(self._body(call)))
            if call.verb == "POST" and parts == ["batch_events"]:
                return HttpAnswer.json(await self.batch_events(self._body(call)))
            if call.verb == "GET" and parts == ["channels"]:
                return HttpAnswer.json(await self.channels(call.query))
            if call.verb == "GET" and len(parts) == 2 and parts[0] == "channels":
                return HttpAnswer.json(await self.channel(parts[1], call.query))
            if call.verb == "GET" and len(parts) == 3 and parts[0] == "channels" and parts[2] == "users":
                return HttpAnswer.json(await self.users(parts[1]))
            if call.verb == "POST" and len(parts) == 3 and parts[0] == "users" and parts[2] == "terminate_connections":
                return HttpAnswer.json(await self.terminate(parts[1]))
        except Bad as exc:
            return _text(exc.status, str(exc))
        except BrokerError as exc:
            self._p.context.logger.warning("API %s %s: broker unavailable: %s", call.verb, call.path, exc)
            return _text(503, "broker unavailable: try again")
        return _text(404, f"no API method {call.verb} {call.path}")

    @staticmethod
    def _body(call: HttpCall) -> dict[str, Any]:
        try:
            body = call.json()
        except ValueError:
            raise Bad("the body is not JSON") from None
        if not isinstance(body, dict):
            raise Bad("the body is not a JSON object")
        return body

    def _event(self, item: Mapping[str, Any], channels: list[str]) -> tuple[str, str, str | None]:
        """``(name, data, socket_id)`` of an event to trigger, checked; Bad otherwise."""
        name, data, socket_id = item.get("name"), item.get("data"), item.get("socket_id")
        if not valid_event_name(name):
            raise Bad("name is a string of 1 to 200 characters")
        assert isinstance(name, str)
        if not isinstance(data, str):
            raise Bad("data is a string (JSON-encode it)")
        if len(data.encode()) > self._p.options.max_event_size:
            raise Bad(f"event data over {self._p.options.max_event_size} bytes", 413)
        if socket_id is not None and not (isinstance(socket_id, str) and _SOCKET_ID.fullmatch(socket_id)):
            raise Bad("socket_id is a string such as 123.456")
        for channel in channels:
            if not valid_channel(channel) and not is_user_channel(channel):
                raise Bad(f"invalid channel name {channel!r}: 1 to 164 of A-Z a-z 0-9 _ - = @ , . ;")
        return name, data, socket_id or None

    async def events(self, body: Mapping[str, Any]) -> dict[str, Any]:
        channels = body.get("channels")
        if channels is None and "channel" in body:
            channels = [body["channel"]]
        if not isinstance(channels, list) or not channels or len(channels) > MAX_CHANNELS:
            raise Bad(f"channels is a list of 1 to {MAX_CHANNELS} channel names")
        if any(channel_kind(c) == "encrypted" for c in channels if isinstance(c, str)) and len(channels) > 1:
            raise Bad("an event to an encrypted channel goes to that channel alone")
        name, data, socket_id = self._event(body, channels)
        infos = _infos(body)
        for channel in channels:
            await self._p.trigger(channel, name, data, socket_id)
        if not infos:
            return {}
        return {"channels": {channel: await self._info(channel, infos) for channel in channels}}

    async def batch_events(self, body: Mapping[str, Any]) -> dict[str, Any]:
        batch = body.get("batch")
        if not isinstance(batch, list) or not batch or len(batch) > MAX_BATCH:
            raise Bad(f"batch is a list of 1 to {MAX_BATCH} events")
        checked = []
        for item in batch:
            if not isinstance(item, dict):
                raise Bad("each event of a batch is an object")
            channel = item.get("channel")
            if not isinstance(channel, str):
                raise Bad("each event of a batch names its channel")
            checked.append((channel, *self._event(item, [channel]), _infos(item)))
        infos: list[dict[str, Any]] = []
        for channel, name, data, socket_id, asked in checked:
            await self._p.trigger(channel, name, data, socket_id)
            infos.append(await self._info(channel, asked) if asked else {})
        return {"batch": infos} if any(infos) else {}

    async def _info(self, channel: str, infos: set[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if "subscription_count" in infos:
            found["subscription_count"] = await self._p.subscription_count(channel)
        if "user_count" in infos and channel_kind(channel) == "presence":
            found["user_count"] = await self._p.user_count(channel)
        return found

    async def channels(self, query: Mapping[str, str]) -> dict[str, Any]:
        prefix = query.get("filter_by_prefix", "")
        infos = _infos(query)
        if "user_count" in infos and not prefix.startswith("presence-"):
            raise Bad("info=user_count needs filter_by_prefix=presence-")
        names = sorted(c for c in await self._p.occupied() if c.startswith(prefix))
        return {"channels": {name: await self._info(name, infos) for name in names}}

    async def channel(self, channel: str, query: Mapping[str, str]) -> dict[str, Any]:
        if not valid_channel(channel):
            raise Bad(f"invalid channel name {channel!r}")
        infos = _infos(query)
        if "user_count" in infos and channel_kind(channel) != "presence":
            raise Bad("user_count is for presence channels")
        found: dict[str, Any] = {"occupied": channel in await self._p.occupied()}
        found.update(await self._info(channel, infos))
        return found

    async def terminate(self, user_id: str) -> dict[str, Any]:
        """``terminate_user_connections``: every connection signed in as ``user_id`` is closed."""
        if not valid_user_id(user_id):
            raise Bad("a user id is 1 to 200 of A-Z a-z 0-9 _ - = @ , . ;")
        await self._p.users.terminate(user_id)
        return {}

    async def users(self, channel: str) -> dict[str, Any]:
        if not valid_channel(channel) or channel_kind(channel) != "presence":
            raise Bad("users are listed for presence channels only")
        presence = await self._p.presence(channel)
        return {"users": [{"id": user_id} for user_id in presence["ids"]]}
