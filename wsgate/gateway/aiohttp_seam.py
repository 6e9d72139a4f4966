"""Everything wsgate relies on in aiohttp beyond its documented API, in one module.

aiohttp is the HTTP server: it parses and answers the opening handshake. After the 101,
a session reads aiohttp's queue of parsed frames itself (``WebSocketResponse._reader``)
instead of ``receive()``, which answers a bad frame with a close frame of its own and
drops TCP at once, resetting a client still sending before it reads why (see
closing.py). And aiohttp's size limits are one byte off from ours.

These are internals: setup.cfg bounds aiohttp to the releases they were checked against
(``SUPPORTED``), and ``check`` runs before the port binds, so an aiohttp that moved them is
a clear error at startup, not a crash at the first connection. No other module of wsgate
touches an aiohttp name that starts with ``_`` (tests/test_import_direction.py checks).
"""

from __future__ import annotations

from typing import Protocol

import aiohttp
from aiohttp import web
from aiohttp.http_websocket import WSMessage, WSMessageTextBytes

from ..errors import DependencyError

__all__ = ["SUPPORTED", "FrameQueue", "check", "frame_queue", "inflated_limit", "websocket_response"]

SUPPORTED = ((3, 14), (3, 15))  # aiohttp releases from the first to before the second; as in setup.cfg


class FrameQueue(Protocol):
    """aiohttp's queue of parsed frames: ``read`` gives the next message (close, ping and pong
    included) and raises ``EofStream`` at the end or ``WebSocketError`` for a bad frame."""

    async def read(self) -> WSMessage | WSMessageTextBytes: ...


def check() -> None:
    """DependencyError unless the installed aiohttp has what this module reads."""
    version = aiohttp.__version__
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        release = (0, 0)
    low, high = SUPPORTED
    wanted = f"aiohttp>={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    if not low <= release < high:
        raise DependencyError(f"aiohttp {version} is installed, but wsgate reads aiohttp internals that were "
                              f"checked only on {wanted}: pip install '{wanted}'")
    if not hasattr(web.WebSocketResponse, "_reader"):
        raise DependencyError(f"aiohttp {version} no longer has WebSocketResponse._reader, which wsgate "
                              f"reads frames from: pip install '{wanted}'")


def websocket_response(protocols: tuple[str, ...], compress: bool, max_message_size: int) -> web.WebSocketResponse:
    """A WebSocketResponse whose reader accepts messages of up to ``max_message_size`` bytes.

    The session owns pings, pongs and the close handshake, so aiohttp's own are off.
    """
    return web.WebSocketResponse(
        autoping=False, autoclose=False, protocols=protocols, compress=compress,
        # aiohttp refuses a message of exactly max_msg_size; ours is the largest allowed.
        max_msg_size=max_message_size + 1,
    )


def frame_queue(ws: web.WebSocketResponse) -> FrameQueue:
    """The prepared ``ws``'s queue of parsed frames."""
    reader = ws._reader
    assert reader is not None, "frame_queue() of a WebSocketResponse that is not prepared"
    return reader


def inflated_limit(ws: web.WebSocketResponse, max_message_size: int) -> int:
    """The size a received message must be checked against, 0 for none.

    aiohttp's limit is ``max_message_size + 1`` (see ``websocket_response``); it refuses
    frames at that size, but an inflated message of exactly that size gets through.
    """
    return max_message_size if ws.compress else 0
