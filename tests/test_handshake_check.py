"""``POST /api/handshake-check`` tried from an attacker's side, over real HTTP.

The check tells whoever asks whether a token is valid, so it must cost at least what
a real handshake costs: it is off unless the config turns it on, and when on it goes
through the handshake's own policy (Host, origin, admission, the auth step), each
refusal is counted and logged as one (never with the token), and one client address
gets a limited number of checks, the address taken through trusted proxies only.
The ``http:`` authenticator's backend is a small aiohttp app that counts what it is
asked.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from conftest import serve_app
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from wsgate.policy.probes import PROBE_BURST, PROBE_EVERY, ProbeLimit
from wsgate.testing import GatewayServer, run_gateway

SECRET = "handshake-check-secret-0123456789abcdef"
RIGHT_KEY = "right-key-7f3a"


@dataclass
class Backend:
    """The ``http:`` authenticator's service: admits RIGHT_KEY, refuses the rest."""

    url: str = ""
    asked: list[dict[str, Any]] = field(default_factory=list)

    async def check(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.asked.append(body)
        if body.get("token") == RIGHT_KEY:
            return web.json_response({"user": "ann"})
        return web.Response(status=401)


@contextlib.asynccontextmanager
async def serve_backend() -> AsyncIterator[Backend]:
    backend = Backend()
    app = web.Application()
    app.router.add_post("/check", backend.check)
    async with serve_app(app) as url:
        backend.url = url + "/check"
        yield backend


@contextlib.asynccontextmanager
async def gateway(backend: Backend, api: dict[str, Any] | None, **config: Any) -> AsyncIterator[GatewayServer]:
    """/team asks the backend; /jar takes a JWT from the cookie ``sess`` (same-origin)."""
    auth = {"team": {"http": {"url": backend.url, "timeout": 2}},
            "jar": {"jwt": {"algorithms": ["HS256"], "secret": SECRET}, "cookie": "sess"}}
    endpoints = {"/team": {"handler": "echo", "auth": "team"}, "/jar": {"handler": "echo", "auth": "jar"}}
    extra = {"api": api} if api is not None else {}
    policy = {"heartbeat": {"interval": 0}, **config.pop("policy", {})}
    async with run_gateway(endpoints, auth=auth, policy=policy, **extra, **config) as gw:
        yield gw


async def ask(gw: GatewayServer, path: str, token: str | None, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, Any]]:
    """The HTTP status of the check and its JSON body."""
    async with gw.session.post(gw.url + "/api/handshake-check", json={"path": path, "token": token},
                               headers=headers or {}) as response:
        return response.status, await response.json()


async def handshake_status(gw: GatewayServer, path: str, headers: dict[str, str]) -> int:
    """What a real WebSocket handshake with ``headers`` is answered."""
    try:
        async with connect(gw.ws_url + path, additional_headers=headers, open_timeout=5):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def refusals(gw: GatewayServer, endpoint: str, reason: str) -> float:
    async with gw.get("/metrics") as response:
        text = await response.text()
    line = f'wsgate_auth_refusals_total{{endpoint="{endpoint}",reason="{reason}"}} '
    return sum(float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line))


