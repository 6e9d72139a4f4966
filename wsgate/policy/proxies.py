"""The client's address, taking ``X-Forwarded-For`` only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["client_address", "client_scheme"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def client_address(peer: str, forwarded_for: str | None, proxies: Sequence[Network]) -> str:
    """Walk ``X-Forwarded-For`` from the right while the hop is a trusted proxy.

    The rightmost untrusted address is the client: anything left of it was written by
    the client itself and could be forged.
    """
    if not forwarded_for or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    client = peer
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            break  # garbage: keep the last address a trusted proxy vouched for
        client = hop
        if not _trusted(hop, proxies):
            break
    return client


def client_scheme(peer: str, forwarded_proto: str | None, proxies: Sequence[Network], own: str) -> str:
    """The scheme the client used: ``X-Forwarded-Proto`` from a trusted proxy, else ``own``.

    Behind a TLS-terminating proxy the gateway itself sees plain http, so a same-origin
    check against its own scheme would refuse the site's https pages.
    """
    if forwarded_proto and _trusted(peer, proxies):
        first = forwarded_proto.split(",")[0].strip().lower()
        if first in ("http", "https"):
            return first
    return own
