"""Client data cannot forge log lines or fields, and secrets never reach the log.

Pure: the text formatter's logfmt quoting, the JSON formatter, ``redact_query``. Live: a
real process with the text format at debug level, fed a query with ``%0A`` and ESC, an
Origin with spaces, a close reason with a newline, credentials in the query and in
``Authorization``/``Cookie`` (also in malformed requests that aiohttp logs).
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from wsgate.connection import Connection
from wsgate.observe import logs

Start = Callable[..., Any]

# What a client may put in a field: every kind of line break, ESC, DEL, C1, separators.
NASTY = 'a b\nforged=1\r\t"q"\\ \x1b[31m \x7f \x85 \u2028 \u2029 \u202e x=y'
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_LINE_START = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: |wsgate listening on )")


def _unescape(value: str) -> str:
    if not value.startswith('"'):
        return value
    simple = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
    return re.sub(r'\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt"\\])',
                  lambda m: simple.get(m[1]) or chr(int(m[1][1:], 16)), value[1:-1])


def logfmt_fields(line: str) -> dict[str, str]:
    """The ``key=value`` fields of one text log line, quoted values unescaped."""
    return {k: _unescape(v) for k, v in _PAIR.findall(line)}


def text_line(msg: str, *args: object, exc: BaseException | None = None, **fields: Any) -> str:
    record = logging.makeLogRecord({"name": "wsgate.access", "levelno": logging.INFO, "levelname": "INFO",
                                    "msg": msg, "args": args, **fields})
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    return logs.TextFormatter().format(record)


# --- text format: logfmt quoting -----------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("/ws", "/ws"),
        (1000, "1000"),
        (None, "None"),
        ("", '""'),
        ("a b", '"a b"'),
        ("a=b", '"a=b"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("cr\rtab\t", '"cr\\rtab\\t"'),
        ("\x1b[31mred", '"\\x1b[31mred"'),
        ("del\x7f", '"del\\x7f"'),
        ("nel\x85", '"nel\\x85"'),
        ("ls\u2028ps\u2029", '"ls\\u2028ps\\u2029"'),
        ("rtl\u202e", '"rtl\\u202e"'),
        ("nbsp\u00a0", '"nbsp\u00a0"'),  # quoted: a viewer shows it as a space
        ("caf\u00e9", "caf\u00e9"),
    ],
)
def test_logfmt_value(value: object, written: str) -> None:
    assert logs.logfmt_value(value) == written


def test_text_fields_cannot_forge_fields_or_lines() -> None:
    line = text_line("connection closed", conn="c1", remote="127.0.0.1", reason=NASTY, origin="http://a b=c")
    assert "\n" not in line
    assert "\r" not in line
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", line)
    assert logfmt_fields(line) == {"conn": "c1", "remote": "127.0.0.1", "reason": NASTY, "origin": "http://a b=c"}


def test_text_message_cannot_forge_lines_but_tracebacks_keep_theirs() -> None:
    line = text_line("origin refused: %s on %s", "x\n2026-01-01 00:00:00,000 INFO forged: y", "/ws\x1b")
    assert "\n" not in line
    assert "x\\n2026-01-01" in line
    assert "/ws\\x1b" in line
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        line = text_line("handler %s raised", "h", exc=exc)
    head, *rest = line.split("\n")
    assert head.endswith("handler h raised")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "RuntimeError: boom"


def test_json_format_is_one_line_and_round_trips() -> None:
    record = logging.makeLogRecord({"name": "wsgate.access", "levelno": logging.INFO, "levelname": "INFO",
                                    "msg": "open %s", "args": (NASTY,), "reason": NASTY})
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", line)  # ensure_ascii escapes them all
    parsed = json.loads(line)
    assert parsed["reason"] == NASTY
    assert parsed["msg"] == f"open {NASTY}"


# --- redact_query --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name",
    ["token", "access_token", "Access-Token", "secret", "client_secret", "password", "passwd", "pass", "PASS",
     "pwd", "auth", "Authorization", "key", "api_key", "api-key", "apikey", "APIKEY", "sig", "signature",
     "X-Amz-Signature", "jwt", "id_jwt", "session", "session_id", "PHPSESSID", "cookie", "Cookie",
     "credential", "bearer"],
)
def test_secret_looking_parameters_are_redacted(name: str) -> None:
    assert logs.redact_query({name: "s3cr3t", "room": "lobby"}) == f"{name}=***&room=lobby"


@pytest.mark.parametrize("name", ["room", "name", "channel", "id", "v"])
def test_ordinary_parameters_are_kept(name: str) -> None:
    assert logs.redact_query({name: "x"}) == f"{name}=x"


# --- a real process ------------------------------------------------------------------------

SECRETS = {
    "access_token": "SECRET-Q-access-token", "api-key": "SECRET-Q-api-key", "pwd": "SECRET-Q-pwd",
    "pass": "SECRET-Q-pass", "jwt": "SECRET-Q-jwt", "session": "SECRET-Q-session", "Cookie": "SECRET-Q-cookie",
    "signature": "SECRET-Q-signature", "API_KEY": "SECRET-Q-API-KEY",
}
FORGED = "2026-01-01 00:00:00,000 INFO wsgate.access: connection open conn=c9 remote=6.6.6.6"


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data


async def test_text_log_of_a_real_process_has_no_forged_lines_and_no_secrets(
    wsgate_process: Start, write_config: Callable[..., Path]
) -> None:
    config = write_config({
        "server": {"host": "127.0.0.1"},
        "logging": {"format": "text", "level": "debug"},
        "policy": {"origins": "*"},
        "endpoints": [{"path": "/echo", "handler": "echo"}],
    })
    proc = wsgate_process(config)
    query = "x=%0A" + FORGED.replace(" ", "%20") + "&esc=%1B%5B2J%7F%C2%85%E2%80%A8&room=lobby"
    query += "".join(f"&{k}={v}" for k, v in SECRETS.items())
    origin = 'http://a.test remote=6.6.6.6 x="y"'
    reason = "bye\n" + FORGED.replace("open", "closed")
    headers = {"Authorization": "Bearer SECRET-H-auth", "Cookie": "sid=SECRET-H-cookie"}
    async with aiohttp.ClientSession() as session, session.ws_connect(
            URL(f"{proc.ws_url}/echo?{query}", encoded=True), origin=origin, headers=headers) as ws:
        await ws.send_str("hi")
        assert await ws.receive_str(timeout=5) == "hi"
        await ws.close(code=4000, message=reason.encode())
    # Malformed requests: aiohttp's parser quotes the offending header line in its error.
    bad = [b"Authorization: Bearer SECRET-H-bad\x01auth", b"Cookie: sid=SECRET-H-bad\x7fcookie",
           b"Authorization: Bearer SECRET-H-long" + b"A" * 9000]
    for header in bad:
        reply = await asyncio.to_thread(_raw_request, proc.port,
                                        b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.0 400") or reply.startswith(b"HTTP/1.1 400"), reply[:100]
    await asyncio.to_thread(proc.wait_for_line, r"wsgate\.access: connection closed")
    # Each got its 400 above, so each has been logged, or left out by the one-a-second limit.
    await asyncio.to_thread(proc.wait_for_line, r"malformed HTTP request from 127\.0\.0\.1")
    proc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.proc.wait, 10) == 0
    output = proc.output

    for line in output.splitlines():
        assert _LINE_START.match(line), f"a line that wsgate did not start (forged?): {line!r}\n{output}"
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]", output)
    assert "SECRET" not in output, output
    access = [line for line in output.splitlines() if "wsgate.access:" in line]
    assert len(access) == 2, output
    opened, closed = (logfmt_fields(line) for line in access)
    assert opened["origin"] == origin
    assert opened["remote"] == closed["remote"] == "127.0.0.1"
    shown_query = dict(pair.split("=", 1) for pair in opened["query"].split("&"))
    assert shown_query["x"] == "\n" + FORGED
    assert shown_query["esc"] == "\x1b[2J\x7f\x85\u2028"
    assert shown_query["room"] == "lobby"
    assert {k: shown_query[k] for k in SECRETS} == dict.fromkeys(SECRETS, "***")
    assert (closed["code"], closed["reason"]) == ("4000", reason)


def test_no_code_path_logs_request_headers() -> None:
    """``Connection.headers`` holds Authorization and Cookie: no logging call may be given
    anything named ``headers``, and a connection's repr must not show them."""
    root = Path(__file__).resolve().parent.parent
    levels = {"debug", "info", "warning", "error", "exception", "critical", "log"}
    offenders = []
    for path in [*(root / "wsgate").rglob("*.py"), *(root / "handlers").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in levels:
                named = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                named |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                if "headers" in named:
                    offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, offenders
    link: Any = object()
    conn = Connection._open(link, lambda frame: True, id="c1", path="/ws", remote="127.0.0.1",
                            headers={"Authorization": "Bearer SECRET", "Cookie": "SECRET"}, query={},
                            subprotocol=None)
    assert "SECRET" not in repr(conn)
