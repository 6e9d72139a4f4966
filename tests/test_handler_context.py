"""What a handler is given: ``self.context`` has the documented Context members and
nothing of the gateway's runtime behind it (its stats, its stop(), its connections set)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import wsgate
from wsgate import Connection, Context, Handler
from wsgate.testing import run_gateway

TIMEOUT = 10
GUIDE = Path(__file__).resolve().parent.parent / "docs" / "handlers.md"

DOCUMENTED = {
    "path", "logger", "connections", "broadcast", "broadcast_json", "subscribe", "unsubscribe", "publish",
    "publish_numbered", "history", "claim", "hold", "drop", "release", "members", "reap", "spawn",
    "preamble", "listen", "unlisten", "signal", "authenticate", "stream",
}
RUNTIME = {"stats", "stop", "detach", "attach", "connected", "wait_idle", "update", "handler", "endpoint",
           "origin_policy", "tasks", "hub", "open", "connecting"}


def _public(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


class Peek(Handler):
    """Answers the first message with what its context offers."""

    async def on_connect(self, conn: Connection) -> None:
        ctx = self.context
        await conn.send_json({
            "public": sorted(_public(ctx)),
            "runtime": sorted(name for name in RUNTIME if hasattr(ctx, name)),
            "is_context": isinstance(ctx, Context),
            "path": ctx.path,
            "logger": ctx.logger.name,
            "mine": conn in ctx.connections,
        })


def test_the_context_class_declares_the_documented_members() -> None:
    assert _public(wsgate.Context) | set(wsgate.Context.__annotations__) == DOCUMENTED
    table = GUIDE.read_text().split("## Context", 1)[1].split("\n\n**", 1)[0]
    assert {name for name in DOCUMENTED if not re.search(rf"`(await )?{name}\b", table)} == set()


async def test_a_handler_sees_only_the_documented_context() -> None:
    async with asyncio.timeout(TIMEOUT), run_gateway({"/peek": Peek}) as gw, gw.connect("/peek") as ws:
        seen = await ws.receive_json()
    assert seen["runtime"] == []
    assert set(seen["public"]) == DOCUMENTED
    assert seen["is_context"] is True
    assert (seen["path"], seen["logger"], seen["mine"]) == ("/peek", "wsgate.endpoint./peek", True)


async def test_the_context_takes_no_new_attributes() -> None:
    """A slip such as ``self.context.rooms = {}`` fails at once instead of hiding state there."""
    async with asyncio.timeout(TIMEOUT), run_gateway({"/peek": Peek}) as gw:
        ctx = gw.gateway.routes["/peek"].handler.context
        try:
            ctx.rooms = {}  # type: ignore[attr-defined]
        except AttributeError:
            pass
        else:
            raise AssertionError("the context took a new attribute")
