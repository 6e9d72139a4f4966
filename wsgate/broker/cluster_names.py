"""How the Redis Cluster broker names a hub channel and its keys, so a room lives whole in one slot.

The hash tag is the name after the ``wsgate:`` prefix, up to the first ``#`` or the end;
a presence key's ``:presence`` suffix is left out of it (see ``redis_cluster.py``).
Pure: no connection.
"""

from __future__ import annotations

from redis.crc import key_slot

__all__ = ["cluster_channel", "cluster_presence_key", "slot_of"]

_PREFIX = "wsgate:"
_PRESENCE = ":presence"  # the suffix LiveEndpoint gives presence keys


def _tagged(name: str) -> str:
    prefix = _PREFIX if name.startswith(_PREFIX) else ""
    tag, sep, rest = name[len(prefix):].partition("#")
    return f"{prefix}{{{tag}}}{sep}{rest}"


def cluster_channel(channel: str) -> str:
    """The cluster name of a hub channel: ``wsgate:/chat:lobby`` -> ``wsgate:{/chat:lobby}``.

    Its ``:seq``, ``:history`` and ``:epoch`` keys are that name plus the suffix.
    """
    return _tagged(channel)


def cluster_presence_key(key: str) -> str:
    """The cluster name of a presence key, in the slot of the channel it belongs to:
    ``wsgate:/chat:lobby#owner:al:presence`` -> ``wsgate:{/chat:lobby}#owner:al:presence``."""
    if key.endswith(_PRESENCE):
        return _tagged(key[:-len(_PRESENCE)]) + _PRESENCE
    return _tagged(key)


def slot_of(name: str) -> int:
    """The hash slot of a cluster name (its ``{...}`` tag decides it)."""
    return key_slot(name.encode())
