"""Close codes (RFC 6455 section 7.4 and the IANA registry) as an enum."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CloseCode"]


class CloseCode(IntEnum):
    """The close codes wsgate sends or reports. Handlers may also use 3000-4999."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # reported only: the peer's close frame carried no code
    ABNORMAL = 1006  # reported only: the connection dropped without a close frame
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    UNAUTHORIZED = 3000  # IANA-registered: the token expired; reconnect with a fresh one
    FORBIDDEN = 3003  # IANA-registered: a config reload no longer allows this client
