"""The Prometheus text exposition of the gateway's counters (imported only to serve /metrics)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..closecode import CloseCode
from .stats import EndpointStats, GatewayStats

__all__ = ["render_metrics"]

_KNOWN_CODES = frozenset(CloseCode)


def _code_label(code: int) -> str:
    """The code itself for the registered ones; a bucket for application codes, so that
    clients choosing codes cannot mint a series each."""
    if code in _KNOWN_CODES:
        return str(code)
    if 3000 <= code <= 4999:
        return f"{code // 1000}xxx"
    return "other"


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
        auth = CounterMetricFamily("wsgate_auth_refusals", "Handshakes refused by auth, allow or authorize",
                                   labels=["endpoint", "reason"])
        # The codes are a handler's own (HttpAnswer.websocket_close), never a client's: each is its label.
        handshake_closes = CounterMetricFamily("wsgate_handshake_closes",
                                               "Handshakes a handler answered with an immediate close, by close code",
                                               labels=["endpoint", "code"])
        for path, s in endpoints:
            for reason, n in sorted(s.auth_refusals.items()):
                auth.add_metric([path, reason], n)
            for code, n in sorted(s.handshake_closes.items()):
                handshake_closes.add_metric([path, str(code)], n)
            by_label: Counter[str] = Counter()
            for code, n in s.close_codes.items():
                by_label[_code_label(code)] += n
            for label, n in sorted(by_label.items()):
                closes.add_metric([path, label], n)
            for limit, n in sorted(s.limit_rejections.items()):
                limits.add_metric([path, limit], n)
        yield closes
        yield limits
        yield auth
        yield handshake_closes
        yield CounterMetricFamily("wsgate_broker_publish_failures", "Publishes the broker did not take",
                                  value=self._stats.broker_publish_failures)


def render_metrics(stats: GatewayStats) -> bytes:
    """The Prometheus text exposition of ``stats``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats))
    return generate_latest(registry)
