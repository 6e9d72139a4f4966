"""The Centrifugo HTTP proxy: an event's JSON POSTed to the team's backend, its answer read back.

The request body is built by the caller in Centrifugo's shape (``client``, ``transport``,
``protocol``, ``encoding``, then ``user``, ``channel``, ``data``, ``method``... per event).
The backend answers 200 with exactly one of ``{"result": {...}}``, ``{"error": {"code",
"message", "temporary"}}`` or ``{"disconnect": {"code", "reason"}}``. Anything else, a
timeout, a refused connection, another status, a body that is not such an object, becomes
Centrifugo's internal error (100, temporary) for the client: a broken backend must never
let a client through, and the client may retry.

Log lines name the event, the URL without its query (it may carry a key) and what went
wrong; never the request body or headers, which carry tokens.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from wsgate import Duration

__all__ = [
    "INTERNAL_ERROR",
    "MAX_ANSWER_BYTES",
    "Proxy",
    "ProxyDisconnect",
    "ProxyError",
    "ProxyEvent",
    "ProxyOptions",
    "ProxyReply",
]

ProxyEvent = Literal["connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc"]
EVENTS: tuple[ProxyEvent, ...] = get_args(ProxyEvent)

# Centrifugo v2 and v3 forwarded these by default; v4 and later forward none unless
# listed in `http_headers`. The v3 list is kept: a connect proxy is mostly there to read
# the session cookie or the Authorization header, and the rest helps the backend log.
DEFAULT_FORWARD_HEADERS = ["Origin", "User-Agent", "Cookie", "Authorization",
                           "X-Real-Ip", "X-Forwarded-For", "X-Request-Id"]
# Set by the HTTP client for the proxied request itself; a copy of the client's would
# corrupt it (a wrong length, a second body encoding, another host).
_NOT_FORWARDABLE = frozenset({"content-type", "content-length", "content-encoding", "transfer-encoding",
                              "host", "connection", "keep-alive", "upgrade", "te", "trailer",
                              "proxy-authorization", "proxy-connection", "expect"})
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")

MAX_ANSWER_BYTES = 1024 * 1024
_UINT32 = 2**32 - 1
# A disconnect becomes the WebSocket close frame: codes an application may send, and
# a reason that fits the frame's 123 bytes.
_CLOSE_CODES = range(3000, 5000)
_MAX_REASON_BYTES = 123
_DETAIL_LIMIT = 200


class ProxyOptions(BaseModel):
    """The ``proxy:`` option of the channels handler: a URL per proxied event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connect: HttpUrl | None = None
    refresh: HttpUrl | None = None
    subscribe: HttpUrl | None = None
    publish: HttpUrl | None = None
    sub_refresh: HttpUrl | None = None
    rpc: HttpUrl | None = None
    timeout: Duration = Field(1.0, gt=0)
    forward_headers: list[str] = Field(default_factory=lambda: list(DEFAULT_FORWARD_HEADERS))

    @field_validator("forward_headers")
    @classmethod
    def _header_names(cls, names: list[str]) -> list[str]:
        seen: set[str] = set()
        kept: list[str] = []
        for name in names:
            if not name or not set(name) <= _TOKEN_CHARS:
                raise ValueError(f"{name!r} is not an HTTP header name")
            if name.lower() in _NOT_FORWARDABLE:
                raise ValueError(f"{name} is set for the proxied request itself and cannot be forwarded")
            if name.lower() not in seen:
                seen.add(name.lower())
                kept.append(name)
        return kept


@dataclass(frozen=True)
class ProxyError:
    """The backend's ``error``: the reply the client gets instead of a result."""

    code: int
    message: str
    temporary: bool = False


@dataclass(frozen=True)
class ProxyDisconnect:
    """The backend's ``disconnect``: the connection is closed with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True)
class ProxyReply:
    """At most one of the three is set; none: the backend gave no result."""

    result: Mapping[str, Any] | None = None
    error: ProxyError | None = None
    disconnect: ProxyDisconnect | None = None


# Centrifugo's ErrorInternal, temporary as there: the client SDK retries later.
INTERNAL_ERROR = ProxyError(100, "internal server error", temporary=True)
_INTERNAL = ProxyReply(error=INTERNAL_ERROR)


class _BadAnswer(Exception):
    """What was wrong with the backend's answer, in words fit for a log line."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _shown(url: HttpUrl) -> str:
    """``url`` without user info, query or fragment: those may carry a secret."""
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}{url.path or ''}"


def _detail(text: str) -> str:
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."


