"""What one idle connection costs wsgate, allocation by allocation.

    python -m bench.memory [--conns 10000] [--warm 1000] [--path /fanout] [--channels] [--top 25] [--json F]

Runs a wsgate (bench/wsgate-bench.yaml) in this process with ``tracemalloc`` on, opens
``--warm`` connections with the C load generator (so that one-time costs, imports
and caches, are paid), takes a snapshot, opens ``--conns`` more with a second load
generator, takes another, and divides the difference by ``--conns``:

* Python allocations (everything that goes through Python's allocators, uvloop's
  libuv handles included), grouped by the line that allocated them and by component;
* the process's RSS growth (inflated by tracemalloc's own bookkeeping, which is
  subtracted and shown);
* the kernel's memory for the connections (``/proc/slabinfo``, readable by root, and
  the TCP buffer pages of ``/proc/net/sockstat``), which RSS does not count. It is for
  both ends of each loopback connection: the client's socket is as big as the server's.

The figures are per connection, for connections that completed the handshake and sit
idle, pinged every 20 s. With ``--channels`` the connections go to the ``channels``
endpoint instead, and each sends ``connect`` and subscribes to a channel of its own and
to one all share (the ``channels`` scenario's memory case).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/memory.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import HOST, WSGATE_CONFIG, build_loadgen, free_port, proc_rss_kb
from bench.run import raise_fd_limit

# Allocation sites by file, most specific first: what the bytes are for.
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("wsgate/gateway/session.py", "wsgate Session and Core (+ CloseHandshake, KeepAlive)"),
    ("wsgate/gateway/core.py", "wsgate Session and Core (+ CloseHandshake, KeepAlive)"),
    ("wsgate/gateway/aiohttp_seam.py", "aiohttp's frame reader and its sink (made in the seam)"),
    ("wsgate/gateway/writer.py", "wsgate Writer"),
    ("wsgate/gateway/sendqueue.py", "wsgate SendQueue"),
    ("wsgate/gateway/closing.py", "wsgate Session and Core (+ CloseHandshake, KeepAlive)"),
    ("wsgate/policy/keepalive.py", "wsgate Session and Core (+ CloseHandshake, KeepAlive)"),
    ("wsgate/gateway/timers.py", "wsgate heartbeat timer wheel"),
    ("wsgate/connection.py", "wsgate Connection"),
    ("wsgate/gateway/hub.py", "wsgate hub (topics, subscribers)"),
    ("handlers/channels/", "channels handler (Client, Sub, directory)"),
    ("wsgate/gateway/router.py", "wsgate handshake (router)"),
    ("wsgate/gateway/endpoint.py", "wsgate endpoint's connection sets"),
    ("wsgate/gateway/identify.py", "wsgate handshake (router)"),
    ("wsgate/", "wsgate, other"),
    ("aiohttp/web_ws.py", "aiohttp WebSocketResponse"),
    ("aiohttp/_websocket/", "aiohttp WebSocket reader/writer"),
    ("aiohttp/http_websocket.py", "aiohttp WebSocket reader/writer"),
    ("aiohttp/web_protocol.py", "aiohttp RequestHandler (the HTTP protocol)"),
    ("aiohttp/http_parser.py", "aiohttp HTTP parser, request message"),
    ("aiohttp/_http_parser", "aiohttp HTTP parser, request message"),
    ("aiohttp/web_request.py", "aiohttp Request"),
    ("aiohttp/web_response.py", "aiohttp response (headers)"),
    ("aiohttp/http_writer.py", "aiohttp response (headers)"),
    ("aiohttp/streams.py", "aiohttp payload streams"),
    ("aiohttp/helpers.py", "aiohttp helpers (timers, reify caches)"),
    ("aiohttp/web_app.py", "aiohttp routing, middlewares"),
    ("aiohttp/web_urldispatcher.py", "aiohttp routing, middlewares"),
    ("aiohttp/", "aiohttp, other"),
    ("multidict/", "multidict (headers)"),
    ("yarl/", "yarl (URL)"),
    ("uvloop/", "uvloop transport, libuv handle"),
    # uvloop's C code allocates with the event loop's run() as the innermost Python frame
    ("asyncio/runners.py", "uvloop (C): transport, libuv handle, accepted socket"),
    ("asyncio/", "asyncio task, futures"),
    ("_weakrefset.py", "asyncio's set of all tasks (weak references)"),
)


def component(filename: str) -> str:
    name = filename.replace(os.sep, "/")
    for marker, label in COMPONENTS:
        if marker in name:
            return label
    return f"other ({Path(filename).name})"


def slabinfo() -> dict[str, int]:
    """Bytes per slab cache (num_objs x objsize); empty when unreadable (not root)."""
    try:
        lines = Path("/proc/slabinfo").read_text().splitlines()[2:]
    except OSError:
        return {}
    out = {}
    for line in lines:
        fields = line.split()
        out[fields[0]] = int(fields[2]) * int(fields[3])
    return out


def tcp_buffer_bytes() -> int:
    """Pages of TCP socket buffers in use on the machine (/proc/net/sockstat), in bytes."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


