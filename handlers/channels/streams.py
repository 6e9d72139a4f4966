"""A channel's publications, history and presence over the endpoint's topics and broker."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from wsgate import Context

from .names import namespace_of
from .options import Namespace
from .protocol import dumps, error

__all__ = ["Streams"]


class Streams:
    """Publish to, and read, channels: each a topic of the endpoint, numbered where its
    namespace keeps history (the Centrifugo offset is the topic's id)."""

    def __init__(self, context: Context, namespace: Callable[[str], Namespace]) -> None:
        self._context = context
        self._namespace = namespace
        self._validators: dict[str, Any] = {}

    async def publish(self, channel: str, ns: Namespace, data: Any, *, info: Mapping[str, Any] | None = None,
                      tags: Mapping[str, str] | None = None, skip_history: bool = False,
                      then: Callable[[bool], None] | None = None) -> int:
        """Publish to every subscriber on every instance; the offset given (0: none).

        Nobody gets what the broker did not take: BrokerError. With ``then``, return 0
        once it is on its way and tell ``then`` whether the broker took it.
        """
        pub: dict[str, Any] = {"data": data}
        if info:
            pub["info"] = info
        if tags:
            pub["tags"] = tags
        event = {"push": {"channel": channel, "pub": pub}}
        if ns.history and not skip_history:
            told = None if then is None else (lambda offset: then(offset is not None))
            offset = await self._context.publish_numbered(channel, event, ns.history, ns.history_ttl,
                                                          at="push.pub.offset", strict=True, wait=then is None,
                                                          then=told)
            return offset or 0
        await self._context.publish(channel, dumps(event), wait=then is None, then=then)
        return 0

    def check_schema(self, channel: str, ns: Namespace, data: Any) -> None:
        """Error 107 if the namespace has a schema that ``data`` does not match."""
        if ns.schema_ is None:
            return
        name = namespace_of(channel)
        validator = self._validators.get(name)
        if validator is None:
            from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # ships no hints

            validator = self._validators[name] = Draft202012Validator(ns.schema_)
        problem = next(iter(validator.iter_errors(data)), None)
        if problem is not None:
            where = "/".join(map(str, problem.absolute_path)) or "data"
            raise error(107, f"bad request: {where}: {problem.message}"[:200])

    async def presence(self, channel: str) -> dict[str, Any]:
        """ClientInfo per client id of the channel's subscribers, on every instance."""
        found = {}
        for member in await self._context.members(channel):
            info = json.loads(member)
            found[info["client"]] = info
        return found

    async def presence_stats(self, channel: str) -> dict[str, int]:
        presence = await self.presence(channel)
        return {"num_clients": len(presence), "num_users": len({i["user"] for i in presence.values()})}

    async def history(self, channel: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The ``history`` result: ``limit`` (0: none, -1: all), ``since``, ``reverse``."""
        ns = self._namespace(channel)
        limit, since, reverse = params.get("limit", 0), params.get("since"), params.get("reverse", False)
        if type(limit) is not int or limit < -1 or not isinstance(reverse, bool):
            raise error(107)
        stream = await self._context.stream(channel, ns.history, keep_for=ns.history_ttl)
        pubs = [m["push"]["pub"] for m in stream.messages]
        if since is not None:
            if not isinstance(since, dict) or type(since.get("offset", 0)) is not int:
                raise error(107)
            if since.get("epoch", "") not in ("", stream.epoch):
                raise error(112)
            after = since.get("offset", 0)
            pubs = [p for p in pubs if (p["offset"] < after if reverse else p["offset"] > after)]
        if reverse:
            pubs.reverse()
        pubs = pubs if limit == -1 else pubs[:limit]
        result: dict[str, Any] = {"epoch": stream.epoch}
        if stream.latest:
            result["offset"] = stream.latest
        if pubs:
            result["publications"] = pubs
        return result

    async def epoch(self, channel: str, ns: Namespace) -> str:
        """The channel's epoch (a broker read)."""
        return (await self._context.stream(channel, 0, keep_for=ns.history_ttl)).epoch
