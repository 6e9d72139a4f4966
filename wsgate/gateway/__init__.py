"""The only package that touches a WebSocket after the handshake.

::

    router     handshake policy (404/400/403/429/503), routing, reload, shutdown
    session    one connection: the receive loop, keepalive, close codes
    closing    the close handshake as a pure state machine
    sendqueue  the byte-bounded send queue and slow-client policy, pure
    frames     server frames as bytes, pure
    writer     the only place bytes reach a transport
    endpoint   one live endpoint: its handler and the Context it lends
    hub        topics over the broker, fanned out to local connections
    frozen     the read-only events that subscribe and history hand out, pure
    timers     one wheel of coarse timers for every heartbeat and idle deadline

Every failure becomes the right close code (RFC 6455 section 7.4.1): 1002 protocol
error, 1003 wrong message kind, 1007 invalid UTF-8, 1008 policy (rate limit, slow
consumer), 1009 too big, 1011 handler error.
"""

from __future__ import annotations

__all__: list[str] = []