def cookie_token() -> str:
    return jwt.encode({"sub": "ann", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


async def test_the_check_is_off_unless_the_config_turns_it_on() -> None:
    async with serve_backend() as backend:
        for api in (None, {"handshake_check": False}):
            async with gateway(backend, api) as gw:
                status, body = await ask(gw, "/team", RIGHT_KEY)
                assert status == 404
                assert "api: {handshake_check: true}" in body["error"]
        assert backend.asked == []  # a probe that is off costs the team's backend nothing


async def test_guesses_are_limited_per_client_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A burst of guesses: the first PROBE_BURST are answered (and each is one refusal in
    the log and the metrics, as a real handshake's), the rest get 429 and reach no
    backend. A forged X-Forwarded-For (no trusted proxy) does not buy more."""
    caplog.set_level(logging.INFO)
    async with serve_backend() as backend, gateway(backend, {"handshake_check": True}) as gw:
        answers = []
        started = time.monotonic()
        for n in range(3 * PROBE_BURST):
            answers.append(await ask(gw, "/team", f"guess-{n:04d}", {"X-Forwarded-For": f"198.51.100.{n}"}))
        elapsed = time.monotonic() - started
        if elapsed < PROBE_EVERY:  # nothing refilled meanwhile (unless the machine crawls)
            assert await ask(gw, "/team", RIGHT_KEY) == (429, answers[-1][1])  # the right key waits too
        budget = PROBE_BURST + int(elapsed / PROBE_EVERY)
        statuses = [status for status, _ in answers]
        answered = statuses.count(200)
        assert statuses[:PROBE_BURST] == [200] * PROBE_BURST
        assert answered <= budget, statuses
        assert statuses.count(429) == len(statuses) - answered
        assert {(body["status"], body["text"]) for status, body in answers if status == 200} == {(401, "invalid token")}
        assert "too many handshake checks" in answers[-1][1]["error"]
        assert len(backend.asked) == answered
        assert {asked["remote"] for asked in backend.asked} == {"127.0.0.1"}
        assert await refusals(gw, "/team", "invalid") == answered
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("auth refused")]
    assert len(lines) == answered, lines
    assert all("on /team from 127.0.0.1" in line for line in lines)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "guess-0" not in text


async def test_a_trusted_proxy_gives_each_client_its_own_budget_and_address() -> None:
    async with serve_backend() as backend, gateway(backend, {"handshake_check": True},
                                                    server={"trusted_proxies": ["127.0.0.1/32"]}) as gw:
        statuses = [(await ask(gw, "/team", "guess", {"X-Forwarded-For": "203.0.113.7"}))[0]
                    for _ in range(2 * PROBE_BURST)]
        assert statuses[:PROBE_BURST] == [200] * PROBE_BURST
        assert statuses[-1] == 429
        status, body = await ask(gw, "/team", RIGHT_KEY, {"X-Forwarded-For": "203.0.113.8"})
        assert (status, body["status"]) == (200, 101)
        assert {asked["remote"] for asked in backend.asked} == {"203.0.113.7", "203.0.113.8"}


async def test_the_origin_policy_applies_as_to_a_real_handshake() -> None:
    """A cookie credential from another site is refused by the check as by the handshake."""
    async with serve_backend() as backend, gateway(backend, {"handshake_check": True}) as gw:
        cookie = {"Cookie": f"sess={cookie_token()}"}
        evil = {**cookie, "Origin": "https://evil.example"}
        same = {**cookie, "Origin": gw.url}
        assert await handshake_status(gw, "/jar", evil) == 403
        status, body = await ask(gw, "/jar", None, evil)
        assert (status, body) == (200, {"status": 403, "text": "origin not allowed"})
        assert await handshake_status(gw, "/jar", same) == 101
        assert (await ask(gw, "/jar", None, same))[1]["status"] == 101
        assert gw.stats.endpoints["/jar"].origin_rejections == 2  # the check's refusal counts too


async def test_connection_caps_apply_as_to_a_real_handshake() -> None:
    async with serve_backend() as backend, gateway(backend, {"handshake_check": True},
                                                    policy={"max_connections_per_ip": 1}) as gw:
        bearer = {"Authorization": f"Bearer {RIGHT_KEY}"}
        async with connect(gw.ws_url + "/team", additional_headers=bearer, open_timeout=5):
            assert await handshake_status(gw, "/team", bearer) == 429
            status, body = await ask(gw, "/team", RIGHT_KEY)
            assert (status, body["status"]) == (200, 429)
        assert (await ask(gw, "/team", RIGHT_KEY))[1]["status"] == 101  # the check held no slot


def test_the_limit_is_a_bucket_per_address_and_remembers_a_bounded_number() -> None:
    limit = ProbeLimit(max_clients=2)
    assert [limit.take("a", 0.0) for _ in range(PROBE_BURST + 1)] == [True] * PROBE_BURST + [False]
    assert limit.take("b", 0.0)  # another address has its own budget
    assert not limit.take("a", PROBE_EVERY - 0.01)
    assert limit.take("a", PROBE_EVERY + 0.01)
    assert not limit.take("a", PROBE_EVERY + 0.01)
    limit.take("c", PROBE_EVERY)  # three addresses: the least recently seen, b, is forgotten
    assert [limit.take("b", PROBE_EVERY) for _ in range(PROBE_BURST)] == [True] * PROBE_BURST
    # b's return pushed out a; c, seen more recently, kept what it had spent
    assert [limit.take("c", PROBE_EVERY) for _ in range(PROBE_BURST)] == [True] * (PROBE_BURST - 1) + [False]

