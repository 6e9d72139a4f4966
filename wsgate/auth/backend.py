"""Asking an HTTP service who a handshake belongs to.

wsgate POSTs a JSON summary of the handshake; the service answers 200 with the user,
401 or 403 to refuse. Anything else (a timeout, a 5xx, an unexpected body) refuses
the connection with 503: an auth outage must never let people in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import aiohttp

from ..config.auth import HttpBackendConfig
from .identity import AuthFailure, Handshake, Identity, display_url, redact
from .times import is_number, unix_time

__all__ = ["FORWARDED_HEADERS", "HttpBackend", "forwarded_headers"]

FORWARDED_HEADERS = frozenset({"cookie", "authorization", "origin", "user-agent"})
MAX_RESPONSE_BYTES = 64 * 1024


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers the backend gets: credentials, origin, user agent and ``x-forwarded-*``.

    Names come back lower-cased; a header sent several times is joined the way HTTP
    allows (``; `` for cookies, ``, `` for the rest).
    """
    chosen: dict[str, list[str]] = {}
    for key, value in headers.items():
        name = key.lower()
        if name in FORWARDED_HEADERS or name.startswith("x-forwarded-"):
            chosen.setdefault(name, []).append(value)
    return {name: ("; " if name == "cookie" else ", ").join(values) for name, values in chosen.items()}


class HttpBackend:
    """An ``http:`` authenticator: one shared client session, a hard timeout, no retries.

    A retry would double the handshake's wait on a backend that is already slow, and a
    client can simply reconnect.
    """

    def __init__(self, config: HttpBackendConfig, *, session: aiohttp.ClientSession | None = None) -> None:
        self._config = config
        self._where = display_url(config.url)
        self._session = session
        self._owns_session = session is None

    async def check(self, handshake: Handshake) -> Identity:
        """The backend's verdict on ``handshake``: an Identity, or AuthFailure."""
        payload = {
            "path": handshake.path,
            "query": dict(handshake.query),
            "headers": forwarded_headers(handshake.headers),
            "remote": handshake.remote,
            "token": handshake.token,
        }
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = self._config.timeout
        try:
            async with self._session.post(
                self._config.url,
                json=payload,
                timeout=aiohttp.ClientTimeout(total=timeout),
                # A redirected POST turns into a GET and loses the body.
                allow_redirects=False,
            ) as response:
                status = response.status
                body = await response.content.read(MAX_RESPONSE_BYTES + 1) if status == 200 else b""
        except TimeoutError:
            raise self._error(f"did not answer within {timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise self._error(redact(f"{type(exc).__name__}: {exc}", handshake.token)) from None
        if status == 401:
            raise AuthFailure(401, "invalid", f"auth backend {self._where} answered 401")
        if status == 403:
            raise AuthFailure(403, "forbidden", f"auth backend {self._where} answered 403")
        if status != 200:
            raise self._error(f"answered HTTP {status}")
        if len(body) > MAX_RESPONSE_BYTES:
            raise self._error(f"answered with more than {MAX_RESPONSE_BYTES} bytes")
        return self._identity(body)

    def _identity(self, body: bytes) -> Identity:
        try:
            answer: Any = json.loads(body)
        except (ValueError, RecursionError):
            raise self._error("answered 200 with a body that is not JSON") from None
        if not isinstance(answer, dict):
            raise self._error("answered 200 with JSON that is not an object")
        user = answer.get("user")
        if not isinstance(user, str) or not user:
            raise self._error("answered 200 without a 'user' string")
        claims = answer.get("claims", {})
        if not isinstance(claims, dict):
            raise self._error("answered 200 with 'claims' that is not an object")
        return Identity(user=user, claims=MappingProxyType(claims), expires_at=self._expires_at(answer))

    def _expires_at(self, answer: dict[str, Any]) -> float | None:
        value = answer.get("expires_at")
        if value is None:
            return None
        if not is_number(value):
            raise self._error("answered 200 with an 'expires_at' that is not a number")
        seconds = unix_time(value)
        if seconds is None:
            # A number no clock reaches (10**400, or 1e400, which JSON reads as infinity)
            # vouches for nothing: refused as a token with such a claim is.
            raise AuthFailure(401, "invalid", f"auth backend {self._where} answered an 'expires_at' "
                                              "too large for a time")
        return seconds

    def _error(self, what: str) -> AuthFailure:
        return AuthFailure(503, "backend_error", f"auth backend {self._where} {what}")

    async def close(self) -> None:
        """Close the HTTP session if this backend created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
