"""Brokers: how gateway instances share messages. ``memory`` is the embedded default."""

from __future__ import annotations

from .base import Broker, Delivery
from .cluster_url import CLUSTER_SCHEMES
from .memory import MemoryBroker

__all__ = ["Broker", "Delivery", "MemoryBroker", "create_broker"]


def create_broker(url: str) -> Broker:
    """``memory``, a Redis URL or a Redis Cluster URL (``redis+cluster://``); Redis needs
    the ``redis`` extra installed."""
    if url == "memory":
        return MemoryBroker()
    if url.startswith(CLUSTER_SCHEMES):
        from .redis_cluster import RedisClusterBroker  # optional dependency, as below

        return RedisClusterBroker(url)
    from .redis import RedisBroker  # optional dependency, imported only when configured

    return RedisBroker(url)
