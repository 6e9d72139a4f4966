"""Server-initiated closes reach a client that is still sending (RFC 6455 section 7.1.1).

When the gateway closes a connection by policy (rate limit, bad input, ...) while the
client is still sending, the server must send its close frame and then keep reading,
discarding, until the client's close frame arrives or ``close_timeout`` passes. Only
then may it close TCP. A server that closes TCP while client data is still unread
makes the kernel send a RST, and the client loses the close frame: it sees 1006
instead of the documented code.

Everything here is checked from the client's side of the socket, against a real
``python -m wsgate`` process, with three clients: ``websockets``, Node's ``ws`` and a
raw TCP socket that writes hand-built frames. Each case runs ``RUNS`` times in a row
and reports every run that went wrong, so a failure message shows the failure rate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import WsgateProcess, run_node
from rawframes import client_frame
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Data

RUNS = 20
FLOOD = 1_000
CLOSE_TIMEOUT = 0.5  # seconds, for the endpoints of the "client never answers" case
TEXT, CLOSE = 0x1, 0x8
BEFORE = [f"before {i}" for i in range(5)]
AFTER_LIMIT = 2_000  # most valid frames a client sends after the bad one
PIPELINED = 50  # valid frames sent right after the bad one, before the client reads anything
BUSY = 300  # the raw client sends this many after the bad one before it reads anything

CONFIG: dict[str, Any] = {
    "server": {"host": "127.0.0.1"},
    "endpoints": [
        {"path": "/chat", "handler": "chat"},  # rate limited by default: 20/s, burst 40
        {"path": "/echo", "handler": "echo", "max_message_size": "1KiB"},
        {"path": "/chat-ct", "handler": "chat", "close_timeout": CLOSE_TIMEOUT},
        {"path": "/echo-ct", "handler": "echo", "max_message_size": "1KiB", "close_timeout": CLOSE_TIMEOUT},
    ],
}

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]


@pytest.fixture
def gateway(wsgate_process: Start, write_config: WriteConfig) -> Iterator[WsgateProcess]:
    gw = wsgate_process(write_config(CONFIG))
    yield gw
    print(gw.output)  # pytest shows it only when the test failed
    assert gw.proc.poll() is None, f"the gateway exited with status {gw.proc.returncode}"


def check_runs(outcomes: list[str], expected: str) -> None:
    """Every run must have seen ``expected``; the message counts what the runs saw instead."""
    bad = Counter(o for o in outcomes if o != expected)
    assert not bad, f"{sum(bad.values())}/{len(outcomes)} runs did not see {expected!r}: {dict(bad)}"


def describe(closed: ConnectionClosed) -> str:
    """``"CODE reason"`` of the close frame the client received, or why there was none."""
    if closed.rcvd is None:
        return f"no close frame ({type(closed).__name__}: {closed})"
    return f"{closed.rcvd.code} {closed.rcvd.reason}"


# --- a raw socket client, for frames that no library sends ---


def frame(opcode: int, payload: bytes = b"") -> bytes:
    """One masked client frame, FIN set."""
    return client_frame(payload, opcode)


async def raw_open(gw: WsgateProcess, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    writer.write(request.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"101", head
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame as (opcode, payload)."""
    b1, b2 = await reader.readexactly(2)
    assert not b2 & 0x80, "a server must not mask its frames"
    n = b2 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b1 & 0x0F, await reader.readexactly(n)


def close_code(payload: bytes) -> str:
    """A close frame's payload as ``"CODE reason"``."""
    if len(payload) < 2:
        return "close frame without a code"
    return f"{struct.unpack('!H', payload[:2])[0]} {payload[2:].decode(errors='replace')}"


