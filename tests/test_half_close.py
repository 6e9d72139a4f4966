"""A client that sends its last frames, its close frame and FIN at once still reads the answer.

Scripted clients do this: everything they have to say, then ``shutdown(SHUT_WR)``,
then they read. TCP is half-closed: the client can still read. asyncio's default is
to close the transport at the peer's FIN, which, while a handler's ``on_connect`` was
still awaiting something, threw away everything the gateway had yet to write: the
client read nothing, not even a close frame. The gateway now takes FIN as the end of
reading only: the frames received before it are handled, the answer to the client's
close frame goes out after what was queued, and then the gateway closes TCP.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import WsgateProcess
from yarl import URL

from wsgate import Connection, Handler, Message
from wsgate.testing import run_gateway

TEXT, CLOSE = 0x1, 0x8
SCRIPT = bytes([0x81, 0x82]) + b"\0\0\0\0hi" + bytes([0x88, 0x85]) + b"\0\0\0\0" + struct.pack("!H", 1000) + b"bye"
ANSWER = [(TEXT, b"welcome"), (TEXT, b"hi"), (CLOSE, struct.pack("!H", 1000) + b"bye")]


class SlowWelcome(Handler):
    """Greets after awaiting something (as a join over Redis does), then echoes."""

    async def on_connect(self, conn: Connection) -> None:
        await asyncio.sleep(0.1)
        await conn.send("welcome")

    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(message)


def _frame(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """Unmasked server frames with short payloads."""
    frames = []
    while data:
        opcode, size = data[0] & 0x0F, data[1]
        assert size < 126, data
        frames.append((opcode, data[2:2 + size]))
        data = data[2 + size:]
    return frames


def _script(port: int, data: bytes) -> tuple[list[tuple[int, bytes]], str]:
    """Handshake, send ``data`` and FIN, then read until the gateway ends TCP."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /slow HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received, ended = rest, "eof"
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            ended = "reset"
    return _frames(received), ended


async def test_frames_close_and_fin_at_once_still_get_the_answer_and_the_close_frame() -> None:
    assert _frame(TEXT, b"hi") + _frame(CLOSE, struct.pack("!H", 1000) + b"bye") == SCRIPT
    async with run_gateway({"/slow": SlowWelcome}) as gw:
        port = URL(gw.url).port
        assert port is not None
        frames, ended = await asyncio.to_thread(_script, port, SCRIPT)
    assert frames == ANSWER
    assert ended == "eof"


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_served_gateway_answers_too(loop: str, tmp_path: Path,
                                        wsgate_process: Callable[..., WsgateProcess]) -> None:
    """The same through ``python -m wsgate`` on each event loop: uvloop, the default,
    has transports of its own."""
    (tmp_path / "handlers").mkdir()
    source = inspect.getsource(SlowWelcome)
    (tmp_path / "handlers" / "slow.py").write_text(
        "import asyncio\n\nfrom wsgate import Connection, Handler, Message\n\n\n" + source)
    (tmp_path / "config.yaml").write_text('endpoints:\n  - {path: /slow, handler: "handlers.slow:SlowWelcome"}\n')
    gw = wsgate_process(tmp_path / "config.yaml", "--loop", loop)
    assert _script(gw.port, SCRIPT) == (ANSWER, "eof")


async def test_fin_without_a_close_frame_ends_the_connection() -> None:
    """No close frame: the connection ends (1006 for the handler) and TCP closes, without a reset."""
    async with run_gateway({"/slow": SlowWelcome}) as gw:
        port = URL(gw.url).port
        assert port is not None
        frames, ended = await asyncio.wait_for(asyncio.to_thread(_script, port, _frame(TEXT, b"hi")), 10)
    assert (CLOSE, struct.pack("!H", 1000)) not in frames
    assert ended in ("eof", "reset")
