"""Process plumbing for the benchmark: servers under test and the C load generator."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / "build"
LOG_DIR = BUILD_DIR / "logs"
LOADGEN_SRC = BENCH_DIR / "loadgen.c"
WSGATE_CONFIG = BENCH_DIR / "wsgate-bench.yaml"

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


class BenchError(Exception):
    """A server or the load generator did not do what a case needed."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server under test and how to talk to it."""

    name: str
    command: Callable[[int], list[str]]
    echo_path: str = "/ws"
    chat_path: str = "/chat?room=bench&name=r{i}"
    # Broadcast deliveries are text frames whose JSON "type" is this value;
    # None counts every text frame received after the start.
    delivery_type: str | None = None
    check: Callable[[], list[str]] | None = None
    # The `many` scenario's endpoint, which sends every message to every connection
    # (None: the server does not run that scenario).
    many_path: str | None = None
    # A module the server needs that wsgate does not: without it, the server is left out
    # of the default list (and unavailable when asked for by name).
    needs: str | None = None
    # For what is not a Python module: None when the server can run here, else what is
    # missing and what to run about it. Also leaves the server out of the default list.
    missing: Callable[[], str | None] | None = None

    def installed(self) -> bool:
        if self.needs is not None and importlib.util.find_spec(self.needs) is None:
            return False
        return self.missing is None or self.missing() is None


def _script(name: str) -> Callable[[int], list[str]]:
    path = str(BENCH_DIR / "servers" / name)
    return lambda port: [sys.executable, path, "--host", HOST, "--port", str(port)]


def _wsgate(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "wsgate",
        "--config",
        str(WSGATE_CONFIG),
        "--host",
        HOST,
        "--port",
        str(port),
    ]


NODE_DIR = REPO_DIR / "tests" / "node"
NODE_SERVER = BENCH_DIR / "servers" / "node_ws.js"
NODE_INSTALL = "npm install --prefix tests/node --no-save --no-package-lock (scripts/test does it)"


def _node(port: int) -> list[str]:
    return [shutil.which("node") or "node", str(NODE_SERVER), "--host", HOST, "--port", str(port)]


def node_missing() -> str | None:
    """Why the `node` server cannot run here (with what to run), or None."""
    if shutil.which("node") is None:
        return "node is not on the PATH: install Node.js 18 or later (Debian: apt-get install nodejs npm), then " + (
            NODE_INSTALL)
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").is_file():
        return f"Node's ws package is not in tests/node/node_modules: run {NODE_INSTALL}"
    return None


