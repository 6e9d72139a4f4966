"""What a new user does first, done as they would do it: the README's handler and test
typed into a project and run with plain ``pytest``; ``wsgate init``; the shipped schema;
``serve --reload`` picking up an edited handler."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from test_docs import python_blocks

from wsgate.config import Registry
from wsgate.config.schema import config_schema

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
PYTEST = VENV_BIN / "pytest"
WSGATE = VENV_BIN / "wsgate"


def _run(cmd: list[str | Path], cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    # A user's shell: no PYTHONPATH, nothing of this test session's configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "PYTEST_"))}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _readme_block(containing: str) -> str:
    blocks = [b.code for b in python_blocks(README) if containing in b.code]
    assert len(blocks) == 1, f"expected one README block containing {containing!r}, found {len(blocks)}"
    return blocks[0]


def test_the_readme_handler_and_its_test_pass_with_plain_pytest(tmp_path: Path) -> None:
    """The two README snippets, verbatim, in the files the README names; then `pytest`."""
    (tmp_path / "handlers").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "handlers" / "shout.py").write_text(_readme_block("class Shout(Handler)"))
    (tmp_path / "tests" / "test_shout.py").write_text(_readme_block("async def test_shout"))
    proc = _run([PYTEST, "-q", "-p", "no:cacheprovider"], tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "1 passed" in proc.stdout, output
    assert "warning" not in output.lower(), output


def test_init_writes_a_project_that_passes_its_own_tests(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    init = _run([WSGATE, "init", project], tmp_path)
    assert init.returncode == 0, init.stderr
    for name in ("config.yaml", "wsgate.schema.json", "handlers/example.py", "tests/test_example.py"):
        assert (project / name).is_file(), name
    check = _run([WSGATE, "check"], project)
    assert check.returncode == 0, check.stderr
    assert "/greet" in check.stdout
    tests = _run([PYTEST, "-q", "-p", "no:cacheprovider"], project)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout, tests.stdout
    generated = json.loads(_run([WSGATE, "schema"], tmp_path).stdout)
    assert json.loads((project / "wsgate.schema.json").read_text()) == generated


def test_init_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("mine\n")
    proc = _run([WSGATE, "init"], tmp_path)
    assert proc.returncode == 2
    assert "not overwriting" in proc.stderr, proc.stderr
    assert "config.yaml" in proc.stderr, proc.stderr
    assert (tmp_path / "config.yaml").read_text() == "mine\n"
    assert not (tmp_path / "handlers").exists(), "init wrote some files before refusing"


def test_the_shipped_schema_is_the_one_wsgate_generates() -> None:
    """The shipped config.yaml's modeline names wsgate.schema.json: it must exist and be current."""
    assert "$schema=wsgate.schema.json" in (ROOT / "config.yaml").read_text().splitlines()[0]
    shipped = json.loads((ROOT / "wsgate.schema.json").read_text())
    assert shipped == config_schema(Registry(plugins=False)), (
        "wsgate.schema.json is stale: python -m wsgate schema --builtins-only > wsgate.schema.json"
    )


GREETER = '''\
from wsgate import Connection, Handler, Message


class Greeter(Handler):
    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send("{prefix}" + str(message))
'''

RELOAD_CONFIG = """\
server: {host: 127.0.0.1}
policy: {heartbeat: {interval: 0}}
endpoints:
  - {path: /greet, handler: "handlers.greeter:Greeter"}
"""


async def test_reload_restarts_on_an_edited_handler(tmp_path: Path, wsgate_process: Callable[..., Any]) -> None:
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "greeter.py").write_text(GREETER.replace("{prefix}", "v1:"))
    (tmp_path / "config.yaml").write_text(RELOAD_CONFIG)
    server = wsgate_process(tmp_path / "config.yaml", "serve", "--reload")
    async with aiohttp.ClientSession() as session, session.ws_connect(server.url + "/greet") as ws:
        await ws.send_str("x")
        assert await ws.receive_str() == "v1:x"
        (tmp_path / "handlers" / "greeter.py").write_text(GREETER.replace("{prefix}", "v2:"))
        async with asyncio.timeout(20):
            closing = await ws.receive()
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 1012), closing
    await asyncio.to_thread(server.wait_for_line, r"greeter\.py changed; restarting", 20)
    async with asyncio.timeout(20):  # --port 0: the new process announces a port of its own
        while len(ports := re.findall(r"listening on http://127\.0\.0\.1:(\d+)/", server.output)) < 2:
            await asyncio.sleep(0.05)
    port = int(ports[-1])
    async with aiohttp.ClientSession() as session, session.ws_connect(f"http://127.0.0.1:{port}/greet") as ws:
        await ws.send_str("x")
        assert await ws.receive_str() == "v2:x"
    server.signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.proc.wait, 20) == 0
