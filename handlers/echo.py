"""``echo``: every message goes back unchanged, text as text and binary as binary."""

from __future__ import annotations

from wsgate import Connection, Handler, Message


class Echo(Handler):
    """Returns each message to its sender until the client closes."""

    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(message)
