"""Brokers: how gateway instances share messages. ``memory`` is the embedded default."""

from __future__ import annotations

from .base import Broker, Delivery
from .memory import MemoryBroker

__all__ = ["Broker", "Delivery", "MemoryBroker", "create_broker"]


def create_broker(url: str) -> Broker:
    """``memory`` or a Redis URL; Redis needs the ``redis`` extra installed."""
    if url == "memory":
        return MemoryBroker()
    from .redis import RedisBroker  # optional dependency, imported only when configured

    return RedisBroker(url)