@dataclass
class Seen:
    """What a client saw: the close frame (``"CODE reason"``) or why there was none, and the data."""

    close: str = ""
    messages: list[Data] = field(default_factory=list)

    def outcome(self, echoed: Sequence[Data]) -> str:
        """``"CODE, echoed BEFORE"`` when all went right; otherwise it says what went wrong."""
        code = self.close.split(" ", 1)[0]
        return f"{code if code.isdigit() else self.close}, echoed {'BEFORE' if list(echoed) == BEFORE else echoed}"


# --- 1. and 2. a flood over the chat rate limit ---


async def flood_websockets(gw: WsgateProcess, room: str) -> str:
    """1,000 sends without pause, then read until closed: what close the client saw."""
    async with asyncio.timeout(15):
        try:
            async with connect(f"{gw.ws_url}/chat?room={room}&name=flood", compression=None) as conn:
                for i in range(FLOOD):
                    await conn.send(f"flood {i}")
                for _ in range(10 * FLOOD):  # chat sends at most welcome, history, join and the messages
                    await conn.recv()
        except ConnectionClosed as closed:
            return describe(closed)
    return "the connection never closed"


async def test_flood_websockets_sees_rate_limit_close(gateway: WsgateProcess) -> None:
    """Case 1: `websockets` floods the chat; it must get 1008 "rate limit exceeded", not 1006."""
    outcomes = [await flood_websockets(gateway, f"ws{run}") for run in range(RUNS)]
    check_runs(outcomes, "1008 rate limit exceeded")


async def flood_node(gw: WsgateProcess, room: str) -> str:
    report = await run_node("flood.js", f"{gw.ws_url}/chat?room={room}&name=node", "--count", str(FLOOD))
    assert report["opened"] is True, report
    if report["closeCode"] == 1006:
        return f"no close frame (1006, error {report['error']!r})"
    return f"{report['closeCode']} {report['closeReason']}"


async def test_flood_node_ws_sees_rate_limit_close(gateway: WsgateProcess) -> None:
    """Case 2: the same flood from Node's `ws` (tests/node/flood.js)."""
    outcomes = [await flood_node(gateway, f"node{run}") for run in range(RUNS)]
    check_runs(outcomes, "1008 rate limit exceeded")


# --- 3. bad input in the middle of a stream of valid messages ---


async def keep_sending(conn: ClientConnection) -> None:
    """Valid messages after the bad one, as a client that has not noticed anything yet."""
    for i in range(PIPELINED, AFTER_LIMIT):
        await conn.send(f"after {i}")
        await asyncio.sleep(0)  # a yield, not a wait: let the reader see the close frame


async def still_sending_websockets(url: str, bad: str | bytes, *, text: bool | None = None) -> Seen:
    """Send BEFORE, the bad message and valid messages after it, all without waiting; read until closed."""
    seen = Seen()
    async with asyncio.timeout(15):
        try:
            async with connect(url, compression=None) as conn:
                for message in BEFORE:
                    await conn.send(message)
                await conn.send(bad, text=text)
                for i in range(PIPELINED):  # no yield between these sends: they leave together
                    await conn.send(f"after {i}")
                sender = asyncio.create_task(keep_sending(conn))
                try:
                    for _ in range(10 * AFTER_LIMIT):
                        seen.messages.append(await conn.recv())
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
        except ConnectionClosed as closed:
            seen.close = describe(closed)
        else:
            seen.close = "the connection never closed"
    return seen


def chat_texts(messages: list[Data]) -> list[str]:
    """The texts of the chat's ``message`` events among ``messages``."""
    events = [json.loads(m) for m in messages]
    return [e["text"] for e in events if e["type"] == "message"]


