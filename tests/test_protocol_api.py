"""The plugin API for protocols spoken over an endpoint: ``on_http`` (and its
``HttpAnswer.websocket_close``), ``listen``/``signal``,
``preamble``, ``authenticate``, ``stream`` and ids at a key path, through a real gateway."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
from aiohttp import WSMsgType

from wsgate import Connection, Context, Handler, HttpAnswer, HttpCall, Message, NoOptions, TokenRejected
from wsgate.testing import run_gateway

TIMEOUT = 10
SECRET = "a-secret-of-at-least-32-bytes-for-hs256"
AUTH = {"tokens": {"jwt": {"algorithms": ["HS256"], "secret": SECRET}}}


class Api(Handler):
    """Answers ``POST /p/api/<method>`` with what it was given."""

    async def on_http(self, call: HttpCall) -> HttpAnswer:
        if call.method == "boom":
            raise RuntimeError("handler bug")
        return HttpAnswer.json({"method": call.method, "body": call.body.decode(),
                                "key": call.headers.get("x-key"), "remote": call.remote})


async def test_on_http_answers_posts_under_the_endpoint_path() -> None:
    async with asyncio.timeout(TIMEOUT), run_gateway({"/p": Api, "/plain": "echo"}) as gw:
        async with gw.session.post(gw.url + "/p/api/publish", data=b'{"a":1}', headers={"X-Key": "k"}) as r:
            assert r.status == 200
            assert await r.json() == {"method": "publish", "body": '{"a":1}', "key": "k", "remote": "127.0.0.1"}
        async with gw.session.post(gw.url + "/plain/api/publish", data=b"{}") as r:
            assert r.status == 404  # echo has no HTTP API
        async with gw.session.post(gw.url + "/nowhere/api/publish", data=b"{}") as r:
            assert r.status == 404
        async with gw.session.post(gw.url + "/p/api/boom", data=b"{}") as r:
            assert r.status == 500
            assert "handler bug" not in await r.text()
        async with gw.connect("/p") as ws:  # the WebSocket of the same path is untouched
            assert not ws.closed


class Gone(Handler):
    """Claims ``/gone/``: a WebSocket handshake there hears why it is refused, then a close."""

    def __init__(self, options: NoOptions, context: Context) -> None:
        super().__init__(options, context)
        self.http_prefixes = ("/gone/",)

    async def on_http(self, call: HttpCall) -> HttpAnswer:
        if call.method == "quiet":
            return HttpAnswer.websocket_close(4404, "gone")
        return HttpAnswer.websocket_close(4404, "gone away", f"bye {call.method}")


async def test_websocket_close_answers_a_handshake_with_a_message_and_a_close() -> None:
    async with asyncio.timeout(TIMEOUT), run_gateway({"/g": Gone}) as gw:
        async with gw.connect("/gone/ann") as ws:
            assert await ws.receive_str() == "bye ann"
            closing = await ws.receive()
            assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 4404, "gone away")
        async with gw.connect("/gone/quiet") as ws:  # no message: the close comes first
            closing = await ws.receive()
            assert (closing.type, closing.data, closing.extra) == (WSMsgType.CLOSE, 4404, "gone")
        assert dict(gw.stats.endpoints["/g"].handshake_closes) == {4404: 2}
        # Any other request: 404 with the reason, not counted.
        async with gw.get("/gone/ann") as r:
            assert (r.status, r.content_type, await r.text()) == (404, "text/plain", "gone away\n")
        async with gw.session.post(gw.url + "/gone/ann", data=b"{}") as r:
            assert (r.status, await r.text()) == (404, "gone away\n")
        assert dict(gw.stats.endpoints["/g"].handshake_closes) == {4404: 2}
        # A handshake without its key is aiohttp's 400, not a close, and not counted.
        async with gw.get("/gone/ann", headers={"Upgrade": "websocket", "Connection": "Upgrade"}) as r:
            assert r.status == 400
        assert dict(gw.stats.endpoints["/g"].handshake_closes) == {4404: 2}
        async with gw.connect("/g") as ws:  # the endpoint's own path is untouched
            await ws.send_str("x")
            assert not ws.closed


async def test_a_client_that_never_answers_the_close_is_let_go() -> None:
    """The close waits about a second for the client's close frame, not aiohttp's 10 s."""
    async with asyncio.timeout(TIMEOUT), run_gateway({"/g": Gone}) as gw:
        host, port = gw.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /gone/ann HTTP/1.1\r\nHost: " + host.encode() + b"\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        started = time.monotonic()
        async with asyncio.timeout(3):
            received = await reader.read()  # until the server drops the connection
        waited = time.monotonic() - started
        writer.close()
    assert received.startswith(b"HTTP/1.1 101 ")
    frames = received.partition(b"\r\n\r\n")[2]
    assert frames == b"\x81\x07bye ann" + b"\x88\x0b" + (4404).to_bytes(2, "big") + b"gone away"
    assert 0.5 < waited < 2.5


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000])
def test_websocket_close_refuses_a_code_a_close_frame_cannot_carry(code: int) -> None:
    with pytest.raises(ValueError, match=f"close code {code} cannot be sent"):
        HttpAnswer.websocket_close(code, "why")


def test_websocket_close_takes_a_reason_of_at_most_123_bytes() -> None:
    answer = HttpAnswer.websocket_close(4999, "é" * 61 + "x", "hello")  # 123 bytes
    assert (answer.status, answer.close, answer.close_message) == (404, (4999, "é" * 61 + "x"), "hello")
    assert HttpAnswer.websocket_close(1000, "").close == (1000, "")
    with pytest.raises(ValueError, match="at most 123 bytes"):
        HttpAnswer.websocket_close(4000, "é" * 62)


class Signals(Handler):
    """``listen`` on connect; ``signal`` what a client sends; the callback answers every client."""

    async def on_connect(self, conn: Connection) -> None:
        if not set(self.context.connections) - {conn}:
            await self.context.listen("news", self.heard)
        await conn.send("ready")  # listen returned: the broker delivers the topic here

    def heard(self, message: str) -> None:
        self.context.broadcast(f"heard {message}")

    async def on_message(self, conn: Connection, message: Message) -> None:
        assert isinstance(message, str)
        if message == "stop":
            await self.context.unlisten("news", self.heard)
        await self.context.signal("news", message)
        await conn.send("sent")


async def test_signals_reach_listeners_and_not_connections() -> None:
    async with asyncio.timeout(TIMEOUT), run_gateway({"/s": Signals}) as gw, gw.connect("/s") as ws:
        assert await ws.receive_str() == "ready"
        await ws.send_str("hello")
        assert {await ws.receive_str(), await ws.receive_str()} == {"sent", "heard hello"}
        await ws.send_str("stop")
        assert await ws.receive_str() == "sent"
        await ws.send_str("again")
        assert await ws.receive_str() == "sent"
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await ws.receive_str()


class Positioned(Handler):
    """Subscribes on a message, then sends its reply: the reply must come before live events."""

    async def on_message(self, conn: Connection, message: Message) -> None:
        if message == "sub":
            async with self.context.preamble(conn):
                recovery = await self.context.subscribe(conn, "t", history=0)
                # Published meanwhile: held until the block ends.
                await self.context.publish_numbered("t", {"push": {"pub": {"data": 1}}}, 10, at="push.pub.offset")
                await conn.send(json.dumps({"reply": recovery.latest}))
        elif message == "stream":
            stream = await self.context.stream("t", 5)
            await conn.send(json.dumps({"epoch": stream.epoch, "latest": stream.latest,
                                        "events": [dict(e) for e in stream.messages]}, default=dict))


async def test_preamble_holds_live_events_and_ids_go_at_the_key_path() -> None:
    async with asyncio.timeout(TIMEOUT), run_gateway({"/t": Positioned}) as gw, gw.connect("/t") as ws:
        await ws.send_str("sub")
        assert json.loads(await ws.receive_str()) == {"reply": 0}
        assert json.loads(await ws.receive_str()) == {"push": {"pub": {"offset": 1, "data": 1}}}
        await ws.send_str("stream")
        stream = json.loads(await ws.receive_str())
        assert stream["latest"] == 1
        assert stream["epoch"]
        assert stream["events"] == [{"push": {"pub": {"offset": 1, "data": 1}}}]


class Strict(Handler):
    async def on_message(self, conn: Connection, message: Message) -> None:
        try:
            await self.context.publish_numbered("t", {"x": 1}, 5, at="x.offset")
        except ValueError as exc:
            await conn.send(f"refused: {exc}")


async def test_an_id_path_through_a_non_object_is_refused() -> None:
    async with asyncio.timeout(TIMEOUT), run_gateway({"/t": Strict}) as gw, gw.connect("/t") as ws:
        await ws.send_str("go")
        assert (await ws.receive_str()).startswith("refused: a numbered event needs an object at 'x'")


class Tokens(Handler):
    async def on_message(self, conn: Connection, message: Message) -> None:
        assert isinstance(message, str)
        try:
            identity = await self.context.authenticate("tokens", message)
        except TokenRejected as exc:
            await conn.send(f"{exc.reason}: {exc.detail}")
        else:
            await conn.send(f"user {identity.user}")


async def test_authenticate_checks_a_token_sent_after_the_handshake() -> None:
    good = jwt.encode({"sub": "ann", "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    expired = jwt.encode({"sub": "ann", "exp": int(time.time()) - 60}, SECRET, algorithm="HS256")
    forged = jwt.encode({"sub": "ann"}, "another-secret-of-at-least-32-bytes!!", algorithm="HS256")
    async with asyncio.timeout(TIMEOUT), run_gateway({"/a": Tokens}, auth=AUTH) as gw, gw.connect("/a") as ws:
        answers: list[Any] = []
        for token in (good, expired, forged):
            await ws.send_str(token)
            answers.append(await ws.receive_str())
    assert answers[0] == "user ann"
    assert answers[1].startswith("expired: ")
    assert answers[2].startswith("invalid: ")
    assert not any(token in answer for answer in answers for token in (expired, forged))


async def test_signals_cross_instances_over_the_broker(redis_server: Any) -> None:
    broker = redis_server.url
    async with asyncio.timeout(TIMEOUT), run_gateway({"/s": Signals}, broker=broker) as a, \
            run_gateway({"/s": Signals}, broker=broker) as b, a.connect("/s") as on_a, b.connect("/s") as on_b:
        assert (await on_a.receive_str(), await on_b.receive_str()) == ("ready", "ready")
        await on_a.send_str("ping")
        assert await on_b.receive_str() == "heard ping"
