"""``python -m wsgate``: validate the config, then serve it until a signal says stop.

Signals: SIGTERM / SIGINT drain (close 1001) and exit 0; SIGUSR1 drains with 1012
"service restart"; a second stop signal exits at once; SIGHUP reloads config.yaml.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from . import __version__
from .app import GATEWAY, build_app, make_runner, reload_config
from .closecode import CloseCode
from .config import Registry, Settings, load_config
from .config.models import ServerConfig
from .config.schema import config_schema
from .describe import describe_routes
from .errors import BrokerError, ConfigError, DependencyError
from .gateway import aiohttp_seam
from .observe.logs import setup_logging
from .prepare import prepare
from .reloader import run_with_reload
from .scaffold import init_project
from .tls import TlsError, server_ssl_context

__all__ = ["listen_error_message", "main"]

log = logging.getLogger("wsgate")
_GC_YOUNGEST = 10_000  # allocations between two collections of the youngest generation


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsgate", description="Config-driven WebSocket gateway.")
    p.add_argument("command", nargs="?", default="serve", choices=["serve", "check", "routes", "schema", "init"],
                   help="serve (default); check or routes: validate and print the endpoint table; "
                        "schema: print the JSON Schema of config.yaml; "
                        "init [DIR]: write a new project (config, example handler, its tests)")
    p.add_argument("directory", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--config", default="config.yaml", help="config file (default: ./config.yaml)")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port (0 picks a free port)")
    p.add_argument("--workers", type=int, help="override server.workers (processes sharing the port)")
    p.add_argument("--check", action="store_true", help="same as the check command")
    p.add_argument("--loop", choices=["auto", "asyncio", "uvloop"], default="auto",
                   help="event loop; auto uses uvloop where installed")
    p.add_argument("--reload", action="store_true",
                   help="development: restart when a .py or .yaml file next to the config changes")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--builtins-only", action="store_true",
                   help="schema: leave out handlers installed as plugins (as the shipped wsgate.schema.json)")
    p.add_argument("--version", action="version", version=f"wsgate {__version__}")
    return p


def _override(settings: Settings, args: argparse.Namespace) -> Settings:
    update = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v is not None}
    if not update:
        return settings
    server = settings.config.server.model_copy(update=update)
    return settings.model_copy(update={"config": settings.config.model_copy(update={"server": server})})


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.directory is not None and args.command != "init":
        parser.error(f"unexpected argument {args.directory!r}; only init takes a directory")
    registry = Registry(plugins=not args.builtins_only)
    if args.command == "schema":
        print(json.dumps(config_schema(registry), indent=2))
        return 0
    if args.command == "init":
        return _init(Path(args.directory or "."), registry)
    try:
        aiohttp_seam.check()
    except DependencyError as exc:
        print(f"wsgate: {exc}", file=sys.stderr)
        return 1
    try:
        settings = _override(load_config(args.config, registry), args)
        settings.check_deployment()
        prepare(settings)  # key files, hooks and the TLS pair, before anything binds
        server = settings.config.server
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check or args.command in ("check", "routes"):
        if args.check or args.command == "check":
            print(f"{settings.file} is valid: {len(settings.endpoints)} endpoint(s); nothing was bound")
        print(describe_routes(settings))
        return 0
    setup_logging(settings.config.logging.level, settings.config.logging.format)
    if args.reload:
        return run_with_reload(_child_command(args), Path(settings.file).resolve().parent)
    if server.workers > 1 and not args.reuse_port:
        return _supervise(args, server.workers)
    try:
        return _run(_serve(settings, registry, reuse_port=args.reuse_port), args.loop)
    except (BrokerError, TlsError) as exc:
        log.error("not starting: %s", exc)
        return 1


def _init(directory: Path, registry: Registry) -> int:
    try:
        written = init_project(directory, registry)
    except FileExistsError as exc:
        print(f"wsgate init: not overwriting {exc}; choose an empty directory: wsgate init DIR", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    where = "" if directory == Path(".") else f"cd {directory} && "
    print(f"next: {where}wsgate serve --reload   (and pytest, for tests/test_example.py)")
    return 0


def _run(main: object, loop: str) -> int:
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                print("uvloop is not installed: pip install uvloop", file=sys.stderr)
                return 2
        else:
            return uvloop.run(main)  # type: ignore[arg-type]
    return asyncio.run(main)  # type: ignore[arg-type]


async def _serve(settings: Settings, registry: Registry, *, reuse_port: bool) -> int:
    server = settings.config.server
    ssl_context = server_ssl_context(server.tls, settings.folder) if server.tls else None
    app = build_app(settings, registry)
    gateway = app[GATEWAY]
    stop = asyncio.Event()
    serving = asyncio.Event()
    # Before anything listens: a supervisor (or test) that signals as soon as the port
    # accepts must find the handlers in place, or SIGTERM's and SIGHUP's default action
    # would end the process with no drain.
    _install_signal_handlers(app, stop, serving)
    runner = make_runner(app)
    await runner.setup()
    listener = None
    try:
        if not stop.is_set():  # stopped while the broker connected: never listen
            listener = await _listen(runner, server, ssl_context, reuse_port=reuse_port)
    except OSError as exc:
        print(listen_error_message(server.host, server.port, exc), file=sys.stderr, flush=True)
        await runner.cleanup()
        return 2
    _tune_gc()
    if listener is not None:  # a reload asked for during a stop before listening is moot
        serving.set()
    for sock in listener.sockets if listener else ():
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"wsgate listening on {'https' if ssl_context else 'http'}://{shown}:{port}/ "
              f"({', '.join(f'{p} {r.endpoint.handler_ref}' for p, r in gateway.routes.items())})", flush=True)
    await stop.wait()
    log.info("draining: closing %d connection(s) with %d", len(gateway.sessions), gateway.shutdown_code)
    await gateway.shutdown(gateway.shutdown_code, server.shutdown_timeout)
    if listener is not None:
        listener.close()
    await runner.cleanup()
    return 0


async def _listen(runner: web.AppRunner, server: ServerConfig, ssl_context: ssl.SSLContext | None, *,
                  reuse_port: bool) -> asyncio.Server:
    """Listen on server.host:port with the runner's protocol (what aiohttp's TCPSite does).

    Not with TCPSite: it cannot bound the TLS handshake, and asyncio's default lets a
    client that never sends a ClientHello hold a socket for 60 s. Here the handshake
    gets ``handshake_timeout``, as the request that follows it does (aiohttp's timer
    starts when the TLS handshake is done).
    """
    protocol = runner.server
    assert protocol is not None, "runner.setup() makes the protocol factory"
    return await asyncio.get_running_loop().create_server(
        protocol, server.host, server.port, backlog=4096, reuse_port=reuse_port or None, ssl=ssl_context,
        ssl_handshake_timeout=(server.handshake_timeout or None) if ssl_context else None,
    )


def _install_signal_handlers(app: web.Application, stop: asyncio.Event, serving: asyncio.Event) -> None:
    """SIGTERM/SIGINT/SIGUSR1 set ``stop`` (a second one exits at once); SIGHUP reloads.

    A reload asked for during startup waits until ``serving`` is set.
    """
    gateway = app[GATEWAY]
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    def request_stop(code: int) -> None:
        if stop.is_set():
            log.warning("second stop signal: exiting now")
            os._exit(1)
        gateway.shutdown_code = code
        stop.set()

    async def reload() -> None:
        await serving.wait()
        try:
            await reload_config(app)
        except ConfigError as exc:
            log.error("reload failed, still serving the previous config:\n%s", exc)

    def request_reload() -> None:
        task = loop.create_task(reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGTERM, request_stop, CloseCode.GOING_AWAY)
    loop.add_signal_handler(signal.SIGINT, request_stop, CloseCode.GOING_AWAY)
    loop.add_signal_handler(signal.SIGUSR1, request_stop, CloseCode.SERVICE_RESTART)
    loop.add_signal_handler(signal.SIGHUP, request_reload)


def _tune_gc() -> None:
    """Fewer and shorter garbage collections for a long-running server.

    What startup made (modules, config, the app) is frozen out of the collector's sight;
    the youngest generation is collected every 10,000 allocations instead of 700, and the
    whole heap every 10 million instead of every 70,000. A server allocates a few
    short-lived objects per message and per handshake while tens of thousands of
    connections stay alive: each full pass walks all of them, and while connections open
    those passes took a sixth of the time.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNGEST, 10, 100)


