"""Who is connecting, decided before the upgrade.

In order: the token is found (Authorization, the ``wsgate.bearer.*`` subprotocol
entry, ``access_token``, a cookie), the endpoint's authenticator turns it into an
Identity (401), ``allow`` checks the claims (403), and the handler's ``authorize``
may still refuse. The handler is never constructed anew or called for a refusal
other than by ``authorize`` itself.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from ..auth.allow import allowed
from ..auth.authenticator import AuthenticatorImpl
from ..auth.identity import AuthFailure, Handshake, Identity, redact
from ..auth.times import unix_time
from ..auth.tokens import AUTH_PROTOCOL, extract_token, split_offer
from ..config.models import Policy
from ..errors import Refuse
from ..handler import Handler
from .endpoint import LiveEndpoint

__all__ = ["identify", "refusal_response", "refusal_text", "strip_bearer"]

_BODIES = {
    "missing": "authentication required: send a token (Authorization: Bearer, the wsgate.bearer.* "
               "subprotocol, or access_token)",
    "invalid": "invalid token",
    "expired": "token expired",
    "forbidden": "forbidden",
    "backend_error": "authentication is unavailable right now; retry shortly",
}


def strip_bearer(request: web.Request, endpoint_protocols: Sequence[str]) -> tuple[web.Request, str | None]:
    """The request without any ``wsgate.bearer.*`` offer, and the token that entry carried.

    Done on every endpoint: aiohttp logs the whole offer when nothing matches, and the
    handler sees the headers. If an endpoint subprotocol is offered it wins over
    ``wsgate.auth``, whatever the client's order.
    """
    values = request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
    if not any("wsgate." in value.lower() for value in values):
        return request, None
    offered, token = split_offer(values)
    if any(protocol in endpoint_protocols for protocol in offered):
        offered = [protocol for protocol in offered if protocol != AUTH_PROTOCOL]
    if token is None and len(offered) == sum(len(value.split(",")) for value in values):
        return request, None  # nothing to take out
    headers = CIMultiDict(request.headers)
    del headers[hdrs.SEC_WEBSOCKET_PROTOCOL]
    if offered:
        headers[hdrs.SEC_WEBSOCKET_PROTOCOL] = ", ".join(offered)
    return request.clone(headers=headers), token


async def identify(headers: Mapping[str, str], query: Callable[[], Mapping[str, str]], live: LiveEndpoint,
                   policy: Policy,
                   remote: str, offered_token: str | None,
                   authenticators: Mapping[str, AuthenticatorImpl]) -> Identity | None:
    """The identity of a handshake with ``headers`` and ``query`` under ``policy`` (None
    on an endpoint without ``auth``); AuthFailure to refuse. ``query`` is parsed only when asked for."""
    authenticator = authenticators[policy.auth] if policy.auth is not None else None
    asks = type(live.handler).authorize is not Handler.authorize
    if authenticator is None and not asks:
        return None
    if policy.origins == "*":
        # A browser sends cookies whichever site opens the socket: on an endpoint that
        # trusts every origin, no cookie may vouch for anyone, whoever reads it (the
        # token lookup, an http backend, a hook, authorize). Config refuses `cookie:` here.
        headers = _without_cookies(headers)
    cookie = authenticator.cookie if authenticator is not None else None
    parsed = query()
    handshake = Handshake(path=live.path, query=parsed, headers=headers, remote=remote,
                          token=extract_token(headers, parsed, offered_token, cookie))
    identity = None
    if authenticator is not None:
        identity = _with_expiry(await authenticator.authenticate(handshake), authenticator.name)
        if identity.expires_at is not None and identity.expires_at <= time.time():
            raise AuthFailure(401, "expired", f"user {identity.user!r}: the identity has already expired")
        if policy.allow is not None and not allowed(identity.claims, policy.allow):
            raise AuthFailure(403, "forbidden", f"user {identity.user!r}: claims do not satisfy allow")
    if asks:
        if identity is not None:
            # Read-only: a JWT's claims are cached and shared by every connection with that token.
            handshake = dataclasses.replace(handshake, user=identity.user, claims=MappingProxyType(identity.claims))
        try:
            await live.handler.authorize(handshake)
        except Refuse as refused:
            reason = redact(refused.reason, handshake.token)  # the handler's words, checked like a hook's
            raise AuthFailure(refused.status, "invalid" if refused.status == 401 else "forbidden",
                              f"refused by the handler: {reason}", body=reason) from None
    return identity


def _without_cookies(headers: Mapping[str, str]) -> Mapping[str, str]:
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        if hdrs.COOKIE not in headers:  # case-insensitive: one lookup, not a scan
            return headers
    elif not any(key.lower() == "cookie" for key in headers):
        return headers
    return CIMultiDictProxy(CIMultiDict((key, value) for key, value in headers.items() if key.lower() != "cookie"))


def _with_expiry(identity: Identity, authenticator: str) -> Identity:
    """``identity`` with ``expires_at`` as a float; AuthFailure if no float holds it.

    A hook may return any number (``10**400``); the expiry timer's arithmetic would
    fail on it later, in the connection's code rather than in the authenticator's.
    """
    expires_at = identity.expires_at
    if expires_at is None or (type(expires_at) is float and math.isfinite(expires_at)):
        return identity  # already so (a JWT's identity always is): no copy
    seconds = unix_time(expires_at)
    if seconds is None:
        raise AuthFailure(401, "invalid", f"authenticator {authenticator!r} gave user {identity.user!r} an "
                                          "expires_at that is not a representable time")
    return dataclasses.replace(identity, expires_at=seconds)


def refusal_text(failure: AuthFailure) -> str:
    """What the client reads about a refusal: never the token, never the log's detail."""
    return failure.body or _BODIES[failure.reason]


def refusal_response(failure: AuthFailure) -> web.Response:
    """The HTTP answer to a refused handshake."""
    headers = {}
    if failure.status == 401:
        error = "" if failure.reason == "missing" else ', error="invalid_token"'
        headers[hdrs.WWW_AUTHENTICATE] = f'Bearer realm="wsgate"{error}'
    if failure.status == 503:
        headers[hdrs.RETRY_AFTER] = "1"
    return web.Response(status=failure.status, text=refusal_text(failure) + "\n", headers=headers)
