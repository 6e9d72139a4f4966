"""A real ``python -m wsgate`` process: draining on SIGTERM / SIGUSR1, and a second signal."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from conftest import free_port
from rawframes import server_frames

PROBE = '''
import asyncio
from pathlib import Path

from pydantic import BaseModel

from wsgate import Connection, Handler, Message


class ProbeOptions(BaseModel):
    disconnect_delay: float = 0.0
    shutdown_delay: float = 0.0
    marker: str = ""


class Probe(Handler):
    """Says hello, echoes, is slow to let go of a connection, and leaves a mark on shutdown."""

    Options = ProbeOptions

    async def on_connect(self, conn: Connection) -> None:
        await conn.send("hello")

    async def on_message(self, conn: Connection, message: Message) -> None:
        await conn.send(message)

    async def on_disconnect(self, conn: Connection, code: int) -> None:
        await asyncio.sleep(self.options.disconnect_delay)

    async def shutdown(self) -> None:
        await asyncio.sleep(self.options.shutdown_delay)
        if self.options.marker:
            Path(self.options.marker).write_text("shutdown ran")
'''

Start = Callable[..., Any]


def probe_config(tmp_path: Path, write_config: Callable[..., Path], *, delay: float = 0.0,
                 shutdown_timeout: float = 10.0, close_timeout: float = 5.0, shutdown_delay: float = 0.0) -> Path:
    (tmp_path / "handlers").mkdir(exist_ok=True)
    (tmp_path / "handlers" / "lifecycle_probe.py").write_text(PROBE)
    return write_config({
        "server": {"host": "127.0.0.1", "shutdown_timeout": shutdown_timeout},
        "policy": {"heartbeat": {"interval": 0}, "close_timeout": close_timeout},
        "endpoints": [{"path": "/probe", "handler": "handlers.lifecycle_probe:Probe",
                       "options": {"disconnect_delay": delay, "shutdown_delay": shutdown_delay,
                                   "marker": str(tmp_path / "shutdown.txt")}}],
    })


async def wait_exit(proc: subprocess.Popen[str], within: float) -> int:
    async with asyncio.timeout(within):
        while True:
            if (code := proc.poll()) is not None:
                return code
            await asyncio.sleep(0.02)


async def open_clients(session: aiohttp.ClientSession, url: str, n: int) -> list[aiohttp.ClientWebSocketResponse]:
    async def one() -> aiohttp.ClientWebSocketResponse:
        ws = await session.ws_connect(url)
        assert await ws.receive_str(timeout=10) == "hello"
        return ws

    async with asyncio.timeout(30):
        clients = []
        for start in range(0, n, 50):
            clients += await asyncio.gather(*(one() for _ in range(start, min(n, start + 50))))
    return clients


async def raw_client(host: str, port: int, path: str) -> tuple[socket.socket, bytes]:
    """A handshake on a bare socket that then never reads, writes or answers anything.

    Returns the socket and whatever was read past the response head.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    async with asyncio.timeout(5):
        while b"\r\n\r\n" not in buf:
            chunk = await loop.sock_recv(sock, 4096)
            assert chunk
            buf += chunk
    assert buf.startswith(b"HTTP/1.1 101"), buf
    return sock, buf.partition(b"\r\n\r\n")[2]