def listen_error_message(host: str, port: int, exc: OSError) -> str:
    """One line saying why ``host:port`` cannot be bound and what to do about it."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: address already in use — is another wsgate running? use --port"
    if exc.errno == errno.EACCES:
        hint = "ports below 1024 need privileges; use --port" if 0 < port < 1024 else "use another --port"
        return f"cannot listen on {where}: permission denied — {hint}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no such address on this machine — check server.host or use --host"
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    return f"cannot listen on {where}: {reason} — check server.host and server.port (--host, --port)"


def _child_command(args: argparse.Namespace, *extra: str) -> list[str]:
    """``wsgate serve`` with this process's options, for a child process."""
    cmd = [sys.executable, "-m", "wsgate", "serve", "--config", str(Path(args.config)), "--loop", args.loop, *extra]
    for flag, value in (("--host", args.host), ("--port", args.port), ("--workers", args.workers)):
        if value is not None and flag not in extra:
            cmd += [flag, str(value)]
    return cmd


def _supervise(args: argparse.Namespace, workers: int) -> int:
    """Run ``workers`` processes on one port (SO_REUSEPORT) and pass signals on."""
    cmd = _child_command(args, "--reuse-port", "--workers", str(workers))
    # Own sessions: a terminal's Ctrl-C reaches only this process, which passes it on
    # once; the children would take a second copy as "exit now".
    children = [subprocess.Popen(cmd, start_new_session=True) for _ in range(workers)]

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum != signal.SIGHUP
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(signum, forward)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    if not stopping:
        # A worker died on its own: stop the rest and fail, so a supervisor such as
        # systemd restarts the whole service at full capacity.
        log.error("a worker exited unexpectedly; stopping the others")
        forward(signal.SIGTERM, None)
    codes = [child.wait() for child in children]
    return max(codes) if stopping else max(max(codes), 1)
