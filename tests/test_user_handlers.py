"""Handlers written by users: background push, options, and a handlers/ folder beside the config."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from pydantic import BaseModel, ConfigDict, Field

from wsgate import ConfigError, Connection, Handler, Message
from wsgate.testing import GatewayServer, run_gateway

Start = Callable[..., Awaitable[GatewayServer]]


class Ticker(Handler):
    """Pushes ``{"tick": n}`` to every client every 50 ms from background work."""

    runs: list[str] = []

    async def startup(self) -> None:
        self.count = 0
        self.context.spawn(self._tick, "ticker")

    async def _tick(self) -> None:
        Ticker.runs.append("started")
        try:
            while True:
                await asyncio.sleep(0.05)
                self.count += 1
                self.context.broadcast(json.dumps({"tick": self.count}))
        except asyncio.CancelledError:
            Ticker.runs.append("cancelled")
            raise

    async def shutdown(self) -> None:
        Ticker.runs.append("shutdown")


class RepeatOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    times: int = Field(default=1, ge=1, le=5)
    separator: str = " "


class Repeat(Handler):
    Options = RepeatOptions
    options: RepeatOptions

    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(self.options.separator.join([str(message)] * self.options.times))


@pytest.fixture(autouse=True)
def _reset() -> None:
    Ticker.runs.clear()


async def ticks(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[int]:
    got = []
    async with asyncio.timeout(5):
        while len(got) < n:
            got.append(json.loads(await ws.receive_str())["tick"])
    return got


async def test_background_push_reaches_every_client_and_stops_on_shutdown() -> None:
    async with run_gateway({"/tick": Ticker}) as gw:
        handler = gw.gateway.routes["/tick"].handler
        assert isinstance(handler, Ticker)
        async with gw.connect("/tick") as a, gw.connect("/tick") as b:
            seen_a, seen_b = await ticks(a, 5), await ticks(b, 5)
            for seen in (seen_a, seen_b):
                assert seen == sorted(set(seen)), seen  # strictly increasing
                assert all(y - x == 1 for x, y in itertools.pairwise(seen)), seen  # no gaps for a reader
            # both clients get the same broadcast stream
            assert set(seen_a) & set(seen_b)
        assert Ticker.runs == ["started"]
    assert Ticker.runs == ["started", "cancelled", "shutdown"]
    stopped_at = handler.count
    await asyncio.sleep(0.2)
    assert handler.count == stopped_at


async def test_options_are_validated_and_given_to_the_handler(wsgate_gateway: Start) -> None:
    gw = await wsgate_gateway({
        "/r3": {"handler": Repeat, "options": {"times": 3, "separator": "-"}},
        "/r1": Repeat,
    })
    handler = gw.gateway.routes["/r3"].handler
    assert isinstance(handler.options, RepeatOptions)
    async with gw.connect("/r3") as ws:
        await ws.send_str("hey")
        assert await ws.receive_str(timeout=5) == "hey-hey-hey"
    async with gw.connect("/r1") as ws:
        await ws.send_str("hey")
        assert await ws.receive_str(timeout=5) == "hey"


@pytest.mark.parametrize(
    ("options", "where", "what"),
    [
        ({"times": 9}, "endpoints[0].options.times", "less than or equal to 5"),
        ({"times": "many"}, "endpoints[0].options.times", "integer"),
        ({"tmies": 2}, "endpoints[0].options.tmies", "unknown key"),
    ],
)
async def test_bad_options_are_refused_before_serving(options: dict[str, Any], where: str, what: str) -> None:
    with pytest.raises(ConfigError) as caught:
        async with run_gateway({"/r": {"handler": Repeat, "options": options}}):
            pytest.fail("the gateway started with invalid options")
    message = str(caught.value)
    assert where in message
    assert what in message


SHOUT = '''
from pydantic import BaseModel, ConfigDict

from wsgate import Connection, Handler, Message


class Shout(Handler):
    """Upper-cases text; binary goes back unchanged."""

    async def on_connect(self, conn: Connection) -> None:
        await conn.send("connected to " + conn.path)

    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(message.upper() if isinstance(message, str) else message)


class LoudOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suffix: str = "!"
    repeat: int = 1


class Loud(Shout):
    Options = LoudOptions

    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send((str(message).upper() + self.options.suffix) * self.options.repeat)
'''


def write_project(tmp_path: Path, endpoints: str) -> Path:
    handlers = tmp_path / "handlers"
    handlers.mkdir(exist_ok=True)
    (handlers / "shout.py").write_text(SHOUT)
    assert not (handlers / "__init__.py").exists()
    config = tmp_path / "config.yaml"
    config.write_text("server: {host: 127.0.0.1, port: 0}\nendpoints:\n" + textwrap.dedent(endpoints))
    return config


async def test_handlers_folder_beside_config(tmp_path: Path, wsgate_process: Callable[..., Any]) -> None:
    config = write_project(tmp_path, """\
        - {path: /shout, handler: "handlers.shout:Shout"}
        - {path: /loud, handler: "handlers.shout:Loud", options: {suffix: "?!", repeat: 2}}
        - {path: /ws, handler: echo}
        - {path: /chat, handler: chat}
    """)
    proc = wsgate_process(config)
    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        async with session.ws_connect(proc.ws_url + "/shout") as ws:
            assert await ws.receive_str() == "connected to /shout"
            await ws.send_str("hello")
            assert await ws.receive_str() == "HELLO"
            await ws.send_bytes(b"raw")
            assert await ws.receive_bytes() == b"raw"
        async with session.ws_connect(proc.ws_url + "/loud") as ws:
            assert await ws.receive_str() == "connected to /loud"
            await ws.send_str("hey")
            assert await ws.receive_str() == "HEY?!HEY?!"
        async with session.ws_connect(proc.ws_url + "/ws") as ws:
            await ws.send_str("built-in echo")
            assert await ws.receive_str() == "built-in echo"
        async with session.ws_connect(proc.ws_url + "/chat?name=zoe") as ws:
            welcome = json.loads(await ws.receive_str())
            assert {k: v for k, v in welcome.items() if k != "epoch"} == {
                "type": "welcome", "name": "zoe", "room": "lobby", "users": ["zoe"], "recovered": False}
        async with session.get(proc.url + "/") as resp:
            page = await resp.text()
        for path in ("/shout", "/loud", "/ws", "/chat"):
            assert f'value="{path}"' in page
            assert "handlers.shout:Loud" in page


async def test_handlers_folder_bad_options_exit_2(tmp_path: Path, wsgate_process: Callable[..., Any]) -> None:
    config = write_project(tmp_path, """\
        - {path: /ws, handler: echo}
        - {path: /loud, handler: "handlers.shout:Loud", options: {repeat: lots}}
    """)
    proc = wsgate_process(config, wait=False)
    assert await asyncio.to_thread(proc.proc.wait, 20) == 2
    out = proc.output
    assert f"{config}:4:" in out  # the line of the /loud entry
    assert "endpoints[1].options.repeat" in out
    assert "listening" not in out


async def test_missing_handler_module_is_a_config_error(tmp_path: Path,
                                                      wsgate_process: Callable[..., Any]) -> None:
    config = write_project(tmp_path, """\
        - {path: /x, handler: "handlers.nothere:Nope"}
    """)
    proc = wsgate_process(config, wait=False)
    assert await asyncio.to_thread(proc.proc.wait, 20) == 2
    assert "handlers.nothere" in proc.output
    assert "endpoints[0].handler" in proc.output


async def test_spawned_task_failure_is_logged_and_gateway_keeps_serving(
    wsgate_gateway: Start, caplog: pytest.LogCaptureFixture,
) -> None:
    class Fragile(Handler):
        async def startup(self) -> None:
            self.context.spawn(self._explode, "exploder")

        async def _explode(self) -> None:
            await asyncio.sleep(0.01)
            raise RuntimeError("background boom")

        async def on_message(self, conn: Connection, message: Message) -> None:
            await conn.send(message)

    gw = await wsgate_gateway({"/fragile": Fragile})
    async with asyncio.timeout(5):
        while True:
            if "background boom" in caplog.text:
                break
            await asyncio.sleep(0.01)
    assert "exploder" in caplog.text
    assert "/fragile" in caplog.text
    async with gw.connect("/fragile") as ws:
        await ws.send_str("fine")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "fine")
    assert gw.stats.endpoints["/fragile"].handler_errors == 1


USER_CHAT = '''
from wsgate import Connection, Handler, Message


class Chat(Handler):
    """The user's own chat: not the built-in one, though the file has the same name."""

    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(f"my chat: {message}")
