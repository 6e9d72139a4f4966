"""The only package that touches a WebSocket: handshake policy, receive loop, close codes.

Policy runs before any handler code: 404 for unknown paths, 400 for a plain GET,
403 for a refused origin, 503/429 over the connection caps. After the upgrade the
gateway owns the receive loop: it answers pings, pings on the heartbeat, applies the
idle timeout and the rate limit, and turns every failure into the right close code
(RFC 6455 section 7.4.1): 1002 protocol error, 1003 wrong message kind, 1007 invalid
UTF-8, 1008 policy (rate limit, slow consumer), 1009 too big, 1011 handler error.
"""

from __future__ import annotations

from .router import Gateway
from .session import GOING_AWAY, SERVICE_RESTART, Session, redact_query

__all__ = ["GOING_AWAY", "SERVICE_RESTART", "Gateway", "Session", "redact_query"]
