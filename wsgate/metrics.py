"""Counters kept as plain integers on the hot path, rendered for Prometheus on scrape."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["EndpointStats", "GatewayStats", "render_metrics"]


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
    slow_client_closes: int = 0
    handler_errors: int = 0
    heartbeat_timeouts: int = 0


@dataclass
class GatewayStats:
    endpoints: dict[str, EndpointStats] = field(default_factory=dict)
    broker_publish_failures: int = 0

    def endpoint(self, path: str) -> EndpointStats:
        stats = self.endpoints.get(path)
        if stats is None:
            stats = self.endpoints[path] = EndpointStats()
        return stats


_COUNTERS: tuple[tuple[str, str, Callable[[EndpointStats], int]], ...] = (
    ("wsgate_connections", "WebSocket connections accepted", lambda s: s.connections),
    ("wsgate_messages_received", "Messages received from clients", lambda s: s.messages_in),
    ("wsgate_messages_sent", "Messages queued to clients", lambda s: s.messages_out),
    ("wsgate_received_bytes", "Payload bytes received from clients", lambda s: s.bytes_in),
    ("wsgate_sent_bytes", "Frame bytes queued to clients", lambda s: s.bytes_out),
    ("wsgate_origin_rejections", "Handshakes refused by the origin policy", lambda s: s.origin_rejections),
    ("wsgate_slow_client_closes", "Connections closed because their send queue was full",
     lambda s: s.slow_client_closes),
    ("wsgate_handler_errors", "Handler hooks that raised", lambda s: s.handler_errors),
    ("wsgate_heartbeat_timeouts", "Connections closed for not answering pings", lambda s: s.heartbeat_timeouts),
)


class _Collector(Collector):
    def __init__(self, stats: GatewayStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        endpoints = sorted(self._stats.endpoints.items())
        gauge = GaugeMetricFamily("wsgate_open_connections", "Open WebSocket connections", labels=["endpoint"])
        for path, s in endpoints:
            gauge.add_metric([path], s.open)
        yield gauge
        for name, doc, read in _COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["endpoint"])
            for path, s in endpoints:
                family.add_metric([path], read(s))
            yield family
        closes = CounterMetricFamily("wsgate_closes", "Connections closed, by close code", labels=["endpoint", "code"])
        limits = CounterMetricFamily("wsgate_limit_rejections", "Refusals and closes by a limit",
                                     labels=["endpoint", "limit"])
        for path, s in endpoints:
            for code, n in sorted(s.close_codes.items()):
                closes.add_metric([path, str(code)], n)
            for limit, n in sorted(s.limit_rejections.items()):
                limits.add_metric([path, limit], n)
        yield closes
        yield limits
        yield CounterMetricFamily("wsgate_broker_publish_failures", "Publishes the broker did not take",
                                  value=self._stats.broker_publish_failures)


def render_metrics(stats: GatewayStats) -> bytes:
    """The Prometheus text exposition of ``stats``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats))
    return generate_latest(registry)
