"""The close handshake of one connection (RFC 6455 sections 5.5.1, 7.1 and 7.4), free of I/O.

The session reports what happened (it started a close, its close frame reached the
transport, the peer's close frame arrived, a frame was malformed, the TCP connection
was lost) and this decides which close frame to send, whether the handshake is
complete, and which code the connection ended with for ``on_disconnect``, logs and
metrics.

A close frame the server queued is not one it sent: it waits behind queued data,
going out at the pace the peer reads. If the peer's close frame arrives first, ours
must still be sent (section 5.5.1), at once and with the code the close began with.

After sending a close frame the server keeps reading, discarding data, until the
peer's close frame arrives or ``close_timeout`` passes, and only then closes TCP:
closing with unread data makes the kernel reset the connection, and the peer's
kernel then discards the close frame it was about to read (the "lingering close").
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from ..closecode import CloseCode

__all__ = ["CloseHandshake", "Phase", "Reply", "valid_close_code"]


def valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame (RFC 6455 7.4.1, IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class Phase(Enum):
    OPEN = "open"
    CLOSE_QUEUED = "close queued"  # our close frame waits behind queued data: not sent yet
    CLOSING = "closing"  # our close frame is out; the peer's answer is awaited
    CLOSED = "closed"  # both close frames exchanged, or the connection failed or dropped


class Reply(NamedTuple):
    """The close frame to write at once, in answer to the peer's."""

    code: int
    reason: str
    # Our own close frame was still queued: the data before it is dropped, since the
    # peer has said it is done, and the close frame follows what the transport holds
    # ("as soon as practical", RFC 6455 section 5.5.1).
    drop_queued: bool = False


class CloseHandshake:
    """Which close frame to send, when the handshake is done, and the code to report."""

    __slots__ = ("code", "open", "phase", "reason")

    def __init__(self) -> None:
        self.phase = Phase.OPEN
        self.open = True  # phase is OPEN; a plain attribute, read once per frame
        self.code: int | None = None  # what the connection ended with; None while open
        self.reason = ""

    def start(self, code: int, reason: str) -> bool:
        """The server closes: True if a close frame with ``code`` must now be queued."""
        if not self.open:
            return False
        self.phase, self.open = Phase.CLOSE_QUEUED, False
        self.code, self.reason = code, reason
        return True

    def sent(self) -> None:
        """Our close frame has been handed to the transport, after the data queued before it."""
        if self.phase is Phase.CLOSE_QUEUED:
            self.phase = Phase.CLOSING

    def received(self, code: int | None, reason: str) -> Reply | None:
        """The peer's close frame (``code`` None if it had none): the close frame to answer with.

        None when the frame answers ours: the handshake is complete. An invalid code
        is a protocol error and is answered with 1002. If ours was queued but not yet
        sent, it is the answer: the peer learns why the server closed, and the code
        reported is the one the close began with.
        """
        phase = self.phase
        self.phase, self.open = Phase.CLOSED, False
        if phase is Phase.CLOSE_QUEUED:
            assert self.code is not None
            return Reply(self.code, self.reason, drop_queued=True)
        if phase is not Phase.OPEN:
            return None
        if code is None:
            self.code, self.reason = CloseCode.NO_STATUS, ""
            return Reply(CloseCode.NORMAL, "")
        if not valid_close_code(code):
            self.code, self.reason = CloseCode.PROTOCOL_ERROR, f"invalid close code {code}"
            return Reply(self.code, self.reason)
        self.code, self.reason = code, reason
        return Reply(code, reason)

    def failed(self, code: int, reason: str) -> bool:
        """A frame could not be parsed: True if a close frame with ``code`` must now be sent.

        Nothing more can be read after this; the connection ends once the peer has
        had time to read the close frame.
        """
        first = self.open
        if first:
            self.code, self.reason = code, reason
        self.phase, self.open = Phase.CLOSED, False
        return first

    def lost(self, code: int = CloseCode.ABNORMAL, reason: str = "") -> None:
        """The TCP connection is gone (or dropped on purpose with ``code``)."""
        if self.code is None:
            self.code, self.reason = code, reason
        self.phase, self.open = Phase.CLOSED, False