async def test_sigterm_drains_hundreds_of_clients_with_1001(
    wsgate_process: Start, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = probe_config(tmp_path, write_config, delay=1.0, shutdown_timeout=8)
    proc = wsgate_process(config)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        clients = await open_clients(session, proc.ws_url + "/probe", 300)
        async with session.get(proc.url + "/readyz") as response:
            assert response.status == 200

        signalled = time.monotonic()
        proc.signal(signal.SIGTERM)
        closes = asyncio.gather(*(ws.receive(timeout=10) for ws in clients))
        # on_disconnect takes a second per connection: the drain is observable
        ready_statuses = []
        async with asyncio.timeout(5):
            while True:
                try:
                    async with session.get(proc.url + "/readyz") as response:
                        ready_statuses.append((response.status, await response.text()))
                except aiohttp.ClientConnectionError:
                    break
                if ready_statuses[-1][0] == 503:
                    break
                await asyncio.sleep(0.02)
        assert ready_statuses[-1] == (503, "draining\n")
        # new WebSocket clients are turned away during the drain
        try:
            async with session.ws_connect(proc.ws_url + "/probe") as late:
                refused: Any = await late.receive(timeout=5)
        except aiohttp.WSServerHandshakeError as exc:
            refused = exc.status
        except aiohttp.ClientConnectionError:
            refused = "connection refused"
        assert refused in (503, "connection refused")

        messages = await closes
        for msg in messages:
            assert msg.type is WSMsgType.CLOSE
            assert (msg.data, msg.extra) == (1001, "server shutting down")
        assert await wait_exit(proc.proc, 8 + 5) == 0
        elapsed = time.monotonic() - signalled
    assert elapsed < 8 + 5
    assert (tmp_path / "shutdown.txt").read_text() == "shutdown ran"
    assert "draining: closing 300 connection(s) with 1001" in proc.output


async def test_clients_that_never_answer_do_not_hold_the_exit(
    wsgate_process: Start, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    # close_timeout is longer than shutdown_timeout: only shutdown_timeout bounds the drain
    config = probe_config(tmp_path, write_config, shutdown_timeout=2, close_timeout=30)
    proc = wsgate_process(config)
    silent = [await raw_client(proc.host, proc.port, "/probe") for _ in range(5)]
    socks = [sock for sock, _ in silent]
    try:
        async with aiohttp.ClientSession() as session:
            polite = await session.ws_connect(proc.ws_url + "/probe")
            assert await polite.receive_str(timeout=5) == "hello"
            signalled = time.monotonic()
            proc.signal(signal.SIGTERM)
            msg = await polite.receive(timeout=5)
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
            assert await wait_exit(proc.proc, 2 + 5) == 0
            elapsed = time.monotonic() - signalled
        assert elapsed < 2 + 3
        loop = asyncio.get_running_loop()
        for sock, data in silent:
            async with asyncio.timeout(5):
                while chunk := await loop.sock_recv(sock, 65536):
                    data += chunk
            got = server_frames(data)
            assert got[0] == (0x1, b"hello")
            assert got[-1][0] == 0x8
            assert struct.unpack("!H", got[-1][1][:2])[0] == 1001
    finally:
        for sock in socks:
            sock.close()
    assert (tmp_path / "shutdown.txt").read_text() == "shutdown ran"


async def test_sigusr1_closes_with_1012_service_restart(
    wsgate_process: Start, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    proc = wsgate_process(probe_config(tmp_path, write_config, shutdown_timeout=5))
    async with aiohttp.ClientSession() as session:
        clients = await open_clients(session, proc.ws_url + "/probe", 5)
        proc.signal(signal.SIGUSR1)
        for ws in clients:
            msg = await ws.receive(timeout=5)
            assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1012, "service restart")
        assert await wait_exit(proc.proc, 10) == 0
    assert (tmp_path / "shutdown.txt").read_text() == "shutdown ran"


async def test_second_sigterm_during_a_slow_drain_exits_at_once(
    wsgate_process: Start, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    proc = wsgate_process(probe_config(tmp_path, write_config, delay=30, shutdown_timeout=60))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(proc.ws_url + "/probe")
        assert await ws.receive_str(timeout=5) == "hello"
        proc.signal(signal.SIGTERM)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        await asyncio.to_thread(proc.wait_for_line, r"draining: closing 1 connection")
        await asyncio.sleep(0.5)
        assert proc.proc.poll() is None  # still draining: on_disconnect takes 30 s
        signalled = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = await wait_exit(proc.proc, 5)
        elapsed = time.monotonic() - signalled
    assert code != 0
    assert elapsed < 3
    assert "second stop signal" in proc.output
    assert not (tmp_path / "shutdown.txt").exists()


async def _sigterm_exit_time(proc: Any) -> float:
    """SIGTERM a process with one open client: the client gets 1001; seconds until exit 0."""
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(proc.ws_url + "/probe")
        assert await ws.receive_str(timeout=5) == "hello"
        signalled = time.monotonic()
        proc.signal(signal.SIGTERM)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1001)
        assert await wait_exit(proc.proc, 10) == 0
        return time.monotonic() - signalled


async def test_a_hanging_shutdown_hook_does_not_outlive_shutdown_timeout(
    wsgate_process: Start, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    proc = wsgate_process(probe_config(tmp_path, write_config, shutdown_timeout=2, shutdown_delay=3600))
    assert await _sigterm_exit_time(proc) < 2 + 1
    assert "shutdown timeout (2s): cancelled shutdown() of /probe" in proc.output
    assert not (tmp_path / "shutdown.txt").exists()


async def test_a_hanging_on_disconnect_does_not_outlive_shutdown_timeout(
    wsgate_process: Start, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    proc = wsgate_process(probe_config(tmp_path, write_config, shutdown_timeout=2, delay=3600))
    assert await _sigterm_exit_time(proc) < 2 + 1
    assert "shutdown timeout (2s): cancelled on_disconnect of c1 (/probe)" in proc.output
    assert (tmp_path / "shutdown.txt").read_text() == "shutdown ran"


# --- signals at the first moment the port accepts ---------------------------------------------

TRIALS = 20
PARALLEL = 5  # starts at once: each is mostly import time


def _start_and_signal_at_first_accept(config: Path, signum: int) -> tuple[subprocess.Popen[str], int]:
    """Start ``python -m wsgate`` on a free port; signal it the moment a connect succeeds.

    Returns the process and its port.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsgate", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=config.parent,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"wsgate never listened on {port}: {proc.communicate()[0]}") from None
            time.sleep(0.001)
    proc.send_signal(signum)
    return proc, port


def _sigterm_trial(config: Path) -> tuple[int | None, str]:
    proc, _ = _start_and_signal_at_first_accept(config, signal.SIGTERM)
    try:
        output = proc.communicate(timeout=20)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return None, proc.communicate()[0]
    return proc.returncode, output


def _sighup_trial(config: Path) -> tuple[int | None, int | None, str]:
    """(healthz status after the SIGHUP, exit code after a later SIGTERM, output)."""
    proc, port = _start_and_signal_at_first_accept(config, signal.SIGHUP)
    status = None
    try:
        time.sleep(0.3)  # long enough for SIGHUP's default action, had it no handler
        if proc.poll() is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
                status = response.status
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0]
    except (subprocess.TimeoutExpired, OSError):
        proc.kill()
        output = proc.communicate()[0]
    return status, proc.returncode, output


@pytest.mark.slow
def test_sigterm_at_the_first_accepted_connection_drains_and_exits_0(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = probe_config(tmp_path, write_config)
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(_sigterm_trial, [config] * TRIALS))
    failed = [(code, output) for code, output in results if code != 0 or "draining: closing" not in output]
    assert not failed, f"{len(failed)} of {TRIALS} did not drain and exit 0; first: {failed[0]}"


@pytest.mark.slow
def test_sighup_at_the_first_accepted_connection_never_kills(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    config = probe_config(tmp_path, write_config)
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(_sighup_trial, [config] * TRIALS))
    failed = [r for r in results if r[:2] != (200, 0)]
    assert not failed, f"{len(failed)} of {TRIALS} died or stopped serving after SIGHUP; first: {failed[0]}"
    # a reload asked for during startup is done once the gateway serves, not lost
    assert all("reloaded " in output for _, _, output in results)
