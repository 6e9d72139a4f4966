"""Property-based tests (Hypothesis) of the wire, against one real ``python -m wsgate``
process for the whole module, spoken to with raw sockets.

- Arbitrary bytes as an HTTP request (valid or garbage request line, random headers,
  line endings, bodies) get an HTTP answer or a clean close, never a hang; ``101`` only
  for an HTTP/1.1+ GET that asked for a WebSocket; a partial or idle request is dropped
  after ``server.handshake_timeout``; a client gone before its 101 is not an error.
- After a valid handshake on ``/ws`` (echo): arbitrary bytes, and frame soups with random
  opcodes, RSV bits, mask bits and lying lengths, get echoes and at most one close frame,
  with a code the gateway may send, then the end of TCP. Scripts built deliberately
  (valid messages, fragmented or not, with pings, then one violation, an unmasked frame
  among them) get exactly the echoes and pongs owed and the RFC 6455 close code for that
  violation.
- On ``/chat`` (text only): arbitrary rooms, names and texts, JSON or not; a binary
  message closes with 1003, and every data frame the server sends is a JSON object.

After every example the process has finished every session, logged no traceback and no
ERROR line, and still answers an echo round trip.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from conftest import WsgateProcess
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

MAX_MESSAGE = 4096
TIMEOUT = 3.0  # seconds any single exchange may take before it counts as a hang
HANDSHAKE_TIMEOUT = 1.0
ANSWER_WAIT = 0.15  # how long a request waits for an answer before the client ends its side
SERVER_CODES = frozenset({1000, 1002, 1003, 1007, 1008, 1009, 1011})
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
VALID_CLIENT_CODES = [*range(1000, 1004), *range(1007, 1015)]
CONFIG = {
    "server": {"host": "127.0.0.1", "port": 0, "handshake_timeout": f"{HANDSHAKE_TIMEOUT}s"},
    "policy": {"max_message_size": MAX_MESSAGE, "close_timeout": "1s"},
    "endpoints": [{"path": "/ws", "handler": "echo"}, {"path": "/chat", "handler": "chat"}],
}
_LISTENING = re.compile(r"wsgate listening on http://(\S+?):(\d+)/")
_SESSION = re.compile(r"connection (open|closed) conn=(\S+)")

WIRE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the gateway -----------------------------------------------------------------------------


class Gateway:
    """The module's wsgate process; ``mark`` is where the current example's output starts."""

    def __init__(self, process: WsgateProcess, port: int) -> None:
        self.process = process
        self.port = port
        self.mark = 0

    def __repr__(self) -> str:
        return f"Gateway(port={self.port})"

    def lines(self) -> list[str]:
        self.process.output  # noqa: B018 - drains the pump's queue into .lines
        return self.process.lines

    def begin(self) -> None:
        self.mark = len(self.lines())

    def open_sessions(self) -> set[str]:
        opened: set[str] = set()
        for line in self.lines():
            if m := _SESSION.search(line):
                (opened.add if m.group(1) == "open" else opened.discard)(m.group(2))
        return opened

    def settle(self) -> None:
        """Every session ended, no traceback or ERROR logged, and an echo round trip works."""
        self._wait_sessions_closed()
        round_trip(self.port)
        self._wait_sessions_closed()
        assert self.process.proc.poll() is None, f"the gateway exited:\n{self.process.output}"
        bad = [line for line in self.lines()[self.mark:] if "Traceback" in line or " ERROR " in line]
        assert not bad, "the gateway logged:\n" + "\n".join(self.lines()[self.mark:])

    def _wait_sessions_closed(self) -> None:
        deadline = time.monotonic() + TIMEOUT
        while (still := self.open_sessions()) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not still, f"sessions {sorted(still)} never ended:\n" + "\n".join(self.lines()[self.mark:])


def _pump(stream: Iterator[str], handle: WsgateProcess) -> None:
    for line in stream:
        handle._queue.put(line.rstrip("\n"))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config: Path = tmp_path_factory.mktemp("wire") / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("WSGATE_BROKER", "WSGATE_API_TOKEN")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsgate", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=config.parent,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    handle = WsgateProcess(proc)
    assert proc.stdout is not None
    threading.Thread(target=_pump, args=(proc.stdout, handle), daemon=True).start()
    try:
        m = handle.wait_for_line(_LISTENING.pattern, timeout=20)
        yield Gateway(handle, int(m.group(2)))
    finally:
        handle.stop()


# --- a raw client ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A client frame as it goes on the wire, right or wrong."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    mask: bytes | None = b"\x00\x00\x00\x00"
    declared: int | None = None  # the length field, if it lies
    form: str = "min"  # "min", "16" or "64": how the length is encoded
    cut: int | None = None  # send only this many payload bytes

    def wire(self) -> bytes:
        n = len(self.payload) if self.declared is None else self.declared
        first = (0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode
        bit = 0x80 if self.mask is not None else 0
        form = self.form
        if form == "min":
            form = "7" if n < 126 else "16" if n < 65536 else "64"
        if form == "7":
            head = bytes((first, bit | n))
        elif form == "16":
            head = struct.pack("!BBH", first, bit | 126, n)
        else:
            head = struct.pack("!BBQ", first, bit | 127, n)
        payload = self.payload if self.cut is None else self.payload[: self.cut]
        if self.mask is not None:
            head += self.mask
            payload = bytes(b ^ self.mask[i % 4] for i, b in enumerate(payload))
        return head + payload


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


@dataclass
class Received:
    frames: list[tuple[int, bytes]]
    ended: str  # "eof" or "reset"
    raw: bytes

    def of(self, *opcodes: int) -> list[tuple[int, bytes]]:
        return [f for f in self.frames if f[0] in opcodes]

    def close(self) -> tuple[int | None, bytes] | None:
        closes = self.of(CLOSE)
        if not closes:
            return None
        assert len(closes) == 1, f"several close frames: {self.frames}"
        assert self.frames[-1][0] == CLOSE, f"frames after the close frame: {self.frames}"
        payload = closes[0][1]
        assert len(payload) != 1, "a close frame with a one-byte payload"
        return (struct.unpack("!H", payload[:2])[0] if payload else None), payload[2:]


def parse_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The server's frames; each must be well formed (RFC 6455 section 5)."""
    frames = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 2, f"a cut frame at the end: {data[pos:]!r}"
        b0, b1 = data[pos], data[pos + 1]
        n, head = b1 & 0x7F, 2
        if n == 126:
            n, head = struct.unpack("!H", data[pos + 2 : pos + 4])[0], 4
        elif n == 127:
            n, head = struct.unpack("!Q", data[pos + 2 : pos + 10])[0], 10
        assert pos + head + n <= len(data), f"a cut frame at the end: {data[pos:]!r}"
        opcode = b0 & 0x0F
        assert b0 & 0x80, f"the server fragmented a frame: {data[pos:pos + 12]!r}"
        assert not b0 & 0x70, f"the server set RSV bits: {data[pos:pos + 12]!r}"
        assert not b1 & 0x80, "the server masked a frame"
        assert opcode in (TEXT, BINARY, CLOSE, PING, PONG), f"server opcode {opcode}"
        if opcode >= CLOSE:
            assert n <= 125, f"a server control frame of {n} bytes"
        if opcode == TEXT:
            data[pos + head : pos + head + n].decode()  # the server's text is UTF-8
        frames.append((opcode, data[pos + head : pos + head + n]))
        pos += head + n
    return frames


