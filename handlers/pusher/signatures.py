"""HMAC-SHA256 signatures of the Pusher protocol: channel authorization and signed API requests. Pure.

A private or presence subscription carries ``auth = "KEY:" + HMAC(secret, "SOCKET_ID:CHANNEL")``
(``":CHANNEL_DATA"`` appended for presence), made by the application's own auth endpoint.
An HTTP API request carries ``auth_key``, ``auth_timestamp``, ``auth_version``,
``body_md5`` (POST) and ``auth_signature = HMAC(secret, "VERB\\nPATH\\nQUERY")``, where
QUERY is every other parameter, sorted by name, as ``name=value`` joined by ``&``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["RequestRefused", "channel_signature", "check_channel_auth", "check_request", "check_user_auth", "sign",
           "string_to_sign", "user_signature"]


class RequestRefused(Exception):
    """An API request whose signature does not hold: answered 401 with ``str(exc)``."""


def sign(secret: str, text: str) -> str:
    """The hex HMAC-SHA256 of ``text`` under ``secret``."""
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def channel_signature(key: str, secret: str, socket_id: str, channel: str, channel_data: str | None = None) -> str:
    """The ``auth`` a subscription to ``channel`` from ``socket_id`` must carry."""
    text = f"{socket_id}:{channel}" if channel_data is None else f"{socket_id}:{channel}:{channel_data}"
    return f"{key}:{sign(secret, text)}"


def check_channel_auth(key: str, secret: str, socket_id: str, channel: str, auth: object,
                       channel_data: str | None = None) -> bool:
    """Whether ``auth`` is the signature of this subscription (compared in constant time)."""
    if not isinstance(auth, str):
        return False
    expected = channel_signature(key, secret, socket_id, channel, channel_data)
    return hmac.compare_digest(auth.encode(), expected.encode())


def user_signature(key: str, secret: str, socket_id: str, user_data: str) -> str:
    """The ``auth`` a ``pusher:signin`` of ``user_data`` from ``socket_id`` must carry."""
    return f"{key}:{sign(secret, f'{socket_id}::user::{user_data}')}"


def check_user_auth(key: str, secret: str, socket_id: str, user_data: str, auth: object) -> bool:
    """Whether ``auth`` is the signature of this signin (compared in constant time)."""
    if not isinstance(auth, str):
        return False
    return hmac.compare_digest(auth.encode(), user_signature(key, secret, socket_id, user_data).encode())


def string_to_sign(verb: str, path: str, query: Mapping[str, str]) -> str:
    params = "&".join(f"{name}={value}" for name, value in sorted(query.items()) if name != "auth_signature")
    return f"{verb}\n{path}\n{params}"


def check_request(key: str, secret: str, verb: str, path: str, query: Mapping[str, str], body: bytes,
                  now: float, window: float) -> None:
    """Raise RequestRefused unless the request is signed with ``key`` and ``secret``.

    ``auth_timestamp`` must be within ``window`` seconds of ``now``; a request with a
    body must name its MD5 in ``body_md5``.
    """
    if query.get("auth_key") != key:
        raise RequestRefused("Unknown auth_key")
    if query.get("auth_version", "1.0") != "1.0":
        raise RequestRefused("Unsupported auth_version")
    stamp = query.get("auth_timestamp", "")
    try:
        when = int(stamp)
    except ValueError:
        raise RequestRefused("Missing or invalid auth_timestamp") from None
    if abs(now - when) > window:
        raise RequestRefused(f"Timestamp expired: given {when}, now {int(now)}, "
                             f"allowed {int(window)} seconds either way")
    digest = hashlib.md5(body, usedforsecurity=False).hexdigest()
    if (body or "body_md5" in query) and not hmac.compare_digest(query.get("body_md5", "").encode(), digest.encode()):
        raise RequestRefused("Invalid body_md5")
    signature = query.get("auth_signature", "")
    expected = sign(secret, string_to_sign(verb, path, query))
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise RequestRefused("Invalid signature: you should have sent the HMAC-SHA256 hex digest "
                             f"of {string_to_sign(verb, path, query)!r}")