def _uint32(value: Any, where: str) -> int:
    # bool is an int in Python, not a number in JSON.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _UINT32:
        raise _BadAnswer(f"{where} is not an integer from 0 to {_UINT32}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _BadAnswer(f"{where} is not a string")
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _BadAnswer(f"{where} is not an object")
    return value


def parse_answer(body: bytes) -> ProxyReply:
    """The backend's 200 answer as a ProxyReply; _BadAnswer when it is not one.

    Like Centrifugo, a ``null`` member counts as absent, unknown members are ignored, and
    ``disconnect`` wins over ``error``, which wins over ``result``.
    """
    try:
        answer: Any = json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise _BadAnswer("answered with a body that is not JSON") from None
    answer = _object(answer, "the answer")
    disconnect = answer.get("disconnect")
    if disconnect is not None:
        disconnect = _object(disconnect, "disconnect")
        code = _uint32(disconnect.get("code"), "disconnect.code")
        if code not in _CLOSE_CODES:
            raise _BadAnswer("disconnect.code is not from 3000 to 4999")
        reason = _string(disconnect.get("reason", ""), "disconnect.reason")
        if len(reason.encode("utf-8", "surrogatepass")) > _MAX_REASON_BYTES:
            raise _BadAnswer(f"disconnect.reason is longer than {_MAX_REASON_BYTES} bytes")
        return ProxyReply(disconnect=ProxyDisconnect(code, reason))
    error = answer.get("error")
    if error is not None:
        error = _object(error, "error")
        code = _uint32(error.get("code"), "error.code")
        message = _string(error.get("message", ""), "error.message")
        temporary = error.get("temporary", False)
        if not isinstance(temporary, bool):
            raise _BadAnswer("error.temporary is not a boolean")
        return ProxyReply(error=ProxyError(code, message, temporary))
    result = answer.get("result")
    if result is not None:
        return ProxyReply(result=_object(result, "result"))
    return ProxyReply()  # Centrifugo: no result is no credentials (connect), the defaults (the others)


class Proxy:
    """POSTs proxied events to their URLs: one client session, a hard timeout, no retries.

    A retry would double the wait of a client on a backend that is already slow; the
    client retries by itself on the temporary internal error.
    """

    def __init__(self, options: ProxyOptions, logger: logging.Logger) -> None:
        self._options = options
        self._logger = logger
        self._urls: dict[ProxyEvent, HttpUrl] = {}
        for event in EVENTS:
            url: HttpUrl | None = getattr(options, event)
            if url is not None:
                self._urls[event] = url
        self._forward = {name.lower(): name for name in options.forward_headers}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.failures = 0

    def enabled(self, event: ProxyEvent) -> bool:
        """Whether ``event`` goes to the backend (its URL is configured)."""
        return event in self._urls

    def _headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The forwarded headers of ``headers``, a header sent several times joined as HTTP allows."""
        chosen: dict[str, list[str]] = {}
        for key, value in headers.items():
            name = self._forward.get(key.lower())
            if name is not None:
                chosen.setdefault(name, []).append(value)
        out = {name: ("; " if name.lower() == "cookie" else ", ").join(values) for name, values in chosen.items()}
        out["Content-Type"] = "application/json"
        return out

    async def call(self, event: ProxyEvent, request: Mapping[str, Any], headers: Mapping[str, str]) -> ProxyReply:
        """The backend's answer to ``request`` for ``event``; the internal error when there is none."""
        url = self._urls.get(event)
        if url is None:
            self._logger.warning("channels proxy: %s is not configured; answering internal error", event)
            return _INTERNAL
        if self._closed:
            self._logger.debug("channels proxy: %s after close; answering internal error", event)
            return _INTERNAL
        try:
            body = json.dumps(request, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            # The message could quote a value of the request; the type is enough to find the bug.
            return self._failed(event, url, f"request not encodable as JSON ({type(exc).__name__})")
        try:
            answer = await self._post(url, body, self._headers(headers))
            return parse_answer(answer)
        except _BadAnswer as exc:
            return self._failed(event, url, str(exc))
        except TimeoutError:
            return self._failed(event, url, f"did not answer within {self._options.timeout:g}s")
        except aiohttp.ClientError as exc:
            # aiohttp's messages name the host, never a header or the body; the query goes.
            text = str(exc).replace(str(url), _shown(url))
            if url.query:
                text = text.replace(url.query, "***")
            return self._failed(event, url, f"failed: {type(exc).__name__}: {text}")
        except (OSError, ValueError) as exc:
            return self._failed(event, url, f"failed: {type(exc).__name__}")

    async def _post(self, url: HttpUrl, body: bytes, headers: dict[str, str]) -> bytes:
        if self._session is None:
            # No cookie jar: a Set-Cookie answered for one user must not ride along with the next.
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        # One deadline for connecting, sending and reading the whole answer.
        async with asyncio.timeout(self._options.timeout), self._session.post(
            str(url),
            data=body,
            headers=headers,
            # A redirected POST turns into a GET and loses the body.
            allow_redirects=False,
        ) as response:
            if response.status != 200:
                raise _BadAnswer(f"answered HTTP {response.status}")
            length = response.content_length
            if length is not None and length > MAX_ANSWER_BYTES:
                raise _BadAnswer(f"answered with more than {MAX_ANSWER_BYTES} bytes")
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_ANSWER_BYTES:
                # read(n) returns what has arrived, up to n: loop until the end or the bound.
                chunk = await response.content.read(MAX_ANSWER_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise _BadAnswer(f"answered with more than {MAX_ANSWER_BYTES} bytes")
            return b"".join(chunks)

    def _failed(self, event: ProxyEvent, url: HttpUrl, what: str) -> ProxyReply:
        self.failures += 1
        self._logger.warning("channels proxy: %s backend %s: %s; answering internal error",
                             event, _shown(url), _detail(what))
        return _INTERNAL

    async def close(self) -> None:
        """Close the HTTP session; later calls answer the internal error without a request."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