def read_to_end(sock: socket.socket, data: bytes = b"") -> tuple[bytes, str]:
    """Everything until the server ends TCP; AssertionError if it does not within TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"the server did not end TCP within {TIMEOUT}s; received {data[:300]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, "reset"
        except TimeoutError:
            continue
        if not chunk:
            return data, "eof"
        data += chunk


def upgrade_request(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def open_ws(port: int, path: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(upgrade_request(port, path))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, f"closed during the handshake: {head!r}"
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock, rest


def exchange(port: int, path: str, data: bytes) -> Received:
    """Handshake, send ``data``, end our side, read everything until the server ends TCP."""
    sock, rest = open_ws(port, path)
    with sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        raw, ended = read_to_end(sock, rest)
    return Received(parse_server_frames(raw), ended, raw)


def round_trip(port: int) -> None:
    """The gateway still serves: echo one text message, then a clean 1000 close."""
    text = b"still there?"
    sock, rest = open_ws(port, "/ws")
    with sock:
        sock.sendall(Frame(TEXT, text).wire())
        data = rest
        while len(data) < 2 + len(text):
            chunk = sock.recv(4096)
            assert chunk, f"no echo: {data!r}"
            data += chunk
        sock.sendall(Frame(CLOSE, close_payload(1000)).wire())
        raw, ended = read_to_end(sock, data)
    assert parse_server_frames(raw) == [(TEXT, text), (CLOSE, close_payload(1000))], raw
    assert ended == "eof"


# --- (a) the HTTP request head -----------------------------------------------------------------

request_lines = st.one_of(
    st.sampled_from([
        b"GET /ws HTTP/1.1", b"GET /chat HTTP/1.1", b"GET /chat?room=a&name=b HTTP/1.1", b"GET / HTTP/1.1",
        b"GET /healthz HTTP/1.0", b"GET /readyz HTTP/1.1", b"GET /metrics HTTP/1.1", b"POST /api/publish HTTP/1.1",
        b"POST /api/reload HTTP/1.1", b"GET /static/../../etc/passwd HTTP/1.1", b"GET /ws HTTP/2.0",
        b"GET /ws HTTP/1.1 extra", b"OPTIONS * HTTP/1.1", b"CONNECT 127.0.0.1:1 HTTP/1.1", b"GET ws HTTP/1.1",
        b"get /ws http/1.1", b"GET /ws", b"GET  /ws  HTTP/1.1", b"GET /ws?" + b"a" * 9000 + b" HTTP/1.1",
        b"PRI * HTTP/2.0",
    ]),
    st.tuples(
        st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"XYZ", b""]) | st.binary(max_size=8),
        st.sampled_from([b"/ws", b"/chat", b"/", b"/nope", b"/ws/", b"//ws", b"/%ff", b"/ws#x", b"*"])
        | st.binary(max_size=20),
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/9.9", b""]) | st.binary(max_size=10),
    ).map(b" ".join),
    st.binary(max_size=60),
)
header_names = st.sampled_from([
    b"Host", b"Upgrade", b"Connection", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version", b"Sec-WebSocket-Protocol",
    b"Sec-WebSocket-Extensions", b"Origin", b"Content-Length", b"Transfer-Encoding", b"X-Forwarded-For",
    b"X-Forwarded-Proto", b"Expect", b"Authorization", b"Cookie", b"upgrade", b"HOST", b" Host", b"Host ",
]) | st.binary(max_size=20)
header_values = st.sampled_from([
    b"websocket", b"WebSocket", b"Upgrade", b"keep-alive, Upgrade", b"close", b"13", b"8", b"",
    b"dGhlIHNhbXBsZSBub25jZQ==", b"not base64", b"permessage-deflate; client_max_window_bits",
    b"permessage-deflate; server_max_window_bits=7", b"permessage-deflate; server_max_window_bits=99", b"x-unknown",
    b"chunked", b"gzip, chunked", b"0", b"-1", b"99999999999999999999999", b"5", b"http://127.0.0.1", b"null",
    b"100-continue", b"127.0.0.1", b"[::1]:80", b"Bearer x", b"1.2.3.4, 5.6.7.8", b"\xff\xfe", b"a\x00b",
    b"x" * 9000,
]) | st.binary(max_size=40)
line_ends = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"])


UPGRADE_HEADERS = [
    (b"Host", b"127.0.0.1"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"Sec-WebSocket-Version", b"13"),
]


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(["upgrade", "upgrade", "upgrade", "any", "bytes"]))
    if mode == "bytes":
        return draw(st.binary(max_size=300))
    if mode == "upgrade":  # a valid upgrade, mutated: headers dropped, changed, added, reordered
        mostly = st.sampled_from([True, True, True, True, False])
        line = draw(st.sampled_from([b"GET /ws HTTP/1.1", b"GET /chat HTTP/1.1", b"GET /ws?x=1 HTTP/1.1"])
                    if draw(mostly) else request_lines)
        headers = [(n, v if draw(mostly) else draw(header_values)) for n, v in UPGRADE_HEADERS if draw(mostly)]
        headers += draw(st.lists(st.tuples(header_names, header_values), max_size=2))
        headers = draw(st.permutations(headers))
        end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
        head = end.join([line, *(n + b": " + v for n, v in headers)]) + end + end
        return head + draw(st.sampled_from([b"", b"", b"\x81\x80\0\0\0\0"]) | st.binary(max_size=20))
    end = draw(line_ends)
    parts = [draw(request_lines)]
    for _ in range(draw(st.integers(0, 8))):
        sep = draw(st.sampled_from([b": ", b":", b" : ", b":\t", b"", b"::"]))
        parts.append(draw(header_names) + sep + draw(header_values))
    head = end.join(parts) + end
    head += draw(st.sampled_from([b"\r\n", b"\n", b"", b"\r\n\r\n"]))
    return head + draw(st.binary(max_size=40))


def _asked_for_websocket(request: bytes) -> bool:
    """Loosely: an RFC 6455 section 4.1 opening handshake, "an HTTP/1.1 or higher GET request"."""
    low = request.lower()
    return (
        re.match(rb"GET /(ws|chat)(\?[^ \r\n]*)? HTTP/(1\.[1-9]|[2-9]\.[0-9])\r?\n", request) is not None
        and b"websocket" in low
        and b"sec-websocket-key" in low
        and b"sec-websocket-version" in low
    )


@WIRE
@given(request=request_heads())
@example(request=upgrade_request(0, "/ws"))
@example(request=b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
@example(request=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS ClientHello
@example(request=b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: \x80\r\nSec-WebSocket-Version: 13\r\n\r\n")
@example(request=b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: \x80\r\n\r\n")
@example(request=b"HEAD /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
@example(request=b"GET /ws HTTP/1.0\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
def test_any_request_head_gets_an_http_answer_or_a_close(gateway: Gateway, request: bytes) -> None:
    gateway.begin()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(request)
            # aiohttp drops a request whose client half-closes before the answer: wait
            # a moment for one (an unfinished head gets none), then end our side.
            select.select([sock], [], [], ANSWER_WAIT)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer, _ = read_to_end(sock)
    if not answer:
        event("closed without an answer")
    else:
        m = re.match(rb"HTTP/\d\.\d (\d{3}) ", answer)  # aiohttp answers in the request's version
        assert m, f"not an HTTP answer: {answer[:200]!r}"
        status = int(m.group(1))
        event(f"HTTP {status}")  # 5xx is allowed; a traceback behind it is not (settle)
        if status == 101:
            assert _asked_for_websocket(request), f"101 for a request that did not ask for it: {answer[:300]!r}"
    gateway.settle()


@pytest.mark.parametrize("how", ["fin", "close", "reset"])
def test_a_client_gone_before_the_101_is_no_error(gateway: Gateway, how: str) -> None:
    """A valid upgrade, then FIN, close or RST at once: no traceback in the log."""
    gateway.begin()
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=TIMEOUT) as sock:
            sock.sendall(upgrade_request(gateway.port, "/ws"))
            if how == "fin":
                sock.shutdown(socket.SHUT_WR)
                read_to_end(sock)
            elif how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.2)
    gateway.settle()


partial_heads = st.one_of(
    # a request that never ends: no blank line
    st.tuples(request_lines, st.lists(header_names.map(lambda n: n + b": x"), max_size=3)).map(
        lambda t: b"\r\n".join([t[0], *t[1]]) + b"\r\n"
    ).filter(lambda h: b"\r\n\r\n" not in h and b"\n\n" not in h),
    st.binary(max_size=30).filter(lambda h: b"\n" not in h and b"\r" not in h),
    # a complete plain HTTP request, then an idle keep-alive connection
    st.sampled_from([b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"GET /nope HTTP/1.1\r\n\r\n"]),
    # a request whose body never comes
    st.sampled_from([b"POST /api/publish HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
                     b"GET /ws HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"]),
)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads=st.lists(partial_heads, min_size=8, max_size=8))
def test_unfinished_or_idle_requests_are_dropped_after_the_handshake_timeout(
    gateway: Gateway, heads: list[bytes]
) -> None:
    gateway.begin()
    socks = [socket.create_connection(("127.0.0.1", gateway.port), timeout=TIMEOUT) for _ in heads]
    try:
        for sock, head in zip(socks, heads, strict=True):
            sock.sendall(head)  # and nothing more: no end of the head, no FIN
        started = time.monotonic()
        for sock, head in zip(socks, heads, strict=True):
            answer, _ = read_to_end(sock)  # fails after TIMEOUT (= handshake_timeout + 2 s)
            assert not answer or answer.startswith(b"HTTP/1."), (head, answer[:200])
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT + 2
    finally:
        for sock in socks:
            sock.close()
    gateway.settle()


# --- (b) frames after the handshake ---------------------------------------------------------

masks = st.binary(min_size=4, max_size=4)  # a client masks every frame; an unmasked one is a violation


@st.composite
def frame_soup(draw: st.DrawFn) -> bytes:
    """Frames whose every field is random: opcode, FIN, RSV, mask, length form, lying lengths."""
    out = b""
    for _ in range(draw(st.integers(1, 6))):
        payload = draw(st.binary(max_size=140))
        declared = draw(st.none() | st.integers(0, 200)
                        | st.sampled_from([MAX_MESSAGE, MAX_MESSAGE + 1, 2**63, 2**64 - 1]))
        form = draw(st.sampled_from(["min", "16", "64"]))
        if (len(payload) if declared is None else declared) >= 65536:
            form = "64"
        out += Frame(
            opcode=draw(st.integers(0, 15)), payload=payload, fin=draw(st.booleans()), rsv=draw(st.integers(0, 7)),
            mask=draw(st.none() | masks), declared=declared, form=form,
        ).wire()
    return out


def client_close_codes(data: bytes) -> set[int]:
    """Codes of every close frame a lenient reader could find in ``data``."""
    codes, pos = set(), 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        n, head = b1 & 0x7F, 2
        if n == 126 and len(data) - pos >= 4:
            n, head = struct.unpack("!H", data[pos + 2 : pos + 4])[0], 4
        elif n == 127 and len(data) - pos >= 10:
            n, head = struct.unpack("!Q", data[pos + 2 : pos + 10])[0], 10
        mask = data[pos + head : pos + head + 4] if b1 & 0x80 else b"\0\0\0\0"
        head += 4 if b1 & 0x80 else 0
        payload = data[pos + head : pos + head + min(n, 2)]
        if b0 & 0x0F == CLOSE and len(payload) == 2 and len(mask) == 4:
            codes.add(struct.unpack("!H", bytes(b ^ mask[i] for i, b in enumerate(payload)))[0])
        pos += head + n
    return codes


@WIRE
@given(data=st.binary(max_size=400) | frame_soup())
@example(data=b"\x88\x80\x00\x00\x00\x00")  # close, no code
@example(data=b"\x81\xff" + struct.pack("!Q", 2**64 - 1))  # text of 2**64 - 1 bytes announced
@example(data=b"\x81\x85\x00\x00\x00\x00hel")  # length lies: 5 announced, 3 sent
def test_arbitrary_bytes_after_the_handshake(gateway: Gateway, data: bytes) -> None:
    gateway.begin()
    rx = exchange(gateway.port, "/ws", data)
    close = rx.close()
    if close is not None:
        code, _ = close
        assert code is not None, "a close frame without a code"
        assert code in SERVER_CODES | client_close_codes(data), f"close code {code} for {data!r}"
    for opcode, _ in rx.frames:
        assert opcode in (TEXT, BINARY, PONG, PING, CLOSE)
    gateway.settle()


# Deliberate scripts: valid traffic, then one thing that decides how the connection ends.


@dataclass
class Script:
    frames: list[Frame] = field(default_factory=list)
    echoes: list[tuple[int, bytes]] = field(default_factory=list)  # owed data frames, in order
    pings: list[bytes] = field(default_factory=list)  # owed pongs, in order
    code: int | None = None  # the close code owed; None: the server may just end TCP
    reason: bytes | None = None  # the close reason owed, if it is known exactly
    trailing: bytes = b""
    what: str = ""

    def wire(self) -> bytes:
        return b"".join(f.wire() for f in self.frames) + self.trailing


def _invalid_utf8(valid: str, where: int, bad: bytes) -> bytes:
    """``valid`` as UTF-8 with ``bad`` inserted at a character boundary near ``where``."""
    raw = valid.encode()
    cut = min(where, len(raw))
    while 0 < cut < len(raw) and raw[cut] & 0xC0 == 0x80:
        cut -= 1
    return raw[:cut] + bad + raw[cut:]


BAD_UTF8 = [b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80"]
INVALID_CLOSE_CODES = st.one_of(
    st.integers(0, 999), st.sampled_from([1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]),
    st.integers(1016, 2999), st.integers(5000, 65535),
)


@st.composite
def payload_of(draw: st.DrawFn, opcode: int) -> bytes:
    size = draw(st.sampled_from(["small", "small", "small", "max"]))
    if size == "max":  # exactly max_message_size: the largest message allowed
        if opcode == TEXT:
            unit = draw(st.sampled_from(["a", "é", "€", "😀"])).encode()
        else:
            unit = draw(st.binary(min_size=1, max_size=8))
        raw = unit * (MAX_MESSAGE // len(unit))
        return raw + b"a" * (MAX_MESSAGE - len(raw))
    if opcode == TEXT:
        return draw(st.text(max_size=60)).encode()
    return draw(st.binary(max_size=200))


def _split(draw: st.DrawFn, payload: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=3)))
    bounds = [0, *cuts, len(payload)]
    return [payload[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def control_frame(draw: st.DrawFn, script: Script) -> Frame:
    opcode = draw(st.sampled_from([PING, PONG]))
    payload = draw(st.binary(max_size=125))
    if opcode == PING:
        script.pings.append(payload)
    return Frame(opcode, payload, mask=draw(masks))


@st.composite
def message_frames(draw: st.DrawFn, script: Script, opcode: int, payload: bytes, finish: bool = True) -> list[Frame]:
    """A data message, maybe fragmented, maybe with pings and pongs between its fragments."""
    pieces = _split(draw, payload)
    frames = []
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        frames.append(Frame(opcode if i == 0 else CONT, piece, fin=last and finish, mask=draw(masks)))
        if not last and draw(st.integers(0, 3)) == 0:
            frames.append(draw(control_frame(script)))
    return frames


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    script = Script()
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 3)) == 0:
            script.frames.append(draw(control_frame(script)))
            continue
        opcode = draw(st.sampled_from([TEXT, BINARY]))
        payload = draw(payload_of(opcode))
        script.frames += draw(message_frames(script, opcode, payload))
        script.echoes.append((opcode, payload))
    mask = draw(masks)
    ending = draw(st.sampled_from([
        "close", "close-empty", "close-mid-message", "close-bad-code", "close-one-byte", "close-bad-utf8",
        "reserved-opcode", "rsv-bits", "big-control", "fragmented-control", "orphan-continuation",
        "new-message-mid-message", "text-bad-utf8", "too-big", "too-big-fragmented", "truncated", "unmasked",
    ]))
    script.what = ending
    reason_text = st.text(max_size=40).map(str.encode).filter(lambda r: len(r) <= 123)
    f: list[Frame]
    if ending in ("close", "close-mid-message"):
        code = draw(st.sampled_from(VALID_CLIENT_CODES) | st.integers(3000, 4999))
        reason = draw(reason_text)
        f = []
        if ending == "close-mid-message":  # control frames may come between fragments
            opcode = draw(st.sampled_from([TEXT, BINARY]))
            f = draw(message_frames(script, opcode, draw(payload_of(opcode)), finish=False))
        f.append(Frame(CLOSE, close_payload(code, reason), mask=mask))
        script.code, script.reason = code, reason
    elif ending == "close-empty":
        f, script.code, script.reason = [Frame(CLOSE, b"", mask=mask)], 1000, b""
    elif ending == "close-bad-code":
        f, script.code = [Frame(CLOSE, close_payload(draw(INVALID_CLOSE_CODES), draw(reason_text)), mask=mask)], 1002
    elif ending == "close-one-byte":
        f, script.code = [Frame(CLOSE, draw(st.binary(min_size=1, max_size=1)), mask=mask)], 1002
    elif ending == "close-bad-utf8":
        reason = _invalid_utf8(draw(st.text(max_size=20)), draw(st.integers(0, 60)), draw(st.sampled_from(BAD_UTF8)))
        code = draw(st.sampled_from(VALID_CLIENT_CODES) | st.integers(3000, 4999))
        f, script.code = [Frame(CLOSE, close_payload(code, reason[:123]), mask=mask)], 1007
    elif ending == "reserved-opcode":
        op = draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]))
        f, script.code = [Frame(op, draw(st.binary(max_size=20)), fin=draw(st.booleans()), mask=mask)], 1002
    elif ending == "rsv-bits":
        op = draw(st.sampled_from([TEXT, BINARY, PING, PONG, CLOSE]))
        f, script.code = [Frame(op, b"", rsv=draw(st.integers(1, 7)), mask=mask)], 1002
    elif ending == "big-control":
        op = draw(st.sampled_from([PING, PONG, CLOSE]))
        body = close_payload(1000, b"x" * 130) if op == CLOSE else draw(st.binary(min_size=126, max_size=300))
        f, script.code = [Frame(op, body, mask=mask)], 1002
    elif ending == "fragmented-control":
        op = draw(st.sampled_from([PING, PONG, CLOSE]))
        f, script.code = [Frame(op, close_payload(1000) if op == CLOSE else b"x", fin=False, mask=mask)], 1002
    elif ending == "orphan-continuation":
        f = [Frame(CONT, draw(st.binary(max_size=20)), fin=draw(st.booleans()), mask=mask)]
        script.code = 1002
    elif ending == "new-message-mid-message":
        f = [Frame(draw(st.sampled_from([TEXT, BINARY])), b"abc", fin=False, mask=mask),
             Frame(draw(st.sampled_from([TEXT, BINARY])), b"def", fin=draw(st.booleans()), mask=mask)]
        script.code = 1002
    elif ending == "text-bad-utf8":
        raw = _invalid_utf8(draw(st.text(max_size=30)), draw(st.integers(0, 90)), draw(st.sampled_from(BAD_UTF8)))
        f, script.code = draw(message_frames(script, TEXT, raw)), 1007
    elif ending == "too-big":
        declared = draw(st.integers(MAX_MESSAGE + 1, 2**64 - 1) | st.sampled_from([MAX_MESSAGE + 1, 65535, 65536]))
        op = draw(st.sampled_from([TEXT, BINARY]))
        f = [Frame(op, b"x" * 4, declared=declared, form="64" if declared > 65535 else "16", mask=mask, cut=4)]
        script.code = 1009
    elif ending == "too-big-fragmented":
        first = draw(st.integers(0, MAX_MESSAGE))
        rest = draw(st.integers(MAX_MESSAGE + 1 - first, MAX_MESSAGE + 1))
        op = draw(st.sampled_from([TEXT, BINARY]))
        f = [Frame(op, b"a" * first, fin=False, mask=mask),
             Frame(CONT, b"a" * 4, declared=rest, form="16", mask=mask, cut=min(4, rest))]
        script.code = 1009
    elif ending == "unmasked":  # RFC 6455 section 5.1: the server must close
        op = draw(st.sampled_from([TEXT, BINARY, PING, PONG, CLOSE]))
        body = close_payload(1000) if op == CLOSE else draw(st.binary(max_size=20))
        f, script.code, script.reason = [Frame(op, body, mask=None)], 1002, b"client frames must be masked"
    else:  # truncated: the length announces more than is ever sent, then FIN
        declared = draw(st.integers(1, MAX_MESSAGE))
        body = b"a" * declared
        f = [Frame(draw(st.sampled_from([TEXT, BINARY])), body, mask=mask, cut=draw(st.integers(0, declared - 1)))]
        script.code = None
    script.frames += f
    if ending != "truncated":
        script.trailing = draw(st.binary(max_size=30))  # whatever follows is never parsed
    return script


@WIRE
@given(script=scripts())
def test_scripted_frames_get_their_echoes_and_the_rfc_close_code(gateway: Gateway, script: Script) -> None:
    event(script.what)
    gateway.begin()
    rx = exchange(gateway.port, "/ws", script.wire())
    close = rx.close()
    echoes = rx.of(TEXT, BINARY)
    if script.code is None:  # the client vanished mid-frame: echoes may be cut short, no close owed
        assert echoes == script.echoes[: len(echoes)]
        assert close is None or close[0] in SERVER_CODES, close
    else:
        assert echoes == script.echoes, f"{script.what}: echoes"
        assert [p for _, p in rx.of(PONG)] == script.pings, f"{script.what}: pongs"
        assert close is not None, f"{script.what}: no close frame; got {rx.frames}"
        assert close[0] == script.code, f"{script.what}: close code {close[0]}, not {script.code}: {close}"
        if script.reason is not None:
            assert close[1] == script.reason, f"{script.what}: close reason"
        assert rx.ended == "eof", f"{script.what}: TCP reset instead of closed"
    gateway.settle()


# --- /chat: text only, JSON out ----------------------------------------------------------------

CHAT_TYPES = {"welcome", "history", "join", "leave", "message", "error", "dropped"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
chat_texts = st.one_of(
    st.text(max_size=50),
    st.fixed_dictionaries({"type": st.sampled_from(["message", "join", ""]) | json_values,
                           "text": st.text(max_size=30) | json_values}).map(json.dumps),
    json_values.map(json.dumps),
    st.sampled_from([
        "{", "{}", '{"type": "message"}', '{"text": null}', "  {\"text\": \"hi\"}", '{"text": "\\ud800"}',
        '{"text": "a\\u0000b"}', '{"text": "' + "x" * 2001 + '"}', "x" * 2001, " ", "\u200b",
        '{"a":' + "[" * 1500, '{"text": 1e400}', '{"text": "x", "text": 5}',
    ]),
)
room_names = st.none() | st.text(max_size=8) | st.sampled_from(
    ["lobby", "r-1", "", "a" * 65, "bad room", "\uff52\uff4f\uff4f\uff4d", "x/y"])  # full-width "room"
user_names = st.none() | st.sampled_from(["alice", "", "a" * 100, "\u200b", "admin\u202e"]) | st.text(max_size=8)


@dataclass
class ChatScript:
    query: str
    frames: list[Frame]
    code: int
    reason: bytes | None
    sent: list[str | bytes]


def _room_is_valid(room: str) -> bool:
    """The chat's rule (its error text): 1-64 letters, digits, '.', '_' or '-', after NFKC."""
    return re.fullmatch(r"[\w.-]{1,64}", unicodedata.normalize("NFKC", room)) is not None


