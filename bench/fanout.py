"""The `many` scenario's endpoint (``fanout:Fanout`` in wsgate-bench.yaml): each message
goes to every connection of the endpoint, the sender included.

``Context.broadcast`` frames the message once and queues it to each local connection;
no topic, so a connection costs no subscription, and no join or leave messages, which
at 50,000 members would cost as much as the broadcast itself, per join.
"""

from __future__ import annotations

from wsgate import Connection, Handler, Message


class Fanout(Handler):
    """Broadcasts every message to all of the endpoint's connections."""

    async def on_message(self, conn: Connection, message: Message) -> None:
        self.context.broadcast(message)