class Point:
    """What the process and the kernel hold at one moment."""

    def __init__(self) -> None:
        # Before the snapshot, which is large: a tuple per live allocation.
        self.rss = proc_rss_kb(os.getpid()) * 1024
        self.tracing = tracemalloc.get_tracemalloc_memory()
        self.slabs = slabinfo()
        self.tcp_buffers = tcp_buffer_bytes()
        ignore = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib.*")]
        self.snapshot = tracemalloc.take_snapshot().filter_traces(ignore)


def spawn_loadgen(binary: Path, port: int, path: str, conns: int, sources: int,
                  extra: Sequence[str] = ()) -> subprocess.Popen[str]:
    """A load generator that opens ``conns`` connections and holds them (answering pings)."""
    return subprocess.Popen(
        [str(binary), "--mode=many", f"--port={port}", f"--path={path}", f"--conns={conns}", f"--sources={sources}",
         "--idle=3600", "--broadcasts=0", "--rss-settle=0", "--timeout=120", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


async def until_open(sessions: Any, count: int, loadgens: Sequence[subprocess.Popen[str]], settle: float) -> None:
    deadline = time.monotonic() + 300
    while len(sessions) < count:
        for lg in loadgens:
            if lg.poll() is not None:
                raise SystemExit(f"load generator exited: {lg.stdout.read() if lg.stdout else ''}")
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(sessions)} of {count} connections open")
        await asyncio.sleep(0.1)
    await asyncio.sleep(settle)  # on_connect hooks and the handshake's leftovers


def channels_init(args: argparse.Namespace, prefix: str) -> list[str]:
    """--channels: connect, then subscribe to ``<prefix><i>`` and to ``all``."""
    if not args.channels:
        return []
    from bench.channels import CONNECT, FAIL_ON

    return [f"--init={CONNECT}", f'--init={{"id":2,"subscribe":{{"channel":"{prefix}{{i}}"}}}}',
            '--init={"id":3,"subscribe":{"channel":"all"}}', "--init-replies=3", f"--fail-on={FAIL_ON}"]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from aiohttp import web

    from wsgate.app import GATEWAY, build_app, make_runner
    from wsgate.config import Registry, load_config

    settings = load_config(WSGATE_CONFIG, Registry())
    app = build_app(settings)
    runner = make_runner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, HOST, port, backlog=4096)
    await site.start()
    sessions = app[GATEWAY].sessions
    binary = build_loadgen()
    sources = max(1, -(-(args.warm + args.conns) // 20_000))
    loadgens = []
    try:
        tracemalloc.start(args.frames)
        loadgens.append(spawn_loadgen(binary, port, args.path, args.warm, sources, channels_init(args, "w")))
        await until_open(sessions, args.warm, loadgens, args.settle)
        before = Point()
        started = time.monotonic()
        loadgens.append(spawn_loadgen(binary, port, args.path, args.conns, sources, channels_init(args, "p")))
        await until_open(sessions, args.warm + args.conns, loadgens, args.settle)
        after = Point()
        elapsed = time.monotonic() - started
    finally:
        tracemalloc.stop()
        for lg in loadgens:
            lg.send_signal(signal.SIGTERM)
            lg.wait()
        await runner.cleanup()
    data = report_data(before, after, args.conns, args.top)
    data["open_and_settle_s"] = elapsed
    return data


def report_data(before: Point, after: Point, conns: int, top: int) -> dict[str, Any]:
    diff = after.snapshot.compare_to(before.snapshot, "lineno")
    by_component: dict[str, float] = defaultdict(float)
    lines = []
    for stat in diff:
        frame = stat.traceback[0]
        by_component[component(frame.filename)] += stat.size_diff / conns
        lines.append({"where": f"{short(frame.filename)}:{frame.lineno}", "component": component(frame.filename),
                      "bytes": stat.size_diff / conns, "blocks": stat.count_diff / conns})
    lines.sort(key=lambda x: -x["bytes"])
    traced = sum(by_component.values())
    slabs = {name: (after.slabs.get(name, 0) - before.slabs.get(name, 0)) / conns for name in after.slabs}
    slabs = {k: v for k, v in sorted(slabs.items(), key=lambda kv: -kv[1]) if v >= 8}
    rss = (after.rss - before.rss) / conns
    tracing = (after.tracing - before.tracing) / conns
    return {
        "conns": conns,
        "rss_bytes": rss,
        "tracemalloc_overhead_bytes": tracing,
        "rss_without_tracemalloc_bytes": rss - tracing,
        "python_traced_bytes": traced,
        "untraced_bytes": rss - tracing - traced,
        "components": dict(sorted(by_component.items(), key=lambda kv: -kv[1])),
        "lines": lines[:top],
        "kernel_slab_bytes_both_ends": slabs,
        "kernel_tcp_buffer_bytes_both_ends": (after.tcp_buffers - before.tcp_buffers) / conns,
    }


def short(filename: str) -> str:
    name = filename.replace(os.sep, "/")
    for marker in ("/site-packages/", "/wt-many/", "/lib/python3"):
        if marker in name:
            return name.split(marker, 1)[1]
    return name


def report(data: dict[str, Any]) -> str:
    out = [f"per connection, {data['conns']:,} idle connections (opened and settled in "
           f"{data['open_and_settle_s']:.1f} s; past 20 s the first heartbeats are in the figures):"]
    out.append(f"  RSS growth           {data['rss_bytes']:8,.0f} B (tracemalloc's own "
               f"{data['tracemalloc_overhead_bytes']:,.0f} B of it; "
               f"without: {data['rss_without_tracemalloc_bytes']:,.0f} B; with tracemalloc on, RSS is "
               "not representative: see the many scenario)")
    out.append(f"  Python allocations   {data['python_traced_bytes']:8,.0f} B")
    out.append(f"  not traced           {data['untraced_bytes']:8,.0f} B (allocator overhead, free lists, C mallocs)")
    out.append("\nPython allocations by component (B per connection):")
    for name, size in data["components"].items():
        if abs(size) >= 1:
            out.append(f"  {size:8,.0f}  {name}")
    out.append("\nlargest allocation sites (B and blocks per connection):")
    for line in data["lines"]:
        out.append(f"  {line['bytes']:8,.0f}  {line['blocks']:5.1f}  {line['where']}")
    slabs = data["kernel_slab_bytes_both_ends"]
    out.append("\nkernel, both ends of each loopback connection (B per connection; the server's half is about half):")
    if slabs:
        for name, size in slabs.items():
            out.append(f"  {size:8,.0f}  {name}")
        out.append(f"  {sum(slabs.values()):8,.0f}  slab total")
    else:
        out.append("  /proc/slabinfo is not readable (run as root to see it)")
    out.append(f"  {data['kernel_tcp_buffer_bytes_both_ends']:8,.0f}  TCP buffer pages (/proc/net/sockstat)")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=10_000, help="connections measured (default 10,000)")
    parser.add_argument("--warm", type=int, default=1_000, help="connections opened first, not measured")
    parser.add_argument("--path", default="/fanout", help="endpoint of bench/wsgate-bench.yaml (default /fanout)")
    parser.add_argument("--channels", action="store_true",
                        help="the channels endpoint; each connection connects and subscribes to two channels")
    parser.add_argument("--frames", type=int, default=1, help="traceback depth tracemalloc keeps")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to wait after the last connection opened")
    parser.add_argument("--top", type=int, default=30, help="allocation sites listed")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.channels and args.path == "/fanout":
        from bench.channels import PATH

        args.path = PATH
    need = args.warm + args.conns + 1000
    if raise_fd_limit(need) < need:
        print(f"the open-file limit is below {need:,}: use fewer --conns", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        data = asyncio.run(measure(args))
    else:
        data = uvloop.run(measure(args))
    print(report(data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
