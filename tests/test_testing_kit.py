"""The test kit, wsgate.testing: ``run_gateway`` and the ``wsgate_gateway`` fixture.

Also the parts of the handler contract that docs/handlers.md promises and that the
kit makes visible: close codes reported to ``on_disconnect`` and ``Connection.closed``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import BaseModel, ConfigDict
from websockets.asyncio.client import connect

from wsgate import ConfigError, Connection, ConnectionClosed, Handler, Message
from wsgate.config import Registry, load_config
from wsgate.testing import GatewayServer, run_gateway

TIMEOUT = 10


class Upper(Handler):
    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(message.upper() if isinstance(message, str) else message)


class PrefixOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefix: str = ">"


class Prefix(Handler):
    Options = PrefixOptions
    options: PrefixOptions
    accepts = "text"

    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(f"{self.options.prefix}{message}")


class Recorder(Handler):
    """Writes what happens to it to a list shared by the test (one list per class)."""

    events: list[tuple[str, Any]] = []
    changed: asyncio.Event

    def record(self, event: str, detail: Any) -> None:
        self.events.append((event, detail))
        self.changed.set()

    @classmethod
    async def until(cls, event: tuple[str, Any] | str) -> None:
        """Wait until ``event`` (or any event of that name) was recorded."""
        while not any(e == event or e[0] == event for e in cls.events):
            cls.changed.clear()
            await cls.changed.wait()

    async def startup(self) -> None:
        self.record("startup", None)

    async def on_connect(self, conn: Connection) -> None:
        self.record("connect", conn.id)

    async def on_message(self, conn: Connection, message: Message) -> None:
        self.record("message", message)
        if message == "close-then-send":
            await conn.close(4000, "closing")
            self.record("closed after close()", conn.closed)
            try:
                await conn.send("too late")
            except ConnectionClosed:
                self.record("send after close()", "raised")
            else:
                self.record("send after close()", "queued")

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        self.record("disconnect", int(code))

    async def shutdown(self) -> None:
        self.record("shutdown", None)


def recorder() -> type[Recorder]:
    """A fresh Recorder subclass with its own event list."""
    return type("Recorder", (Recorder,), {"events": [], "changed": asyncio.Event()})


async def _echo_roundtrip(gw: GatewayServer, path: str, text: str) -> str:
    async with gw.connect(path) as ws:
        await ws.send_str(text)
        return await ws.receive_str()


# --- run_gateway ------------------------------------------------------------------------

async def test_run_gateway_with_a_class() -> None:
    async with asyncio.timeout(TIMEOUT), run_gateway({"/up": Upper}) as gw:
        assert gw.url.startswith("http://127.0.0.1:")
        assert gw.ws_url == "ws" + gw.url.removeprefix("http")
        assert await _echo_roundtrip(gw, "/up", "abc") == "ABC"
        async with gw.get("/healthz") as response:
            assert response.status == 200
        async with gw.get("/nowhere") as response:
            assert response.status == 404
        assert gw.stats.endpoint("/up").messages_in == 1
        assert set(gw.gateway.routes) == {"/up"}


async def test_run_gateway_with_handler_names() -> None:
    """A built-in name and the name an installed plugin registered (examples/ticker)."""
    async with asyncio.timeout(TIMEOUT), run_gateway({"/echo": "echo", "/ticks": "ticker"}) as gw:
        assert await _echo_roundtrip(gw, "/echo", "same") == "same"
        assert gw.gateway.routes["/ticks"].endpoint.handler_cls.__module__ == "wsgate_ticker"


async def test_run_gateway_with_an_endpoint_mapping() -> None:
    endpoints = {
        "/p": {"handler": Prefix, "options": {"prefix": "# "}, "max_message_size": "1KiB"},
        "/strict": {"handler": Prefix, "origins": ["https://app.example"], "allow_missing_origin": False},
        "/ticks": {"handler": "ticker", "options": {"interval_ms": 20, "start": 7}},
    }
    async with asyncio.timeout(TIMEOUT), run_gateway(endpoints, policy={"max_message_size": 16}) as gw:
        # options reach the handler; the endpoint's own policy wins over policy=
        assert await _echo_roundtrip(gw, "/p", "x" * 100) == "# " + "x" * 100
        # policy= applies where the endpoint says nothing
        async with gw.connect("/strict", origin="https://app.example") as ws:
            await ws.send_str("y" * 17)
            msg = await ws.receive()
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1009)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await gw.connect("/strict", origin="https://evil.example")
        assert refused.value.status == 403
        async with gw.connect("/ticks") as ws:
            # The count starts at startup, so a client that joins later sees it further on.
            first, second = json.loads(await ws.receive_str()), json.loads(await ws.receive_str())
            assert first["n"] >= 7
            assert second == {"type": "tick", "n": first["n"] + 1}


async def test_run_gateway_validates_like_config_yaml() -> None:
    with pytest.raises(ConfigError) as info:
        async with run_gateway({"/p": {"handler": Prefix, "options": {"prefx": "!"}}, "/t": "nope"}):
            raise AssertionError("a gateway started with a bad config")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("<run_gateway>:")
    assert lines[0].endswith("endpoints[0].options.prefx: unknown key; did you mean 'prefix'? allowed keys: prefix")
    assert "endpoints[1].handler: unknown handler 'nope'" in lines[1]


async def test_run_gateway_with_a_config_file(tmp_path: Path) -> None:
    """A config.yaml, with its own handler module beside it, serves as-is (loaded, too)."""
    package = tmp_path / "kit_settings_handlers"
    package.mkdir()
    (package / "rev.py").write_text(textwrap.dedent("""\
        from wsgate import Handler

        class Reverse(Handler):
            async def on_message(self, conn, message):
                await conn.send(message[::-1])
    """))
    config = tmp_path / "config.yaml"
    config.write_text("endpoints:\n  - {path: /rev, handler: 'kit_settings_handlers.rev:Reverse'}\n")
    async with asyncio.timeout(TIMEOUT), run_gateway(config) as gw:
        assert await _echo_roundtrip(gw, "/rev", "abc") == "cba"
    registry = Registry()
    async with asyncio.timeout(TIMEOUT), run_gateway(load_config(config, registry), registry=registry) as gw:
        assert await _echo_roundtrip(gw, "/rev", "abc") == "cba"
    with pytest.raises(TypeError, match=r"a config file .* says them itself"):
        async with run_gateway(config, policy={"origins": "*"}):
            raise AssertionError("policy= was ignored")
    config.write_text("endpoints:\n  - {path: /rev, handler: 'kit_settings_handlers.rev:Reverse', optons: {}}\n")
    with pytest.raises(ConfigError, match=r"config.yaml:2:64: endpoints\[0\]\.optons: unknown key"):
        async with run_gateway(config):
            raise AssertionError("a bad config file was served")


async def test_each_run_gateway_is_its_own_server() -> None:
    async with asyncio.timeout(TIMEOUT), run_gateway({"/a": Upper}) as one, run_gateway({"/a": "echo"}) as two:
        assert one.url != two.url
        assert await _echo_roundtrip(one, "/a", "q") == "Q"
        assert await _echo_roundtrip(two, "/a", "q") == "q"


async def test_leaving_run_gateway_closes_connections_with_1001() -> None:
    handler = recorder()
    async with asyncio.timeout(TIMEOUT):
        async with run_gateway({"/rec": handler}) as gw:
            url = gw.ws_url + "/rec"
            client = await connect(url)
            await client.send("hi")
            await handler.until(("message", "hi"))
        # websockets answers the close frame by itself; its record of the close is final.
        await client.wait_closed()
        assert (client.close_code, client.close_reason) == (1001, "server shutting down")
        assert handler.events == [("startup", None), ("connect", "c1"), ("message", "hi"),
                                  ("disconnect", 1001), ("shutdown", None)]
        with pytest.raises(ConnectionRefusedError):
            await connect(url, open_timeout=2)


async def test_leaving_run_gateway_stops_background_tasks() -> None:
    from wsgate_ticker import Ticker

    async with asyncio.timeout(TIMEOUT):
        async with run_gateway({"/t": {"handler": Ticker, "options": {"interval_ms": 10}}}) as gw:
            runtime = gw.gateway.routes["/t"]
            tasks = set(runtime.tasks)
            assert tasks
            assert not any(t.done() for t in tasks)
        assert all(t.cancelled() for t in tasks)


# --- the wsgate_gateway fixture ----------------------------------------------------------

async def test_the_fixture_starts_gateways(wsgate_gateway: Callable[..., Any]) -> None:
    first = await wsgate_gateway({"/up": Upper})
    second = await wsgate_gateway({"/p": {"handler": Prefix, "options": {"prefix": "~"}}}, policy={"origins": "*"})
    assert first.url != second.url
    async with asyncio.timeout(TIMEOUT):
        assert await _echo_roundtrip(first, "/up", "a") == "A"
        assert await _echo_roundtrip(second, "/p", "a") == "~a"


USER_TEST = '''\
import json
from pathlib import Path

from wsgate import Handler

LOG = Path(__file__).with_name("events.json")


class Logged(Handler):
    events = []

    async def on_message(self, conn, message):
        await conn.send(message.upper())

    async def on_disconnect(self, conn, code):
        self.events.append(["disconnect", int(code)])

    async def shutdown(self):
        self.events.append(["shutdown"])
        LOG.write_text(json.dumps(self.events))


async def test_user(wsgate_gateway):
    gw = await wsgate_gateway({"/log": Logged})
    ws = await gw.connect("/log")  # left open for the fixture to close
    await ws.send_str("from a user project")
    assert await ws.receive_str() == "FROM A USER PROJECT"
'''


PROJECT_CONFIG = "endpoints:\n  - {path: /log, handler: echo}\n"  # what makes a folder a wsgate project


def _run_user_project(tmp_path: Path, setup: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on a wsgate project (its config.yaml and one test file) as a user would set it up."""
    (tmp_path / "config.yaml").write_text(PROJECT_CONFIG)
    test = USER_TEST
    if setup == "strict-marked":
        test = test.replace("async def test_user", "import pytest\n\n\n@pytest.mark.asyncio\nasync def test_user")
        (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = strict\n")
    elif setup == "auto":
        (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    elif setup == "legacy":  # what the docs said before the plugin loaded by itself
        test = test.replace("LOG =", 'pytest_plugins = ["wsgate.testing"]\nLOG =')
    (tmp_path / "test_user.py").write_text(test)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("setup", ["nothing", "auto", "strict-marked", "legacy"])
async def test_the_fixture_in_a_user_project_stops_its_gateway(tmp_path: Path, setup: str) -> None:
    """Installed with [testing], the plugin needs no configuration in a wsgate project: no
    ini file, no ``pytest_plugins``, no asyncio marks. Projects that configured pytest-asyncio
    themselves, or enabled the kit the old way, keep working. At teardown the fixture
    closes open connections with 1001 and shuts handlers down."""
    proc = await asyncio.to_thread(_run_user_project, tmp_path, setup)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    output = proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout, output
    assert "warning" not in output.lower(), output
    assert json.loads((tmp_path / "events.json").read_text()) == [["disconnect", 1001], ["shutdown"]]


MARKS_PROBE = """
import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        print("MARKS", item.name, sorted({m.name for m in item.iter_markers()}))
"""


async def test_the_plugin_marks_only_unmarked_coroutine_tests(tmp_path: Path) -> None:
    """In a wsgate project: a coroutine test marked for anyio is anyio's business; a plain
    function is nobody's. (Outside one, see test_pytest_plugin.py.)"""
    (tmp_path / "config.yaml").write_text(PROJECT_CONFIG)
    (tmp_path / "conftest.py").write_text(MARKS_PROBE)
    (tmp_path / "test_marks.py").write_text(
        "import pytest\n\n\n@pytest.mark.anyio\nasync def test_anyio():\n    pass\n\n\n"
        "async def test_plain_async():\n    pass\n\n\ndef test_sync():\n    pass\n"
    )
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--collect-only",
                         "test_marks.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    marks = {name.split("[")[0]: found for _, name, found in
             (line.split(" ", 2) for line in proc.stdout.splitlines() if line.startswith("MARKS "))}
    assert set(marks) == {"test_anyio", "test_plain_async", "test_sync"}, proc.stdout + proc.stderr
    assert "'anyio'" in marks["test_anyio"]
    assert "'asyncio'" not in marks["test_anyio"]
    assert marks["test_plain_async"] == "['asyncio']"
    assert marks["test_sync"] == "[]"


# --- what on_disconnect and Connection report, as documented ------------------------------

@pytest.mark.parametrize(
    ("frame", "code"),
    [(b"x" * 200, 1009), (("text", b"\xff\xfe"), 1007)],
    ids=["too-big-1009", "bad-utf8-1007"],
)
async def test_on_disconnect_gets_the_code_the_gateway_closed_with(frame: Any, code: int) -> None:
    """docs/handlers.md: "Your handler is not called for the message that caused the
    close; on_disconnect gets the code." The client sees ``code``; so must the handler."""
    handler = recorder()
    async with asyncio.timeout(TIMEOUT), run_gateway({"/r": {"handler": handler, "max_message_size": 100}}) as gw:
        async with connect(gw.ws_url + "/r") as ws:
            if isinstance(frame, tuple):
                await ws.send(frame[1], text=True)
            else:
                await ws.send(frame)
            await ws.wait_closed()
            assert ws.close_code == code
        await handler.until("disconnect")
    assert ("disconnect", code) in handler.events, handler.events


async def test_a_connection_is_closed_as_soon_as_close_is_called() -> None:
    """``Connection.closed``: "True once the connection is closing or closed; sends then
    raise." After ``await conn.close()`` the connection is closing."""
    handler = recorder()
    async with asyncio.timeout(TIMEOUT), run_gateway({"/r": handler}) as gw, gw.connect("/r") as ws:
        await ws.send_str("close-then-send")
        received = []
        while (msg := await ws.receive()).type is aiohttp.WSMsgType.TEXT:
            received.append(msg.data)
        assert ("closed after close()", True) in handler.events, handler.events
        assert ("send after close()", "raised") in handler.events, handler.events
        assert received == [], "a message sent after close() went out before the close frame"
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4000, "closing")
