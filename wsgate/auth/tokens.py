"""Finding the bearer token in an upgrade request, free of I/O.

Browsers cannot set an ``Authorization`` header on a WebSocket, so a token may also
travel as a subprotocol (``wsgate.bearer.<token>``, offered beside ``wsgate.auth``,
which the server selects), in the ``access_token`` query parameter, or in a cookie.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["AUTH_PROTOCOL", "BEARER_PROTOCOL_PREFIX", "extract_token", "split_offer"]

BEARER_PROTOCOL_PREFIX = "wsgate.bearer."
AUTH_PROTOCOL = "wsgate.auth"
QUERY_PARAMETER = "access_token"


def _is_bearer(protocol: str) -> bool:
    # Case-insensitive on purpose: a differently cased bearer entry must still never be
    # passed on (it would reach the handler's negotiation, and possibly a log line).
    return protocol[: len(BEARER_PROTOCOL_PREFIX)].lower() == BEARER_PROTOCOL_PREFIX


def split_offer(header_values: Sequence[str]) -> tuple[list[str], str | None]:
    """Split ``Sec-WebSocket-Protocol`` line(s) into the offered protocols and the token.

    The protocols come back in order, trimmed, without any ``wsgate.bearer.*`` entry;
    the token is the one carried by the first bearer entry that has one, else None.
    """
    protocols: list[str] = []
    token: str | None = None
    for line in header_values:
        for item in line.split(","):
            protocol = item.strip()
            if not protocol:
                continue
            if _is_bearer(protocol):
                if token is None and len(protocol) > len(BEARER_PROTOCOL_PREFIX):
                    token = protocol[len(BEARER_PROTOCOL_PREFIX):]
                continue
            protocols.append(protocol)
    return protocols, token


def _header_values(headers: Mapping[str, str], name: str) -> Iterable[str]:
    """Every value of header ``name`` (lower-case), whatever the mapping's key case."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        # aiohttp's request headers: case-insensitive, and getall keeps every value.
        return headers.getall(name, ())
    # A scan rather than headers.get() for any other mapping: a plain dict is case-sensitive.
    return [value for key, value in headers.items() if key.lower() == name]


def _bearer(value: str) -> str | None:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return rest.strip() or None


def _cookie(header_value: str, name: str) -> str | None:
    # Tolerant on purpose: http.cookies.SimpleCookie stops at the first cookie it
    # dislikes, and browsers send whatever other sites on the domain have set.
    for pair in header_value.split(";"):
        key, sep, value = pair.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def extract_token(
    headers: Mapping[str, str],
    query: Mapping[str, str],
    subprotocol_token: str | None,
    cookie_name: str | None,
) -> str | None:
    """The request's bearer token, or None.

    Looked for in this order: ``Authorization: Bearer``, the ``wsgate.bearer.*``
    subprotocol, the ``access_token`` query parameter, then the cookie ``cookie_name``
    when one is configured. Empty values count as absent.
    """
    for value in _header_values(headers, "authorization"):
        if token := _bearer(value):
            return token
    if subprotocol_token:
        return subprotocol_token
    if token := query.get(QUERY_PARAMETER):
        return token
    if cookie_name:
        for value in _header_values(headers, "cookie"):
            if token := _cookie(value, cookie_name):
                return token
    return None
