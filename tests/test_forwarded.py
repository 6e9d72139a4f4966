"""``X-Forwarded-For`` over several header lines, and addresses normalised.

A client behind a trusted proxy that sends its own ``X-Forwarded-For`` line ahead of
the proxy's must not choose its address: neither for the log nor for per-IP caps.
Pure cases for ``policy.proxies``, then the wire, with repeated header lines.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable

import pytest

from wsgate import Connection, Handler
from wsgate.policy.proxies import client_address, client_scheme, parse_address
from wsgate.testing import GatewayServer

Start = Callable[..., Awaitable[GatewayServer]]
PROXIES = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.0.0.0/8", "::1/128")]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("203.0.113.5", "203.0.113.5"),
        (" 203.0.113.5 ", "203.0.113.5"),
        ("203.0.113.5:4711", "203.0.113.5"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("[2001:0db8::0001]:1", "2001:db8::1"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("[::ffff:c633:6407]:80", "198.51.100.7"),
        ("::1", "::1"),
    ],
)
def test_parse_address_normalises(text: str, address: str) -> None:
    assert str(parse_address(text)) == address


@pytest.mark.parametrize(
    "text",
    ["", "unknown", "garbage", "203.0.113.5:", "203.0.113.5:x", "203.0.113.5:٣", "[203.0.113.5]",
     "[2001:db8::1", "[2001:db8::1]x", "[2001:db8::1]:", "999.1.1.1", "1.2.3.4:5:6", "_hidden"],
)
def test_parse_address_refuses_what_is_no_address(text: str) -> None:
    assert parse_address(text) is None


SIX_SPELLINGS = ["2001:db8::7", "2001:DB8::7", "2001:db8:0:0:0:0:0:7", "2001:0db8::0007",
                 "[2001:db8::7]", "[2001:db8::7]:50000"]


@pytest.mark.parametrize("spelling", SIX_SPELLINGS)
def test_one_ipv6_client_is_one_address_however_spelled(spelling: str) -> None:
    assert client_address("127.0.0.1", spelling, PROXIES) == "2001:db8::7"


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        # lines joined: the client's own line came first, the proxy's last
        ("127.0.0.1", "6.6.6.6,203.0.113.5", "203.0.113.5"),
        ("127.0.0.1", "6.6.6.6, 10.0.0.1,203.0.113.5", "203.0.113.5"),
        # hop forms with ports
        ("127.0.0.1", "203.0.113.5:4711", "203.0.113.5"),
        ("127.0.0.1", "6.6.6.6, [2001:db8::1]:443", "2001:db8::1"),
        ("127.0.0.1", "203.0.113.5, 10.0.0.2:8080", "203.0.113.5"),
        # IPv4-mapped IPv6, as hop and as peer
        ("127.0.0.1", "::ffff:203.0.113.5", "203.0.113.5"),
        ("::ffff:127.0.0.1", "203.0.113.5", "203.0.113.5"),  # a dual-stack socket's peer is trusted
        ("::ffff:198.51.100.7", "203.0.113.5", "198.51.100.7"),
        ("0:0:0:0:0:0:0:1", "203.0.113.5", "203.0.113.5"),
        # the peer itself is normalised, trusted or not
        ("::FFFF:198.51.100.7", None, "198.51.100.7"),
        ("2001:DB8::9", None, "2001:db8::9"),
        # garbage still stops the walk
        ("127.0.0.1", "203.0.113.5, unknown", "127.0.0.1"),
    ],
)
def test_client_address_with_joined_lines_and_spellings(peer: str, xff: str | None, client: str) -> None:
    assert client_address(peer, xff, PROXIES) == client


@pytest.mark.parametrize(
    ("peer", "proto", "scheme"),
    [
        ("127.0.0.1", "https", "https"),
        ("127.0.0.1", "http,https", "https"),  # the trusted peer's own value is the last
        ("127.0.0.1", "https, http", "http"),
        ("127.0.0.1", "HTTPS", "https"),
        ("127.0.0.1", "gopher", "http"),
        ("::ffff:127.0.0.1", "https", "https"),
        ("198.51.100.7", "https", "http"),
        ("127.0.0.1", "", "http"),
    ],
)
def test_client_scheme(peer: str, proto: str, scheme: str) -> None:
    assert client_scheme(peer, proto, PROXIES, "http") == scheme


# --- on the wire: repeated header lines ------------------------------------------------------

class Who(Handler):
    """Tells each client the address the gateway believes it has."""

    async def on_connect(self, conn: Connection) -> None:
        await conn.send(conn.remote)


async def handshake(gw: GatewayServer, path: str, *lines: str) -> tuple[int, str, asyncio.StreamWriter]:
    """A raw handshake with ``lines`` as extra header lines, byte for byte; the status, the
    first text message (on 101) and the open writer (the caller closes it)."""
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               + "".join(f"{line}\r\n" for line in lines) + "\r\n")
    writer.write(request.encode())
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        text = ""
        if status == 101:
            first, length = await reader.readexactly(2)
            assert first == 0x81  # a final text frame
            assert length < 126  # short, unmasked
            text = (await reader.readexactly(length)).decode()
    return status, text, writer


async def test_a_client_line_before_the_proxy_line_is_not_believed(wsgate_gateway: Start) -> None:
    """The proxy (here: the test, from 127.0.0.1) appends its own line for the real
    client 203.0.113.7; the client had sent one of its own first, different each time.
    Every connection is 203.0.113.7, so the per-IP cap of 1 refuses the second."""
    gw = await wsgate_gateway(
        {"/who": {"handler": Who, "max_connections_per_ip": 1}},
        server={"host": "127.0.0.1", "port": 0, "trusted_proxies": ["127.0.0.1/32"]},
    )
    status, remote, first = await handshake(gw, "/who", "X-Forwarded-For: 6.6.6.1",
                                            "X-Forwarded-For: 203.0.113.7")
    try:
        assert (status, remote) == (101, "203.0.113.7")
        status, _, second = await handshake(gw, "/who", "X-Forwarded-For: 6.6.6.2",
                                            "X-Forwarded-For: 203.0.113.7")
        second.close()
        assert status == 429
    finally:
        first.close()


async def test_spellings_of_one_address_share_the_per_ip_cap(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway(
        {"/who": {"handler": Who, "max_connections_per_ip": 1}},
        server={"host": "127.0.0.1", "port": 0, "trusted_proxies": ["127.0.0.1/32"]},
    )
    status, remote, first = await handshake(gw, "/who", "X-Forwarded-For: [2001:DB8::7]:50000")
    try:
        assert (status, remote) == (101, "2001:db8::7")
        for spelling in ("2001:db8:0:0:0:0:0:7", "2001:0db8::0007", "::ffff:203.0.113.9, 2001:db8::7"):
            status, _, other = await handshake(gw, "/who", f"X-Forwarded-For: {spelling}")
            other.close()
            assert status == 429, spelling
        status, remote, mapped = await handshake(gw, "/who", "X-Forwarded-For: ::ffff:203.0.113.9")
        mapped.close()
        assert (status, remote) == (101, "203.0.113.9")
    finally:
        first.close()
