"""Limits against live sockets: caps, rate limit, slow handshakes, close timeout, deflate bombs, proxies."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
import zlib
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp import WSMsgType
from prometheus_client.parser import text_string_to_metric_families
from wsgate.builtins.echo import Echo

from wsgate import Connection, Handler
from wsgate.testing import GatewayServer, run_gateway, wait_until


class CountingEcho(Echo):
    """Echo that counts instances and on_connect calls (refused handshakes must reach neither)."""

    instances: ClassVar[int] = 0
    connects: ClassVar[int] = 0

    def __init__(self, options: Any, context: Any) -> None:
        super().__init__(options, context)
        CountingEcho.instances += 1

    async def on_connect(self, conn: Connection) -> None:
        CountingEcho.connects += 1


class RemoteReporter(Handler):
    """Sends the client the address the gateway sees for it."""

    async def on_connect(self, conn: Connection) -> None:
        await conn.send(conn.remote)


@pytest.fixture(autouse=True)
def _reset() -> None:
    CountingEcho.instances = CountingEcho.connects = 0


async def refused_status(gw: GatewayServer, path: str, **kwargs: Any) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with asyncio.timeout(5):
            await gw.session.ws_connect(gw.url + path, **kwargs)
    return info.value.status


async def metric(gw: GatewayServer, name: str, **labels: str) -> float:
    async with gw.get("/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name}{labels} in:\n{text}")


def _address(gw: GatewayServer) -> tuple[str, int]:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def raw_socket(gw: GatewayServer) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, _address(gw))
    return sock


def upgrade_request(gw: GatewayServer, path: str, extra: str = "") -> bytes:
    host, port = _address(gw)
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


async def raw_upgrade(gw: GatewayServer, path: str, extra: str = "") -> tuple[socket.socket, bytes, bytearray]:
    """A socket after a completed handshake, the response head, and bytes read past it."""
    loop = asyncio.get_running_loop()
    sock = await raw_socket(gw)
    await loop.sock_sendall(sock, upgrade_request(gw, path, extra))
    buf = bytearray()
    async with asyncio.timeout(5):
        while b"\r\n\r\n" not in buf:
            chunk = await loop.sock_recv(sock, 4096)
            assert chunk, "closed during the handshake"
            buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, head, bytearray(rest)


async def read_frame(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    loop = asyncio.get_running_loop()

    async def fill(n: int) -> None:
        while len(buf) < n:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise ConnectionError("EOF")
            buf.extend(chunk)

    await fill(2)
    opcode, n, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if n == 126:
        await fill(4)
        n, start = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        await fill(10)
        n, start = struct.unpack("!Q", buf[2:10])[0], 10
    await fill(start + n)
    payload = bytes(buf[start:start + n])
    del buf[:start + n]
    return opcode, payload


async def until_eof(sock: socket.socket) -> None:
    """Read (and discard) until the server closes the TCP connection."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            if not await loop.sock_recv(sock, 65536):
                return
        except ConnectionResetError:
            return


