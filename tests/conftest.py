"""Shared fixtures: real wsgate processes, a real redis-server, config files.

Every server is started on an ephemeral loopback port and stopped by the fixture
that started it; nothing else is ever signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from wsgate.broker.redis import RedisBroker

# Marks the slow tier, which `bash scripts/test --fast` leaves out.
pytest_plugins = ["tiers"]

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "tests" / "node"
ARTIFACTS = ROOT / "test-artifacts"
_LISTENING = re.compile(r"wsgate listening on http://(\S+?):(\d+)/")


# Property tests check behaviour, not speed: on a 2-core machine running four workers one
# example can take longer than Hypothesis' default 200 ms deadline.
settings.register_profile("wsgate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("wsgate")


def free_port() -> int:
    """A port nobody listens on right now (for servers that cannot take port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


@pytest.fixture
def artifacts() -> Path:
    """A folder for screenshots and logs worth keeping (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config (a mapping, or YAML text) to tmp_path; returns its path."""

    def write(config: dict[str, Any] | str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
        return path

    return write


@dataclass
class WsgateProcess:
    """A ``python -m wsgate`` child process; output lines are collected as they come."""

    proc: subprocess.Popen[str]
    host: str = ""
    port: int = 0
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str] = field(default_factory=queue.Queue)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def output(self) -> str:
        self._drain()
        return "\n".join(self.lines)

    def _drain(self) -> None:
        while True:
            try:
                self.lines.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def wait_for_line(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until an output line matches ``pattern`` (a regex); return the match."""
        rx = re.compile(pattern)
        self._drain()
        for line in self.lines:
            if m := rx.search(line):
                return m
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self.proc.poll() is not None and self._queue.empty():
                    break
                continue
            self.lines.append(line)
            if m := rx.search(line):
                return m
        raise AssertionError(f"no output line matched {pattern!r}; output:\n{self.output}")

    async def metric(self, name: str, endpoint: str) -> float:
        """The value of ``name{endpoint="..."}`` in this process's ``/metrics``."""
        async with aiohttp.ClientSession() as session, session.get(self.url + "/metrics") as resp:
            body = await resp.text()
        m = re.search(rf'^{name}{{endpoint="{re.escape(endpoint)}"}} (\S+)$', body, re.MULTILINE)
        assert m, f"{name} for {endpoint} not in /metrics:\n{body}"
        return float(m.group(1))

    def wait_listening(self, timeout: float = 20) -> WsgateProcess:
        """Wait for the "wsgate listening on" line; take the host and port from it."""
        m = self.wait_for_line(_LISTENING.pattern, timeout=timeout)
        self.host, self.port = m.group(1).strip("[]"), int(m.group(2))
        return self

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _pump(stream: Any, sink: queue.Queue[str]) -> None:
    for line in stream:
        sink.put(line.rstrip("\n"))


def launch_wsgate(started: list[WsgateProcess], config: Path, *args: str, wait: bool = True,
                  env: dict[str, str] | None = None, port: int | None = 0) -> WsgateProcess:
    """Start ``python -m wsgate --config PATH --port PORT [args]`` in the config's folder; add it to ``started``.

    With ``wait`` (the default), wait until it listens. Whoever owns ``started`` stops them.
    """
    cmd = [sys.executable, "-m", "wsgate", "--config", str(config), *args]
    if port is not None and "--port" not in args:
        cmd += ["--port", str(port)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=config.parent,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    handle = WsgateProcess(proc)
    threading.Thread(target=_pump, args=(proc.stdout, handle._queue), daemon=True).start()
    started.append(handle)
    if wait:
        handle.wait_listening()
    return handle


@pytest.fixture
def wsgate_process() -> Iterator[Callable[..., WsgateProcess]]:
    """Factory: start ``python -m wsgate --config PATH --port 0 [args]`` and wait until it listens.

    ``wait=False`` returns at once (for processes expected to fail). All processes
    started are stopped (SIGTERM, then SIGKILL) at teardown.
    """
    started: list[WsgateProcess] = []

    def start(config: Path, *args: str, wait: bool = True, env: dict[str, str] | None = None,
              port: int | None = 0) -> WsgateProcess:
        return launch_wsgate(started, config, *args, wait=wait, env=env, port=port)

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture(scope="module")
def module_wsgate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., WsgateProcess]]:
    """Factory for one module: write ``config`` (a mapping) to a fresh folder named after ``name``,
    start ``python -m wsgate`` on it (``--port 0``) and wait until it listens.

    For a server the module's tests share (``wsgate_process`` is per test); all processes
    started are stopped when the module is done.
    """
    started: list[WsgateProcess] = []

    def start(config: dict[str, Any], name: str) -> WsgateProcess:
        path = tmp_path_factory.mktemp(name) / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return launch_wsgate(started, path)

    yield start
    for handle in started:
        handle.stop()


@dataclass
class RedisServer:
    """A redis-server child with persistence off; can be killed and restarted on its port."""

    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port("127.0.0.1", self.port)

    def kill(self) -> None:
        """``kill -9``: no goodbye to clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server on an ephemeral loopback port, stopped afterwards."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run the README's test command (scripts/test)")
    server = RedisServer(free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


MakeBroker = Callable[[], Awaitable["RedisBroker"]]


@pytest.fixture
async def brokers(redis_server: RedisServer) -> AsyncIterator[MakeBroker]:
    """Factory: a started RedisBroker on the test's redis-server, closed at teardown."""
    from wsgate.broker.redis import RedisBroker

    made: list[RedisBroker] = []

    async def make() -> RedisBroker:
        broker = RedisBroker(redis_server.url)
        await broker.start()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


@pytest.fixture
async def rds(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A plain redis-py client, to look at what a broker did from the outside."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    yield client
    await client.aclose()


async def run_node(script: str, *args: str, within: float = 15) -> dict[str, Any]:
    """Run ``tests/node/SCRIPT`` (a Node ``ws`` client) and return the JSON of its last line."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run the README's test command (scripts/test)")
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        pytest.fail("tests/node/node_modules/ws is missing: run the README's test command (scripts/test)")
    proc = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / script), *args, cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(within):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, (out.decode(), err.decode())
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, **runner_options: Any) -> AsyncIterator[str]:
    """Serve ``app`` on an ephemeral loopback port: its base URL, ``http://127.0.0.1:PORT``."""
    runner = web.AppRunner(app, **runner_options)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
