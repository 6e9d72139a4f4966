"""Connection policy as pure decisions: origins, forwarded addresses, caps and rate
limits, heartbeat and idle deadlines. No asyncio, no sockets; the gateway asks."""

from __future__ import annotations

__all__: list[str] = []
