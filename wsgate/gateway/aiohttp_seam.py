"""Everything wsgate relies on in aiohttp beyond its documented API, in one module.

aiohttp is the HTTP server: it parses and answers the opening handshake. After the 101
the gateway owns the connection: ``take_over`` moves the transport to the session (an
``asyncio.Protocol``) and lets aiohttp forget it, so aiohttp's request, protocol,
tasks and WebSocketResponse are freed while the connection lives on. Frames are still
parsed by aiohttp's compiled reader, which feeds a ``FrameSink`` (a subclass of its
queue) that hands each message to a callback instead of queueing it for a future.
And aiohttp's size limits are one byte off from ours.

These are internals: setup.cfg bounds aiohttp to the releases they were checked against
(``SUPPORTED``), and ``check`` runs before the port binds, so an aiohttp that moved them is
a clear error at startup, not a crash at the first connection. No other module of wsgate
touches an aiohttp name that starts with ``_`` (tests/test_aiohttp_seam.py checks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_websocket import WSMessage, WSMessageTextBytes

from ..errors import DependencyError

try:
    from aiohttp._websocket.reader import WebSocketDataQueue, WebSocketReader
    _MOVED: str | None = None
    _COMPILED = WebSocketDataQueue.__module__.endswith("_c")
except ImportError as exc:  # check() says what to install before anything uses them
    WebSocketDataQueue = WebSocketReader = object  # type: ignore[assignment]
    _MOVED = f"aiohttp._websocket.reader ({exc})"
    _COMPILED = False

__all__ = ["SUPPORTED", "FrameSink", "OwnedWebSocket", "check", "frame_reader", "inflated_limit", "take_over"]

SUPPORTED = ((3, 14), (3, 15))  # aiohttp releases from the first to before the second; as in setup.cfg

Frame = WSMessage | WSMessageTextBytes | BaseException  # a message, or why the stream cannot be parsed


class FrameSink(WebSocketDataQueue):
    """Where aiohttp's reader puts each parsed message (or its parse error): straight to
    ``deliver``, or kept until ``deliver`` is set."""

    __slots__ = ("deliver", "early")

    def __init__(self) -> None:
        if not _COMPILED:
            # The pure-Python reader reads the queue's size fields; the compiled one has
            # them zero already, and its __init__ would make a deque nothing uses.
            super().__init__(None, 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
        self.deliver: Callable[[Frame], None] | None = None
        self.early: list[Frame] = []

    def feed_data(self, data: Frame, size: int) -> None:
        if self.deliver is None:
            self.early.append(data)
        else:
            self.deliver(data)

    def set_exception(self, exc: BaseException, exc_cause: BaseException | None = None) -> None:
        self.feed_data(exc, 0)

    def feed_eof(self) -> None:
        """The session sees the end of the stream from the transport itself."""


def frame_reader(max_msg_size: int, compress: bool) -> tuple[FrameSink, Any]:
    """aiohttp's compiled frame reader, standalone: ``feed_data(bytes)`` on the second parses
    client frames (inflating them with ``compress``) into messages for the first.

    ``max_msg_size`` is aiohttp's: it refuses a message of exactly that size.
    """
    sink = FrameSink()
    return sink, WebSocketReader(sink, max_msg_size, compress, True)


class OwnedWebSocket(web.WebSocketResponse):
    """A WebSocketResponse whose frames go to a ``FrameSink``; aiohttp writes nothing after the 101.

    The session owns pings, pongs and the close handshake, so aiohttp's own are off.
    """

    def __init__(self, protocols: tuple[str, ...], compress: bool, max_message_size: int) -> None:
        # aiohttp refuses a message of exactly max_msg_size; ours is the largest allowed.
        super().__init__(autoping=False, autoclose=False, protocols=protocols, compress=compress,
                         max_msg_size=max_message_size + 1)
        self.sink: FrameSink | None = None
        self.parser: Any = None

    def _post_start(self, request: web.BaseRequest, protocol: str | None, writer: Any) -> None:
        self._ws_protocol = protocol
        self._writer = writer
        self.sink, self.parser = frame_reader(self._max_msg_size, bool(self._compress))
        request.protocol.set_parser(self.parser)  # parses what came after the handshake, too
        request.protocol.keep_alive(False)

    async def write_eof(self) -> None:  # type: ignore[override]
        """aiohttp calls this when the request handler returns; the connection is not its any more."""


def take_over(request: web.Request, protocol: asyncio.Protocol) -> asyncio.Transport:
    """Give ``request``'s transport to ``protocol``; aiohttp forgets the connection once
    the request handler returns (its protocol, request and tasks are then freed)."""
    transport = request.transport
    assert transport is not None
    aiohttp_protocol = request.protocol
    transport.set_protocol(protocol)
    # aiohttp closes the transport of a finished non-keep-alive request; there is none now.
    aiohttp_protocol.transport = None
    task = request.task
    task.add_done_callback(lambda _: aiohttp_protocol.connection_lost(None))
    return transport


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
    moved = _MOVED or next((f"WebSocketResponse.{name}" for name in ("_pre_start", "_post_start")
                            if not hasattr(web.WebSocketResponse, name)), None)
    if moved is not None:
        raise DependencyError(f"aiohttp {version} no longer has {moved}, which wsgate takes connections "
                              f"over with: pip install '{wanted}'")


def inflated_limit(ws: web.WebSocketResponse, max_message_size: int) -> int:
    """The size a received message must be checked against, 0 for none.

    aiohttp's limit is ``max_message_size + 1`` (see ``OwnedWebSocket``); it refuses
    frames at that size, but an inflated message of exactly that size gets through.
    """
    return max_message_size if ws.compress else 0