def node_versions() -> dict[str, str | None]:
    """The versions of node and of the `ws` package the `node` server runs, if present."""
    versions: dict[str, str | None] = {"node": None, "ws": None}
    if node_missing() is not None:
        return versions
    with contextlib.suppress(OSError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError):
        done = subprocess.run(
            [*_node(0)[:2], "--check"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
        )
        versions.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return versions


SERVERS: dict[str, ServerSpec] = {
    "wsgate": ServerSpec(
        name="wsgate",
        command=_wsgate,
        delivery_type="message",
        many_path="/fanout",
        check=lambda: [sys.executable, "-m", "wsgate", "--check", "--config", str(WSGATE_CONFIG)],
    ),
    "aiohttp": ServerSpec(name="aiohttp", command=_script("aiohttp_bare.py"), many_path="/chat"),
    "websockets": ServerSpec(name="websockets", command=_script("websockets_server.py")),
    "picows": ServerSpec(name="picows", command=_script("picows_server.py"), many_path="/chat", needs="picows",
                         check=lambda: [sys.executable, "-c", "import picows"]),
    # Node's ws package (the version pinned in tests/node/package.json): bench/servers/node_ws.js
    "node": ServerSpec(name="node", command=_node, many_path="/chat", missing=node_missing,
                       check=lambda: [*_node(0)[:2], "--check"]),
}


def pinned(command: Sequence[str], cpu: int | None) -> tuple[list[str], Callable[[], None] | None]:
    """Command (and pre-exec hook) that runs `command` on one CPU."""
    if cpu is None:
        return list(command), None
    if shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *command], None
    return list(command), lambda: os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def ws_handshake_ok(port: int, path: str, timeout: float = 1.0) -> bool:
    """True if a WebSocket upgrade on `path` gets a 101 response."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            request = HANDSHAKE.format(path=path, host=HOST, port=port)
            sock.sendall(request.encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                data += chunk
            return data.startswith(b"HTTP/1.1 101")
    except OSError:
        return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_quiet(pids: Sequence[int], max_wait: float = 10.0, busy_pct: float = 5.0) -> None:
    """Wait until the processes together use less than `busy_pct` % CPU (e.g. after a case)."""
    deadline = time.monotonic() + max_wait
    last = sum(proc_cpu_seconds(pid) for pid in pids)
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = sum(proc_cpu_seconds(pid) for pid in pids)
        if (now - last) / 0.1 * 100 < busy_pct:
            return
        last = now


class ServerProcess:
    """One server under test, started on a free port and pinned to one CPU."""

    def __init__(
        self, spec: ServerSpec, cpu: int | None, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.spec = spec
        self.cpu = cpu
        self.log_path = log_path
        self.env = env  # extra environment variables
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.spec.name} is not running")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> float:
        """Spawn the server; return seconds from spawn to the first accepted WebSocket."""
        self.port = free_port()
        command, preexec = pinned(self.spec.command(self.port), self.cpu)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            env_text = "".join(f"{k}={v} " for k, v in (self.env or {}).items())
            log.write(f"$ {env_text}{' '.join(command)}\n".encode())
            log.flush()
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                command,
                cwd=REPO_DIR,
                env={**os.environ, **self.env} if self.env else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
                start_new_session=True,
            )
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.spec.name} exited with status {self.proc.returncode} while starting:\n"
                    + tail(self.log_path)
                )
            if ws_handshake_ok(self.port, self.spec.echo_path):
                return time.perf_counter() - started
            time.sleep(0.002)
        self.stop()
        raise BenchError(f"{self.spec.name} did not accept a WebSocket within {timeout:.0f}s")

    def wait_quiet(self, max_wait: float = 10.0, busy_pct: float = 5.0) -> None:
        """Wait until the server uses less than `busy_pct` % CPU (e.g. after a case)."""
        wait_quiet([self.pid], max_wait, busy_pct)

    def stop(self, grace: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisServer:
    """A throw-away redis-server on a free loopback port: no persistence, its own directory."""

    def __init__(self, cpu: int | None, log_path: Path, binary: str = "redis-server") -> None:
        self.cpu = cpu
        self.log_path = log_path
        self.binary = binary
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError("redis-server is not running")
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="wsgate-bench-redis-")
        self.port = free_port()
        command, preexec = pinned(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", HOST,
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--daemonize", "no",
            ],
            self.cpu,
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                status = self.proc.returncode
                self.stop()
                raise BenchError(f"redis-server exited with status {status} while starting:\n{tail(self.log_path)}")
            try:
                if self.command("PING") == "+PONG":
                    return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise BenchError(f"redis-server did not answer PING within {timeout:.0f}s")

    def command(self, inline: str, timeout: float = 5.0) -> str:
        """Send one inline command; return the first line of the reply."""
        with socket.create_connection((HOST, self.port), timeout=timeout) as sock:
            sock.sendall(inline.encode() + b"\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.split(b"\r\n", 1)[0].decode(errors="replace")

    def zcard_settled(self, key: str, still: float = 1.0, max_wait: float = 30.0) -> int:
        """Wait until the size of sorted set `key` is 0 or has not changed for `still` s; return it."""
        deadline = time.monotonic() + max_wait
        last, since = self.command(f"ZCARD {key}"), time.monotonic()
        while last != ":0" and time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.command(f"ZCARD {key}")
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= still:
                break
        return int(last[1:]) if last.startswith(":") else -1

    def flush(self) -> None:
        reply = self.command("FLUSHALL")
        if reply != "+OK":
            raise BenchError(f"redis FLUSHALL answered {reply!r}")

    def stop(self, grace: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def check_server(spec: ServerSpec, timeout: float = 30.0) -> str | None:
    """Run the server's config check, if it has one; return an error text or None."""
    reason = spec.missing() if spec.missing is not None else None
    if reason is not None:
        return reason
    if spec.check is None:
        return None
    try:
        done = subprocess.run(
            spec.check(),
            cwd=REPO_DIR,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{spec.name} check failed: {exc}"
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace").strip()
        lines = "\n".join(output.splitlines()[-15:])
        return f"{spec.name} check exited with status {done.returncode}:\n{lines}"
    return None


def build_loadgen(cc: str = "cc") -> Path:
    """Compile bench/loadgen.c into bench/build/loadgen unless it is up to date."""
    binary = BUILD_DIR / "loadgen"
    if binary.exists() and binary.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return binary
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    command = [cc, "-O2", "-Wall", "-o", str(binary), str(LOADGEN_SRC)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"compiling the load generator failed:\n{done.stderr}")
    return binary


def run_loadgen(binary: Path, args: Sequence[str], cpu: int | None, timeout: float) -> dict[str, Any]:
    """Run the load generator once; return its JSON result line."""
    command, preexec = pinned([str(binary), *args], cpu)
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=preexec,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"load generator timed out after {timeout:.0f}s") from exc
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise BenchError(f"load generator exited with status {done.returncode}: {done.stderr.strip()}") from exc
    if "error" in result:
        raise BenchError(f"load generator: {result['error']}")
    return result


@contextlib.contextmanager
def wsgate_with(config: str, name: str, cpu: int | None, probe: str) -> Iterator[tuple[int, int]]:
    """A ``python -m wsgate`` on ``config`` (YAML text) and a free port, pinned to ``cpu``;
    yields (port, pid) once ``probe`` answers a WebSocket handshake. Its log is
    ``bench/build/logs/wsgate-NAME.log``."""
    with tempfile.TemporaryDirectory(prefix=f"wsgate-bench-{name}-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config)
        port = free_port()
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_path = LOG_DIR / f"wsgate-{name}.log"
        command, preexec = pinned([sys.executable, "-m", "wsgate", "--config", str(path), "--port", str(port)], cpu)
        with open(log_path, "w") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec)
        try:
            deadline = time.monotonic() + 30
            while not ws_handshake_ok(port, probe):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise BenchError(f"wsgate did not start; see {log_path}")
                time.sleep(0.1)
            yield port, server.pid
        finally:
            server.terminate()
            server.wait(10)


def standalone(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
               measure: Callable[[argparse.Namespace], dict[str, Any]],
               report: Callable[[dict[str, Any]], str]) -> int:
    """The command line of a wsgate-only scenario: the server on one CPU, this process
    (the clients) on the others; the report printed, and written as JSON with --json."""
    cpus = os.cpu_count() or 1
    parser.add_argument("--server-cpu", type=int, default=0 if cpus > 1 else None,
                        help="pin the server to this CPU (the clients run on the others)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.server_cpu is not None and cpus > 1:
        os.sched_setaffinity(0, set(range(cpus)) - {args.server_cpu})
    result = measure(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
