"""``server.allowed_hosts``: the Host check against DNS rebinding.

Pure cases for ``policy.hosts``, config validation and ``routes``, then the wire: a
gateway on loopback refuses ``Host: evil.example`` (with its matching Origin, and as an
absolute-form target) on WebSocket paths and on every other route but the probes.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from wsgate.config import Registry, parse_config
from wsgate.errors import ConfigError
from wsgate.policy.hosts import HostPattern, HostPolicy, is_loopback_bind, parse_host_pattern, split_host
from wsgate.testing import GatewayServer

Start = Callable[..., Awaitable[GatewayServer]]


# --- pure ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "split"),
    [
        ("example.com", ("example.com", None)),
        ("Example.COM:8080", ("example.com", 8080)),
        ("example.com.", ("example.com", None)),
        ("example.com:", ("example.com", None)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]", ("::1", None)),
        ("[0:0::1]:8080", ("::1", 8080)),
        ("[::FFFF:127.0.0.1]", ("::ffff:7f00:1", None)),
        ("int_name", ("int_name", None)),
    ],
)
def test_split_host(text: str, split: tuple[str, int | None]) -> None:
    assert split_host(text) == split


@pytest.mark.parametrize(
    "text",
    ["", ":80", "a b", "a/b", "a@b", "evil.com:x", "evil.com:99999", "evil.com:123456", "[::1", "[::1]x",
     "[nope]", "::1", "a..b:80:80", "-a.com", "ex ample", "*.a.com", "é.com", "a.com:٣"],
)
def test_split_host_refuses_malformed(text: str) -> None:
    assert split_host(text) is None


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("", False), ("192.0.2.1", False), ("gw.test", False)],
)
def test_is_loopback_bind(bind: str, loopback: bool) -> None:
    assert is_loopback_bind(bind) is loopback


LOOPBACK = HostPolicy.from_config(None, "127.0.0.1")


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost:8080", "LOCALHOST:1", "localhost.", "127.0.0.1", "127.0.0.1:8080", "127.9.8.7:1",
     "[::1]", "[::1]:8080", "[0:0:0:0:0:0:0:1]:9", "[::ffff:127.0.0.1]:80"],
)
def test_loopback_default_accepts_loopback_names(host: str) -> None:
    assert LOOPBACK.allows(host)


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8080", "localhost.evil.example", "127.0.0.1.evil.example", "sub.localhost",
     "10.0.0.1", "0.0.0.0", "[::2]", "[::]", "128.0.0.1", "", "localhost:x", "[::1"],
)
def test_loopback_default_refuses_other_names(host: str) -> None:
    assert not LOOPBACK.allows(host)


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "192.0.2.1"])
def test_default_on_other_binds_accepts_any_host(bind: str) -> None:
    policy = HostPolicy.from_config(None, bind)
    assert policy.allow_any
    assert policy.allows("evil.example")


LISTED = HostPolicy.from_config(["ws.example.com", "*.apps.test", "api.test:8443", "[::1]", "10.0.0.5"], "0.0.0.0")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("ws.example.com", True),
        ("WS.Example.com:8080", True),  # no port listed: any port
        ("ws.example.com.", True),
        ("a.apps.test", True),
        ("a.b.apps.test:1", True),
        ("apps.test", False),  # *. is subdomains only
        ("xapps.test", False),
        ("api.test:8443", True),
        ("api.test:443", False),
        ("api.test", False),  # no port in Host: 80 or 443, neither is 8443
        ("[::1]:8080", True),
        ("10.0.0.5", True),
        ("example.com", False),
        ("ws.example.com.evil.net", False),
        ("localhost", False),  # an explicit list replaces the loopback default
        ("127.0.0.1", False),
    ],
)
def test_listed_hosts(host: str, allowed: bool) -> None:
    assert LISTED.allows(host) is allowed


def test_default_ports_match_a_host_without_port() -> None:
    policy = HostPolicy.from_config(["a.test:443", "b.test:80"], "0.0.0.0")
    assert policy.allows("a.test")
    assert policy.allows("b.test")
    assert not policy.allows("a.test:8443")


def test_star_allows_any_host_even_on_loopback() -> None:
    assert HostPolicy.from_config(["*"], "127.0.0.1").allows("evil.example")


def test_refused_names_the_first_refused_host() -> None:
    assert LOOPBACK.refused(["127.0.0.1:1", "evil.example", "also.bad"]) == "evil.example"
    assert LOOPBACK.refused(["localhost"]) is None
    assert LOOPBACK.refused([]) is None


@pytest.mark.parametrize(
    ("text", "pattern"),
    [("Ws.Example.com", HostPattern("ws.example.com", None)), ("a.test:8080", HostPattern("a.test", 8080)),
     ("*.example.com", HostPattern(".example.com", None)), ("[::1]:80", HostPattern("::1", 80))],
)
def test_parse_host_pattern(text: str, pattern: HostPattern) -> None:
    assert parse_host_pattern(text) == pattern
    assert parse_host_pattern(str(pattern)) == pattern  # what describe() prints parses back


@pytest.mark.parametrize("text", ["https://ws.example.com", "ws.example.com/path", "a*.test", "*example.com",
                                  "*.*.test", "ws.*.test", "*", "", "a b", "*.[::1]", "a.test:99999"])
def test_bad_host_patterns_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="is not a host name") as info:
        parse_host_pattern(text)
    assert repr(text) in str(info.value)
    assert "'*.example.com'" in str(info.value)


def test_describe_and_refusal_text() -> None:
    assert LISTED.describe() == "ws.example.com, *.apps.test, api.test:8443, [::1], 10.0.0.5"
    assert "any host" in HostPolicy.from_config(None, "0.0.0.0").describe()
    assert "localhost" in LOOPBACK.describe()
    body = LOOPBACK.refusal("evil.example:8080")
    assert "'evil.example:8080' is not allowed" in body
    assert "allowed_hosts: ['evil.example']" in body
    assert "server.allowed_hosts is [ws.example.com" in LISTED.refusal("x.test")


# --- config and routes -----------------------------------------------------------------------

def _config(hosts: str) -> str:
    return f"server:\n  allowed_hosts: {hosts}\nendpoints:\n  - {{path: /ws, handler: echo}}\n"


def test_allowed_hosts_is_validated_at_load() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config("[ok.test, 'https://ws.example.com']"), "config.yaml", Registry())
    (problem,) = info.value.problems
    text = str(problem)
    assert text.startswith("config.yaml:2:")
    assert "server.allowed_hosts[1]" in text
    assert "leave out the scheme" in text


def test_allowed_hosts_accepts_names_wildcards_and_star() -> None:
    settings = parse_config(_config("[ws.example.com, '*.example.com', 'a.test:8443', '[::1]', '*']"),
                            "config.yaml", Registry())
    assert settings.config.server.allowed_hosts == ["ws.example.com", "*.example.com", "a.test:8443", "[::1]", "*"]
    assert parse_config(_config("null"), "c", Registry()).config.server.allowed_hosts is None


def test_routes_shows_the_effective_host_policy(write_config: Callable[..., Path]) -> None:
    def routes(config: Path, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "wsgate", "routes", "--config", str(config), *args],
                              capture_output=True, text=True, timeout=30, check=True)
        return done.stdout

    loopback = write_config({"server": {"host": "127.0.0.1"}, "endpoints": [{"path": "/ws", "handler": "echo"}]})
    assert "allowed hosts: localhost, 127.x.x.x, [::1]" in routes(loopback)
    assert "allowed hosts: * (any host)" in routes(loopback, "--host", "0.0.0.0")
    listed = write_config({"server": {"allowed_hosts": ["ws.example.com", "*.apps.test"]},
                           "endpoints": [{"path": "/ws", "handler": "echo"}]}, name="listed.yaml")
    assert "allowed hosts: ws.example.com, *.apps.test" in routes(listed)


# --- on the wire -----------------------------------------------------------------------------

WS = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


async def exchange(gw: GatewayServer, request: str) -> tuple[int, str]:
    """Send ``request`` byte for byte; the status, and the body unless it is a 101."""
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request.replace("{port}", port).encode())
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
            body = b"" if status == 101 else await reader.readexactly(int(length[1])) if length else await reader.read()
    finally:
        writer.close()
    return status, body.decode()


def ws_request(host: str, origin: str | None = None, target: str = "/ws") -> str:
    origin_line = f"Origin: {origin}\r\n" if origin else ""
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{origin_line}{WS}\r\n"


def get(target: str, host: str, method: str = "GET") -> str:
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def test_rebinding_handshake_is_refused_on_a_loopback_gateway(wsgate_gateway: Start) -> None:
    """``Host: evil.example`` with ``Origin: http://evil.example`` passes same-origin; the
    Host check must refuse it before the origin policy is asked."""
    gw = await wsgate_gateway({"/ws": "echo"})
    status, body = await exchange(gw, ws_request("evil.example", "http://evil.example"))
    assert status == 400
    assert "'evil.example' is not allowed" in body
    assert "allowed_hosts" in body
    status, body = await exchange(gw, ws_request("evil.example:{port}", "http://evil.example:{port}"))
    assert status == 400
    # absolute-form target: aiohttp takes the host from the target, not from Host
    status, body = await exchange(gw, ws_request("127.0.0.1:{port}", "http://evil.example",
                                                 target="http://evil.example/ws"))
    assert status == 400
    assert "'evil.example' is not allowed" in body
    assert gw.stats.endpoints["/ws"].connections == 0
    # loopback names still work, same-origin included
    for host in ("127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}"):
        assert (await exchange(gw, ws_request(host, f"http://{host}")))[0] == 101, host
    assert (await exchange(gw, ws_request("localhost:{port}")))[0] == 101


async def test_every_other_route_checks_the_host_but_the_probes(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"}, api={"token": "t"})
    for target, method in (("/", "GET"), ("/static/app.js", "GET"), ("/metrics", "GET"), ("/nope", "GET"),
                           ("/ws", "GET"), ("/api/publish", "POST"), ("/api/reload", "POST"), ("/nope", "POST")):
        status, body = await exchange(gw, get(target, "evil.example", method))
        assert status == 400, (method, target, status, body)
        assert "'evil.example' is not allowed" in body
        status, body = await exchange(gw, get(target, "localhost:{port}", method))
        assert status != 400 or "not allowed" not in body, (method, target)
    for probe in ("/healthz", "/readyz"):
        assert (await exchange(gw, get(probe, "10.1.2.3:8080")))[0] == 200


async def test_listed_hosts_replace_the_loopback_default(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"}, server={"host": "127.0.0.1", "port": 0,
                                                       "allowed_hosts": ["ws.example.test", "*.apps.test"]})
    assert (await exchange(gw, ws_request("ws.example.test", "http://ws.example.test")))[0] == 101
    assert (await exchange(gw, ws_request("a.apps.test:{port}", "http://a.apps.test:{port}")))[0] == 101
    assert (await exchange(gw, ws_request("apps.test", "http://apps.test")))[0] == 400
    status, body = await exchange(gw, ws_request("127.0.0.1:{port}", "http://127.0.0.1:{port}"))
    assert status == 400
    assert "server.allowed_hosts is [ws.example.test, *.apps.test]" in body
    assert (await exchange(gw, get("/", "ws.example.test")))[0] == 200


async def test_star_and_non_loopback_binds_accept_any_host(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({"/ws": "echo"}, server={"host": "127.0.0.1", "port": 0, "allowed_hosts": ["*"]})
    assert (await exchange(gw, ws_request("anything.test", "http://anything.test")))[0] == 101
