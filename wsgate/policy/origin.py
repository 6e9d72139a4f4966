"""Origin policy (RFC 6454 origins, RFC 6455 section 10.2), free of I/O.

A policy is built once from config and asked ``allows(origin, host, scheme)`` per
handshake. Matching is exact on scheme, host and port: no substring or suffix
matching, so ``https://example.com.evil.net`` never passes for ``https://example.com``.
A ``:*`` port in a pattern matches any port.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["OriginPattern", "OriginPolicy", "parse_origin_pattern"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True)
class OriginPattern:
    """``scheme://host:port``; ``port`` is None for the ``:*`` wildcard."""

    scheme: str
    host: str
    port: int | None

    def matches(self, scheme: str, host: str, port: int) -> bool:
        return (
            self.scheme == scheme
            and self.host == host
            and (self.port is None or self.port == port)
        )


def _split(origin: str) -> tuple[str, str, int] | None:
    """Scheme, lower-cased host and effective port of an origin; None if malformed."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def parse_origin_pattern(text: str) -> OriginPattern:
    """Parse ``https://app.example.com``, ``http://localhost:*`` or ``http://[::1]:8080``."""
    wildcard = text.endswith(":*")
    split = _split(text[:-2] if wildcard else text)
    if split is None:
        raise ValueError(
            f"{text!r} is not an origin: write scheme://host[:port], e.g. "
            "'https://app.example.com' or 'http://localhost:*'"
        )
    scheme, host, port = split
    if "*" in host:
        raise ValueError(f"{text!r} is not an origin: host wildcards are not supported; list each origin exactly")
    return OriginPattern(scheme, host, None if wildcard else port)


@dataclass(frozen=True)
class OriginPolicy:
    """Which ``Origin`` header values may open a WebSocket.

    ``allow_any`` accepts every origin; ``same_origin`` accepts an origin whose host and
    port equal the request's ``Host`` (and whose scheme matches the request's);
    ``patterns`` accept listed origins. ``allow_missing`` decides for clients that send
    no Origin header at all (non-browser clients).
    """

    allow_any: bool = False
    same_origin: bool = False
    patterns: tuple[OriginPattern, ...] = ()
    allow_missing: bool = True

    @classmethod
    def from_config(cls, origins: str | list[str], allow_missing: bool) -> OriginPolicy:
        if origins == "*":
            return cls(allow_any=True, allow_missing=allow_missing)
        if origins == "same-origin":
            return cls(same_origin=True, allow_missing=allow_missing)
        assert isinstance(origins, list)
        return cls(
            patterns=tuple(parse_origin_pattern(o) for o in origins),
            allow_missing=allow_missing,
        )

    def allows(self, origin: str | None, host: str | None, scheme: str = "http") -> bool:
        """Decide for one handshake. ``host`` is the request's Host header."""
        if origin is None:
            return self.allow_missing
        if self.allow_any:
            return True
        split = _split(origin)
        if split is None:
            return False  # includes the opaque origin "null"
        o_scheme, o_host, o_port = split
        if any(p.matches(o_scheme, o_host, o_port) for p in self.patterns):
            return True
        if self.same_origin and host:
            own = _split(f"{scheme}://{host}")
            return own is not None and own == (o_scheme, o_host, o_port)
        return False

    def describe(self) -> str:
        if self.allow_any:
            return "*"
        parts = ["same-origin"] if self.same_origin else []
        parts += [
            f"{p.scheme}://{f'[{p.host}]' if ':' in p.host else p.host}:{'*' if p.port is None else p.port}"
            for p in self.patterns
        ]
        return ", ".join(parts) or "(none)"
