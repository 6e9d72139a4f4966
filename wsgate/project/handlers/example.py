"""An example handler: answers every text message with a greeting.

Point an endpoint at it with ``handler: handlers.example:Greeter`` (config.yaml does).
The hooks, the Connection and the Context are described in wsgate's docs/handlers.md.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from wsgate import Connection, Handler, Message


class GreeterOptions(BaseModel):
    """The endpoint's ``options:``, validated before the server binds."""

    model_config = ConfigDict(extra="forbid")

    greeting: str = "hello"


class Greeter(Handler[GreeterOptions]):
    """Replies ``<greeting>, <message>``; a binary message closes with 1003."""

    Options = GreeterOptions
    accepts = "text"

    async def on_connect(self, conn: Connection) -> None:
        conn.state["count"] = 0

    async def on_message(self, conn: Connection, message: Message) -> None:
        conn.state["count"] += 1
        await conn.send(f"{self.options.greeting}, {message}")