@pytest.mark.parametrize(
    ("path", "bad", "text", "code"),
    [
        pytest.param("/echo", "x" * 2048, None, "1009", id="over-max-size-1009"),
        pytest.param("/chat", b"binary to a text-only handler", None, "1003", id="binary-to-text-only-1003"),
        pytest.param("/echo", b"invalid \xff\xfe utf-8", True, "1007", id="invalid-utf8-1007"),
    ],
)
async def test_bad_message_mid_stream_websockets(
    gateway: WsgateProcess, path: str, bad: str | bytes, text: bool | None, code: str,
) -> None:
    """Case 3 (a)-(c) with `websockets`: the close code arrives and BEFORE, and only BEFORE, was echoed.

    ``send(bytes, text=True)`` is how `websockets` sends invalid UTF-8 in a text frame.
    """
    outcomes = []
    for run in range(RUNS):
        url = f"{gateway.ws_url}{path}?room=bad{run}&name=w"
        seen = await still_sending_websockets(url, bad, text=text)
        outcomes.append(seen.outcome(chat_texts(seen.messages) if path == "/chat" else seen.messages))
    check_runs(outcomes, f"{code}, echoed BEFORE")


async def still_sending_raw(gw: WsgateProcess, path: str, bad: bytes) -> Seen:
    """The raw-socket version: BEFORE, the bad frame, then valid frames until the close frame arrives.

    The close frame is answered, as a client should. Data frames must be text: the echoes of BEFORE.
    """
    seen = Seen()
    async with asyncio.timeout(15):
        reader, writer = await raw_open(gw, path)
        try:
            # One write, so that the bad frame and the valid ones after it arrive together; then
            # more, one write each, all before this client reads anything, as a busy client would.
            after = [frame(TEXT, f"after {i}".encode()) for i in range(PIPELINED)]
            writer.write(b"".join([*(frame(TEXT, m.encode()) for m in BEFORE), bad, *after]))
            for i in range(PIPELINED, BUSY):
                writer.write(frame(TEXT, f"after {i}".encode()))
            closing = asyncio.Event()

            async def keep_sending_raw() -> None:
                for i in range(BUSY, AFTER_LIMIT):
                    if closing.is_set():
                        return
                    writer.write(frame(TEXT, f"after {i}".encode()))
                    await writer.drain()
                    await asyncio.sleep(0)  # a yield, not a wait: let the reader see the close frame

            sender = asyncio.create_task(keep_sending_raw())
            try:
                for _ in range(10 * AFTER_LIMIT):
                    opcode, payload = await read_frame(reader)
                    if opcode == CLOSE:
                        seen.close = close_code(payload)
                        closing.set()
                        writer.write(frame(CLOSE, payload[:2]))  # answer it, as a client should
                        break
                    if opcode == TEXT:
                        seen.messages.append(payload.decode())
                else:
                    seen.close = "no close frame after many frames"
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                seen.close = f"no close frame ({type(exc).__name__})"
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        finally:
            writer.close()
    return seen


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        pytest.param(frame(0x3, b"reserved opcode"), "1002", id="reserved-opcode-1002"),
        pytest.param(frame(CLOSE, struct.pack("!H", 999)), "1002", id="invalid-close-code-1002"),
        pytest.param(frame(TEXT, b"\xc3\x28 invalid utf-8"), "1007", id="invalid-utf8-raw-1007"),
    ],
)
async def test_bad_frame_mid_stream_raw(gateway: WsgateProcess, bad: bytes, code: str) -> None:
    """Case 3 (d), and (c) again, from a raw socket: frames no library sends."""
    outcomes = []
    for _ in range(RUNS):
        seen = await still_sending_raw(gateway, "/echo", bad)
        outcomes.append(seen.outcome(seen.messages))
    check_runs(outcomes, f"{code}, echoed BEFORE")


# --- 4. a client that never answers the close frame ---


