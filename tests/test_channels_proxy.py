"""The channels handler's HTTP proxy client against a real aiohttp backend on 127.0.0.1.

The backend records every request it gets (path, headers, body) and answers as the test
tells it. Field names follow Centrifugo's proxy protocol (internal/proxyproto/proxy.proto
and internal/proxy/http.go in centrifugal/centrifugo).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from conftest import free_port, serve_app
from multidict import CIMultiDict
from pydantic import ValidationError
from wsgate.builtins.channels.proxy import (
    INTERNAL_ERROR,
    MAX_ANSWER_BYTES,
    Proxy,
    ProxyDisconnect,
    ProxyError,
    ProxyEvent,
    ProxyOptions,
    ProxyReply,
)

LOGGER = "test.channels.proxy"
TOKEN = "tok-" + uuid.uuid4().hex
URL_KEY = "key-" + uuid.uuid4().hex
INTERNAL = ProxyReply(error=ProxyError(100, "internal server error", temporary=True))
EVENTS: list[ProxyEvent] = ["connect", "refresh", "subscribe", "publish", "sub_refresh", "rpc"]

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    path: str
    method: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Backend:
    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    behaviour: dict[str, Behaviour] = field(default_factory=dict)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.path, request.method, CIMultiDict(request.headers), await request.read()))
        name = request.match_info["name"]
        behaviour = self.behaviour.get(name)
        if behaviour is None:
            return web.json_response({"result": {"path": name}})
        return await behaviour(request)

    def answer(self, name: str, body: bytes | str, status: int = 200, **headers: str) -> None:
        async def respond(request: web.Request) -> web.StreamResponse:
            data = body.encode() if isinstance(body, str) else body
            return web.Response(body=data, status=status, headers=headers, content_type="application/json")
        self.behaviour[name] = respond

    def answer_json(self, name: str, value: Any) -> None:
        self.answer(name, json.dumps(value))


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    backend = Backend()
    app = web.Application()
    app.router.add_route("*", "/{name}", backend.handle)
    async with serve_app(app, shutdown_timeout=0.5) as url:
        backend.url = url
        try:
            yield backend
        finally:
            backend.release.set()


@pytest.fixture
def log() -> logging.Logger:
    return logging.getLogger(LOGGER)


@pytest.fixture
async def make_proxy(log: logging.Logger) -> AsyncIterator[Callable[..., Proxy]]:
    made: list[Proxy] = []

    def make(**options: Any) -> Proxy:
        proxy = Proxy(ProxyOptions.model_validate(options), log)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.close()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def connect_request() -> dict[str, Any]:
    return {"client": "c-1", "transport": "websocket", "protocol": "json", "encoding": "json",
            "name": "js", "version": "5.0.0", "data": {"token": TOKEN, "note": "héllo"}}


# --- the request ------------------------------------------------------------------------


async def test_body_and_forwarded_headers(backend: Backend, make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(connect=f"{backend.url}/connect")
    headers = CIMultiDict([
        ("Authorization", f"Bearer {TOKEN}"), ("Cookie", "a=1"), ("cookie", "b=2"),
        ("Origin", "https://app.test"), ("User-Agent", "agent/1"), ("X-Forwarded-For", "10.0.0.1"),
        ("x-real-ip", "10.0.0.2"), ("X-Request-Id", "r-1"),
        ("X-Secret", "not-for-the-backend"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Content-Type", "text/plain"), ("Content-Length", "3"),
    ])
    request = connect_request()
    reply = await proxy.call("connect", request, headers)
    assert reply == ProxyReply(result={"path": "connect"})
    [seen] = backend.seen
    assert seen.method == "POST"
    assert seen.path == "/connect"
    assert json.loads(seen.body) == request
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
    assert seen.headers.getall("Cookie") == ["a=1; b=2"]
    assert seen.headers["Origin"] == "https://app.test"
    assert seen.headers["User-Agent"] == "agent/1"
    assert seen.headers["X-Forwarded-For"] == "10.0.0.1"
    assert seen.headers["X-Real-Ip"] == "10.0.0.2"
    assert seen.headers["X-Request-Id"] == "r-1"
    assert "X-Secret" not in seen.headers
    assert "Sec-WebSocket-Key" not in seen.headers
    assert seen.headers.getall("Content-Type") == ["application/json"]
    assert int(seen.headers["Content-Length"]) == len(seen.body)
    assert proxy.failures == 0


async def test_only_the_listed_headers_go(backend: Backend, make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(rpc=f"{backend.url}/rpc", forward_headers=["x-tenant"])
    headers = {"Authorization": f"Bearer {TOKEN}", "Cookie": "s=1", "X-Tenant": "acme"}
    await proxy.call("rpc", {"method": "m", "data": {}}, headers)
    [seen] = backend.seen
    assert seen.headers["x-tenant"] == "acme"
    assert "Authorization" not in seen.headers
    assert "Cookie" not in seen.headers


async def test_each_event_goes_to_its_url(backend: Backend, make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(**{event: f"{backend.url}/{event}-hook" for event in EVENTS})
    for event in EVENTS:
        assert proxy.enabled(event)
        reply = await proxy.call(event, {"client": "c", "user": "u"}, {})
        assert reply.result == {"path": f"{event}-hook"}
    assert [s.path for s in backend.seen] == [f"/{event}-hook" for event in EVENTS]


async def test_a_disabled_event_sends_nothing(backend: Backend, make_proxy: Callable[..., Proxy],
                                              caplog: pytest.LogCaptureFixture) -> None:
    proxy = make_proxy(connect=f"{backend.url}/connect")
    assert proxy.enabled("connect")
    assert not proxy.enabled("rpc")
    assert not proxy.enabled("sub_refresh")
    assert await proxy.call("rpc", {"method": "m"}, {}) == INTERNAL
    assert backend.seen == []
    assert proxy.failures == 0


async def test_set_cookie_does_not_carry_over(backend: Backend, make_proxy: Callable[..., Proxy]) -> None:
    async def set_cookie(request: web.Request) -> web.StreamResponse:
        response = web.json_response({"result": {}})
        response.set_cookie("session", "alice-session")
        return response
    backend.behaviour["connect"] = set_cookie
    # A host name: aiohttp's default jar keeps no cookie set by an IP address.
    proxy = make_proxy(connect=f"{backend.url.replace('127.0.0.1', 'localhost')}/connect")
    await proxy.call("connect", {"client": "alice"}, {"Cookie": "who=alice"})
    await proxy.call("connect", {"client": "bob"}, {})
    assert backend.seen[0].headers["Cookie"] == "who=alice"
    assert "Cookie" not in backend.seen[1].headers


async def test_a_request_that_is_not_json_is_not_sent(backend: Backend, make_proxy: Callable[..., Proxy],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    proxy = make_proxy(publish=f"{backend.url}/publish")
    assert await proxy.call("publish", {"data": {"x": float("nan"), "token": TOKEN}}, {}) == INTERNAL
    assert await proxy.call("publish", {"data": object()}, {}) == INTERNAL
    assert backend.seen == []
    assert proxy.failures == 2
    assert all("not encodable" in line for line in warnings(caplog))


# --- the answer -------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "expected"), [
    ({"result": {"user": "42", "expire_at": 1700000000, "data": {"a": 1}}},
     ProxyReply(result={"user": "42", "expire_at": 1700000000, "data": {"a": 1}})),
    ({"result": {}}, ProxyReply(result={})),
    ({"error": {"code": 1000, "message": "custom", "temporary": True}},
     ProxyReply(error=ProxyError(1000, "custom", True))),
    ({"error": {"code": 103, "message": "permission denied"}}, ProxyReply(error=ProxyError(103, "permission denied"))),
    ({"error": {"code": 4294967295}}, ProxyReply(error=ProxyError(4294967295, ""))),
    ({"disconnect": {"code": 4500, "reason": "go away"}}, ProxyReply(disconnect=ProxyDisconnect(4500, "go away"))),
    ({"disconnect": {"code": 3000}}, ProxyReply(disconnect=ProxyDisconnect(3000, ""))),
    ({"disconnect": {"code": 4999, "reason": "é" * 61}}, ProxyReply(disconnect=ProxyDisconnect(4999, "é" * 61))),
    # Centrifugo's order: disconnect, then error, then result; null is absent; unknown keys ignored.
    ({"result": {"user": "1"}, "error": {"code": 101, "message": "unauthorized"}, "disconnect": {"code": 4001}},
     ProxyReply(disconnect=ProxyDisconnect(4001, ""))),
    ({"result": {"user": "1"}, "error": {"code": 101, "message": "unauthorized"}},
     ProxyReply(error=ProxyError(101, "unauthorized"))),
    ({"result": {"user": "1"}, "error": None, "disconnect": None, "extra": [1]}, ProxyReply(result={"user": "1"})),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else "")
async def test_valid_answers(backend: Backend, make_proxy: Callable[..., Proxy],
                             answer: dict[str, Any], expected: ProxyReply) -> None:
    backend.answer_json("subscribe", answer)
    proxy = make_proxy(subscribe=f"{backend.url}/subscribe")
    assert await proxy.call("subscribe", {"channel": "news"}, {}) == expected
    assert proxy.failures == 0


BAD_ANSWERS: list[tuple[str, bytes | str, str]] = [
    ("garbage", "<html>oops</html>", "not JSON"),
    ("empty", "", "not JSON"),
    ("not utf-8", b'{"result": {"a": "\xff"}}', "not JSON"),
    ("nan", '{"result": {"x": NaN}}', "not JSON"),
    ("infinity", '{"result": {"x": -Infinity}}', "not JSON"),
    ("array", "[]", "the answer is not an object"),
    ("string", '"result"', "the answer is not an object"),
    ("result list", '{"result": []}', "result is not an object"),
    ("error string", '{"error": "nope"}', "error is not an object"),
    ("code missing", '{"error": {"message": "m"}}', "error.code"),
    ("code string", '{"error": {"code": "103"}}', "error.code"),
    ("code bool", '{"error": {"code": true}}', "error.code"),
    ("code float", '{"error": {"code": 103.0}}', "error.code"),
    ("code negative", '{"error": {"code": -1}}', "error.code"),
    ("code too big", '{"error": {"code": 4294967296}}', "error.code"),
    ("message number", '{"error": {"code": 103, "message": 5}}', "error.message"),
    ("temporary string", '{"error": {"code": 103, "temporary": "yes"}}', "error.temporary"),
    ("disconnect code missing", '{"disconnect": {"reason": "r"}}', "disconnect.code"),
    ("disconnect code 1000", '{"disconnect": {"code": 1000}}', "disconnect.code is not from 3000"),
    ("disconnect code 5000", '{"disconnect": {"code": 5000}}', "disconnect.code is not from 3000"),
    ("reason number", '{"disconnect": {"code": 4000, "reason": 1}}', "disconnect.reason"),
    ("reason too long", json.dumps({"disconnect": {"code": 4000, "reason": "é" * 62}}), "longer than 123"),
    ("deep", "[" * 100000 + "]" * 100000, "not JSON"),
]


@pytest.mark.parametrize(("body", "why"), [(b, w) for _, b, w in BAD_ANSWERS], ids=[n for n, _, _ in BAD_ANSWERS])
async def test_bad_answers_are_internal_errors(backend: Backend, make_proxy: Callable[..., Proxy],
                                               caplog: pytest.LogCaptureFixture, body: bytes | str, why: str) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    backend.answer("publish", body)
    proxy = make_proxy(publish=f"{backend.url}/publish")
    assert await proxy.call("publish", {"channel": "c", "data": {}}, {}) == INTERNAL
    assert proxy.failures == 1
    [line] = warnings(caplog)
    assert "publish" in line
    assert f"{backend.url}/publish" in line
    assert why in line


@pytest.mark.parametrize("body", ["{}", '{"result": null, "error": null, "disconnect": null}'])
async def test_an_answer_without_result_is_no_result(backend: Backend, make_proxy: Callable[..., Proxy],
                                                     body: str) -> None:
    """As in Centrifugo: no credentials for connect, the defaults for the others; not a failure."""
    backend.answer("publish", body)
    proxy = make_proxy(publish=f"{backend.url}/publish")
    assert await proxy.call("publish", {"channel": "c", "data": {}}, {}) == ProxyReply()
    assert proxy.failures == 0


@pytest.mark.parametrize("status", [201, 204, 302, 400, 404, 500, 503])
async def test_a_status_other_than_200(backend: Backend, make_proxy: Callable[..., Proxy],
                                       caplog: pytest.LogCaptureFixture, status: int) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    # A valid answer under the wrong status still does not count; a redirect is not followed.
    backend.answer("refresh", json.dumps({"result": {"expired": False}}), status=status,
                   Location=f"{backend.url}/elsewhere")
    proxy = make_proxy(refresh=f"{backend.url}/refresh")
    assert await proxy.call("refresh", {"user": "u"}, {}) == INTERNAL
    assert proxy.failures == 1
    assert [s.path for s in backend.seen] == ["/refresh"]
    [line] = warnings(caplog)
    assert f"answered HTTP {status}" in line


async def test_an_answer_at_the_bound_is_read(backend: Backend, make_proxy: Callable[..., Proxy]) -> None:
    head, tail = '{"result": {"pad": "', '"}}'
    backend.answer("rpc", head + "x" * (MAX_ANSWER_BYTES - len(head) - len(tail)) + tail)
    proxy = make_proxy(rpc=f"{backend.url}/rpc")
    reply = await proxy.call("rpc", {"method": "big"}, {})
    assert reply.result is not None
    assert len(reply.result["pad"]) == MAX_ANSWER_BYTES - len(head) - len(tail)


async def test_an_oversize_answer_with_a_length(backend: Backend, make_proxy: Callable[..., Proxy],
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    head, tail = '{"result": {"pad": "', '"}}'
    backend.answer("rpc", head + "x" * (MAX_ANSWER_BYTES + 1 - len(head) - len(tail)) + tail)
    proxy = make_proxy(rpc=f"{backend.url}/rpc")
    assert await proxy.call("rpc", {"method": "big"}, {}) == INTERNAL
    assert proxy.failures == 1
    assert "more than" in warnings(caplog)[0]


async def test_an_oversize_answer_streamed(backend: Backend, make_proxy: Callable[..., Proxy],
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # no length: chunked
        await response.prepare(request)
        await response.write(b'{"result": {"pad": "')
        chunk = b"x" * 65536
        with contextlib.suppress(ConnectionError, RuntimeError):
            for _ in range(16384):  # 1 GiB, unless the reader stops
                if backend.release.is_set():
                    break
                await response.write(chunk)
        return response

    backend.behaviour["rpc"] = endless
    proxy = make_proxy(rpc=f"{backend.url}/rpc", timeout=3)
    started = time.monotonic()
    assert await proxy.call("rpc", {"method": "big"}, {}) == INTERNAL
    assert time.monotonic() - started < 2
    assert proxy.failures == 1
    assert "more than" in warnings(caplog)[0]


async def test_an_announced_oversize_answer_is_not_awaited(backend: Backend, make_proxy: Callable[..., Proxy],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def announce(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = MAX_ANSWER_BYTES + 1
        await response.prepare(request)
        await response.write(b'{"result": {')
        await asyncio.wait_for(backend.release.wait(), 5)
        return response

    backend.behaviour["rpc"] = announce
    proxy = make_proxy(rpc=f"{backend.url}/rpc", timeout=3)
    started = time.monotonic()
    assert await proxy.call("rpc", {"method": "big"}, {}) == INTERNAL
    assert time.monotonic() - started < 2.5  # refused at the size, not at the 3 s timeout
    assert "more than" in warnings(caplog)[0]


# --- an absent or slow backend ----------------------------------------------------------


async def test_timeout(backend: Backend, make_proxy: Callable[..., Proxy], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(backend.release.wait(), 5)
        return web.json_response({"result": {}})

    backend.behaviour["sub_refresh"] = slow
    proxy = make_proxy(sub_refresh=f"{backend.url}/sub_refresh", timeout="200ms")
    started = time.monotonic()
    assert await proxy.call("sub_refresh", {"channel": "c"}, {}) == INTERNAL
    elapsed = time.monotonic() - started
    assert 0.18 <= elapsed < 0.7
    assert proxy.failures == 1
    [line] = warnings(caplog)
    assert "did not answer within 0.2s" in line
    assert "sub_refresh" in line


async def test_a_slow_body_times_out_too(backend: Backend, make_proxy: Callable[..., Proxy]) -> None:
    async def dribble(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"result": ')
        await asyncio.wait_for(backend.release.wait(), 5)
        return response

    backend.behaviour["connect"] = dribble
    proxy = make_proxy(connect=f"{backend.url}/connect", timeout=0.2)
    started = time.monotonic()
    assert await proxy.call("connect", {}, {}) == INTERNAL
    assert time.monotonic() - started < 2  # 0.2 s, not the 5 s the body would take
    assert proxy.failures == 1


async def test_connection_refused(make_proxy: Callable[..., Proxy], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    port = free_port()
    proxy = make_proxy(connect=f"http://127.0.0.1:{port}/connect")
    assert await proxy.call("connect", connect_request(), {}) == INTERNAL
    assert await proxy.call("connect", connect_request(), {}) == INTERNAL
    assert proxy.failures == 2
    lines = warnings(caplog)
    assert len(lines) == 2
    assert f"http://127.0.0.1:{port}/connect" in lines[0]
    assert "ClientConnectorError" in lines[0]


async def test_cancellation_propagates(backend: Backend, make_proxy: Callable[..., Proxy]) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(backend.release.wait(), 5)
        return web.json_response({"result": {}})

    backend.behaviour["rpc"] = slow
    proxy = make_proxy(rpc=f"{backend.url}/rpc", timeout=3)
    task = asyncio.create_task(proxy.call("rpc", {}, {}))
    while not backend.seen:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert proxy.failures == 0


async def test_close(backend: Backend, make_proxy: Callable[..., Proxy]) -> None:
    proxy = make_proxy(connect=f"{backend.url}/connect")
    await proxy.close()  # before any call: nothing to close
    proxy = make_proxy(connect=f"{backend.url}/connect")
    assert (await proxy.call("connect", {}, {})).result == {"path": "connect"}
    await proxy.close()
    await proxy.close()
    assert await proxy.call("connect", {}, {}) == INTERNAL
    assert len(backend.seen) == 1


# --- what the log keeps out -------------------------------------------------------------


async def test_the_log_never_shows_a_token(backend: Backend, make_proxy: Callable[..., Proxy],
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.wait_for(backend.release.wait(), 5)
        return web.json_response({})

    backend.answer("e500", f"token {TOKEN}", status=500)
    backend.answer("garbage", f"<{TOKEN}>")
    backend.answer("wrong", json.dumps({"error": {"code": TOKEN}}))
    backend.behaviour["slow"] = slow
    request = {"client": "c", "user": "u", "channel": "c", "token": TOKEN, "data": {"token": TOKEN}}
    headers = {"Authorization": f"Bearer {TOKEN}", "Cookie": f"session={TOKEN}"}
    for path, event in [("e500", "connect"), ("garbage", "subscribe"), ("wrong", "rpc"), ("slow", "refresh")]:
        proxy = make_proxy(**{event: f"{backend.url}/{path}?api_key={URL_KEY}&x=1#{URL_KEY}"}, timeout=0.2)
        assert await proxy.call(event, request, headers) == INTERNAL
        assert proxy.failures == 1
    refused = make_proxy(publish=f"http://user:{URL_KEY}@127.0.0.1:{free_port()}/p?api_key={URL_KEY}")
    assert await refused.call("publish", request, headers) == INTERNAL
    assert {s.path for s in backend.seen} == {"/e500", "/garbage", "/wrong", "/slow"}
    text = "\n".join(f"{r.getMessage()} {r.args} {r.exc_text}" for r in caplog.records)
    assert len(warnings(caplog)) == 5
    assert f"{backend.url}/e500" in text
    assert TOKEN not in text
    assert URL_KEY not in text
    assert "api_key" not in text


# --- options ----------------------------------------------------------------------------


def test_options() -> None:
    options = ProxyOptions.model_validate({"connect": "http://127.0.0.1:9000/c", "timeout": "500ms"})
    assert options.timeout == 0.5
    assert options.rpc is None
    assert {h.lower() for h in options.forward_headers} >= {"authorization", "cookie", "origin", "user-agent",
                                                             "x-forwarded-for", "x-real-ip"}
    assert ProxyOptions().timeout == 1.0
    # Centrifugo's ErrorInternal: code 100, temporary.
    assert ProxyError(100, "internal server error", temporary=True) == INTERNAL_ERROR
    assert ProxyOptions.model_validate({"forward_headers": ["X-A", "x-a", "X-B"]}).forward_headers == ["X-A", "X-B"]


@pytest.mark.parametrize("bad", [
    {"timeout": 0},
    {"timeout": -1},
    {"timeout": "soon"},
    {"connect": "ftp://127.0.0.1/c"},
    {"connect": "not a url"},
    {"sub-refresh": "http://127.0.0.1/s"},
    {"forward_headers": ["Content-Type"]},
    {"forward_headers": ["host"]},
    {"forward_headers": ["Bad Header"]},
    {"forward_headers": [""]},
])
def test_bad_options(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ProxyOptions.model_validate(bad)
