"""Redis Cluster broker URLs: ``redis+cluster://[user:password@]host:port,host:port,...``.

Parsed without the ``redis`` package, so that the config can be checked where it is
not installed. ``rediss+cluster://`` is the same over TLS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["CLUSTER_SCHEMES", "ClusterUrl", "parse_cluster_url"]

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

_NODE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9._-]+)):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """The startup nodes and credentials of a Redis Cluster broker URL."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool
    username: str | None
    password: str | None


def parse_cluster_url(url: str) -> ClusterUrl:
    """The parts of ``url``; ValueError (with no password in it) when it is malformed."""
    scheme = next((s for s in CLUSTER_SCHEMES if url.startswith(s)), None)
    if scheme is None:
        raise ValueError(f"a Redis Cluster URL starts with {' or '.join(CLUSTER_SCHEMES)}")
    rest = url[len(scheme):]
    if "?" in rest or "#" in rest:
        raise ValueError("a Redis Cluster URL takes no query or fragment")
    netloc, slash, path = rest.partition("/")
    if slash and path not in ("", "0"):
        raise ValueError(f"Redis Cluster has only database 0, not /{path}")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        match = _NODE.match(part.strip())
        port = int(match.group("port")) if match else 0
        if match is None or not 0 < port < 65536:
            raise ValueError(f"expected host:port for each node, separated by ',', not {part.strip()!r}")
        nodes.append((match.group("v6") or match.group("host"), port))
    return ClusterUrl(tuple(nodes), scheme.startswith("rediss"), username, password)
