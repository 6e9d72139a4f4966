"""User authentication: ``pusher:signin``, events to a user, and ending a user's connections.

A connection signs in with ``{"auth", "user_data"}``: ``user_data`` is a JSON object with
an ``id`` (and whatever else the app puts there), signed by the app's user
authentication endpoint as ``key:HMAC-SHA256(secret, "socket_id::user::user_data")``
(the SDK's ``authenticate_user``). A signed-in connection is answered with
``pusher:signin_success`` and joins the channel ``#server-to-user-<id>``, where the SDK's
``send_to_user`` triggers, so every connection of that user, on every instance, gets the
event. ``terminate_user_connections`` signals every instance to close that user's
connections (4009).
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

import wsgate
from wsgate import ConnectionClosed

from .protocol import channel_chars, error, internal
from .signatures import check_user_auth

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .handler import Socket

__all__ = ["TERMINATED", "USER_CHANNEL", "SigninRefused", "Users", "is_user_channel", "user_channel",
           "valid_user_id"]

USER_CHANNEL = "#server-to-user-"
TERMINATE_TOPIC = "terminate"  # signals: the user id whose connections every instance closes
# Pusher does not document the close code; 4009 is its "connection not authorized", and
# pusher-js does not reconnect after 4000-4099, so the app decides whether the user comes back.
TERMINATED = (4009, "You got disconnected by the app")
MAX_USER_ID = 200  # the SDK's limit


def valid_user_id(user_id: object) -> bool:
    """1 to 200 of the characters of a channel name, as the SDK checks them."""
    return isinstance(user_id, str) and 0 < len(user_id) <= MAX_USER_ID and channel_chars(user_id)


def user_channel(user_id: str) -> str:
    """The channel that carries the events sent to ``user_id``."""
    return USER_CHANNEL + user_id


def is_user_channel(name: object) -> bool:
    return isinstance(name, str) and name.startswith(USER_CHANNEL) and valid_user_id(name[len(USER_CHANNEL):])


class SigninRefused(Exception):
    """A ``pusher:signin`` refused: answered with ``pusher:error`` and this message."""


class Users:
    """The signed-in connections of this instance, and the signals that reach them from any."""

    def __init__(self, context: wsgate.Context, key: str, secret: str,
                 join: Callable[[Socket, str], Awaitable[None]]) -> None:
        self._context = context
        self._key = key
        self._secret = secret
        self._join = join
        self._signed_in: dict[str, set[Socket]] = {}

    async def start(self) -> None:
        await self._context.listen(TERMINATE_TOPIC, self._on_terminate)

    async def signin(self, sock: Socket, data: Any) -> None:
        """Check a ``pusher:signin`` and sign ``sock`` in; SigninRefused otherwise."""
        if not isinstance(data, dict):
            raise SigninRefused("Invalid pusher:signin: data is not an object")
        user_data = data.get("user_data")
        if not isinstance(user_data, str):
            raise SigninRefused("Invalid pusher:signin: user_data is a JSON-encoded string")
        if not check_user_auth(self._key, self._secret, sock.socket_id, user_data, data.get("auth")):
            raise SigninRefused("Invalid signature: the auth of the signin does not match the app's key and secret, "
                                "this socket_id and this user_data")
        try:
            parsed = json.loads(user_data)
        except ValueError:
            raise SigninRefused("Invalid user_data: not JSON") from None
        user_id = parsed.get("id") if isinstance(parsed, dict) else None
        if not valid_user_id(user_id):
            raise SigninRefused("Invalid user_data: its id is a string of 1 to 200 of A-Z a-z 0-9 _ - = @ , . ;")
        assert isinstance(user_id, str)
        if sock.user_id is not None and sock.user_id != user_id:
            raise SigninRefused(f"Already signed in as {sock.user_id}: a connection is one user")
        sock.user_id = user_id
        self._signed_in.setdefault(user_id, set()).add(sock)
        await sock.conn.send(internal("pusher:signin_success", {"user_data": user_data}))
        await self._join(sock, user_channel(user_id))

    def forget(self, sock: Socket) -> None:
        """``sock`` is gone."""
        if sock.user_id is None:
            return
        socks = self._signed_in.get(sock.user_id)
        if socks is not None:
            socks.discard(sock)
            if not socks:
                del self._signed_in[sock.user_id]

    async def terminate(self, user_id: str) -> None:
        """Close every connection signed in as ``user_id``, on every instance."""
        await self._context.signal(TERMINATE_TOPIC, user_id)

    def _on_terminate(self, user_id: str) -> None:
        for sock in list(self._signed_in.get(user_id, ())):
            self._context.spawn(functools.partial(self._close, sock), f"terminate {user_id}")

    @staticmethod
    async def _close(sock: Socket) -> None:
        code, reason = TERMINATED
        try:
            await sock.conn.send(error(reason, code))
        except ConnectionClosed:
            return
        await sock.conn.close(code, reason)