'''

USER_ECHO = '''
from wsgate import Connection, Handler, Message


class Reverse(Handler):
    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(message[::-1])
'''


async def test_a_user_handlers_package_with_chat_and_echo_coexists_with_the_builtins(
    tmp_path: Path, wsgate_process: Callable[..., Any],
) -> None:
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    (handlers / "__init__.py").write_text("raise_if_builtins_come_from_here = True\n")
    (handlers / "chat.py").write_text(USER_CHAT)
    (handlers / "echo.py").write_text(USER_ECHO)
    config = tmp_path / "config.yaml"
    config.write_text(textwrap.dedent("""\
        server: {host: 127.0.0.1, port: 0}
        endpoints:
          - {path: /chat, handler: chat}
          - {path: /ws, handler: echo}
          - {path: /mychat, handler: "handlers.chat:Chat"}
          - {path: /reverse, handler: "handlers.echo:Reverse"}
    """))
    proc = wsgate_process(config)
    async with aiohttp.ClientSession() as session, asyncio.timeout(10):
        async with session.ws_connect(proc.ws_url + "/chat?name=ann") as ws:
            assert json.loads(await ws.receive_str())["type"] == "welcome"  # the built-in chat
        async with session.ws_connect(proc.ws_url + "/ws") as ws:
            await ws.send_str("abc")
            assert await ws.receive_str() == "abc"  # the built-in echo
        async with session.ws_connect(proc.ws_url + "/mychat") as ws:
            await ws.send_str("hi")
            assert await ws.receive_str() == "my chat: hi"
        async with session.ws_connect(proc.ws_url + "/reverse") as ws:
            await ws.send_str("abc")
            assert await ws.receive_str() == "cba"


async def test_a_handlers_folder_created_while_running_loads_on_reload(
    tmp_path: Path, wsgate_process: Callable[..., Any],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server: {host: 127.0.0.1, port: 0}\nendpoints:\n  - {path: /chat, handler: chat}\n")
    proc = wsgate_process(config)
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "shout.py").write_text(SHOUT)
    config.write_text(config.read_text() + '  - {path: /shout, handler: "handlers.shout:Shout"}\n')
    proc.signal(signal.SIGHUP)
    await asyncio.to_thread(proc.wait_for_line, r"reloaded .*endpoints /chat, /shout")
    async with aiohttp.ClientSession() as session, asyncio.timeout(10), \
            session.ws_connect(proc.ws_url + "/shout") as ws:
        assert await ws.receive_str() == "connected to /shout"
        await ws.send_str("late")
        assert await ws.receive_str() == "LATE"
