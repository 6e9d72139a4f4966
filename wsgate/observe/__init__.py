"""What an operator sees: counters, the Prometheus rendering of them, and log setup.

``stats`` is imported on the hot path; ``metrics`` (prometheus_client) only when
``/metrics`` is served."""

from __future__ import annotations

__all__: list[str] = []
