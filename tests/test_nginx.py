"""wsgate behind a real nginx, configured with the site documented in docs/deploy.md.

The ```nginx block of docs/deploy.md is used as written. Only the listen ports, the
upstream port, the certificate paths and (in one test) the read timeout are
substituted, and each substitution must find its text exactly once. So the documented
config is the one these tests prove.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, WSServerHandshakeError
from conftest import WsgateProcess, free_port, wait_port
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
NGINX = "/usr/sbin/nginx"

# A self-signed certificate for 127.0.0.1 and localhost (valid 2025-2124). The key is a
# throwaway test key, published here on purpose; it protects nothing.
TEST_CERT = """-----BEGIN CERTIFICATE-----
MIIB1jCCAX2gAwIBAgIUZO6iQQPW2hUcEMi5+lv6Dj94gwkwCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVd3NnYXRlIHRlc3QgMTI3LjAuMC4xMCAXDTI1MDEwMTAwMDAw
MFoYDzIxMjQxMjA4MDAwMDAwWjAgMR4wHAYDVQQDDBV3c2dhdGUgdGVzdCAxMjcu
MC4wLjEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAT9uv3HW5jxrWmZq1EeE7Hv
enByp9KlZvK2+bvbbPkmdofE4JR/rApMyUaadzHkm7oMIjcl9eGGHMZQ4AXDvyCb
o4GSMIGPMBoGA1UdEQQTMBGHBH8AAAGCCWxvY2FsaG9zdDAMBgNVHRMBAf8EAjAA
MA4GA1UdDwEB/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDATAdBgNVHQ4EFgQU
Nj+jpQSFgp+Bj8VnOnYehrUx/mMwHwYDVR0jBBgwFoAUNj+jpQSFgp+Bj8VnOnYe
hrUx/mMwCgYIKoZIzj0EAwIDRwAwRAIgMQfD9Pzuv38ocZopmjzyAVWsRDwgQU56
B0smuSDpKvECICOxfz4COViwuN+3R96EnMK9iBcxA5uahF+iGon4pz7c
-----END CERTIFICATE-----
"""
TEST_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg474da9XmyaSI1bHc
jjHQFBth+geCQsSVq6yxbzd2+rKhRANCAAT9uv3HW5jxrWmZq1EeE7HvenByp9Kl
ZvK2+bvbbPkmdofE4JR/rApMyUaadzHkm7oMIjcl9eGGHMZQ4AXDvyCb
-----END PRIVATE KEY-----
"""

Start = Callable[..., WsgateProcess]
WriteConfig = Callable[..., Path]


