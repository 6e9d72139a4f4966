"""Who a connection is, what a handshake carried, and the ways of saying no.

Nothing here does I/O. A token never appears in a ``repr``, an exception message or a
``detail`` string: those end up in log lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from ..errors import Refuse
from ..observe.redact import redact_url as display_url  # the same rule as every URL shown

# AuthFailure is left out on purpose: it is the authenticators' internal verdict, not a
# public exception (every exported exception is a WsgateError). Import it by name.
__all__ = ["FailureReason", "Handshake", "Identity", "Refuse", "display_url", "redact"]

FailureReason = Literal["missing", "invalid", "expired", "forbidden", "backend_error"]

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_DETAIL_LIMIT = 300


@dataclass(frozen=True)
class Identity:
    """An authenticated user: a name, the claims vouching for it, and when it lapses.

    ``expires_at`` is in unix seconds; None means the identity does not expire.
    """

    user: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    expires_at: float | None = None


@dataclass(frozen=True, repr=False)
class Handshake:
    """What an authenticator gets to look at: the upgrade request, before any I/O.

    ``token`` is what :func:`wsgate.auth.tokens.extract_token` found (or None);
    ``user`` and ``claims`` are filled in once an authenticator accepted it, for the
    handler's ``authorize``.
    """

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    remote: str
    token: str | None = field(repr=False)
    user: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __repr__(self) -> str:
        # Headers (Authorization, Cookie) and the query (access_token) can carry the
        # token too, so only their names are shown.
        return (
            f"Handshake(path={self.path!r}, remote={self.remote!r}, user={self.user!r}, "
            f"headers={sorted({k.lower() for k in self.headers})!r}, query={sorted(set(self.query))!r}, "
            f"token={'<set>' if self.token else None})"
        )


class AuthFailure(Exception):
    """An authenticator said no (internal: the handshake router turns it into a response).

    ``status`` is 401, 403 or 503 (a hook's ``Refuse`` may carry another 4xx);
    ``reason`` is the short word the client and the metrics see; ``detail`` is for the
    log line and never contains the token; ``body``, when set, is what the client
    reads instead of the standard text (a ``Refuse`` reason).
    """

    def __init__(self, status: int, reason: FailureReason, detail: str, body: str | None = None) -> None:
        self.status = status
        self.reason: FailureReason = reason
        self.detail = detail
        self.body = body
        super().__init__(f"{status} {reason}: {detail}")


def redact(text: str, token: str | None) -> str:
    """``text`` with ``token`` replaced and control characters escaped, cut to a log-line length.

    Third-party messages (a hook's exception, a library's error) are outside our
    control; this is the last line of defence before they reach a log.
    """
    if token:
        text = text.replace(token, "<token>")
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > _DETAIL_LIMIT:
        text = text[: _DETAIL_LIMIT - 3] + "..."
    return text
