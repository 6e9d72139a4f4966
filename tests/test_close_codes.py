"""Close codes per RFC 6455 section 7.4.1, provoked with real frames on a raw socket."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType
from rawframes import client_frame

from wsgate import Connection, Handler, Message
from wsgate.testing import GatewayServer, wait_until

Start = Callable[..., Awaitable[GatewayServer]]
TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


class RawWebSocket:
    """A minimal WebSocket client on a plain TCP socket, for frames no library will send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, gw: GatewayServer, path: str, headers: dict[str, str] | None = None) -> RawWebSocket:
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        assert status == b"101", head
        return cls(reader, writer)

    def send_frame(self, opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True,
                   rsv: int = 0) -> None:
        self.writer.write(client_frame(payload, opcode, fin=fin, rsv=rsv << 4, mask=mask))

    def send_close(self, code: int | None = None, reason: bytes = b"") -> None:
        self.send_frame(CLOSE, b"" if code is None else struct.pack("!H", code) + reason)

    async def read_frame(self) -> tuple[int, bytes]:
        """The next server frame as (opcode, payload); server frames are never masked."""
        b1, b2 = await self.reader.readexactly(2)
        assert not b2 & 0x80, "a server must not mask its frames"
        n = b2 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        assert b1 & 0x80, "the server sent a fragmented frame"
        return b1 & 0x0F, await self.reader.readexactly(n)

    async def read_close(self, within: float = 5.0) -> tuple[int | None, str, list[tuple[int, bytes]]]:
        """Read until the server's close frame: its code, its reason, the frames before it.

        Answers the close like a well-behaved client, then expects the server to end TCP.
        """
        before = []
        async with asyncio.timeout(within):
            while True:
                opcode, payload = await self.read_frame()
                if opcode == CLOSE:
                    break
                before.append((opcode, payload))
            if not self.writer.is_closing():
                self.send_frame(CLOSE, payload[:2])
            assert await self.reader.read() == b"", "data after the close frame"
        self.writer.close()
        if not payload:
            return None, "", before
        return struct.unpack("!H", payload[:2])[0], payload[2:].decode(), before

    def reset(self) -> None:
        """Drop the connection with a TCP RST: no close frame, no FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


class Tracker(Handler):
    """Echo that records every hook call; subclasses make hooks fail."""

    events: list[tuple[str, str, Any]] = []

    async def on_connect(self, conn: Connection) -> None:
        Tracker.events.append(("connect", conn.id, None))

    async def on_message(self, conn: Connection, message: Message) -> None:
        Tracker.events.append(("message", conn.id, message))
        await conn.send(message)

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        Tracker.events.append(("disconnect", conn.id, code))


class TextOnly(Tracker):
    accepts = "text"


class BinaryOnly(Tracker):
    accepts = "binary"


class FailingConnect(Tracker):
    async def on_connect(self, conn: Connection) -> None:
        await super().on_connect(conn)
        if conn.query.get("fail"):
            raise RuntimeError(f"on_connect exploded for {conn.id}")


class FailingMessage(Tracker):
    async def on_message(self, conn: Connection, message: Message) -> None:
        if message == "boom":
            Tracker.events.append(("message", conn.id, message))
            raise ValueError("on_message exploded")
        await super().on_message(conn, message)


@pytest.fixture(autouse=True)
def _reset_events() -> None:
    Tracker.events.clear()


def disconnects() -> list[tuple[str, Any]]:
    return [(conn, code) for kind, conn, code in Tracker.events if kind == "disconnect"]


async def assert_echo_works(gw: GatewayServer, path: str) -> None:
    async with gw.connect(path) as ws:
        await ws.send_str("still serving")
        assert await ws.receive_str(timeout=5) == "still serving"


async def test_raw_client_echo_and_normal_close(wsgate_gateway: Start) -> None:
    """The raw client itself talks correct WebSocket: echo works and 1000 comes back."""
    gw = await wsgate_gateway({"/ws": Tracker})
    raw = await RawWebSocket.open(gw, "/ws")
    raw.send_frame(TEXT, b"hi")
    raw.send_frame(TEXT, b"frag", fin=False)
    raw.send_frame(CONT, b"mented")
    raw.send_close(1000, b"done")
    code, reason, before = await raw.read_close()
    assert before == [(TEXT, b"hi"), (TEXT, b"fragmented")]
    assert (code, reason) == (1000, "done")
    await wait_until(disconnects)
    assert disconnects() == [("c1", 1000)]


async def test_close_without_code(wsgate_gateway: Start) -> None:
    """An empty close frame is answered with 1000; the handler sees 1005 (no status received)."""
    gw = await wsgate_gateway({"/ws": Tracker})
    raw = await RawWebSocket.open(gw, "/ws")
    raw.send_close()
    code, reason, _ = await raw.read_close()
    assert (code, reason) == (1000, "")
    await wait_until(disconnects)
    assert disconnects() == [("c1", 1005)]


async def test_message_too_big_is_1009_and_others_keep_going(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": {"handler": Tracker, "max_message_size": 1024}})
    async with gw.connect("/ws") as bystander:
        async with gw.connect("/ws") as ws:
            await ws.send_str("x" * 1000)
            assert await ws.receive_str(timeout=5) == "x" * 1000
            await ws.send_bytes(b"x" * 2048)
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
        raw = await RawWebSocket.open(gw, "/ws")
        raw.send_frame(TEXT, b"y" * 700, fin=False)
        raw.send_frame(CONT, b"y" * 700)  # each fragment fits, the message does not
        code, _, before = await raw.read_close()
        assert code == 1009
        assert before == []
        await bystander.send_str("still here")
        assert await bystander.receive_str(timeout=5) == "still here"
    await assert_echo_works(gw, "/ws")
    await wait_until(lambda: len(disconnects()) == 4)
    messages = [m for kind, _, m in Tracker.events if kind == "message"]
    assert messages == ["x" * 1000, "still here", "still serving"]


async def test_message_of_exactly_max_size_is_accepted(wsgate_gateway: Start) -> None:
    """README: "a larger message closes with 1009", so the limit itself is allowed."""
    gw = await wsgate_gateway({"/ws": {"handler": Tracker, "max_message_size": 1024}})
    async with gw.connect("/ws") as ws:
        await ws.send_str("x" * 1024)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "x" * 1024)


async def test_compressed_message_size_counts_decompressed(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/z": {"handler": Tracker, "max_message_size": 4096, "compression": True}})
    async with gw.connect("/z", compress=15) as ws:
        assert ws.compress
        await ws.send_str("a" * 4000)
        assert await ws.receive_str(timeout=5) == "a" * 4000
        await ws.send_str("a" * 100_000)  # a few hundred bytes on the wire
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
    await assert_echo_works(gw, "/z")


async def test_compressed_message_boundary(wsgate_gateway: Start) -> None:
    """With compression the decompressed size counts, with the same boundary as without."""
    gw = await wsgate_gateway({"/z": {"handler": Tracker, "max_message_size": 4096, "compression": True}})
    async with gw.connect("/z", compress=15) as ws:
        await ws.send_str("b" * 4096)
        assert await ws.receive_str(timeout=5) == "b" * 4096
        await ws.send_str("b" * 4097)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)


async def test_endpoint_level_size_and_duration_strings(wsgate_gateway: Start) -> None:
    """README: sizes and durations may be strings, and any endpoint may set any policy key."""
    gw = await wsgate_gateway({"/ws": {"handler": Tracker, "max_message_size": "1KiB", "idle_timeout": "30s"}})
    async with gw.connect("/ws") as ws:
        await ws.send_bytes(b"x" * 2048)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)


async def test_invalid_utf8_is_1007(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": Tracker})
    raw = await RawWebSocket.open(gw, "/ws")
    raw.send_frame(TEXT, b"caf\xc3")  # truncated multi-byte sequence
    code, _, before = await raw.read_close()
    assert code == 1007
    assert before == []
    raw = await RawWebSocket.open(gw, "/ws")
    raw.send_frame(TEXT, b"ok")
    raw.send_frame(TEXT, b"\xff\xfe bad", fin=False)
    raw.send_frame(CONT, b"tail")
    code, _, before = await raw.read_close()
    assert code == 1007
    assert before in ([], [(TEXT, b"ok")])  # the echo of "ok" may lose the race with the close
    await wait_until(lambda: len(disconnects()) == 2)
    assert [m for kind, _, m in Tracker.events if kind == "message"] == ["ok"]
    await assert_echo_works(gw, "/ws")


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([(0x3, b"", {})], id="reserved-opcode"),
        pytest.param([(0xB, b"", {})], id="reserved-control-opcode"),
        pytest.param([(CLOSE, struct.pack("!H", 999), {})], id="close-code-999"),
        pytest.param([(CLOSE, struct.pack("!H", 1005), {})], id="close-code-1005"),
        pytest.param([(CLOSE, b"\x03", {})], id="close-payload-1-byte"),
        pytest.param([(TEXT, b"x", {"rsv": 0b010})], id="rsv2-set"),
        pytest.param([(CONT, b"orphan", {})], id="continuation-without-start"),
        pytest.param([(PING, b"", {"fin": False})], id="fragmented-control"),
        pytest.param([(TEXT, b"a", {"fin": False}), (TEXT, b"b", {})], id="new-message-inside-fragmented"),
        pytest.param([(PING, b"p" * 126, {})], id="control-payload-over-125"),
        pytest.param([(TEXT, b"unmasked", {"mask": False})], id="unmasked"),
        pytest.param([(CLOSE, struct.pack("!H", 1000), {"mask": False})], id="unmasked-close"),
    ],
)
async def test_protocol_errors_are_1002(wsgate_gateway: Start, frames: list[tuple[int, bytes, dict[str, Any]]]) -> None:
    gw = await wsgate_gateway({"/ws": Tracker})
    raw = await RawWebSocket.open(gw, "/ws")
    for opcode, payload, flags in frames:
        raw.send_frame(opcode, payload, **flags)
    code, _, before = await raw.read_close()
    assert code == 1002
    assert before == []
    await wait_until(disconnects)
    assert [kind for kind, _, _ in Tracker.events] == ["connect", "disconnect"]
    await assert_echo_works(gw, "/ws")


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        pytest.param([(0x3, b"", {})], 1002, id="1002-reserved-opcode"),
        pytest.param([(CLOSE, struct.pack("!H", 999), {})], 1002, id="1002-close-code-999"),
        pytest.param([(TEXT, b"\xff", {})], 1007, id="1007-invalid-utf8"),
        pytest.param([(BINARY, b"b" * 2000, {})], 1009, id="1009-too-big"),
    ],
)
async def test_handler_and_metrics_see_the_code_sent(
    wsgate_gateway: Start, frames: list[tuple[int, bytes, dict[str, Any]]], expected: int,
) -> None:
    """on_disconnect and wsgate_closes get the code the gateway sent, not 1006."""
    gw = await wsgate_gateway({"/ws": {"handler": Tracker, "max_message_size": 1024}})
    raw = await RawWebSocket.open(gw, "/ws")
    for opcode, payload, flags in frames:
        raw.send_frame(opcode, payload, **flags)
    code, _, _ = await raw.read_close()
    assert code == expected
    await wait_until(disconnects)
    assert disconnects() == [("c1", expected)]
    assert dict(gw.stats.endpoints["/ws"].close_codes) == {expected: 1}


async def test_binary_to_text_only_endpoint_is_1003(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/text": TextOnly, "/bin": BinaryOnly, "/chat": "chat"})
    async with gw.connect("/text") as ws:
        await ws.send_str("fine")
        assert await ws.receive_str(timeout=5) == "fine"
        await ws.send_bytes(b"not fine")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1003)
        assert "text" in msg.extra
    async with gw.connect("/bin") as ws:
        await ws.send_bytes(b"fine")
        assert await ws.receive_bytes(timeout=5) == b"fine"
        await ws.send_str("not fine")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1003)
    async with gw.connect("/chat?name=bob") as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        await ws.send_bytes(b"\x00\x01")
        async with asyncio.timeout(5):
            while (msg := await ws.receive()).type is WSMsgType.TEXT:
                pass
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1003)
    await wait_until(lambda: len(disconnects()) == 2)
    assert [code for _, code in disconnects()] == [1003, 1003]
    assert [m for kind, _, m in Tracker.events if kind == "message"] == ["fine", b"fine"]


async def test_on_connect_raising_is_1011(wsgate_gateway: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    gw = await wsgate_gateway({"/hooks": FailingConnect})
    async with gw.connect("/hooks") as bystander:
        async with gw.connect("/hooks?fail=1") as ws:
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1011)
        await bystander.send_str("unaffected")
        assert await bystander.receive_str(timeout=5) == "unaffected"
    await wait_until(lambda: len(disconnects()) == 2)
    assert disconnects() == [("c2", 1011), ("c1", 1000)]
    assert not any(kind == "message" and conn == "c2" for kind, conn, _ in Tracker.events)
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    record = tracebacks[0]
    text = record.getMessage()
    assert "c2" in text
    assert "/hooks" in text
    assert "on_connect" in text
    assert "on_connect exploded for c2" in caplog.text
    assert gw.stats.endpoints["/hooks"].handler_errors == 1
    assert gw.stats.endpoints["/hooks"].close_codes[1011] == 1


async def test_on_message_raising_is_1011(wsgate_gateway: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    gw = await wsgate_gateway({"/hooks": FailingMessage})
    async with gw.connect("/hooks") as bystander, gw.connect("/hooks") as ws:
        await ws.send_str("fine")
        assert await ws.receive_str(timeout=5) == "fine"
        await ws.send_str("boom")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1011)
        await bystander.send_str("boom?")
        assert await bystander.receive_str(timeout=5) == "boom?"
    await wait_until(lambda: len(disconnects()) == 2)
    assert ("c2", 1011) in disconnects()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    text = tracebacks[0].getMessage()
    assert "c2" in text
    assert "/hooks" in text
    assert "on_message" in text
    assert "ValueError: on_message exploded" in caplog.text


async def test_on_disconnect_once_on_tcp_reset(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": Tracker})
    raw = await RawWebSocket.open(gw, "/ws")
    raw.send_frame(TEXT, b"hello")
    async with asyncio.timeout(5):
        assert await raw.read_frame() == (TEXT, b"hello")
    raw.reset()
    await wait_until(disconnects)
    await asyncio.sleep(0.2)  # a second call would have happened by now
    assert disconnects() == [("c1", 1006)]
    assert not gw.gateway.sessions
    assert gw.stats.endpoints["/ws"].open == 0


async def test_on_disconnect_once_when_client_vanishes_without_close(wsgate_gateway: Start) -> None:
    """TCP FIN without a close frame."""
    gw = await wsgate_gateway({"/ws": FailingConnect})
    raw = await RawWebSocket.open(gw, "/ws?fail=1")
    raw.writer.close()
    await wait_until(disconnects)
    await asyncio.sleep(0.2)
    assert len(disconnects()) == 1
    assert not gw.gateway.sessions


@pytest.mark.parametrize("sent", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
async def test_invalid_client_close_code_is_answered_1002(wsgate_gateway: Start, sent: int) -> None:
    """RFC 6455 7.4.1: these codes may not be sent; answering with them (or 1000) is wrong."""
    gw = await wsgate_gateway({"/ws": Tracker})
    raw = await RawWebSocket.open(gw, "/ws")
    raw.send_close(sent, b"bogus")
    code, _, _ = await raw.read_close()
    assert code == 1002
    await wait_until(disconnects)
    assert disconnects() == [("c1", 1002)]


@pytest.mark.parametrize("sent", [1000, 1001, 1003, 1011, 1014, 3000, 4999])
async def test_valid_client_close_code_is_echoed(wsgate_gateway: Start, sent: int) -> None:
    gw = await wsgate_gateway({"/ws": Tracker})
    raw = await RawWebSocket.open(gw, "/ws")
    raw.send_close(sent, b"why")
    assert (await raw.read_close())[:2] == (sent, "why")
    await wait_until(disconnects)
    assert disconnects() == [("c1", sent)]


class ClosesAtOnce(Tracker):
    """Closes every connection in on_connect, like a refused chat join."""

    async def on_connect(self, conn: Connection) -> None:
        await super().on_connect(conn)
        await conn.send("refused")
        await conn.close(4003, "not allowed")


async def test_no_hook_but_on_disconnect_runs_after_close(wsgate_gateway: Start) -> None:
    """Messages that arrive while the close handshake completes are read and discarded."""
    gw = await wsgate_gateway({"/ws": ClosesAtOnce})
    raw = await RawWebSocket.open(gw, "/ws")
    for i in range(50):
        raw.send_frame(TEXT, f"early {i}".encode())
    code, reason, before = await raw.read_close()
    assert (code, reason, before) == (4003, "not allowed", [(TEXT, b"refused")])
    await wait_until(disconnects)
    assert [kind for kind, _, _ in Tracker.events] == ["connect", "disconnect"]
    assert gw.stats.endpoints["/ws"].handler_errors == 0


async def test_chat_refused_join_then_messages_is_no_handler_error(
    wsgate_gateway: Start, caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await wsgate_gateway({"/chat": "chat"})
    raw = await RawWebSocket.open(gw, "/chat?room=bad%20room!")
    for _ in range(20):
        raw.send_frame(TEXT, b"hello before the close arrives")
    code, reason, _ = await raw.read_close()
    assert (code, reason) == (1008, "bad room name")
    await wait_until(lambda: gw.stats.endpoints["/chat"].open == 0)
    assert gw.stats.endpoints["/chat"].handler_errors == 0
    assert "Traceback" not in caplog.text
    assert "KeyError" not in caplog.text
