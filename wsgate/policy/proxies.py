"""The client's address, taking ``X-Forwarded-For`` only from trusted proxies.

Addresses come out normalised (``ipaddress`` spelling, IPv4-mapped IPv6 as IPv4), so
one client is one key for per-IP caps however its address was written.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["client_address", "client_scheme", "parse_address"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address | None:
    """An address as a peer or a forwarded hop writes it: ``1.2.3.4``, ``1.2.3.4:5678``,
    ``2001:db8::1``, ``[2001:db8::1]`` or ``[2001:db8::1]:443``; None if it is none of these.

    IPv4-mapped IPv6 (``::ffff:1.2.3.4``, what a dual-stack socket reports) is the IPv4
    address, so a client is the same key whichever socket it came through.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        if not sep or (port and not (port[0] == ":" and port[1:].isascii() and port[1:].isdigit())):
            return None
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has two colons or more
        host, _, port = text.partition(":")
        if not (port.isascii() and port.isdigit()):
            return None
    else:
        host = text
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if text.startswith("[") and ip.version != 6:
        return None  # brackets are for IPv6 only
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _trusted(ip: Address | None, proxies: Sequence[Network]) -> bool:
    return ip is not None and any(ip in net for net in proxies)


def client_address(peer: str, forwarded_for: str | None, proxies: Sequence[Network]) -> str:
    """Walk ``X-Forwarded-For`` from the right while the hop is a trusted proxy.

    The rightmost untrusted address is the client: anything left of it was written by
    the client itself and could be forged. ``forwarded_for`` must hold every header
    line, joined with "," in order (RFC 9110 section 5.3): a client's own line sent
    before the proxy's is then on the left, where it belongs. The result is normalised;
    a peer that is no IP address (a unix socket) is returned as it is.
    """
    peer_ip = parse_address(peer)
    client = str(peer_ip) if peer_ip is not None else peer
    if not forwarded_for or not _trusted(peer_ip, proxies):
        return client
    hops = [h for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        ip = parse_address(hop)
        if ip is None:
            break  # garbage: keep the last address a trusted proxy vouched for
        client = str(ip)
        if not _trusted(ip, proxies):
            break
    return client


def client_scheme(peer: str, forwarded_proto: str | None, proxies: Sequence[Network], own: str) -> str:
    """The scheme the client used: ``X-Forwarded-Proto`` from a trusted proxy, else ``own``.

    Behind a TLS-terminating proxy the gateway itself sees plain http, so a same-origin
    check against its own scheme would refuse the site's https pages. ``forwarded_proto``
    holds every header line joined with ","; the last value is the one the trusted peer
    wrote itself (values left of it may be the client's own).
    """
    if forwarded_proto and _trusted(parse_address(peer), proxies):
        last = forwarded_proto.rsplit(",", 1)[-1].strip().lower()
        if last in ("http", "https"):
            return last
    return own
