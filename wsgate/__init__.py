"""wsgate: a config-driven WebSocket gateway.

The plugin API is everything exported here: subclass ``Handler``, talk to clients
through ``Connection``, reach the endpoint's other clients and the broker through
``Context``. See the README and docs/handlers.md.
"""

from __future__ import annotations

from .auth.identity import Handshake, Identity
from .closecode import CloseCode
from .config.base import Duration, Size
from .connection import Connection
from .errors import (
    BrokerError,
    ConfigError,
    ConfigProblem,
    ConnectionClosed,
    DependencyError,
    HandlerLoadError,
    Refuse,
    TokenRejected,
    WsgateError,
)
from .handler import Context, Handler, HttpAnswer, HttpCall, Message, NoOptions, Recovery

__all__ = [
    "BrokerError",
    "CloseCode",
    "ConfigError",
    "ConfigProblem",
    "Connection",
    "ConnectionClosed",
    "Context",
    "DependencyError",
    "Duration",
    "Handler",
    "HandlerLoadError",
    "Handshake",
    "HttpAnswer",
    "HttpCall",
    "Identity",
    "Message",
    "NoOptions",
    "Recovery",
    "Refuse",
    "Size",
    "TokenRejected",
    "WsgateError",
]

__version__ = "0.1.0"