async def never_answers(gw: WsgateProcess, path: str, trigger: list[bytes]) -> tuple[str, float | None]:
    """Send ``trigger``, read the close frame, never answer it: seconds until the server ends TCP."""
    async with asyncio.timeout(10 * CLOSE_TIMEOUT + 5):
        reader, writer = await raw_open(gw, path)
        try:
            writer.write(b"".join(trigger))
            while True:
                opcode, payload = await read_frame(reader)
                if opcode == CLOSE:
                    break
            seen = close_code(payload)
            start = time.monotonic()
            try:
                rest = await reader.read(1 << 16)
                while rest:  # a close frame must be the last frame, but measure the end of TCP anyway
                    rest = await reader.read(1 << 16)
            except ConnectionError:
                pass
            return seen, time.monotonic() - start
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            return f"no close frame ({type(exc).__name__})", None
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("path", "trigger", "expected"),
    [
        pytest.param("/chat-ct", [frame(TEXT, f"m{i}".encode()) for i in range(60)], "1008 rate limit exceeded",
                     id="rate-limit-1008"),
        pytest.param("/chat-ct", [frame(0x2, b"binary to a text-only handler")], "1003", id="wrong-kind-1003"),
    ],
)
async def test_unanswered_close_ends_tcp_after_close_timeout(
    gateway: WsgateProcess, path: str, trigger: list[bytes], expected: str,
) -> None:
    """Case 4: the server gives up on a silent client after close_timeout, not before.

    The client reads (so that it can time the end of TCP) but never sends its close frame.
    """
    low, high = 0.8 * CLOSE_TIMEOUT, 3 * CLOSE_TIMEOUT
    outcomes = []
    # The runs wait side by side: each on its own connection, each timed from its own close frame.
    for seen, elapsed in await asyncio.gather(*(never_answers(gateway, path, trigger) for _ in range(RUNS))):
        if elapsed is None or not seen.startswith(expected):
            outcomes.append(f"saw {seen}")
        elif not low <= elapsed <= high:
            outcomes.append(f"TCP ended {elapsed:.1f}s after the close frame")
        else:
            outcomes.append("ok")
    check_runs(outcomes, "ok")


async def after_bad_frame(gw: WsgateProcess, path: str, trigger: bytes) -> tuple[str, float, float]:
    """Send a frame the server cannot parse, read its close frame, never answer, keep writing.

    Returns the close frame seen, the seconds until the server's FIN (EOF), and the seconds
    until the server dropped the socket (a write fails).
    """
    async with asyncio.timeout(10 * CLOSE_TIMEOUT + 5):
        reader, writer = await raw_open(gw, path)
        try:
            writer.write(trigger)
            while (found := await read_frame(reader))[0] != CLOSE:
                pass
            start = time.monotonic()
            assert await reader.read() == b"", "a frame after the close frame"
            fin = time.monotonic() - start
            while True:
                writer.write(frame(TEXT, b"unanswered"))
                try:
                    await writer.drain()
                except ConnectionError:
                    return close_code(found[1]), fin, time.monotonic() - start
                await asyncio.sleep(0.01)
        finally:
            writer.close()


async def test_after_a_bad_frame_the_server_half_closes_and_drops_a_silent_client_at_close_timeout(
    gateway: WsgateProcess,
) -> None:
    """Nothing can be parsed after a malformed frame (here one over max_message_size), so
    the gateway sends its close frame and its FIN at once, goes on reading (and discarding)
    so that no reset destroys the close frame, and drops the socket at close_timeout."""
    outcomes = []
    runs = (after_bad_frame(gateway, "/echo-ct", frame(TEXT, b"x" * 2048)) for _ in range(RUNS))
    for seen, fin, dropped in await asyncio.gather(*runs):  # side by side, as above
        if not seen.startswith("1009"):
            outcomes.append(f"saw {seen}")
        elif fin > 0.3 * CLOSE_TIMEOUT:
            outcomes.append(f"FIN {fin:.2f}s after the close frame")
        elif not 0.8 * CLOSE_TIMEOUT <= dropped <= 3 * CLOSE_TIMEOUT:
            outcomes.append(f"socket dropped {dropped:.2f}s after the close frame")
        else:
            outcomes.append("ok")
    check_runs(outcomes, "ok")
