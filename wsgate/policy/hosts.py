"""Which ``Host`` a request may name: the defence against DNS rebinding.

A page on ``evil.example`` whose DNS name is re-pointed at 127.0.0.1 reaches a gateway
bound to loopback with ``Host: evil.example`` and ``Origin: http://evil.example``, so a
same-origin check agrees with itself. Checking the Host against names the operator
chose (``server.allowed_hosts``) closes that. Unset, a gateway bound to loopback accepts
loopback names only, and any other bind accepts any name, as Jupyter, Vite and
webpack-dev-server do.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["HostPattern", "HostPolicy", "host_policy", "is_loopback_bind", "parse_host_pattern", "split_host"]

# A DNS name or an IPv4 literal; ``_`` occurs in internal names, so it is allowed too.
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?")
# A Host without a port means the scheme's default one; a listed port matches that too.
_DEFAULT_PORTS = (80, 443)


def split_host(text: str) -> tuple[str, int | None] | None:
    """``host[:port]`` or ``[v6][:port]`` as (normalised host, port); None if malformed.

    Names are lower-cased without a trailing dot; IPv6 literals keep no brackets and
    take their canonical spelling, so ``[0:0::1]`` is ``::1``.
    """
    if text.startswith("["):
        end = text.find("]")
        try:
            host = str(ipaddress.IPv6Address(text[1:end])) if end > 0 else ""
        except ValueError:
            return None
        rest = text[end + 1:]
    else:
        host, colon, port_text = text.partition(":")
        host, rest = host.lower(), colon + port_text
        if not _NAME.fullmatch(host):
            return None
        host = host.removesuffix(".")
    digits = rest[1:]
    if not host or (rest and rest[0] != ":"):
        return None
    if not digits:  # no port, or an empty one as RFC 3986 allows
        return host, None
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 5 and int(digits) <= 65535):
        return None
    return host, int(digits)


@functools.lru_cache(maxsize=256)  # asked per request, mostly with the same few names
def _is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def is_loopback_bind(bind_host: str) -> bool:
    """True if ``server.host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    return _is_loopback_name(bind_host.strip("[]").lower())


@dataclass(frozen=True)
class HostPattern:
    """One ``allowed_hosts`` entry. ``host`` starting with ``.`` is a ``*.`` wildcard
    (any subdomain, not the name itself); ``port`` None matches any port."""

    host: str
    port: int | None

    def matches(self, host: str, port: int | None) -> bool:
        if self.host.startswith("."):
            if not host.endswith(self.host):
                return False
        elif host != self.host:
            return False
        return self.port is None or self.port == port or (port is None and self.port in _DEFAULT_PORTS)

    def __str__(self) -> str:
        host = f"*{self.host}" if self.host.startswith(".") else f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_host_pattern(text: str) -> HostPattern:
    """Parse ``example.com``, ``example.com:8443``, ``*.example.com`` or ``[::1]:8080``.

    Raises ValueError with a message that says how to write it.
    """
    hint = ("write a host name with an optional port, such as 'ws.example.com', "
            "'ws.example.com:8443', '*.example.com' or '[::1]', or '*' for any host")
    if "://" in text:
        raise ValueError(f"{text!r} is not a host name: leave out the scheme; {hint}")
    wildcard = text.startswith("*.")
    split = split_host(text[2:] if wildcard else text)
    if split is None or (wildcard and ":" in split[0]):  # no wildcard IPv6 literals
        raise ValueError(f"{text!r} is not a host name: {hint}")
    host, port = split
    return HostPattern("." + host if wildcard else host, port)


@dataclass(frozen=True)
class HostPolicy:
    """Which Host names requests may carry.

    ``allow_any`` accepts every name; ``loopback`` accepts ``localhost`` and loopback
    addresses (the default on a loopback bind); ``patterns`` accept the listed names.
    """

    patterns: tuple[HostPattern, ...] = ()
    allow_any: bool = False
    loopback: bool = False

    @classmethod
    def from_config(cls, allowed: Sequence[str] | None, bind_host: str) -> HostPolicy:
        if allowed is None:
            return cls(loopback=True) if is_loopback_bind(bind_host) else cls(allow_any=True)
        if "*" in allowed:
            return cls(allow_any=True)
        return cls(patterns=tuple(parse_host_pattern(h) for h in allowed))

    def allows(self, host: str) -> bool:
        """Decide for one ``Host`` value (or absolute-form authority) as the client sent it."""
        if self.allow_any:
            return True
        split = split_host(host)
        if split is None:
            return False
        name, port = split
        if self.loopback:
            return _is_loopback_name(name)
        return any(p.matches(name, port) for p in self.patterns)

    def refused(self, hosts: Iterable[str]) -> str | None:
        """The first of ``hosts`` this policy refuses, or None if it allows them all."""
        return next((h for h in hosts if not self.allows(h)), None)

    def describe(self) -> str:
        if self.allow_any:
            return "* (any host)"
        if self.loopback:
            return "localhost, 127.x.x.x, [::1] with any port (the default on a loopback bind)"
        return ", ".join(map(str, self.patterns)) or "(none)"

    def refusal(self, host: str) -> str:
        """The body of a refusal: which host, and how to allow it."""
        shown = host if len(host) <= 100 else host[:100] + "..."
        why = ("this gateway listens on loopback and, without server.allowed_hosts, accepts "
               "only loopback names (localhost, 127.0.0.1, [::1])" if self.loopback
               else f"server.allowed_hosts is [{self.describe()}]")
        split = split_host(host)
        example = str(HostPattern(split[0], None)) if split else "ws.example.com"
        return (f"host {shown!r} is not allowed: {why}. If clients reach this gateway under that "
                f"name, add it to server.allowed_hosts in the config (e.g. allowed_hosts: ['{example}']) "
                "and restart.\n")


@functools.lru_cache(maxsize=16)
def host_policy(allowed: tuple[str, ...] | None, bind_host: str) -> HostPolicy:
    """``HostPolicy.from_config``, built once per server config (it is asked per request)."""
    return HostPolicy.from_config(allowed, bind_host)
