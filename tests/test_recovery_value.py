"""What ``Context.subscribe`` and ``Context.history`` return is an immutable value: the same
events go to every connection that joins a topic, so no handler can change them for the
others, and they still encode as JSON as they are."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from wsgate import Connection, Handler, Message, Recovery
from wsgate.testing import run_gateway

TIMEOUT = 10


def _tamper(messages: Any) -> list[str]:
    """Every way of changing ``messages`` that worked."""
    attempts = {
        "append": lambda: messages.append({"id": 99}),
        "item": lambda: messages.__setitem__(0, {"id": 99}),
        "field": lambda: messages[0].__setitem__("text", "forged"),
        "delete field": lambda: messages[0].__delitem__("text"),
        "update": lambda: messages[0].update(text="forged"),
        "pop": lambda: messages[0].pop("text"),
        "nested": lambda: messages[0]["tags"].append("forged"),
        "nested dict": lambda: messages[0]["meta"].__setitem__("by", "forged"),
    }
    worked = []
    for name, attempt in attempts.items():
        try:
            attempt()
        except (AttributeError, TypeError):
            continue
        worked.append(name)
    return worked


class Notes(Handler):
    """Each join gets the history; the first joiner tries to change it for the others."""

    async def on_connect(self, conn: Connection) -> None:
        since = conn.query.get("since")
        found = await self.context.subscribe(conn, "notes", int(since) if since else None,
                                             conn.query.get("epoch"), history=10)
        history = await self.context.history("notes", 10)
        copied = dict(found.messages[0]) if found.messages else {}
        copied["text"] = "a copy may change"
        await conn.send_json({
            "recovered": found.recovered, "epoch": found.epoch,
            "type": type(found).__name__, "messages_type": type(found.messages).__name__,
            "worked": _tamper(found.messages) + _tamper(history) if found.messages else [],
            "messages": found.messages, "history": history,
            "encoded": json.loads(json.dumps(found.messages)),
            "deepcopy": copy.deepcopy(found.messages) == found.messages,
            "copied": copied["text"],
        })

    async def on_message(self, conn: Connection, message: Message) -> None:
        await self.context.publish_numbered("notes", {"text": str(message), "tags": ["a", "b"], "meta": {"by": "x"}},
                                            keep=10)


async def test_subscribe_and_history_return_values_no_handler_can_change() -> None:
    note = {"text": "first", "tags": ["a", "b"], "meta": {"by": "x"}}
    async with asyncio.timeout(TIMEOUT), run_gateway({"/notes": Notes}) as gw:
        async with gw.connect("/notes") as ws:
            hello = await ws.receive_json()
            assert hello["messages"] == []
            await ws.send_str("first")
            assert await ws.receive_json() == {"id": 1, **note}
        for url in ("/notes", "/notes", f"/notes?since=0&epoch={hello['epoch']}"):
            async with gw.connect(url) as ws:
                seen = await ws.receive_json()
            assert seen["worked"] == [], url
            assert seen["messages"] == seen["history"] == seen["encoded"] == [{"id": 1, **note}], url
            assert (seen["type"], seen["messages_type"], seen["deepcopy"], seen["copied"]) == (
                "Recovery", "tuple", True, "a copy may change")
        assert seen["recovered"] is True


def test_recovery_is_a_frozen_value() -> None:
    found = Recovery(True, "e1", ())
    try:
        found.messages = ()  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("Recovery.messages could be replaced")
    assert Recovery.__annotations__["messages"] == "tuple[Mapping[str, Any], ...]"