def reset_peak_rss() -> None:
    """Set the peak RSS (VmHWM) back to the current RSS."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


# --- connection caps ---


async def test_global_cap_refuses_with_503_before_any_handler_code() -> None:
    async with run_gateway({"/a": CountingEcho, "/b": CountingEcho}, server={"max_connections": 2}) as gw:
        assert CountingEcho.instances == 2  # one per endpoint, built at startup
        first = await gw.connect("/a").__aenter__()
        second = await gw.connect("/b").__aenter__()
        await wait_until(lambda: CountingEcho.connects == 2)
        assert await refused_status(gw, "/a") == 503
        assert await refused_status(gw, "/b") == 503
        assert (CountingEcho.instances, CountingEcho.connects) == (2, 2)
        assert gw.stats.endpoints["/a"].limit_rejections["503"] == 1
        await first.close()
        await wait_until(lambda: len(gw.gateway.sessions) == 1)
        async with gw.connect("/b") as third:
            await third.send_str("after one left")
            assert await third.receive_str(timeout=5) == "after one left"
        assert CountingEcho.connects == 3
        await second.close()


async def test_endpoint_cap_refuses_with_503_and_leaves_other_endpoints_alone() -> None:
    async with run_gateway({"/capped": {"handler": CountingEcho, "max_connections": 2}, "/free": "echo"}) as gw:
        open_ = [await gw.connect("/capped").__aenter__() for _ in range(2)]
        assert await refused_status(gw, "/capped") == 503
        assert CountingEcho.connects == 2
        async with gw.connect("/free") as other:
            await other.send_str("fine")
            assert await other.receive_str(timeout=5) == "fine"
        await open_[0].close()
        await wait_until(lambda: gw.stats.endpoints["/capped"].open == 1)
        async with gw.connect("/capped") as again:
            await again.send_str("room again")
            assert await again.receive_str(timeout=5) == "room again"
        assert CountingEcho.connects == 3
        assert gw.stats.endpoints["/capped"].limit_rejections["503"] == 1
        await open_[1].close()


async def test_per_ip_cap_refuses_with_429() -> None:
    async with run_gateway({"/ws": {"handler": CountingEcho, "max_connections_per_ip": 2}}) as gw:
        open_ = [await gw.connect("/ws").__aenter__() for _ in range(2)]
        assert await refused_status(gw, "/ws") == 429
        assert await refused_status(gw, "/ws") == 429
        assert CountingEcho.connects == 2
        assert gw.stats.endpoints["/ws"].limit_rejections["429"] == 2
        await open_[0].close()
        await wait_until(lambda: gw.stats.endpoints["/ws"].open == 1)
        async with gw.connect("/ws") as again:
            await again.send_str("ok")
            assert await again.receive_str(timeout=5) == "ok"
        await open_[1].close()


# --- rate limit ---


async def test_rate_limit_closes_1008_and_is_counted() -> None:
    rate = {"messages": 5, "per": "10s", "burst": 5}
    async with run_gateway({"/ws": {"handler": "echo", "rate_limit": rate}}) as gw, gw.connect("/ws") as ws:
        for i in range(20):
            await ws.send_str(f"m{i}")
        got = []
        async with asyncio.timeout(5):
            while True:
                msg = await ws.receive()
                if msg.type is not WSMsgType.TEXT:
                    break
                got.append(msg.data)
        assert got == [f"m{i}" for i in range(5)]
        assert msg.type is WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (1008, "rate limit exceeded")
        assert await metric(gw, "wsgate_limit_rejections_total", endpoint="/ws", limit="rate") == 1


# --- slow handshakes ---


async def test_silent_client_is_dropped_within_handshake_timeout() -> None:
    async with run_gateway({"/ws": "echo"}, server={"handshake_timeout": "1s"}) as gw:
        sock = await raw_socket(gw)
        started = time.monotonic()
        try:
            async with asyncio.timeout(5):
                await until_eof(sock)
        finally:
            sock.close()
        assert time.monotonic() - started < 1 + 1.5


async def test_byte_by_byte_handshake_is_dropped_within_handshake_timeout() -> None:
    async with run_gateway({"/ws": "echo"}, server={"handshake_timeout": "1s"}) as gw:
        loop = asyncio.get_running_loop()
        sock = await raw_socket(gw)
        request = upgrade_request(gw, "/ws")
        sent = 0

        async def drip() -> None:
            nonlocal sent
            for byte in request:
                try:
                    await loop.sock_sendall(sock, bytes((byte,)))
                except OSError:
                    return
                sent += 1
                await asyncio.sleep(0.3)

        started = time.monotonic()
        dripper = asyncio.create_task(drip())
        try:
            async with asyncio.timeout(5):
                await until_eof(sock)
        finally:
            dripper.cancel()
            sock.close()
        assert time.monotonic() - started < 1 + 1.5
        assert 0 < sent < len(request)
        assert not gw.gateway.sessions


async def test_client_that_never_answers_the_close_frame_is_dropped_within_close_timeout() -> None:
    endpoint = {"handler": "echo", "idle_timeout": 0.3, "close_timeout": 0.5, "heartbeat": {"interval": 0}}
    async with run_gateway({"/ws": endpoint}) as gw:
        sock, _, buf = await raw_upgrade(gw, "/ws")
        try:
            async with asyncio.timeout(5):
                opcode, payload = await read_frame(sock, buf)
                close_seen = time.monotonic()
                assert opcode == 0x8
                assert struct.unpack("!H", payload[:2])[0] == 1001
                await until_eof(sock)  # we never send a close frame back
            assert time.monotonic() - close_seen < 0.5 + 1.0
        finally:
            sock.close()
        await wait_until(lambda: not gw.gateway.sessions)


async def test_server_waits_for_the_close_reply_within_close_timeout() -> None:
    """README: close_timeout is how long the server waits for the client's answer to its close frame."""
    endpoint = {"handler": "echo", "idle_timeout": 0.3, "close_timeout": 3, "heartbeat": {"interval": 0}}
    loop = asyncio.get_running_loop()
    async with run_gateway({"/ws": endpoint}) as gw:
        sock, _, buf = await raw_upgrade(gw, "/ws")
        try:
            async with asyncio.timeout(5):
                opcode, payload = await read_frame(sock, buf)
            assert opcode == 0x8
            # a client that takes 0.5 s to answer is still within close_timeout: the TCP stays up
            early: bytes | None = None
            try:
                async with asyncio.timeout(0.5):
                    early = await loop.sock_recv(sock, 1)
            except TimeoutError:
                pass
            assert early is None, f"the server ended the connection before close_timeout: {early!r}"
            mask = os.urandom(4)
            reply = bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:2]))
            await loop.sock_sendall(sock, bytes((0x88, 0x82)) + mask + reply)
            async with asyncio.timeout(2):
                await until_eof(sock)
        finally:
            sock.close()
        await wait_until(lambda: not gw.gateway.sessions)