@st.composite
def chat_scripts(draw: st.DrawFn) -> ChatScript:
    params = []
    room, name = draw(room_names), draw(user_names)
    if room is not None:
        params.append("room=" + quote(room, safe=""))
    if name is not None:
        params.append("name=" + quote(name, safe=""))
    query = "?" + "&".join(params) if params else ""
    frames: list[Frame] = []
    sent: list[str | bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["text", "text", "text", "binary", "ping"]))
        if kind == "ping":
            frames.append(Frame(PING, draw(st.binary(max_size=20)), mask=draw(masks)))
            continue
        if kind == "text":
            text = draw(chat_texts)
            sent.append(text)
            payload = text.encode()
        else:
            payload = draw(st.binary(max_size=20))
            sent.append(payload)
        assert len(payload) <= MAX_MESSAGE
        frames.append(Frame(TEXT if kind == "text" else BINARY, payload, mask=draw(masks)))
    code = draw(st.sampled_from(VALID_CLIENT_CODES) | st.integers(3000, 4999))
    reason = draw(st.text(max_size=20).map(str.encode).filter(lambda r: len(r) <= 123))
    frames.append(Frame(CLOSE, close_payload(code, reason), mask=draw(masks)))
    if room and not _room_is_valid(room):
        return ChatScript(query, frames, 1008, None, sent)
    if any(isinstance(m, bytes) for m in sent):
        return ChatScript(query, frames, 1003, None, sent)
    return ChatScript(query, frames, code, reason, sent)


