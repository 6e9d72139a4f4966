"""Every URL wsgate shows goes through one function (``wsgate.observe.redact.redact_url``).

Pure: that function on every form a URL takes. Live: a secret in every URL form a config
can hold (userinfo, ``?password=``, ``?token=``, a ``rediss+cluster://`` node list), then
every output scanned: ``routes``, ``check``, config errors, startup errors, the log of a
running gateway, the API's errors, ``/metrics`` and the page.
"""

from __future__ import annotations

import asyncio
import datetime
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import jwt
import pytest
from conftest import RedisServer, WsgateProcess, free_port
from cryptography.hazmat.primitives.asymmetric import rsa
from redis.asyncio import Redis

from wsgate.observe.redact import is_secret_name, redact_query, redact_url

SECRET = "S3CRET"  # every secret below contains it; no output may

# --- the function -----------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://app:S3CRET@h:6379/0", "redis://app:***@h:6379/0"),
    ("redis://:S3CRET@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://S3CRET@h:6379/0", "redis://***@h:6379/0"),  # a lone userinfo may be a token
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("redis://h:6379/2?password=S3CRET&db=2", "redis://h:6379/2?password=***&db=***"),
    ("redis://h:6379?Password=S3CRET", "redis://h:6379?Password=***"),
    ("rediss://app:S3CRET@h:6380/0?password=S3CRET", "rediss://app:***@h:6380/0?password=***"),
    ("unix:///run/redis.sock?db=1&password=S3CRET", "unix:///run/redis.sock?db=***&password=***"),
    ("redis+cluster://app:S3CRET@h1:7000,h2:7001", "redis+cluster://app:***@h1:7000,h2:7001"),
    ("rediss+cluster://S3CRET@[::1]:7000,h2:7001/0", "rediss+cluster://***@[::1]:7000,h2:7001/0"),
    ("https://auth.example/check?token=S3CRET&tenant=a", "https://auth.example/check?token=***&tenant=***"),
    # a secret may hide under any name, or none
    ("https://hooks.example/x?k=S3CRET&S3CRET", "https://hooks.example/x?k=***&***"),
    ("https://u:S3CRET@idp.example/keys?access_token=S3CRET", "https://u:***@idp.example/keys?access_token=***"),
    ("https://idp.example/cb#id_token=S3CRET&state=x", "https://idp.example/cb#id_token=***&state=***"),
    ("https://h/x?api%5Fkey=S3CRET", "https://h/x?api%5Fkey=***"),
    ("https://[::1]:8443/x?sig=S3CRET", "https://[::1]:8443/x?sig=***"),
    # unencoded delimiters in a password: hidden, not half shown
    ("redis://:S3#CRET@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://:S3?CRET@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://h:6379?password=S3/CRET", "redis://h:6379?password=***"),
    ("memory", "memory"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_clients_query_in_the_log_keeps_ordinary_values() -> None:
    assert all(map(is_secret_name, ["password", "token", "access_token", "api-key", "X-Amz-Signature"]))
    assert not any(map(is_secret_name, ["db", "room", "tenant", "name"]))
    assert redact_query({"room": "lobby", "access_token": SECRET}) == "room=lobby&access_token=***"


# --- what the commands print ---------------------------------------------------------------

BROKERS = {
    "userinfo": "redis://app:S3CRET-userinfo@127.0.0.1:{port}/0",
    "query": "redis://127.0.0.1:{port}/0?password=S3CRET-query",
    "both": "rediss://app:S3CRET-userinfo@127.0.0.1:{port}/0?password=S3CRET-query",
    "cluster": "rediss+cluster://app:S3CRET-cluster@127.0.0.1:{port},127.0.0.1:{port2}",
}


def _config(broker: str, *, backend: str = "https://auth.example/check?token=S3CRET-token",
            jwks: str = "https://keys:S3CRET-jwks@idp.example/keys?access_token=S3CRET-jwks") -> dict[str, object]:
    return {
        "server": {"host": "127.0.0.1"},
        "broker": broker,
        "logging": {"level": "debug"},
        "api": {"token": "api-token"},
        "auth": {"backend": {"http": {"url": backend, "timeout": "1s"}},
                 "idp": {"jwt": {"algorithms": ["RS256"], "jwks_url": jwks}}},
        "endpoints": [{"path": "/open", "handler": "echo"},
                      {"path": "/backend", "handler": "echo", "auth": "backend"},
                      {"path": "/idp", "handler": "echo", "auth": "idp"}],
    }


def _wsgate(config: Path, *args: str, no_redis_package: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m wsgate ARGS --config CONFIG``; optionally as if redis-py were not installed."""
    prelude = "sys.modules['redis'] = None; " if no_redis_package else ""
    code = "import sys; " + prelude + "from wsgate.cli import main; raise SystemExit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args, "--config", str(config)], capture_output=True,
                          text=True, timeout=60, cwd=config.parent)


@pytest.mark.parametrize("form", sorted(BROKERS))
def test_routes_check_and_config_errors_show_no_secret(form: str, write_config: Callable[..., Path]) -> None:
    broker = BROKERS[form].format(port=6379, port2=6380)
    config = write_config(_config(broker))
    for command in ("routes", "check"):
        result = _wsgate(config, command)
        assert result.returncode == 0, result.stderr
        out = result.stdout + result.stderr
        assert f"broker {redact_url(broker)}," in out
        assert "http POST https://auth.example/check?token=***" in out
        assert "JWKS https://keys:***@idp.example/keys?access_token=***" in out
        assert SECRET not in out, out
    # the error for a Redis broker where redis-py is missing names the URL too
    result = _wsgate(config, "check", no_redis_package=True)
    assert result.returncode == 2
    assert f"broker {redact_url(broker)}: the redis package is not installed" in result.stderr
    assert SECRET not in result.stdout + result.stderr, result.stderr


def test_a_bad_authenticator_url_is_refused_without_showing_its_secret(write_config: Callable[..., Path]) -> None:
    config = write_config(_config("memory", backend="ftp://app:S3CRET-userinfo@auth.example/check?token=S3CRET"))
    result = _wsgate(config, "check")
    assert result.returncode == 2
    assert "'ftp://app:***@auth.example/check?token=***' is not an http(s) URL" in result.stderr
    assert SECRET not in result.stdout + result.stderr, result.stderr


@pytest.mark.parametrize("form", ["both", "cluster"])
def test_a_broker_that_cannot_be_reached_is_named_without_its_secret(
    form: str, write_config: Callable[..., Path]
) -> None:
    broker = BROKERS[form].replace("rediss", "redis").format(port=free_port(), port2=free_port())
    config = write_config(_config(broker))
    result = _wsgate(config, "serve", "--port", "0")
    assert result.returncode == 1, result.stderr
    assert f"not starting: cannot reach the Redis Cluster at {redact_url(broker)}" in result.stderr or \
        f"not starting: cannot reach Redis at {redact_url(broker)}" in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr, result.stderr


# --- a running gateway ---------------------------------------------------------------------


def _rs256_token() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    exp = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    return jwt.encode({"sub": "ann", "exp": exp}, key, algorithm="RS256", headers={"kid": "k1"})


async def _refused_status(session: aiohttp.ClientSession, url: str, token: str) -> int:
    try:
        async with session.ws_connect(url, headers={"Authorization": f"Bearer {token}"}):
            return 101
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


async def test_a_running_gateway_shows_no_secret_in_logs_api_errors_metrics_or_page(
    redis_server: RedisServer, rds: Redis, write_config: Callable[..., Path],
    wsgate_process: Callable[..., WsgateProcess],
) -> None:
    # The broker's user exists in Redis; its URL carries the password twice (userinfo and query).
    await rds.acl_setuser("app", enabled=True, passwords=["+S3CRET-userinfo"], keys=["*"], channels=["*"],
                          commands=["+@all"])
    broker = BROKERS["both"].replace("rediss", "redis").format(port=redis_server.port)
    closed = free_port()  # the auth backend and the JWKS endpoint are down: their errors name them
    config = write_config(_config(
        broker, backend=f"http://127.0.0.1:{closed}/check?token=S3CRET-token",
        jwks=f"http://keys:S3CRET-jwks@127.0.0.1:{closed}/keys?access_token=S3CRET-jwks"))
    proc = wsgate_process(config)
    bodies = []
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/metrics"):
            async with session.get(proc.url + path) as response:
                assert response.status == 200
                bodies.append(await response.text())
        async with session.ws_connect(proc.ws_url + "/open?room=lobby&access_token=S3CRET-client") as ws:
            await ws.send_str("hi")
            assert await ws.receive_str(timeout=5) == "hi"
        assert await _refused_status(session, proc.ws_url + "/backend", "opaque") == 503
        assert await _refused_status(session, proc.ws_url + "/idp", _rs256_token()) == 503
        redis_server.kill()
        async with asyncio.timeout(15):  # until the broker notices; then publishing fails and says where
            while True:
                async with session.post(proc.url + "/api/publish", headers={"Authorization": "Bearer api-token"},
                                        json={"endpoint": "/open", "room": "lobby", "data": 1}) as response:
                    if response.status == 503:
                        bodies.append(await response.text())
                        break
                await asyncio.sleep(0.1)
    proc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.proc.wait, 15) == 0
    shown = "\n".join([proc.output, *bodies])
    # each URL was shown somewhere, so the scan below is not of an empty page
    assert redact_url(broker) in proc.output
    assert "redis://app:***@127.0.0.1" in bodies[-1]
    assert f"http://127.0.0.1:{closed}/check?token=***" in proc.output
    assert f"http://keys:***@127.0.0.1:{closed}/keys?access_token=***" in proc.output
    assert "access_token=***" in proc.output
    assert SECRET not in shown, shown