# --- compression ---


async def test_deflate_bomb_closes_1009_without_inflating_it() -> None:
    inflated = 32 * 1024 * 1024
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = compressor.compress(b"\0" * inflated) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert body.endswith(b"\x00\x00\xff\xff")
    body = body[:-4]
    assert len(body) < 64 * 1024  # the frame itself is within max_message_size
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    frame = struct.pack("!BBH", 0x80 | 0x40 | 0x2, 0x80 | 126, len(body)) + mask + masked

    endpoint = {"handler": "echo", "compression": True, "max_message_size": 64 * 1024}
    async with run_gateway({"/z": endpoint}) as gw:
        sock, head, buf = await raw_upgrade(gw, "/z", "Sec-WebSocket-Extensions: permessage-deflate\r\n")
        assert b"permessage-deflate" in head.lower()
        try:
            reset_peak_rss()
            before = rss_kib()
            await asyncio.get_running_loop().sock_sendall(sock, frame)
            async with asyncio.timeout(5):
                opcode, payload = await read_frame(sock, buf)
            peak = rss_kib("VmHWM")
            assert opcode == 0x8
            assert struct.unpack("!H", payload[:2])[0] == 1009
            # answer the close like a well-behaved client
            reply = bytes(b ^ mask[i % 4] for i, b in enumerate(payload[:2]))
            await asyncio.get_running_loop().sock_sendall(sock, bytes((0x88, 0x82)) + mask + reply)
        finally:
            sock.close()
        assert (peak - before) * 1024 < inflated // 4
        await wait_until(lambda: not gw.gateway.sessions)
        assert gw.stats.endpoints["/z"].close_codes == {1009: 1}
        assert gw.stats.endpoints["/z"].messages_in == 0


# --- trusted proxies ---


async def test_forwarded_for_is_honoured_only_from_a_trusted_peer() -> None:
    endpoint = {"handler": RemoteReporter, "max_connections_per_ip": 1}
    async with run_gateway({"/who": endpoint}, server={"trusted_proxies": ["127.0.0.1/32"]}) as gw:
        first = await gw.connect("/who", headers={"X-Forwarded-For": "203.0.113.7"}).__aenter__()
        assert await first.receive_str(timeout=5) == "203.0.113.7"
        # a client-written hop left of the proxy's is ignored: the rightmost untrusted one counts
        async with gw.connect("/who", headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.4"}) as ws:
            assert await ws.receive_str(timeout=5) == "198.51.100.4"
        # the per-IP cap counts the forwarded address, not the proxy's
        assert await refused_status(gw, "/who", headers={"X-Forwarded-For": "203.0.113.7"}) == 429
        async with gw.connect("/who", headers={"X-Forwarded-For": "203.0.113.8"}) as ws:
            assert await ws.receive_str(timeout=5) == "203.0.113.8"
        await first.close()

    async with run_gateway({"/who": endpoint}, server={"trusted_proxies": ["10.0.0.0/8"]}) as gw:
        first = await gw.connect("/who", headers={"X-Forwarded-For": "203.0.113.7"}).__aenter__()
        assert await first.receive_str(timeout=5) == "127.0.0.1"
        # an untrusted peer cannot dodge its per-IP cap by writing another address
        assert await refused_status(gw, "/who", headers={"X-Forwarded-For": "203.0.113.8"}) == 429
        await first.close()


async def test_endpoint_level_limits_accept_unit_strings() -> None:
    """README: an endpoint may override any policy key, sizes and durations as strings."""
    endpoint = {"handler": "echo", "max_message_size": "1KiB", "close_timeout": "500ms"}
    async with run_gateway({"/ws": endpoint}) as gw, gw.connect("/ws") as ws:
        await ws.send_str("x" * 100)
        assert await ws.receive_str(timeout=5) == "x" * 100
        await ws.send_str("x" * 2000)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