@WIRE
@given(script=chat_scripts())
@example(script=ChatScript("", [Frame(TEXT, b'{"a":' + b"[" * 1500), Frame(CLOSE, close_payload(1000))], 1000, b"",
                           []))
@example(script=ChatScript("", [Frame(TEXT, b'{"text": "\\ud800"}'), Frame(CLOSE, close_payload(1000))], 1000, b"",
                           []))
def test_chat_takes_any_text_and_refuses_binary(gateway: Gateway, script: ChatScript) -> None:
    gateway.begin()
    rx = exchange(gateway.port, "/chat" + script.query, b"".join(f.wire() for f in script.frames))
    for opcode, payload in rx.of(TEXT, BINARY):
        assert opcode == TEXT, f"chat sent a binary frame: {payload!r}"
        event = json.loads(payload)
        assert isinstance(event, dict), event
        assert event.get("type") in CHAT_TYPES, event
    close = rx.close()
    assert close is not None, f"no close frame; got {rx.frames}"
    assert close[0] == script.code, f"close {close}, not {script.code}, for {script.query!r} {script.sent!r}"
    if script.reason is not None:
        assert close[1] == script.reason
    assert rx.ended == "eof"
    gateway.settle()


def test_the_gateway_survived_the_module(gateway: Gateway) -> None:
    """Whatever ran before (in any order), the process is up and logged no traceback at all."""
    gateway.mark = 0
    gateway.settle()
    assert "Traceback" not in gateway.process.output