def documented_site() -> str:
    """The one ```nginx block of docs/deploy.md."""
    blocks = re.findall(r"^```nginx\n(.*?)^```", DEPLOY_DOC.read_text(), re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1, f"docs/deploy.md should have exactly one ```nginx block, found {len(blocks)}"
    return blocks[0]


def substitute(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"docs/deploy.md's nginx block should contain {old!r} exactly once"
    return text.replace(old, new)


@dataclass
class Proxy:
    """nginx (TLS on ``port``, the http->https redirect on ``http_port``) in front of ``gateway``."""

    port: int
    http_port: int
    gateway: WsgateProcess
    prefix: Path
    ssl: ssl.SSLContext

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def wss(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text() if path.exists() else ""


def _nginx_conf(prefix: Path, site: str) -> str:
    temp = "\n".join(f"    {kind}_temp_path {prefix}/temp/{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    site = "\n".join("    " + line if line else "" for line in site.splitlines())
    return (
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
        # lets SIGQUIT finish even while a WebSocket tunnel is open
        + "worker_shutdown_timeout 1s;\n"
        + "events { worker_connections 128; }\n"
        + f"http {{\n    access_log {prefix}/access.log;\n{temp}\n{site}\n}}\n"
    )


@pytest.fixture
def nginx_proxy(tmp_path: Path, wsgate_process: Start, write_config: WriteConfig) -> Iterator[Callable[..., Proxy]]:
    """Factory: ``nginx_proxy(wsgate_config, read_timeout=None)`` starts wsgate, then nginx.

    ``wsgate_config`` is a mapping or a function of the proxy's public origin returning
    one (for configs that name it). nginx is stopped with SIGQUIT, then SIGKILL.
    """
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"{NGINX} is missing: run the README's test command (bash scripts/test)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: dict[str, Any] | Callable[[str], dict[str, Any]], read_timeout: str | None = None) -> Proxy:
        for _ in range(10):
            # Ports found free can be handed out again, to each other or to the gateway's
            # own port 0; nginx would then fail to bind while the port still answers.
            port, http_port = free_port(), free_port()
            if port == http_port:
                continue
            gateway = wsgate_process(write_config(config(f"https://127.0.0.1:{port}") if callable(config) else config))
            if gateway.port not in (port, http_port):
                break
            gateway.stop()
        prefix = tmp_path / f"nginx-{port}"
        (prefix / "temp").mkdir(parents=True)
        (prefix / "cert.pem").write_text(TEST_CERT)
        (prefix / "key.pem").write_text(TEST_KEY)
        (prefix / "key.pem").chmod(0o600)
        site = documented_site()
        site = substitute(site, "server 127.0.0.1:8080;", f"server 127.0.0.1:{gateway.port};")
        site = substitute(site, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
        site = substitute(site, "listen 80;", f"listen 127.0.0.1:{http_port};")
        site = substitute(site, "/etc/letsencrypt/live/ws.example.com/fullchain.pem", str(prefix / "cert.pem"))
        site = substitute(site, "/etc/letsencrypt/live/ws.example.com/privkey.pem", str(prefix / "key.pem"))
        if read_timeout is not None:
            site = substitute(site, "proxy_read_timeout 120s;", f"proxy_read_timeout {read_timeout};")
        conf = prefix / "nginx.conf"
        conf.write_text(_nginx_conf(prefix, site))
        cmd = [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        check = subprocess.run([*cmd, "-t"], capture_output=True, text=True, timeout=10)
        assert check.returncode == 0, f"nginx -t refused the documented site:\n{check.stderr}\n{conf.read_text()}"
        proc = subprocess.Popen([*cmd, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        try:
            wait_port("127.0.0.1", port, timeout=10)
            wait_port("127.0.0.1", http_port, timeout=10)
        except TimeoutError:
            raise AssertionError(f"nginx did not start:\n{(prefix / 'error.log').read_text()}") from None
        context = ssl.create_default_context(cadata=TEST_CERT)
        return Proxy(port, http_port, gateway, prefix, context)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def config(**policy: Any) -> dict[str, Any]:
    """Echo at /ws and chat at /chat; ``server`` and ``policy`` keys go where they belong."""
    server = {"host": "127.0.0.1", "port": 0}
    if "trusted_proxies" in policy:
        server["trusted_proxies"] = policy.pop("trusted_proxies")
    return {
        "server": server,
        "policy": {"heartbeat": {"interval": "1s", "timeout": "5s"}, **policy},
        "endpoints": [{"path": "/ws", "handler": "echo"},
                      {"path": "/chat", "handler": "chat", "options": {"history": 10}}],
    }


async def recv_json(ws: ClientConnection, kind: str, **match: Any) -> dict[str, Any]:
    """The next chat event of type ``kind`` (with the ``match`` fields), skipping others."""
    async with asyncio.timeout(5):
        while True:
            event = json.loads(await ws.recv())
            if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                return dict(event)


async def access_line(gw: WsgateProcess, event: str, pattern: str) -> dict[str, str]:
    """The ``key=value`` fields of wsgate's access-log line for ``event`` matching ``pattern``."""
    m = await asyncio.to_thread(gw.wait_for_line, rf"wsgate\.access: .*\b{event}.*{pattern}", 5)
    return dict(re.findall(r"(\w+)=(\S*)", m.string))


async def remote_of(gw: WsgateProcess, probe: str) -> str:
    """``remote=`` of the open line, and of the close line, of the ``?probe=`` connection."""
    opened = await access_line(gw, "open", rf'query="?probe={probe}"?(\s|$)')
    closed = await access_line(gw, "close", rf"conn={opened['conn']}\s")
    assert closed["remote"] == opened["remote"]
    return opened["remote"]


async def test_page_echo_and_chat_through_the_proxy(nginx_proxy: Callable[..., Proxy]) -> None:
    proxy = nginx_proxy(lambda public: config(origins=[public]))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy.origin}/", ssl=proxy.ssl) as resp:
            assert resp.status == 200
            assert '<script src="/static/app.js">' in await resp.text()
        async with http.get(f"{proxy.origin}/static/app.js", ssl=proxy.ssl) as resp:
            assert resp.status == 200
        async with http.get(f"{proxy.origin}/healthz", ssl=proxy.ssl) as resp:
            assert (resp.status, await resp.text()) == (200, "ok\n")
        async with http.get(f"{proxy.origin}/metrics", ssl=proxy.ssl) as resp:
            assert resp.status == 200  # allowed from 127.0.0.1
        async with http.get(f"http://127.0.0.1:{proxy.http_port}/ws?a=1", allow_redirects=False) as resp:
            assert resp.status == 301
            assert resp.headers["Location"] == "https://127.0.0.1/ws?a=1"

        # aiohttp: echo, and the client's close code comes back through the tunnel
        async with http.ws_connect(f"{proxy.wss}/ws", ssl=proxy.ssl, origin=proxy.origin) as ws:
            await ws.send_str("through nginx ✓")
            assert await ws.receive_str(timeout=5) == "through nginx ✓"
            await ws.send_bytes(b"\x00\x01binary")
            assert await ws.receive_bytes(timeout=5) == b"\x00\x01binary"
            await ws.close(code=4001, message=b"bye")
            assert ws.close_code == 4001

    # websockets: two chat users see each other's joins, messages and leaves
    url = f"{proxy.wss}/chat?room=proxied"
    async with ws_connect(f"{url}&name=alice", ssl=proxy.ssl, origin=proxy.origin) as alice:
        assert (await recv_json(alice, "welcome"))["users"] == ["alice"]
        async with ws_connect(f"{url}&name=bob", ssl=proxy.ssl, origin=proxy.origin) as bob:
            assert (await recv_json(bob, "welcome"))["users"] == ["alice", "bob"]
            assert (await recv_json(alice, "join", name="bob"))["users"] == ["alice", "bob"]
            await bob.send("hello over wss")
            event = await recv_json(alice, "message")
            assert (event["from"], event["text"], event["room"]) == ("bob", "hello over wss", "proxied")
        assert (await recv_json(alice, "leave", name="bob"))["users"] == ["alice"]
    assert await proxy.gateway.metric("wsgate_connections_total", "/chat") == 2


async def test_origin_policy_holds_through_the_proxy(nginx_proxy: Callable[..., Proxy]) -> None:
    proxy = nginx_proxy(lambda public: config(origins=[public]))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(WSServerHandshakeError) as refused:
            await http.ws_connect(f"{proxy.wss}/ws", ssl=proxy.ssl, origin="https://evil.example")
        assert refused.value.status == 403
        # same host, other scheme or port: still another origin
        for origin in (f"http://127.0.0.1:{proxy.port}", "https://127.0.0.1"):
            with pytest.raises(WSServerHandshakeError) as refused:
                await http.ws_connect(f"{proxy.wss}/ws", ssl=proxy.ssl, origin=origin)
            assert refused.value.status == 403
        async with http.ws_connect(f"{proxy.wss}/ws", ssl=proxy.ssl, origin=proxy.origin) as ws:
            await ws.send_str("allowed")
            assert await ws.receive_str(timeout=5) == "allowed"
    with pytest.raises(InvalidStatus) as invalid:
        async with ws_connect(f"{proxy.wss}/ws", ssl=proxy.ssl, origin="https://evil.example"):
            pass
    assert invalid.value.response.status_code == 403
    assert await proxy.gateway.metric("wsgate_origin_rejections_total", "/ws") == 4
    assert await proxy.gateway.metric("wsgate_connections_total", "/ws") == 1
    proxy.gateway.wait_for_line(r"origin refused: 'https://evil\.example' on /ws")


async def test_same_origin_works_through_a_tls_proxy(nginx_proxy: Callable[..., Proxy]) -> None:
    """``origins: same-origin`` behind TLS termination.

    nginx passes the Host (``$http_host``, port included) and ``X-Forwarded-Proto:
    https``, and the page's origin is https://HOST. wsgate must take the scheme from the
    trusted proxy's X-Forwarded-Proto, not from its own plain-HTTP socket. Then the https
    page is accepted, and an http:// page on the same host and port is refused.
    """
    proxy = nginx_proxy(config(origins="same-origin", trusted_proxies=["127.0.0.1/32"]))
    url = f"{proxy.wss}/ws"
    async with aiohttp.ClientSession() as http:
        with pytest.raises(WSServerHandshakeError) as refused:
            await http.ws_connect(url, ssl=proxy.ssl, origin="https://127.0.0.1:1")
        assert refused.value.status == 403
        try:
            ws = await http.ws_connect(url, ssl=proxy.ssl, origin=proxy.origin)
        except WSServerHandshakeError as exc:
            pytest.fail(f"the same-origin page {proxy.origin} was refused through the TLS proxy ({exc.status}); "
                        f"wsgate said:\n{proxy.gateway.output}")
        async with ws:
            await ws.send_str("same origin")
            assert await ws.receive_str(timeout=5) == "same origin"
        with pytest.raises(WSServerHandshakeError) as refused:
            await http.ws_connect(url, ssl=proxy.ssl, origin=f"http://127.0.0.1:{proxy.port}")
        assert refused.value.status == 403


async def test_forwarded_address_is_believed_from_a_trusted_proxy(nginx_proxy: Callable[..., Proxy]) -> None:
    """nginx sends ``X-Forwarded-For: 198.51.100.7, 127.0.0.1``; 127.0.0.1 is trusted."""
    proxy = nginx_proxy(lambda public: config(origins=[public], trusted_proxies=["127.0.0.1/32"]))
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{proxy.wss}/ws?probe=forwarded", ssl=proxy.ssl, origin=proxy.origin,
            headers={"X-Forwarded-For": "198.51.100.7"}) as ws:
        await ws.send_str("x")
        assert await ws.receive_str(timeout=5) == "x"
    assert await remote_of(proxy.gateway, "forwarded") == "198.51.100.7"


async def test_forwarded_address_is_ignored_without_trusted_proxies(nginx_proxy: Callable[..., Proxy]) -> None:
    proxy = nginx_proxy(lambda public: config(origins=[public]))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{proxy.wss}/ws?probe=proxied", ssl=proxy.ssl, origin=proxy.origin,
                                   headers={"X-Forwarded-For": "198.51.100.7"}) as ws:
            await ws.send_str("x")
            assert await ws.receive_str(timeout=5) == "x"
        # straight to wsgate, skipping nginx, with a made-up header
        async with http.ws_connect(f"{proxy.gateway.ws_url}/ws?probe=direct",
                                   headers={"X-Forwarded-For": "203.0.113.9"}) as ws:
            await ws.send_str("y")
            assert await ws.receive_str(timeout=5) == "y"
    assert await remote_of(proxy.gateway, "proxied") == "127.0.0.1"
    assert await remote_of(proxy.gateway, "direct") == "127.0.0.1"


async def test_heartbeat_keeps_a_quiet_connection_open_past_proxy_read_timeout(
    nginx_proxy: Callable[..., Proxy],
) -> None:
    """With ``proxy_read_timeout 1s``, /ws pings every 0.3 s and outlives several timeouts
    without a message. /quiet has no heartbeat, and nginx cuts it."""
    def two_endpoints(public: str) -> dict[str, Any]:
        return {
            "server": {"host": "127.0.0.1", "port": 0},
            "policy": {"origins": [public]},
            "endpoints": [{"path": "/ws", "handler": "echo", "heartbeat": {"interval": "300ms", "timeout": "2s"}},
                          {"path": "/quiet", "handler": "echo", "heartbeat": {"interval": 0}}],
        }

    proxy = nginx_proxy(two_endpoints, read_timeout="1s")
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {"ssl": proxy.ssl, "origin": proxy.origin, "autoping": True}
        async with http.ws_connect(f"{proxy.wss}/ws", **kwargs) as beating, \
                http.ws_connect(f"{proxy.wss}/quiet", **kwargs) as quiet:
            # aiohttp answers pings only while someone receives, as a browser always does
            reader = asyncio.create_task(beating.receive())
            async with asyncio.timeout(5):
                msg = await quiet.receive()  # nothing is sent: the next thing is nginx giving up
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR)
            await asyncio.sleep(1.5)  # /ws has now been without messages for 2.5 read timeouts
            assert not reader.done(), f"/ws ended too: {reader.result()}"
            await beating.send_str("still here")
            msg = await asyncio.wait_for(reader, 5)
            assert (msg.type, msg.data) == (WSMsgType.TEXT, "still here")
    assert "upstream timed out" in proxy.error_log()


async def test_reload_and_restart_drain_through_the_proxy(
    nginx_proxy: Callable[..., Proxy], write_config: WriteConfig
) -> None:
    """SIGHUP (``systemctl reload``) adds an endpoint while a proxied socket stays open;
    SIGUSR1 then closes that socket with 1012 through nginx and wsgate exits 0."""
    public = ""

    def remember(origin: str) -> dict[str, Any]:
        nonlocal public
        public = origin
        return config(origins=[origin])

    proxy = nginx_proxy(remember)
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(f"{proxy.wss}/ws", ssl=proxy.ssl, origin=proxy.origin) as ws:
        with pytest.raises(WSServerHandshakeError) as missing:
            await http.ws_connect(f"{proxy.wss}/late", ssl=proxy.ssl, origin=proxy.origin)
        assert missing.value.status == 404

        grown = config(origins=[public])
        grown["endpoints"].append({"path": "/late", "handler": "echo"})
        write_config(grown)  # same file the process was started with
        proxy.gateway.signal(signal.SIGHUP)
        await asyncio.to_thread(proxy.gateway.wait_for_line, r"reloaded .*/late", 10)
        async with http.ws_connect(f"{proxy.wss}/late", ssl=proxy.ssl, origin=proxy.origin) as late:
            await late.send_str("new endpoint")
            assert await late.receive_str(timeout=5) == "new endpoint"
        await ws.send_str("kept")
        assert await ws.receive_str(timeout=5) == "kept"

        proxy.gateway.signal(signal.SIGUSR1)
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1012, "service restart")
    assert await asyncio.to_thread(proxy.gateway.proc.wait, 15) == 0
