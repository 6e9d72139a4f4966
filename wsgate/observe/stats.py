"""Counters kept as plain integers on the hot path; ``metrics`` renders them on scrape."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["EndpointStats", "GatewayStats"]


@dataclass
class EndpointStats:
    """What happened on one endpoint path since the process started."""

    open: int = 0
    connections: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    close_codes: Counter[int] = field(default_factory=Counter)
    origin_rejections: int = 0
    limit_rejections: Counter[str] = field(default_factory=Counter)
    auth_refusals: Counter[str] = field(default_factory=Counter)  # by reason: missing, invalid, ...
    handshake_closes: Counter[int] = field(default_factory=Counter)  # by code: HttpAnswer.websocket_close
    slow_client_closes: int = 0
    handler_errors: int = 0
    heartbeat_timeouts: int = 0


@dataclass
class GatewayStats:
    """Every endpoint's counters, by path, and the broker's."""

    endpoints: dict[str, EndpointStats] = field(default_factory=dict)
    broker_publish_failures: int = 0

    def endpoint(self, path: str) -> EndpointStats:
        stats = self.endpoints.get(path)
        if stats is None:
            stats = self.endpoints[path] = EndpointStats()
        return stats
