"""Exact Prometheus counters after a scripted session, and the JSON access log of a real process."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from prometheus_client.parser import text_string_to_metric_families

from wsgate.testing import GatewayServer, run_gateway

Start = Callable[..., Any]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(gw: GatewayServer) -> Samples:
    async with gw.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def wire_size(payload_len: int) -> int:
    return payload_len + (2 if payload_len < 126 else 4 if payload_len < 65536 else 10)


async def test_counters_are_exact_after_a_scripted_session() -> None:
    endpoints: dict[str, Any] = {
        "/echo": {"handler": "echo", "max_message_size": 1024, "heartbeat": {"interval": 0}},
        "/chat": {"handler": "chat", "rate_limit": {"messages": 3, "per": 60, "burst": 3}},
    }
    async with run_gateway(endpoints) as gw:
        # echo: three messages of known sizes, then a normal close
        sent: list[str | bytes] = ["hello", "x" * 200, b"\x00" * 1000]
        async with gw.connect("/echo") as ws:
            for message in sent:
                if isinstance(message, str):
                    await ws.send_str(message)
                    assert await ws.receive_str(timeout=5) == message
                else:
                    await ws.send_bytes(message)
                    assert await ws.receive_bytes(timeout=5) == message
        # echo: one message over max_message_size
        async with gw.connect("/echo") as ws:
            await ws.send_str("y" * 2000)
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1009)
        # one origin rejection
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gw.connect("/echo", headers={"Origin": "http://evil.example"}).__aenter__()
        assert refused.value.status == 403
        # chat: three messages within the limit, the fourth closes the connection
        chat_in = ["one", "two", "three", "four!"]
        received: list[str] = []
        async with gw.connect("/chat?room=metrics&name=ann") as ws:
            for text in chat_in:
                await ws.send_str(text)
            async with asyncio.timeout(5):
                while (msg := await ws.receive()).type is WSMsgType.TEXT:
                    received.append(msg.data)
            assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1008, "rate limit exceeded")
        kinds = [json.loads(m)["type"] for m in received]
        assert kinds == ["welcome", "history", "join", "message", "message", "message"]

        async with asyncio.timeout(5):
            while True:
                if not gw.gateway.sessions:
                    break
                await asyncio.sleep(0.01)
        samples = await scrape(gw)

    def e(path: str, **labels: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({"endpoint": path, **labels}.items()))

    chat_sent_bytes = sum(wire_size(len(m.encode())) for m in received)
    expected: Samples = {
        ("wsgate_open_connections", e("/chat")): 0,
        ("wsgate_open_connections", e("/echo")): 0,
        ("wsgate_connections_total", e("/chat")): 1,
        ("wsgate_connections_total", e("/echo")): 2,
        ("wsgate_messages_received_total", e("/chat")): 4,
        ("wsgate_messages_received_total", e("/echo")): 3,
        ("wsgate_messages_sent_total", e("/chat")): 6,
        ("wsgate_messages_sent_total", e("/echo")): 3,
        ("wsgate_received_bytes_total", e("/chat")): sum(len(t) for t in chat_in),
        ("wsgate_received_bytes_total", e("/echo")): 5 + 200 + 1000,
        ("wsgate_sent_bytes_total", e("/chat")): chat_sent_bytes,
        ("wsgate_sent_bytes_total", e("/echo")): wire_size(5) + wire_size(200) + wire_size(1000),
        ("wsgate_origin_rejections_total", e("/chat")): 0,
        ("wsgate_origin_rejections_total", e("/echo")): 1,
        ("wsgate_slow_client_closes_total", e("/chat")): 0,
        ("wsgate_slow_client_closes_total", e("/echo")): 0,
        ("wsgate_handler_errors_total", e("/chat")): 0,
        ("wsgate_handler_errors_total", e("/echo")): 0,
        ("wsgate_heartbeat_timeouts_total", e("/chat")): 0,
        ("wsgate_heartbeat_timeouts_total", e("/echo")): 0,
        ("wsgate_closes_total", e("/chat", code="1008")): 1,
        ("wsgate_closes_total", e("/echo", code="1000")): 1,
        ("wsgate_closes_total", e("/echo", code="1009")): 1,
        ("wsgate_limit_rejections_total", e("/chat", limit="rate")): 1,
        ("wsgate_broker_publish_failures_total", ()): 0,
    }
    assert samples == expected


async def test_json_access_log_has_one_line_per_open_and_close_and_no_secrets(
    wsgate_process: Start, write_config: Callable[..., Path]
) -> None:
    config = write_config({
        "server": {"host": "127.0.0.1"},
        "logging": {"format": "json"},
        "endpoints": [{"path": "/echo", "handler": "echo"}],
    })
    proc = wsgate_process(config)
    origin = f"http://127.0.0.1:{proc.port}"
    body_text, body_bytes = "BODY-MARKER-text-7f3a", b"BODY-MARKER-bytes-91c2"
    async with aiohttp.ClientSession() as session:
        url = proc.ws_url + "/echo?token=secret123&room=lobby"
        async with session.ws_connect(url, headers={"Origin": origin}) as ws:
            await ws.send_str(body_text)
            assert await ws.receive_str(timeout=5) == body_text
            await ws.send_bytes(body_bytes)
            assert await ws.receive_bytes(timeout=5) == body_bytes
            await ws.close(code=4001, message=b"bye")
    await asyncio.to_thread(proc.wait_for_line, r'"event": "close"')
    proc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.proc.wait, 10) == 0
    output = proc.output

    records = []
    for line in output.splitlines():
        if line.startswith("wsgate listening on "):
            continue
        records.append(json.loads(line))  # every other line is one JSON object
    opens = [r for r in records if r.get("event") == "open"]
    closes = [r for r in records if r.get("event") == "close"]
    assert len(opens) == 1
    assert len(closes) == 1
    opened, closed = opens[0], closes[0]
    for record in (opened, closed):
        assert record["logger"] == "wsgate.access"
        assert record["level"] == "info"
        assert isinstance(record["ts"], float)
    assert opened["conn"] == closed["conn"]
    assert {k: opened[k] for k in ("endpoint", "remote", "origin", "subprotocol")} == {
        "endpoint": "/echo", "remote": "127.0.0.1", "origin": origin, "subprotocol": None}
    assert opened["query"] == "token=***&room=lobby"
    assert {k: closed[k] for k in ("endpoint", "remote", "code", "reason", "messages_in", "messages_out")} == {
        "endpoint": "/echo", "remote": "127.0.0.1", "code": 4001, "reason": "bye",
        "messages_in": 2, "messages_out": 2}
    assert isinstance(closed["duration"], float)
    assert closed["duration"] >= 0
    assert "secret123" not in output
    assert "BODY-MARKER" not in output
