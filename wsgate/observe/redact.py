"""How wsgate shows a URL or a query string anywhere a person can read it.

One rule for every URL (the broker's, an auth backend's, a JWKS endpoint's) wherever it
appears (``wsgate routes`` and ``check``, log lines, error messages, API answers): a
password in the userinfo becomes ``***`` (the user name stays, unless the userinfo is a
single word, which may itself be a token), and so does every query and fragment value,
whatever its name: an API key hides under any name. The names stay, so that a reader
can still tell ``?password=***`` from ``?db=***``.

A client's query string in the handshake log is the application's data (room, name),
so there only the values of secret-looking names are hidden.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["is_secret_name", "redact_query", "redact_url"]

HIDDEN = "***"
# Substrings, case-insensitive, so ``api_key``, ``api-key``, ``X-Amz-Signature``,
# ``access_token``, ``PHPSESSID``, ``password``, ``passwd`` match.
_SECRET = re.compile(r"token|secret|pass|pwd|auth|key|sig|jwt|sess|cookie|credential|bearer", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """Whether a query parameter called ``name`` may carry a secret."""
    return _SECRET.search(name) is not None


def redact_query(query: Mapping[str, str]) -> str:
    """``query`` as ``k=v&…``, with the values of secret-looking names replaced by ``***``."""
    return "&".join(f"{k}={HIDDEN if is_secret_name(k) else v}" for k, v in query.items())


def _redact_params(text: str) -> str:
    """A raw ``a=1&b`` string as ``a=***&***``: names only, no value, no bare word."""
    return "&".join(f"{name}={HIDDEN}" if eq else HIDDEN if name else ""
                    for name, eq, _ in (param.partition("=") for param in text.split("&")))


def _redact_userinfo(userinfo: str) -> str:
    user, colon, _ = userinfo.partition(":")
    return f"{user}:{HIDDEN}" if colon else HIDDEN


def redact_url(url: str) -> str:
    """``url`` fit to be shown: no password, no query or fragment value.

    Works on any scheme and on URLs that ``urllib`` cannot parse, such as a Redis
    Cluster node list (``rediss+cluster://user:pw@h1:7000,h2:7001``).
    """
    scheme, sep, rest = url.partition("://")
    if sep:
        # The authority ends at the first "/"; an unencoded "?" or "#" before the last
        # "@" is taken as part of a password (hidden rather than shown).
        authority, slash, tail = rest.partition("/")
        userinfo, at, hostpart = authority.rpartition("@")
        cut = min((i for i in (hostpart.find("?"), hostpart.find("#")) if i >= 0), default=len(hostpart))
        head = f"{scheme}://{_redact_userinfo(userinfo) + '@' if at else ''}{hostpart[:cut]}"
        tail = hostpart[cut:] + slash + tail
    else:
        head, tail = "", url
    before_fragment, hash_, fragment = tail.partition("#")
    path, question, query = before_fragment.partition("?")
    shown = head + path
    if question:
        shown += "?" + _redact_params(query)
    if hash_:
        shown += "#" + _redact_params(fragment)
    return shown
